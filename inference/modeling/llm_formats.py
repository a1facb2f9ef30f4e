"""The LLM input formats by name, one definition each, shared by training, inference and export.

- ``bge``: BGE's ``A: {query}\\nB: {passage}\\n{prompt}`` with the "Yes" logit (`LLMPromptEncoder`).
- ``qwen3``: Qwen3-Reranker's chat layout: a fixed system message, the user turn
  ``<Instruct>: {instruction}\\n<Query>: {query}\\n<Document>: {document}``, the assistant prefix with an empty
  think block; the score is the log-odds of "yes" against "no" at the last position.
- ``chat``: any instruct model's own chat template around a user message made of the instruction, the query and
  the passage, with configurable answer words.

The two chat layouts are a fixed prefix, a body and a fixed suffix. As in Qwen3-Reranker's model card the body is
tokenized as one text and cut from its end to fit ``max_length`` with the prefix and suffix, which are never cut:
the document goes first, then the query. Rows are padded on the left, as in the BGE layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedTokenizerBase

from rerankforge.inference.modeling.llm_inputs import (
    DEFAULT_PROMPT,
    LLMPromptEncoder,
    pad_left,
    pad_token_id,
    pair_prompts,
)

BGE, QWEN3, CHAT = "bge", "qwen3", "chat"
INPUT_FORMATS = (BGE, QWEN3, CHAT)

QWEN3_SYSTEM = (
    "Judge whether the Document meets the requirements based on the Query and the Instruct provided. "
    'Note that the answer can only be "yes" or "no".'
)
QWEN3_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
QWEN3_PREFIX = f"<|im_start|>system\n{QWEN3_SYSTEM}<|im_end|>\n<|im_start|>user\n"
QWEN3_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
QWEN3_BODY = "<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {passage}"
QWEN3_SPECIAL_TOKENS = ("<|im_start|>", "<|im_end|>", "<think>", "</think>")
QWEN3_MAX_LENGTH = 8192  # the model card's max_length, for folders that rerankforge did not write

CHAT_INSTRUCTION = "Judge whether the passage answers the query."
CHAT_BODY = '{instruction} Answer only "{yes}" or "{no}".\n\nQuery: {query}\n\nPassage: {passage}'
_SLOT = "\x00rerankforge-body\x00"  # marks where the user message goes in a rendered chat template


@dataclass(frozen=True)
class FormatDefaults:
    """What a format scores with unless the config says otherwise."""

    prompt: str
    yes_token: str
    no_token: str
    score: str


DEFAULTS = {
    BGE: FormatDefaults(DEFAULT_PROMPT, "Yes", "No", "yes"),
    QWEN3: FormatDefaults(QWEN3_INSTRUCTION, "yes", "no", "yes_minus_no"),
    CHAT: FormatDefaults(CHAT_INSTRUCTION, "yes", "no", "yes_minus_no"),
}


def check_format(name: str) -> str:
    if name not in INPUT_FORMATS:
        raise ValueError(f"unknown input_format {name!r}; known: {', '.join(INPUT_FORMATS)}")
    return name


def chat_frame(tokenizer: PreTrainedTokenizerBase) -> tuple[str, str]:
    """The text before and after the user message in the tokenizer's own chat template (generation prompt on)."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            "input_format chat needs a tokenizer with a chat template (tokenizer_config.json or "
            "chat_template.jinja); this one has none: use input_format bge"
        )
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": _SLOT}], add_generation_prompt=True, tokenize=False
    )
    if rendered.count(_SLOT) != 1:
        raise ValueError("the chat template does not place the user message once: use input_format bge")
    before, after = rendered.split(_SLOT)
    return before, after


