"""Layerwise reranker training: the shared objective at every trained layer, summed; per-layer logs and metrics."""

from __future__ import annotations

from typing import Any

from rerankforge.trainer.layerwise_config import LayerwiseRerankerConfig
from rerankforge.trainer.llm_trainer import LLMRerankerTrainer


class LayerwiseRerankerTrainer(LLMRerankerTrainer):
    """Sums the objective over the model's ``train_layers`` (each layer's share is logged as ``loss_layer<k>``,
    gathered like ``loss``); evaluation reports every head."""

    args: LayerwiseRerankerConfig

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if self.args.n_gpu > 1:  # DataParallel replicas would share the early-stop hooks of one decoder
            raise ValueError(
                f"{self.args.n_gpu} GPUs in one process (DataParallel): launch one process per GPU instead, "
                "with `accelerate launch` or `torchrun`"
            )
