"""Served equals trained: an engine scores an export through its own API, in its own environment, and its
scores are compared with rerankforge's on the same real pairs; the result goes into the export's model card.

Engines: ``vllm`` (its OpenAI-compatible server, `/rerank`: a one-logit sequence classifier as it is; a causal
LLM export with the ``hf_overrides`` that turn its answer tokens into a score head; the export's ``rerank`` chat
template where it has one), ``sentence-transformers`` (`CrossEncoder(folder).predict`, sentence-transformers 6
for LLM exports) and ``infinity`` (infinity-emb's `/rerank`, torch engine: a cross-encoder as it is; an
``--as-sequence-classification`` export gets each pair written into its ``text_format.json`` template by this
client, sent as the document of an empty query, since infinity has no chat templates). All give the sigmoid of
the score, compared with ``compute_score(pairs, normalize=True)`` of the reference (the trained checkpoint), in
fp32. Each side's scoring time (the server's start and model load left out) is recorded as pairs/s: one
request per query for the servers, one ``predict`` / ``compute_score`` call for the libraries.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from rerankforge.data_tools.schema import iter_lines
from rerankforge.data_tools.sources import resolve_data_files
from rerankforge.inference.auto import load_reranker
from rerankforge.inference.modeling.files import atomic_write_text
from rerankforge.trainer.sequence_classification import TEXT_FORMAT_FILE, uncut_encoder
from rerankforge.trainer.serving_commands import vllm_arguments
from rerankforge.trainer.serving_server import RerankServer, ServerError
from rerankforge.trainer.training_run import MINED_TRAIN_FILE

ENGINES = ("vllm", "sentence-transformers", "infinity")
RESULT_FILE = "serving_check.json"
CARD_TITLE = "## Served-equals-trained check"
TOLERANCE = 1e-3  # on sigmoid scores, fp32
VLLM_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"}  # 1 GiB of KV cache on a CPU is plenty here
INFINITY_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "DO_NOT_TRACK": "1",  # infinity's telemetry (posthog) off
    "INFINITY_ANONYMOUS_USAGE_STATS": "0",
    "PYTHONUNBUFFERED": "1",  # the log tail of a server that fails is current
}
SENTENCE_TRANSFORMERS_SCRIPT = """
import json, sys, time
import sentence_transformers, torch
from sentence_transformers import CrossEncoder
folder, pairs = sys.argv[1], json.load(open(sys.argv[2]))
model = CrossEncoder(folder, device="cpu", model_kwargs={"dtype": torch.float32})
started = time.perf_counter()
scores = model.predict(pairs).tolist()
print(json.dumps({"version": sentence_transformers.__version__, "scores": scores,
                  "seconds": time.perf_counter() - started}))
"""


@dataclass(frozen=True)
class Served:
    """An engine's sigmoid scores for the pairs, its version, and the seconds its scoring took."""

    scores: list[float]
    version: str
    seconds: float


@dataclass(frozen=True)
class ServingCheck:
    engine: str
    version: str
    pairs: int
    max_difference: float
    tolerance: float
    over_budget: int = 0  # candidate pairs left out: rerankforge would cut them (see within_budgets)
    served_pairs_per_s: float = math.nan  # the engine's scoring, its start left out
    rerankforge_pairs_per_s: float = math.nan  # compute_score on the same pairs, same machine
    sent_as: str = "pairs"  # or "formatted text" (infinity on a sequence-classification export)

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
            + ("; each pair sent written into text_format.json's template" if self.sent_as != "pairs" else "")
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
    path = folder / TEXT_FORMAT_FILE
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


