"""What a benchmark result was measured on: date, CPU model and cores, GPU, library versions."""

from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def cpu_bf16_units() -> str:
    """The part of the instruction set that decides CPU speed here: bf16 runs natively (AMX, AVX-512 bf16) or is
    emulated (AVX2 only): a training step differed 20x between bf16 and fp32 on an AVX2-only "AMD EPYC"."""
    try:
        flags = next(
            line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")
        )
    except (OSError, StopIteration):
        return "flags unknown"
    words = set(flags.split(":", 1)[1].split())
    found = [name for flag, name in (("amx_bf16", "AMX"), ("avx512_bf16", "AVX-512 bf16")) if flag in words]
    if found:
        return ", ".join(found)
    return "AVX-512, no bf16" if "avx512f" in words else "AVX2, no bf16" if "avx2" in words else "no AVX2"


def describe_machine() -> dict[str, str]:
    import torch
    import transformers

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": f"{cpu_model()} ({cpu_bf16_units()}), {os.cpu_count()} cores",
        "gpu": gpu,
        "versions": f"python {platform.python_version()}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}",
    }


def append_results(path: Path, title: str, command: str, table: str, notes: str = "") -> None:
    """Append one dated section to RESULTS.md (never rewrites earlier results)."""
    machine = describe_machine()
    section = (
        f"\n## {title}\n\n"
        f"- date: {machine['date']}\n- machine: {machine['cpu']}; GPU: {machine['gpu']}\n"
        f"- versions: {machine['versions']}\n- command: `{command}`\n\n{table}\n"
    )
    if notes:
        section += f"\n{notes}\n"
    if not path.exists():
        path.write_text(
            "# Benchmark results\n\nAppended by the benchmark scripts; newest last.\n", encoding="utf-8"
        )
    with path.open("a", encoding="utf-8") as handle:
        handle.write(section)
