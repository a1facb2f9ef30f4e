"""An export whose engines return the calibrated probability: Platt scaling folded into a one-logit head.

``sigmoid(scale * (w . h + b) + bias) = sigmoid((scale * w) . h + (scale * b + bias))``: a cross-encoder's
classifier keeps its form, and every engine's plain sigmoid (vLLM, infinity, TEI, sentence-transformers) is then
the calibrated probability. The export's `rerankforge.json` records the fold and drops the map (rerankforge's own
sigmoid of the new logit is the same probability); its thresholds stay valid, they are probabilities.

Not folded, and said so on the card: isotonic maps (not linear), and the LLM families, whose heads are a bias-less
LM-head row (a decoder classifier's ``score`` has no bias either); rerankforge applies their calibration itself.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from rerankforge.inference.modeling.calibration import Calibration
from rerankforge.inference.modeling.spec import CrossEncoderSpec, RerankerSpec

WEIGHTS = "model.safetensors"


def head_keys(weights: dict[str, torch.Tensor]) -> tuple[str, str] | None:
    """The one-logit head's weight and bias: the only ``[1, hidden]`` weight with a ``[1]`` bias beside it."""
    found = [
        (key, key.removesuffix("weight") + "bias")
        for key, tensor in weights.items()
        if key.endswith(".weight") and tensor.ndim == 2 and tensor.shape[0] == 1
        and tuple(weights.get(key.removesuffix("weight") + "bias", torch.empty(0)).shape) == (1,)
    ]  # fmt: skip
    return found[0] if len(found) == 1 else None


def fold_calibration(folder: Path) -> str | None:
    """Fold the folder's Platt calibration into its head, in place; returns what the card should say (None: the
    folder has no calibration)."""
    spec = RerankerSpec.load(folder)
    calibration = Calibration.from_dict(spec.calibration if spec else None)
    if calibration is None or calibration.score is None and not calibration.layers:
        return None
    if not isinstance(spec, CrossEncoderSpec):
        return (
            "The calibration is not folded into this export (an LLM's score head has no bias to carry it): "
            "rerankforge applies it (`normalize=True`); other engines' sigmoid is the uncalibrated one."
        )
    if calibration.score.method != "platt":
        return (
            f"The {calibration.score.method} calibration is not linear, so it is not folded into the head: "
            "rerankforge applies it (`normalize=True`); other engines' sigmoid is the uncalibrated one."
        )
    path = folder / WEIGHTS
    if not path.is_file():
        return f"The calibration is not folded: no single {WEIGHTS} (a sharded checkpoint) to fold it into."
    with safe_open(str(path), "pt") as handle:
        metadata = handle.metadata()
        weights = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118  (safe_open has no iterator)
    keys = head_keys(weights)
    if keys is None:
        return "The calibration is not folded: no single one-logit head with a bias was found in the weights."
    weight_key, bias_key = keys
    scale, bias = calibration.score.scale, calibration.score.bias
    weights[weight_key] = (weights[weight_key].double() * scale).to(weights[weight_key].dtype)
    weights[bias_key] = (weights[bias_key].double() * scale + bias).to(weights[bias_key].dtype)
    save_file(weights, str(path), metadata=metadata)
    note = f"{weight_key} and {bias_key} (scale {scale:.6g}, bias {bias:.6g})"
    spec.calibration = dataclasses.replace(calibration, score=None, folded=note).to_dict()
    spec.save(folder)
    return (
        f"The Platt calibration ({calibration.fitted_on}) is folded into the classifier ({note}): the logit is "
        "calibrated, and every engine's plain sigmoid of it (rerankforge, sentence-transformers, vLLM, infinity, "
        "TEI) is the calibrated probability."
    )
