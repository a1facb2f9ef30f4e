"""Calibrated scores (issue 32): the fit recovers a known logistic model, thresholds keep their promise on the data
they came from, a calibrated folder's `normalize=True` / `predict` / `rank` give the calibrated probability, an
export folds Platt scaling into its head so an engine's plain sigmoid gives it too, and `rerankforge-eval
--calibrate` fits on some judged queries, measures on the others and stores the result."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from test_evaluation import beir_slice, eval_config  # noqa: F401  (fixture)

from rerankforge.inference.auto import load_reranker
from rerankforge.inference.modeling.calibration import Calibration, ScoreMap
from rerankforge.inference.modeling.spec import CrossEncoderSpec, RerankerSpec
from rerankforge.trainer.calibration import (
    calibrate,
    expected_calibration_error,
    fit_score_map,
    save_calibration,
)
from rerankforge.trainer.eval_cli import main as eval_main
from rerankforge.trainer.export import main as export_main

PAIRS = [
    ("what is a panda?", "The giant panda is a bear species endemic to China."),
    ("what is a panda?", "Paris is the capital of France."),
    ("how do plants make food", "Photosynthesis turns light, water and carbon dioxide into sugar."),
    ("Où est la gare ?", "La gare est à deux rues d'ici."),
    ("who wrote hamlet", "The tragedy Hamlet was written by William Shakespeare."),
]


def logistic_sample(
    scale: float, bias: float, n: int = 20000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Raw scores and labels drawn from P(relevant | s) = sigmoid(scale * s + bias)."""
    rng = np.random.default_rng(seed)
    scores = rng.normal(0.0, 2.0, n)
    labels = rng.random(n) < 1.0 / (1.0 + np.exp(-(scale * scores + bias)))
    return scores, labels


def test_platt_scaling_recovers_the_logistic_model_the_labels_came_from():
    scores, labels = logistic_sample(0.6, -1.2)
    fitted = fit_score_map(scores, labels, "platt")
    assert fitted.scale == pytest.approx(0.6, abs=0.04) and fitted.bias == pytest.approx(-1.2, abs=0.06)
    # the plain sigmoid of these scores is far off; the fitted map is not (on fresh draws of the same model)
    fresh, fresh_labels = logistic_sample(0.6, -1.2, seed=1)
    plain = 1.0 / (1.0 + np.exp(-fresh))
    calibrated = [fitted.probability(s) for s in fresh]
    assert expected_calibration_error(plain, fresh_labels) > 0.1
    assert expected_calibration_error(calibrated, fresh_labels) < 0.02


def test_isotonic_is_monotone_and_calibrated_on_its_data():
    scores, labels = logistic_sample(1.5, 0.5, n=5000)
    fitted = fit_score_map(scores, labels, "isotonic")
    probabilities = [fitted.probability(s) for s in sorted(scores)]
    assert all(b >= a for a, b in zip(probabilities, probabilities[1:], strict=False))
    assert expected_calibration_error([fitted.probability(s) for s in scores], labels) < 0.01
    assert fitted.probability(-1e9) == fitted.y[0] and fitted.probability(1e9) == fitted.y[-1]  # clipped


def test_thresholds_reach_the_precision_they_promise_on_their_data():
    scores, labels = logistic_sample(0.8, -2.0, n=4000)
    calibration = calibrate(scores, labels, "platt", "synthetic")
    probabilities = np.array([calibration.score.probability(s) for s in scores])
    for wanted in (0.6, 0.8, 0.9):
        row = calibration.threshold_row(precision=wanted)
        kept = probabilities >= row["threshold"]
        assert labels[kept].mean() >= wanted - 1e-9  # what it promises, on the pairs it came from
        assert row["recall"] == pytest.approx(labels[kept].sum() / labels.sum(), abs=1e-9)
    row = calibration.threshold_row(recall=0.5)
    assert labels[probabilities >= row["threshold"]].sum() / labels.sum() >= 0.5
    with pytest.raises(ValueError, match="precision or a recall"):
        calibration.threshold_row()


def test_a_fit_on_one_sided_labels_is_refused():
    with pytest.raises(ValueError, match="all not relevant"):
        fit_score_map([0.1, 0.2, 0.3], [False, False, False])


@pytest.fixture
def calibrated_folder(tmp_path, tiny_bert_dir):
    """The tiny cross-encoder as a rerankforge folder with a Platt calibration."""
    folder = tmp_path / "model"
    shutil.copytree(tiny_bert_dir, folder)
    CrossEncoderSpec(query_max_len=16, passage_max_len=48, max_length=64, base_model="tiny").save(folder)
    raw = load_reranker(str(folder), backend="torch", device="cpu").compute_score(PAIRS)
    labels = [True, False, True, False, True]
    calibration = calibrate(raw * 40, labels * 40, "platt", "toy pairs")  # fit on repeats: any map will do
    calibration = Calibration(score=ScoreMap("platt", scale=2.5, bias=-0.7), fitted_on="toy pairs",
                              report=calibration.report, thresholds=calibration.thresholds)  # fmt: skip
    save_calibration(folder, calibration)
    return folder, raw


