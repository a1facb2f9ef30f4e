"""An LLM or layerwise reranker as a one-logit ``*ForSequenceClassification`` checkpoint (`rerankforge-export
--as-sequence-classification`), the form in which sentence-transformers' CrossEncoder, vLLM's score API and TEI
take LLM rerankers.

The score is a linear read-out of the last position's final hidden state, which is what a sequence-classification
head computes: for the LLM family the LM head's "Yes" row (or "yes" minus "no"), for a layerwise model the chosen
layer's head, with the decoder cut after that layer (its heads read the final norm of that layer's output, as the
shortened model's own final norm does). Adapters are merged first, so the folder loads with transformers alone.
The input is the one formatted text (`text_format.json` and the model card give it; the ``rerank`` chat template
writes it from a pair, for sentence-transformers 6 and vLLM); the conversion is checked on a few pairs against the
reranker before anything is written.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, PreTrainedModel

from rerankforge.inference.auto import load_reranker
from rerankforge.inference.llm_reranker import LLMLengths
from rerankforge.inference.modeling.calibration import Calibration
from rerankforge.inference.modeling.files import atomic_folder, atomic_write_text
from rerankforge.inference.modeling.layerwise import layer_name
from rerankforge.inference.modeling.spec import LayerwiseSpec, LLMSpec, RerankerSpec
from rerankforge.trainer.model_card import sequence_classification_card
from rerankforge.trainer.portable_files import make_config_portable, make_tokenizer_portable
from rerankforge.trainer.sentence_transformers_files import CLASSIFIER
from rerankforge.trainer.serving_commands import llm_serving_sections

logger = logging.getLogger(__name__)
TEXT_FORMAT_FILE = "text_format.json"
CHECK_PAIRS = [
    ("what is the capital of france?", "Paris is the capital and largest city of France."),
    ("who wrote hamlet", "The tragedy Hamlet was written by William Shakespeare around 1600."),
    ("boiling point of water", "A short passage about something else entirely."),
]
UNCUT = 10**6
TOLERANCE = 1e-3  # fp32 conversion check; the tests hold it to 1e-4


def score_row(reranker, layer: int | None) -> tuple[torch.Tensor, float]:
    """The read-out weight ``[hidden]`` and its bias (a layerwise head's; zero for the LLM family)."""
    spec: LLMSpec = reranker.spec
    model = reranker.model
    if layer is not None:
        head = model.heads[str(layer)]
        return head.weight.detach().float()[0].clone(), float(head.bias.detach().float()[0])
    weight = model.backbone.get_output_embeddings().weight.detach().float()
    row = weight[spec.yes_token_id].clone()
    if spec.score == "yes_minus_no":
        row -= weight[spec.no_token_id]
    return row, 0.0


def truncated_config(config, layers: int | None):
    """The causal LM's config as a one-logit classifier of ``layers`` decoder layers (all when None)."""
    config = copy.deepcopy(config)
    config.num_labels = 1
    config.id2label, config.label2id = {0: "LABEL_0"}, {"LABEL_0": 0}
    if layers is not None:
        config.num_hidden_layers = layers
        if isinstance(getattr(config, "layer_types", None), list):  # sliding / full attention per layer
            config.layer_types = config.layer_types[:layers]
    config.architectures = None
    return config


def build_classifier(reranker, layer: int | None) -> PreTrainedModel:
    """The sequence classifier with the reranker's decoder (cut after ``layer``) and score row."""
    backbone = reranker.model.backbone
    softcap = getattr(backbone.config, "final_logit_softcapping", None)
    if softcap:
        raise ValueError(
            f"{type(backbone).__name__} caps its logits (final_logit_softcapping={softcap}); a sequence "
            "classification head applies no cap, so its logit could not equal this reranker's score"
        )
    config = truncated_config(backbone.config, layer)
    config.pad_token_id = reranker.tokenizer.pad_token_id
    classifier = AutoModelForSequenceClassification.from_config(config, dtype=torch.float32)
    decoder_state = {
        key: value
        for key, value in backbone.get_decoder().state_dict().items()
        if layer is None or not key.startswith("layers.") or int(key.split(".")[1]) < layer
    }
    prefix = classifier.base_model_prefix
    missing, unexpected = getattr(classifier, prefix).load_state_dict(decoder_state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"the decoder's weights do not fit {type(classifier).__name__}: missing {missing[:4]}, "
            f"unexpected {unexpected[:4]}"
        )
    row, bias = score_row(reranker, layer)
    with torch.no_grad():
        classifier.score.weight.copy_(row.unsqueeze(0))
    return classifier, bias


def uncut_encoder(reranker):
    """The reranker's format with budgets no pair reaches: the ids of the whole formatted text."""

    return reranker.encoder(LLMLengths(UNCUT, UNCUT, UNCUT))


def check_conversion(reranker, classifier: PreTrainedModel, layer: int | None, bias: float) -> float:
    """Largest difference between the reranker's scores and the classifier's logits (plus ``bias``) on
    ``CHECK_PAIRS``; also that each formatted text tokenizes to the reranker's own ids for it."""
    encoder = uncut_encoder(reranker)
    sequences = encoder.encode([q for q, _ in CHECK_PAIRS], [p for _, p in CHECK_PAIRS])
    tokenizer = reranker.tokenizer
    for (query, passage), ids in zip(CHECK_PAIRS, sequences, strict=True):
        text_ids = tokenizer(encoder.text(query, passage), add_special_tokens=False)["input_ids"]
        if text_ids != ids:
            raise ValueError(
                "the formatted text does not tokenize to the reranker's input ids for a short pair; this "
                "tokenizer's pieces merge across the format's boundaries"
            )
        if ids[-1] == tokenizer.pad_token_id:
            raise ValueError(
                f"the formatted text ends with the pad token {tokenizer.pad_token!r}: a classifier reads the "
                "last token that is not padding; set another pad token on the tokenizer"
            )
    batch = encoder.pad_left(sequences, None)
    with torch.inference_mode():
        if layer is None:
            expected = reranker.model(**batch)
        else:
            expected = reranker.model(**batch, layers=[layer])[layer_name(layer)]
        logits = classifier(**batch).logits[:, 0].float() + bias
    return float((logits - expected.float()).abs().max())


def text_format(reranker, layer: int | None) -> dict:
    """What a user or serving engine needs to turn a pair into this classifier's input text."""
    spec: LLMSpec = reranker.spec
    encoder = uncut_encoder(reranker)
    return {
        "input_format": spec.input_format,
        "template": encoder.text("{query}", "{passage}"),
        "prompt": spec.prompt,
        "add_special_tokens": False,
        "score": spec.score if layer is None else f"layer {layer} head",
        "source_family": spec.family,
        "layer": layer,
        "max_length": spec.max_length,
    }


def write_sequence_classification(
    checkpoint: str | Path, out: str | Path, layer: int | None = None, trust_remote_code: bool = False,
    drop_head_bias: bool = False,
) -> Path:  # fmt: skip
    """Convert ``checkpoint`` (llm or layerwise) into a one-logit classifier folder at ``out``."""

    checkpoint, out = Path(checkpoint), Path(out)
    spec = RerankerSpec.load(checkpoint)
    if spec is None or not isinstance(spec, LLMSpec):
        found = "no rerankforge.json" if spec is None else f"a {spec.family!r} reranker"
        raise ValueError(
            f"--as-sequence-classification converts llm and layerwise rerankers; {checkpoint} holds {found} "
            "(a cross-encoder already is a sequence classifier: export it plainly)"
        )
    reranker = load_reranker(str(checkpoint), device="cpu", dtype=torch.float32,
                             trust_remote_code=trust_remote_code)  # fmt: skip
    if isinstance(spec, LayerwiseSpec):
        layer = layer if layer is not None else reranker.layers[-1]
        reranker.resolve_layers([layer])  # a layer without a head: a clear error
    elif layer is not None:
        raise ValueError(f"--layer is for layerwise rerankers; {checkpoint} holds an llm reranker")
    classifier, bias = build_classifier(reranker, layer)
    if bias and not drop_head_bias:
        raise ValueError(
            f"layer {layer}'s head has bias {bias:.6g}: a sequence classifier's score head has none. It shifts "
            "every score alike (rankings are unchanged); pass --drop-head-bias to export scores shifted by it"
        )
    difference = check_conversion(reranker, classifier, layer, bias)
    fmt = text_format(reranker, layer)
    if fmt["template"] != fmt["template"].strip():
        logger.warning(
            "the formatted text begins or ends with whitespace (%r): engines that strip their inputs (infinity "
            "does) drop those tokens and score a slightly different input",
            fmt["template"][-12:],
        )
    if difference > TOLERANCE:
        raise ValueError(
            f"the converted classifier differs from the reranker by {difference:.3g} (> {TOLERANCE})"
        )
    logger.info("converted: logits within %.2g of the reranker's scores", difference)
    tokenizer = copy.deepcopy(reranker.tokenizer)
    tokenizer.padding_side = "left"
    # the base's chat template would wrap the formatted text in a second frame: the only template is the
    # export's own "rerank", which writes a (query, document) pair in the input format
    tokenizer.chat_template = None
    with atomic_folder(out) as staging:
        classifier.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "chat_template.jinja").unlink(missing_ok=True)
        atomic_write_text(staging / TEXT_FORMAT_FILE, json.dumps(fmt, indent=2, ensure_ascii=False) + "\n")

        make_tokenizer_portable(staging)
        make_config_portable(staging)
        serving = llm_serving_sections(staging, spec, out.name, CLASSIFIER) + unfolded_calibration(
            spec, layer
        )
        card = sequence_classification_card(
            spec, fmt, type(classifier).__name__, out.name, difference, serving
        )
        (staging / "README.md").write_text(card, encoding="utf-8")
    return out


def unfolded_calibration(spec: LLMSpec, layer: int | None) -> list[str]:
    """The card's word on a calibration this export cannot carry (a decoder classifier's head has no bias)."""
    calibration = Calibration.from_dict(spec.calibration)
    score_map = calibration.map_for(layer) if calibration is not None else None
    if score_map is None:
        return []
    if score_map.method == "platt":
        how = f"`sigmoid({score_map.scale:.6g} * logit + {score_map.bias:.6g})`"
    else:
        how = "the isotonic map in the source checkpoint's `rerankforge.json`"
    return ["", "## Calibrated scores", "",
            f"The source checkpoint holds a calibration ({calibration.fitted_on}) that this export does not carry: "
            "a decoder classifier's score head has no bias to fold it into, so an engine's sigmoid of the logit "
            f"is the uncalibrated one. The calibrated probability is {how}."]  # fmt: skip
