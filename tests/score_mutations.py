"""Wrong scorers on purpose, to show that the equivalence and input-order tests fail on them (issue 29).

    SCORE_MUTATION=<mutant> python -m pytest -p score_mutations <tests>

is expected to FAIL every test it is pointed at; `make test` never loads this plugin. Mutants:

- ``graph-constant`` / ``graph-reversed``: the ONNX Runtime and OpenVINO scorers return each batch's mean score
  for every row / the batch's scores in reverse row order. Their export check against torch is switched off, as
  a buggy check would be, so the mutant loads and only the tests can catch it.
- ``order-reversed``: the scoring pipeline hands a chunk's scores back in reverse (input order lost), and so does
  the device pool's merge of its workers' shares.
- ``order-constant``: both hand back the chunk's mean score for every pair.
"""

from __future__ import annotations

import os

import numpy as np

MUTANTS = ("graph-constant", "graph-reversed", "order-constant", "order-reversed")


def constant_like(scores: list[float]) -> list[float]:
    return [sum(scores) / len(scores)] * len(scores) if scores else scores


def mutate_list(kind: str, scores: list) -> list:
    return constant_like(scores) if kind == "constant" else list(reversed(scores))


def mutate_graph_scorers(kind: str) -> None:
    from rerankforge.inference import onnx_backend, openvino_backend

    def wrap(call):
        def mutated(self, batch):
            scores = np.asarray(call(self, batch))
            if kind == "constant":
                return np.full_like(scores, scores.mean())
            return scores[::-1].copy()

        return mutated

    for scorer in (onnx_backend.OnnxScorer, openvino_backend.OpenVinoScorer):
        scorer.__call__ = wrap(scorer.__call__)
    onnx_backend.check_export = lambda *args, **kwargs: 0.0


def mutate_order(kind: str) -> None:
    from rerankforge.inference import device_pool, pipeline

    to_floats = pipeline.to_floats
    pipeline.to_floats = lambda scores: mutate_list(kind, to_floats(scores))
    score = device_pool.DevicePool.score

    def pooled(self, pairs, *args, **kwargs):
        return mutate_list(kind, score(self, pairs, *args, **kwargs))

    device_pool.DevicePool.score = pooled


def pytest_configure(config) -> None:
    mutant = os.environ.get("SCORE_MUTATION", "")
    if mutant not in MUTANTS:
        raise SystemExit(f"SCORE_MUTATION must be one of {MUTANTS}, got {mutant!r}")
    family, kind = mutant.split("-")
    (mutate_graph_scorers if family == "graph" else mutate_order)(kind)