def sigmoid(value: float) -> float:
    return 1.0 / (1.0 + math.exp(-value))


def test_normalize_predict_and_rank_give_the_calibrated_probability_and_raw_scores_stay(calibrated_folder):
    folder, raw = calibrated_folder
    reranker = load_reranker(str(folder), backend="torch", device="cpu")
    assert reranker.compute_score(PAIRS) == pytest.approx(raw, abs=1e-6)  # raw scores unchanged
    expected = [sigmoid(2.5 * s - 0.7) for s in raw]
    assert reranker.compute_score(PAIRS, normalize=True) == pytest.approx(expected, abs=1e-6)
    assert reranker.predict(PAIRS).tolist() == pytest.approx(expected, abs=1e-6)
    assert reranker.predict(PAIRS, activation_fn=torch.nn.Identity()).tolist() == pytest.approx(raw, abs=1e-5)
    documents = [p for _, p in PAIRS]
    one_query = reranker.predict([(PAIRS[0][0], d) for d in documents]).tolist()
    cut = sorted(one_query)[2]  # the middle one: it and the two above it stay
    ranked = reranker.rank(PAIRS[0][0], documents, min_score=cut)
    assert sorted(r["corpus_id"] for r in ranked) == sorted(i for i, s in enumerate(one_query) if s >= cut)
    assert len(ranked) == 3
    threshold = reranker.threshold(precision=0.6)
    assert 0.0 <= threshold <= 1.0


def test_an_uncalibrated_model_refuses_a_threshold(tmp_path, tiny_bert_dir):
    with pytest.raises(ValueError, match="no calibration"):
        load_reranker(str(tiny_bert_dir), backend="torch", device="cpu").threshold(precision=0.9)


def test_the_export_folds_platt_scaling_so_an_engines_sigmoid_is_the_calibrated_probability(
    tmp_path, calibrated_folder
):
    from sentence_transformers import CrossEncoder

    folder, raw = calibrated_folder
    out = tmp_path / "export"
    assert export_main([str(folder), str(out)]) == 0
    expected = [sigmoid(2.5 * s - 0.7) for s in raw]
    # sentence-transformers applies its own plain sigmoid to the exported logit
    served = CrossEncoder(str(out), device="cpu").predict(PAIRS).tolist()
    assert served == pytest.approx(expected, abs=1e-5)
    exported = load_reranker(str(out), backend="torch", device="cpu")
    assert exported.compute_score(PAIRS) == pytest.approx(
        [2.5 * s - 0.7 for s in raw], abs=1e-5
    )  # calibrated logit
    assert exported.compute_score(PAIRS, normalize=True) == pytest.approx(
        expected, abs=1e-5
    )  # not applied twice
    stored = json.loads((out / "rerankforge.json").read_text())["calibration"]
    assert "score" not in stored and stored["folded"].startswith("classifier.weight")
    assert exported.threshold(precision=0.6) == load_reranker(str(folder), device="cpu").threshold(
        precision=0.6
    )
    card = (out / "README.md").read_text()
    assert "## Calibrated scores" in card and "is folded into the classifier" in card


def test_an_isotonic_calibration_is_not_folded_and_the_card_says_so(tmp_path, calibrated_folder):
    folder, raw = calibrated_folder
    calibration = calibrate(list(raw) * 40, [True, False, True, False, True] * 40, "isotonic", "toy pairs")
    save_calibration(folder, calibration)
    out = tmp_path / "export"
    assert export_main([str(folder), str(out)]) == 0
    assert json.loads((out / "rerankforge.json").read_text())["calibration"]["score"]["method"] == "isotonic"
    assert "is not linear, so it is not folded" in (out / "README.md").read_text()


