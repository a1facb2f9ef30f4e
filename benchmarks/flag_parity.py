"""Same weights, same pairs: rerankforge's scores against FlagEmbedding's (and sentence-transformers') own code,
run in their separate environment (transformers 4.57) on folders written by `rerankforge-export`.

    python benchmarks/flag_parity.py --flag-python /path/to/flag-venv/bin/python \\
        --cross-encoder outputs/minilm-squad --llm outputs/smollm2-llm-squad

Loading there also checks that exported folders load in transformers 4.x (the tokenizer class).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from layerwise_cutoff import squad_pairs  # noqa: E402
from machine import append_results  # noqa: E402

from rerankforge.inference import FlagLLMReranker, FlagReranker  # noqa: E402
from rerankforge.trainer.export import export  # noqa: E402


def flag_side(python: str, kind: str, model: Path, pairs_file: Path, out: Path) -> dict:
    command = [python, str(REPO / "benchmarks" / "flag_side.py"), "--kind", kind, "--model", str(model),
               "--pairs", str(pairs_file), "--out", str(out)]  # fmt: skip
    subprocess.run(command, check=True)
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--flag-python", required=True, help="python of the FlagEmbedding environment")
    parser.add_argument("--cross-encoder", help="a cross-encoder checkpoint rerankforge trained")
    parser.add_argument("--llm", help="an LLM reranker checkpoint (adapter folder: merged on export)")
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--llm-pairs", type=int, default=40)
    parser.add_argument("--results", default=str(REPO / "benchmarks" / "RESULTS.md"))
    args = parser.parse_args()
    rows = ["| model | other stack | pairs | max abs score difference |", "|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        if args.cross_encoder:
            pairs = squad_pairs(args.pairs)
            (tmp_path / "pairs.json").write_text(json.dumps(pairs))
            folder = export(args.cross_encoder, tmp_path / "ce-export")
            ours = FlagReranker(str(folder), devices="cpu", backend="torch").compute_score(
                pairs, batch_size=32, max_length=512
            )
            theirs = flag_side(
                args.flag_python, "cross_encoder", folder, tmp_path / "pairs.json", tmp_path / "ce.json"
            )
            for name in ("flagembedding", "sentence_transformers"):
                diff = max(abs(a - b) for a, b in zip(ours, theirs[name], strict=True))
                label = {"flagembedding": "FlagEmbedding 1.4.2 FlagReranker",
                         "sentence_transformers": "sentence-transformers CrossEncoder"}[name]  # fmt: skip
                rows.append(f"| cross-encoder `{args.cross_encoder}` | {label} | {len(pairs)} | {diff:.2e} |")
        if args.llm:
            pairs = squad_pairs(args.llm_pairs)
            (tmp_path / "llm-pairs.json").write_text(json.dumps(pairs))
            folder = export(
                args.llm,
                tmp_path / "llm-export",
                merge_lora=(Path(args.llm) / "adapter_config.json").is_file(),
            )
            ours = FlagLLMReranker(str(folder), devices="cpu").compute_score(
                pairs, batch_size=8, max_length=512
            )
            theirs = flag_side(
                args.flag_python, "llm", folder, tmp_path / "llm-pairs.json", tmp_path / "llm.json"
            )
            diff = max(abs(a - b) for a, b in zip(ours, theirs["flagembedding"], strict=True))
            rows.append(
                f"| LLM `{args.llm}` (merged export) | FlagEmbedding 1.4.2 FlagLLMReranker | {len(pairs)} | {diff:.2e} |"
            )
    table = "\n".join(rows)
    print(table)
    versions = theirs.get("versions", {})
    notes = (f"fp32 on CPU; the other side ran transformers {versions.get('transformers')} in its own environment "
             "and loaded the folders `rerankforge-export` wrote.")  # fmt: skip
    append_results(Path(args.results), "Score parity with FlagEmbedding and sentence-transformers",
                   "python benchmarks/flag_parity.py " + " ".join(sys.argv[1:]), table, notes)  # fmt: skip


if __name__ == "__main__":
    main()
