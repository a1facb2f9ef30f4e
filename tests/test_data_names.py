"""Data by name (data_tools/data_names.py): the mirror first, then the cache, then a real download, checked.

Downloads go through the library's own code to a local HTTP server that serves the mirror's files (and, under
/cut/, a response that promises the whole file and closes the connection halfway); only the registry's URLs
are pointed at it. Nothing here reaches the internet."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import socket
import threading
import time
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import REPO, SHARED_DATA

from rerankforge.data_tools.cli import main as data_main
from rerankforge.data_tools.data_names import data_path, hub_dataset_id
from rerankforge.data_tools.downloads import ChecksumMismatch, DataNotAvailable
from rerankforge.data_tools.ir_data import load_beir, load_ir_dataset, load_squad
from rerankforge.data_tools.known_data import KNOWN_DATA
from rerankforge.data_tools.sources import resolve_data_files
from rerankforge.trainer.cli import EXIT_BAD_INPUT
from rerankforge.trainer.cli import main as train_main

pytestmark = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="serves the mirror's files: ../shared/data")

SQUAD_SHA256 = "95aa6a52d5d6a735563366753ca50492a658031da74f301ac5238b03966972c9"
SMALL = "fe-toy/old_examples_reranker"  # 4,522 bytes


class MirrorHandler(SimpleHTTPRequestHandler):
    """The mirror's files as a web server has them; /cut/<path> announces the whole file and sends half."""

    def do_GET(self) -> None:
        self.server.paths.append(self.path)
        if self.path.startswith("/cut/"):
            body = (SHARED_DATA / self.path.removeprefix("/cut/")).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        super().do_GET()

    def log_message(self, *args) -> None:  # quiet
        pass


@pytest.fixture
def server() -> Iterator[ThreadingHTTPServer]:
    """The mirror on http://127.0.0.1:<port>/; ``server.paths`` lists every request it answered."""
    httpd = ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(MirrorHandler, directory=str(SHARED_DATA))
    )
    httpd.paths = []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def base_url(httpd: ThreadingHTTPServer) -> str:
    return f"http://127.0.0.1:{httpd.server_address[1]}"


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty download cache and no mirror."""
    monkeypatch.delenv("RERANKFORGE_DATA_MIRROR", raising=False)
    monkeypatch.setenv("RERANKFORGE_DATA_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def files_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def served_from(monkeypatch, name: str, base: str, prefix: str = "") -> None:
    """Point a known name's URLs at ``base`` (the registry entry only; the download code is the real one)."""
    data = KNOWN_DATA[name]

    def moved(file):
        return dataclasses.replace(file, url=f"{base}/{prefix}{file.path}")

    entry = dataclasses.replace(
        data,
        files=tuple(moved(f) if f.url else f for f in data.files),
        downloads=tuple(map(moved, data.downloads)),
    )
    monkeypatch.setitem(KNOWN_DATA, name, entry)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_url_with_its_checksum_downloads_into_the_cache_verified(server, cache):
    url = f"{base_url(server)}/squad-v1.1/dev-v1.1.json#sha256={SQUAD_SHA256}"
    path = data_path(url)
    # a URL the registry knows by its checksum lands where the mirror has the file
    assert path == cache / "squad-v1.1" / "dev-v1.1.json"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == SQUAD_SHA256
    assert files_in(cache) == [path]  # no temporary file left beside it
    assert len(server.paths) == 1
    assert data_path(url) == path and len(server.paths) == 1  # the second time from the cache, no request


def test_a_known_name_downloads_once_then_reads_the_cache(server, cache, monkeypatch):
    served_from(monkeypatch, SMALL, base_url(server))
    path = data_path(SMALL)
    assert path == cache / "fe-toy" / "old_examples_reranker" / "toy_finetune_data.jsonl"
    assert path.read_bytes() == (SHARED_DATA / KNOWN_DATA[SMALL].path).read_bytes()
    assert resolve_data_files(SMALL) == [path] and len(server.paths) == 1


def test_a_wrong_checksum_is_refused_and_nothing_is_left_in_the_cache(server, cache):
    wrong = "0" * 64
    url = f"{base_url(server)}/fe-toy/old_examples_reranker/toy_finetune_data.jsonl"
    with pytest.raises(ChecksumMismatch) as raised:
        data_path(f"{url}#sha256={wrong}")
    message = str(raised.value)
    assert url in message and f"expected {wrong}" in message
    assert "got 89c5abd24f15e3ddebbaba43b0840a3f09b7eb15caa1d5c45afd022a3f53c108" in message
    assert files_in(cache) == []


def test_a_connection_closed_mid_file_leaves_nothing_in_the_cache(server, cache, monkeypatch):
    served_from(monkeypatch, SMALL, base_url(server), prefix="cut/")
    with pytest.raises(DataNotAvailable, match="2261 of 4522 bytes"):
        data_path(SMALL)
    assert server.paths == [f"/cut/{KNOWN_DATA[SMALL].path}"]
    assert files_in(cache) == []


def test_the_mirror_is_used_first_and_nothing_is_requested(server, cache, monkeypatch):
    served_from(monkeypatch, "squad-v1.1-dev", base_url(server))
    monkeypatch.setenv("RERANKFORGE_DATA_MIRROR", str(SHARED_DATA))
    assert data_path("squad-v1.1-dev") == SHARED_DATA / "squad-v1.1" / "dev-v1.1.json"
    assert data_path("cisi") == SHARED_DATA / "cisi"
    assert server.paths == [] and files_in(cache) == []


