"""Hard-negative mining: training JSONL from a retrieval run, negatives from a rank range, never a relevant one."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

from tqdm.auto import tqdm

from rerankforge.data_tools.files import atomic_writer
from rerankforge.data_tools.ir_data import IRDataset
from rerankforge.data_tools.retrieval import BM25Index, Run, ranked

logger = logging.getLogger(__name__)


def mine_hard_negatives(
    dataset: IRDataset,
    run: Run,
    num_negatives: int = 15,
    rank_range: tuple[int, int] = (10, 100),
    seed: int = 0,
    show_progress: bool = True,
) -> list[dict]:
    """One record per judged query: its relevant passages as ``pos``, ``num_negatives`` sampled from ranks
    ``rank_range`` (1 = best, both ends included) of ``run``, skipping every judged-relevant document and any
    passage whose text equals a positive's."""
    first, last = rank_range
    if not 1 <= first <= last:
        raise ValueError(f"rank_range must satisfy 1 <= start <= end, got {rank_range}")
    records = []
    short = 0
    without_negatives = 0
    for query_id in tqdm(dataset.judged_queries(), desc="mining", disable=not show_progress, unit="query"):
        relevant = dataset.relevant(query_id)
        positives = [dataset.corpus[d] for d in sorted(relevant) if d in dataset.corpus]
        if not positives:
            continue
        candidates = [
            d
            for d in ranked(run, query_id)[first - 1 : last]
            if d not in relevant and dataset.corpus[d] not in positives
        ]
        rng = random.Random(f"{seed}:{query_id}")
        chosen = rng.sample(candidates, min(num_negatives, len(candidates)))
        if not chosen:  # a group needs negatives: such a query cannot train, so it is counted and left out
            without_negatives += 1
            continue
        short += len(chosen) < num_negatives
        records.append(
            {"query": dataset.queries[query_id], "pos": positives, "neg": [dataset.corpus[d] for d in chosen]}
        )
    if short:
        logger.warning(
            "%d of %d queries got fewer than %d negatives from ranks %d-%d",
            short,
            len(records),
            num_negatives,
            first,
            last,
        )
    if without_negatives:
        logger.warning(
            "%d queries left out: no unjudged passage at ranks %d-%d", without_negatives, first, last
        )
    return records


def mine_from_dataset(
    dataset: IRDataset,
    num_negatives: int,
    rank_range: tuple[int, int],
    seed: int = 0,
    run: Run | None = None,
    show_progress: bool = True,
) -> list[dict]:
    """BM25 over the data set's corpus (unless a run is given), then `mine_hard_negatives` on its judged queries."""
    if run is None:
        judged = {q: dataset.queries[q] for q in dataset.judged_queries()}
        run = BM25Index(dataset.corpus).search(judged, rank_range[1], show_progress=show_progress)
    return mine_hard_negatives(dataset, run, num_negatives, rank_range, seed, show_progress)


def write_jsonl(records: list[dict], path: str | Path) -> Path:
    """Write atomically: a crash leaves the previous file or the new one, never half of one."""
    with atomic_writer(path) as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return Path(path)
