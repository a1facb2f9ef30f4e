"""A real serving engine on a rerankforge folder: infinity (infinity-emb 0.0.78, torch engine, CPU) serves it, and
its `/rerank` scores must equal rerankforge's own to 1e-4 on SQuAD pairs.

    .venv/bin/python benchmarks/infinity_serving.py --served outputs/infinity-ce-export \\
        --reference outputs/infinity-ce-export [--pairs 50] [--infinity-python .venv-infinity/bin/python] \\
        [--results benchmarks/RESULTS.md]

infinity lives in its own environment (`make .venv-infinity/.installed`, benchmarks/requirements-infinity.txt:
sentence-transformers 3, transformers 4.57, numpy 1); this process (rerankforge's .venv) computes the reference
and talks HTTP to the server, which runs as a subprocess on a free localhost port and is always stopped.

Pairs: SQuAD v1.1 dev, one question per article (paragraph ``i % n`` of article ``i``), each with its own
paragraph and with the article's next paragraph, so every query has two documents (for a cross-encoder, one
/rerank request per query).

Reference: a folder with rerankforge.json loads with its family's class (`load_reranker`), scored with
``compute_score(pairs, normalize=True)``; a plain sequence-classification folder with text_format.json
(below) is scored with transformers' AutoModelForSequenceClassification on the formatted texts, sigmoid of the
logit. Like is compared with like:

- infinity applies a sigmoid to the logit unless the request says ``raw_scores``; rerankforge's
  ``normalize=True`` is that sigmoid. The raw logits are compared too (a saturated sigmoid hides differences).
- infinity tokenizes ``(query, document)`` with the tokenizer's pair template, ``truncation="longest_first"`` at
  the tokenizer's model_max_length, and ignores rerankforge.json's budgets (the toy recipe's 32 / 96 / 128);
  the reference is scored with that same budget (query, passage and pair all cut at model_max_length), and the
  difference under the saved budgets is printed for information.
- the response is sorted by score; each result's ``index`` maps it back to its document.
- every input string is stripped of surrounding whitespace twice (pydantic ``strip_whitespace`` on the request,
  ``.strip()`` in `CrossEncoderPatched.encode_pre`).

Sequence-classification mode (a folder from ``rerankforge-export --as-sequence-classification``: an LLM or
layerwise reranker as a one-logit ``*ForSequenceClassification``): the model must read the ids of one formatted
text, but infinity always sends a text pair through the tokenizer. The folder's ``text_format.json`` says how
to build the text; this script reads these keys (others are ignored):

    {"template": "<|im_start|>A: {query}\\nB: {passage}\\n<prompt>",  # exactly one {query}, then one {passage}
     "add_special_tokens": false,        # how the whole text is tokenized (default false)
     "text_pair_split": null,            # optional, see below
     "layer": null}                      # a layerwise reranker's layer, for a rerankforge reference

The text is the template with ``{query}`` and ``{passage}`` replaced (literally, not ``str.format``: the
prompt may hold braces). It is sent to infinity as:

- ``text_pair_split`` absent, null or "": query ``""`` and document = the whole text; all documents go in one
  request (the shared empty query), which also exercises infinity's padded batches. The pair ("", text)
  tokenizes to the ids of the text whenever the tokenizer's pair template adds no tokens (byte-level BPE
  tokenizers of SmolLM2, Qwen, ...; a template adding BOS/EOS would add them around the empty query too).
- ``text_pair_split`` a string: the text is cut right after the first occurrence of that string in the template
  between ``{query}`` and ``{passage}``; query = the part before the cut (one request per query), document = the
  rest. The cut must lie where the tokenizer splits anyway and touch no whitespace (stripped), e.g. "\\nB" in
  the BGE layout ("...{query}\\nB" + ": {passage}...").

Either way the text must not begin or end with whitespace (the Qwen3 layout ends with "\\n\\n": one token short).
Before the server starts, every pair is checked in infinity's environment: the ids infinity's own tokenizer call
gives for the (query, document) request equal the reference tokenizer's ids of the whole text (exit 2 if not).
`--build-tiny-seqcls FOLDER` writes a random 2-layer LlamaForSequenceClassification with SmolLM2's tokenizer and
the BGE layout's text_format.json, to try this mode without an exporter.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from machine import append_results, cpu_model  # noqa: E402

from rerankforge.trainer.serving_check import INFINITY_ENV, infinity_command  # noqa: E402
from rerankforge.trainer.serving_server import RerankServer  # noqa: E402

SQUAD = REPO.parent / "shared" / "data" / "squad-v1.1" / "dev-v1.1.json"
TEXT_FORMAT_FILE = "text_format.json"
DEFAULT_INFINITY_PYTHON = REPO / ".venv-infinity" / "bin" / "python"

# Run in infinity's environment: its versions, its tokenizer's model_max_length, and for each request the ids
# infinity's torch cross-encoder feeds the model (`CrossEncoderPatched.encode_pre`, after the request's strip).
INFINITY_SIDE = r"""
import json, sys
from importlib.metadata import version
job = json.load(open(sys.argv[1]))
out = {"versions": {name: version(name) for name in
                    ("infinity-emb", "sentence-transformers", "transformers", "tokenizers", "torch", "numpy")}}
