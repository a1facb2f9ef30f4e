"""Served equals trained: an engine scores an export through its own API, in its own environment, and its
scores are compared with rerankforge's on the same real pairs; the result goes into the export's model card.

Engines: ``vllm`` (its OpenAI-compatible server, `/rerank`: a one-logit sequence classifier as it is; a causal
LLM export with the ``hf_overrides`` that turn its answer tokens into a score head, and the export's ``rerank``
chat template) and ``sentence-transformers`` (`CrossEncoder(folder).predict`, sentence-transformers 6 for LLM
exports). Both give the sigmoid of the score, compared with ``compute_score(pairs, normalize=True)`` of the
reference (the trained checkpoint), in fp32.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from rerankforge.data_tools.schema import iter_lines
from rerankforge.data_tools.sources import resolve_data_files
from rerankforge.inference.auto import load_reranker
from rerankforge.inference.modeling.files import atomic_write_text
from rerankforge.trainer.sequence_classification import uncut_encoder
from rerankforge.trainer.serving_commands import vllm_arguments
from rerankforge.trainer.serving_server import RerankServer, ServerError
from rerankforge.trainer.training_run import MINED_TRAIN_FILE

ENGINES = ("vllm", "sentence-transformers")
RESULT_FILE = "serving_check.json"
CARD_TITLE = "## Served-equals-trained check"
TOLERANCE = 1e-3  # on sigmoid scores, fp32
VLLM_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"}  # 1 GiB of KV cache on a CPU is plenty here
SENTENCE_TRANSFORMERS_SCRIPT = """
import json, sys
import sentence_transformers, torch
from sentence_transformers import CrossEncoder
folder, pairs = sys.argv[1], json.load(open(sys.argv[2]))
model = CrossEncoder(folder, device="cpu", model_kwargs={"dtype": torch.float32})
print(json.dumps({"version": sentence_transformers.__version__, "scores": model.predict(pairs).tolist()}))
"""


@dataclass(frozen=True)
class ServingCheck:
    engine: str
    version: str
    pairs: int
    max_difference: float
    tolerance: float
    over_budget: int = 0  # candidate pairs left out: rerankforge would cut them (see within_budgets)

    @property
    def passed(self) -> bool:
        return self.max_difference <= self.tolerance

    def card_lines(self) -> list[str]:
        verdict = "pass" if self.passed else "FAIL"
        return [
            CARD_TITLE,
            "",
            f"{self.engine} {self.version} served this folder; on {self.pairs} real (query, passage) pairs its "
            f"scores (sigmoid) differ from rerankforge's by at most {self.max_difference:.2g} "
            f"(tolerance {self.tolerance:g}, fp32): **{verdict}** (`rerankforge-export --verify {self.engine}`"
            + (f"; {self.over_budget} longer pairs left out" if self.over_budget else "")
            + ").",
        ]


def check_pairs(data: str | Path, count: int) -> list[tuple[str, str]]:
    """Up to ``count`` pairs from training JSONL (files or folders): each query with its first positive, then
    its negatives."""
    pairs: list[tuple[str, str]] = []
    for path in resolve_data_files(data):
        for _, line in iter_lines(path):
            record = json.loads(line)
            pairs += [(record["query"], passage) for passage in [*record["pos"][:1], *record["neg"]]]
            if len(pairs) >= count:
                return pairs[:count]
    if not pairs:
        raise ValueError(f"{data}: no (query, passage) pairs to check with")
    return pairs


def recorded_data(folder: Path) -> str | None:
    """The training data a run recorded beside its weights (the mined file, or the first train_data path; a
    relative mined path is also looked for beside the checkpoint, where mining wrote it)."""
    record_path = folder / "training_args.json"
    if not record_path.is_file():
        return None
    record = json.loads(record_path.read_text(encoding="utf-8"))
    candidates = [*(record.get("mined_train_data") or []), *(record.get("train_data") or [])]
    candidates += [
        folder / MINED_TRAIN_FILE,
        folder.parent / MINED_TRAIN_FILE,
    ]  # a checkpoint-N folder's run folder
    return next((str(path) for path in candidates if Path(path).exists()), None)


def exported_layer(folder: Path) -> int | None:
    """The layer a layerwise `--as-sequence-classification` export scores with (its text_format.json)."""
    path = folder / "text_format.json"
    return json.loads(path.read_text(encoding="utf-8")).get("layer") if path.is_file() else None


def within_budgets(reranker: Any, pairs: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """The pairs rerankforge scores uncut. Engines cut a long row as a whole where rerankforge cuts the query
    and the passage to their own budgets (and vLLM refuses a row over its length), so only these compare."""
    if hasattr(reranker, "encoder"):  # the LLM families: the budgets' ids equal the uncut ones
        cut = reranker.encoder(reranker.lengths)
        uncut = uncut_encoder(reranker)
        queries, passages = [q for q, _ in pairs], [p for _, p in pairs]
        same = [
            a == b
            for a, b in zip(cut.encode(queries, passages), uncut.encode(queries, passages), strict=True)
        ]
        return [pair for pair, fits in zip(pairs, same, strict=True) if fits]
    tokenizer, lengths = reranker.tokenizer, reranker.lengths
    special = tokenizer.num_special_tokens_to_add(pair=True)
    kept = []
    for query, passage in pairs:
        q = len(tokenizer(query, add_special_tokens=False)["input_ids"])
        p = len(tokenizer(passage, add_special_tokens=False)["input_ids"])
        if (
            q <= lengths.query_max_len
            and p <= lengths.passage_max_len
            and q + p + special <= lengths.max_length
        ):
            kept.append((query, passage))
    return kept


def max_model_len(folder: Path) -> int:
    """The longest row the export is given: sentence-transformers' row cap, else the model's positions (<= 4096)."""
    st_config = folder / "sentence_bert_config.json"
    if st_config.is_file():
        cap = json.loads(st_config.read_text())["processing_kwargs"]["text"]["max_length"]
        return int(cap)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    return min(int(config.get("max_position_embeddings", 512)), 4096)


def vllm_command(python: str, folder: Path) -> Callable[[int], list[str]]:
    def command(port: int) -> list[str]:
        return [python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder), "--host", "127.0.0.1",
                "--port", str(port), "--dtype", "float32", "--max-model-len", str(max_model_len(folder)),
                *vllm_arguments(folder)]  # fmt: skip

    return command


def engine_version(python: str, module: str) -> str:
    code = f"import {module}; print({module}.__version__)"
    return subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def vllm_scores(python: str, folder: Path, pairs: Sequence[tuple[str, str]], timeout_s: float) -> list[float]:
    """One /rerank request per query (its passages in input order), on a server started for it."""
    by_query: dict[str, list[int]] = {}
    for index, (query, _) in enumerate(pairs):
        by_query.setdefault(query, []).append(index)
    scores = [float("nan")] * len(pairs)
    with RerankServer("vllm", vllm_command(python, folder), timeout_s, VLLM_ENV) as server:
        for query, indices in by_query.items():
            served = server.rerank(query, [pairs[i][1] for i in indices], model=str(folder))
            for index, score in zip(indices, served, strict=True):
                scores[index] = score
    return scores


def sentence_transformers_scores(
    python: str, folder: Path, pairs: Sequence[tuple[str, str]], timeout_s: float
) -> tuple[list[float], str]:
    """`CrossEncoder(folder).predict(pairs)` run by the engine's Python, and its version."""
    with tempfile.TemporaryDirectory(prefix="serving-check-") as scratch:
        pairs_file = Path(scratch) / "pairs.json"
        pairs_file.write_text(json.dumps([list(p) for p in pairs]), encoding="utf-8")
        try:
            result = subprocess.run([python, "-c", SENTENCE_TRANSFORMERS_SCRIPT, str(folder), str(pairs_file)],
                                    capture_output=True, text=True, timeout=timeout_s)  # fmt: skip
        except (OSError, subprocess.TimeoutExpired) as error:
            raise ServerError(f"sentence-transformers could not score {folder}: {error}") from error
    if result.returncode != 0:
        raise ServerError(f"sentence-transformers could not score {folder}:\n{result.stderr[-4000:]}")
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    return answer["scores"], answer["version"]


