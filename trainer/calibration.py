"""Fitting a score calibration on judged pairs training did not see, and measuring it.

Platt scaling is scikit-learn's unpenalized logistic regression of the label on the raw score (two numbers,
foldable into a one-logit head); isotonic is its `IsotonicRegression` (monotone, clipped to [0, 1] beyond the
data). Reported: expected calibration error (15 equal-width bins of the probability, the usual definition) and
the Brier score, before (the plain sigmoid) and after, a reliability diagram, and a thresholds table read from
the calibrated probabilities' precision-recall curve on the same pairs.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss, precision_recall_curve

from rerankforge.inference.modeling.calibration import METHODS, Calibration, ScoreMap, sigmoid
from rerankforge.inference.modeling.files import atomic_write_text
from rerankforge.inference.modeling.spec import RerankerSpec
from rerankforge.trainer.fusion_choice import split_queries

ECE_BINS = 15
TABLE_PRECISIONS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
CURVE_POINTS = 200  # the stored precision-recall curve, thinned to at most this many thresholds


def checked_data(scores: Sequence[float], labels: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    """Finite scores and their labels; refuses data that cannot fit a calibration."""
    x = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    if x.shape != y.shape:
        raise ValueError(f"{len(x)} scores but {len(y)} labels")
    keep = np.isfinite(x)
    x, y = x[keep], y[keep]
    if y.all() or not y.any():
        raise ValueError(
            f"calibration needs judged-relevant and other pairs; these {len(y)} pairs are all "
            f"{'relevant' if y.all() else 'not relevant'}"
        )
    return x, y


def fit_score_map(scores: Sequence[float], labels: Sequence[bool], method: str = "platt") -> ScoreMap:
    """The raw score -> probability map fitted on these pairs."""
    if method not in METHODS:
        raise ValueError(f"calibration method {method!r}: expected one of {', '.join(METHODS)}")
    x, y = checked_data(scores, labels)
    if method == "platt":
        model = LogisticRegression(C=np.inf, max_iter=1000).fit(x.reshape(-1, 1), y)  # C=inf: no penalty
        return ScoreMap("platt", scale=float(model.coef_[0, 0]), bias=float(model.intercept_[0]))
    isotonic = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip").fit(x, y)
    return ScoreMap("isotonic", x=tuple(map(float, isotonic.X_thresholds_)),
                    y=tuple(map(float, isotonic.y_thresholds_)))  # fmt: skip


def expected_calibration_error(
    probabilities: Sequence[float], labels: Sequence[bool], bins: int = ECE_BINS
) -> float:
    """Sum over equal-width probability bins of (share of pairs in the bin) x |mean probability - relevant share|."""
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    index = np.minimum((p * bins).astype(int), bins - 1)
    error = 0.0
    for b in range(bins):
        members = index == b
        if members.any():
            error += members.mean() * abs(p[members].mean() - y[members].mean())
    return float(error)


def calibration_report(raw: Sequence[float], labels: Sequence[bool], score_map: ScoreMap) -> dict[str, float]:
    """ECE and Brier of the plain sigmoid and of the calibration on these pairs."""
    x, y = checked_data(raw, labels)
    before = [sigmoid(s) for s in x]
    after = [score_map.probability(s) for s in x]
    return {
        "pairs": int(len(x)),
        "relevant": int(y.sum()),
        "ece_before": expected_calibration_error(before, y),
        "ece_after": expected_calibration_error(after, y),
        "brier_before": float(brier_score_loss(y, before)),
        "brier_after": float(brier_score_loss(y, after)),
    }


def threshold_curve(probabilities: Sequence[float], labels: Sequence[bool]) -> list[dict[str, float]]:
    """Precision, recall and the share of pairs kept at each probability threshold (kept: score >= threshold),
    thinned to ``CURVE_POINTS`` thresholds."""
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    precision, recall, thresholds = precision_recall_curve(y, p)
    rows = []
    for i in np.unique(np.linspace(0, len(thresholds) - 1, min(CURVE_POINTS, len(thresholds))).astype(int)):
        rows.append({"threshold": float(thresholds[i]), "precision": float(precision[i]),
                     "recall": float(recall[i]), "kept": float((p >= thresholds[i]).mean())})  # fmt: skip
    return rows


def calibrate(
    raw: Sequence[float],
    labels: Sequence[bool],
    method: str = "platt",
    fitted_on: str = "",
    layer: int | None = None,
) -> Calibration:
    """The calibration of these pairs' raw scores (of ``layer``, for a layerwise model), with its report and
    thresholds."""
    score_map = fit_score_map(raw, labels, method)
    x, y = checked_data(raw, labels)
    calibrated = [score_map.probability(s) for s in x]
    return Calibration(
        score=None if layer is not None else score_map,
        layers={layer: score_map} if layer is not None else {},
        fitted_on=fitted_on,
        report={"method": method, **calibration_report(raw, labels, score_map)},
        thresholds=threshold_curve(calibrated, y),
    )


def calibrate_held_out(
    query_ids: Sequence[str],
    scores: Sequence[float],
    labels: Sequence[bool],
    method: str,
    fraction: float,
    seed: int,
    source: str,
    layer: int | None = None,
) -> tuple[Calibration, list[float], list[bool], int]:
    """Fit on a seeded ``fraction`` of the queries (``query_ids[i]`` is pair i's query), measure on the others:
    the calibration (its report's ``held_out`` holds that measurement), the held-out pairs' scores and labels,
    and how many queries were held out."""
    fitted, held_queries = split_queries(sorted(set(query_ids)), fraction, seed)
    fit = [i for i, q in enumerate(query_ids) if q in fitted]
    held = [i for i, q in enumerate(query_ids) if q not in fitted]
    description = f"{source}: {len(fitted)} queries, {len(fit)} pairs"
    calibration = calibrate([scores[i] for i in fit], [labels[i] for i in fit], method, description, layer)
    held_scores, held_labels = [scores[i] for i in held], [labels[i] for i in held]
    measured = measured_on(held_scores, held_labels, calibration, layer)
    calibration = dataclasses.replace(calibration, report={**calibration.report, "held_out": measured})
    return calibration, held_scores, held_labels, len(held_queries)


def save_calibration(folder: str | Path, calibration: Calibration) -> RerankerSpec:
    """Write the calibration into the folder's `rerankforge.json` (atomically; nothing else changes)."""
    return RerankerSpec.update(folder, "calibrate", calibration=calibration.to_dict())


def thresholds_table(calibration: Calibration, precisions: Sequence[float] = TABLE_PRECISIONS) -> str:
    """Markdown: for each precision asked, the lowest probability threshold reaching it on the calibration
    pairs, with the recall and the share of pairs kept there."""
    lines = [
        "| precision wanted | threshold (probability) | precision | recall | pairs kept |",
        "|---|---|---|---|---|",
    ]
    for wanted in precisions:
        row = calibration.threshold_row(precision=wanted)
        if row is None:
            lines.append(f"| {wanted:g} | not reached | - | - | - |")
        else:
            lines.append(f"| {wanted:g} | {row['threshold']:.3f} | {row['precision']:.3f} | {row['recall']:.3f} | "
                         f"{row['kept']:.1%} |")  # fmt: skip
    return "\n".join(lines)


def reliability_diagram(
    path: Path, raw: Sequence[float], labels: Sequence[bool], score_map: ScoreMap | None, title: str
) -> Path:
    """A PNG: relevant share against mean probability per bin, for the plain sigmoid and the calibration."""
    import matplotlib  # a plot, only where one is written

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after use("Agg"): no display needed

    x, y = checked_data(raw, labels)
    figure, axis = plt.subplots(figsize=(5, 5))
    axis.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfectly calibrated")
    series = [("sigmoid of the score", [sigmoid(s) for s in x])]
    if score_map is not None:
        series.append((f"calibrated ({score_map.method})", [score_map.probability(s) for s in x]))
    for label, probabilities in series:
        p = np.asarray(probabilities)
        index = np.minimum((p * ECE_BINS).astype(int), ECE_BINS - 1)
        points = [(p[index == b].mean(), y[index == b].mean()) for b in range(ECE_BINS) if (index == b).any()]
        ece = expected_calibration_error(p, y)
        axis.plot(*zip(*points, strict=True), marker="o", label=f"{label}: ECE {ece:.3f}")
    axis.set(xlabel="predicted probability (bin mean)", ylabel="share judged relevant", xlim=(0, 1), ylim=(0, 1),
             title=title)  # fmt: skip
    axis.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def write_report(folder: Path, calibration: Calibration, raw: Sequence[float], labels: Sequence[bool],
                 title: str) -> dict[str, Any]:  # fmt: skip
    """calibration.json and reliability.png in an evaluation folder."""
    score_map = calibration.score or next(iter(calibration.layers.values()), None)
    reliability_diagram(folder / "reliability.png", raw, labels, score_map, title)
    record = {
        **calibration.to_dict(),
        "measured": calibration_report(raw, labels, score_map) if score_map else {},
    }
    atomic_write_text(folder / "calibration.json", json.dumps(record, indent=2) + "\n")
    return record


def measured_on(raw: Sequence[float], labels: Sequence[bool], calibration: Calibration | None,
                layer: int | None = None) -> dict[str, float] | None:  # fmt: skip
    """A stored calibration measured on other judged pairs (another split or domain): ECE and Brier, plain
    sigmoid against it; None without a calibration for this score."""
    score_map = calibration.map_for(layer) if calibration is not None else None
    if score_map is None:
        return None
    try:
        return calibration_report(raw, labels, score_map)
    except ValueError:  # all relevant or none: nothing to measure
        return None
