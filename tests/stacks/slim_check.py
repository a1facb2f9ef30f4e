"""The scoring-only install (setup.cfg's install_requires, no extra) in a fresh environment: `make test-slim`.

It checks that none of the extras' packages is there, then scores with every family on tiny random models built
here from configs (a BERT cross-encoder, a Llama for the LLM and layerwise families; their tokenizers trained
with `tokenizers`, so nothing is downloaded and nothing comes from another environment): `compute_score`,
`predict`, `rank`, a stored calibration and fusion applied, long passages in windows, the FlagEmbedding wrapper,
sharded scoring without a launch; and what needs an extra (an adapter folder, the ONNX backend) refused with
the extra's name. One line per check; the first that fails ends the run with exit status 1.

    .venv-slim/bin/python tests/stacks/slim_check.py
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import transformers
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForCausalLM,
    BertConfig,
    BertForSequenceClassification,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

import rerankforge.inference
from rerankforge.inference import FlagReranker, LayerwiseReranker, LLMReranker, Reranker, load_reranker
from rerankforge.inference.modeling.calibration import Calibration, ScoreMap
from rerankforge.inference.modeling.fusion import Fusion
from rerankforge.inference.modeling.layerwise import LayerwiseRerankerModel
from rerankforge.inference.modeling.lora import ADAPTER_CONFIG
from rerankforge.inference.modeling.spec import CrossEncoderSpec, LayerwiseSpec
from rerankforge.inference.sharded_scoring import compute_score_sharded

# packages of the extras (setup.cfg's [options.extras_require]) that a scoring-only install must not bring
ABSENT = ("bm25s", "Stemmer", "peft", "matplotlib", "pytrec_eval", "evaluate", "datasets", "sklearn",
          "sentence_transformers", "faiss", "onnxruntime", "openvino", "wandb", "tensorboard", "deepspeed")  # fmt: skip
TEXTS = [
    "what is a panda?",
    "The giant panda is a bear species endemic to China, known for its black and white coat.",
    "Paris is the capital and largest city of France.",
    "Bamboo makes up most of a giant panda's diet, though they sometimes eat other plants.",
    "Given a query A and a passage B, determine whether the passage contains an answer to the query by "
    "providing a prediction of either 'Yes' or 'No'.",
    "Yes",
    "No",
] * 20
QUERY = "what is a panda?"
PASSAGES = [TEXTS[1], TEXTS[2], TEXTS[3]]
PAIRS = [(QUERY, passage) for passage in PASSAGES]


def check(what: str, test: Callable[[], object]) -> None:
    """Runs ``test`` (it raises on a failure) and prints one line."""
    try:
        detail = test()
    except Exception as error:
        print(f"FAILED  {what}: {type(error).__name__}: {error}", flush=True)
        raise SystemExit(1) from error
    print(f"ok      {what}" + (f": {detail}" if detail else ""), flush=True)


def expect_error(call: Callable[[], object], error: type[Exception], *words: str) -> str:
    """The message of the ``error`` that ``call`` raises, which must contain every one of ``words``."""
    try:
        call()
    except error as raised:
        message = str(raised)
        missing = [word for word in words if word not in message]
        assert not missing, f"the message lacks {missing}: {message}"
        return message
    raise AssertionError(f"no {error.__name__} raised")


def close(a: list[float], b: list[float], tolerance: float = 1e-5) -> bool:
    return len(a) == len(b) and all(
        math.isclose(x, y, rel_tol=tolerance, abs_tol=tolerance) for x, y in zip(a, b, strict=True)
    )


def sigmoid(value: float) -> float:
    return 1.0 / (1.0 + math.exp(-value))


def wordpiece_tokenizer():
    """A BERT-style WordPiece tokenizer ([CLS] A [SEP] B [SEP], token types) trained on TEXTS."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    rust = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    rust.normalizer = normalizers.BertNormalizer(lowercase=True)
    rust.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    rust.train_from_iterator(
        TEXTS, trainers.WordPieceTrainer(vocab_size=300, special_tokens=specials, show_progress=False)
    )
    cls, sep = rust.token_to_id("[CLS]"), rust.token_to_id("[SEP]")
    rust.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    return PreTrainedTokenizerFast(tokenizer_object=rust, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")  # fmt: skip


def byte_level_tokenizer():
    """A byte-level BPE tokenizer (as Llama-3 and SmolLM2 use) with BOS, EOS and pad, trained on TEXTS."""
    rust = Tokenizer(models.BPE())
    rust.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    rust.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=500, special_tokens=["<s>", "</s>", "<pad>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    rust.train_from_iterator(TEXTS, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=rust, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


def cross_encoder_folder(root: Path) -> Path:
    """A 2-layer, hidden-32 BERT sequence classifier with random weights, drawn wide so its scores spread."""
    tokenizer = wordpiece_tokenizer()
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, num_labels=1,
                        initializer_range=0.2)  # fmt: skip
    folder = root / "cross-encoder"
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def llama_folder(root: Path):
    """A 2-layer, hidden-32 Llama causal LM with random weights and its tokenizer; returns (folder, tokenizer)."""
    tokenizer = byte_level_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         initializer_range=0.1)  # fmt: skip
    folder = root / "llama"
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder, tokenizer


