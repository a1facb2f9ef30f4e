"""Data by name: what a recipe's or a command's data value stands for on this machine.

A value is, in this order: an existing local file or folder; a known name (`known_data.KNOWN_DATA`, e.g.
``squad-v1.1-dev``, ``cisi``, ``fe-toy/normal``); a URL with its checksum (``https://.../f.jsonl#sha256=<hex>``,
or a URL the registry knows). A known name's or URL's files are taken from the mirror (``RERANKFORGE_DATA_MIRROR``,
a folder laid out like this repository's ../shared/data), else from the download cache
(``RERANKFORGE_DATA_CACHE``, default ~/.cache/rerankforge/data, same layout), checksums verified, else downloaded
into the cache. Without network or mirror it fails at once with what to fetch and where to put it. A Hub dataset
id (``rajpurkar/squad``) is left to `datasets` (`hub_dataset_id`).
"""

from __future__ import annotations

import http.client
import logging
import os
import re
import tempfile
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from urllib.parse import urldefrag

from rerankforge.data_tools.downloads import (
    ChecksumMismatch,
    DataNotAvailable,
    download_verified,
    file_sha256,
)
from rerankforge.data_tools.known_data import KNOWN_DATA, DataFile, KnownData, known_file

logger = logging.getLogger(__name__)

MIRROR_VARIABLE = "RERANKFORGE_DATA_MIRROR"
CACHE_VARIABLE = "RERANKFORGE_DATA_CACHE"
URL_SCHEMES = ("https://", "http://")
SHA256 = re.compile(r"sha256=([0-9a-fA-F]{64})")
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
DATA_SUFFIXES = (".json", ".jsonl", ".tsv", ".txt", ".csv", ".parquet")


def mirror_root() -> Path | None:
    value = os.environ.get(MIRROR_VARIABLE)
    return Path(value).expanduser() if value else None


def cache_root() -> Path:
    """Beside the models' cache (``RERANKFORGE_CACHE``, as inference.modeling.sources reads it, without torch)."""
    default = Path(os.environ.get("RERANKFORGE_CACHE", Path.home() / ".cache" / "rerankforge")) / "data"
    return Path(os.environ.get(CACHE_VARIABLE) or default).expanduser()


def is_url(name: str | Path) -> bool:
    return str(name).startswith(URL_SCHEMES)


def hub_dataset_id(name: str | Path) -> str | None:
    """``owner/name`` when the value is neither a local path, a known name nor a URL and looks like a Hub id."""
    text = str(name)
    if Path(text).exists() or text in KNOWN_DATA or is_url(text) or text.startswith("."):
        return None
    return text if HUB_ID.fullmatch(text) and not text.endswith(DATA_SUFFIXES) else None


def data_path(name: str | Path) -> Path:
    """The local file or folder ``name`` stands for, fetched into the cache when it must be."""
    if isinstance(name, Path) or Path(name).exists():
        path = Path(name)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file or folder")
        return path
    if name in KNOWN_DATA:
        return known_data_path(KNOWN_DATA[name])
    if is_url(name):
        return url_path(name)
    known = ", ".join(KNOWN_DATA)
    raise FileNotFoundError(
        f"{name}: no such file or folder, and not a known data name ({known}) or a URL with its checksum "
        "(https://.../file#sha256=<hex>)"
    )


def url_path(name: str) -> Path:
    """A URL's file in the cache: the registry's place when it knows the file, else ``url/<sha256>/<file name>``."""
    url, fragment = urldefrag(name)
    checksum = SHA256.fullmatch(fragment)
    known = known_file(url=url, sha256=checksum.group(1) if checksum else None)
    if known is None and checksum is None:
        raise ValueError(f"{name}: a URL needs its checksum, as {url}#sha256=<hex> (what sha256sum prints)")
    if known is None:
        sha256 = checksum.group(1).lower()
        file_name = Path(url.split("?")[0]).name or "data"
        known = DataFile(f"url/{sha256[:16]}/{file_name}", sha256)
    file = DataFile(known.path, known.sha256, known.size, url)
    return files_root((file,), name) / file.path


def known_data_path(data: KnownData) -> Path:
    """A known data set's file or folder: in the mirror, else in the cache, else downloaded (and built) there."""
    return files_root(data.files, data.name, data) / data.path