def test_a_mirror_file_that_changed_is_refused(tmp_path, cache, monkeypatch):
    mirror = tmp_path / "mirror"
    (mirror / "fe-toy" / "old_examples_reranker").mkdir(parents=True)
    original = (SHARED_DATA / KNOWN_DATA[SMALL].path).read_bytes()
    (mirror / KNOWN_DATA[SMALL].path).write_bytes(original.replace(b"\n", b"\r\n"))
    monkeypatch.setenv("RERANKFORGE_DATA_MIRROR", str(mirror))
    with pytest.raises(ChecksumMismatch, match="expected 89c5abd2"):
        data_path(SMALL)


def test_a_damaged_cached_file_is_fetched_again(server, cache, monkeypatch):
    served_from(monkeypatch, SMALL, base_url(server))
    damaged = cache / KNOWN_DATA[SMALL].path
    damaged.parent.mkdir(parents=True)
    damaged.write_text("half a file")
    assert data_path(SMALL).read_bytes() == (SHARED_DATA / KNOWN_DATA[SMALL].path).read_bytes()
    assert len(server.paths) == 1


def test_no_network_and_no_mirror_fails_at_once_saying_what_to_fetch_and_where(cache, monkeypatch):
    dead = f"http://127.0.0.1:{closed_port()}"
    served_from(monkeypatch, "squad-v1.1-dev", dead)
    started = time.perf_counter()
    with pytest.raises(DataNotAvailable) as raised:
        load_ir_dataset("squad-v1.1-dev")
    assert time.perf_counter() - started < 5
    message = str(raised.value)
    assert f"{dead}/squad-v1.1/dev-v1.1.json" in message  # what to fetch
    assert f"-> {cache / 'squad-v1.1' / 'dev-v1.1.json'}" in message  # where to put it
    assert "set RERANKFORGE_DATA_MIRROR to a folder that holds squad-v1.1/dev-v1.1.json" in message
    assert f"sha256 {SQUAD_SHA256}" in message and "4854279 bytes" in message
    assert files_in(cache) == []


def test_the_train_command_stops_with_the_message_before_any_model_loads(cache, monkeypatch, capsys):
    served_from(monkeypatch, "fe-toy/normal", f"http://127.0.0.1:{closed_port()}")
    toy = REPO / "recipes" / "minilm" / "cross_encoder" / "toy.yaml"
    argv = [str(toy), "--output_dir", str(cache.parent / "out"), "--model_name_or_path", "no/such-model"]
    started = time.perf_counter()
    assert train_main(argv) == EXIT_BAD_INPUT
    assert time.perf_counter() - started < 5
    err = capsys.readouterr().err
    assert "fe-toy/normal is not on this machine and could not be downloaded" in err
    assert "RERANKFORGE_DATA_MIRROR" in err


def test_cisi_is_built_from_its_raw_files_byte_for_byte(server, cache, monkeypatch):
    """CISI has no BEIR release: its raw files are downloaded and converted, and the result must carry the
    mirror's checksums (the registry's), or nothing is kept."""
    served_from(monkeypatch, "cisi", base_url(server))
    folder = data_path("cisi")
    assert folder == cache / "cisi"
    assert sorted(p.split("/")[-1] for p in server.paths) == ["CISI.ALL", "CISI.QRY", "CISI.REL"]
    for name in ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv"):
        assert (folder / name).read_bytes() == (SHARED_DATA / "cisi" / name).read_bytes()
    dataset = load_beir(folder)
    assert (len(dataset.corpus), len(dataset.queries), len(dataset.judged_queries())) == (1460, 112, 76)


def test_what_names_read_is_what_the_paths_read(monkeypatch):
    monkeypatch.setenv("RERANKFORGE_DATA_MIRROR", str(SHARED_DATA))
    by_name = load_ir_dataset("squad-v1.1-dev")
    by_path = load_squad(SHARED_DATA / "squad-v1.1" / "dev-v1.1.json")
    assert by_name == by_path and by_name.name == "dev-v1.1"
    assert load_ir_dataset("cisi").name == "cisi/test"


def test_the_data_command_takes_names(monkeypatch, capsys):
    monkeypatch.setenv("RERANKFORGE_DATA_MIRROR", str(SHARED_DATA))
    assert data_main(["check", "fe-toy/normal"]) == 0
    assert "no problems found" in capsys.readouterr().out


def test_what_is_a_hub_id_and_what_is_not(tmp_path):
    assert hub_dataset_id("rajpurkar/squad") == "rajpurkar/squad"
    assert hub_dataset_id("BeIR/scifact") == "BeIR/scifact"
    for not_hub in (
        "squad-v1.1-dev",
        "fe-toy/normal",
        "outputs/train.jsonl",
        "./a/b",
        "https://x.org/a/b",
        "a/b/c",
    ):
        assert hub_dataset_id(not_hub) is None, not_hub
    (tmp_path / "owner").mkdir()
    assert hub_dataset_id(tmp_path / "owner") is None


def test_an_unknown_name_or_a_url_without_checksum_says_what_is_accepted(cache):
    with pytest.raises(FileNotFoundError, match="not a known data name \\(squad-v1.1-dev, cisi"):
        data_path("squad-v2")
    with pytest.raises(ValueError, match="needs its checksum"):
        data_path("https://example.org/data.jsonl")
