"""One verified download: a file reaches its place in the cache whole and with the expected sha256, or not at all.

It is written to a temporary file in the cache folder, hashed as it arrives, and renamed into place only once
its size and checksum match; a mismatch, a dropped connection or an interrupt removes the temporary file.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import urllib.request
from pathlib import Path

logger = logging.getLogger(__name__)

CHUNK = 1 << 20
# seconds to connect and between two reads: an unreachable host fails within it (no network: at once)
TIMEOUT_S = float(os.environ.get("RERANKFORGE_DOWNLOAD_TIMEOUT", "20"))


class DataNotAvailable(FileNotFoundError):
    """A data name whose files are neither here nor downloadable (the message says what to fetch and where)."""


class ChecksumMismatch(DataNotAvailable):
    """A file whose bytes are not the ones its name or URL promised: refused, never used or kept."""

    def __init__(self, source: str, expected: str, got: str, size: int) -> None:
        super().__init__(
            f"{source}: sha256 mismatch: expected {expected}, got {got} ({size} bytes); not kept"
        )
        self.source, self.expected, self.got = source, expected, got


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def download_verified(url: str, target: Path, sha256: str, size: int | None = None) -> Path:
    """Download ``url`` to ``target`` (its folder made only on success); raises ChecksumMismatch on wrong bytes
    and OSError (urllib's URLError, IncompleteRead's ConnectionError, a short body) when it cannot be fetched."""
    cache = target.parent
    while not cache.exists():  # the temporary file lives in the nearest existing folder: same file system
        cache = cache.parent
    fd, partial = tempfile.mkstemp(dir=cache, prefix=f".{target.name}.", suffix=".partial")
    try:
        digest, written = hashlib.sha256(), 0
        with os.fdopen(fd, "wb") as handle, urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            announced = response.headers.get("Content-Length")
            logger.info("downloading %s (%s bytes) to %s", url, announced or size or "?", target)
            while chunk := response.read(CHUNK):
                digest.update(chunk)
                handle.write(chunk)
                written += len(chunk)
        if announced is not None and written != int(announced):
            raise ConnectionError(f"{url}: connection closed after {written} of {announced} bytes")
        got = digest.hexdigest()
        if got != sha256.lower():
            raise ChecksumMismatch(url, sha256.lower(), got, written)
        if (
            size is not None and written != size
        ):  # the same checksum at another size cannot happen; say so anyway
            raise ConnectionError(f"{url}: {written} bytes, expected {size}")
        target.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(partial, 0o644)
        os.replace(partial, target)
        return target
    finally:
        Path(partial).unlink(missing_ok=True)
