"""Run the equivalence and input-order tests against each wrong scorer of score_mutations.py; every one must fail.

    python tests/run_mutations.py            (make test-mutations)

Prints a table (test x mutant: failed or PASSED) and exits 1 if a mutant passed a test that should catch it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent

# the tests that compare a graph backend's scores with torch's
GRAPH_TESTS = [
    "test_onnx_backend.py::test_onnx_scores_equal_torch_scores",
    "test_onnx_backend.py::test_int8_backend_scores_every_pair_in_order",
    "test_onnx_backend.py::test_flag_reranker_takes_the_backend",
    "test_backend_choice.py::test_openvino_scores_equal_torch_scores",
    "test_backend_choice.py::test_openvino_bf16_is_close_but_opt_in",
]
# the tests that check scores come back in the caller's order
ORDER_TESTS = [
    "test_inference.py::test_scores_come_back_in_input_order_whatever_the_lengths",
    "test_scoring_pipeline.py::test_token_budget_batches_never_exceed_the_budget_and_keep_input_order",
    "test_device_pool.py::test_two_workers_score_as_one_process_in_input_order",
]
RUNS = {
    "graph-constant": GRAPH_TESTS,
    "graph-reversed": GRAPH_TESTS,
    "order-constant": ORDER_TESTS,
    "order-reversed": ORDER_TESTS,
}
OUTCOME = re.compile(r"^(PASSED|FAILED|ERROR) (tests/\S+?)(?: - .*)?$")


def run(mutant: str, tests: list[str]) -> dict[str, str]:
    """Each test id (parametrized cases apart) -> its outcome under ``mutant``."""
    env = {**os.environ, "SCORE_MUTATION": mutant, "PYTHONPATH": str(TESTS), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "score_mutations", "-p", "no:cacheprovider",
               *(f"tests/{t}" for t in tests)]  # fmt: skip
    done = subprocess.run(command, cwd=TESTS.parent, env=env, capture_output=True, text=True, check=False)
    outcomes = {}
    for line in done.stdout.splitlines():
        if match := OUTCOME.match(line):
            outcomes[match.group(2).removeprefix("tests/")] = match.group(1).lower()
    if not outcomes:
        raise SystemExit(f"{mutant}: no test ran\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return outcomes


def main() -> int:
    survivors = []
    for mutant, tests in RUNS.items():
        for test, outcome in sorted(run(mutant, tests).items()):
            print(f"{mutant:15s} {outcome:7s} {test}")
            if outcome == "passed":
                survivors.append((mutant, test))
    for mutant, test in survivors:
        print(f"SURVIVED: {test} passes with the {mutant} scorer", file=sys.stderr)
    print(f"{len(survivors)} mutant(s) survived")
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
