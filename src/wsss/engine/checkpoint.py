"""Training-state checkpoints that resume exactly, and published weights in safetensors.

A training state holds everything the next step depends on: model, optimizer, scheduler and
grad-scaler state, epoch and step counters, and every RNG. It contains only tensors and plain
Python values, so it loads with ``torch.load(weights_only=True)`` and never runs pickled code.
Published weights are a ``.safetensors`` file plus a JSON sidecar naming the architecture and
classes, readable without this toolkit.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

import wsss
from wsss.engine.distributed import unwrap
from wsss.engine.seeding import capture_rng_state, restore_rng_state
from wsss.errors import CheckpointError
from wsss.files import atomic_path, write_json

log = logging.getLogger(__name__)

STATE_FORMAT = "wsss.training_state"
STATE_VERSION = 1
WEIGHTS_FORMAT = "wsss.weights"
WEIGHTS_VERSION = 1

_PLAIN_TYPES = (str, int, float, bool, type(None), torch.Tensor)


def save_training_state(
    path: str | os.PathLike,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    step: int,
    scaler: torch.amp.GradScaler | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Atomically write everything needed to continue training after ``epoch``/``step``.

    ``epoch`` is the number of finished epochs (the epoch to start from on resume) and ``step``
    the number of finished optimizer steps. ``extra`` must hold only tensors and plain Python
    values (checked here, so a bad value fails at save time rather than at resume).
    """
    path = Path(path)
    extra = dict(extra or {})
    _check_plain(extra, f"extra (for {path})")
    state: dict[str, Any] = {
        "format": STATE_FORMAT,
        "version": STATE_VERSION,
        "wsss_version": wsss.__version__,
        "epoch": int(epoch),
        "step": int(step),
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": capture_rng_state(),
        "extra": extra,
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def load_training_state(
    path: str | os.PathLike,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scaler: torch.amp.GradScaler | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    map_location: str | torch.device = "cpu",
    restore_rng: bool = True,
) -> dict[str, Any]:
    """Restore a :func:`save_training_state` file into freshly built objects.

    Returns ``{"epoch", "step", "extra"}``. Raises :class:`CheckpointError` naming the file when it
    is unreadable, not a training state, or does not fit ``model`` (with counts of missing,
    unexpected and wrongly shaped keys) or ``optimizer``.
    """
    path = Path(path)
    try:
        state = _torch_load(path, map_location)
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise CheckpointError(
                f"{path} is not a wsss training state (no format marker {STATE_FORMAT!r}); "
                "plain weights load with the model loaders instead"
            )
        version = state.get("version", -1)
        if not isinstance(version, int) or version > STATE_VERSION:
            raise CheckpointError(
                f"{path} has training-state version {version!r}, newer than this wsss "
                f"understands ({STATE_VERSION}); upgrade wsss"
            )
        lacking = [k for k in ("model", "epoch", "step", "rng") if k not in state]
        if lacking or not isinstance(state["model"], Mapping):
            raise CheckpointError(
                f"{path} is an incomplete training state (no {', '.join(lacking) or 'model'})"
            )
        load_model_state(unwrap(model), state["model"], source=path)
        if optimizer is not None:
            _load_component(path, "optimizer", state.get("optimizer"), optimizer)
        if scheduler is not None:
            _load_component(path, "scheduler", state.get("scheduler"), scheduler)
        if scaler is not None:
            _load_scaler(path, state.get("scaler"), scaler)
        if restore_rng:
            restore_rng_state(state["rng"])
        return {"epoch": int(state["epoch"]), "step": int(state["step"]), "extra": state.get("extra", {})}
    except CheckpointError as exc:
        raise CheckpointError(
            f"{exc}; to train from the start instead of resuming, delete {path} (or use another run directory)"
        ) from exc.__cause__


def load_model_state(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, source: str | os.PathLike
) -> int:
    """Load ``state_dict`` strictly, or raise a :class:`CheckpointError` that counts what is wrong.

    A ``module.`` prefix left by DDP is stripped. Returns the number of tensors loaded.
    """
    model = unwrap(model)
    state_dict = _strip_prefix(dict(state_dict), "module.")
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or mismatched:
        problems: list[str] = []
        if missing:
            problems.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if mismatched:
            problems.append(f"{len(mismatched)} with a different shape (e.g. {'; '.join(mismatched[:3])})")
        matched = len(expected) - len(missing) - len(mismatched)
        raise CheckpointError(
            f"{source} does not fit {type(model).__name__}: {matched}/{len(expected)} keys match; "
            + ", ".join(problems)
            + ". Was it saved from a different architecture or number of classes? Load it into the model "
            "it was saved from (same recipe: model, backbone, classes)"
        )
    model.load_state_dict(state_dict, strict=True)
    return len(expected)


def export_weights(path: str | os.PathLike, model: nn.Module, meta: dict[str, Any]) -> tuple[Path, Path]:
    """Publish the model's weights as ``path`` (``.safetensors``) plus a ``.json`` sidecar.

    ``meta`` should name at least the architecture and classes (plus anything a user needs to
    rebuild the model: backbone, stride, mean/std); it must be JSON-serialisable. Both files are
    written atomically; returns their paths.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise CheckpointError(f"exported weights must end in .safetensors, got {path}")
    try:
        meta_text = json.dumps(meta)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"metadata for {path} is not JSON-serialisable: {exc}") from exc
    # clone: safetensors refuses tensors that share storage (tied weights), so give each its own
    tensors = {k: v.detach().cpu().clone().contiguous() for k, v in unwrap(model).state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt", "wsss_meta": meta_text})
    sidecar = path.with_suffix(".json")
    write_json(
        sidecar,
        {
            "format": WEIGHTS_FORMAT,
            "version": WEIGHTS_VERSION,
            "wsss_version": wsss.__version__,
            "weights": path.name,
            "num_tensors": len(tensors),
            "num_parameters": sum(p.numel() for p in unwrap(model).parameters()),
            **meta,
        },
    )
    return path, sidecar


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of an :func:`export_weights` file (CheckpointError naming it when unreadable)."""
    try:
        return load_file(str(path))
    except (OSError, SafetensorError) as exc:
        raise CheckpointError(f"cannot read weights file {path}: {exc}") from exc


def load_weights(path: str | os.PathLike, model: nn.Module) -> dict[str, Any]:
    """Load an :func:`export_weights` file into ``model`` strictly; return its sidecar metadata."""
    path = Path(path)
    load_model_state(model, read_weights(path), source=path)
    sidecar = path.with_suffix(".json")
    if not sidecar.exists():
        return {}
    try:
        return json.loads(sidecar.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"sidecar {sidecar} is not valid JSON: {exc}") from exc


def _torch_load(path: Path, map_location: str | torch.device) -> Any:
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL [\w.]+", str(exc))
        reason = found.group(0) if found else "objects other than tensors and plain values"
        raise CheckpointError(
            f"{path} holds objects that are not plain tensors/values ({reason}), which weights_only loading "
            "refuses: unpickling them could run code hidden in the file"
        ) from exc
    except Exception as exc:  # torch's zip/pickle readers fail on a damaged file with many types
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise CheckpointError(
            f"{path} is not a readable torch checkpoint (truncated or corrupt?): {type(exc).__name__}: {first}"
        ) from exc


def _load_component(path: Path, name: str, saved: Any, target: Any) -> None:
    if saved is None:
        raise CheckpointError(
            f"{path} has no {name} state, but a {type(target).__name__} was given to restore"
        )
    try:
        target.load_state_dict(saved)
    except (ValueError, KeyError, RuntimeError) as exc:
        raise CheckpointError(
            f"{name} state in {path} does not fit this {type(target).__name__} "
            f"(different parameter groups or settings?): {exc}"
        ) from exc


def _load_scaler(path: Path, saved: dict[str, Any] | None, scaler: torch.amp.GradScaler) -> None:
    if not saved:
        if scaler.is_enabled():
            log.warning("%s has no fp16 grad-scaler state; the loss scale starts afresh", path)
        return
    if not scaler.is_enabled():
        log.warning("%s has fp16 grad-scaler state but mixed precision is not fp16 now; ignoring it", path)
        return
    _load_component(path, "scaler", saved, scaler)


def _strip_prefix(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    if state_dict and all(k.startswith(prefix) for k in state_dict):
        return {k[len(prefix) :]: v for k, v in state_dict.items()}
    return state_dict


def _check_plain(value: Any, where: str) -> None:
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise CheckpointError(f"{where}: key {key!r} must be a str or int")
            _check_plain(item, f"{where}[{key!r}]")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _check_plain(item, f"{where}[{index}]")
    elif not isinstance(value, _PLAIN_TYPES):
        raise CheckpointError(
            f"{where} is a {type(value).__name__}; checkpoints hold only tensors, numbers, strings, "
            "lists and dicts (convert it, e.g. dataclasses.asdict or .tolist())"
        )
