"""The cross-encoder scoring pipeline: token-budget batches, the prefetching thread, array padding, repeated
texts encoded once; each checked against the plain path it replaces."""

from __future__ import annotations

import random
import threading

import numpy as np
import pytest
import torch
from score_checks import assert_same_scores
from test_faults_inputs import WORDS, OutOfMemoryAbove, layerwise, llm  # noqa: F401 (fixtures)
from test_inference import PAIRS, PASSAGES, QUERY

from rerankforge.inference import Reranker
from rerankforge.inference.batching import BatchSize
from rerankforge.inference.collate import PairCollator, rows
from rerankforge.inference.modeling.pair_encoding import PairEncoder, PairLengths
from rerankforge.inference.pipeline import Prefetcher, Stages, plan_batches, run_pipeline


class RecordingTokenizer:
    """The Rust tokenizer, recording the texts that its batch encoders are given."""

    def __init__(self, rust, texts: list[str]):
        self.rust, self.texts = rust, texts

    def __getattr__(self, name: str):
        method = getattr(self.rust, name)
        if not name.startswith("encode_batch"):
            return method
        return lambda batch, **kwargs: self.texts.extend(batch) or method(batch, **kwargs)


def varied_pairs(count: int, seed: int = 0) -> list[list[str]]:
    """Pairs of 1 to 120 words, a few queries repeated (as a rerank call repeats its query)."""
    rng = random.Random(seed)
    queries = [" ".join(rng.choices(WORDS, k=rng.randint(1, 12))) for _ in range(count // 4 + 1)]
    return [[rng.choice(queries), " ".join(rng.choices(WORDS, k=rng.randint(1, 120)))] for _ in range(count)]


@pytest.fixture(scope="module")
def reranker(tiny_bert_dir) -> Reranker:
    return Reranker.from_pretrained(str(tiny_bert_dir), device="cpu")


@pytest.fixture(scope="module")
def xlmr_reranker(tiny_xlmr_dir) -> Reranker:
    return Reranker.from_pretrained(str(tiny_xlmr_dir), device="cpu")


def recording_stages(reranker: Reranker, lengths: PairLengths, seen: list) -> Stages:
    """The reranker's own stages, with every batch's padded shape recorded before the forward."""
    stages = reranker.pipeline_stages(lengths)
    forward = stages.forward

    def record(inputs):
        seen.append(tuple(inputs["input_ids"].shape))
        return forward(inputs)

    return Stages(stages.encode, stages.collate, record, stages.padded_length)


@pytest.mark.parametrize("budget", [64, 100, 256, 1000])
def test_token_budget_batches_never_exceed_the_budget_and_keep_input_order(reranker, budget):
    pairs = varied_pairs(60)
    lengths = reranker.lengths_for(64)
    seen: list = []
    scores = run_pipeline(
        pairs, recording_stages(reranker, lengths, seen), BatchSize(16), budget, 4096, False
    )
    assert all(rows * width <= budget for rows, width in seen)
    assert all(rows <= 16 for rows, _ in seen) and sum(rows for rows, _ in seen) == len(pairs)
    one_by_one = [reranker.compute_score(pair, max_length=64) for pair in pairs]
    assert_same_scores(scores, one_by_one)  # every pair, in input order
    assert reranker.compute_score(pairs, max_length=64, max_batch_tokens=budget) == scores


def test_planned_batches_are_longest_first_and_as_full_as_the_budget_allows():
    lengths = [5, 40, 12, 40, 7, 30, 2]
    batches = list(plan_batches(lengths, BatchSize(3), max_batch_tokens=80))
    assert batches == [[1, 3], [5, 2], [4, 0, 6]]  # 2 x 40, 2 x 30 (3 x 30 > 80), then 3 rows of <= 7
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))


def test_a_budget_below_one_full_pair_is_refused_before_encoding(reranker, monkeypatch):
    monkeypatch.setattr(PairEncoder, "encode_encodings", lambda *a: pytest.fail("encoded before the check"))
    with pytest.raises(ValueError, match=r"max_batch_tokens=100 is less than one pair of max_length=512"):
        reranker.compute_score(PAIRS, max_batch_tokens=100)


def test_the_prefetching_pipeline_gives_the_plain_pipelines_scores(reranker, monkeypatch):
    pairs = varied_pairs(300, seed=1)
    monkeypatch.setattr(reranker, "chunk_size", 64)  # several chunks: the thread encodes the next meanwhile
    monkeypatch.setattr(reranker, "prefetch", False)
    plain = reranker.compute_score(pairs, batch_size=16)
    monkeypatch.setattr(reranker, "prefetch", True)
    threads = []
    original = Prefetcher.__init__
    monkeypatch.setattr(Prefetcher, "__init__", lambda self, *a: threads.append(1) or original(self, *a))
    prefetched = reranker.compute_score(pairs, batch_size=16)
    assert threads == [1]  # the thread path really ran
    assert np.abs(np.array(prefetched) - np.array(plain)).max() <= 1e-6
    assert not any(t.name == "rerankforge-prefetch" for t in threading.enumerate())  # and it ended


