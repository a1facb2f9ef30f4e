"""Training losses: each takes ``scores[groups, group_size]`` (column 0 the positive) and never holds the model.

The registry below maps each name (the recipe's ``loss`` / ``distill_loss``) to its class; adding a loss is
its file, its line here and its test.
"""

from __future__ import annotations

import inspect
from typing import Any

from rerankforge.trainer.losses.base import RankingLoss
from rerankforge.trainer.losses.bce import BinaryCrossEntropyLoss
from rerankforge.trainer.losses.grouped_cross_entropy import GroupedCrossEntropyLoss
from rerankforge.trainer.losses.kl import KLDivergenceLoss
from rerankforge.trainer.losses.lambda_loss import LambdaLoss
from rerankforge.trainer.losses.layerwise_objective import LayerwiseObjective
from rerankforge.trainer.losses.listmle import ListMLELoss
from rerankforge.trainer.losses.listnet import ListNetLoss
from rerankforge.trainer.losses.margin_mse import MarginMSELoss
from rerankforge.trainer.losses.mse import MSELoss
from rerankforge.trainer.losses.objective import RankingObjective
from rerankforge.trainer.losses.plistmle import PListMLELoss
from rerankforge.trainer.losses.ranknet import RankNetLoss

LOSSES: dict[str, type[RankingLoss]] = {
    "grouped_cross_entropy": GroupedCrossEntropyLoss,
    "bce": BinaryCrossEntropyLoss,
    "ranknet": RankNetLoss,
    "lambda_loss": LambdaLoss,
    "listnet": ListNetLoss,
    "listmle": ListMLELoss,
    "plistmle": PListMLELoss,
    "margin_mse": MarginMSELoss,
    "mse": MSELoss,
    "kl": KLDivergenceLoss,
}
DEFAULT_LOSS = "grouped_cross_entropy"


def distill_losses() -> list[str]:
    """The losses that learn a teacher's scores: the choices for ``distill_loss``."""
    return [name for name, cls in LOSSES.items() if cls.teacher == "required"]


def loss_settings(name: str) -> list[str]:
    """The keyword arguments loss ``name`` accepts."""
    return [p for p in inspect.signature(LOSSES[name].__init__).parameters if p != "self"]


def get_loss(name: str, **kwargs: Any) -> RankingLoss:
    """The loss registered as ``name``, built with ``kwargs``; an unknown name or keyword lists the valid ones."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of: {', '.join(LOSSES)}")
    valid = loss_settings(name)
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        accepted = ", ".join(valid) if valid else "none"
        raise ValueError(f"loss {name!r} takes no setting {', '.join(unknown)}; its settings: {accepted}")
    return LOSSES[name](**kwargs)


def build_objective(
    loss: str = DEFAULT_LOSS,
    loss_kwargs: dict[str, Any] | None = None,
    distill_loss: str | None = None,
    distill_weight: float = 1.0,
    distill_temperature: float = 1.0,
) -> RankingObjective:
    """The objective a config asks for. ``distill_temperature`` is the ``kl`` term's (the others take none)."""
    main = get_loss(loss, **(loss_kwargs or {}))
    distill = None
    if distill_loss is not None:
        if distill_loss not in distill_losses():
            raise ValueError(
                f"unknown distill_loss {distill_loss!r}; choose one of: {', '.join(distill_losses())}"
            )
        distill = (
            get_loss("kl", temperature=distill_temperature)
            if distill_loss == "kl"
            else get_loss(distill_loss)
        )
    return RankingObjective(main, distill, distill_weight)


def objective_from_config(record: dict[str, Any]) -> RankingObjective | LayerwiseObjective:
    """The objective that ``get_config_dict()`` described (as recorded in `rerankforge.json`)."""
    if "per_layer" in record:
        temperature = (record.get("self_distillation") or {}).get("temperature", 1.0)
        weight = float(record.get("self_distill_weight") or 0.0)
        return LayerwiseObjective(objective_from_config(record["per_layer"]), weight, temperature)
    main = record["loss"]
    distill = record.get("distill_loss")
    return RankingObjective(
        get_loss(main["name"], **{k: v for k, v in main.items() if k != "name"}),
        get_loss(distill["name"], **{k: v for k, v in distill.items() if k != "name"}) if distill else None,
        float(record.get("distill_weight", 1.0)),
    )


def describe_objective(record: dict[str, Any]) -> str:
    """The losses' own description of a recorded objective; the record itself if this version lacks a loss."""
    try:
        return objective_from_config(record).describe()
    except (KeyError, ValueError, TypeError):
        return f"as recorded: {record}"


__all__ = [
    "DEFAULT_LOSS",
    "LOSSES",
    "BinaryCrossEntropyLoss",
    "GroupedCrossEntropyLoss",
    "KLDivergenceLoss",
    "LambdaLoss",
    "LayerwiseObjective",
    "ListMLELoss",
    "ListNetLoss",
    "MSELoss",
    "MarginMSELoss",
    "PListMLELoss",
    "RankNetLoss",
    "RankingLoss",
    "RankingObjective",
    "build_objective",
    "describe_objective",
    "distill_losses",
    "get_loss",
    "loss_settings",
    "objective_from_config",
]
