"""A serving engine's HTTP server as a child process: started on a free localhost port in a process group of its
own, waited for with a bounded wait (its log shown when it exits or never answers), always stopped (on SIGTERM to
this process too)."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType


class ServerError(RuntimeError):
    """The server exited, never became healthy, or refused a request: the message holds its log's tail."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def post(url: str, payload: dict, timeout: float = 600) -> dict:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        raise ServerError(f"POST {url}: HTTP {error.code}: {error.read()[:2000]!r}") from error
    except (urllib.error.URLError, ConnectionError, TimeoutError) as error:  # died or stalled mid-request
        raise ServerError(f"POST {url}: {error}") from error


def stop_on_sigterm() -> Callable | int | None:
    """Make SIGTERM (a job scheduler's stop, `kill`) raise SystemExit, so ``with`` blocks stop the server in its
    own process group instead of leaving it running; returns the handler it replaced (None off the main thread,
    where signals cannot be handled)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def exit_on_sigterm(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    return signal.signal(signal.SIGTERM, exit_on_sigterm)


class RerankServer:
    """``command(port)`` run until the ``with`` block ends; `rerank` posts to its ``/rerank``."""

    def __init__(self, name: str, command: Callable[[int], Sequence[str]], timeout_s: float,
                 env: dict[str, str] | None = None):  # fmt: skip
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = list(command(self.port))
        self.timeout_s = timeout_s
        self.env = {**os.environ, **(env or {})}
        # the server writes here for its whole life; closed in __exit__
        self.log = tempfile.NamedTemporaryFile("w+", prefix=f"{name}-", suffix=".log", delete=False)  # noqa: SIM115
        self.process: subprocess.Popen | None = None
        self.start_s = math.nan
        self.previous_sigterm: Callable | int | None = None

    def __enter__(self) -> RerankServer:
        started = time.perf_counter()
        self.previous_sigterm = stop_on_sigterm()
        try:
            self.process = subprocess.Popen(self.command, stdout=self.log, stderr=subprocess.STDOUT, env=self.env,
                                            start_new_session=True)  # fmt: skip
        except OSError as error:  # no such Python: nothing started, no log to keep
            self.log.close()
            os.unlink(self.log.name)
            raise ServerError(
                f"{self.name} could not start ({' '.join(self.command[:3])} ...): {error}"
            ) from error
        try:
            self.wait_healthy(started)
        except BaseException:
            self.__exit__(*sys.exc_info())  # a server that never got healthy is stopped too
            raise
        self.start_s = time.perf_counter() - started
        return self

    def wait_healthy(self, started: float) -> None:
        while True:
            if self.process.poll() is not None:
                raise ServerError(
                    f"{self.name} exited with code {self.process.returncode}:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.perf_counter() - started > self.timeout_s:
                raise ServerError(f"{self.name} not healthy after {self.timeout_s:.0f} s:\n{self.log_tail()}")
            time.sleep(0.5)

    def log_tail(self, lines: int = 40) -> str:
        self.log.flush()
        return "\n".join(Path(self.log.name).read_text(errors="replace").splitlines()[-lines:])

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.log.close()
        if self.previous_sigterm is not None:
            signal.signal(signal.SIGTERM, self.previous_sigterm)
        if kind is None:
            os.unlink(self.log.name)
        else:
            print(f"{self.name}'s log: {self.log.name}", file=sys.stderr)

    def rerank(self, query: str, documents: list[str], **options: object) -> list[float]:
        """``relevance_score`` of each document in document order (responses are sorted by score)."""
        try:
            answer = post(f"{self.url}/rerank", {"query": query, "documents": documents, **options})
        except ServerError as error:
            raise ServerError(f"{error}\n{self.name}'s log:\n{self.log_tail()}") from error
        scores = [math.nan] * len(documents)
        for result in answer["results"]:
            scores[result["index"]] = float(result["relevance_score"])
        return scores
