"""The request loop both scoring workers share (`flag_worker.py` in the baselines' environment,
`rerankforge_worker.py` in ours): one JSON line {"tool", "batch"} in, one {"seconds", "scores"} out.

Standard library only, so either environment can import it; each worker supplies only how it loads a tool.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from collections.abc import Callable

Scorer = Callable[[list[list[str]], int], list[float]]  # (pairs, batch size) -> scores
ToolLoader = Callable[[str, argparse.Namespace], tuple[Scorer, str]]  # -> scorer, which pair list it takes


def serve(load_tool: ToolLoader) -> None:
    """Answer timing requests until stdin closes; each tool is loaded and warmed up on its first request."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--cross-encoder")
    parser.add_argument("--llm")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--pairs", required=True, help='JSON {"cross_encoder": [[q, p], ...], "llm": [...]}')
    parser.add_argument(
        "--skip-forward",
        action="store_true",
        help="the model's forward returns zeros: times the host side alone (tokenize, sort, pad, copy)",
    )
    args = parser.parse_args()
    with open(args.pairs) as handle:
        pairs = json.load(handle)
    tools: dict[str, tuple[Scorer, str]] = {}
    with contextlib.suppress(EOFError):
        for line in iter(input, ""):
            request = json.loads(line)
            if request["tool"] not in tools:
                tools[request["tool"]] = load_tool(request["tool"], args)
                scorer, kind = tools[request["tool"]]
                scorer(pairs[kind][:32], request["batch"])  # warm-up: one-time costs stay out of the timing
            scorer, kind = tools[request["tool"]]
            start = time.perf_counter()
            scores = scorer(pairs[kind], request["batch"])
            print(json.dumps({"seconds": time.perf_counter() - start, "scores": scores}), flush=True)