def rerank_by_query(
    server: RerankServer, requests: Sequence[tuple[str, str]], **options: object
) -> tuple[list[float], float]:
    """One /rerank request per query (its documents in input order); the scores and the seconds they took."""
    by_query: dict[str, list[int]] = {}
    for index, (query, _) in enumerate(requests):
        by_query.setdefault(query, []).append(index)
    scores = [math.nan] * len(requests)
    started = time.perf_counter()
    for query, indices in by_query.items():
        served = server.rerank(query, [requests[i][1] for i in indices], **options)
        for index, score in zip(indices, served, strict=True):
            scores[index] = score
    return scores, time.perf_counter() - started


def vllm_scores(python: str, folder: Path, pairs: Sequence[tuple[str, str]], timeout_s: float) -> Served:
    """The pairs through vLLM's /rerank, on a server started for them."""
    with RerankServer("vllm", vllm_command(python, folder), timeout_s, VLLM_ENV) as server:
        scores, seconds = rerank_by_query(server, pairs, model=str(folder))
    return Served(scores, engine_version(python, "vllm"), seconds)


def infinity_command(python: str, folder: Path, batch_size: int = 32) -> Callable[[int], list[str]]:
    """``infinity_emb v2`` on ``folder`` (torch engine, CPU, fp32, no compile or warm-up)."""

    def command(port: int) -> list[str]:
        return [
            python, "-c", "from infinity_emb.cli import cli; cli()", "v2", "--model-id", str(folder),
            "--engine", "torch", "--device", "cpu", "--dtype", "float32", "--batch-size", str(batch_size),
            "--no-compile", "--no-bettertransformer", "--no-model-warmup",
            "--host", "127.0.0.1", "--port", str(port), "--log-level", "info",
        ]  # fmt: skip

    return command


def formatted_requests(folder: Path, pairs: Sequence[tuple[str, str]]) -> list[tuple[str, str]] | None:
    """For a sequence-classification export: each pair written into its template, as the document of an empty
    query (the pair ("", text) tokenizes to the text's ids when the tokenizer adds nothing around pairs).
    None for a folder without ``text_format.json`` (a cross-encoder: pairs go as they are)."""
    path = folder / TEXT_FORMAT_FILE
    if not path.is_file():
        return None
    template = json.loads(path.read_text(encoding="utf-8"))["template"]
    return [
        ("", template.replace("{query}", query).replace("{passage}", passage)) for query, passage in pairs
    ]


def infinity_scores(python: str, folder: Path, pairs: Sequence[tuple[str, str]], timeout_s: float) -> Served:
    """The pairs (or their formatted texts) through infinity's /rerank, on a server started for them."""
    requests = formatted_requests(folder, pairs) or list(pairs)
    with RerankServer("infinity", infinity_command(python, folder), timeout_s, INFINITY_ENV) as server:
        scores, seconds = rerank_by_query(server, requests)
    return Served(scores, engine_version(python, "infinity_emb"), seconds)


def sentence_transformers_scores(
    python: str, folder: Path, pairs: Sequence[tuple[str, str]], timeout_s: float
) -> Served:
    """`CrossEncoder(folder).predict(pairs)` run by the engine's Python."""
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
    return Served(answer["scores"], answer["version"], answer["seconds"])


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
    scorer = {"vllm": vllm_scores, "infinity": infinity_scores}.get(engine, sentence_transformers_scores)
    served = scorer(python, folder, pairs, timeout_s)
    layer = exported_layer(folder)
    started = time.perf_counter()
    expected = reranker.compute_score(
        list(pairs), normalize=True, **({"cutoff_layers": layer} if layer else {})
    )
    own_seconds = time.perf_counter() - started
    differences = [abs(a - b) for a, b in zip(served.scores, expected, strict=True)]
    difference = math.inf if any(math.isnan(d) for d in differences) else max(differences)
    sent_as = "formatted text" if engine == "infinity" and formatted_requests(folder, pairs) else "pairs"
    check = ServingCheck(engine, served.version, len(pairs), difference, tolerance, len(candidates) - len(pairs),
                         len(pairs) / served.seconds, len(pairs) / own_seconds, sent_as)  # fmt: skip
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
