"""Hostile inputs to `compute_score` and `rank` on all three families: what a user would pass works, anything
else is refused naming the first bad item; empty and huge inputs score; 100,000 pairs score in flat memory."""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import subprocess
import sys
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_decoder
from score_checks import assert_same_scores
from test_inference import PASSAGES as INFERENCE_PASSAGES
from test_inference import QUERY

from rerankforge.inference import FlagLLMReranker, FlagReranker, LayerwiseReranker, LLMReranker, Reranker
from rerankforge.inference.modeling.layerwise import LayerwiseRerankerModel
from rerankforge.inference.modeling.pair_encoding import PairEncoder
from rerankforge.inference.modeling.spec import LayerwiseSpec

PASSAGES = [
    *INFERENCE_PASSAGES,
    "",
    "the apple is here, river indeed; the stone is there, cloud maybe",
]
PAIRS = [[QUERY, p] for p in PASSAGES] + [["where is the apple river stone", "the apple is here"]]
MEGABYTE_PASSAGE = ("Some women with flip-flops on are walking along the beach. " * 17_000)[:1_000_000]
FAMILIES = ["cross_encoder", "llm", "layerwise"]


@pytest.fixture(scope="module")
def cross_encoder(tiny_bert_dir) -> Reranker:
    return Reranker.from_pretrained(str(tiny_bert_dir), device="cpu")


@pytest.fixture(scope="module")
def llm(tiny_llm_dirs) -> LLMReranker:
    return LLMReranker.from_pretrained(str(tiny_llm_dirs("llama")), device="cpu")


@pytest.fixture(scope="module")
def layerwise(llm_tokenizer) -> LayerwiseReranker:
    """Heads on layers 1 and 2 of a random 2-layer Llama, built in memory (no training needed)."""
    yes = llm_tokenizer("Yes", add_special_tokens=False)["input_ids"][0]
    spec = LayerwiseSpec(query_max_len=16, passage_max_len=32, max_length=48, yes_token_id=yes, layers=[1, 2],
                         num_layers=2)  # fmt: skip
    model = LayerwiseRerankerModel(tiny_decoder("llama", len(llm_tokenizer)), spec)
    return LayerwiseReranker(model, llm_tokenizer, device="cpu")


@pytest.fixture(params=FAMILIES)
def reranker(request):
    return request.getfixturevalue(request.param)


