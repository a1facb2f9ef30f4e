"""The files sentence-transformers 6 reads to score a causal-LM reranker, written beside an LLM export, so that
``CrossEncoder(folder).predict(pairs)`` feeds the model rerankforge's own token ids with no hand-formatting.

sentence-transformers 6 turns a (query, document) pair into the messages ``query`` and ``document`` (a
``prompt=`` becomes a leading ``system`` message), renders them with the tokenizer's chat template, tokenizes
the text in one pass, pads on the left, and scores the last position's logits with ``LogitScore`` (the "yes"
logit, minus the "no" logit when there is one). The export adds a chat template named ``rerank`` that renders the
messages as rerankforge's input format (the base model's own template is kept), the module list, and the
``LogitScore`` token ids from `rerankforge.json`. Read against sentence-transformers 6.3.0
(``cross_encoder/model.py``, ``base/modules/transformer.py``, ``cross_encoder/modules/logit_score.py``).

What one-pass templating cannot copy: the bge format cuts the query and the passage to their own budgets, while
sentence-transformers cuts the whole row (at rerankforge's longest uncut row, so pairs within the budgets get
the same ids); and a tokenizer could merge tokens across the format's seams. The ids of sample pairs are
compared before anything is written (`template_mismatch`).

An ``--as-sequence-classification`` export gets the same template and configuration without the score module:
its one logit is the score, and the pair reaches it through the ``rerank`` template as well.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from rerankforge.inference.modeling.files import atomic_write_text
from rerankforge.inference.modeling.llm_formats import TemplateEncoder, prompt_encoder
from rerankforge.inference.modeling.llm_inputs import LLMPromptEncoder
from rerankforge.inference.modeling.spec import LLMSpec

CAUSAL, CLASSIFIER = "text-generation", "sequence-classification"  # sentence-transformers' transformer tasks
UNCUT = 10**6  # budgets that cut nothing: the sample pairs compare tokenization, not truncation
TEMPLATE_NAME = "rerank"  # additional_chat_templates/rerank.jinja
TEMPLATE_DIR = "additional_chat_templates"
SCORE_MODULE_DIR = "1_LogitScore"
# markers the format's row text is rendered with, then replaced by the messages' contents
QUERY_SLOT, PASSAGE_SLOT, PROMPT_SLOT = "\x00query\x00", "\x00passage\x00", "\x00prompt\x00"
# pairs whose ids the template must reproduce: ordinary text, seams with spaces and newlines, non-ASCII
SAMPLE_PAIRS = [
    ("what is a panda?", "The giant panda is a bear species endemic to China."),
    ("how do plants make food ", "Photosynthesis turns light, water and carbon dioxide into sugar.\n"),
    ("Où est la gare ?", "La gare est à deux rues d'ici — 駅はあちらです。"),
    ("2 + 2", "  four, indented"),
    ("is it good? 👍", "Yes 😀 — it is {{ good }} and \\ fine"),
]


def message_content(role: str) -> str:
    return f'messages | selectattr("role", "eq", "{role}") | map(attribute="content") | first'


def jinja_string(text: str) -> str:
    """A Jinja string literal of ``text``: JSON's escapes are Jinja's, and non-ASCII stays as it is (JSON's
    ``\\ud83d\\ude00`` surrogate pairs would reach the tokenizer as two broken halves)."""
    return json.dumps(text, ensure_ascii=False)


def rerank_template(encoder: LLMPromptEncoder | TemplateEncoder, default_prompt: str) -> str:
    """A Jinja chat template that renders (system?, query, document) messages as ``encoder.text`` does: the
    format's fixed text as string literals, the query and document in their places, the system message (or the
    format's prompt) as the instruction. It is only expressions, so the template engine's whitespace rules
    (trailing newline, trim_blocks) cannot change a character."""
    row = encoder.text(QUERY_SLOT, PASSAGE_SLOT, PROMPT_SLOT)
    expressions = {
        QUERY_SLOT: message_content("query"),
        PASSAGE_SLOT: message_content("document"),
        PROMPT_SLOT: f"{message_content('system')} | default({jinja_string(default_prompt)})",
    }
    parts = []
    for piece in re.split(f"({'|'.join(map(re.escape, expressions))})", row):
        if piece in expressions:
            parts.append("{{ " + expressions[piece] + " }}")
        elif piece:
            parts.append("{{ " + jinja_string(piece) + " }}")
    return "".join(parts)


def row_cap(encoder: LLMPromptEncoder | TemplateEncoder) -> int:
    """The longest row rerankforge feeds the model: sentence-transformers cuts rows there."""
    if isinstance(encoder, TemplateEncoder):
        return encoder.max_length
    separators = 2 * len(encoder.separator_ids)
    return (
        len(encoder.prefix_ids)
        + encoder.query_max_len
        + encoder.passage_max_len
        + separators
        + len(encoder.prompt_ids(None))
    )


def template_ids(tokenizer: PreTrainedTokenizerBase, template: str, query: str, passage: str) -> list[int]:
    messages = [{"role": "query", "content": query}, {"role": "document", "content": passage}]
    text = tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def template_mismatch(
    tokenizer: PreTrainedTokenizerBase, template: str, encoder: LLMPromptEncoder | TemplateEncoder
) -> str | None:
    """Why the template would feed other ids than rerankforge for a sample pair (None: the same for all)."""
    for query, passage in SAMPLE_PAIRS:
        expected = encoder.encode([query], [passage])[0]
        if template_ids(tokenizer, template, query, passage) != expected:
            return f"the tokenizer gives other ids for the template's one text than for its parts ({query!r})"
    return None


def sentence_transformers_files(
    spec: LLMSpec, tokenizer: PreTrainedTokenizerBase, task: str = CAUSAL
) -> tuple[dict[str, str], int]:
    """``relative path -> text`` of the files to add (besides the tokenizer's pad token), and the row cap.
    ``task``: ``text-generation`` (a causal LM scored by its answer tokens) or ``sequence-classification``
    (an ``--as-sequence-classification`` export, whose one logit is the score)."""
    encoder = prompt_encoder(tokenizer, spec.input_format, spec.prompt, spec.query_max_len,
                             spec.passage_max_len, spec.max_length, yes_token=spec.yes_token,
                             no_token=spec.no_token)  # fmt: skip
    template = rerank_template(encoder, spec.prompt)
    uncut = prompt_encoder(tokenizer, spec.input_format, spec.prompt, UNCUT, UNCUT, UNCUT, yes_token=spec.yes_token,
                           no_token=spec.no_token)  # fmt: skip
    reason = template_mismatch(tokenizer, template, uncut)
    if reason is not None:
        raise ValueError(reason)
    if task not in (CAUSAL, CLASSIFIER):
        raise ValueError(f"task {task!r}: expected {CAUSAL} or {CLASSIFIER}")
    false_token_id = spec.no_token_id if spec.score == "yes_minus_no" else None
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.base.modules.transformer.Transformer"},
        {"idx": 1, "name": "1", "path": SCORE_MODULE_DIR,
         "type": "sentence_transformers.cross_encoder.modules.logit_score.LogitScore"},
    ][: 2 if task == CAUSAL else 1]  # fmt: skip
    transformer = {
        "transformer_task": task,
        "modality_config": {  # "message" routes pairs through the chat template; without it, plain text
            "text": {"method": "forward", "method_output_name": "logits"},
            "message": {"method": "forward", "method_output_name": "logits", "format": "flat"},
        },
        "module_output_name": "causal_logits" if task == CAUSAL else "scores",
        "processing_kwargs": {
            "text": {"max_length": row_cap(encoder)},
            "chat_template": {"chat_template": TEMPLATE_NAME},
        },
    }
    model = {
        "model_type": "CrossEncoder",
        "activation_fn": "torch.nn.modules.activation.Sigmoid",  # predict(): sigmoid of the raw score
        "prompts": {},
        "default_prompt_name": None,
        "requirements": {"sentence_transformers": ">=6.0"},
    }
    score = {
        "true_token_id": spec.yes_token_id,
        "false_token_id": false_token_id,
        "module_input_name": "causal_logits",
    }
    dump = lambda value: json.dumps(value, indent=2) + "\n"  # noqa: E731
    files = {
        f"{TEMPLATE_DIR}/{TEMPLATE_NAME}.jinja": template,
        "modules.json": dump(modules),
        "sentence_bert_config.json": dump(transformer),
        "config_sentence_transformers.json": dump(model),
    }
    if task == CAUSAL:
        files[f"{SCORE_MODULE_DIR}/config.json"] = dump(score)
    return files, row_cap(encoder)


@dataclass(frozen=True)
class SentenceTransformersExport:
    """What the export did: the row cap sentence-transformers cuts at, or why nothing was written."""

    row_cap: int | None = None
    not_written: str | None = None


def write_sentence_transformers_files(
    folder: Path, spec: LLMSpec, task: str = CAUSAL
) -> SentenceTransformersExport:
    """Add the files to a full-weight LLM export, causal or converted to a classifier (``task``), or say why
    they cannot serve it."""
    if task == CAUSAL and spec.family_name != "llm":
        return SentenceTransformersExport(not_written=f"a {spec.family_name} model scores with its own heads: "
                                          "export it with --as-sequence-classification")  # fmt: skip
    if task == CAUSAL and spec.adapter:  # a classifier export has merged it
        return SentenceTransformersExport(
            not_written="the folder holds a LoRA adapter: export with --merge-lora"
        )
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:  # sentence-transformers pads batches; rerankforge pads with EOS
        set_pad_token(folder, tokenizer)
        tokenizer = AutoTokenizer.from_pretrained(folder)
    try:
        files, cap = sentence_transformers_files(spec, tokenizer, task)
    except (ValueError, TypeError) as error:  # TypeError: a tokenizer refusing the rendered text
        return SentenceTransformersExport(not_written=str(error))
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / name, text)
    return SentenceTransformersExport(row_cap=cap)


def set_pad_token(folder: Path, tokenizer: PreTrainedTokenizerBase) -> None:
    """Name EOS (else UNK) as the pad token in ``tokenizer_config.json``, as rerankforge does when it loads."""
    path = folder / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["pad_token"] = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token
    atomic_write_text(path, json.dumps(config, indent=2, ensure_ascii=False) + "\n")
