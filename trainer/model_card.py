"""The exported model's README.md: Hub metadata, what was trained how, the evaluation, and how to use it."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from rerankforge.inference.long_passages import LongPassages
from rerankforge.inference.modeling.calibration import Calibration
from rerankforge.inference.modeling.families import get_family
from rerankforge.inference.modeling.spec import LayerwiseSpec, LLMSpec, RerankerSpec
from rerankforge.trainer.losses import describe_objective

HYPER_PARAMETERS = (
    "train_group_size", "query_max_len", "passage_max_len", "inference_passage_max_len", "learning_rate",
    "per_device_train_batch_size", "gradient_accumulation_steps", "num_train_epochs", "max_steps",
    "warmup_steps", "weight_decay", "bf16", "seed", "loss", "loss_kwargs", "distill_loss", "distill_temperature",
    "distill_weight", "lora_rank", "lora_alpha", "lora_dropout", "start_layer", "self_distill_weight",
    "mine_num_negatives", "mine_rank_range", "mine_retriever", "mine_teacher", "mine_absolute_margin",
    "mine_relative_margin", "mine_max_score", "mine_margin_reference",
)  # fmt: skip
METRIC_NAMES = {"ndcg@10": "ndcg_at_10", "mrr@10": "mrr_at_10"}
HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def hub_id(name: str | None) -> str | None:
    """``name`` when it reads as a Hub repository id and is not a local path; metadata never carries paths."""
    if not name or Path(name).exists() or not HUB_ID.match(name):
        return None
    return name


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def training_record(checkpoint: Path) -> tuple[dict[str, Any], dict[str, float], str | None]:
    """(training arguments, final eval metrics, eval table) from the checkpoint or its run folder."""
    for folder in (checkpoint, checkpoint.parent):
        args = read_json(folder / "training_args.json")
        if args:
            metrics = read_json(folder / "eval_results.json")
            table = folder / "eval_table.md"
            return args, metrics, table.read_text(encoding="utf-8") if table.is_file() else None
    return {}, {}, None


def loss_description(spec: RerankerSpec, args: dict[str, Any]) -> str:
    """The objective's own description: from the spec's record of it, or (older checkpoints) rebuilt from the
    run's settings, which were grouped cross-entropy and optional KL then."""

    record = spec.loss
    if record is None:
        distill = args.get("distill_loss") or ("kl" if args.get("knowledge_distillation") else None)
        record = {
            "loss": {"name": args.get("loss") or "grouped_cross_entropy", **(args.get("loss_kwargs") or {})}
        }
        if distill:
            temperature = {"temperature": args.get("distill_temperature", 1.0)} if distill == "kl" else {}
            record.update(
                distill_loss={"name": distill, **temperature}, distill_weight=args.get("distill_weight", 1.0)
            )
        if spec.family == "layerwise":
            record = {"per_layer": record, "self_distill_weight": args.get("self_distill_weight") or 0.0}
    group = int(args.get("train_group_size", 8))
    return f"{describe_objective(record)}; each query's group is 1 positive and {group - 1} negatives"


def snippet(stack: str, code: str) -> tuple[str, str]:
    return stack, code.strip()


PAIR = '[["what is a panda?", "The giant panda is a bear."]]'


def cross_encoder_usage(spec: RerankerSpec, repo_id: str, adapter: bool) -> list[tuple[str, str]]:
    """The stacks that load a one-logit sequence classifier as it is."""
    return [
        snippet(
            "rerankforge",
            f"""
from rerankforge.inference import Reranker

reranker = Reranker.from_pretrained("{repo_id}")
scores = reranker.compute_score({PAIR}, normalize=True)""",
        ),
        snippet(
            "sentence-transformers",
            f"""
from sentence_transformers import CrossEncoder

model = CrossEncoder("{repo_id}")
scores = model.predict([("what is a panda?", "The giant panda is a bear.")])""",
        ),
        snippet(
            "FlagEmbedding",
            f"""
from FlagEmbedding import FlagReranker

reranker = FlagReranker("{repo_id}", use_fp16=True)
scores = reranker.compute_score({PAIR})""",
        ),
    ]