if job.get("folder"):
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(job["folder"])
    out["model_max_length"] = int(min(tokenizer.model_max_length, 10**9))
    mismatches = []
    for i, (query, document, expected) in enumerate(job.get("requests", [])):
        ids = tokenizer([[query.strip(), document.strip()]], padding=True, truncation="longest_first")
        ids = ids["input_ids"][0]
        if ids != expected:
            first = next((j for j, (a, b) in enumerate(zip(ids, expected)) if a != b), min(len(ids), len(expected)))
            mismatches.append({"pair": i, "first_difference": first, "served": ids[max(0, first - 3):first + 3],
                               "expected": expected[max(0, first - 3):first + 3],
                               "lengths": [len(ids), len(expected)]})
    out["mismatches"] = mismatches
print(json.dumps(out))
"""


def squad_pairs(count: int) -> list[tuple[str, list[str]]]:
    """``count // 2`` questions (one per article), each with its own paragraph and the article's next one."""
    groups = []
    for index, article in enumerate(json.loads(SQUAD.read_text(encoding="utf-8"))["data"]):
        paragraphs = article["paragraphs"]
        if len(paragraphs) < 2:
            continue
        own = index % len(paragraphs)
        question = paragraphs[own]["qas"][0]["question"]
        groups.append(
            (question, [paragraphs[own]["context"], paragraphs[(own + 1) % len(paragraphs)]["context"]])
        )
        if 2 * len(groups) >= count:
            break
    if 2 * len(groups) < count:
        raise SystemExit(f"SQuAD dev gives only {2 * len(groups)} pairs this way, {count} asked")
    return groups


def flat_pairs(groups: list[tuple[str, list[str]]]) -> list[tuple[str, str]]:
    return [(query, passage) for query, passages in groups for passage in passages]


def load_text_format(folder: Path) -> dict | None:
    path = folder / TEXT_FORMAT_FILE
    if not path.is_file():
        return None
    fmt = json.loads(path.read_text(encoding="utf-8"))
    template = fmt.get("template")
    if not isinstance(template, str) or template.count("{query}") != 1 or template.count("{passage}") != 1:
        raise SystemExit(f"{path}: 'template' must hold '{{query}}' once and '{{passage}}' once")
    if template.index("{query}") > template.index("{passage}"):
        raise SystemExit(f"{path}: '{{query}}' must come before '{{passage}}' in the template")
    return fmt


def template_parts(fmt: dict) -> tuple[str, str, str]:
    head, rest = fmt["template"].split("{query}", 1)
    middle, tail = rest.split("{passage}", 1)
    return head, middle, tail


def format_text(fmt: dict, query: str, passage: str) -> str:
    head, middle, tail = template_parts(fmt)
    return f"{head}{query}{middle}{passage}{tail}"


def infinity_request(fmt: dict, query: str, passage: str) -> tuple[str, str]:
    """The (query, document) infinity is sent for one pair of a sequence-classification folder."""
    split = fmt.get("text_pair_split")
    head, middle, tail = template_parts(fmt)
    if not split:
        return "", f"{head}{query}{middle}{passage}{tail}"
    if split not in middle:
        raise SystemExit(
            f"text_pair_split {split!r} is not in the template between {{query}} and {{passage}}"
        )
    cut = middle.index(split) + len(split)
    return f"{head}{query}{middle[:cut]}", f"{middle[cut:]}{passage}{tail}"


