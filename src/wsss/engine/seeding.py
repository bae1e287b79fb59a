"""Seeding and random-number-generator state, so that runs repeat and resumes continue exactly.

Three things make a resumed run identical to an uninterrupted one: the global generators
(python, numpy, torch, CUDA) are saved with the checkpoint and restored, the shuffling order of
each epoch comes from a generator seeded by (seed, epoch) alone, and DataLoader workers derive
their numpy/python seeds from torch's per-worker seed.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from wsss.errors import CheckpointError, ConfigError

_NUMPY_SEED_LIMIT = 2**32


def seed_everything(seed: int) -> int:
    """Seed python ``random``, numpy's global generator and torch (CPU and every CUDA device)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < _NUMPY_SEED_LIMIT:
        raise ConfigError(f"seed must be an integer in [0, 2**32), got {seed!r}")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return seed


def worker_init_fn(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed numpy and ``random`` from torch's per-worker seed.

    Inside a worker ``torch.initial_seed()`` is ``base_seed + worker_id``, where ``base_seed``
    comes from the loader's generator. Recent torch seeds numpy/``random`` in workers itself;
    passing this keeps the guarantee explicit and the same for every torch version, so numpy
    augmentations neither repeat across workers nor change between identical runs.
    """
    del worker_id  # already folded into torch.initial_seed() by the DataLoader
    seed = torch.initial_seed() % _NUMPY_SEED_LIMIT
    np.random.seed(seed)
    random.seed(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit seed that depends only on (seed, epoch), well mixed so nearby pairs do not collide."""
    if seed < 0 or epoch < 0:
        raise ConfigError(f"seed and epoch must be non-negative, got seed={seed}, epoch={epoch}")
    state = np.random.SeedSequence([seed, epoch]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator for one epoch's shuffling (pass it as ``DataLoader(generator=...)``).

    The order depends on nothing else, so resuming at an epoch boundary reproduces the order the
    uninterrupted run would have used.
    """
    generator = torch.Generator()
    generator.manual_seed(epoch_seed(seed, epoch))
    return generator


def capture_rng_state() -> dict[str, Any]:
    """Snapshot every global generator as tensors and plain Python values.

    Only tensors, ints, floats, strings and None are used, so the snapshot survives
    ``torch.load(weights_only=True)``; numpy's key array is stored as an int64 tensor.
    """
    py_version, py_internal, py_gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": {
            "version": int(py_version),
            "internal": torch.tensor(py_internal, dtype=torch.int64),
            "gauss_next": None if py_gauss is None else float(py_gauss),
        },
        "numpy": {
            "kind": str(np_kind),
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64).copy()),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_gauss),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Put back a snapshot from :func:`capture_rng_state`.

    CUDA states are restored for as many devices as both the snapshot and this machine have;
    a snapshot taken on a GPU machine still restores the CPU-side generators on a CPU machine.
    """
    missing = [key for key in ("python", "numpy", "torch") if key not in state]
    if missing:
        raise CheckpointError(f"RNG state lacks {', '.join(missing)}; it was not made by capture_rng_state")
    py = state["python"]
    internal = tuple(int(v) for v in py["internal"].tolist())
    random.setstate((int(py["version"]), internal, py["gauss_next"]))
    npy = state["numpy"]
    keys = npy["keys"].numpy().astype(np.uint32)
    np.random.set_state(
        (npy["kind"], keys, int(npy["pos"]), int(npy["has_gauss"]), float(npy["cached_gaussian"]))
    )
    torch.set_rng_state(state["torch"].cpu())
    cuda_states = state.get("cuda")
    if cuda_states and torch.cuda.is_available():
        for index in range(min(len(cuda_states), torch.cuda.device_count())):
            torch.cuda.set_rng_state(cuda_states[index].cpu(), index)
