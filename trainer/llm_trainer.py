"""LLM reranker training: the shared objective on the "Yes" logit of a decoder, usually with LoRA adapters."""

from __future__ import annotations

import logging
from pathlib import Path

from rerankforge.trainer.base_trainer import RerankerTrainer
from rerankforge.trainer.llm_config import LLMRerankerConfig
from rerankforge.trainer.merge import merge_adapter_folder

logger = logging.getLogger(__name__)
MERGED_DIR = "merged"


class LLMRerankerTrainer(RerankerTrainer):
    """Adds the LoRA families' export: with ``merge_lora``, a merged copy of the final model."""

    args: LLMRerankerConfig

    def finish_saving(self, output_dir: str | Path) -> None:
        """With ``merge_lora``: also write ``<output_dir>/merged``, a full model (and its heads) without peft."""
        if not (self.args.merge_lora and self.args.should_save):
            return

        merged = merge_adapter_folder(
            output_dir, Path(output_dir) / MERGED_DIR, trust_remote_code=self.args.trust_remote_code
        )
        logger.info("merged model written to %s", merged)
