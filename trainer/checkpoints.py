"""Checkpoints a crash cannot spoil: a checkpoint counts only once a marker lists its complete files.

The Trainer writes ``checkpoint-N`` file by file, so a kill can leave a folder that looks like the newest
checkpoint but is half written. After every file of a checkpoint is on disk (all processes done), the main
process writes ``rerankforge_checkpoint.json`` (atomically) with each file's size; only then are older
checkpoints rotated away. Resuming picks the newest checkpoint whose marker matches its files, and says which
newer folders it skipped and why.
"""

from __future__ import annotations

import errno
import json
import logging
import re
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError

from rerankforge.inference.modeling.files import atomic_write_text

logger = logging.getLogger(__name__)
MARKER = "rerankforge_checkpoint.json"
CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")
# what a failed write raises: OSError from Python's files, RuntimeError from torch.save, SafetensorError from Rust
WRITE_ERRORS = (OSError, RuntimeError, SafetensorError)
FULL_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO}
# how torch.save ("file write failed") and safetensors ("IoError(Os { code: 28, ...") word the same failures
FULL_DISK_WORDS = (
    "file write failed",
    "no space left",
    "file too large",
    "disk quota",
    "read-only file system",
)


def is_write_failure(error: BaseException) -> bool:
    """Whether ``error`` (or what caused it) is the disk refusing a write; other errors (out of memory, a lost
    process group) must not be reported as a full disk, nor cost a checkpoint."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in FULL_DISK_ERRNOS:
            return True
        if isinstance(error, (RuntimeError, SafetensorError)) and not isinstance(
            error, torch.OutOfMemoryError
        ):
            text = str(error).lower()
            if any(words in text for words in FULL_DISK_WORDS) or re.search(
                r"code: (28|27|122|30|5)\b", text
            ):
                return True
        error = error.__cause__ or error.__context__
    return False


class CheckpointWriteError(RuntimeError):
    """Writing a checkpoint or the final model failed (a full disk, a quota); older checkpoints are intact."""


def write_failure_message(target: str | Path, error: BaseException, output_dir: str | Path) -> str:
    """What failed, how much room is left there, and what survived."""
    target = Path(target)
    try:
        free = f"{shutil.disk_usage(target.parent if target.parent.exists() else output_dir).free / 2**20:,.0f} MiB"
    except OSError:
        free = "unknown space"
    newest = latest_complete_checkpoint(output_dir)
    survived = (
        f"the newest complete checkpoint, {newest}, is intact: free some space, then rerun with "
        "--resume_from_checkpoint auto"
        if newest is not None
        else "there is no complete checkpoint yet: free some space and start again"
    )
    return (
        f"writing {target} failed: {type(error).__name__}: {error} ({free} free there); the partial files were "
        f"removed; {survived}"
    )


def mark_complete(folder: str | Path, step: int) -> Path:
    folder = Path(folder)
    files = {
        str(path.relative_to(folder)): path.stat().st_size
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != MARKER
    }
    return atomic_write_text(folder / MARKER, json.dumps({"step": step, "files": files}, indent=1) + "\n")


def incomplete_reason(folder: str | Path) -> str | None:
    """None for a complete checkpoint, else why it is not one."""
    folder = Path(folder)
    marker = folder / MARKER
    if not marker.is_file():
        return "no completion marker (the run stopped while writing it)"
    try:
        files = json.loads(marker.read_text(encoding="utf-8"))["files"]
    except (ValueError, KeyError) as error:
        return f"unreadable {MARKER}: {error}"
    for name, size in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, {size} were written"
    return None


def checkpoints_newest_first(output_dir: str | Path) -> list[Path]:
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [
        (int(m.group(1)), p)
        for p in output_dir.iterdir()
        if p.is_dir() and (m := CHECKPOINT_NAME.match(p.name))
    ]
    return [p for _, p in sorted(found, reverse=True)]


def latest_complete_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint; newer incomplete ones are skipped with a warning naming the reason."""
    for folder in checkpoints_newest_first(output_dir):
        reason = incomplete_reason(folder)
        if reason is None:
            return folder
        logger.warning("skipping %s: %s", folder, reason)
    return None


def rotate_complete_checkpoints(output_dir: str | Path, limit: int | None, keep: list) -> list[Path]:
    """Delete the oldest complete checkpoints beyond ``limit``; never one in ``keep`` (the one just saved, the
    best), never an incomplete folder (resume skips those), so the newest complete checkpoint always survives."""
    if limit is None or limit <= 0:
        return []
    protected = {Path(k).resolve() for k in keep if k}
    complete = [f for f in checkpoints_newest_first(output_dir) if incomplete_reason(f) is None]
    excess = [f for f in complete[limit:] if f.resolve() not in protected]
    removed = []
    for folder in excess:
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
        logger.info("deleted checkpoint %s (save_total_limit %d)", folder, limit)
    return removed