def run_check(
    engine: str,
    folder: Path,
    reference: Path,
    candidates: Sequence[tuple[str, str]],
    python: str | None = None,
    tolerance: float = TOLERANCE,
    timeout_s: float = 600,
) -> ServingCheck:
    """Serve ``folder`` with ``engine`` (run by ``python``, the engine's environment) and compare its scores
    with the reference's on the ``candidates`` within the reference's budgets; the result is written into the
    folder and its model card."""
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; known: {', '.join(ENGINES)}")
    python = python or sys.executable
    reranker = load_reranker(str(reference), device="cpu", dtype=torch.float32)
    pairs = within_budgets(reranker, candidates)
    if not pairs:
        raise ValueError(
            f"none of the {len(candidates)} pairs fits {reference}'s budgets uncut: give shorter ones"
        )
    if engine == "vllm":
        served, version = vllm_scores(python, folder, pairs, timeout_s), engine_version(python, "vllm")
    else:
        served, version = sentence_transformers_scores(python, folder, pairs, timeout_s)
    layer = exported_layer(folder)
    expected = reranker.compute_score(
        list(pairs), normalize=True, **({"cutoff_layers": layer} if layer else {})
    )
    differences = [abs(a - b) for a, b in zip(served, expected, strict=True)]
    difference = math.inf if any(math.isnan(d) for d in differences) else max(differences)
    check = ServingCheck(engine, version, len(pairs), difference, tolerance, len(candidates) - len(pairs))
    record_check(folder, check)
    return check


def record_check(folder: Path, check: ServingCheck) -> None:
    """``serving_check.json`` (one entry per engine) and the card's section, replaced when checked again."""
    path = folder / RESULT_FILE
    results = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    results[check.engine] = {**asdict(check), "passed": check.passed}
    atomic_write_text(path, json.dumps(results, indent=2) + "\n")
    card_path = folder / "README.md"
    card = card_path.read_text(encoding="utf-8") if card_path.is_file() else ""
    head, _, _ = card.partition(CARD_TITLE)
    sections = [
        ServingCheck(**{k: v for k, v in entry.items() if k != "passed"}).card_lines()[2]
        for entry in results.values()
    ]
    atomic_write_text(card_path, head.rstrip("\n") + "\n\n" + "\n\n".join([CARD_TITLE, *sections]) + "\n")
