"""`rerankforge-export CHECKPOINT OUT [--merge-lora | --as-sequence-classification [--layer K]]
[--push-to-hub REPO_ID] [--private]`.

Writes a self-contained folder (safetensors, tokenizer, config, `rerankforge.json`, model card) that appears
complete or not at all, then optionally uploads it with `huggingface_hub`. A failed upload leaves the folder.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from huggingface_hub import HfApi

from rerankforge.inference.auto import load_reranker
from rerankforge.inference.modeling.files import atomic_folder, atomic_write_text
from rerankforge.inference.modeling.lora import is_adapter_folder
from rerankforge.inference.modeling.spec import LLMSpec, RerankerSpec
from rerankforge.trainer.calibrated_export import fold_calibration
from rerankforge.trainer.checkpoints import MARKER
from rerankforge.trainer.merge import write_merged
from rerankforge.trainer.model_card import calibration_section, model_card
from rerankforge.trainer.portable_files import make_config_portable, make_tokenizer_portable
from rerankforge.trainer.sequence_classification import write_sequence_classification
from rerankforge.trainer.serving_check import (
    ENGINES,
    TOLERANCE,
    check_pairs,
    recorded_data,
    run_check,
)
from rerankforge.trainer.serving_commands import llm_serving_sections, vllm_section
from rerankforge.trainer.serving_server import ServerError

EXIT_SERVED_DIFFERS = 6  # --verify: an engine's scores differ from rerankforge's (or it could not serve)
# what a model folder needs; optimizer, scheduler and RNG pickles of checkpoints never travel
# (*.py: the modelling code of trust_remote_code models)
KEEP_PATTERNS = ("*.safetensors", "*.json", "*.jinja", "*.txt", "*.model", "*.tiktoken", "*.py")
SKIP_NAMES = {
    "trainer_state.json",
    "all_results.json",
    "train_results.json",
    "eval_before_after.json",
    MARKER,
}


def copy_model_files(source: Path, target: Path) -> None:
    for pattern in KEEP_PATTERNS:
        for path in source.glob(pattern):
            if path.is_file() and path.name not in SKIP_NAMES:
                shutil.copy2(path, target / path.name)


def point_adapter_at_the_hub_base(folder: Path, spec: RerankerSpec) -> None:
    """peft records the base as the folder it was loaded from (a cache path for packaged models); an export
    names the base as the recipe did, so it loads elsewhere."""
    config_path = folder / "adapter_config.json"
    if config_path.is_file() and spec.base_model:
        config = json.loads(config_path.read_text(encoding="utf-8"))
        config["base_model_name_or_path"] = spec.base_model
        atomic_write_text(config_path, json.dumps(config, indent=2, sort_keys=True) + "\n")


def export(
    checkpoint: str | Path,
    out: str | Path,
    merge_lora: bool = False,
    repo_id: str | None = None,
    license_id: str = "apache-2.0",
    trust_remote_code: bool = False,
) -> Path:
    """The export folder at ``out``: model files, portable tokenizer config, `rerankforge.json`, README.md."""
    checkpoint, out = Path(checkpoint), Path(out)
    spec = RerankerSpec.load(checkpoint)
    if spec is None:
        raise ValueError(f"{checkpoint} has no rerankforge.json: not a checkpoint rerankforge wrote")
    adapter = is_adapter_folder(checkpoint)
    if merge_lora and not adapter:
        raise ValueError(f"--merge-lora: {checkpoint} holds a full model, not a LoRA adapter")
    with atomic_folder(out) as staging:
        if merge_lora:
            write_merged(checkpoint, staging, trust_remote_code=trust_remote_code)
            for name in ("training_args.json",):
                if (checkpoint / name).is_file():
                    shutil.copy2(checkpoint / name, staging / name)
        else:
            copy_model_files(checkpoint, staging)
            point_adapter_at_the_hub_base(staging, spec)
        make_tokenizer_portable(staging)
        make_config_portable(staging)
        calibration_note = fold_calibration(staging)
        diagram = checkpoint / "calibration" / "reliability.png"  # written where the calibration was fitted
        if calibration_note and diagram.is_file():
            shutil.copy2(diagram, staging / "reliability.png")
        if calibration_note and "is folded" in calibration_note:
            check_folded_calibration(checkpoint, staging)
        exported = RerankerSpec.load(staging)
        name = repo_id or out.name
        serving = serving_sections(staging, exported, name)
        if calibration_note:
            with_diagram = (staging / "reliability.png").is_file()
            serving = [*calibration_section(exported, calibration_note, with_diagram), "", *(serving or [])]
        card = model_card(exported, checkpoint, name, license_id, adapter=adapter and not merge_lora,
                          serving=serving)  # fmt: skip
        (staging / "README.md").write_text(card, encoding="utf-8")
    return out


FOLD_PAIRS = [
    ("what is the capital of france?", "Paris is the capital and largest city of France."),
    ("who wrote hamlet", "The tragedy Hamlet was written by William Shakespeare around 1600."),
    ("boiling point of water", "A short passage about something else entirely."),
]
FOLD_TOLERANCE = 1e-5


def check_folded_calibration(checkpoint: Path, folder: Path) -> None:
    """The folded export's sigmoid equals the checkpoint's calibrated probability (fp32), or nothing is written."""
    expected = load_reranker(str(checkpoint), backend="torch", device="cpu").compute_score(
        FOLD_PAIRS, normalize=True
    )
    served = load_reranker(str(folder), backend="torch", device="cpu").compute_score(
        FOLD_PAIRS, normalize=True
    )
    difference = max(abs(a - b) for a, b in zip(expected, served, strict=True))
    if difference > FOLD_TOLERANCE:
        raise ValueError(
            f"the calibration folded into the head gives probabilities {difference:.3g} away from the checkpoint's "
            f"(> {FOLD_TOLERANCE}); nothing was written"
        )


def serving_sections(folder: Path, spec: RerankerSpec, name: str) -> list[str] | None:
    """The card's sections on other engines: sentence-transformers 6 for the LLM families (after writing its
    files), and vLLM where it scores the folder as trained: a cross-encoder, or an llm export whose ``rerank``
    template was written (a layerwise or adapter folder would be served without its heads or weights)."""
    if not isinstance(spec, LLMSpec):
        return vllm_section(folder, name)
    return llm_serving_sections(folder, spec, name)


def push(folder: Path, repo_id: str, private: bool) -> str:
    """Upload ``folder`` to the Hub; returns the repository URL."""

    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True)
    api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message="Upload rerankforge reranker")
    return f"https://huggingface.co/{repo_id}"


def make_parser() -> argparse.ArgumentParser:
    # prog: as invoked (`rerankforge export` or the `rerankforge-export` alias; argparse takes sys.argv[0])
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("checkpoint", help="a folder rerankforge trained (final model or checkpoint-N)")
    parser.add_argument("out", help="the export folder (replaced whole if it exists)")
    parser.add_argument("--merge-lora", action="store_true", help="fold a LoRA adapter into its base model")
    parser.add_argument(
        "--as-sequence-classification",
        action="store_true",
        help="an llm or layerwise reranker as a one-logit *ForSequenceClassification model whose logit is its "
        "score (adapters merged; for sentence-transformers' CrossEncoder, vLLM's score API, TEI, infinity)",
    )
    parser.add_argument("--layer", type=int, help="layerwise: the head to export; the decoder stops there")
    parser.add_argument(
        "--drop-head-bias",
        action="store_true",
        help="layerwise: export a head whose bias is not zero without it",
    )
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="then upload to this Hub repository")
    parser.add_argument("--private", action="store_true", help="create the Hub repository as private")
    parser.add_argument("--license", default="apache-2.0", help="license id for the card (the base model's)")
    parser.add_argument("--trust-remote-code", action="store_true", help="for bases that ship modelling code")
    add_verify_arguments(parser)
    return parser


def add_verify_arguments(parser: argparse.ArgumentParser) -> None:
    verify = parser.add_argument_group(
        "served equals trained (the engine scores the export through its own API; the result goes into the card)"
    )
    verify.add_argument("--verify", action="append", choices=ENGINES, metavar="ENGINE",
                        help=f"then serve the export with this engine and compare scores ({', '.join(ENGINES)}; "
                             "repeatable)")  # fmt: skip
    verify.add_argument("--engine-python", action="append", default=[], metavar="ENGINE=PYTHON",
                        help="the Python of an engine's environment, e.g. vllm=.venv-vllm/bin/python (default: this "
                             "one; repeatable)")  # fmt: skip
    verify.add_argument(
        "--verify-data", help="training JSONL to take pairs from (default: the run's own data)"
    )
    verify.add_argument("--verify-pairs", type=int, default=32, help="pairs scored by both")
    verify.add_argument("--verify-tolerance", type=float, default=TOLERANCE, help="on sigmoid scores, fp32")
    verify.add_argument(
        "--verify-timeout", type=float, default=600, help="seconds the server may take to start"
    )


def engine_pythons(values: Sequence[str]) -> dict[str, str]:
    """``ENGINE=PYTHON`` pairs as a mapping; an engine not named runs in this Python."""
    pythons = {}
    for value in values:
        engine, separator, python = value.partition("=")
        if not separator or engine not in ENGINES or not python:
            raise ValueError(
                f"--engine-python {value!r}: expected ENGINE=PYTHON with ENGINE one of {', '.join(ENGINES)}"
            )
        pythons[engine] = python
    return pythons


def verify(args: argparse.Namespace, folder: Path) -> bool:
    """Each asked engine against the checkpoint; prints and records each result; True when all pass."""
    data = args.verify_data or recorded_data(Path(args.checkpoint))
    if data is None:
        raise ValueError(
            f"--verify: {args.checkpoint} records no training data that exists here; give --verify-data"
        )
    pairs = check_pairs(data, args.verify_pairs)
    pythons = engine_pythons(args.engine_python)
    passed = True
    for engine in args.verify:
        check = run_check(engine, folder, Path(args.checkpoint), pairs, pythons.get(engine), args.verify_tolerance,
                          args.verify_timeout)  # fmt: skip
        print(" ".join(check.card_lines()[2:]).replace("**", ""))
        passed &= check.passed
    return passed


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    if args.as_sequence_classification and args.merge_lora:
        parser.error("--as-sequence-classification merges adapters itself: leave out --merge-lora")
    if (args.layer is not None or args.drop_head_bias) and not args.as_sequence_classification:
        parser.error("--layer and --drop-head-bias go with --as-sequence-classification")
    try:
        if args.as_sequence_classification:
            folder = write_sequence_classification(args.checkpoint, args.out, args.layer, args.trust_remote_code,
                                                   args.drop_head_bias)  # fmt: skip
        else:
            folder = export(args.checkpoint, args.out, args.merge_lora, args.push_to_hub, args.license,
                            args.trust_remote_code)  # fmt: skip
        print(f"exported to {folder}")
        if args.verify and not verify(args, Path(folder)):
            return EXIT_SERVED_DIFFERS
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except ServerError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_SERVED_DIFFERS
    if args.push_to_hub:
        try:
            print(f"uploaded: {push(folder, args.push_to_hub, args.private)}")
        except Exception as error:  # offline, no token, no permission: the folder is complete either way
            print(
                f"error: the upload to {args.push_to_hub} failed ({type(error).__name__}: {error}); the export "
                f"in {folder} is complete: upload it later with `huggingface-cli upload {args.push_to_hub} "
                f"{folder}`",
                file=sys.stderr,
            )
            return 1
    return 0


def run() -> None:
    sys.exit(main())
