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
from conftest import tiny_decoder
from score_checks import assert_same_scores

from rerankforge.inference import (
    FlagLLMReranker,
    FlagReranker,
    LayerWiseFlagLLMReranker,
    LayerwiseReranker,
    LLMReranker,
    Reranker,
)
from rerankforge.inference.batching import pair_length, shard_indices
from rerankforge.inference.device_pool import ConfigOnlyModel, DevicePool
from rerankforge.inference.modeling.layerwise import LayerwiseRerankerModel
from rerankforge.inference.modeling.spec import LayerwiseSpec

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
        if any(query == "settings" for query, _ in pairs):  # what the caller's settings set here
            return [float(getattr(self, "max_batch_tokens", -1))] * len(pairs)
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
    shares = shard_indices([pair_length(p) for p in pairs], 2)
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
    assert_same_scores(two_workers.compute_score(pairs), expected)
    assert_same_scores(
        two_workers.compute_score(pairs, batch_size=4, normalize=True),
        one_process.compute_score(pairs, normalize=True),
    )
    assert two_workers.compute_score(pairs[0]) == pytest.approx(expected[0], abs=1e-5)
    assert two_workers.compute_score([]) == []
    passages = [passage for _, passage in pairs[:7]]
    ranked = two_workers.rank("the cat", passages, top_k=3)
    assert [r["corpus_id"] for r in ranked] == [
        r["corpus_id"] for r in one_process.rank("the cat", passages, top_k=3)
    ]


def test_flag_reranker_on_two_devices(tiny_bert_dir):
    pairs = varied_pairs(seed=1)
    reranker = FlagReranker(str(tiny_bert_dir), devices=["cpu", "cpu"], max_length=64)
    single = FlagReranker(str(tiny_bert_dir), devices="cpu", max_length=64)
    assert_same_scores(reranker.compute_score(pairs), single.compute_score(pairs))
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
        # a call's settings (the LLM families' max_batch_tokens) reach every worker before it scores
        assert pool.score([("settings", "x")] * 4, _settings={"max_batch_tokens": 77}) == [77.0] * 4

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


def holds_no_weights(reranker) -> bool:
    return isinstance(reranker.model, ConfigOnlyModel) and not list(reranker.model.parameters())


def test_llm_reranker_on_two_devices_scores_as_one_process(tiny_llm_dirs):
    folder = str(tiny_llm_dirs("llama"))  # a plain causal LM: the stand-in spec, FlagLLMReranker's lengths
    pairs = varied_pairs(30, seed=2)
    single = LLMReranker.from_pretrained(folder, device="cpu")
    pooled = LLMReranker.from_pretrained(folder, devices=["cpu", "cpu"], batch_size=4)
    try:
        assert len(pooled.pool.processes) == 2 and holds_no_weights(pooled)
        expected = single.compute_score(pairs)
        assert_same_scores(pooled.compute_score(pairs), expected)
        assert pooled.compute_score(
            pairs, max_length=40, normalize=True, prompt="Relevant?"
        ) == pytest.approx(
            single.compute_score(pairs, max_length=40, normalize=True, prompt="Relevant?"), abs=1e-5
        )
        assert pooled.compute_score(pairs[3]) == pytest.approx(expected[3], abs=1e-5)
        pooled.max_batch_tokens = 64  # sent to the workers with each call
        assert_same_scores(pooled.compute_score(pairs), expected)
        passages = [passage for _, passage in pairs[:7]]
        assert [r["corpus_id"] for r in pooled.rank("the cat", passages, top_k=3)] == [
            r["corpus_id"] for r in single.rank("the cat", passages, top_k=3)
        ]
    finally:
        pooled.pool.close()


