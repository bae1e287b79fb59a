"""Mixed precision chosen by one recipe string, so training loops never branch on the device.

``mode`` is ``none``, ``bf16`` or ``fp16``. bf16 needs no loss scaling. fp16 is honoured on
CUDA only; elsewhere it falls back to bf16 with a one-line warning, because fp16 autocast and
loss scaling on CPU/MPS are slow or incomplete while bf16 has the same memory saving. The
grad scaler is enabled exactly when fp16 is in effect, and a disabled scaler is a pass-through,
so ``scaler.scale(loss).backward(); scaler.step(opt); scaler.update()`` is always correct.
"""

from __future__ import annotations

import contextlib
import warnings

import torch

from wsss.errors import ConfigError

AMP_MODES = ("none", "bf16", "fp16")


def amp_dtype(device: torch.device, mode: str) -> torch.dtype | None:
    """The autocast dtype actually used for ``mode`` on ``device`` (None: full precision)."""
    if mode not in AMP_MODES:
        raise ConfigError(f"amp mode {mode!r} is not one of {', '.join(AMP_MODES)}")
    if mode == "none":
        return None
    if mode == "fp16" and device.type != "cuda":
        warnings.warn(
            f"amp: fp16 is only used on CUDA; running bf16 autocast on {device.type} instead",
            stacklevel=3,
        )
        return torch.bfloat16
    return torch.float16 if mode == "fp16" else torch.bfloat16


def autocast(device: torch.device, mode: str) -> contextlib.AbstractContextManager[None]:
    """A context that runs the forward pass in ``mode``'s precision on ``device`` (or does nothing)."""
    dtype = amp_dtype(device, mode)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def make_grad_scaler(device: torch.device, mode: str) -> torch.amp.GradScaler:
    """A ``GradScaler`` that is enabled only when fp16 autocast is in effect on ``device``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fallback warning is given once, by autocast()
        dtype = amp_dtype(device, mode)
    return torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