def test_eval_calibrate_fits_on_some_queries_measures_on_the_others_and_stores_it(
    tmp_path,
    tiny_bert_dir,
    beir_slice,  # noqa: F811
    capsys,
):
    folder = tmp_path / "model"
    shutil.copytree(tiny_bert_dir, folder)
    CrossEncoderSpec(query_max_len=32, passage_max_len=96, max_length=128, base_model="tiny").save(folder)
    out = tmp_path / "eval"
    code = eval_main(["--model", str(folder), "--data", str(beir_slice), "--split", "test", "--top-k", "20",
                      "--calibrate", "platt", "--output", str(out)])  # fmt: skip
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    held = metrics["calibration"]["held_out"]
    assert held["pairs"] > 0 and 0 <= held["ece_after"] <= 1 and 0 <= held["brier_after"] <= 1
    assert (out / "reliability.png").stat().st_size > 1000 and (out / "calibration.json").is_file()
    assert (folder / "calibration" / "reliability.png").is_file()  # beside the model, for its export's card
    stored = Calibration.from_dict(RerankerSpec.load(folder).calibration)
    assert stored.score.method == "platt" and "6 queries" in stored.fitted_on  # half of the 12
    printed = capsys.readouterr().out
    assert "held-out pairs: ECE" in printed and "precision wanted" in printed
    # evaluated again, the stored calibration is measured on these pairs against the sigmoid
    assert eval_main(["--model", str(folder), "--data", str(beir_slice), "--split", "test", "--top-k", "20",
                      "--output", str(tmp_path / "again")]) == 0  # fmt: skip
    again = json.loads((tmp_path / "again" / "metrics.json").read_text())["calibration"]
    assert {"ece_before", "ece_after", "brier_before", "brier_after"} <= set(again)


def test_training_with_an_evaluation_set_ends_with_a_stored_calibration(tmp_path, tiny_bert_dir, beir_slice):  # noqa: F811
    """On by default where evaluation data exists: fitted on half the evaluation queries after the final
    evaluation, measured on the other half, stored in the saved model, reported beside it."""
    from rerankforge.trainer.training_run import train

    out = train(eval_config(tmp_path, tiny_bert_dir, beir_slice, max_steps=2, eval_strategy="no",
                            evaluate_before_training=False))  # fmt: skip
    stored = Calibration.from_dict(RerankerSpec.load(out).calibration)
    assert stored.score.method == "platt" and stored.report["held_out"]["pairs"] > 0
    assert (out / "calibration" / "reliability.png").is_file()
    # and the fusion with the first stage, chosen on the same validation half (tests/test_fusion.py)
    assert RerankerSpec.load(out).fusion["method"] == "interpolation" and (out / "fusion_table.md").is_file()
    exported = tmp_path / "export"
    assert export_main([str(out), str(exported)]) == 0  # the card shows the diagram, which travels with it
    assert (exported / "reliability.png").is_file() and "](reliability.png)" in (
        exported / "README.md"
    ).read_text()
    reranker = load_reranker(str(out), backend="torch", device="cpu")
    raw = reranker.compute_score(PAIRS)
    expected = [stored.score.probability(s) for s in raw]
    assert reranker.compute_score(PAIRS, normalize=True) == pytest.approx(expected, abs=1e-6)
    off = train(eval_config(tmp_path / "off", tiny_bert_dir, beir_slice, max_steps=1, eval_strategy="no",
                            evaluate_before_training=False, calibration="none", fusion="none"))  # fmt: skip
    assert RerankerSpec.load(off).calibration is None and RerankerSpec.load(off).fusion is None


def test_a_layerwise_calibration_applies_per_layer_and_falls_back_to_the_sigmoid():
    from rerankforge.inference.batching import probabilities
    from rerankforge.inference.modeling.spec import LayerwiseSpec

    spec = LayerwiseSpec(query_max_len=8, passage_max_len=8, max_length=20, yes_token_id=5, layers=[2, 3],
                         num_layers=3)  # fmt: skip
    spec.calibration = Calibration(layers={3: ScoreMap("platt", scale=2.0, bias=1.0)}).to_dict()
    spec = RerankerSpec.from_json(spec.to_json())  # round trip through rerankforge.json
    assert probabilities(spec, [0.5], layer=3) == pytest.approx([sigmoid(2.0)])
    assert probabilities(spec, [0.5], layer=2) == pytest.approx([sigmoid(0.5)])  # no map for layer 2


def test_an_llm_classifier_export_says_how_to_apply_the_calibration_it_cannot_carry(tmp_path, tiny_llm_dirs):
    from test_sentence_transformers_export import trained_full_model

    trained = trained_full_model(tmp_path, tiny_llm_dirs("llama"))
    save_calibration(
        trained, Calibration(score=ScoreMap("platt", scale=0.5, bias=-2.0), fitted_on="held-out x")
    )
    reranker = load_reranker(str(trained), device="cpu")  # the LLM family applies it too
    raw = reranker.compute_score(PAIRS)
    assert reranker.compute_score(PAIRS, normalize=True) == pytest.approx(
        [sigmoid(0.5 * s - 2.0) for s in raw]
    )
    out = tmp_path / "seq"
    assert export_main([str(trained), str(out), "--as-sequence-classification"]) == 0
    assert "The calibrated probability is `sigmoid(0.5 * logit + -2)`" in (out / "README.md").read_text()
    merged = tmp_path / "causal"
    assert export_main([str(trained), str(merged)]) == 0
    assert "not folded into this export" in (merged / "README.md").read_text()
