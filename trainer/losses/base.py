"""What every training loss shares: the score-tensor contract, input checks, and a description of itself.

A loss sees only scores: ``scores[groups, group_size]`` with each group's positive in column 0, and optionally
the teacher's ``teacher_scores`` of the same shape (from the data's ``pos_scores`` / ``neg_scores``). It never
holds the model or a configured batch size, so a short last batch is just a smaller tensor.
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

import torch
from torch import nn


class RankingLoss(nn.Module):
    """Base class: subclasses set ``name`` and ``summary`` and implement ``compute`` on float32 tensors.

    ``teacher`` says how a loss uses teacher scores: "never", "graded" (optional, with ``graded=True`` they are
    the graded relevance labels instead of 1 for the positive and 0 for the negatives), or "required".
    ``order_invariant`` says whether the loss's definition is unchanged when a group's negatives are
    reordered (ListMLE breaks ties between equally labelled passages by their order, so it is not).
    """

    name: ClassVar[str]
    summary: ClassVar[str]  # one line for the model card and the documentation
    teacher: ClassVar[str] = "never"
    order_invariant: ClassVar[bool] = True

    def __init__(self) -> None:
        super().__init__()
        self.graded = False  # losses with teacher = "graded" take it as a setting

    @property
    def needs_teacher_scores(self) -> bool:
        return self.teacher == "required" or self.graded

    def forward(self, scores: torch.Tensor, teacher_scores: torch.Tensor | None = None) -> torch.Tensor:
        if scores.dim() != 2:
            raise ValueError(
                f"{self.name}: expected scores of shape [groups, group_size], got {tuple(scores.shape)}"
            )
        if teacher_scores is not None and teacher_scores.shape != scores.shape:
            raise ValueError(
                f"{self.name}: teacher scores {tuple(teacher_scores.shape)} and scores {tuple(scores.shape)} differ"
            )
        if self.needs_teacher_scores and teacher_scores is None:
            raise ValueError(
                f"{self.name} needs teacher scores, and this batch has none (pos_scores / neg_scores in the data)"
            )
        teacher = teacher_scores.float() if teacher_scores is not None and self.needs_teacher_scores else None
        return self.compute(scores.float(), teacher)

    def compute(self, scores: torch.Tensor, teacher: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def settings(self) -> dict[str, Any]:
        """The keyword arguments this loss was built with (its constructor's parameters)."""
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {name: getattr(self, name) for name in names}

    def get_config_dict(self) -> dict[str, Any]:
        """What the model card and ``rerankforge.json`` record: the registry name and every setting."""
        return {"name": self.name, **self.settings()}

    def describe(self) -> str:
        """The summary with the settings, for the model card."""
        settings = ", ".join(f"{k}={v}" for k, v in self.settings().items())
        return f"{self.summary}" + (f" ({settings})" if settings else "")


def binary_labels(scores: torch.Tensor) -> torch.Tensor:
    """1 for each group's positive (column 0), 0 for its negatives."""
    labels = torch.zeros_like(scores)
    labels[:, 0] = 1.0
    return labels


def relevance(scores: torch.Tensor, teacher: torch.Tensor | None, graded: bool) -> torch.Tensor:
    """The labels a graded loss ranks by: the teacher's scores when ``graded``, else binary labels."""
    return teacher if graded and teacher is not None else binary_labels(scores)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mean of ``values`` where ``mask`` is 1; 0 (with a graph) where it is 0 everywhere. No host sync."""
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def check_positive(name: str, **values: float | None) -> None:
    for key, value in values.items():
        if value is not None and not value > 0:
            raise ValueError(f"{name}: {key} must be > 0, got {value}")
