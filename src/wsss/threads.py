"""How a wsss process uses the CPU: OpenMP threads that stop spinning soon, and fixed, logged counts.

torch's CPU kernels (ATen, oneDNN, MKL) run on GNU OpenMP (libgomp). A libgomp thread that has
finished its share of a parallel region spins before it sleeps: 300,000 busy iterations by
default, about 7 ms on the 2-core AMD EPYC development machine. On idle cores that saves a
wake-up; on cores shared with other processes the spinning threads take whole scheduler time
slices from the thread that still has work, at every one of the thousands of small parallel
regions of a training step, and a run slows down many times more than the share of the cores it
lost (issue 16: the demo 28x slower at load 4-7 on 2 cores). The ``wsss`` command therefore sets
``GOMP_SPINCOUNT=10000`` (about 0.24 ms of spinning) before torch is imported, unless the user
chose how OpenMP threads wait. ``bench/oversubscription.py`` measured it on 2 cores, 8 training
steps of the demo's classifier: beside two busy loops 2.8 s instead of 8.8 s, alone the same
1.0 s; ``OMP_WAIT_POLICY=PASSIVE`` (never spin) gave 4.8 s beside the loops but 2.1 s alone (each
wake-up costs). How threads wait changes scheduling, not arithmetic: results are bit-identical.

The thread counts are not derived from the load: torch's results depend on its intra-op thread
count (1 and 2 threads train the demo's classifier to different weights), and the README
promises numbers that repeat on one machine. They stay torch's defaults (``OMP_NUM_THREADS``
sets them), DataLoader workers and CRF processes stay recipe settings, and
:func:`thread_settings` records what a run used (``run.json`` "machine", the run's log).

This module imports neither torch nor numpy at import time: the CLI calls
:func:`apply_wait_policy` before anything loads torch.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, MutableMapping
from dataclasses import fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from wsss.config import Recipe

# The variables through which a user chooses how OpenMP threads wait; any of them set: hands off.
WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
SPIN_COUNT = "10000"  # what the wsss command sets: GOMP_SPINCOUNT, busy iterations before sleeping
LIBGOMP_DEFAULT = "libgomp default (spins 300,000 iterations, then sleeps)"
# torch's DataLoader worker loop and wsss.refine.pool's initializer both call torch.set_num_threads(1)
WORKER_TORCH_THREADS = 1


def apply_wait_policy(
    environ: MutableMapping[str, str] | None = None, *, torch_loaded: bool | None = None
) -> bool:
    """Set ``GOMP_SPINCOUNT=10000`` for this process and those it starts; True if it did.

    Hands off when the user set ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` (their choice wins), and
    when torch is already imported: libgomp reads the variable once, when torch loads it, so a
    later value would make the run's record claim a policy the process does not follow.
    ``environ`` / ``torch_loaded`` default to ``os.environ`` / whether ``torch`` is in sys.modules.
    """
    env = os.environ if environ is None else environ
    loaded = "torch" in sys.modules if torch_loaded is None else torch_loaded
    if loaded or any(name in env for name in WAIT_VARIABLES):
        return False
    env["GOMP_SPINCOUNT"] = SPIN_COUNT
    return True


def wait_policy(environ: Mapping[str, str] | None = None) -> str:
    """How OpenMP threads wait, as the environment tells libgomp: e.g. ``PASSIVE``,
    ``GOMP_SPINCOUNT=10000``, ``ACTIVE, GOMP_SPINCOUNT=1000``, or the libgomp default."""
    env = os.environ if environ is None else environ
    parts = []
    if "OMP_WAIT_POLICY" in env:
        parts.append(env["OMP_WAIT_POLICY"].strip().upper() or "''")
    if "GOMP_SPINCOUNT" in env:
        parts.append(f"GOMP_SPINCOUNT={env['GOMP_SPINCOUNT']}")
    return ", ".join(parts) or LIBGOMP_DEFAULT


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask, e.g. under ``taskset``), else the count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def loader_workers(recipe: Recipe) -> dict[str, int]:
    """DataLoader workers of each training section the recipe has (``pretrain``, ``classifier``, ...)."""
    from wsss.config.schema import TrainerConfig

    sections = (getattr(recipe, f.name) for f in fields(recipe))
    names = (f.name for f in fields(recipe))
    return {name: s.num_workers for name, s in zip(names, sections) if isinstance(s, TrainerConfig)}


def thread_settings(recipe: Recipe | None = None) -> dict[str, Any]:
    """The CPU parallelism of this process (and, given the recipe, of the processes it starts)."""
    import torch

    settings: dict[str, Any] = {
        "usable_cores": usable_cores(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "omp_wait_policy": wait_policy(),
    }
    if recipe is not None:
        settings["loader_workers"] = loader_workers(recipe)
        settings["crf_processes"] = recipe.labels.workers
        settings["worker_torch_threads"] = WORKER_TORCH_THREADS
    return settings


def describe(settings: Mapping[str, Any]) -> str:
    """One log line: ``threads: torch 2 (interop 2) on 2 usable cores, ..., OpenMP wait GOMP_SPINCOUNT=10000; ...``."""
    text = (
        f"threads: torch {settings['torch_threads']} (interop {settings['torch_interop_threads']}) "
        f"on {settings['usable_cores']} usable cores, OMP_NUM_THREADS="
        f"{settings['omp_num_threads'] if settings['omp_num_threads'] is not None else 'unset'}, "
        f"OpenMP wait {settings['omp_wait_policy']}"
    )
    if "loader_workers" in settings:
        workers = ", ".join(f"{name} {n}" for name, n in settings["loader_workers"].items())
        text += (
            f"; DataLoader workers: {workers}; CRF processes: {settings['crf_processes']} "
            f"(each worker and CRF process: {settings['worker_torch_threads']} torch thread)"
        )
    return text
