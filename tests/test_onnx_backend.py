"""The ONNX Runtime backend: the torch scores within 1e-4, exported once, checked before use, CPU only."""

from __future__ import annotations

import json
import math

import pytest
import torch
from score_checks import assert_close_ranking, assert_same_scores

from rerankforge.inference import FlagReranker, Reranker, onnx_backend
from rerankforge.inference.auto import load_reranker

pytest.importorskip("onnxruntime")

QUERY = "what do women wear on the beach"
PASSAGES = [
    "flip flops",
    "Some women with flip-flops on are walking along the beach, " * 9,
    "a reform",
    "The 4 women are sitting on the beach in the sun and they wear hats and sandals",
    "sandals on the sand",
    "",
]
PAIRS = [[QUERY, p] for p in PASSAGES] + [["a much longer question about beaches " * 3, "sand"]]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RERANKFORGE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "onnx"


@pytest.mark.parametrize("folder_fixture", ["tiny_bert_dir", "tiny_xlmr_dir"])
def test_onnx_scores_equal_torch_scores(request, cache, folder_fixture):
    folder = str(request.getfixturevalue(folder_fixture))
    expected = Reranker.from_pretrained(folder, device="cpu").compute_score(PAIRS, batch_size=3)
    onnx = Reranker.from_pretrained(folder, backend="onnx")
    # batches of 3 sorted longest first: padded rows of different lengths in most batches
    scores = onnx.compute_score(PAIRS, batch_size=3)
    assert_same_scores(scores, expected)
    assert_same_scores(onnx.compute_score(PAIRS[:3], batch_size=1), expected[:3])
    assert json.loads(next(cache.glob("*/export.json")).read_text())["max_abs_diff"] < 1e-4


def test_export_leaves_the_torch_model_in_eval_mode(cache, tiny_bert_dir):
    """The exporter restores its wrapper's mode: a wrapper in training mode turned dropout back on."""
    reranker = Reranker.from_pretrained(str(tiny_bert_dir), backend="onnx")
    assert not reranker.model.training
    assert all(not module.training for module in reranker.model.modules())


def test_the_graph_is_exported_once_per_checkpoint(cache, tiny_bert_dir, monkeypatch):
    Reranker.from_pretrained(str(tiny_bert_dir), backend="onnx")
    assert not list(cache.glob(f"*/{onnx_backend.INT8_FOLDER}"))  # int8 only once asked for

    def no_second_export(*args, **kwargs):
        raise AssertionError("exported again")

    monkeypatch.setattr(onnx_backend, "export_onnx", no_second_export)
    Reranker.from_pretrained(str(tiny_bert_dir), backend="onnx-int8")
    assert len(list(cache.glob("*/model.onnx"))) == 1


def test_an_export_that_disagrees_with_torch_is_refused_and_not_cached(cache, tiny_bert_dir, monkeypatch):
    monkeypatch.setattr(onnx_backend, "EXPORT_TOLERANCE", -1.0)
    with pytest.raises(RuntimeError, match="use backend='torch'"):
        Reranker.from_pretrained(str(tiny_bert_dir), backend="onnx")
    assert not list(cache.glob("*/export.json"))
    assert not [p for p in cache.iterdir() if p.is_dir()]  # the staging folder is gone too


def test_int8_backend_scores_every_pair_in_order(cache, tiny_bert_dir):
    torch_scores = Reranker.from_pretrained(str(tiny_bert_dir), device="cpu").compute_score(PAIRS)
    int8 = Reranker.from_pretrained(str(tiny_bert_dir), backend="onnx-int8")
    assert int8.onnx.path.parent.name == onnx_backend.INT8_FOLDER
    scores = int8.compute_score(PAIRS, batch_size=1)
    assert len(scores) == len(PAIRS) and all(math.isfinite(s) for s in scores)
    # one pair a batch: the same score whatever the order it comes in
    assert_same_scores(int8.compute_score(PAIRS[::-1], batch_size=1), scores[::-1], rel=1e-6)
    assert int8.compute_score(PAIRS[3]) == pytest.approx(scores[3], abs=1e-6)
    assert scores != torch_scores  # int8 weights: close, not equal
    assert_close_ranking(scores, torch_scores, max_abs=0.05)  # measured: 0.01 apart at most, Spearman 1.0
    # activations are quantized per batch, so a pair's int8 score depends a little on its batchmates
    assert_close_ranking(int8.compute_score(PAIRS, batch_size=4), torch_scores, max_abs=0.05)


def test_flag_reranker_takes_the_backend(cache, tiny_bert_dir):
    ours = FlagReranker(str(tiny_bert_dir), backend="onnx")
    reference = FlagReranker(str(tiny_bert_dir), devices="cpu")
    assert_same_scores(
        ours.compute_score(PAIRS, max_length=64), reference.compute_score(PAIRS, max_length=64)
    )
    normalized = ours.compute_score(PAIRS, max_length=64, normalize=True)
    assert_same_scores(normalized, reference.compute_score(PAIRS, max_length=64, normalize=True))


def test_bad_backend_requests_get_clear_errors(cache, tiny_bert_dir):
    with pytest.raises(ValueError, match="backend must be one of"):
        Reranker.from_pretrained(str(tiny_bert_dir), backend="tensorrt")
    with pytest.raises(ValueError, match="runs on the CPU"):
        Reranker.from_pretrained(str(tiny_bert_dir), backend="onnx", device="cuda")
    with pytest.raises(ValueError, match="fp32"):
        Reranker.from_pretrained(str(tiny_bert_dir), backend="onnx", dtype=torch.bfloat16)


def test_other_families_are_refused_by_name(cache, tmp_path):
    from rerankforge.inference.modeling.spec import LLMSpec

    folder = tmp_path / "llm-like"
    folder.mkdir()
    LLMSpec(query_max_len=32, passage_max_len=128, max_length=160, yes_token_id=5).save(folder)
    with pytest.raises(ValueError, match="for cross-encoders"):
        load_reranker(str(folder), backend="onnx")
