"""`rerankforge-export`: self-contained folders that other stacks load without rerankforge (or peft)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import yaml
from conftest import write_jsonl
from score_checks import assert_same_scores
from test_cross_encoder_training import make_config as cross_encoder_config
from test_cross_encoder_training import toy_records
from test_evaluation import beir_slice  # noqa: F401  (the fixture)

from rerankforge.inference import LLMReranker, Reranker
from rerankforge.inference.modeling.calibration import Calibration
from rerankforge.inference.modeling.spec import RerankerSpec
from rerankforge.trainer.export import main as export_main
from rerankforge.trainer.training_run import train

PAIRS = [
    ["where is the apple", "the apple is here, apple indeed"],
    ["where is the apple", "the stone is there"],
]


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def run_isolated(script: str) -> list[float]:
    """Run ``script`` in a fresh interpreter where importing rerankforge and peft fails."""
    guard = "import sys\nsys.modules['rerankforge'] = None\nsys.modules['peft'] = None\n"
    result = subprocess.run([sys.executable, "-c", guard + script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def trained_cross_encoder(tmp_path_factory, tiny_bert_dir, beir_slice):  # noqa: F811
    tmp_path = tmp_path_factory.mktemp("export-ce")
    data = write_jsonl(tmp_path / "train.jsonl", toy_records(8))
    config = cross_encoder_config(tmp_path, tiny_bert_dir, data, eval_data=str(beir_slice), eval_top_k=10,
                                  per_device_eval_batch_size=16)  # fmt: skip
    return train(config)


def test_an_exported_cross_encoder_loads_in_sentence_transformers_and_transformers_alone(
    tmp_path, trained_cross_encoder
):
    out = tmp_path / "export"
    assert export_main([str(trained_cross_encoder), str(out)]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "rerankforge.json", "README.md"} <= names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl"))]
    raw = Reranker.from_pretrained(str(trained_cross_encoder), device="cpu").compute_score(PAIRS)
    # the run had evaluation data, so a calibration; the export folds it into the head: its logit is calibrated
    platt = Calibration.from_dict(RerankerSpec.load(trained_cross_encoder).calibration).score
    assert platt is not None and platt.method == "platt"
    expected = [platt.scale * s + platt.bias for s in raw]
    script = f"""
import json, torch
from sentence_transformers import CrossEncoder
from transformers import AutoModelForSequenceClassification, AutoTokenizer
pairs = {PAIRS!r}
st = CrossEncoder({str(out)!r}, device="cpu", activation_fn=torch.nn.Identity()).predict(pairs).tolist()
tok = AutoTokenizer.from_pretrained({str(out)!r})
model = AutoModelForSequenceClassification.from_pretrained({str(out)!r}).eval()
with torch.no_grad():
    hf = model(**tok([q for q, _ in pairs], [p for _, p in pairs], padding=True, return_tensors="pt")).logits.view(-1).tolist()
