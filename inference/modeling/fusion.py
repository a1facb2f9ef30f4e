"""Fusing a reranker's scores with the first stage's, so a reranker that is worse than BM25 on some queries can
still only add to it.

``interpolation``: each query's scores are min-max normalized (the reranker's and the first stage's scales have
nothing in common), then ``weight * reranker + (1 - weight) * first stage``; ``rrf``: reciprocal-rank fusion
(Cormack et al., 2009, k = 60) weighted the same way. ``weight`` 1 is the reranker alone, 0 the first stage alone.
The weight is chosen on validation queries (`rerankforge.trainer.fusion_choice`) and stored in `rerankforge.json`
(``fusion``); `rank(query, documents, first_stage_scores=...)` applies it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

FUSION_METHODS = ("interpolation", "rrf")
RRF_K = 60


def min_max(scores: Sequence[float]) -> list[float]:
    """Scores mapped onto [0, 1] within their list (all equal: all 0.5)."""
    low, high = min(scores), max(scores)
    if high == low:
        return [0.5] * len(scores)
    return [(s - low) / (high - low) for s in scores]


def reciprocal_ranks(scores: Sequence[float], k: int = RRF_K) -> list[float]:
    """``1 / (k + rank)`` of each score within its list (rank 1 = best; ties by position)."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    ranks = [0] * len(scores)
    for rank, index in enumerate(order, start=1):
        ranks[index] = rank
    return [1.0 / (k + r) for r in ranks]


@dataclass(frozen=True)
class Fusion:
    """How one query's reranker and first-stage scores combine, and where the weight was chosen."""

    method: str = "interpolation"
    weight: float = 1.0  # the reranker's share
    chosen_on: str = ""
    grid: list[list[float]] = field(default_factory=list)  # [weight, validation nDCG@10] pairs

    def __post_init__(self) -> None:
        if self.method not in FUSION_METHODS:
            raise ValueError(f"fusion method {self.method!r}: expected one of {', '.join(FUSION_METHODS)}")
        if not 0.0 <= self.weight <= 1.0:
            raise ValueError(f"fusion weight must lie in [0, 1], got {self.weight}")

    def fuse(self, reranker: Sequence[float], first_stage: Sequence[float]) -> list[float]:
        """One query's fused scores (both lists in the same document order)."""
        if len(reranker) != len(first_stage):
            raise ValueError(f"{len(reranker)} reranker scores but {len(first_stage)} first-stage scores")
        if not reranker:
            return []
        spread = min_max if self.method == "interpolation" else reciprocal_ranks
        ours, theirs = spread(reranker), spread(first_stage)
        return [self.weight * a + (1.0 - self.weight) * b for a, b in zip(ours, theirs, strict=True)]

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "weight": self.weight, "chosen_on": self.chosen_on, "grid": self.grid}

    @staticmethod
    def from_dict(data: dict[str, Any] | None) -> Fusion | None:
        if not data:
            return None
        return Fusion(
            data["method"], float(data["weight"]), data.get("chosen_on", ""), list(data.get("grid") or [])
        )
