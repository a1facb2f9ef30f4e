"""Layerwise reranker: a score head on each of several decoder layers, and a forward pass that can stop early.

Head ``k`` reads the last token's hidden state after decoder layer ``k`` (1-based, as FlagEmbedding's
``cutoff_layers``), passed through the model's final norm. Heads start as the LM head's "Yes" row (with the
model's logit soft-capping, where it has one), so before training the last layer's score is the LLM family's
"Yes" logit. Stopping early needs no copy of any architecture's forward: a hook on the deepest requested layer
records its output and ends the pass, so the layers above it never run.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import PreTrainedModel

HEADS_FILE = "layerwise_heads.safetensors"


class _StopForward(Exception):
    """Raised by the hook on the deepest requested layer: nothing above it needs to run."""


def _unwrap(model: nn.Module) -> PreTrainedModel:
    """The transformers causal LM inside a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder's list of layers (``model.model.layers`` in Llama, Qwen2, Gemma, Mistral, MiniCPM)."""
    decoder = _unwrap(model).get_decoder()
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(
            f"{type(decoder).__name__} has no `layers` list: not a supported decoder for layerwise"
        )
    return layers


class LayerwiseModel(nn.Module):
    """A causal LM (optionally with LoRA adapters) plus one ``Linear(hidden, 1)`` head per scored layer."""

    def __init__(self, lm: nn.Module, layers: Iterable[int], yes_token_id: int | None = None):
        super().__init__()
        self.lm = lm
        base = _unwrap(lm)
        self.num_layers = len(decoder_layers(lm))
        self.layers = sorted(set(int(k) for k in layers))
        bad = [k for k in self.layers if not 1 <= k <= self.num_layers]
        if bad or not self.layers:
            raise ValueError(f"layers must be within 1..{self.num_layers}, got {self.layers}")
        hidden = base.config.hidden_size
        self.heads = nn.ModuleDict({str(k): nn.Linear(hidden, 1) for k in self.layers})
        self.softcap = getattr(base.config, "final_logit_softcapping", None)
        if yes_token_id is not None:
            self.init_heads_from_yes_row(yes_token_id)
        self.to(base.lm_head.weight.device)

    @property
    def config(self):
        return _unwrap(self.lm).config

    @torch.no_grad()
    def init_heads_from_yes_row(self, yes_token_id: int) -> None:
        row = _unwrap(self.lm).get_output_embeddings().weight[yes_token_id].detach().float()
        for head in self.heads.values():
            head.weight.copy_(row.unsqueeze(0))
            head.bias.zero_()

    def activation_checkpointing_enable(self, **kwargs) -> None:
        """For `Trainer(activation_checkpointing=True)`: checkpoint the decoder's layers."""
        _unwrap(self.lm).activation_checkpointing_enable(**kwargs)

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None, **kwargs) -> None:
        self.activation_checkpointing_enable(
            activation_checkpointing_kwargs=gradient_checkpointing_kwargs, **kwargs
        )

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, layers: Iterable[int] | None = None
    ) -> dict[int, torch.Tensor]:
        """``{layer: float32 scores [batch]}`` for the requested layers (default: every head), rows left-padded.

        Only layers up to the deepest requested one run.
        """
        wanted = self.layers if layers is None else sorted(set(int(k) for k in layers))
        missing = [k for k in wanted if str(k) not in self.heads]
        if missing:
            raise ValueError(f"no score head for layer(s) {missing}; this model has heads for {self.layers}")
        deepest = wanted[-1]
        states: dict[int, torch.Tensor] = {}
        hooks = []
        modules = decoder_layers(self.lm)

        def recorder(layer: int):
            def hook(module, args, output):
                hidden = output[0] if isinstance(output, tuple) else output
                states[layer] = hidden[:, -1]
                if layer == deepest and deepest < self.num_layers:
                    raise _StopForward

            return hook

        for k in wanted:
            hooks.append(modules[k - 1].register_forward_hook(recorder(k)))
        decoder = _unwrap(self.lm).get_decoder()
        try:
            decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        except _StopForward:
            pass
        finally:
            for hook in hooks:
                hook.remove()
        norm = decoder.norm
        scores = {}
        for k in wanted:
            head = self.heads[str(k)]
            score = head(norm(states[k]).to(head.weight.dtype)).squeeze(-1).float()
            if self.softcap:
                score = torch.tanh(score / self.softcap) * self.softcap
            scores[k] = score
        return scores

    def save_heads(self, folder: str | Path) -> Path:
        path = Path(folder) / HEADS_FILE
        tensors = {f"{k}.{name}": t.detach().cpu().contiguous() for k, head in self.heads.items()
                   for name, t in head.state_dict().items()}  # fmt: skip
        save_file(tensors, str(path), metadata={"layers": ",".join(str(k) for k in self.layers)})
        return path

    def load_heads(self, folder: str | Path) -> None:
        tensors = load_file(str(Path(folder) / HEADS_FILE))
        for k, head in self.heads.items():
            head.load_state_dict({"weight": tensors[f"{k}.weight"], "bias": tensors[f"{k}.bias"]})
