"""Turn the recipe's ``device`` string into a ``torch.device``, failing early and clearly.

Training code takes the resolved device and never calls ``.cuda()`` itself, so the same code
runs on a laptop CPU, a Mac and a GPU node.
"""

from __future__ import annotations

import torch

from wsss.errors import ConfigError

_KNOWN_TYPES = ("cpu", "cuda", "mps")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(spec: str = "auto", local_rank: int | None = None) -> torch.device:
    """Resolve ``auto | cpu | cuda | cuda:N | mps`` to an available device.

    ``auto`` prefers CUDA, then MPS, then CPU. Under ``torchrun`` pass ``local_rank`` so that a
    bare ``cuda`` (or ``auto`` on a GPU node) becomes ``cuda:<local_rank>``, one GPU per process.
    """
    if not isinstance(spec, str):
        raise ConfigError(f"device must be a string such as 'auto', 'cpu' or 'cuda:0', got {spec!r}")
    text = spec.strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            text = "cuda"
        elif _mps_available():
            text = "mps"
        else:
            text = "cpu"
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(
            f"device {spec!r} is not a valid device; use one of auto, cpu, cuda, cuda:N, mps"
        ) from exc
    if device.type not in _KNOWN_TYPES:
        raise ConfigError(
            f"device {spec!r} has unsupported type {device.type!r}; use auto, cpu, cuda, cuda:N or mps"
        )
    if device.type == "cuda":
        return _check_cuda(spec, device, local_rank)
    if device.type == "mps" and not _mps_available():
        raise ConfigError(
            f"device {spec!r} asks for Apple MPS, but it is not available here; use device: cpu or auto"
        )
    return device


def _check_cuda(spec: str, device: torch.device, local_rank: int | None) -> torch.device:
    if not torch.cuda.is_available():
        raise ConfigError(
            f"device {spec!r} asks for CUDA, but torch.cuda.is_available() is False on this machine "
            "(no GPU or a CPU-only torch build); use device: cpu or auto"
        )
    index = device.index
    if index is None and local_rank is not None:
        index = local_rank
    count = torch.cuda.device_count()
    if index is not None and not 0 <= index < count:
        raise ConfigError(f"device {spec!r} asks for CUDA device {index}, but only {count} are visible")
    return torch.device("cuda", index if index is not None else torch.cuda.current_device())
