"""Scoring losses: each takes a [groups, group_size] score tensor and never holds the model."""

from rerankforge.trainer.losses.grouped_cross_entropy import GroupedCrossEntropyLoss
from rerankforge.trainer.losses.layerwise_objective import LayerwiseObjective
from rerankforge.trainer.losses.listwise_distillation import ListwiseDistillationLoss
from rerankforge.trainer.losses.ranking_objective import RankingObjective

__all__ = ["GroupedCrossEntropyLoss", "LayerwiseObjective", "ListwiseDistillationLoss", "RankingObjective"]
