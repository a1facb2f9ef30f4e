"""Layerwise reranker training: the grouped loss at every selected layer, summed; per-layer logs and metrics."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import datasets
import torch
from torch import nn

from rerankforge.data_tools.collators import LLMCollator
from rerankforge.data_tools.llm_inputs import LLMPromptEncoder
from rerankforge.trainer.base_trainer import RerankerTrainer, data_arguments
from rerankforge.trainer.evaluation import EvalPairs, RerankEvalSet
from rerankforge.trainer.layerwise_config import LayerwiseRerankerConfig
from rerankforge.trainer.llm_trainer import LLMRerankerTrainer, load_tokenizer, load_trainable_model
from rerankforge.trainer.losses import LayerwiseObjective
from rerankforge.trainer.modeling.layerwise import HEADS_FILE, LayerwiseModel, decoder_layers
from rerankforge.trainer.modeling.llm import llm_scoring_fields
from rerankforge.trainer.spec import RerankerSpec

logger = logging.getLogger(__name__)


def layer_name(layer: int) -> str:
    return f"layer{layer}"


class LayerwiseRerankerTrainer(RerankerTrainer):
    """Sums the shared objective over ``train_layers``; logs ``loss_layer<k>``; evaluates every head."""

    args: LayerwiseRerankerConfig

    def __init__(self, *args: Any, train_layers: list[int], **kwargs: Any):
        super().__init__(*args, **kwargs)
        if self.args.n_gpu > 1:  # DataParallel replicas would share the early-stop hooks of one decoder
            raise ValueError(
                f"{self.args.n_gpu} GPUs in one process (DataParallel): launch one process per GPU instead, "
                "with `accelerate launch` or `torchrun`"
            )
        plugin = (
            getattr(self.accelerator.state, "deepspeed_plugin", None) if self.is_deepspeed_enabled else None
        )
        if plugin is not None and plugin.zero_stage == 3:  # `_save` would write each process's empty shards
            raise ValueError(
                "the layerwise family does not support DeepSpeed ZeRO-3 yet: use ZeRO-2 (zero2.json)"
            )
        self.train_layers = train_layers
        self.objective = LayerwiseObjective(
            self.args.build_objective(), self.args.self_distill_weight, self.args.distill_temperature
        )

    def score(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``[rows, heads]``: every head's score, in layer order (evaluation reports each column)."""
        scores = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return torch.stack([scores[k] for k in sorted(scores)], dim=-1)

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ):
        group_size = int(inputs.pop("group_size"))
        teacher_scores = inputs.pop("teacher_scores", None)
        scores = model(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], layers=self.train_layers
        )
        grouped = {k: s.view(-1, group_size) for k, s in scores.items()}
        loss, parts = self.objective(grouped, teacher_scores)
        if model.training:
            self.loss_parts.add(parts)
        return (loss, {"scores": grouped}) if return_outputs else loss

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """The adapter (or full LM), the heads and the tokenizer: never the frozen base weights twice."""
        if not self.args.should_save:  # the Trainer calls this on every process
            return
        folder = Path(output_dir or self.args.output_dir)
        folder.mkdir(parents=True, exist_ok=True)
        model: LayerwiseModel = self.accelerator.unwrap_model(self.model)
        model.lm.save_pretrained(folder, safe_serialization=True)
        model.save_heads(folder)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(folder)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        """Restore what `_save` wrote: the adapter (or full LM weights) and the heads."""
        model = self.accelerator.unwrap_model(model if model is not None else self.model)
        load_layerwise_weights(model, resume_from_checkpoint)

    def _load_best_model(self) -> None:
        checkpoint = self.state.best_model_checkpoint
        logger.info("loading the best model from %s (score: %s)", checkpoint, self.state.best_metric)
        load_layerwise_weights(self.accelerator.unwrap_model(self.model), checkpoint)

    # adapter + heads fold into one full model exactly as the LLM family's adapter does (merge carries the heads)
    finish_saving = LLMRerankerTrainer.finish_saving


def load_layerwise_weights(model: LayerwiseModel, folder: str | Path) -> None:
    """Trained weights from a layerwise checkpoint into a live model: adapter or full LM, then the heads."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if hasattr(model.lm, "peft_config"):
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(model.lm, load_file(str(folder / "adapter_model.safetensors")))
        if getattr(result, "unexpected_keys", None):
            raise ValueError(
                f"{folder}: adapter weights this model does not have: {result.unexpected_keys[:5]}"
            )
    else:
        state: dict[str, torch.Tensor] = {}
        for shard in sorted(folder.glob("model*.safetensors")):
            state.update(load_file(str(shard)))
        missing, unexpected = model.lm.load_state_dict(state, strict=False)
        tied = set(getattr(model.lm, "_tied_weights_keys", None) or [])
        if unexpected or set(missing) - tied:
            raise ValueError(f"{folder}: weights do not match the model (missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]})")  # fmt: skip
    model.load_heads(folder)


def build_layerwise_trainer(
    config: LayerwiseRerankerConfig, records: datasets.Dataset, eval_set: RerankEvalSet | None = None
) -> LayerwiseRerankerTrainer:
    """Tokenizer, LLM (with adapters), "Yes"-initialised heads, groups and spec, wired into the Trainer."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    if (
        is_deepspeed_zero3_enabled()
    ):  # weights arrive sharded: heads cannot copy the "Yes" row, saves would shard
        raise ValueError(
            "the layerwise family does not support DeepSpeed ZeRO-3 yet: use ZeRO-2 (zero2.json)"
        )
    tokenizer = load_tokenizer(config)
    scoring = llm_scoring_fields(tokenizer, config.prompt, config.score, config.yes_token, config.no_token)
    if config.score != "yes":
        raise ValueError("the layerwise family scores with heads initialised from 'Yes': use score: yes")
    lm = load_trainable_model(config)
    num_layers = len(decoder_layers(lm))
    if config.start_layer > num_layers:
        raise ValueError(f"start_layer {config.start_layer} is past this model's {num_layers} layers")
    layers = list(range(config.start_layer, num_layers + 1))
    model = LayerwiseModel(lm, layers, yes_token_id=int(scoring["yes_token_id"]))
    if config.adapter_name_or_path and (Path(config.adapter_name_or_path) / HEADS_FILE).is_file():
        logger.info("continuing with the heads in %s", config.adapter_name_or_path)
        model.load_heads(config.adapter_name_or_path)
    train_layers = sorted(config.train_layers or layers)
    if any(k not in layers for k in train_layers):
        raise ValueError(f"train_layers {train_layers} must be among the head layers {layers}")
    for k in layers:  # heads that no loss reaches stay as they are (and DDP has no idle parameters to track)
        model.heads[str(k)].requires_grad_(k in train_layers)
    spec = RerankerSpec(
        family="layerwise",
        query_max_len=config.query_max_len,
        passage_max_len=config.passage_max_len,
        max_length=config.query_max_len + config.passage_max_len,
        base_model=config.model_name_or_path,
        extra={**scoring, "adapter": config.use_lora, "layers": layers, "num_layers": num_layers},
    )
    encoder = LLMPromptEncoder(tokenizer, config.query_max_len, config.passage_max_len, config.prompt)
    eval_pairs = (
        EvalPairs(eval_set, columns=[layer_name(k) for k in layers]) if eval_set is not None else None
    )
    return LayerwiseRerankerTrainer(
        model=model,
        args=config,
        **data_arguments(config, records, eval_pairs),
        data_collator=LLMCollator(encoder),
        processing_class=tokenizer,
        spec=spec,
        train_layers=train_layers,
    )
