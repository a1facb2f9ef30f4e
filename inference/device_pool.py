"""`DevicePool`: score with one worker process per device, as FlagEmbedding's and sentence-transformers'
multi-process pools do: the pairs are split by length so every device gets equal work, and the scores come back
in input order. A worker that dies or fails is named in the caller's error, never a hang.

Workers start with the "spawn" context (CUDA cannot be forked, and fork is unsafe once threads run). Tasks go
to each worker on its own queue; answers come back on its own pipe, whose writing end only the worker holds,
so a worker's death ends its pipe and shows at once, even mid-message.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import queue
import signal
import sys
import time
import traceback
import weakref
from collections.abc import Callable, Iterator, Sequence
from multiprocessing.connection import Connection, wait
from typing import Any

import torch

from rerankforge.inference.auto import load_reranker
from rerankforge.inference.batching import pair_length, progress_bar, shard_indices

logger = logging.getLogger(__name__)

POLL_SECONDS = 0.5  # how often a waiting caller checks that every worker it waits for is alive
JOIN_SECONDS = 10.0  # how long close() lets workers finish before terminating them
PARENT_CHECK_SECONDS = 2.0  # how often an idle worker checks that its parent still runs (no orphans)

Loader = Callable[..., Any]  # (path, device=..., **load_kwargs) -> an object with _score(pairs, **kwargs)
SCORE_METHOD = "_score"  # the worker's reranker method a call runs unless it names another
SETTINGS_KEYWORD = "_settings"  # a call's attributes to set on the worker's reranker first (max_batch_tokens)


def several_devices(devices: str | Sequence[str] | None) -> list[str] | None:
    """The devices to pool over: None when none or one is given (one device needs no worker process)."""
    if devices is None or isinstance(devices, (str, torch.device)):
        return None
    devices = [str(device) for device in devices]
    return devices if len(devices) > 1 else None


def one_device(
    device: str | torch.device | None, devices: str | Sequence[str] | None
) -> str | torch.device | None:
    """The single device of ``device`` / ``devices`` (``devices=["cuda:1"]`` is ``device="cuda:1"``)."""
    if devices is None:
        return device
    listed = [devices] if isinstance(devices, (str, torch.device)) else list(devices)
    if device is not None and listed:
        raise ValueError(f"give device or devices, not both (device={device!r}, devices={listed!r})")
    return listed[0] if listed else device


def cpu_threads_per_worker(devices: Sequence[str]) -> int:
    """Torch threads for each CPU worker: this process's share, so CPU workers do not oversubscribe."""
    cpu_workers = sum(torch.device(device).type == "cpu" for device in devices)
    return max(1, torch.get_num_threads() // max(1, cpu_workers))


class ConfigOnlyModel(torch.nn.Module):
    """The caller's stand-in for a model whose weights live in the workers: its config and spec give the
    scoring budgets (``lengths_for``, FlagReranker's lengths); it holds no weights."""

    def __init__(self, spec: Any, config: Any):
        super().__init__()
        self.spec = spec
        self.config = config


def default_loader(path: str, device: str, **load_kwargs: Any) -> Any:

    return load_reranker(path, device=device, **load_kwargs)


def factory_loader(
    path: str, device: str, factory: Callable[..., Any], device_keyword: str = "device", **load_kwargs: Any
) -> Any:
    """A loader for a given class or classmethod: ``factory(path, <device_keyword>=device, **load_kwargs)``.

    ``factory`` travels to the worker pickled by name (a class, a class's classmethod or a module's function),
    so each worker loads exactly as the caller's class does, e.g. ``LLMReranker.from_pretrained`` or
    ``FlagLLMReranker`` itself (``device_keyword="devices"``: its prompts, lengths and per-device dtype).
    """
    return factory(path, **{device_keyword: device}, **load_kwargs)


def worker_main(
    device: str,
    loader: Loader,
    path: str,
    load_kwargs: dict[str, Any],
    cpu_threads: int,
    tasks: mp.Queue,
    answers: Connection,
) -> None:
    """One worker: load the reranker on ``device``, then answer (call id, method, pairs, kwargs) tasks until
    None with ``reranker.<method>(pairs, **kwargs)``: one result per pair, in the pairs' order."""
    serve(device, loader, path, load_kwargs, cpu_threads, tasks, answers)
    quick_exit()


def quick_exit() -> None:
    """End a worker that is done without the interpreter's teardown of torch and transformers (a second or
    more, which ``close`` and the caller's exit would wait for): its answers are already in the pipe, which
    outlives it, and it puts nothing on a queue."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(0)


def serve(
    device: str,
    loader: Loader,
    path: str,
    load_kwargs: dict[str, Any],
    cpu_threads: int,
    tasks: mp.Queue,
    answers: Connection,
) -> None:
    signal.signal(
        signal.SIGINT, signal.SIG_IGN
    )  # Ctrl-C reaches the whole process group; the caller handles it
    try:
        if torch.device(device).type == "cpu":
            torch.set_num_threads(cpu_threads)
        reranker = loader(path, device=device, **load_kwargs)
    except BaseException:
        answers.send(("failed", None, traceback.format_exc()))
        return
    answers.send(("ready", None, None))
    parent = mp.parent_process()
    while True:
        try:
            task = tasks.get(timeout=PARENT_CHECK_SECONDS)
        except queue.Empty:
            if parent is not None and not parent.is_alive():
                return
            continue
        if task is None:
            return
        call_id, method, pairs, kwargs = task
        try:
            for name, value in kwargs.pop(
                SETTINGS_KEYWORD, {}
            ).items():  # the caller's settings, this call on
                setattr(reranker, name, value)
            answer = ("scores", call_id, getattr(reranker, method)(pairs, **kwargs))
        except Exception:
            answer = ("error", call_id, traceback.format_exc())
        answers.send(answer)


def shutdown(processes: list[mp.Process], tasks: list[mp.Queue], answers: list[Connection]) -> None:
    """Stop the workers: a None task each, a bounded join, then terminate (and kill) those still running."""
    for process, task_queue in zip(processes, tasks, strict=True):
        if process.is_alive():
            with contextlib.suppress(OSError, ValueError):  # the queue is already closed
                task_queue.put(None)
    deadline = time.monotonic() + JOIN_SECONDS
    for process in processes:
        process.join(timeout=max(0.0, deadline - time.monotonic()))
    for process in processes:
        if process.is_alive():
            process.terminate()
            process.join(timeout=2.0)
        if process.is_alive():
            process.kill()
            process.join(timeout=2.0)
    for task_queue in tasks:
        task_queue.cancel_join_thread()  # a task a dead worker never read must not block the exit
        task_queue.close()
    for connection in answers:
        connection.close()


def exit_description(exitcode: int | None) -> str:
    if exitcode is None:
        return "an unknown exit code"
    if exitcode < 0:
        name = signal.Signals(-exitcode).name if -exitcode in signal.valid_signals() else "?"
        hint = " (often the out-of-memory killer)" if -exitcode == signal.SIGKILL else ""
        return f"exit code {exitcode}, signal {name}{hint}"
    return f"exit code {exitcode}"


def last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1] if lines else text


class DevicePool:
    """One scoring worker process per device, each holding the reranker that ``loader(path, device=...,
    **load_kwargs)`` returns (by default `load_reranker`).

    ``score`` splits the pairs between the workers and calls each one's ``_score(pairs, **kwargs)`` (or the
    method it names: one result per pair, a score or a row of them, e.g. a layerwise model's per layer). The
    workers start at construction and load in the background; ``wait_ready`` (and the first ``score``)
    waits for them. ``close`` stops them; so do garbage collection and the interpreter's exit.
    """

    def __init__(
        self,
        path: str,
        devices: Sequence[str | torch.device],
        loader: Loader = default_loader,
        **load_kwargs: Any,
    ):
        if not devices:
            raise ValueError("DevicePool needs at least one device")
        self.path = str(path)
        self.devices = [str(device) for device in devices]
        context = mp.get_context("spawn")
        threads = cpu_threads_per_worker(self.devices)
        self._tasks: list[mp.Queue] = [context.Queue() for _ in self.devices]
        self._answers: list[Connection] = []
        self._processes: list[mp.Process] = []
        self._finalizer = weakref.finalize(self, shutdown, self._processes, self._tasks, self._answers)
        for index, device in enumerate(self.devices):
            reader, writer = context.Pipe(duplex=False)
            process = context.Process(
                target=worker_main,
                args=(device, loader, self.path, load_kwargs, threads, self._tasks[index], writer),
                name=f"rerankforge-scorer-{index}",
                daemon=True,
            )
            process.start()
            writer.close()  # the worker holds the only writing end: its death ends the pipe
            self._processes.append(process)
            self._answers.append(reader)
        self._ready = False
        self._call_id = 0
        self._started = time.monotonic()
        logger.info("scoring on %d devices (%s), one worker process each", len(self.devices), self.devices)

    @property
    def processes(self) -> list[mp.Process]:
        return list(self._processes)

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def close(self) -> None:
        """Stop the workers (they finish their current task for up to 10 s, then are terminated)."""
        self._finalizer()

    def __enter__(self) -> DevicePool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def worker_name(self, index: int) -> str:
        return f"scoring worker {index} (device {self.devices[index]})"

    def wait_ready(self) -> None:
        """Wait until every worker has loaded the reranker; a load that failed raises, naming the worker."""
        if self._ready:
            return
        self._check_open()
        for index, kind, payload in self._receive(set(range(len(self.devices))), None):
            if kind == "failed":
                self.close()
                raise RuntimeError(
                    f"{self.worker_name(index)} could not load {self.path}: {last_line(payload)}\n"
                    f"worker traceback:\n{payload}"
                )
        self._ready = True
        logger.info("scoring workers ready in %.1f s", time.monotonic() - self._started)

    def score(
        self,
        pairs: Sequence[Sequence[str]],
        show_progress: bool | None = None,
        method: str = SCORE_METHOD,
        **kwargs: Any,
    ) -> list[Any]:
        """Scores for ``pairs`` in input order; each worker gets a longest-first share of equal work.

        ``kwargs`` go to each worker's ``_score`` (or ``method``: any method of the worker's reranker that takes
        the pairs first and returns one result per pair). A worker's exception is raised here (the pool stays
        usable); a worker's death closes the pool and raises.
        """
        self._check_open()
        self.wait_ready()
        scores: list[Any] = [None] * len(pairs)
        shares = shard_indices([pair_length(p) for p in pairs], len(self.devices))
        self._call_id += 1
        waiting = set()
        for index, share in enumerate(shares):
            if share:
                task = (self._call_id, method, [pairs[i] for i in share], {**kwargs, "show_progress": False})
                self._tasks[index].put(task)
                waiting.add(index)
        with progress_bar(len(pairs), kwargs.get("batch_size") or 1, show_progress) as bar:
            for index, kind, payload in self._receive(waiting, self._call_id):
                if kind == "error":
                    raise RuntimeError(
                        f"{self.worker_name(index)} raised {last_line(payload)}\nworker traceback:\n{payload}"
                    )
                for position, score in zip(shares[index], payload, strict=True):
                    scores[position] = score
                bar.update(len(shares[index]))
        return scores

    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError("this device pool is closed (a worker died, or close() was called)")

    def _receive(self, waiting: set[int], call_id: int | None) -> Iterator[tuple[int, str, Any]]:
        """(worker, kind, payload) for each worker in ``waiting`` as it answers ``call_id``; answers to an
        earlier call that raised are dropped. Never blocks longer than POLL_SECONDS without checking that
        the workers it waits for are alive."""
        while waiting:
            connections = {self._answers[index]: index for index in waiting}
            ready = wait(list(connections), timeout=POLL_SECONDS)
            for connection in ready:
                index = connections[connection]
                try:
                    kind, answered, payload = connection.recv()
                except (EOFError, OSError):
                    kind = None  # its pipe ended: the worker is gone
                if kind is None:
                    self._died(index)
                if answered == call_id:
                    waiting.discard(index)
                    yield index, kind, payload
            for index in list(waiting):
                if self._processes[index].exitcode is not None and not self._answers[index].poll():
                    self._died(index)

    def _died(self, index: int) -> None:
        """Terminate every worker at once (the others' results are of no use now) and raise, naming it."""
        process = self._processes[index]
        process.join(timeout=2.0)  # its pipe can end a moment before its exit code is known
        description = exit_description(process.exitcode)
        for other in self._processes:
            if other.is_alive():
                other.terminate()
        self.close()
        raise RuntimeError(
            f"{self.worker_name(index)} died with {description}; the pool is closed, load the reranker again"
        )
