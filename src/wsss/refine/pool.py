"""Ordered, progress-reporting map over a process pool, for CPU-bound per-image work (dense CRF).

pydensecrf is single-threaded and holds the GIL, so running it over a dataset scales only with
processes. Workers are started with ``spawn`` (safe next to torch's thread pools and CUDA,
identical on every OS), so ``fn`` and the items must be picklable: ``fn`` has to be a module-level
function (use ``functools.partial`` of one to bind settings). Each worker limits torch to one
thread so that ``workers`` processes use about ``workers`` cores.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from typing import TypeVar

from tqdm import tqdm

from wsss.errors import WsssError

T = TypeVar("T")
R = TypeVar("R")

_IN_FLIGHT_PER_WORKER = 4  # bounded look-ahead: results wait in memory only this far ahead
PARENT_POLL_S = 0.5  # how often a worker checks that its parent is alive


class ParallelMapError(RuntimeError):
    """``fn`` failed on one item; ``item`` and ``index`` say which, ``__cause__`` is the original error."""

    def __init__(self, message: str, item: object, index: int) -> None:
        super().__init__(message)
        self.item = item
        self.index = index


def _failure(desc: str, item: object, index: int, exc: BaseException) -> ParallelMapError:
    """The error raised for a failing item, naming it and the original exception."""
    shown = " ".join(repr(item).split())  # one line, even for arrays
    if len(shown) > 120:
        shown = shown[:117] + "..."
    return ParallelMapError(
        f"{desc or 'parallel_map'}: item #{index} {shown} failed: {type(exc).__name__}: {exc}", item, index
    )


def _exit_with_parent(parent_pid: int, poll_s: float) -> None:
    """Leave as soon as the parent is gone: a parent killed with SIGKILL cannot stop its pool, and
    orphaned workers would otherwise sit on their queues (and keep writing) forever."""
    while os.getppid() == parent_pid:
        time.sleep(poll_s)
    os._exit(1)


def _init_worker(parent_pid: int, poll_s: float = PARENT_POLL_S) -> None:
    """One torch thread per worker process (the pool itself provides the parallelism), and a
    watchdog that ends the worker with its parent."""
    import torch

    torch.set_num_threads(1)
    threading.Thread(target=_exit_with_parent, args=(parent_pid, poll_s), daemon=True).start()


def _serial(fn: Callable[[T], R], items: list[T], desc: str, bar: tqdm) -> Iterator[R]:
    for index, item in enumerate(items):
        try:
            result = fn(item)
        except WsssError:
            raise  # already names the file and what to do: the CLI prints it as one line
        except Exception as exc:
            raise _failure(desc, item, index, exc) from exc
        bar.update(1)
        yield result


def _pooled(fn: Callable[[T], R], items: list[T], workers: int, desc: str, bar: tqdm) -> Iterator[R]:
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        max_workers=workers, mp_context=context, initializer=_init_worker, initargs=(os.getpid(),)
    ) as pool:
        pending: deque[tuple[int, Future[R]]] = deque()
        upcoming = iter(enumerate(items))
        try:
            for index, item in upcoming:
                pending.append((index, pool.submit(fn, item)))
                if len(pending) >= workers * _IN_FLIGHT_PER_WORKER:
                    break
            while pending:
                index, future = pending.popleft()
                try:
                    result = future.result()
                except WsssError:
                    raise  # the worker's own message, as if it had run in this process
                except Exception as exc:
                    raise _failure(desc, items[index], index, exc) from exc
                for next_index, next_item in upcoming:
                    pending.append((next_index, pool.submit(fn, next_item)))
                    break
                bar.update(1)
                yield result
        finally:
            for _, future in pending:
                future.cancel()


def parallel_map(
    fn: Callable[[T], R],
    items: Iterable[T],
    workers: int = 1,
    desc: str = "",
    *,
    progress: bool = True,
) -> Iterator[R]:
    """Yield ``fn(item)`` for every item, in input order, with a tqdm bar.

    ``workers <= 1`` runs in this process (no pickling, easy debugging); otherwise a spawn-started
    process pool of ``workers`` processes. A failing item raises :class:`ParallelMapError` naming
    the item, chained to the original exception; work not yet started is cancelled.
    """
    todo = list(items)
    with tqdm(total=len(todo), desc=desc or None, disable=not progress, dynamic_ncols=True) as bar:
        if workers <= 1 or len(todo) <= 1:
            yield from _serial(fn, todo, desc, bar)
        else:
            yield from _pooled(fn, todo, min(workers, len(todo)), desc, bar)
