"""The calls sentence-transformers and FlagEmbedding users know, on every family: ``predict`` and ``rank`` as
``CrossEncoder``'s (compared with CrossEncoder itself on the same folder), ``FlagAutoReranker.from_finetuned``,
``load_reranker``. Real tiny models, no mocks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_decoder
from score_checks import assert_same_scores
from test_inference import PASSAGES, QUERY

from rerankforge.inference import (
    FlagAutoReranker,
    FlagLLMReranker,
    FlagReranker,
    LayerwiseReranker,
    LLMReranker,
    Reranker,
    load_reranker,
)
from rerankforge.inference.modeling.layerwise import LayerwiseRerankerModel
from rerankforge.inference.modeling.spec import LayerwiseSpec

PAIRS = [[QUERY, p] for p in PASSAGES]
FAMILIES = ["cross_encoder", "llm", "layerwise"]


def sigmoid(scores: list[float]) -> list[float]:
    return torch.sigmoid(torch.tensor(scores, dtype=torch.float64)).tolist()


@pytest.fixture(scope="module")
def cross_encoder(tiny_bert_dir) -> Reranker:
    return Reranker.from_pretrained(str(tiny_bert_dir), device="cpu")


@pytest.fixture(scope="module")
def llm(tiny_llm_dirs) -> LLMReranker:
    return LLMReranker.from_pretrained(str(tiny_llm_dirs("llama")), device="cpu")


@pytest.fixture(scope="module")
def layerwise(llm_tokenizer) -> LayerwiseReranker:
    """Heads on layers 1 and 2 of a random 2-layer Llama, built in memory; layer 1 scores differently."""
    yes = llm_tokenizer("Yes", add_special_tokens=False)["input_ids"][0]
    spec = LayerwiseSpec(query_max_len=16, passage_max_len=32, max_length=48, yes_token_id=yes, layers=[1, 2],
                         num_layers=2)  # fmt: skip
    model = LayerwiseRerankerModel(tiny_decoder("llama", len(llm_tokenizer)), spec)
    return LayerwiseReranker(model, llm_tokenizer, device="cpu")


@pytest.fixture(params=FAMILIES)
def reranker(request):
    return request.getfixturevalue(request.param)


# ---------------------------------------------------------------------------------------------------------------
# predict


def test_predict_is_the_sigmoid_of_compute_score_in_input_order(reranker):
    raw = reranker.compute_score(PAIRS)
    assert_same_scores(reranker.predict(PAIRS), sigmoid(raw))
    assert_same_scores(reranker.predict(PAIRS[::-1], batch_size=2), sigmoid(raw)[::-1])


def test_predict_activation_fn_identity_gives_compute_scores_raw_scores(reranker):
    raw = reranker.compute_score(PAIRS)
    assert reranker.predict(PAIRS, activation_fn=torch.nn.Identity()).tolist() == raw  # float32 either way
    doubled = reranker.predict(PAIRS, activation_fn=lambda logits: 2 * logits)  # any callable on a tensor
    assert doubled.tolist() == pytest.approx([2 * s for s in raw], abs=1e-6)


def test_the_default_activation_is_the_rerankers_activation_fn(monkeypatch, cross_encoder):
    raw = cross_encoder.compute_score(PAIRS)
    monkeypatch.setattr(cross_encoder, "activation_fn", torch.nn.Identity())  # as CrossEncoder.activation_fn
    assert cross_encoder.predict(PAIRS).tolist() == raw


def test_predict_return_types(reranker):
    array = reranker.predict(PAIRS)
    assert isinstance(array, np.ndarray) and array.dtype == np.float32 and array.shape == (len(PAIRS),)
    tensor = reranker.predict(PAIRS, convert_to_tensor=True)
    assert (
        isinstance(tensor, torch.Tensor) and tensor.dtype == torch.float32 and tensor.shape == (len(PAIRS),)
    )
    assert tensor.tolist() == array.tolist()
    listed = reranker.predict(PAIRS, convert_to_numpy=False)  # CrossEncoder's: a list of 0-d tensors
    assert isinstance(listed, list) and len(listed) == len(PAIRS)
    assert all(isinstance(s, torch.Tensor) and s.ndim == 0 for s in listed)
    assert [float(s) for s in listed] == array.tolist()
    assert reranker.predict(PAIRS, convert_to_numpy=False, convert_to_tensor=True).shape == (len(PAIRS),)


def test_one_pair_gives_one_score_and_a_list_of_one_an_array(reranker):
    expected = float(reranker.predict(PAIRS)[3])
    one = reranker.predict(PAIRS[3])
    assert isinstance(one, np.float32) and float(one) == pytest.approx(expected, abs=1e-6)
    assert float(one) == pytest.approx(sigmoid([reranker.compute_score(PAIRS[3])])[0], abs=1e-6)
    tensor = reranker.predict(tuple(PAIRS[3]), convert_to_tensor=True)
    assert isinstance(tensor, torch.Tensor) and tensor.ndim == 0
    assert reranker.predict([PAIRS[3]]).shape == (1,)


def test_predict_of_nothing_is_empty(cross_encoder):
    assert cross_encoder.predict([]).shape == (0,)
    assert cross_encoder.predict([], convert_to_tensor=True).shape == (0,)
    assert cross_encoder.predict([], convert_to_numpy=False) == []


def test_predict_shows_a_progress_bar_when_asked(capsys, cross_encoder):
    cross_encoder.predict(PAIRS[:2], show_progress_bar=True)
    assert "2/2" in capsys.readouterr().err
    cross_encoder.predict(PAIRS, show_progress_bar=False)
    assert "scoring" not in capsys.readouterr().err


def test_layerwise_predict_scores_with_the_last_layer(layerwise):
    last = layerwise.compute_score(PAIRS, cutoff_layers=[layerwise.layers[-1]])
    first = layerwise.compute_score(PAIRS, cutoff_layers=[layerwise.layers[0]])
    predicted = layerwise.predict(PAIRS, activation_fn=torch.nn.Identity()).tolist()
    assert predicted == last and predicted != pytest.approx(first, abs=1e-3)


# ---------------------------------------------------------------------------------------------------------------
# rank


def test_rank_is_predict_sorted_best_first(reranker):
    scores = reranker.predict(PAIRS).tolist()
    ranked = reranker.rank(QUERY, PASSAGES)
    assert [r["corpus_id"] for r in ranked] == sorted(range(len(PASSAGES)), key=lambda i: -scores[i])
    assert all(set(r) == {"corpus_id", "score"} for r in ranked)
    assert [r["score"] for r in ranked] == sorted(scores, reverse=True)
    assert all(isinstance(r["corpus_id"], int) and isinstance(r["score"], float) for r in ranked)


def test_rank_returns_documents_when_asked_and_cuts_at_top_k(reranker):
    full = reranker.rank(QUERY, PASSAGES, return_documents=True)
    assert all(set(r) == {"corpus_id", "score", "text"} for r in full)
    assert all(r["text"] == PASSAGES[r["corpus_id"]] for r in full)
    top = reranker.rank(QUERY, PASSAGES, top_k=2, return_documents=True)
    assert top == full[:2]
    assert reranker.rank(QUERY, PASSAGES, top_k=10) == reranker.rank(QUERY, PASSAGES)
    assert reranker.rank(QUERY, []) == []


def test_rank_takes_predicts_activation_and_batch_size(reranker):
    raw = reranker.compute_score(PAIRS)
    ranked = reranker.rank(QUERY, PASSAGES, activation_fn=torch.nn.Identity(), batch_size=2)
    by_id = {r["corpus_id"]: r["score"] for r in ranked}  # batches of 2 pad differently: float noise
    assert by_id == pytest.approx(dict(enumerate(raw)), abs=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# against sentence-transformers' CrossEncoder on the same folder


@pytest.fixture(scope="module")
def sentence_transformers_cross_encoder(tiny_bert_dir):
    cross_encoder_module = pytest.importorskip("sentence_transformers.cross_encoder")
    try:
        return cross_encoder_module.CrossEncoder(str(tiny_bert_dir), device="cpu")
    except Exception as error:  # a sentence-transformers that cannot read this folder: nothing to compare
        pytest.skip(f"sentence-transformers cannot load the tiny cross-encoder: {error!r}")


def test_predict_and_rank_equal_sentence_transformers_cross_encoder(
    cross_encoder, sentence_transformers_cross_encoder
):
    theirs = sentence_transformers_cross_encoder
    # the default activation first: sentence-transformers 5.x keeps an activation_fn passed to predict as the
    # model's own for later calls (6.x does not), so the Identity calls come last
    assert_same_scores(cross_encoder.predict(PAIRS), theirs.predict(PAIRS), rel=1e-5)
    assert type(cross_encoder.predict(PAIRS[0])) is type(theirs.predict(PAIRS[0]))
    assert cross_encoder.predict(PAIRS).dtype == theirs.predict(PAIRS).dtype
    identity = torch.nn.Identity()
    for kwargs in ({}, {"top_k": 3}, {"return_documents": True}, {"activation_fn": identity}):
        ours, expected = cross_encoder.rank(QUERY, PASSAGES, **kwargs), theirs.rank(QUERY, PASSAGES, **kwargs)
        assert [r["corpus_id"] for r in ours] == [r["corpus_id"] for r in expected], kwargs
        assert [set(r) for r in ours] == [set(r) for r in expected], kwargs
        assert [r.get("text") for r in ours] == [r.get("text") for r in expected], kwargs
        assert [r["score"] for r in ours] == pytest.approx([r["score"] for r in expected], abs=1e-5), kwargs
    assert_same_scores(
        cross_encoder.predict(PAIRS, activation_fn=identity),
        theirs.predict(PAIRS, activation_fn=identity),
        rel=1e-5,
    )


# ---------------------------------------------------------------------------------------------------------------
# FlagEmbedding's wrappers and FlagAutoReranker


def test_flag_wrappers_predict_and_rank_use_their_compute_score(tiny_bert_dir, tiny_llm_dirs):
    """Instructions and a normalize=True constructor: predict is still one sigmoid of compute_score's raw score."""
    wrappers = [
        FlagReranker(str(tiny_bert_dir), devices="cpu", normalize=True, query_instruction_for_rerank="Q: "),
        FlagLLMReranker(str(tiny_llm_dirs("llama")), devices="cpu"),  # "A: " / "B: " instructions
    ]
    for flag in wrappers:
        raw = flag.compute_score(PAIRS, normalize=False)
        assert_same_scores(flag.predict(PAIRS), sigmoid(raw))
        ranked = flag.rank(QUERY, PASSAGES, activation_fn=torch.nn.Identity())
        assert {r["corpus_id"]: r["score"] for r in ranked} == pytest.approx(dict(enumerate(raw)), abs=1e-6)


