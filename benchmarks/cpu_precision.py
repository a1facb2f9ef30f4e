"""One cross-encoder training step in fp32, in bf16 autocast, and in fp32 without attention dropout, on this CPU.

Why: whether bf16 is faster or far slower depends on the processor (native bf16 units or emulation), and
attention dropout sends torch's CPU attention off its fused kernel; the default recipe's ``bf16: auto`` and
``attention_dropout: 0.0`` rest on these numbers. MiniLM-L6 (the default recipe's model), random token ids,
``--rows`` pairs of ``--tokens`` tokens, forward and backward in training mode; one warm-up step per variant,
then ``--rounds`` rounds in which the variants alternate; medians. The table is appended to RESULTS.md.

    python benchmarks/cpu_precision.py --rows 8 --tokens 224 --rounds 2
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from machine import append_results, cpu_bf16_units  # noqa: E402

from rerankforge.inference.modeling.cross_encoder import load_cross_encoder  # noqa: E402
from rerankforge.inference.modeling.precision import cpu_has_native_bf16  # noqa: E402

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
VARIANTS = {  # name -> (attention dropout override, autocast to bf16)
    "fp32": (None, False),
    "bf16 autocast": (None, True),
    "fp32, attention_dropout 0": (0.0, False),
}


def training_step(model: torch.nn.Module, input_ids: torch.Tensor, bf16: bool) -> float:
    """Seconds for one forward and backward in training mode (dropout on)."""
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    start = time.perf_counter()
    with autocast:
        logits = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids)).logits
    logits.float().sum().backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=8, help="pairs per step (the recipe's step has 32)")
    parser.add_argument("--tokens", type=int, default=224, help="tokens per pair")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--results", default=str(REPO / "benchmarks" / "RESULTS.md"))
    args = parser.parse_args()

    torch.manual_seed(0)
    input_ids = torch.randint(1000, 20000, (args.rows, args.tokens))
    models = {}
    for name, (dropout, bf16) in VARIANTS.items():
        models[name] = load_cross_encoder(MODEL, attention_dropout=dropout).train()
        print(f"{name}: warm-up {training_step(models[name], input_ids, bf16):.2f} s", flush=True)
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for round_number in range(args.rounds):
        for name, (_, bf16) in VARIANTS.items():
            times[name].append(training_step(models[name], input_ids, bf16))
            print(f"round {round_number + 1} {name}: {times[name][-1]:.2f} s", flush=True)
    fp32 = statistics.median(times["fp32"])
    lines = ["| variant | median s / step | min | max | / fp32 |", "|---|---|---|---|---|"]
    for name, values in times.items():
        median = statistics.median(values)
        lines.append(
            f"| {name} | {median:.2f} | {min(values):.2f} | {max(values):.2f} | {median / fp32:.2f}x |"
        )
    table = "\n".join(lines)
    print(table)
    notes = (f"MiniLM-L6 ({MODEL}), {args.rows} pairs x {args.tokens} tokens (random ids), forward + backward in "
             f"training mode, {torch.get_num_threads()} threads; one warm-up step each, {args.rounds} alternating "
             f"rounds. This CPU: {cpu_bf16_units()}; `bf16: auto` chooses "
             f"{'bf16' if cpu_has_native_bf16() else 'fp32'} here.")  # fmt: skip
    append_results(Path(args.results), "CPU training step: fp32, bf16 autocast, no attention dropout",
                   "python benchmarks/cpu_precision.py " + " ".join(sys.argv[1:]), table, notes)  # fmt: skip


if __name__ == "__main__":
    main()
