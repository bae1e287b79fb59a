"""torchrun + DDP helpers that are harmless in a plain single process.

Every helper works whether or not a process group exists: without ``torchrun`` (no ``RANK`` /
``WORLD_SIZE`` in the environment) the world is one process, collectives return their input
and ``wrap_ddp`` returns the model unchanged. Generation stages use :func:`shard_indices`,
which never pads (unlike ``DistributedSampler``), so metrics never count an image twice.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from wsss.errors import ConfigError


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job: global rank, world size and rank on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None  # None: no process group (single process)

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None or text.strip() == "":
        return default
    try:
        return int(text)
    except ValueError as exc:
        raise ConfigError(
            f"environment variable {name}={text!r} is not an integer (set by torchrun)"
        ) from exc


def init_distributed(backend: str | None = None, init_method: str | None = None) -> DistInfo:
    """Join the process group described by torchrun's ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``.

    Without those variables (or with ``WORLD_SIZE=1``) nothing is initialised and the result is
    a world of one. ``backend`` defaults to NCCL when CUDA is available, else gloo; on NCCL the
    process is pinned to ``cuda:LOCAL_RANK``. ``init_method`` defaults to ``env://`` (torchrun's
    ``MASTER_ADDR``/``MASTER_PORT``); tests pass a ``file://`` store instead.
    """
    if dist.is_available() and dist.is_initialized():
        return DistInfo(
            rank=dist.get_rank(),
            world_size=dist.get_world_size(),
            local_rank=_env_int("LOCAL_RANK", 0),
            backend=str(dist.get_backend()),
        )
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(f"torchrun environment is inconsistent: RANK={rank}, WORLD_SIZE={world_size}")
    if world_size == 1:
        return DistInfo(rank=0, world_size=1, local_rank=local_rank, backend=None)
    if not dist.is_available():
        raise ConfigError("WORLD_SIZE > 1 but this torch build has no torch.distributed support")
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(
        backend=backend, init_method=init_method or "env://", rank=rank, world_size=world_size
    )
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, backend=backend)


def _group_active() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """Global rank: from the process group, else torchrun's ``RANK`` (before init), else 0."""
    if _group_active():
        return dist.get_rank()
    return _env_int("RANK", 0)


def get_world_size() -> int:
    """World size of the process group, or 1 without one."""
    return dist.get_world_size() if _group_active() else 1


def is_main() -> bool:
    """True on rank 0 (and in a single process): the rank that logs and writes checkpoints."""
    return get_rank() == 0


def barrier() -> None:
    """Wait for every rank; a no-op without a process group."""
    if _group_active():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all ranks in place and return it (e.g. confusion matrices, counts)."""
    if _group_active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def shard_indices(n: int, rank: int, world: int) -> list[int]:
    """Round-robin share of ``range(n)`` for ``rank`` of ``world``: disjoint, covering, unpadded."""
    if n < 0:
        raise ConfigError(f"cannot shard a negative number of items ({n})")
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"shard {rank}/{world} is invalid; need 0 <= rank < world and world >= 1")
    return list(range(rank, n, world))


def parse_shard(text: str) -> tuple[int, int]:
    """Parse ``"i/n"`` (0-based shard ``i`` of ``n``, e.g. a SLURM array task) into ``(i, n)``."""
    parts = str(text).strip().split("/")
    try:
        if len(parts) != 2:
            raise ValueError
        index, count = int(parts[0]), int(parts[1])
    except ValueError as exc:
        raise ConfigError(f"shard {text!r} is not of the form i/n (for example 0/4)") from exc
    if count < 1 or not 0 <= index < count:
        raise ConfigError(f"shard {text!r} is out of range: i is 0-based, so it must lie in 0..n-1")
    return index, count


def wrap_ddp(
    model: nn.Module,
    info: DistInfo,
    *,
    sync_bn: bool = False,
    find_unused_parameters: bool = False,
    static_graph: bool = False,
) -> nn.Module:
    """Wrap ``model`` (already on its device) in DDP when the world has more than one process.

    ``sync_bn`` converts every BatchNorm to ``SyncBatchNorm`` first, which CNNs trained with a
    small per-GPU batch need; it is GPU-only, so asking for it on CPU raises ``ConfigError``. In a
    single process the model is returned unchanged (no conversion: plain BatchNorm is exact there).
    """
    if not info.is_distributed:
        return model
    first = next(model.parameters(), None)
    on_gpu = first is not None and first.device.type == "cuda"
    if sync_bn:
        if not on_gpu:
            raise ConfigError(
                "sync_bn needs the model on CUDA devices (torch's SyncBatchNorm is GPU-only); "
                "turn sync_bn off for CPU/gloo runs"
            )
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    device_ids = [first.device.index] if on_gpu else None
    return DistributedDataParallel(
        model,
        device_ids=device_ids,
        find_unused_parameters=find_unused_parameters,
        static_graph=static_graph,
    )


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside DDP / DataParallel / ``torch.compile`` wrappers (for saving)."""
    while True:
        if isinstance(model, (DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile's wrapper
            model = model._orig_mod
        else:
            return model


def destroy() -> None:
    """Leave the process group (call once at the end of a torchrun job); a no-op without one."""
    if _group_active():
        dist.destroy_process_group()
