"""The training output folder as others receive it: its model card (README.md), then, with ``push_to_hub``, its
upload. The card is the one `rerankforge export` writes (family, training settings, evaluation table, calibration),
so a folder pushed straight from a recipe is never a model without one."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import HfApi
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from rerankforge.inference.modeling.calibration import Calibration
from rerankforge.inference.modeling.files import atomic_write_text
from rerankforge.inference.modeling.lora import is_adapter_folder
from rerankforge.inference.modeling.spec import RerankerSpec
from rerankforge.trainer.model_card import calibration_section, model_card

CARD = "README.md"
DIAGRAM = "calibration/reliability.png"  # where training_run.calibrate_final_model writes it
CALIBRATION_NOTE = (
    "The calibration is stored in `rerankforge.json`: rerankforge applies it (`normalize=True`); other engines' "
    "sigmoid is the uncalibrated one until `rerankforge export` folds a Platt calibration into a cross-encoder's "
    "head."
)


def write_output_card(output_dir: str | Path, name: str | None = None) -> Path | None:
    """README.md in a finished run's folder, written atomically (a reader or an upload never sees half a card);
    ``name``: the Hub repository the card names (default: the folder's name). None: no final model there."""
    output_dir = Path(output_dir)
    spec = RerankerSpec.load(output_dir)
    if spec is None:
        return None
    calibration = None
    if Calibration.from_dict(spec.calibration) is not None:
        with_diagram = (output_dir / DIAGRAM).is_file()
        calibration = calibration_section(spec, CALIBRATION_NOTE, with_diagram, DIAGRAM)
    card = model_card(spec, output_dir, name or output_dir.name, adapter=is_adapter_folder(output_dir),
                      serving=calibration)  # fmt: skip
    return atomic_write_text(output_dir / CARD, card)


def push_output(trainer, output_dir: str | Path) -> None:
    """Upload the finished folder (model, card, evaluation, calibration) where the Trainer's ``push_to_hub`` would:
    the same repository, revision, token and skipped files. Not the Trainer's own push: it saves the model again,
    whose `rerankforge.json` lacks the calibration fitted since, and replaces README.md with a generic card."""
    if not trainer.is_world_process_zero():
        return
    if trainer.hub_model_id is None:
        trainer.init_hf_repo()
    # a checkpoint's upload (hub_strategy every_save or checkpoint) may still be going
    in_progress = getattr(trainer, "push_in_progress", None)
    if in_progress is not None:
        in_progress.wait_until_done()
    HfApi(token=trainer.args.hub_token).upload_folder(
        repo_id=trainer.hub_model_id,
        folder_path=str(output_dir),
        commit_message="End of training",
        revision=trainer.args.hub_revision,
        ignore_patterns=["_*", f"{PREFIX_CHECKPOINT_DIR}-*"],
    )
