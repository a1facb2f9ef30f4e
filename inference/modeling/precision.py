"""``bf16: auto``: bf16 autocast only where the hardware computes in bf16.

On a CPU without bf16 instructions (AVX2, or AVX-512 without the bf16 extension) torch emulates bf16 math, and
a MiniLM training step took 20x longer than in fp32 (25.8 s against 1.26 s for 8 pairs, 2-core AVX2-only AMD
EPYC, 2026-12-06, benchmarks/cpu_precision.py),
while on CPUs with AVX-512 bf16 or AMX it is ~2.2x faster than fp32. One recipe therefore cannot say ``true``
or ``false`` for every machine; ``auto`` asks the processor (or the GPU) once, when the recipe is parsed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

logger = logging.getLogger(__name__)

AUTO = "auto"
DTYPES = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}  # by their --dtype names


def cpu_has_native_bf16() -> bool:
    """AVX-512 bf16 or AMX tiles: the x86 instructions oneDNN's bf16 kernels run on."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def native_bf16(use_cpu: bool) -> bool:
    """Whether bf16 is worth it on the device the run will use: the CPU's units with ``use_cpu``; otherwise a
    CUDA GPU's own bf16 (Ampere and later; emulation on older cards does not count), and none without a GPU,
    since transformers refuses bf16 on the CPU unless ``use_cpu`` says so."""
    if use_cpu:
        return cpu_has_native_bf16()
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return False


TRUE_WORDS = ("true", "1", "yes", "y", "t", "on")  # what transformers' string_to_bool reads as true


def _is_true(value: Any) -> bool:
    return str(value).lower() in TRUE_WORDS


def run_uses_cpu(recipe: dict[str, Any], argv: Sequence[str]) -> bool:
    """``use_cpu`` as the run's TrainingArguments will see it: the command line's, else the recipe's."""
    for i, arg in enumerate(argv):
        if arg == "--use_cpu":
            return i + 1 >= len(argv) or argv[i + 1].startswith("-") or _is_true(argv[i + 1])
        if arg.startswith("--use_cpu="):
            return _is_true(arg.split("=", 1)[1])
    return _is_true(recipe.get("use_cpu", False))


def resolve_auto_bf16(recipe: dict[str, Any], argv: list[str]) -> tuple[dict[str, Any], list[str]]:
    """Replace ``bf16: auto`` (recipe) or ``--bf16 auto`` (command line) with true or false for this machine,
    and say which was chosen and why; every other value passes through unchanged."""
    in_argv = [
        i for i, arg in enumerate(argv) if arg == "--bf16" and i + 1 < len(argv) and argv[i + 1] == AUTO
    ]
    in_argv += [i for i, arg in enumerate(argv) if arg == f"--bf16={AUTO}"]
    if recipe.get("bf16") != AUTO and not in_argv:
        return recipe, argv
    if not in_argv and any(arg == "--bf16" or arg.startswith("--bf16=") for arg in argv):
        return {**recipe, "bf16": False}, argv  # the command line's value replaces the recipe's auto
    use_cpu = run_uses_cpu(recipe, argv)
    choice = native_bf16(use_cpu)
    device = (
        "this CPU" if use_cpu else "this GPU" if torch.cuda.is_available() else "no GPU, and use_cpu is false"
    )
    reason = "has" if choice else "lacks"
    logger.info("bf16: auto -> %s (%s: %s native bf16 math)", str(choice).lower(), device, reason)
    recipe = {**recipe, "bf16": choice} if recipe.get("bf16") == AUTO else recipe
    argv = list(argv)
    for i in in_argv:
        if argv[i] == "--bf16":
            argv[i + 1] = str(choice).lower()
        else:
            argv[i] = f"--bf16={str(choice).lower()}"
    return recipe, argv
