"""A fitted map from a reranker's raw score to the probability that the pair is judged relevant.

The sigmoid of a logit is a number in [0, 1], not a probability: a model trained with a listwise loss can give
0.7 to pairs that are relevant half the time. A calibration fitted on judged pairs that training did not see
fixes that: Platt scaling (``sigmoid(scale * score + bias)``: a temperature ``1 / scale`` and a bias, which a
one-logit export can fold into its score head) or isotonic regression (a monotone step function, kept as its
breakpoints and interpolated between them). It is stored in `rerankforge.json` (``calibration``), and
``compute_score(normalize=True)`` / ``predict`` return the calibrated probability; raw scores are unchanged.

A layerwise model's layers give different scores: its calibration holds one map per layer (``layers``).
Fitting lives in the trainer (`rerankforge.trainer.calibration`); this module only applies what was fitted.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

METHODS = ("platt", "isotonic")


@dataclass(frozen=True)
class ScoreMap:
    """One raw score -> probability map: Platt (``scale``, ``bias``) or isotonic (``x``, ``y`` breakpoints)."""

    method: str
    scale: float = 1.0
    bias: float = 0.0
    x: tuple[float, ...] = ()
    y: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"calibration method {self.method!r}: expected one of {', '.join(METHODS)}")
        if self.method == "isotonic" and (len(self.x) != len(self.y) or not self.x):
            raise ValueError("an isotonic calibration needs as many breakpoints x as values y, at least one")

    def probability(self, score: float) -> float:
        if not math.isfinite(score):
            return math.nan if math.isnan(score) else float(score > 0)
        if self.method == "platt":
            return sigmoid(self.scale * score + self.bias)
        return interpolate(self.x, self.y, score)

    def to_dict(self) -> dict[str, Any]:
        if self.method == "platt":
            return {"method": "platt", "scale": self.scale, "bias": self.bias}
        return {"method": "isotonic", "x": list(self.x), "y": list(self.y)}

    @staticmethod
    def from_dict(data: dict[str, Any]) -> ScoreMap:
        return ScoreMap(
            data["method"], float(data.get("scale", 1.0)), float(data.get("bias", 0.0)),
            tuple(map(float, data.get("x", ()))), tuple(map(float, data.get("y", ()))),
        )  # fmt: skip


def interpolate(xs: Sequence[float], ys: Sequence[float], value: float) -> float:
    """Linear interpolation between breakpoints, constant beyond the ends (isotonic regression's ``clip``)."""
    if value <= xs[0]:
        return ys[0]
    if value >= xs[-1]:
        return ys[-1]
    right = bisect.bisect_right(xs, value)
    x0, x1, y0, y1 = xs[right - 1], xs[right], ys[right - 1], ys[right]
    return y0 if x1 == x0 else y0 + (y1 - y0) * (value - x0) / (x1 - x0)


@dataclass(frozen=True)
class Calibration:
    """The stored calibration: one map (``score``), or one per layer of a layerwise model (``layers``), with
    what it was fitted on and the thresholds table that `Reranker.threshold` reads."""

    score: ScoreMap | None = None
    layers: dict[int, ScoreMap] = field(default_factory=dict)
    fitted_on: str = ""
    report: dict[str, Any] = field(default_factory=dict)  # ECE, Brier, pairs ... (for the card)
    thresholds: list[dict[str, float]] = field(default_factory=list)  # threshold, precision, recall, kept
    folded: str = ""  # where an export folded the map into its score head (its raw score is then calibrated)

    def map_for(self, layer: int | None = None) -> ScoreMap | None:
        """The map of ``layer`` (a layerwise model) or of the one score; None: plain sigmoid."""
        if layer is not None and self.layers:
            return self.layers.get(int(layer))
        return self.score

    def probabilities(self, scores: Sequence[float], layer: int | None = None) -> list[float]:
        found = self.map_for(layer)
        if found is None:
            return [sigmoid(s) for s in scores]
        return [found.probability(s) for s in scores]

    def threshold_row(
        self, precision: float | None = None, recall: float | None = None
    ) -> dict[str, float] | None:
        """The thresholds table's row for a wanted precision (the lowest threshold reaching it: the most recall)
        or recall (the highest threshold keeping it: the most precision); None when none reaches it."""
        if (precision is None) == (recall is None):
            raise ValueError("ask for a precision or a recall")
        if precision is not None:
            reaching = [row for row in self.thresholds if row["precision"] >= precision]
            return min(reaching, key=lambda row: row["threshold"]) if reaching else None
        keeping = [row for row in self.thresholds if row["recall"] >= recall]
        return max(keeping, key=lambda row: row["threshold"]) if keeping else None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "fitted_on": self.fitted_on,
            "report": self.report,
            "thresholds": self.thresholds,
        }
        if self.folded:
            data["folded"] = self.folded
        if self.score is not None:
            data["score"] = self.score.to_dict()
        if self.layers:
            data["layers"] = {str(k): v.to_dict() for k, v in sorted(self.layers.items())}
        return data

    @staticmethod
    def from_dict(data: dict[str, Any] | None) -> Calibration | None:
        if not data:
            return None
        return Calibration(
            score=ScoreMap.from_dict(data["score"]) if data.get("score") else None,
            layers={int(k): ScoreMap.from_dict(v) for k, v in (data.get("layers") or {}).items()},
            fitted_on=data.get("fitted_on", ""),
            report=dict(data.get("report") or {}),
            thresholds=list(data.get("thresholds") or []),
            folded=data.get("folded", ""),
        )


def sigmoid(value: float) -> float:
    if math.isnan(value):
        return math.nan
    return 1.0 / (1.0 + math.exp(-value)) if value >= 0 else math.exp(value) / (1.0 + math.exp(value))