@dataclass
class TemplateEncoder:
    """Token ids for a fixed prefix, a body made from (instruction, query, passage), and a fixed suffix.

    ``max_length`` caps the whole row; only the body is cut, from its end.
    """

    tokenizer: PreTrainedTokenizerBase
    prefix: str
    body: str
    suffix: str
    max_length: int
    default_prompt: str
    answer_words: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.prefix_ids = self._ids(self.prefix)
        self.suffix_ids = self._ids(self.suffix)
        self.body_budget = self.max_length - len(self.prefix_ids) - len(self.suffix_ids)
        if self.body_budget < 1:
            raise ValueError(
                f"max_length {self.max_length} leaves no room for the query and passage: the format's fixed "
                f"prefix and suffix take {len(self.prefix_ids) + len(self.suffix_ids)} tokens"
            )

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    @property
    def frame_length(self) -> int:
        """Tokens of the prefix and suffix (never cut)."""
        return len(self.prefix_ids) + len(self.suffix_ids)

    def body_text(self, query: str, passage: str, prompt: str | None = None) -> str:
        return self.body.format(
            instruction=prompt or self.default_prompt, query=query, passage=passage, **self.answer_words
        )

    def text(self, query: str, passage: str, prompt: str | None = None) -> str:
        """The whole row as text (uncut): what a serving engine is given for this pair."""
        return self.prefix + self.body_text(query, passage, prompt) + self.suffix

    def passage_room(self, query: str, prompt: str | None = None) -> int:
        """Passage tokens kept beside ``query`` in a row of ``max_length`` (at least 1): a long passage's window
        size. The body is cut from its end, so the passage gets what the instruction and query leave."""
        return max(1, self.body_budget - len(self._ids(self.body_text(query, "", prompt))))

    def encode(
        self, queries: Sequence[str], passages: Sequence[str], prompts: Sequence[str | None] | None = None
    ) -> list[list[int]]:
        """Unpadded input ids, one list per pair."""
        prompts = pair_prompts(queries, passages, prompts)
        bodies = [
            self.body_text(q, p, prompt) for q, p, prompt in zip(queries, passages, prompts, strict=True)
        ]
        body_ids = self.tokenizer(bodies, add_special_tokens=False)["input_ids"]
        return [self.prefix_ids + ids[: self.body_budget] + self.suffix_ids for ids in body_ids]

    def pad_left(
        self, sequences: Sequence[list[int]], pad_to_multiple_of: int | None = 8
    ) -> dict[str, torch.Tensor]:
        return pad_left(sequences, pad_token_id(self.tokenizer), pad_to_multiple_of)


def prompt_encoder(
    tokenizer: PreTrainedTokenizerBase,
    input_format: str,
    prompt: str | None,
    query_max_len: int,
    passage_max_len: int,
    max_length: int,
    pair_max_len: int | None = None,
    yes_token: str = "yes",
    no_token: str = "no",
) -> LLMPromptEncoder | TemplateEncoder:
    """The encoder of a named format. ``bge`` cuts query and passage to their budgets (``pair_max_len`` caps
    BOS + query + passage); the chat layouts cap the whole row at ``pair_max_len`` or ``max_length``."""
    check_format(input_format)
    prompt = prompt or DEFAULTS[input_format].prompt
    if input_format == BGE:
        return LLMPromptEncoder(tokenizer, query_max_len, passage_max_len, prompt, pair_max_len=pair_max_len)
    row_cap = pair_max_len or max_length
    if input_format == QWEN3:
        return TemplateEncoder(tokenizer, QWEN3_PREFIX, QWEN3_BODY, QWEN3_SUFFIX, row_cap, prompt)
    before, after = chat_frame(tokenizer)
    return TemplateEncoder(
        tokenizer, before, CHAT_BODY, after, row_cap, prompt, {"yes": yes_token, "no": no_token}
    )


def fixed_length(
    tokenizer: PreTrainedTokenizerBase, input_format: str, prompt: str | None, yes_token: str, no_token: str
) -> int:
    """Tokens a chat layout adds to the query and passage: prefix, suffix, instruction and fixed words (0 for
    ``bge``, whose prompt and separators come on top of the budgets, as FlagEmbedding counts them)."""
    if input_format == BGE:
        return 0
    encoder = prompt_encoder(
        tokenizer, input_format, prompt, 1, 1, 10**9, yes_token=yes_token, no_token=no_token
    )
    return encoder.frame_length + len(encoder._ids(encoder.body_text("", "", prompt)))


def looks_like_qwen3_reranker(config: dict, tokenizer: PreTrainedTokenizerBase) -> bool:
    """A plain folder laid out as Qwen/Qwen3-Reranker-*: a Qwen3 causal LM whose tokenizer has the chat and
    think tokens and single-token "yes" and "no"."""
    if "Qwen3ForCausalLM" not in (config.get("architectures") or []):
        return False
    vocab = tokenizer.get_vocab()
    if not all(token in vocab for token in QWEN3_SPECIAL_TOKENS):
        return False
    return all(len(tokenizer(word, add_special_tokens=False)["input_ids"]) == 1 for word in ("yes", "no"))
