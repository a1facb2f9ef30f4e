"""Before/after tables a person reads: the same rows in the terminal, the README and eval JSON."""

from __future__ import annotations

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
