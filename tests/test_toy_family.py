"""Adding a family is a spec, a model, a config and a registry entry (tests/toy_family.py): with no other change,
it trains through `train()`, saves, loads with `load_reranker`, and scores as its trainer did."""

from __future__ import annotations

import json

import pytest
import toy_family
from conftest import REPO
from score_checks import assert_same_scores
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from rerankforge.inference import Reranker
from rerankforge.inference.auto import load_reranker
from rerankforge.inference.modeling.families import FAMILIES, register_family
from rerankforge.inference.modeling.file_checks import ModelFilesError
from rerankforge.trainer import train
from rerankforge.trainer.export import main as export_main

TOY_DATA = REPO.parent / "shared" / "data" / "fe-toy" / "example_data" / "normal" / "examples.jsonl"
PAIRS = [
    ("what is a panda?", "The giant panda is a bear species endemic to China."),
    ("what is a panda?", "Paris is the capital of France."),
    ("how do plants make food?", "Photosynthesis turns light, water and carbon dioxide into sugar."),
    ("how do plants make food?", "The stock market fell on Monday."),
]


@pytest.fixture
def registered():
    register_family(toy_family.FAMILY)
    yield toy_family.FAMILY
    FAMILIES.pop(toy_family.NAME)


def test_a_fourth_family_from_its_pieces_alone_trains_saves_loads_and_scores(
    tmp_path, tiny_bert_dir, registered
):
    out = tmp_path / "out"
    result = train(family=toy_family.NAME, model_name_or_path=str(tiny_bert_dir), train_data=[str(TOY_DATA)],
                   output_dir=str(out), score_scale=3.0, max_steps=2, train_group_size=4, query_max_len=16,
                   passage_max_len=32, per_device_train_batch_size=2, report_to="none", save_strategy="no",
                   disable_tqdm=True)  # fmt: skip
    spec = json.loads((result.output_dir / "rerankforge.json").read_text())
    assert spec["family"] == toy_family.NAME and spec["scale"] == 3.0
    assert spec["loss"]["loss"]["name"] == "grouped_cross_entropy"

    reranker = load_reranker(str(out), device="cpu")
    assert type(reranker) is Reranker and type(reranker.model) is toy_family.ScaledCrossEncoderModel
    assert reranker.backend == "torch"  # the graph backends export the plain classifier, not this forward
    scores = reranker.compute_score(PAIRS)
    # the same weights read as a plain classifier: the family's forward is the logit times its saved scale
    plain = AutoModelForSequenceClassification.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    batch = tokenizer([q for q, _ in PAIRS], [p for _, p in PAIRS], padding=True, return_tensors="pt")
    logits = plain(**batch).logits.view(-1).tolist()
    assert_same_scores(scores, [3.0 * x for x in logits])
    assert (
        Reranker.from_pretrained(str(out), device="cpu").compute_score(PAIRS) == scores
    )  # the class, directly
    assert export_main([str(out), str(tmp_path / "export")]) == 0  # the model card reads the registry entry
    assert (
        "A scaled cross-encoder reranker fine-tuned with [rerankforge]"
        in (tmp_path / "export" / "README.md").read_text()
    )


def test_an_unregistered_family_in_a_folder_is_named_in_the_error(tmp_path, tiny_bert_dir, registered):
    out = tmp_path / "out"
    train(family=toy_family.NAME, model_name_or_path=str(tiny_bert_dir), train_data=[str(TOY_DATA)],
          output_dir=str(out), max_steps=1, train_group_size=2, query_max_len=8, passage_max_len=16,
          report_to="none", save_strategy="no", disable_tqdm=True)  # fmt: skip
    FAMILIES.pop(toy_family.NAME)
    try:
        with pytest.raises((ModelFilesError, ValueError), match=toy_family.NAME):
            load_reranker(str(out), device="cpu")
    finally:
        register_family(toy_family.FAMILY)