def sigmoid(value: float) -> float:
    return 1.0 / (1.0 + math.exp(-value))


def infinity_side(python: str, job: dict) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(job, handle)
    try:
        done = subprocess.run([python, "-c", INFINITY_SIDE, handle.name], capture_output=True, text=True,
                              env={**os.environ, **INFINITY_ENV})  # fmt: skip
    finally:
        os.unlink(handle.name)
    if done.returncode != 0:
        raise SystemExit(f"the check in infinity's environment failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------- reference side


def reference_scores(reference: Path, pairs: list[tuple[str, str]], fmt: dict | None, limit: int) -> dict:
    """Sigmoid scores and logits of rerankforge (or transformers, for a plain seq-cls folder) on ``pairs``."""
    import torch

    if (reference / "rerankforge.json").is_file():
        from rerankforge.inference.auto import load_reranker
        from rerankforge.inference.modeling.folder_checks import folder_family

        family = folder_family(reference)
        reranker = load_reranker(str(reference), backend="torch", device="cpu")
        kwargs: dict = {}
        if family == "cross_encoder":
            from rerankforge.inference.modeling.pair_encoding import PairLengths

            saved = reranker.lengths
            saved_scores = reranker.compute_score(pairs, normalize=True)
            # infinity's budget: the tokenizer's model_max_length for the whole pair, nothing per side
            reranker.lengths = PairLengths.for_model(
                limit, limit, reranker.model.config, reranker.tokenizer, limit
            )
        else:
            from rerankforge.inference.llm_reranker import LLMLengths

            saved = reranker.lengths
            if family == "layerwise":
                kwargs["cutoff_layers"] = [fmt["layer"]] if fmt and fmt.get("layer") is not None else None
            saved_scores = unwrap(reranker.compute_score(pairs, normalize=True, **kwargs))
            reranker.lengths = LLMLengths(10**6, 10**6, None)  # the whole formatted text, as the export reads
            if fmt is not None:
                for query, passage in pairs[:4]:
                    ours, theirs = reranker.format_text(query, passage), format_text(fmt, query, passage)
                    if ours != theirs:
                        raise SystemExit(f"text_format.json's template does not give the reranker's own text:\n"
                                         f"{theirs[:300]!r}\nagainst\n{ours[:300]!r}")  # fmt: skip
        scores = unwrap(reranker.compute_score(pairs, normalize=True, **kwargs))
        logits = unwrap(reranker.compute_score(pairs, normalize=False, **kwargs))
        return {"scores": scores, "logits": logits, "saved_scores": saved_scores, "kind": family,
                "saved_budget": str(saved)}  # fmt: skip
    if fmt is None:
        from rerankforge.inference import Reranker

        reranker = Reranker.from_pretrained(str(reference), backend="torch", device="cpu")
        return {"scores": reranker.compute_score(pairs, normalize=True),
                "logits": reranker.compute_score(pairs, normalize=False), "kind": "cross_encoder (plain folder)"}  # fmt: skip
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(reference)
    model = AutoModelForSequenceClassification.from_pretrained(reference, dtype=torch.float32).eval()
    logits = []
    with torch.inference_mode():
        for query, passage in pairs:  # one text a forward: no padding on this side
            ids = text_ids(tokenizer, fmt, format_text(fmt, query, passage))
            logits.append(float(model(input_ids=torch.tensor([ids])).logits[0, 0]))
    return {
        "scores": [sigmoid(v) for v in logits],
        "logits": logits,
        "kind": "transformers AutoModelForSequenceClassification",
    }


def unwrap(scores):
    """A layerwise reranker's one-layer answer may come as a list of one list."""
    if scores and isinstance(scores[0], list) and len(scores) == 1:
        return scores[0]
    return scores


def text_ids(tokenizer, fmt: dict, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=bool(fmt.get("add_special_tokens", False)))["input_ids"]


# ------------------------------------------------------------------------------------------------ server side


def infinity_server(python: str, folder: Path, timeout_s: float, batch_size: int) -> RerankServer:
    """``infinity_emb v2`` on ``folder`` (torch engine, CPU, fp32, no compile or warm-up)."""
    return RerankServer("infinity", infinity_command(python, folder, batch_size), timeout_s, INFINITY_ENV)


def served_scores(server: RerankServer, requests: list[tuple[str, list[str]]], raw: bool) -> list[float]:
    return [
        score for query, documents in requests for score in server.rerank(query, documents, raw_scores=raw)
    ]


# ------------------------------------------------------------------------------------------- tiny test folder


def build_tiny_seqcls(out: Path) -> None:
    """A random one-logit LlamaForSequenceClassification (2 layers) with SmolLM2's tokenizer, the BGE layout's
    text_format.json and left padding: what `--as-sequence-classification` writes, without training."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    from rerankforge.inference.modeling.llm_inputs import LLMPromptEncoder
    from rerankforge.inference.modeling.sources import resolve_model_path
    from rerankforge.trainer.portable_files import make_config_portable, make_tokenizer_portable

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("HuggingFaceTB/SmolLM2-135M-Instruct"))
    tokenizer.padding_side = "left"
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 100000.0}, num_labels=1,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(config).eval()
    with torch.no_grad():
        # logits of a few units, so the sigmoid does not hide differences
        model.score.weight.normal_(0.0, 0.3)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    make_tokenizer_portable(out)
    make_config_portable(out)
    template = LLMPromptEncoder(tokenizer, 10**6, 10**6).text("{query}", "{passage}")
    fmt = {"input_format": "bge", "template": template, "add_special_tokens": False, "text_pair_split": None}
    (out / TEXT_FORMAT_FILE).write_text(
        json.dumps(fmt, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    print(f"wrote {out} (template {template!r})")


# ------------------------------------------------------------------------------------------------------- main


def max_difference(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--served", help="the folder infinity serves")
    parser.add_argument("--reference", help="the folder rerankforge scores (often the same one)")
    parser.add_argument("--pairs", type=int, default=50, help="even: two passages per question")
    parser.add_argument("--infinity-python", default=str(DEFAULT_INFINITY_PYTHON))
    parser.add_argument("--results", help="append a dated section to this RESULTS.md")
    parser.add_argument("--tolerance", type=float, default=1e-4)
    parser.add_argument(
        "--start-timeout", type=float, default=300, help="seconds for the server to be healthy"
    )
    parser.add_argument("--batch-size", type=int, default=32, help="infinity's --batch-size")
    parser.add_argument("--build-tiny-seqcls", metavar="FOLDER", help="write the tiny test folder and stop")
    args = parser.parse_args()
    if args.build_tiny_seqcls:
        build_tiny_seqcls(Path(args.build_tiny_seqcls))
        return
    if not args.served or not args.reference:
        parser.error("--served and --reference are required")
    if not Path(args.infinity_python).is_file():
        raise SystemExit(f"{args.infinity_python} not found: `make .venv-infinity/.installed` creates it")
    served, reference = Path(args.served).resolve(), Path(args.reference).resolve()
    groups = squad_pairs(args.pairs)
    pairs = flat_pairs(groups)
    fmt = load_text_format(served)

    # what infinity is sent, and (seq-cls) the ids the reference model reads for each whole text
    job: dict = {"folder": str(served)}
    if fmt is None:
        requests = [(query, passages) for query, passages in groups]
        mode = "cross-encoder pairs, one request per query"
    else:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(served)
        sent = [infinity_request(fmt, query, passage) for query, passage in pairs]
        job["requests"] = [(q, d, text_ids(tokenizer, fmt, format_text(fmt, *pair))) for (q, d), pair in
                           zip(sent, pairs, strict=True)]  # fmt: skip
        if fmt.get("text_pair_split"):
            requests = []
            for query, document in sent:
                if requests and requests[-1][0] == query:
                    requests[-1][1].append(document)
                else:
                    requests.append((query, [document]))
            mode = f"formatted text cut after {fmt['text_pair_split']!r}, one request per query"
        else:
            requests = [("", [document for _, document in sent])]
            mode = "formatted text as the document, empty query, one request"
    side = infinity_side(args.infinity_python, job)
    if side.get("mismatches"):
        first = side["mismatches"][0]
        print(
            f"{len(side['mismatches'])} of {len(pairs)} requests would not reach the model as the ids of the "
            f"formatted text; first: {first}. See text_format.json's contract at the top of this script.",
            file=sys.stderr,
        )  # fmt: skip
        sys.exit(2)
    limit = side["model_max_length"]
    print(
        f"{len(pairs)} pairs; infinity {side['versions']['infinity-emb']}; {mode}; model_max_length {limit}"
    )
    if fmt is not None:
        print(f"token check: all {len(pairs)} requests give the formatted text's ids in infinity's tokenizer")

    began = time.perf_counter()
    ours = reference_scores(reference, pairs, fmt, limit)
    reference_s = time.perf_counter() - began
    try:
        with infinity_server(args.infinity_python, served, args.start_timeout, args.batch_size) as server:
            print(f"infinity healthy after {server.start_s:.1f} s on port {server.port}")
            began = time.perf_counter()
            theirs = served_scores(server, requests, raw=False)
            requests_s = time.perf_counter() - began
            theirs_raw = served_scores(server, requests, raw=True)
    except RuntimeError as error:  # not healthy, exited, or an HTTP error: the server is stopped by now
        sys.exit(f"infinity_serving: {error}")
    difference = max_difference(ours["scores"], theirs)
    logit_difference = max_difference(ours["logits"], theirs_raw)
    sigmoid_check = max_difference([sigmoid(v) for v in theirs_raw], theirs)
    print(
        f"reference: {ours['kind']} in {reference_s:.1f} s; infinity: {len(requests)} requests in {requests_s:.2f} s"
    )
    print(f"max |sigmoid score difference| {difference:.2e}; max |logit difference| {logit_difference:.2e}; "
          f"infinity's relevance_score vs sigmoid(its raw score) {sigmoid_check:.1e}")  # fmt: skip
    print(f"score range {min(ours['scores']):.4f}..{max(ours['scores']):.4f}; "
          f"logit range {min(ours['logits']):.3f}..{max(ours['logits']):.3f}")  # fmt: skip
    saved_note = ""
    if "saved_scores" in ours:
        saved_difference = max_difference(ours["saved_scores"], theirs)
        saved_note = (f"With rerankforge's saved budgets ({ours['saved_budget']}), which infinity ignores, the "
                      f"difference would be {saved_difference:.2e}.")  # fmt: skip
        print(saved_note)
    passed = difference <= args.tolerance
    print(f"{'PASS' if passed else 'FAIL'}: {difference:.2e} {'<=' if passed else '>'} {args.tolerance:g}")

    if args.results:
        versions = side["versions"]
        if fmt is None:
            budget_note = f"Reference budget: infinity's (the whole pair cut at model_max_length {limit})."
        else:
            shown = limit if limit < 10**9 else "unset"
            budget_note = f"Formatted texts uncut on both sides (the tokenizer's model_max_length: {shown})."
        table = "\n".join([
            "| served folder | reference | mode | pairs | server start (s) | max abs sigmoid score diff | max abs logit diff |",
            "|---|---|---|---|---|---|---|",
            f"| `{args.served}` | `{args.reference}` ({ours['kind']}) | {mode} | {len(pairs)} | {server.start_s:.1f} | "
            f"{difference:.2e} | {logit_difference:.2e} |",
        ])  # fmt: skip
        notes = (
            f"infinity environment: infinity-emb {versions['infinity-emb']}, transformers {versions['transformers']}, "
            f"sentence-transformers {versions['sentence-transformers']}, torch {versions['torch']}; CPU "
            f"{cpu_model()}. Server `infinity_emb v2 --engine torch --device cpu --dtype float32 --no-compile "
            f"--no-bettertransformer --no-model-warmup`, started to healthy in {server.start_s:.1f} s; "
            f"{len(requests)} /rerank requests in {requests_s:.2f} s. SQuAD v1.1 dev: {len(groups)} questions, each "
            f"with its own paragraph and the next one of its article. {budget_note} {saved_note}"
        )  # fmt: skip
        command = "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
        append_results(
            Path(args.results), "Serving: infinity /rerank against rerankforge", command, table, notes
        )
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()