def test_flag_llm_reranker_on_two_devices_loads_each_worker_as_the_wrapper(tiny_llm_dirs):
    folder = str(tiny_llm_dirs("llama"))
    pairs = varied_pairs(30, seed=3)
    settings = dict(query_instruction_for_rerank="Q: ", passage_instruction_for_rerank="P: ", max_length=64)
    single = FlagLLMReranker(folder, devices="cpu", **settings)
    pooled = FlagLLMReranker(folder, devices=["cpu", "cpu"], batch_size=4, **settings)
    try:
        assert len(pooled.pool.processes) == 2 and holds_no_weights(pooled)
        expected = single.compute_score(pairs)
        # the workers build FlagLLMReranker's input ids: a plain LLMReranker's prefixes would score otherwise
        assert expected != pytest.approx(LLMReranker.compute_score(single, pairs, max_length=64), abs=1e-3)
        assert_same_scores(pooled.compute_score(pairs), expected)
        assert pooled.compute_score(pairs, prompt="Relevant?", normalize=True) == pytest.approx(
            single.compute_score(pairs, prompt="Relevant?", normalize=True), abs=1e-5
        )
        assert pooled.compute_score(pairs[0]) == pytest.approx(expected[0], abs=1e-5)
    finally:
        pooled.pool.close()


@pytest.fixture(scope="module")
def layerwise_dir(tmp_path_factory, llm_tokenizer):
    """A saved layerwise folder: heads on layers 1 and 2 of a random 2-layer Llama, made (not trained)."""
    yes = llm_tokenizer("Yes", add_special_tokens=False)["input_ids"][0]
    spec = LayerwiseSpec(query_max_len=16, passage_max_len=32, max_length=48, yes_token_id=yes, layers=[1, 2],
                         num_layers=2)  # fmt: skip
    model = LayerwiseRerankerModel(tiny_decoder("llama", len(llm_tokenizer)), spec)
    folder = tmp_path_factory.mktemp("tiny-layerwise")
    model.save_pretrained(folder)
    llm_tokenizer.save_pretrained(folder)
    return folder


def test_layerwise_reranker_on_two_devices_scores_every_cutoff_layer_as_one_process(layerwise_dir):
    pairs = varied_pairs(30, seed=4)
    single = LayerwiseReranker.from_pretrained(str(layerwise_dir), device="cpu")
    pooled = LayerwiseReranker.from_pretrained(str(layerwise_dir), devices=["cpu", "cpu"], batch_size=4)
    try:
        assert len(pooled.pool.processes) == 2 and holds_no_weights(pooled) and pooled.layers == [1, 2]
        expected = single.compute_score(pairs, cutoff_layers=[1, 2])
        assert len(expected) == 2 and expected[0] != pytest.approx(expected[1], abs=1e-3)
        per_layer = pooled.compute_score(pairs, cutoff_layers=[1, 2])
        assert len(per_layer) == 2
        for scores, wanted in zip(per_layer, expected, strict=True):
            assert_same_scores(scores, wanted)
        normalized = pooled.compute_score(pairs, cutoff_layers=[2, 1], normalize=True)
        for scores, wanted in zip(normalized, single.compute_score(pairs, cutoff_layers=[2, 1], normalize=True),
                                  strict=True):  # fmt: skip
            assert_same_scores(scores, wanted)
        assert pooled.compute_score(pairs, cutoff_layers=1) == pytest.approx(expected[0], abs=1e-5)
        assert pooled.compute_score(pairs[5], cutoff_layers=[1, 2]) == pytest.approx(
            [expected[0][5], expected[1][5]], abs=1e-5
        )
        assert pooled.compute_score([], cutoff_layers=[1, 2]) == [[], []]
        passages = [passage for _, passage in pairs[:7]]
        assert [r["corpus_id"] for r in pooled.rank("the cat", passages)] == [
            r["corpus_id"] for r in single.rank("the cat", passages)
        ]
    finally:
        pooled.pool.close()


def test_layerwise_flag_reranker_on_two_devices(layerwise_dir):
    pairs = varied_pairs(20, seed=5)
    single = LayerWiseFlagLLMReranker(str(layerwise_dir), devices="cpu", cutoff_layers=[1, 2], max_length=40)
    pooled = LayerWiseFlagLLMReranker(
        str(layerwise_dir), devices=["cpu", "cpu"], cutoff_layers=[1, 2], max_length=40
    )
    try:
        assert holds_no_weights(pooled)
        for scores, wanted in zip(pooled.compute_score(pairs), single.compute_score(pairs), strict=True):
            assert_same_scores(scores, wanted)
    finally:
        pooled.pool.close()