def test_an_error_in_the_prefetch_thread_reaches_the_caller_and_the_thread_ends(reranker, monkeypatch):
    monkeypatch.setattr(reranker, "prefetch", True)
    monkeypatch.setattr(reranker, "chunk_size", 4)

    calls = []
    original = PairEncoder.encode_encodings

    def fail_on_second_chunk(self, queries, passages):
        calls.append(len(queries))
        if len(calls) == 2:
            raise RuntimeError("tokenizer broke on chunk 2")
        return original(self, queries, passages)

    monkeypatch.setattr(PairEncoder, "encode_encodings", fail_on_second_chunk)
    with pytest.raises(RuntimeError, match="tokenizer broke on chunk 2"):
        reranker.compute_score(PAIRS * 4, batch_size=2)
    assert not any(t.name == "rerankforge-prefetch" for t in threading.enumerate())


def test_out_of_memory_in_the_prefetching_pipeline_returns_every_score_in_order(reranker, monkeypatch):
    pairs = varied_pairs(80, seed=2)
    expected = reranker.compute_score(pairs, batch_size=16)
    monkeypatch.setattr(reranker, "prefetch", True)  # batches of 16 are already queued when the error comes
    monkeypatch.setattr(reranker, "chunk_size", 32)
    injector = OutOfMemoryAbove(rows=5)
    handle = reranker.model.register_forward_pre_hook(injector, with_kwargs=True)
    try:
        scores = reranker.compute_score(pairs, batch_size=16)
    finally:
        handle.remove()
    assert scores == pytest.approx(expected, abs=1e-5)
    assert injector.seen[:5] == [16, 12, 9, 6, 4] and max(injector.seen[5:]) <= 5
    assert sum(b for b in injector.seen if b <= 5) == len(pairs)


@pytest.mark.parametrize("fixture", ["reranker", "xlmr_reranker"])
@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("multiple", [None, 8])
def test_array_padding_equals_the_tokenizers_pad(request, fixture, side, multiple):
    reranker = request.getfixturevalue(fixture)
    encoder = reranker._encoder(reranker.lengths)
    queries, passages = [q for q, _ in PAIRS], [p for _, p in PAIRS]
    tokenizer = reranker.tokenizer
    names = list(tokenizer.model_input_names)
    previous, tokenizer.padding_side = tokenizer.padding_side, side
    try:
        expected = tokenizer.pad(
            encoder.encode(queries, passages), pad_to_multiple_of=multiple, return_tensors="np"
        )
        collate = PairCollator(
            tokenizer, [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in names], multiple
        )
        arrays = collate(encoder.encode_encodings(queries, passages))
    finally:
        tokenizer.padding_side = previous
    assert set(arrays) == set(expected)
    for name in arrays:
        np.testing.assert_array_equal(arrays[name], expected[name])


def test_split_rows_drop_the_padding_only_longer_rows_needed(reranker):
    encoder = reranker._encoder(reranker.lengths)
    collate = PairCollator(reranker.tokenizer, ["input_ids", "attention_mask", "token_type_ids"], None)
    encodings = encoder.encode_encodings([QUERY] * 3, [PASSAGES[1], PASSAGES[0], PASSAGES[2]])
    batch = {k: torch.from_numpy(v) for k, v in collate(encodings).items()}
    tail = rows(batch, 1, 3)
    assert tail["input_ids"].shape == (2, max(len(encodings[1]), len(encodings[2])))
    assert torch.equal(tail["input_ids"], batch["input_ids"][1:3, : tail["input_ids"].shape[1]])


def test_repeated_texts_are_encoded_once_with_the_same_ids(reranker, monkeypatch):
    """A query repeated over its candidates is tokenized once; a pair cut to fit cuts its own copy, so the
    shared encoding stays whole for the next pair."""
    lengths = PairLengths(query_max_len=8, passage_max_len=20, max_length=16)
    encoder = PairEncoder(reranker.tokenizer, lengths)
    long_query = "what do women wear on the beach when it is very sunny"
    queries = [long_query, long_query, QUERY, long_query]
    passages = [PASSAGES[1], PASSAGES[0], PASSAGES[1], PASSAGES[1]]
    together = encoder.encode(queries, passages)
    alone = [encoder.encode([q], [p])[0] for q, p in zip(queries, passages, strict=True)]
    assert together == alone
    assert together[0] == together[3] and len(together[0]["input_ids"]) == 16
    texts: list[str] = []
    monkeypatch.setattr(encoder, "_rust", RecordingTokenizer(encoder._rust, texts))
    assert encoder.encode(queries, passages) == together
    assert sorted(texts) == sorted({*queries, *passages})  # each distinct text once


class ShapeRecorder:
    """A forward pre-hook recording each batch's (rows, width)."""

    def __init__(self):
        self.seen: list[tuple[int, int]] = []

    def __call__(self, module, args, kwargs):
        ids = kwargs.get("input_ids") if kwargs.get("input_ids") is not None else args[0]
        self.seen.append(tuple(ids.shape))


@pytest.mark.parametrize("family", ["llm", "layerwise"])
def test_the_decoder_families_batch_by_token_budget_too(request, monkeypatch, family):
    reranker = request.getfixturevalue(family)
    pairs = varied_pairs(40, seed=3)
    expected = reranker.compute_score(pairs, batch_size=16)
    monkeypatch.setattr(reranker, "max_batch_tokens", 300)
    recorder = ShapeRecorder()
    handle = reranker.model.register_forward_pre_hook(recorder, with_kwargs=True)
    try:
        scores = reranker.compute_score(pairs, batch_size=16)
    finally:
        handle.remove()
    assert all(rows * width <= 300 for rows, width in recorder.seen)  # left-padded rows, counted as padded
    assert sum(rows for rows, _ in recorder.seen) == len(pairs) and len(recorder.seen) > 3
    assert scores == pytest.approx(expected, abs=1e-5)
