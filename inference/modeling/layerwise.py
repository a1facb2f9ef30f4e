"""Layerwise reranker: a score head on each of several decoder layers, and a forward pass that can stop early.

Head ``k`` reads the last token's hidden state after decoder layer ``k`` (1-based, as FlagEmbedding's
``cutoff_layers``), passed through the model's final norm. Heads start as the LM head's "Yes" row (with the
model's logit soft-capping, where it has one), so before training the last layer's score is the LLM family's
"Yes" logit. Stopping early needs no copy of any architecture's forward: a hook on the deepest requested layer
records its output and ends the pass, so the layers above it never run.

The heads are this model's ``heads.<k>`` parameters: a full model saves them among its weights, and a LoRA
adapter carries them as peft's ``modules_to_save``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn
from transformers import PreTrainedModel
from transformers.integrations import is_deepspeed_zero3_enabled

from rerankforge.inference.modeling.llm import LLMRerankerModel
from rerankforge.inference.modeling.lora import save_fixed_tensors_with_adapter
from rerankforge.inference.modeling.spec import LayerwiseSpec
from rerankforge.inference.modeling.training_options import LayerwiseTrainingOptions

LEGACY_HEADS_FILE = "layerwise_heads.safetensors"  # version 1 kept the heads beside the weights
HEAD_PREFIX = "heads."


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


class LayerwiseRerankerModel(LLMRerankerModel):
    """A causal LM (its LoRA adapters, if any, are peft's) plus one ``Linear(hidden, 1)`` head per scored layer.

    ``train_layers`` are the layers a training forward scores (all heads by default); in eval mode, and when
    ``layers`` is given, the requested heads are scored.
    """

    spec_class = LayerwiseSpec
    spec: LayerwiseSpec
    head_prefix = HEAD_PREFIX

    def __init__(
        self, backbone: PreTrainedModel, spec: LayerwiseSpec, train_layers: Iterable[int] | None = None
    ):
        super().__init__(backbone, spec)
        self.num_layers = len(decoder_layers(backbone))
        if spec.num_layers != self.num_layers:
            raise ValueError(f"the spec describes {spec.num_layers} layers, the model has {self.num_layers}")
        self.layers = sorted(set(int(k) for k in spec.layers))
        bad = [k for k in self.layers if not 1 <= k <= self.num_layers]
        if bad or not self.layers:
            raise ValueError(f"layers must be within 1..{self.num_layers}, got {self.layers}")
        hidden = backbone.config.hidden_size
        self.heads = nn.ModuleDict({str(k): nn.Linear(hidden, 1) for k in self.layers})
        self.softcap = getattr(backbone.config, "final_logit_softcapping", None)
        self.train_layers = sorted(set(train_layers)) if train_layers is not None else list(self.layers)
        missing = [k for k in self.train_layers if k not in self.layers]
        if missing:
            raise ValueError(f"train_layers {self.train_layers} must be among the head layers {self.layers}")
        self.init_heads_from_answer_rows(spec)
        self.heads.to(backbone.get_output_embeddings().weight.device)

    @classmethod
    def for_training_from(
        cls, backbone: PreTrainedModel, spec_fields: dict[str, Any], config: LayerwiseTrainingOptions
    ) -> LayerwiseRerankerModel:
        """Heads on every layer from ``start_layer`` to the last, started as the "Yes" row; ``train_layers`` of
        them train (default: all)."""
        num_layers = len(decoder_layers(backbone))
        if config.start_layer > num_layers:
            raise ValueError(f"start_layer {config.start_layer} is past this model's {num_layers} layers")
        layers = list(range(config.start_layer, num_layers + 1))
        spec = LayerwiseSpec(**spec_fields, layers=layers, num_layers=num_layers)
        model = cls(backbone, spec, train_layers=config.train_layers)
        for k in model.layers:  # heads that no loss reaches stay as they are (DDP tracks no idle parameters)
            model.heads[str(k)].requires_grad_(k in model.train_layers)
        if not config.use_lora:  # in full fine-tuning, weights that no loss reaches stay as they are too
            unused = list(decoder_layers(backbone))[
                max(model.train_layers) :
            ]  # above the deepest trained head
            output, inputs = backbone.get_output_embeddings(), backbone.get_input_embeddings()
            if output is not None and output.weight is not inputs.weight:  # the LM head (not when tied)
                unused.append(output)
            for module in unused:
                module.requires_grad_(False)
        return model

    def freeze_fixed_parameters(self, wrapped: nn.Module) -> None:
        """The heads' biases stay zero (in peft's trainable copies of the heads too): a bias shifts every score
        of a query alike, so listwise losses give it no gradient (only rounding noise, which Adam would amplify),
        and a one-logit export (transformers' score heads have no bias) could not carry it.

        They stay in an adapter's saves: DeepSpeed ZeRO-3 leaves frozen parameters out of what the Trainer gathers
        for a peft model, so their values, taken here, complete it (see `save_fixed_tensors_with_adapter`)."""
        fixed = {}
        for name, parameter in wrapped.named_parameters():
            if f"{HEAD_PREFIX}" in name and name.endswith(".bias"):
                parameter.requires_grad_(False)
                with gathered(parameter):  # whole already, unless built inside DeepSpeed's zero.Init
                    fixed[name] = parameter.detach().to("cpu", copy=True)
        save_fixed_tensors_with_adapter(wrapped, fixed)

    def score_columns(self) -> list[str]:
        """Evaluation reports each head: ``layer<k>_ndcg@10``, ...; the unprefixed metrics are the last layer's."""
        return [layer_name(k) for k in self.layers]

    def head_module_names(self) -> list[str]:
        """The heads that train (peft's ``modules_to_save`` names for them)."""
        return [f"{HEAD_PREFIX}{k}" for k in self.train_layers]

    @torch.no_grad()
    def init_heads_from_answer_rows(self, spec: LayerwiseSpec) -> None:
        """Every head as the LM head's "Yes" row, or ("yes_minus_no") the "yes" row minus the "no" row, so the
        last layer's head starts as the LLM family's score of the same format. Biases start at zero."""
        weight = self.backbone.get_output_embeddings().weight
        with gathered(weight):  # DeepSpeed ZeRO-3 shards the LM head: gather it to read rows
            row = weight[spec.yes_token_id].detach().float().clone()
            if spec.score == "yes_minus_no":
                row -= weight[spec.no_token_id].detach().float()
        for head in self.heads.values():
            head.weight.copy_(row.unsqueeze(0).to(head.weight.dtype))
            head.bias.zero_()

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, layers: Iterable[int] | None = None
    ) -> dict[str, torch.Tensor]:
        """``{"layer<k>": float32 scores [batch]}`` for the requested layers, shallowest first, rows left-padded.

        Default: ``train_layers`` in training, every head otherwise. Only layers up to the deepest requested one
        run (under DeepSpeed ZeRO-3 every layer runs: its parameter hooks expect whole passes). The keys are
        strings because DeepSpeed's hooks read a forward's dict output by name.
        """
        if layers is None:
            layers = self.train_layers if self.training else self.layers
        wanted = sorted(set(int(k) for k in layers))
        missing = [k for k in wanted if str(k) not in self.heads]
        if missing:
            raise ValueError(f"no score head for layer(s) {missing}; this model has heads for {self.layers}")
        deepest = wanted[-1]
        stop_early = deepest < self.num_layers and not zero3_enabled()
        states: dict[int, torch.Tensor] = {}
        hooks = []
        modules = decoder_layers(self.backbone)

        def recorder(layer: int):
            def hook(module, args, output):
                hidden = output[0] if isinstance(output, tuple) else output
                states[layer] = hidden[:, -1]
                if layer == deepest and stop_early:
                    raise _StopForward

            return hook

        for k in wanted:
            hooks.append(modules[k - 1].register_forward_hook(recorder(k)))
        decoder = self.backbone.get_decoder()
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
            score = head(norm(states[k]).to(head_dtype(head))).squeeze(-1).float()
            if self.softcap:
                score = torch.tanh(score / self.softcap) * self.softcap
            scores[layer_name(k)] = score
        return scores

    def load_heads(self, folder: str | Path, legacy_only: bool = False) -> None:
        """The heads saved in ``folder``: among a full model's weights, or (version 1) in their own file.

        ``legacy_only``: an adapter folder, whose heads come with the adapter unless it is a version-1 one.
        """
        folder = Path(folder)
        legacy = folder / LEGACY_HEADS_FILE
        if legacy.is_file():
            with safe_open(str(legacy), framework="pt") as handle:
                self.load_head_tensors({f"{HEAD_PREFIX}{k}": handle.get_tensor(k) for k in handle.keys()})  # noqa: SIM118
            return
        if legacy_only:
            return
        self.load_head_tensors(read_tensors(folder, HEAD_PREFIX))

    def load_head_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        expected = set(self.head_state())
        if set(tensors) != expected:
            raise ValueError(
                f"score heads in the checkpoint ({sorted(tensors)[:6]}) do not match this model's ({sorted(expected)[:6]})"
            )
        with torch.no_grad():
            for key, tensor in tensors.items():
                layer, name = key[len(HEAD_PREFIX) :].split(".")
                getattr(self.heads[layer], name).copy_(tensor)