def installed(where: Path) -> str:
    assert Path(sys.prefix).resolve() in where.resolve().parents, f"{where} is outside {sys.prefix}"
    return ""


def absent() -> str:
    present = [name for name in ABSENT if importlib.util.find_spec(name) is not None]
    assert not present, f"installed, though only extras bring them: {present}"
    return ", ".join(ABSENT)


def check_cross_encoder(work: Path) -> None:
    folder = cross_encoder_folder(work)
    reranker = Reranker.from_pretrained(str(folder))  # backend "auto": torch, the only one installed
    raw = reranker.compute_score(PAIRS)

    def scores() -> str:
        one = reranker.compute_score(PAIRS[0])
        assert isinstance(one, float) and math.isfinite(one) and math.isclose(one, raw[0], rel_tol=1e-5)
        assert len(raw) == len(PAIRS) and max(raw) - min(raw) > 1e-4, f"scores do not spread: {raw}"
        assert close(reranker.compute_score(PAIRS, normalize=True), [sigmoid(s) for s in raw])
        return ", ".join(f"{s:.4f}" for s in raw)

    def predict_and_rank() -> str:
        predicted = reranker.predict(PAIRS)
        assert isinstance(predicted, np.ndarray) and close(predicted.tolist(), [sigmoid(s) for s in raw])
        ranked = reranker.rank(QUERY, PASSAGES, return_documents=True)
        assert [r["corpus_id"] for r in ranked] == sorted(range(len(raw)), key=lambda i: -raw[i])
        assert ranked[0]["text"] == PASSAGES[ranked[0]["corpus_id"]]
        return f"best first: {[r['corpus_id'] for r in ranked]}"

    def calibration_and_fusion() -> str:
        spec = CrossEncoderSpec(query_max_len=16, passage_max_len=48, max_length=64, base_model="tiny")
        spec.calibration = Calibration(
            score=ScoreMap("platt", scale=2.0, bias=-1.0), fitted_on="made up",
            thresholds=[{"threshold": 0.5, "precision": 0.9, "recall": 0.4, "kept": 0.2}],
        ).to_dict()  # fmt: skip
        spec.fusion = Fusion("interpolation", 0.0, "made up").to_dict()  # the first stage alone
        spec.save(folder)
        saved = load_reranker(str(folder))
        own = saved.compute_score(PAIRS)
        assert close(saved.compute_score(PAIRS, normalize=True), [sigmoid(2.0 * s - 1.0) for s in own])
        assert close(saved.predict(PAIRS).tolist(), [sigmoid(2.0 * s - 1.0) for s in own])
        assert saved.threshold(precision=0.8) == 0.5
        first_stage = [1.0, 3.0, 2.0]
        ranked = saved.rank(QUERY, PASSAGES, first_stage_scores=first_stage)
        assert [r["corpus_id"] for r in ranked] == [1, 2, 0], ranked
        (folder / "rerankforge.json").unlink()
        return "Platt map, threshold table, fusion weight 0"

    def long_passages() -> str:
        passage = " ".join(TEXTS[1:5] * 4)
        scores, windows = reranker.compute_score([(QUERY, passage)], long_passages="maxp", window=24, stride=12,
                                                 return_windows=True)  # fmt: skip
        assert windows[0] > 1 and math.isfinite(scores[0]), (scores, windows)
        return f"maxp over {windows[0]} windows"

    def flag_and_sharded() -> str:
        flag = FlagReranker(str(folder))
        assert close(flag.compute_score([list(p) for p in PAIRS]), raw)
        assert close(compute_score_sharded(reranker, PAIRS, show_progress=False), raw)
        return "FlagReranker, compute_score_sharded (one process)"

    def onnx_refused() -> str:
        return expect_error(lambda: Reranker.from_pretrained(str(folder), backend="onnx"), ImportError,
                            "rerankforge[onnx]")  # fmt: skip

    check("cross-encoder: compute_score", scores)
    check("cross-encoder: predict, rank", predict_and_rank)
    check("cross-encoder: stored calibration and fusion applied", calibration_and_fusion)
    check("cross-encoder: long passages", long_passages)
    check("cross-encoder: FlagReranker, sharded scoring", flag_and_sharded)
    check("backend='onnx' without the [onnx] extra says what to install", onnx_refused)


