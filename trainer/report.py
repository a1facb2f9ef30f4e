"""Before/after tables a person reads: the same rows in the terminal, the README and eval JSON."""

from __future__ import annotations

import re
from collections.abc import Sequence

COLUMNS = ("ndcg@10", "mrr@10")


def metric_table(rows: Sequence[tuple[str, dict[str, float]]], top_k: int) -> str:
    """A Markdown table: one row per system, nDCG@10, MRR@10, Recall@k and queries/s where known."""
    recall = f"recall@{top_k}"
    header = ["system", "nDCG@10", "MRR@10", f"Recall@{top_k}", "queries/s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, metrics in rows:
        cells = [name]
        for key in (*COLUMNS, recall):
            value = metrics.get(key, metrics.get(f"eval_{key}"))
            cells.append(f"{value:.4f}" if value is not None else "-")
        speed = metrics.get("queries_per_second")
        cells.append(f"{speed:.1f}" if speed is not None else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def layer_table(rows: Sequence[tuple[str, dict[str, float]]]) -> str | None:
    """nDCG@10 by layer (layerwise rerankers), one column per system that has per-layer metrics."""
    pattern = re.compile(r"^eval_layer(\d+)_ndcg@10$")
    systems = [(name, m) for name, m in rows if any(pattern.match(k) for k in m)]
    if not systems:
        return None
    layers = sorted({int(match.group(1)) for _, m in systems for k in m if (match := pattern.match(k))})
    header = ["layer", *(name for name, _ in systems)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for layer in layers:
        cells = [str(layer)]
        for _, metrics in systems:
            value = metrics.get(f"eval_layer{layer}_ndcg@10")
            cells.append(f"{value:.4f}" if value is not None else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
