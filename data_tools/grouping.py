"""Training groups: one query with 1 positive and ``train_group_size - 1`` negatives.

The draw for example ``i`` in epoch ``e`` depends only on ``(seed, e, i)``, so a resumed run sees exactly the
groups an uninterrupted run would, whatever order or process the example is fetched in.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

import datasets
import torch

logger = logging.getLogger(__name__)


@dataclass
class TrainGroup:
    """What a collator receives for one query: passages[0] is the positive.

    Evaluation sends groups of one passage with ``index`` set, so scores can be mapped back to their pair.
    """

    query: str
    passages: list[str]
    teacher_scores: list[float] | None = None
    prompt: str | None = None
    index: int | None = None


class GroupedDataset(torch.utils.data.Dataset):
    """A map-style dataset of training groups, re-drawn each epoch from a seeded generator."""

    def __init__(self, records: datasets.Dataset, train_group_size: int, seed: int = 42):
        if train_group_size < 1:
            raise ValueError(f"train_group_size must be >= 1, got {train_group_size}")
        self.records = records
        self.train_group_size = train_group_size
        self.seed = seed
        self.epoch = 0
        needed = train_group_size - 1
        short = sum(1 for negs in records["neg"] if len(negs or []) < needed) if needed else 0
        self.queries_with_repeated_negatives = short
        if short:
            logger.warning(
                "%d of %d queries have fewer than %d negatives: their negatives are drawn with replacement",
                short,
                len(records),
                needed,
            )

    def set_epoch(self, epoch: int) -> None:
        """Called at the start of each epoch (by the trainer's callback, and by accelerate's dataloader)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.records)

    def _rng(self, index: int) -> random.Random:
        return random.Random(f"{self.seed}:{self.epoch}:{index}")

    def __getitem__(self, index: int) -> TrainGroup:
        record = self.records[index]
        rng = self._rng(index)
        positives: list[str] = record["pos"]
        negatives: list[str] = record["neg"] or []
        pos_index = rng.randrange(len(positives))
        needed = self.train_group_size - 1
        if needed == 0:
            neg_indices: list[int] = []
        elif len(negatives) >= needed:
            neg_indices = rng.sample(range(len(negatives)), needed)
        else:
            # too few: every negative once, then the rest drawn with replacement
            neg_indices = list(range(len(negatives)))
            rng.shuffle(neg_indices)
            neg_indices += [rng.randrange(len(negatives)) for _ in range(needed - len(negatives))]
        passages = [positives[pos_index]] + [negatives[i] for i in neg_indices]
        teacher_scores = None
        if record.get("pos_scores") is not None and (needed == 0 or record.get("neg_scores") is not None):
            teacher_scores = [float(record["pos_scores"][pos_index])]
            teacher_scores += [float(record["neg_scores"][i]) for i in neg_indices]
        return TrainGroup(record["query"], passages, teacher_scores, record.get("prompt"))
