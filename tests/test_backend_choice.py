"""The OpenVINO backend (fp32 exact, bf16 opt-in) and ``backend="auto"``: measured once per checkpoint and
machine among the exact backends, cached, torch on a GPU."""

from __future__ import annotations

import json

import pytest
import torch
from score_checks import assert_close_ranking, assert_same_scores
from test_onnx_backend import PAIRS

from rerankforge.inference import FlagReranker, Reranker, backend_choice
from rerankforge.inference.auto import load_reranker

pytest.importorskip("openvino")
pytest.importorskip("onnxruntime")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RERANKFORGE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def torch_scores(tiny_bert_dir) -> list[float]:
    return Reranker.from_pretrained(str(tiny_bert_dir), device="cpu", backend="torch").compute_score(PAIRS)


@pytest.mark.parametrize("folder_fixture", ["tiny_bert_dir", "tiny_xlmr_dir"])
def test_openvino_scores_equal_torch_scores(request, cache, folder_fixture):
    folder = str(request.getfixturevalue(folder_fixture))
    expected = Reranker.from_pretrained(folder, device="cpu", backend="torch").compute_score(
        PAIRS, batch_size=3
    )
    openvino = Reranker.from_pretrained(folder, backend="openvino")
    assert openvino.backend == "openvino" and openvino.onnx.precision == "f32"
    scores = openvino.compute_score(PAIRS, batch_size=3)  # padded rows of several lengths in most batches
    assert_same_scores(scores, expected)


def test_openvino_bf16_is_close_but_opt_in(cache, tiny_bert_dir, torch_scores):
    bf16 = FlagReranker(str(tiny_bert_dir), backend="openvino-bf16")
    scores = bf16.compute_score(PAIRS)
    assert scores != torch_scores  # bf16 math: close, not equal
    assert_close_ranking(scores, torch_scores, max_abs=0.05)  # bf16 keeps 8 bits of mantissa
    assert bf16.backend == "openvino-bf16"


def test_auto_measures_the_exact_backends_once_and_caches_the_choice(
    cache, monkeypatch, tiny_bert_dir, torch_scores
):
    monkeypatch.delenv("RERANKFORGE_BACKEND")  # the users' default
    calls = []
    real = backend_choice.calibrate
    monkeypatch.setattr(backend_choice, "calibrate", lambda *a: calls.append(a[-1]) or real(*a))
    first = Reranker.from_pretrained(str(tiny_bert_dir))
    assert calls == [["torch", "onnx", "openvino"]]
    [record_file] = (cache / backend_choice.CALIBRATION_FOLDER).glob("*.json")
    choice = json.loads(record_file.read_text())
    assert backend_choice.machine_key() in choice["key"]
    speeds = choice["pairs_per_second"]
    assert set(speeds) == {"torch", "onnx", "openvino"} and all(v > 0 for v in speeds.values())
    assert first.backend == choice["backend"] == max(speeds, key=speeds.get)
    assert_same_scores(first.compute_score(PAIRS), torch_scores)
    again = load_reranker(str(tiny_bert_dir))  # the cached choice: nothing measured
    assert calls == [["torch", "onnx", "openvino"]] and again.backend == first.backend


def test_auto_is_torch_on_a_gpu_and_for_half_precision(cache, monkeypatch, tiny_bert_dir):
    monkeypatch.setattr(backend_choice, "calibrate", lambda *a: pytest.fail("calibrated"))
    backend, scorer = backend_choice.choose_backend(
        None, None, str(tiny_bert_dir), [], 512, torch.device("cuda")
    )
    assert (backend, scorer) == ("torch", None)
    half = Reranker.from_pretrained(str(tiny_bert_dir), backend="auto", dtype=torch.bfloat16, device="cpu")
    assert half.backend == "torch" and half.onnx is None


def test_a_cached_choice_that_is_no_longer_installed_is_measured_again(cache, monkeypatch, tiny_bert_dir):
    monkeypatch.delenv("RERANKFORGE_BACKEND")
    Reranker.from_pretrained(str(tiny_bert_dir))
    [record_file] = (cache / backend_choice.CALIBRATION_FOLDER).glob("*.json")
    record = json.loads(record_file.read_text())
    record["backend"] = "openvino"
    record_file.write_text(json.dumps(record))
    monkeypatch.setattr(backend_choice, "installed_exact_backends", lambda: ["torch", "onnx"])
    reranker = Reranker.from_pretrained(str(tiny_bert_dir))
    assert reranker.backend in ("torch", "onnx")
    assert set(json.loads(record_file.read_text())["pairs_per_second"]) == {"torch", "onnx"}


def test_only_torch_installed_means_torch_without_measuring(cache, monkeypatch, tiny_bert_dir):
    monkeypatch.delenv("RERANKFORGE_BACKEND")
    monkeypatch.setattr(backend_choice, "installed_exact_backends", lambda: ["torch"])
    monkeypatch.setattr(backend_choice, "calibrate", lambda *a: pytest.fail("calibrated"))
    assert Reranker.from_pretrained(str(tiny_bert_dir)).backend == "torch"
    assert not (cache / backend_choice.CALIBRATION_FOLDER).exists()


@pytest.mark.parametrize(
    "damage", ["", '{"key": 1', "[]", '{"key": "other", "backend": "onnx"}', '{"no": "backend"}']
)
def test_a_damaged_cached_choice_is_measured_again(cache, monkeypatch, caplog, tiny_bert_dir, damage):
    monkeypatch.delenv("RERANKFORGE_BACKEND")
    record_file, key = backend_choice.choice_file(str(tiny_bert_dir))
    record_file.parent.mkdir(parents=True)
    record_file.write_text(damage)
    reranker = Reranker.from_pretrained(str(tiny_bert_dir))
    record = json.loads(record_file.read_text())
    assert record["key"] == key and reranker.backend == record["backend"]


def test_an_unwritable_cache_means_torch_with_a_warning(monkeypatch, caplog, tmp_path, tiny_bert_dir):
    monkeypatch.delenv("RERANKFORGE_BACKEND")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("RERANKFORGE_CACHE", str(blocker / "cache"))  # a folder cannot be made under a file
    with caplog.at_level("WARNING"):
        reranker = Reranker.from_pretrained(str(tiny_bert_dir))
    assert reranker.backend == "torch" and "cannot be written" in caplog.text


def test_an_unknown_backend_is_refused_naming_the_choices(tiny_bert_dir):
    with pytest.raises(ValueError, match=r"backend must be one of \('auto', 'torch', 'onnx'.*'openvino'"):
        Reranker.from_pretrained(str(tiny_bert_dir), backend="tensorrt")


def test_an_export_that_fails_leaves_that_backend_out_instead_of_breaking_the_load(
    cache, monkeypatch, tiny_bert_dir
):
    from rerankforge.inference import onnx_backend

    monkeypatch.delenv("RERANKFORGE_BACKEND")

    def unsupported(*args, **kwargs):
        raise TypeError("an operator this exporter does not know")

    monkeypatch.setattr(onnx_backend, "export_onnx", unsupported)
    reranker = Reranker.from_pretrained(str(tiny_bert_dir))
    assert reranker.backend == "torch" and reranker.onnx is None
    [record_file] = (cache / backend_choice.CALIBRATION_FOLDER).glob("*.json")
    assert set(json.loads(record_file.read_text())["pairs_per_second"]) == {"torch"}
