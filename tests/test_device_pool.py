"""Scoring on several devices (issue 15): one worker process per device, tested with two CPU workers.

Each spawned worker imports torch and transformers (seconds on a busy CPU), so each pool is started once.
The fault cases use a stand-in scorer (below), importable by the workers from this module.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time

import pytest

from rerankforge.inference import FlagReranker, Reranker
from rerankforge.inference.device_pool import DevicePool, split_by_length

pytestmark = pytest.mark.distributed

WORDS = [
    "the",
    "cat",
    "sat",
    "on",
    "a",
    "mat",
    "by",
    "the",
    "river",
    "stone",
    "cloud",
    "paper",
    "garden",
    "window",
    "silver",
    "bridge",
]


def varied_pairs(count: int = 50, seed: int = 0) -> list[tuple[str, str]]:
    """Queries of 1-8 words, passages of 1-300 words: some truncated, batches of unequal lengths."""
    rng = random.Random(seed)
    return [
        (
            " ".join(rng.choices(WORDS, k=rng.randint(1, 8))),
            " ".join(rng.choices(WORDS, k=rng.randint(1, 300))),
        )
        for _ in range(count)
    ]


class StandInScorer:
    """A worker's reranker for the fault cases: "sleep" pairs take long, "raise" pairs raise."""

    def _score(self, pairs: list[tuple[str, str]], **kwargs: object) -> list[float]:
        if any(query == "raise" for query, _ in pairs):
            raise ValueError("a stand-in scoring error")
        if any(query == "sleep" for query, _ in pairs):
            time.sleep(60)
        return [float(len(query) + len(passage)) for query, passage in pairs]


def stand_in_loader(path: str, device: str, **kwargs: object) -> StandInScorer:
    if path == "missing":
        raise FileNotFoundError("no model folder at missing")
    return StandInScorer()


def alive(pool: DevicePool) -> list[bool]:
    return [process.is_alive() for process in pool.processes]


@pytest.fixture(scope="module")
def one_process(tiny_bert_dir) -> Reranker:
    return Reranker.from_pretrained(str(tiny_bert_dir), device="cpu")


@pytest.fixture(scope="module")
def two_workers(tiny_bert_dir):
    reranker = Reranker.from_pretrained(str(tiny_bert_dir), devices=["cpu", "cpu"])
    yield reranker
    reranker.pool.close()


def test_split_is_balanced_and_covers_every_pair():
    pairs = varied_pairs(51)
    shares = split_by_length(pairs, 2)
    assert sorted(shares[0] + shares[1]) == list(range(51))
    assert [len(share) for share in shares] == [26, 25]
    text = [sum(len(pairs[i][0]) + len(pairs[i][1]) for i in share) for share in shares]
    assert abs(text[0] - text[1]) < 0.1 * sum(text)
    lengths = [len(pairs[i][0]) + len(pairs[i][1]) for i in shares[0]]
    assert lengths == sorted(lengths, reverse=True)  # each worker gets its pairs longest first


def test_two_workers_score_as_one_process_in_input_order(one_process, two_workers):
    pairs = varied_pairs()
    assert two_workers.pool is not None and len(two_workers.pool.processes) == 2
    assert sum(p.numel() for p in two_workers.model.parameters()) == 0  # the weights live in the workers
    expected = one_process.compute_score(pairs)
    assert two_workers.compute_score(pairs) == pytest.approx(expected, abs=1e-5)
    assert two_workers.compute_score(pairs, batch_size=4, normalize=True) == pytest.approx(
        one_process.compute_score(pairs, normalize=True), abs=1e-5
    )
    assert two_workers.compute_score(pairs[0]) == pytest.approx(expected[0], abs=1e-5)
    assert two_workers.compute_score([]) == []
    passages = [passage for _, passage in pairs[:7]]
    ranked = two_workers.rank("the cat", passages, top_k=3)
    assert [r["index"] for r in ranked] == [
        r["index"] for r in one_process.rank("the cat", passages, top_k=3)
    ]


def test_flag_reranker_on_two_devices(tiny_bert_dir):
    pairs = varied_pairs(seed=1)
    reranker = FlagReranker(str(tiny_bert_dir), devices=["cpu", "cpu"], max_length=64)
    single = FlagReranker(str(tiny_bert_dir), devices="cpu", max_length=64)
    assert reranker.compute_score(pairs) == pytest.approx(single.compute_score(pairs), abs=1e-5)
    pool = reranker.pool
    pool.close()
    assert not any(alive(pool))
    with pytest.raises(RuntimeError, match="closed"):
        reranker.compute_score(pairs)


def test_worker_error_is_raised_and_a_killed_worker_is_named_without_a_hang():
    with DevicePool("stand-in", ["cpu", "cpu"], loader=stand_in_loader) as pool:
        pairs = [("q", "a passage"), ("query", "p")]
        with pytest.raises(
            RuntimeError, match=r"scoring worker \d \(device cpu\) raised ValueError: a stand-in"
        ):
            pool.score([("raise", "x"), ("q", "p")])
        assert pool.score(pairs) == [10.0, 6.0]  # the pool stays usable after a worker's exception

        victim = pool.processes[1]
        killer = threading.Timer(1.0, os.kill, (victim.pid, signal.SIGKILL))
        killer.start()
        started = time.monotonic()
        with pytest.raises(RuntimeError, match=r"scoring worker 1 \(device cpu\) died with exit code -9"):
            pool.score([("sleep", "x")] * 4)  # both workers sleep; worker 1 is killed mid-call
        killer.join()
        assert time.monotonic() - started < 10
        assert not any(alive(pool))  # the other worker is terminated, not left sleeping
        with pytest.raises(RuntimeError, match="closed"):
            pool.score(pairs)


def test_a_worker_that_cannot_load_raises_in_the_caller():
    pool = DevicePool("missing", ["cpu"], loader=stand_in_loader)
    with pytest.raises(
        RuntimeError, match=r"scoring worker 0 \(device cpu\) could not load missing: FileNotF"
    ):
        pool.wait_ready()
    assert not any(alive(pool))
