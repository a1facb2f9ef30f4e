"""What a benchmark result was measured on: date, CPU (model, family/model/stepping, the flags that decide speed,
clock, cores), the load when the run started, GPU, library versions.

Two runs on machines sold under one name differed 1.55x against 2.71x in one speed ratio, and their records could
not tell the machines apart; the CPU's numbers, clock and load are what separates them.
"""

from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path
from typing import Any

CPUINFO = Path("/proc/cpuinfo")
MAX_FREQ = Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_max_freq")  # kHz; absent in most VMs
# the instruction-set flags that decide a CPU's scoring and training speed here (bf16 and int8 units)
SPEED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")


def cpuinfo() -> dict[str, str]:
    """The first processor's fields in /proc/cpuinfo (empty where it cannot be read)."""
    try:
        text = CPUINFO.read_text()
    except OSError:
        return {}
    fields = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        key, separator, value = line.partition(":")
        if separator:
            fields[key.strip()] = value.strip()
    return fields


def cpu_model() -> str:
    return cpuinfo().get("model name") or platform.processor() or "unknown CPU"


def cpu_flags() -> set[str] | None:
    flags = cpuinfo().get("flags")
    return set(flags.split()) if flags is not None else None


def cpu_bf16_units() -> str:
    """The part of the instruction set that decides CPU speed here: bf16 runs natively (AMX, AVX-512 bf16) or is
    emulated (AVX2 only): a training step differed 20x between bf16 and fp32 on an AVX2-only "AMD EPYC"."""
    words = cpu_flags()
    if words is None:
        return "flags unknown"
    found = [name for flag, name in (("amx_bf16", "AMX"), ("avx512_bf16", "AVX-512 bf16")) if flag in words]
    if found:
        return ", ".join(found)
    return "AVX-512, no bf16" if "avx512f" in words else "AVX2, no bf16" if "avx2" in words else "no AVX2"


def number(text: str | None) -> int | None:
    return int(text) if text is not None and text.isdigit() else None


def cpu_mhz() -> float | None:
    """The cores' clock now, averaged (/proc/cpuinfo's ``cpu MHz``; a VM often shows the nominal one)."""
    try:
        values = [float(line.split(":", 1)[1]) for line in CPUINFO.read_text().splitlines()
                  if line.startswith("cpu MHz")]  # fmt: skip
    except (OSError, ValueError):
        return None
    return round(sum(values) / len(values), 1) if values else None


def max_mhz() -> float | None:
    """The highest clock the kernel lets a core reach (``scaling_max_freq``), where the machine shows it."""
    try:
        return int(MAX_FREQ.read_text().strip()) / 1000
    except (OSError, ValueError):
        return None


def busy_processes() -> list[str]:
    """The names of the other processes running (state R) at this moment, as /proc shows them."""
    names = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        if stat.parent.name == str(os.getpid()):
            continue
        try:
            text = stat.read_text()
        except OSError:  # it ended while we looked
            continue
        name, _, rest = text.partition(" (")[2].rpartition(") ")
        if rest.startswith("R"):
            names.append(name)
    return sorted(names)


def load_now() -> dict[str, Any]:
    """The 1, 5 and 15 minute load averages and the other processes running now."""
    try:
        load = [round(value, 2) for value in os.getloadavg()]
    except OSError:
        load = None
    return {"load_average": load, "busy_processes": busy_processes()}


# Taken when a benchmark imports this module, before it starts measuring: at the end its own work is the load.
AT_START = load_now()


def describe_machine() -> dict[str, Any]:
    import torch
    import transformers

    info, flags = cpuinfo(), cpu_flags()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": f"{cpu_model()} ({cpu_bf16_units()}), {os.cpu_count()} cores",
        "gpu": gpu,
        "versions": f"python {platform.python_version()}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}",
        "cpu_vendor": info.get("vendor_id"),
        "cpu_family": number(info.get("cpu family")),
        "cpu_model_number": number(info.get("model")),
        "cpu_stepping": number(info.get("stepping")),
        "cpu_model_name": cpu_model(),
        "cpu_bf16_units": cpu_bf16_units(),
        "cpu_flags": {flag: flag in flags for flag in SPEED_FLAGS} if flags is not None else None,
        "cpu_mhz": cpu_mhz(),
        "cpu_max_mhz": max_mhz(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_at_start": AT_START["load_average"],
        "busy_processes_at_start": AT_START["busy_processes"],
    }


def cpu_line(machine: dict[str, Any]) -> str:
    """Vendor, family/model/stepping, the speed flags present and missing, the clock and the usable cores."""
    numbers = ", ".join(
        f"{name} {machine[key]}"
        for name, key in (
            ("family", "cpu_family"),
            ("model", "cpu_model_number"),
            ("stepping", "cpu_stepping"),
        )
        if machine.get(key) is not None
    )
    identity = " ".join(filter(None, [machine.get("cpu_vendor") or "vendor unknown", numbers]))
    flags = machine.get("cpu_flags")
    if flags is None:
        flag_text = "flags unknown"
    else:
        present = [flag for flag, on in flags.items() if on]
        missing = [flag for flag, on in flags.items() if not on]
        flag_text = ", ".join(present) or "none of " + ", ".join(flags)
        flag_text += f" (not: {', '.join(missing)})" if present and missing else ""
    clock = f"{machine['cpu_mhz']:.0f} MHz now" if machine.get("cpu_mhz") else "clock unknown"
    clock += (
        f", {machine['cpu_max_mhz']:.0f} MHz max" if machine.get("cpu_max_mhz") else " (max not readable)"
    )
    return f"{identity}; {flag_text}; {clock}; {machine['usable_cores']} of {machine['cores']} cores usable"


def load_line(machine: dict[str, Any]) -> str:
    load = machine.get("load_at_start")
    text = f"{', '.join(f'{v:.2f}' for v in load)} (1, 5, 15 min)" if load else "load average unknown"
    busy = machine.get("busy_processes_at_start") or []
    names = sorted(set(busy))
    others = f"{len(busy)} other process{'es' if len(busy) != 1 else ''} running"
    return f"{text}; {others}" + (f" ({', '.join(names[:5])})" if names else "")


def append_results(path: Path, title: str, command: str, table: str, notes: str = "") -> None:
    """Append one dated section to RESULTS.md (never rewrites earlier results)."""
    machine = describe_machine()
    section = (
        f"\n## {title}\n\n"
        f"- date: {machine['date']}\n- machine: {machine['cpu']}; GPU: {machine['gpu']}\n"
        f"- CPU: {cpu_line(machine)}\n- load at the start: {load_line(machine)}\n"
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
