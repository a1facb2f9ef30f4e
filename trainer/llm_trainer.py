"""LLM reranker training: the shared grouped loss on the "Yes" logit of a decoder, with LoRA adapters."""

from __future__ import annotations

import logging
from pathlib import Path

import datasets
import torch
from transformers import AutoTokenizer, PreTrainedModel

from rerankforge.data_tools.collators import LLMCollator
from rerankforge.data_tools.llm_inputs import LLMPromptEncoder
from rerankforge.trainer.base_trainer import RerankerTrainer, data_arguments
from rerankforge.trainer.evaluation import EvalPairs, RerankEvalSet
from rerankforge.trainer.llm_config import LLMRerankerConfig
from rerankforge.trainer.modeling.llm import (
    ensure_pad_token,
    llm_scoring_fields,
    load_causal_lm,
    score_last_token,
)
from rerankforge.trainer.modeling.lora import add_lora, load_adapter
from rerankforge.trainer.modeling.sources import resolve_model_path
from rerankforge.trainer.spec import RerankerSpec

logger = logging.getLogger(__name__)
MERGED_DIR = "merged"


class LLMRerankerTrainer(RerankerTrainer):
    """Scores each row with the "Yes" logit (or its log-odds against "No") at the last position."""

    def score(self, model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        extra = self.spec.extra
        return score_last_token(
            model, batch, int(extra["yes_token_id"]), extra.get("no_token_id"), str(extra["score"])
        )

    def finish_saving(self, output_dir: str | Path) -> None:
        """With ``merge_lora``: also write ``<output_dir>/merged``, a full model that loads without peft."""
        if not (self.args.merge_lora and self.args.should_save):
            return
        from rerankforge.trainer.merge import merge_adapter_folder

        merged = merge_adapter_folder(
            output_dir, Path(output_dir) / MERGED_DIR, trust_remote_code=self.args.trust_remote_code
        )
        logger.info("merged model written to %s", merged)


def load_tokenizer(config: LLMRerankerConfig):
    source = config.tokenizer_name or config.model_name_or_path
    tokenizer = AutoTokenizer.from_pretrained(
        resolve_model_path(source), trust_remote_code=config.trust_remote_code
    )
    return ensure_pad_token(tokenizer)


def load_trainable_model(config: LLMRerankerConfig) -> PreTrainedModel:
    """The base LLM with fresh adapters, a saved adapter to continue, or (no LoRA) every weight trainable."""
    model = load_causal_lm(
        config.model_name_or_path, config.torch_dtype, config.attn_implementation, config.trust_remote_code
    )
    model.config.use_cache = False  # no generation in training; the cache only costs memory
    if not config.use_lora:
        return model
    if config.adapter_name_or_path:
        logger.info("continuing from the adapter in %s", config.adapter_name_or_path)
        model = load_adapter(model, config.adapter_name_or_path, trainable=True)
    else:
        model = add_lora(
            model,
            config.lora_rank,
            config.lora_alpha,
            config.lora_dropout,
            config.lora_target_modules,
            config.modules_to_save,
        )
    if config.gradient_checkpointing:
        model.enable_input_require_grads()  # so checkpointed blocks see a grad-requiring input
    return model


def build_llm_trainer(
    config: LLMRerankerConfig, records: datasets.Dataset, eval_set: RerankEvalSet | None = None
) -> LLMRerankerTrainer:
    """Tokenizer, model (with adapters), groups, collator and spec for one run, wired into the Trainer."""
    tokenizer = load_tokenizer(config)
    scoring = llm_scoring_fields(tokenizer, config.prompt, config.score, config.yes_token, config.no_token)
    model = load_trainable_model(config)
    spec = RerankerSpec(
        family="llm",
        query_max_len=config.query_max_len,
        passage_max_len=config.passage_max_len,
        max_length=config.query_max_len + config.passage_max_len,
        base_model=config.model_name_or_path,
        extra={**scoring, "adapter": config.use_lora},
    )
    encoder = LLMPromptEncoder(tokenizer, config.query_max_len, config.passage_max_len, config.prompt)
    eval_pairs = EvalPairs(eval_set) if eval_set is not None else None
    return LLMRerankerTrainer(
        model=model,
        args=config,
        **data_arguments(config, records, eval_pairs),
        data_collator=LLMCollator(encoder),
        processing_class=tokenizer,
        spec=spec,
    )