def test_flag_auto_reranker_picks_the_wrapper_of_the_folders_family(tiny_bert_dir, tiny_llm_dirs):
    llama = str(tiny_llm_dirs("llama"))
    cross = FlagAutoReranker.from_finetuned(str(tiny_bert_dir), devices="cpu")
    assert type(cross) is FlagReranker
    assert_same_scores(
        cross.compute_score(PAIRS), FlagReranker(str(tiny_bert_dir), devices="cpu").compute_score(PAIRS)
    )
    decoder = FlagAutoReranker.from_finetuned(llama, use_fp16=True, devices="cpu", batch_size=2)
    assert type(decoder) is FlagLLMReranker and decoder.batch_size == 2
    assert_same_scores(
        decoder.compute_score(PAIRS), FlagLLMReranker(llama, devices="cpu").compute_score(PAIRS)
    )
    named = FlagAutoReranker.from_finetuned(llama, model_class="decoder-only-base", devices="cpu")
    assert type(named) is FlagLLMReranker
    with pytest.raises(ValueError, match="decoder-only-lightweight"):
        FlagAutoReranker.from_finetuned(llama, model_class="decoder-only-lightweight")
    with pytest.raises(OSError, match="from_finetuned"):
        FlagAutoReranker()


def test_load_reranker_is_exported_and_picks_the_class(tiny_bert_dir, tiny_llm_dirs):
    assert type(load_reranker(str(tiny_bert_dir), device="cpu")) is Reranker
    assert type(load_reranker(str(tiny_llm_dirs("llama")), device="cpu")) is LLMReranker
