"""Score one list of pairs across the processes of an ``accelerate launch``: each process scores its shard,
every process receives all scores in input order, and the caller lets the main process alone write.

Without a launch (or with one process) scoring is a plain ``compute_score`` call: no process group is made.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from accelerate import PartialState
from accelerate.logging import get_logger
from accelerate.utils import gather_object, parse_flag_from_env

from rerankforge.inference.batching import pair_length, shard_indices
from rerankforge.inference.pairs import Pair

logger = get_logger(__name__)


class ScoresPairs(Protocol):
    """What every rerankforge reranker offers (cross-encoder, LLM, layerwise, ONNX)."""

    def compute_score(
        self,
        pairs: Sequence[Pair],
        batch_size: int | None = None,
        max_length: int | None = None,
        show_progress: bool | None = None,
    ) -> list[float]: ...


@dataclass(frozen=True)
class Launch:
    """The processes this one runs among; ``device`` is the process's own under a launch, None without one
    (the caller's ``--device`` or the reranker's default then decides)."""

    num_processes: int = 1
    process_index: int = 0
    device: torch.device | None = None

    @property
    def is_main_process(self) -> bool:
        return self.process_index == 0

    @property
    def distributed(self) -> bool:
        return self.num_processes > 1


def launched_world_size() -> int:
    """The number of processes ``accelerate launch`` / torchrun started (1 when run directly)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def current_launch() -> Launch:
    """The launch from the environment, as accelerate reads it; the process group (gloo on the CPU, nccl on
    GPUs) is made only when there are several processes."""
    if launched_world_size() <= 1:
        return Launch()

    # PartialState picks gloo only when told cpu=True: `use_cpu` in the config, or a machine without CUDA
    cpu = parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available()
    state = PartialState(cpu=cpu)
    return Launch(state.num_processes, state.process_index, state.device)


def process_device(launch: Launch, requested: str | None) -> str | None:
    """The device this process scores on: ``requested`` without a launch; under one, the process's own
    (cuda:LOCAL_RANK, or cpu), because N processes on one named device would only queue behind each other."""
    if not launch.distributed:
        return requested
    assert launch.device is not None
    if requested is not None and torch.device(requested) != launch.device:
        logger.warning(
            "--device %s is ignored under a launch of %d processes: each process scores on its own device "
            "(this one: %s); use `accelerate launch --cpu` for CPU processes",
            requested, launch.num_processes, launch.device,
        )  # fmt: skip
    return str(launch.device)


def merge_shards(shards: Sequence[tuple[Sequence[int], Sequence[float]]], total: int) -> list[float]:
    """The shards' ``(indices, scores)`` put back in input order; every index must come exactly once."""
    scores: list[float | None] = [None] * total
    for indices, values in shards:
        for index, value in zip(indices, values, strict=True):
            if scores[index] is not None:
                raise ValueError(f"pair {index} was scored by two processes")
            scores[index] = value
    missing = [i for i, s in enumerate(scores) if s is None]
    if missing:
        raise ValueError(f"{len(missing)} pair(s) were scored by no process, the first: {missing[0]}")
    return scores  # type: ignore[return-value]


def pairs_fingerprint(pairs: Sequence[Pair]) -> str:
    """A digest of the pairs, to check that every process split the same list (a process that built its
    pairs in another order would silently put scores on the wrong pairs)."""
    digest = hashlib.blake2b(digest_size=16)
    for query, passage in pairs:
        digest.update(query.encode("utf-8", "surrogatepass") + b"\x00")
        digest.update(passage.encode("utf-8", "surrogatepass") + b"\x01")
    return digest.hexdigest()


def compute_score_sharded(
    reranker: ScoresPairs,
    pairs: Sequence[Pair],
    launch: Launch | None = None,
    batch_size: int | None = None,
    max_length: int | None = None,
    show_progress: bool | None = True,
    return_windows: bool = False,
) -> list[float] | tuple[list[float], list[int]]:
    """``reranker.compute_score(pairs, ...)`` with the pairs split across the launch's processes; every process
    returns all scores in input order (with ``return_windows``, and the windows each passage took: rerankforge's
    rerankers only). The progress bar is the main process's (its shard).

    A process that raises ends the launch (accelerate launch stops the others); nothing here waits on a
    barrier, only on the one gather every process reaches after scoring.
    """
    launch = launch or current_launch()
    pairs = list(pairs)
    if not launch.distributed:
        return score_shard(reranker, pairs, batch_size, max_length, show_progress, return_windows)

    indices = shard_indices([pair_length(p) for p in pairs], launch.num_processes)[launch.process_index]
    progress = show_progress if launch.is_main_process else False
    mine = score_shard(
        reranker, [pairs[i] for i in indices], batch_size, max_length, progress, return_windows
    )
    gathered = gather_object([(pairs_fingerprint(pairs), indices, mine)])
    if len({fingerprint for fingerprint, _, _ in gathered}) != 1:
        raise RuntimeError("the processes of this launch built different pair lists; scores cannot be merged")
    if not return_windows:
        return merge_shards([(ids, scores) for _, ids, scores in gathered], len(pairs))
    scores = merge_shards([(ids, scores) for _, ids, (scores, _) in gathered], len(pairs))
    return scores, merge_shards([(ids, counts) for _, ids, (_, counts) in gathered], len(pairs))


def score_shard(
    reranker: ScoresPairs,
    pairs: list[Pair],
    batch_size: int | None,
    max_length: int | None,
    show_progress: bool | None,
    return_windows: bool = False,
) -> list[float] | tuple[list[float], list[int]]:
    """One process's scores (none for an empty shard: a launch can have more processes than pairs), with the
    windows each passage took when asked."""
    if not pairs:
        return ([], []) if return_windows else []
    options = {"return_windows": True} if return_windows else {}  # a FlagEmbedding teacher has no such option
    result = reranker.compute_score(
        pairs, batch_size=batch_size, max_length=max_length, show_progress=show_progress, **options
    )
    if return_windows:
        scores, counts = result
        return list(scores), list(counts)
    return list(result)