def files_root(files: tuple[DataFile, ...], name: str, data: KnownData | None = None) -> Path:
    """The folder (mirror or cache) holding every one of ``files``, downloading or building them when needed."""
    found = located_root(files)
    if found is not None:
        return found
    cache = cache_root()
    cache.mkdir(parents=True, exist_ok=True)
    try:
        if data is not None and data.build is not None:
            build_into_cache(data, data.build, cache)
        else:
            download_missing(files, cache)
    except DataNotAvailable:  # a checksum mismatch: its own message
        raise
    except (OSError, http.client.HTTPException, ValueError) as error:
        raise DataNotAvailable(unavailable_message(name, data, files, error)) from error
    return cache


def located_root(files: tuple[DataFile, ...]) -> Path | None:
    """The mirror when it holds all of ``files`` (a stale one is an error), else the cache when it does (a
    damaged cached file is removed, to be fetched again), else None."""
    mirror, cache = mirror_root(), cache_root()
    if mirror is not None and all((mirror / f.path).is_file() for f in files):
        for file in files:
            verify(mirror / file.path, file)
        return mirror
    for file in files:
        cached = cache / file.path
        if cached.is_file() and not matches(cached, file):
            logger.warning("%s: not the expected bytes (sha256 %s); fetching it again", cached, file.sha256)
            cached.unlink()
    return cache if all((cache / f.path).is_file() for f in files) else None


def download_missing(files: tuple[DataFile, ...], cache: Path) -> None:
    for file in files:
        if not (cache / file.path).is_file():
            download_verified(str(file.url), cache / file.path, file.sha256, file.size)


def build_into_cache(data: KnownData, build: Callable[[Path, Path], None], cache: Path) -> None:
    """Fetch a built data set's downloads (the mirror's or the cache's first), build its files beside the
    cache and check their bytes before they move into it: a converter that drifted leaves nothing behind."""
    sources = located_root(data.downloads)
    if sources is None:
        download_missing(data.downloads, cache)
        sources = cache
    with tempfile.TemporaryDirectory(dir=cache, prefix=".build-") as staging:
        build(sources, Path(staging))
        for file in data.files:
            verify(Path(staging) / file.path, file, f"{file.path} as built from {sources / data.path}")
        for file in data.files:
            (cache / file.path).parent.mkdir(parents=True, exist_ok=True)
            os.replace(Path(staging) / file.path, cache / file.path)


def verify(path: Path, file: DataFile, source: str | None = None) -> None:
    """Refuse a file whose size or sha256 is not the registry's (``source``: what to call it instead)."""
    if not matches(path, file):
        raise ChecksumMismatch(source or str(path), file.sha256, file_sha256(path), path.stat().st_size)


def matches(path: Path, file: DataFile) -> bool:
    stat = path.stat()
    if file.size is not None and stat.st_size != file.size:
        return False
    return cached_sha256(str(path), stat.st_size, stat.st_mtime_ns) == file.sha256


@lru_cache(maxsize=64)
def cached_sha256(path: str, size: int, mtime_ns: int) -> str:
    """A file's sha256, computed once per version of it (SQuAD dev: ~10 ms, but names resolve more than once)."""
    return file_sha256(Path(path))


def unavailable_message(
    name: str, data: KnownData | None, files: tuple[DataFile, ...], error: BaseException
) -> str:
    """What to fetch, where to put it, or which variable to set, for data that is neither here nor downloadable."""
    cache, mirror = cache_root(), mirror_root()
    fetched = data.downloads if data is not None and data.build is not None else files
    lines = [f"{name} is not on this machine and could not be downloaded ({error}). Either:"]
    if len(fetched) == 1:
        lines.append("  - fetch this file and put it where shown (its sha256 is checked):")
    else:
        lines.append(
            f"  - fetch these {len(fetched)} files and put each where shown (their sha256 is checked):"
        )
    for file in fetched:
        size = f"{file.size} bytes, " if file.size is not None else ""
        lines.append(f"      {file.url}  ({size}sha256 {file.sha256})")
        lines.append(f"      -> {cache / file.path}")
    if fetched is not files:
        lines.append(f"    (the files {name} reads are built from them on first use)")
    paths = ", ".join(f.path for f in files)
    if mirror is None:
        lines.append(f"  - or set {MIRROR_VARIABLE} to a folder that holds {paths}")
    else:
        lines.append(f"  - or put {paths} into the mirror {MIRROR_VARIABLE}={mirror}")
    lines.append(f"    (laid out like rerankforge's ../shared/data; {CACHE_VARIABLE} moves the cache)")
    return "\n".join(lines)
