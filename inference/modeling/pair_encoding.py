"""Cross-encoder input: one definition of how a (query, passage) pair becomes token ids.

Training (the collator) and inference (`Reranker.compute_score`) both call `encode_pairs`, so the two cannot
drift. The rule is FlagEmbedding's: the query is cut to ``query_max_len`` tokens, the passage to
``passage_max_len``, then the pair (with special tokens) to ``max_length`` by cutting the passage first.
``max_length`` never exceeds what the model's position embeddings allow.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tokenizers import Encoding
from tokenizers import Tokenizer as RustTokenizer
from transformers import PretrainedConfig, PreTrainedTokenizerBase

# Models whose position ids start after the padding index (positions 0..pad_token_id are never used).
_PADDING_OFFSET_MODEL_TYPES = {
    "camembert",
    "data2vec-text",
    "ibert",
    "mpnet",
    "roberta",
    "roberta-prelayernorm",
    "xlm-roberta",
    "xlm-roberta-xl",
    "xmod",
}
_UNSET_MODEL_MAX_LENGTH = 10**9


def model_position_limit(
    config: PretrainedConfig, tokenizer: PreTrainedTokenizerBase | None = None
) -> int | None:
    """The longest input the model can embed, or None when it has no learned position limit."""
    limits = []
    positions = getattr(config, "max_position_embeddings", None)
    if positions:
        if getattr(config, "model_type", None) in _PADDING_OFFSET_MODEL_TYPES:
            positions -= (config.pad_token_id or 0) + 1
        limits.append(int(positions))
    if tokenizer is not None and 0 < tokenizer.model_max_length < _UNSET_MODEL_MAX_LENGTH:
        limits.append(int(tokenizer.model_max_length))
    return min(limits) if limits else None


@dataclass(frozen=True)
class PairLengths:
    """Token budgets for one pair; ``max_length`` is the whole pair including special tokens."""

    query_max_len: int
    passage_max_len: int
    max_length: int

    @classmethod
    def for_model(
        cls,
        query_max_len: int,
        passage_max_len: int,
        config: PretrainedConfig,
        tokenizer: PreTrainedTokenizerBase | None = None,
        max_length: int | None = None,
    ) -> PairLengths:
        """Budgets clipped to the model's positions (a 512 + 512 request on XLM-R becomes 512 in all)."""
        total = max_length if max_length is not None else query_max_len + passage_max_len
        limit = model_position_limit(config, tokenizer)
        if limit is not None:
            total = min(total, limit)
        return cls(query_max_len, passage_max_len, total)


class PairEncoder:
    """Encodes pairs with the tokenizer's Rust backend: truncation per side, then its own pair template."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, lengths: PairLengths):
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise TypeError(
                f"{type(tokenizer).__name__} has no `tokenizers` backend; cross-encoders need a fast tokenizer"
            )
        # a private copy, so our truncation settings never leak into the user's tokenizer
        self._rust: RustTokenizer = RustTokenizer.from_str(backend.to_str())
        self._rust.no_truncation()
        self._rust.no_padding()
        self.tokenizer = tokenizer
        self.lengths = lengths
        self.pair_special_tokens = self._rust.num_special_tokens_to_add(True)
        if lengths.max_length <= self.pair_special_tokens + 1:
            raise ValueError(f"max_length={lengths.max_length} leaves no room for text in a pair")
        self.with_token_type_ids = "token_type_ids" in tokenizer.model_input_names

    def _encode_side(self, texts: Sequence[str], limit: int) -> list[Encoding]:
        """One encoding per text, cut to ``limit``; a text that repeats (a query over its candidates, a passage
        over several queries) is tokenized once and shares its encoding."""
        unique = list(dict.fromkeys(texts))
        encode = getattr(self._rust, "encode_batch_fast", self._rust.encode_batch)  # no offsets: we need none
        encodings = encode(unique, add_special_tokens=False)
        for encoding in encodings:
            if len(encoding) > limit:
                encoding.truncate(limit)
        if len(unique) == len(texts):
            return encodings
        by_text = dict(zip(unique, encodings, strict=True))
        return [by_text[text] for text in texts]

    def passage_room(self, query: str) -> int:
        """Passage tokens this encoder keeps beside ``query`` (at least 1): a long passage's window size."""
        query_tokens = min(
            len(self._encode_side([query], self.lengths.query_max_len)[0]), self.lengths.query_max_len
        )
        budget = self.lengths.max_length - self.pair_special_tokens
        return max(1, min(self.lengths.passage_max_len, budget - query_tokens))

    def encode_encodings(self, queries: Sequence[str], passages: Sequence[str]) -> list[Encoding]:
        """The pairs as `tokenizers` encodings (ids, type ids), unpadded: the form inference pads straight into
        arrays, without a Python dict per pair."""
        if len(queries) != len(passages):
            raise ValueError(f"{len(queries)} queries but {len(passages)} passages")
        query_encodings = self._encode_side(queries, self.lengths.query_max_len)
        passage_encodings = self._encode_side(passages, self.lengths.passage_max_len)
        budget = self.lengths.max_length - self.pair_special_tokens
        pairs = []
        for query, passage in zip(query_encodings, passage_encodings, strict=True):
            if (
                len(query) + len(passage) > budget
            ):  # cut copies: a shared encoding serves other pairs as it is
                if len(query) >= budget:  # only when the query alone fills the pair
                    query = Encoding.merge([query], growing_offsets=False)
                    query.truncate(budget - 1)
                passage = Encoding.merge([passage], growing_offsets=False)
                passage.truncate(budget - len(query))
            pairs.append(self._rust.post_process(query, passage, add_special_tokens=True))
        return pairs

    def encode(self, queries: Sequence[str], passages: Sequence[str]) -> list[dict[str, list[int]]]:
        """Token ids (and token types where the model uses them) for each pair, unpadded."""
        features = []
        for pair in self.encode_encodings(queries, passages):
            feature = {"input_ids": pair.ids, "attention_mask": pair.attention_mask}
            if self.with_token_type_ids:
                feature["token_type_ids"] = pair.type_ids
            features.append(feature)
        return features


def encode_pairs(
    tokenizer: PreTrainedTokenizerBase, queries: Sequence[str], passages: Sequence[str], lengths: PairLengths
) -> list[dict[str, list[int]]]:
    """One-shot form of `PairEncoder.encode` for callers that do not keep an encoder."""
    return PairEncoder(tokenizer, lengths).encode(queries, passages)