def layer_name(layer: int) -> str:
    """The key of layer ``layer``'s scores (1-based, as ``cutoff_layers``) in outputs, logs and metrics."""
    return f"layer{layer}"


def head_dtype(head: nn.Module) -> torch.dtype:
    """The dtype a head computes in (peft's wrapper keeps the trained copy inside)."""
    return next(head.parameters()).dtype


def read_tensors(folder: Path, prefix: str) -> dict[str, torch.Tensor]:
    """Every tensor whose key starts with ``prefix`` in the folder's safetensors weights (sharded or not)."""
    tensors: dict[str, torch.Tensor] = {}
    for shard in sorted(folder.glob("model*.safetensors")):
        with safe_open(str(shard), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 (a safetensors handle is not iterable)
                if key.startswith(prefix):
                    tensors[key] = handle.get_tensor(key)
    return tensors


def zero3_enabled() -> bool:

    return is_deepspeed_zero3_enabled()


def gathered(parameter: torch.nn.Parameter):
    """A context in which a ZeRO-3 sharded parameter is whole (a no-op otherwise)."""

    if zero3_enabled():
        import deepspeed  # optional: the [deepspeed] extra

        return deepspeed.zero.GatheredParameters([parameter], modifier_rank=None)
    return contextlib.nullcontext()