def check_llm_families(work: Path) -> None:
    folder, tokenizer = llama_folder(work)

    def llm() -> str:
        # a plain causal LM, read as bge-reranker-v2-gemma's layout (prompt, "Yes" token)
        reranker = LLMReranker.from_pretrained(str(folder))
        scores = reranker.compute_score(PAIRS)
        assert len(scores) == len(PAIRS) and all(math.isfinite(s) for s in scores), scores
        ranked = reranker.rank(QUERY, PASSAGES)
        assert [r["corpus_id"] for r in ranked] == sorted(range(len(scores)), key=lambda i: -scores[i])
        return ", ".join(f"{s:.4f}" for s in scores)

    def layerwise() -> str:
        yes = tokenizer("Yes", add_special_tokens=False)["input_ids"][0]
        spec = LayerwiseSpec(query_max_len=16, passage_max_len=32, max_length=48, yes_token_id=yes, layers=[1, 2],
                             num_layers=2)  # fmt: skip
        torch.manual_seed(0)
        model = LayerwiseRerankerModel(AutoModelForCausalLM.from_pretrained(folder), spec)
        saved = work / "layerwise"
        model.save_pretrained(saved)
        tokenizer.save_pretrained(saved)
        by_layer = LayerwiseReranker.from_pretrained(str(saved)).compute_score(PAIRS, cutoff_layers=[1, 2])
        assert len(by_layer) == 2 and all(len(s) == len(PAIRS) for s in by_layer), by_layer
        return "layers 1, 2: " + "; ".join(", ".join(f"{s:.4f}" for s in scores) for scores in by_layer)

    def adapter_refused() -> str:
        adapter = work / "adapter"
        adapter.mkdir()
        (adapter / ADAPTER_CONFIG).write_text(
            json.dumps({"peft_type": "LORA", "base_model_name_or_path": str(folder)})
        )
        save_file({"placeholder": torch.zeros(1)}, adapter / "adapter_model.safetensors")  # never read
        return expect_error(lambda: LLMReranker.from_pretrained(str(adapter)), ImportError, "peft",
                            "rerankforge[train]")  # fmt: skip

    check("LLM reranker (plain Llama folder): compute_score, rank", llm)
    check("layerwise reranker (saved folder): compute_score per layer", layerwise)
    check("an adapter folder without the [train] extra says what to install", adapter_refused)


def main() -> int:
    where = Path(rerankforge.inference.__file__).parent
    print(f"python {sys.version.split()[0]}, torch {torch.__version__}; rerankforge.inference from {where}")
    check("rerankforge installed into this environment, not linked to a checkout", lambda: installed(where))
    check("the extras' packages are absent", absent)
    transformers.utils.logging.disable_progress_bar()  # one line per check, not a bar per save and load
    with tempfile.TemporaryDirectory(prefix="rerankforge-slim-") as scratch:
        work = Path(scratch)
        os.environ.setdefault("RERANKFORGE_CACHE", str(work / "cache"))
        check_cross_encoder(work)
        check_llm_families(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
