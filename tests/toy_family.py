"""A fourth family built from the pieces docs/development.md names, and nothing else: a spec, a model, a config,
and one registry entry. It is a cross-encoder whose score is the classifier's logit times a saved ``scale``, so
a test can tell its forward from the plain cross-encoder's at every step (training, saving, loading, scoring).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from transformers import PreTrainedTokenizerBase

from rerankforge.inference.modeling.cross_encoder import CrossEncoderModel
from rerankforge.inference.modeling.families import Family
from rerankforge.inference.modeling.file_checks import SEQUENCE_CLASSIFIER
from rerankforge.inference.modeling.spec import CrossEncoderSpec
from rerankforge.trainer.cross_encoder_config import CrossEncoderConfig

NAME = "scaled_cross_encoder"


# 1. the spec: what rerankforge.json records for the family (readable once the class exists)
@dataclass(kw_only=True)
class ScaledSpec(CrossEncoderSpec):
    family_name: ClassVar[str] = NAME
    scale: float = 1.0


# 2. the model: its forward is the score
class ScaledCrossEncoderModel(CrossEncoderModel):
    spec_class = ScaledSpec

    def forward(self, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
        return super().forward(input_ids, attention_mask, token_type_ids) * self.spec.scale

    @classmethod
    def for_training(
        cls, config: ScaledConfig, tokenizer: PreTrainedTokenizerBase
    ) -> ScaledCrossEncoderModel:
        model = super().for_training(config, tokenizer)
        fields = {f.name: getattr(model.spec, f.name) for f in dataclasses.fields(CrossEncoderSpec)}
        model.spec = ScaledSpec(**{**fields, "family": NAME, "scale": config.score_scale})
        return model


# 3. the config: every field a recipe key and a --flag
@dataclass
class ScaledConfig(CrossEncoderConfig):
    family: str = field(default=NAME, metadata={"help": "Reranker family (fixed)."})
    score_scale: float = field(default=2.0, metadata={"help": "The logit is multiplied by this."})


# 4. the registry entry: the trainer, collator, inference class and card snippets are the cross-encoder's
FAMILY = Family(
    name=NAME,
    title="scaled cross-encoder reranker",
    spec_class=ScaledSpec,
    model_class=ScaledCrossEncoderModel,
    backbone=SEQUENCE_CLASSIFIER,
    inference="rerankforge.inference.reranker:Reranker",
    config="toy_family:ScaledConfig",
    trainer="rerankforge.trainer.cross_encoder_trainer:CrossEncoderTrainer",
    collator="rerankforge.data_tools.collators:CrossEncoderCollator",
    card_usage="rerankforge.trainer.model_card:cross_encoder_usage",
)