def llm_usage(spec: LLMSpec, repo_id: str, adapter: bool) -> list[tuple[str, str]]:
    """rerankforge always; FlagEmbedding for a merged (full) model, with the prompt it was trained with."""
    blocks = [
        snippet(
            "rerankforge",
            f"""
from rerankforge.inference import LLMReranker

reranker = LLMReranker.from_pretrained("{repo_id}")
scores = reranker.compute_score({PAIR})""",
        ),
    ]
    if not adapter and spec.input_format == "bge":  # FlagLLMReranker reads the BGE layout only
        blocks.append(
            snippet(
                "FlagEmbedding",
                f"""
from FlagEmbedding import FlagLLMReranker

reranker = FlagLLMReranker("{repo_id}", use_fp16=True)
# the prompt this model was trained with:
prompt = {json.dumps(spec.prompt)}
scores = reranker.compute_score({PAIR}, prompt=prompt)""",
            )
        )
    return blocks


def layerwise_usage(spec: LayerwiseSpec, repo_id: str, adapter: bool) -> list[tuple[str, str]]:
    return [
        snippet(
            "rerankforge",
            f"""
from rerankforge.inference import LayerwiseReranker

reranker = LayerwiseReranker.from_pretrained("{repo_id}")
scores = reranker.compute_score({PAIR}, cutoff_layers=[{spec.layers[-1]}])""",
        ),
    ]


def usage(spec: RerankerSpec, repo_id: str, adapter: bool) -> str:
    """Snippets for the stacks that load this family (the family entry names them)."""
    blocks = get_family(spec.family).usage(spec, repo_id, adapter)
    return "\n\n".join(f"{name}:\n\n```python\n{code}\n```" for name, code in blocks)


def front_matter(
    spec: RerankerSpec,
    metrics: dict[str, float],
    dataset: str | None,
    license_id: str,
    adapter: bool,
    name: str,
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "library_name": "peft" if adapter else "transformers",
        "pipeline_tag": "text-ranking",
        "license": license_id,
        "tags": ["rerankforge", "reranker", spec.family.replace("_", "-"), "text-ranking"],
    }
    if hub_id(spec.base_model):
        meta["base_model"] = spec.base_model
    found = [(METRIC_NAMES[k], metrics[f"eval_{k}"]) for k in METRIC_NAMES if f"eval_{k}" in metrics]
    if found:
        meta["model-index"] = [
            {
                "name": name,
                "results": [
                    {
                        "task": {"type": "text-ranking"},
                        "dataset": {
                            "name": dataset or "held-out evaluation set",
                            "type": dataset or "custom",
                        },
                        "metrics": [{"type": metric, "value": float(value)} for metric, value in found],
                    }
                ],
            }
        ]
    return meta


def card_header(meta: dict[str, Any], name: str) -> list[str]:
    """The Hub metadata block and the title every card starts with."""
    return ["---", yaml.safe_dump(meta, sort_keys=False).rstrip(), "---", "", f"# {name}", ""]


