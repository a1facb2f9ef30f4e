"""A training run's output folder carries the model card `rerankforge export` writes (family, training settings,
evaluation table, calibration), written before the folder is uploaded with ``push_to_hub``."""

from __future__ import annotations

import json
from pathlib import Path

import transformers.trainer
from huggingface_hub import HfApi, RepoUrl
from test_evaluation import beir_slice, eval_config  # noqa: F401  (beir_slice: the fixture)

from rerankforge.trainer.export import main as export_main
from rerankforge.trainer.training_run import train

REPO_ID = "someone/tiny-reranker"


def sections(card: str) -> dict[str, str]:
    """The card's ``## `` sections by title; "" holds what comes between the Hub metadata and the first."""
    parts = ("\n" + card.split("\n---\n", 1)[1]).split("\n## ")
    found = {"": parts[0]}
    for part in parts[1:]:
        title, _, body = part.partition("\n")
        found[title] = body.strip()
    return found


def bullets(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("- ")]


def rows(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("|")]


def test_a_run_leaves_the_exports_card_in_its_folder_before_pushing_it(
    tmp_path,
    tiny_bert_dir,
    beir_slice,  # noqa: F811
    monkeypatch,
):
    uploads = []

    def create_repo(
        self, repo_id, **kwargs
    ):  # the Hub is not reachable here: what the Trainer would get back
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, *, repo_id, folder_path, **kwargs):  # what would be uploaded, read at upload time
        folder = Path(folder_path)
        files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
        uploads.append((repo_id, files, kwargs))

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    # older transformers (the floors' 5.9) call huggingface_hub's module-level create_repo, bound at import
    monkeypatch.setattr(transformers.trainer, "create_repo", lambda repo_id, **kw: create_repo(None, repo_id),
                        raising=False)  # fmt: skip
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    config = eval_config(tmp_path, tiny_bert_dir, beir_slice, max_steps=2, eval_strategy="no",
                         evaluate_before_training=False, push_to_hub=True, hub_model_id=REPO_ID)  # fmt: skip
    out = train(config)

    card = (out / "README.md").read_text(encoding="utf-8")
    found = sections(card)
    assert "- family: `cross_encoder`" in found[""] and f"# {REPO_ID.split('/')[1]}" in found[""]
    assert "| learning_rate | 0.001 |" in found["Training hyper-parameters"]
    assert (out / "eval_table.md").read_text(encoding="utf-8").strip() in found["Evaluation"]
    assert "| reranker after training |" in found["Evaluation"]
    calibration = found["Calibrated scores"]
    assert "held-out queries" in calibration and "](calibration/reliability.png)" in calibration
    assert (out / "calibration" / "reliability.png").is_file()

    # the sections the export writes from the same run are the same text
    exported = tmp_path / "export"
    assert export_main([str(out), str(exported)]) == 0
    export = sections((exported / "README.md").read_text(encoding="utf-8"))
    assert bullets(found[""]) == bullets(export[""])  # family, base model, data, loss, budgets
    for title in ("Training hyper-parameters", "Evaluation"):
        assert found[title] == export[title], title
    # the calibration's measurement and thresholds; where it lives differs (the export folds it into the head)
    first_paragraph = calibration.split("\n\n")[0]
    assert "pairs of held-out queries: expected calibration error" in first_paragraph
    assert first_paragraph == export["Calibrated scores"].split("\n\n")[0]
    assert rows(calibration) == rows(
        export["Calibrated scores"]
    )  # the thresholds, where precision is reached

    # one upload, of the finished folder: the card, the evaluation and the calibration were already in it
    [(repo_id, files, options)] = uploads
    assert repo_id == REPO_ID and options["commit_message"] == "End of training"
    assert files["README.md"].decode() == card
    assert {"eval_table.md", "eval_results.json", "calibration/reliability.png", "model.safetensors"} <= set(
        files
    )
    assert json.loads(files["rerankforge.json"])["calibration"]["score"]["method"] == "platt"
    assert not [name for name in files if name.startswith(("checkpoint-", ".final-model-partial"))]