print(json.dumps(st + hf))
"""
    scores = run_isolated(script)
    assert_same_scores(scores[:2], expected)  # sentence-transformers' CrossEncoder
    assert_same_scores(scores[2:], expected)  # plain transformers


def test_the_cards_metrics_are_the_ones_the_run_logged(tmp_path, trained_cross_encoder):
    out = tmp_path / "export"
    assert export_main([str(trained_cross_encoder), str(out), "--license", "mit"]) == 0
    card = (out / "README.md").read_text()
    meta = front_matter(card)
    assert meta["pipeline_tag"] == "text-ranking" and meta["license"] == "mit"
    assert meta["library_name"] == "transformers" and "rerankforge" in meta["tags"]
    assert "base_model" not in meta and "cross-encoder" in meta["tags"]  # a local path is no Hub id
    assert str(json.loads((trained_cross_encoder / "rerankforge.json").read_text())["base_model"]) in card
    logged = json.loads((trained_cross_encoder / "eval_results.json").read_text())
    metrics = {m["type"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert metrics == {"ndcg_at_10": logged["eval_ndcg@10"], "mrr_at_10": logged["eval_mrr@10"]}
    for text in ("grouped softmax cross-entropy", "from sentence_transformers import CrossEncoder",
                 "from FlagEmbedding import FlagReranker", "| learning_rate |"):  # fmt: skip
        assert text in card


def test_an_exported_merged_llm_reranker_loads_without_peft_and_a_failed_upload_keeps_the_folder(
    tmp_path, tiny_llm_dirs, capsys
):
    from test_llm_training import build as build_llm
    from test_llm_training import make_config as llm_config

    data = write_jsonl(tmp_path / "train.jsonl", toy_records(4))
    config = llm_config(tmp_path, tiny_llm_dirs("llama"), data)
    trainer = build_llm(config)
    trainer.train()
    trainer.save_model(config.training.output_dir)
    expected = LLMReranker.from_pretrained(config.training.output_dir, device="cpu").compute_score(PAIRS)

    out = tmp_path / "export"
    code = export_main(
        [config.training.output_dir, str(out), "--merge-lora", "--push-to-hub", "someone/tiny-reranker"]
    )
    assert code == 1  # offline here: the upload fails ...
    assert "the upload to someone/tiny-reranker failed" in capsys.readouterr().err
    assert (out / "model.safetensors").is_file() and (out / "README.md").is_file()  # ... the folder is whole
    assert not (out / "adapter_config.json").exists()
    tokenizer_config = json.loads((out / "tokenizer_config.json").read_text())
    assert tokenizer_config["tokenizer_class"] in ("PreTrainedTokenizerFast", "LlamaTokenizerFast")
    assert front_matter((out / "README.md").read_text())["library_name"] == "transformers"
    model_config = json.loads((out / "config.json").read_text())  # transformers 4.x reads these spellings
    assert model_config["rope_theta"] == model_config["rope_parameters"]["rope_theta"]
    assert model_config["torch_dtype"] == model_config["dtype"]

    script = f"""
import json, sys
del sys.modules['rerankforge']
from rerankforge.inference import LLMReranker
print(json.dumps(LLMReranker.from_pretrained({str(out)!r}, device="cpu").compute_score({PAIRS!r})))
"""
    assert run_isolated(script) == pytest.approx(expected, abs=1e-4)


def test_export_refuses_folders_rerankforge_did_not_write(tmp_path, tiny_bert_dir, capsys):
    assert export_main([str(tiny_bert_dir), str(tmp_path / "out")]) == 2
    assert "not a checkpoint rerankforge wrote" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_merge_lora_on_a_full_model_is_an_error(tmp_path, trained_cross_encoder, capsys):
    assert export_main([str(trained_cross_encoder), str(tmp_path / "out"), "--merge-lora"]) == 2
    assert "holds a full model, not a LoRA adapter" in capsys.readouterr().err
    assert torch.__version__  # the process is still usable


def test_hub_metadata_carries_hub_ids_never_local_paths(tmp_path):
    from rerankforge.trainer.model_card import hub_id

    assert hub_id("sentence-transformers/all-MiniLM-L6-v2") == "sentence-transformers/all-MiniLM-L6-v2"
    assert hub_id(str(tmp_path)) is None and hub_id("../shared/data/squad-v1.1/dev-v1.1.json") is None


def test_the_card_gives_the_losses_own_description_as_the_spec_records_it(tmp_path):
    from rerankforge.inference.modeling.spec import LayerwiseSpec
    from rerankforge.trainer.model_card import model_card

    objective = {
        "per_layer": {
            "loss": {"name": "lambda_loss", "weighting": "lambdarank", "k": 10, "sigma": 1.0, "mu": 10.0,
                     "graded": False},
            "distill_loss": {"name": "kl", "temperature": 2.0},
            "distill_weight": 0.5,
        },
        "self_distill_weight": 0.25,
    }  # fmt: skip
    spec = LayerwiseSpec(query_max_len=8, passage_max_len=16, max_length=24, yes_token_id=5, layers=[6, 7, 8],
                         num_layers=8, loss=objective)  # fmt: skip
    (tmp_path / "training_args.json").write_text(json.dumps({"train_group_size": 4}))
    card = model_card(spec, tmp_path, "org/model")
    assert (
        "- loss: LambdaLoss: pairwise logistic loss weighted by each pair's effect on NDCG (weighting="
        in card
    )
    assert "k=10" in card and "plus 0.5 x KL divergence" in card and "(temperature=2.0)" in card
    assert "self-distillation towards the last layer (weight 0.25)" in card
    assert "score heads on layers 6-8 of 8" in card and "cutoff_layers=[8]" in card
    assert "1 positive and 3 negatives" in card