def model_card(
    spec: RerankerSpec,
    checkpoint: Path,
    repo_id: str,
    license_id: str = "apache-2.0",
    adapter: bool = False,
    serving: list[str] | None = None,
) -> str:
    """The export's README.md; ``serving``: lines of a section on loading it in other engines."""
    args, metrics, table = training_record(checkpoint)
    data = args.get("ir_data") or ", ".join(args.get("train_data") or []) or None
    name = repo_id.rsplit("/", 1)[-1]
    meta = front_matter(
        spec, metrics, args.get("ir_data") or args.get("eval_data"), license_id, adapter, name
    )
    title = get_family(spec.family).title
    lines = [
        *card_header(meta, name),
        f"A {title} fine-tuned with [rerankforge](https://github.com/rerankforge/rerankforge)"
        + (f" from `{spec.base_model}`." if spec.base_model else "."),
        "",
        f"- family: `{spec.family}`" + (" (LoRA adapter; load it on the base model)" if adapter else ""),
        f"- base model: `{spec.base_model or 'unknown'}`",
        f"- training data: {data or 'not recorded'}",
        f"- loss: {loss_description(spec, args)}",
        f"- scoring budgets: query {spec.query_max_len} tokens, passage {spec.passage_max_len} tokens",
        *(f"- {line}" for line in spec.card_lines()),
        *long_passage_lines(spec),
    ]
    settings = {k: args[k] for k in HYPER_PARAMETERS if k in args and args[k] is not None}
    if settings:
        lines += ["", "## Training hyper-parameters", "", "| setting | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in settings.items()]
    if table or metrics:
        lines += ["", "## Evaluation", ""]
        lines.append(table.strip() if table else "")
        if metrics:
            lines += ["", "Final evaluation, as logged by the run:", "", "| metric | value |", "|---|---|"]
            lines += [f"| {k} | {v:.4f} |" for k, v in sorted(metrics.items()) if isinstance(v, float)]
    lines += ["", "## Usage", "", usage(spec, repo_id, adapter), ""]
    if serving:
        lines += [*serving, ""]
    return "\n".join(lines)


def sentence_transformers_section(
    repo_id: str, spec: LLMSpec, not_written: str | None, row_cap: int | None, classifier: bool = False
) -> list[str]:
    """How sentence-transformers 6 loads the export (causal, or converted to a ``classifier``), or why it
    cannot as it is."""
    lines = ["## sentence-transformers 6", ""]
    if not_written is not None:
        return [*lines, f"Not configured for sentence-transformers' `CrossEncoder`: {not_written}."]
    kind = (
        "a sequence classifier whose input is a chat-templated pair (`modules.json`, `sentence_bert_config.json`"
        if classifier
        else "a causal reranker (`modules.json`, `sentence_bert_config.json`, `1_LogitScore/` with the answer "
        "tokens' ids"
    )
    kept = "" if classifier else " (the base model's own chat template is kept)"
    lines += [
        f"The folder holds sentence-transformers' configuration for {kind}, and the chat template "
        "`additional_chat_templates/rerank.jinja`, which writes a pair in this model's input format), so "
        f"`CrossEncoder` feeds the model the token ids rerankforge does{kept}:",
        "",
        "```python",
        "from sentence_transformers import CrossEncoder",
        "",
        f'model = CrossEncoder("{repo_id}")',
        'scores = model.predict([("what is a panda?", "The giant panda is a bear.")])  # sigmoid of the score',
        "# another instruction than the trained one:",
        'scores = model.predict([("what is a panda?", "The giant panda is a bear.")], prompt="...")',
        "```",
    ]
    if spec.input_format == "bge":
        lines += [
            "",
            f"sentence-transformers cuts a row at {row_cap} tokens as a whole; rerankforge cuts the query to "
            f"{spec.query_max_len} and the passage to {spec.passage_max_len} tokens each, so a pair beyond those "
            "budgets scores differently.",
        ]
    return lines


def sequence_classification_card(
    spec: LLMSpec,
    text_format: dict[str, Any],
    class_name: str,
    name: str,
    difference: float,
    serving: list[str] | None = None,
) -> str:
    """The card of a `--as-sequence-classification` export: what the logit is and how to format the input."""
    source = f"layer {text_format['layer']}'s head" if text_format["layer"] else "the answer-token score"
    template = text_format["template"]
    lines = [
        *card_header(sequence_classification_meta(spec), name),
        f"A {spec.family} reranker trained with [rerankforge](https://github.com/rerankforge/rerankforge), "
        f"converted into a one-logit `{class_name}`: the logit is the reranker's score ({source}), checked "
        f"to {difference:.1g} at conversion. It loads with transformers alone (no peft, no rerankforge).",
        "",
        f"- input format: `{spec.input_format}`; score: {text_format['score']}",
        "- the input is one text, the pair written into the template below (special tokens are part of it, "
        "so tokenize with `add_special_tokens=False`); `text_format.json` holds the same template",
        "- rerankforge cut the query and passage to their own budgets in training; here a long text is cut by "
        "the tokenizer's truncation instead",
        *(
            [
                "- the text ends (or begins) with whitespace, which is part of the input: an engine that strips its "
                "inputs (infinity does) scores a slightly different text"
            ]
            if template != template.strip()
            else []
        ),  # fmt: skip
        "",
        "```text",
        template,
        "```",
        "",
        "## Usage",
        "",
        "transformers:",
        "",
        f"```python{transformers_snippet(template, name, spec.max_length)}\n```",
        "",
        *(serving or []),
        "",
    ]
    return "\n".join(lines)


def sequence_classification_meta(spec: LLMSpec) -> dict[str, Any]:
    """Hub metadata of the converted model: plain transformers, no peft and no rerankforge needed."""
    meta: dict[str, Any] = {
        "library_name": "transformers",
        "pipeline_tag": "text-ranking",
        "tags": ["rerankforge", "reranker", "text-ranking", "sequence-classification"],
    }
    if hub_id(spec.base_model):
        meta["base_model"] = spec.base_model
    return meta


def transformers_snippet(template: str, name: str, max_length: int) -> str:
    """Scoring with transformers alone: the pair written into the template, tokenized as it is."""
    return f"""
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

TEMPLATE = {json.dumps(template, ensure_ascii=False)}

def format_pair(query: str, passage: str) -> str:
    return TEMPLATE.replace("{{query}}", query).replace("{{passage}}", passage)

tokenizer = AutoTokenizer.from_pretrained("{name}")
model = AutoModelForSequenceClassification.from_pretrained("{name}").eval()
texts = [format_pair(q, p) for q, p in {PAIR}]
batch = tokenizer(texts, padding=True, truncation=True, max_length={max_length},
                  add_special_tokens=False, return_tensors="pt")
with torch.inference_mode():
    scores = model(**batch).logits[:, 0]  # torch.sigmoid(scores) for [0, 1]"""


def long_passage_lines(spec: RerankerSpec) -> list[str]:
    """The stored long-passage mode: rerankforge applies it by default; an engine truncates unless the client
    sends the windows (docs/export.md)."""
    settings = LongPassages.from_dict(spec.long_passages)
    if not settings.windowed:
        return []
    return [
        f"- long passages: {settings.describe()} (rerankforge applies it by default; a serving engine truncates: "
        "send it the windows of `rerankforge.inference.long_passages.split_passage` and keep the max)"
    ]


def calibration_section(
    spec: RerankerSpec, note: str, with_diagram: bool = False, diagram: str = "reliability.png"
) -> list[str]:
    """What the scores' probabilities mean: the calibration, how well it did on held-out queries, where it lives
    in this folder, and thresholds for a wanted precision; ``diagram``: the reliability diagram's path in it."""
    calibration = Calibration.from_dict(spec.calibration)
    lines = ["## Calibrated scores", ""]
    if calibration is None:
        return [*lines, note]
    report = calibration.report
    held = report.get("held_out") or {}
    lines.append(f"`normalize=True` scores are calibrated probabilities ({report.get('method', '?')}, fitted on "
                 f"{calibration.fitted_on}).")  # fmt: skip
    if held:
        lines.append(
            f"On {held['pairs']} pairs of held-out queries: expected calibration error {held['ece_before']:.3f} -> "
            f"{held['ece_after']:.3f}, Brier score {held['brier_before']:.3f} -> {held['brier_after']:.3f} "
            "(plain sigmoid -> calibrated)."
        )
    lines += ["", note]
    if with_diagram:
        lines += ["", "![reliability diagram: share judged relevant against predicted probability, on held-out "
                  f"queries]({diagram})"]  # fmt: skip
    rows = [(wanted, calibration.threshold_row(precision=wanted)) for wanted in (0.8, 0.9)]
    rows = [(wanted, row) for wanted, row in rows if row is not None]
    if rows:
        lines += [
            "",
            "| precision wanted (fitting pairs) | threshold | recall | pairs kept |",
            "|---|---|---|---|",
        ]
        lines += [f"| {w:g} | {r['threshold']:.3f} | {r['recall']:.3f} | {r['kept']:.1%} |" for w, r in rows]
        lines += ["", "`reranker.threshold(precision=0.9)` gives it; `rank(query, docs, min_score=...)` drops what "
                  "falls below."]  # fmt: skip
    return lines