REFUSED = [  # (id, the pairs argument, exception, what the message must name)
    ("None", lambda: None, TypeError, "pairs is None"),
    ("number", lambda: 3, TypeError, "pairs is int (3)"),
    ("float", lambda: 2.5, TypeError, "pairs is float"),
    ("bare-string", lambda: "what is it", TypeError, "pairs is str"),
    ("bytes", lambda: b"q", TypeError, "pairs is bytes"),
    ("dict", lambda: {"q": "p"}, TypeError, "pairs is dict"),
    ("set", lambda: {("q", "p")}, TypeError, "pairs is set"),
    ("one-pair-of-three", lambda: ("q", "p", "x"), ValueError, "pairs[2]"),
    ("one-pair-with-int", lambda: ["q", 5], TypeError, "pairs[1] is int"),
    ("pair-of-three", lambda: [["q", "p"], ["q", "p", "x"]], ValueError, "pairs[1] has 3 items"),
    ("pair-of-one", lambda: [["q", "p"], ["q"]], ValueError, "pairs[1] has 1 item"),
    (
        "non-str-item",
        lambda: [["q", "p"]] * 3 + [["q", 7]],
        TypeError,
        "pairs[3][1] is int (7), expected str",
    ),
    ("None-item", lambda: [["q", "p"], ["q", None]], TypeError, "pairs[1][1] is None"),
    ("bytes-item", lambda: [["q", b"p"]], TypeError, "pairs[0][1] is bytes"),
    ("None-pair", lambda: [["q", "p"], None], TypeError, "pairs[1] is None"),
    ("number-pair", lambda: [["q", "p"], 5], TypeError, "pairs[1] is int"),
    ("string-pair", lambda: [["q", "p"], "qp"], TypeError, "pairs[1] is str"),
    ("too-deep", lambda: [[["q", "p"]]], TypeError, "pairs[0][0] is list"),
    ("too-deep-later", lambda: [["q", "p"], [["q", "p"], ["q", "p"]]], TypeError, "pairs[1][0] is list"),
    ("generator-bad", lambda: (p for p in [["q", "p"], ["q", None]]), TypeError, "pairs[1][1] is None"),
    ("generator-of-str", lambda: (t for t in ["q", "p"]), TypeError, "pairs[0] is str"),
    ("numpy-n-by-3", lambda: np.array([["q", "p", "x"]]), ValueError, "shape (1, 3)"),
    ("numpy-3d", lambda: np.array([[["q", "p"]]]), ValueError, "shape (1, 1, 2)"),
    ("numpy-1d-of-3", lambda: np.array(["q", "p", "x"]), ValueError, "shape (3,)"),
    ("numpy-scalar", lambda: np.array("q"), ValueError, "shape ()"),
    ("numpy-numbers", lambda: np.array([[1, 2]]), TypeError, "pairs[0][0] is int"),
    (
        "numpy-object-None",
        lambda: np.array([["q", "p"], ["q", None]], dtype=object),
        TypeError,
        "pairs[1][1]",
    ),
]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("make, error, message", [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_bad_pairs_are_refused_naming_the_first_bad_item(request, family, make, error, message):
    reranker = request.getfixturevalue(family)
    with pytest.raises(error) as raised:
        reranker.compute_score(make())
    text = str(raised.value)
    assert message in text
    assert "pairs[" in text or text.startswith("pairs is")  # the first bad item, or the whole argument
    if "numpy array of shape" in text and "shape ()" not in text:
        assert "pairs[0]" in text


def test_a_bad_last_pair_is_refused_before_anything_is_scored(cross_encoder):
    calls = []
    hook = cross_encoder.model.register_forward_pre_hook(lambda *args: calls.append(1))
    try:
        with pytest.raises(TypeError, match=r"pairs\[9999\]\[0\] is None"):
            cross_encoder.compute_score([["q", "p"]] * 9999 + [[None, "p"]])
    finally:
        hook.remove()
    assert calls == []


RANK_REFUSED = [  # (id, query, passages, exception, message)
    ("query-None", None, ["a"], TypeError, "query is None"),
    ("query-list", ["q"], ["a"], TypeError, "query is list"),
    ("passages-None", QUERY, None, TypeError, "passages is None"),
    ("passages-str", QUERY, "one passage", TypeError, "passages is str"),
    ("passage-None", QUERY, ["a", "b", None], TypeError, "passages[2] is None"),
    ("passage-number", QUERY, ["a", 3.5], TypeError, "passages[1] is float (3.5)"),
    ("passage-pair", QUERY, ["a", ["b", "c"]], TypeError, "passages[1] is list"),
    ("passages-2d-array", QUERY, np.array([["a", "b"]]), ValueError, "shape (1, 2)"),
]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("query, passages, error, message", [c[1:] for c in RANK_REFUSED],
                         ids=[c[0] for c in RANK_REFUSED])  # fmt: skip
def test_rank_refuses_a_bad_query_or_passage_by_index(request, family, query, passages, error, message):
    with pytest.raises(error) as raised:
        request.getfixturevalue(family).rank(query, passages)
    assert message in str(raised.value)


def test_every_accepted_form_gives_the_scores_of_the_list(reranker):
    expected = reranker.compute_score(PAIRS, batch_size=3)
    assert len(set(expected)) == len(PAIRS)  # distinct: a reordering would show
    forms = {
        "tuple of tuples": tuple(tuple(p) for p in PAIRS),
        "generator": (p for p in PAIRS),
        "iterator": iter(PAIRS),
        "map": map(tuple, PAIRS),
        "numpy str_": np.array(PAIRS),
        "numpy object": np.array(PAIRS, dtype=object),
        "list of numpy rows": [np.array(p) for p in PAIRS],
    }
    for name, pairs in forms.items():
        assert reranker.compute_score(pairs, batch_size=3) == expected, name
    for one in (tuple(PAIRS[1]), PAIRS[1], np.array(PAIRS[1]), np.array(PAIRS[1], dtype=object)):
        score = reranker.compute_score(one)
        assert isinstance(score, float) and score == pytest.approx(expected[1], abs=1e-5)
    ranked = reranker.rank(
        QUERY, np.array(PASSAGES), activation_fn=torch.nn.Identity(), return_documents=True
    )
    by_index = {r["corpus_id"]: r["score"] for r in ranked}
    assert [by_index[i] for i in range(len(PASSAGES))] == pytest.approx(expected[: len(PASSAGES)], abs=1e-5)
    assert all(type(r["text"]) is str for r in ranked)
    assert reranker.rank(QUERY, (p for p in PASSAGES)) == reranker.rank(QUERY, PASSAGES)


def test_empty_inputs_give_empty_results(reranker):
    makers = [list, tuple, lambda: iter([]), lambda: (p for p in []), lambda: np.array([]),
              lambda: np.empty((0, 2), dtype=str)]  # fmt: skip
    for make in makers:
        assert reranker.compute_score(make()) == []
        assert reranker.compute_score(make(), normalize=True) == []
    assert reranker.rank(QUERY, []) == []
    assert reranker.rank(QUERY, iter([])) == []


@contextlib.contextmanager
def embedded_widths(reranker) -> Iterator[list[int]]:
    """The width (tokens per row, padded) of every batch the model embeds while in the block."""
    widths: list[int] = []
    embeddings = reranker.model.backbone.get_input_embeddings()
    handle = embeddings.register_forward_pre_hook(lambda module, args: widths.append(args[0].shape[-1]))
    try:
        yield widths
    finally:
        handle.remove()


def test_empty_strings_and_a_megabyte_passage_score_finite(reranker):
    """A 1 MB passage is cut to the passage budget: the model embeds as many tokens as for the passage's first
    10,000 characters (themselves cut), and the pair scores as they do."""
    prefix = MEGABYTE_PASSAGE[:10_000]
    with embedded_widths(reranker) as widths:
        scores = reranker.compute_score([["", ""], [QUERY, ""], ["", "sandals"], [QUERY, MEGABYTE_PASSAGE]])
    with embedded_widths(reranker) as prefix_widths:
        prefix_score = reranker.compute_score([QUERY, prefix])
    assert all(math.isfinite(s) for s in scores)
    assert scores[3] == pytest.approx(prefix_score, abs=1e-5)
    prefix_tokens = len(reranker.tokenizer(prefix, add_special_tokens=False)["input_ids"])  # ~2,000
    assert max(widths) == max(prefix_widths) < prefix_tokens / 3
    assert math.isfinite(reranker.compute_score([QUERY, MEGABYTE_PASSAGE], normalize=True))


def test_flag_wrappers_take_the_same_path(tiny_bert_dir, tiny_llm_dirs):
    for flag in (FlagReranker(str(tiny_bert_dir), devices="cpu"),
                 FlagLLMReranker(str(tiny_llm_dirs("llama")), devices="cpu")):  # fmt: skip
        expected = flag.compute_score(PAIRS)
        assert flag.compute_score(p for p in PAIRS) == expected
        assert flag.compute_score(np.array(PAIRS)) == expected
        assert flag.compute_score([]) == []
        with pytest.raises(TypeError, match=r"pairs\[3\]\[1\] is int"):
            flag.compute_score(PAIRS[:3] + [[QUERY, 3]])
        with pytest.raises(ValueError, match=r"pairs\[1\] has 3 items"):
            flag.compute_score([PAIRS[0], PAIRS[1] + ["x"]])
        with pytest.raises(TypeError, match=r"passages\[1\] is None"):
            flag.rank(QUERY, ["a", None])


@pytest.mark.parametrize("family", FAMILIES)
def test_chunked_scores_equal_unchunked_in_input_order(request, monkeypatch, family):
    reranker = request.getfixturevalue(family)
    pairs = PAIRS * 2 + [["q", "p"]]  # 17 pairs
    whole = reranker.compute_score(pairs, batch_size=2)
    sizes = []
    if family == "cross_encoder":  # the pipeline's encode stage, one call per chunk
        original = PairEncoder.encode_encodings
        monkeypatch.setattr(
            PairEncoder, "encode_encodings", lambda self, q, p: sizes.append(len(q)) or original(self, q, p)
        )
    else:  # the decoder families' encode stage, one call per chunk
        original = reranker.chunk_encoder

        def counting(lengths, prompt):
            encode = original(lengths, prompt)
            return lambda chunk: sizes.append(len(chunk)) or encode(chunk)

        monkeypatch.setattr(reranker, "chunk_encoder", counting)
    monkeypatch.setattr(reranker, "chunk_size", 5)  # rounded down to whole batches of 2: chunks of 4
    chunked = reranker.compute_score(pairs, batch_size=2)
    assert sizes == [4, 4, 4, 4, 1]  # never more than one chunk of pairs encoded at a time
    assert chunked == pytest.approx(whole, abs=1e-5)
    assert_same_scores(reranker.compute_score(pairs[::-1], batch_size=2), whole[::-1])


def test_onnx_backend_scores_in_chunks_too(tmp_path, monkeypatch, tiny_bert_dir):
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("RERANKFORGE_CACHE", str(tmp_path / "cache"))
    onnx = Reranker.from_pretrained(str(tiny_bert_dir), backend="onnx")
    whole = onnx.compute_score(PAIRS * 2, batch_size=2)
    onnx.chunk_size = 4
    assert_same_scores(onnx.compute_score(PAIRS * 2, batch_size=2), whole)


def test_progress_bar_is_automatic_one_bar_across_chunks(capsys, monkeypatch, cross_encoder):
    pairs = (PAIRS * 2)[:11]
    cross_encoder.compute_score(pairs[:10], batch_size=1)  # 10 batches: no bar
    assert "scoring" not in capsys.readouterr().err
    monkeypatch.setattr(cross_encoder, "chunk_size", 4)
    cross_encoder.compute_score(pairs, batch_size=1)  # 11 batches in 3 chunks: one bar
    err = capsys.readouterr().err
    assert err.count(" 0/11 ") == 1 and "11/11" in err
    cross_encoder.compute_score(pairs[:2], show_progress=True)
    assert "2/2" in capsys.readouterr().err
    cross_encoder.compute_score(pairs, batch_size=1, show_progress=False)
    cross_encoder.rank(QUERY, PASSAGES, show_progress_bar=False)
    assert "scoring" not in capsys.readouterr().err


WORDS = ["the", "apple", "river", "stone", "cloud", "music", "paper", "garden", "window", "silver", "orange",
         "forest", "beach", "sandals"]  # fmt: skip


def many_pairs(count: int, words: int = 30) -> list[list[str]]:
    """Distinct pairs of ~40 tokens (one query, passages of random words)."""
    rng = random.Random(0)
    return [[QUERY, " ".join(rng.choices(WORDS, k=words)) + f" {i}"] for i in range(count)]


def python_peak_mb(run: Callable[[], object]) -> float:
    """Peak of Python's allocations while ``run()`` runs (tracemalloc: exact and independent of what the
    allocator kept from earlier tests; the tokenizer's Rust memory is not counted, the slow test counts it)."""
    tracemalloc.start()
    try:
        run()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def test_memory_stays_flat_as_the_number_of_pairs_grows(capsys, monkeypatch, cross_encoder):
    """8,000 pairs peak as 2,000 do when encoded 512 at a time; all at once (as before chunking) the peak grows
    with the pairs (measured, Python allocations: chunked 2.7 and 2.4 MB; unchunked 26.3 MB at 8,000)."""
    small, large = many_pairs(2_000), many_pairs(8_000)
    monkeypatch.setattr(cross_encoder, "chunk_size", 512)
    small_peak = python_peak_mb(lambda: cross_encoder.compute_score(small))
    scores = []
    large_peak = python_peak_mb(lambda: scores.extend(cross_encoder.compute_score(large)))
    assert len(scores) == 8_000 and all(math.isfinite(s) for s in scores)
    assert "8000/8000" in capsys.readouterr().err  # more than 10 batches: the bar shows by itself
    monkeypatch.setattr(cross_encoder, "chunk_size", 10**9)  # everything encoded at once, as before
    unchunked_peak = python_peak_mb(lambda: cross_encoder.compute_score(large, show_progress=False))
    print(
        f"Python peak: 2k {small_peak:.1f} MB, 8k {large_peak:.1f} MB, 8k unchunked {unchunked_peak:.1f} MB"
    )
    assert large_peak < small_peak + 2  # 6,000 more pairs: their results and tuples (~100 bytes each) only
    assert unchunked_peak > 4 * large_peak


HUNDRED_THOUSAND = """
import json, sys
sys.path.insert(0, {tests!r})
from test_faults_inputs import many_pairs
from rerankforge.inference import Reranker

def kilobytes(field):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(field + ":"))

reranker = Reranker.from_pretrained({folder!r}, device="cpu")
pairs = many_pairs(100_000)
reranker.compute_score(pairs[:10])
open("/proc/self/clear_refs", "w").write("5")  # VmHWM := VmRSS
start = kilobytes("VmRSS")
scores = reranker.compute_score(pairs)
print(json.dumps({{"scores": len(scores), "peak_growth_mb": (kilobytes("VmHWM") - start) / 1024}}))
"""


@pytest.mark.slow
def test_a_hundred_thousand_pairs_score_in_bounded_memory_with_a_bar(tiny_bert_dir):
    """100,000 pairs of ~40 tokens in a fresh interpreter, peak resident memory (VmHWM after resetting it with
    clear_refs: everything, the Rust tokenizer's and torch's memory included). Measured (AMD EPYC, 1 thread):
    +63 MB chunked (4,096 pairs at a time), +820 MB all at once as before (+3.5 GB for ~210-token passages)."""
    if not os.access("/proc/self/clear_refs", os.W_OK):
        pytest.skip("needs Linux's /proc/self/clear_refs to reset the peak resident memory")
    script = HUNDRED_THOUSAND.format(tests=str(Path(__file__).parent), folder=str(tiny_bert_dir))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(result)
    assert result["scores"] == 100_000
    assert result["peak_growth_mb"] < 250
    assert "100000/100000" in done.stderr  # the progress bar, on by itself for 782 batches


# --- out of memory while scoring: split and retried, nothing lost or reordered ---


class OutOfMemoryAbove:
    """A fault injector: a forward pre-hook that raises CUDA's out-of-memory error for batches above ``rows``,
    recording the batch sizes it saw."""

    def __init__(self, rows: int):
        self.rows, self.seen = rows, []

    def __call__(self, module, args, kwargs):
        batch = (kwargs.get("input_ids") if kwargs.get("input_ids") is not None else args[0]).shape[0]
        self.seen.append(batch)
        if batch > self.rows:
            raise torch.OutOfMemoryError(f"CUDA out of memory (injected: {batch} rows)")


def test_batches_split_on_out_of_memory_and_keep_the_smaller_size(request, monkeypatch, caplog, reranker):
    expected = reranker.compute_score(PAIRS * 5, batch_size=16)
    monkeypatch.setattr(reranker, "chunk_size", 16)  # several chunks: the smaller size must carry over
    injector = OutOfMemoryAbove(rows=5)
    handle = reranker.model.register_forward_pre_hook(injector, with_kwargs=True)
    try:
        with caplog.at_level("WARNING"):
            scores = reranker.compute_score(PAIRS * 5, batch_size=16)
    finally:
        handle.remove()
    assert_same_scores(scores, expected)  # all 40 pairs, in input order
    assert injector.seen[:5] == [16, 12, 9, 6, 4] and max(injector.seen[5:]) <= 4  # 3/4 each time, then kept
    assert sum(b for b in injector.seen if b <= 5) == len(PAIRS) * 5
    assert caplog.text.count("out of memory at a batch of 16") == 1


def test_a_single_pair_that_does_not_fit_raises(cross_encoder):
    handle = cross_encoder.model.register_forward_pre_hook(OutOfMemoryAbove(rows=0), with_kwargs=True)
    try:
        with pytest.raises(torch.OutOfMemoryError):
            cross_encoder.compute_score(PAIRS, batch_size=4)
    finally:
        handle.remove()
