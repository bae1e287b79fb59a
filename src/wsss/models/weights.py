"""Reading weight files and loading them by key, loudly.

The classic failure in this field is a checkpoint whose keys carry a different prefix
(``module.``, ``backbone.``): a permissive loader then loads *nothing* and training silently
starts from random weights. Here every load reports matched / missing / unexpected /
shape-mismatched keys and fails with ``CheckpointError`` when fewer than expected match.
"""

from __future__ import annotations

import argparse
import logging
import math
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from wsss.errors import CheckpointError

log = logging.getLogger(__name__)

# Container keys under which training scripts nest the model's state_dict, in priority order.
WRAPPER_KEYS = ("model", "state_dict")


def load_checkpoint_file(path: str | Path, *, trust_pickle: bool = False) -> dict[str, Tensor]:
    """Read a state_dict from ``.pth``/``.pt`` (torch) or ``.safetensors``; unwrap ``{'model': …}``.

    torch files load with ``weights_only=True``; ``argparse.Namespace`` (the ``args`` entry of
    DeiT/Conformer training checkpoints) is allowed because it only holds plain values. Any
    other Python object needs ``trust_pickle=True``, which runs the full unpickler — only for
    files from a source you trust.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist or is not a file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: object = load_file(str(path), device="cpu")
        elif trust_pickle:
            obj = torch.load(path, map_location="cpu", weights_only=False)  # explicit trust_pickle=True
        else:
            with torch.serialization.safe_globals([argparse.Namespace]):
                obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL [\w.]+", str(exc))
        reason = found.group(0) if found else str(exc).splitlines()[0]
        raise CheckpointError(
            f"checkpoint '{path}' contains Python objects that weights_only loading refuses ({reason}), and "
            "unpickling them could run code hidden in the file. If you trust its source, re-save its tensors "
            "once as a plain state_dict: in Python, torch.save(torch.load(PATH, weights_only=False)"
            "['model'], 'plain.pth') (or the dict that holds the tensors), or save_file from safetensors; "
            "API callers may pass trust_pickle=True"
        ) from exc
    except Exception as exc:  # torch's zip/pickle readers fail on a damaged file with many types
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise CheckpointError(
            f"cannot read checkpoint '{path}' ({type(exc).__name__}: {first}); it is truncated or not a "
            ".pth/.pt/.safetensors weight file: download it again"
        ) from exc
    return _unwrap_state_dict(obj, path)


def _unwrap_state_dict(obj: object, path: Path) -> dict[str, Tensor]:
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"checkpoint '{path}' holds a {type(obj).__name__}, not a state_dict; save model.state_dict() instead"
        )
    for key in WRAPPER_KEYS:
        inner = obj.get(key)
        if isinstance(inner, Mapping):
            obj = inner
            break
    bad = [str(k) for k, v in obj.items() if not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(
            f"checkpoint '{path}' is not a state_dict: {len(bad)} entries are not tensors "
            f"(e.g. {', '.join(repr(b) for b in bad[:3])}); expected a bare state_dict or "
            f"one under {' / '.join(repr(k) for k in WRAPPER_KEYS)}"
        )
    return {str(k): v for k, v in obj.items()}


def strip_prefixes(
    state: Mapping[str, Tensor], prefixes: tuple[str, ...] = ("module.",)
) -> tuple[dict[str, Tensor], int]:
    """Remove leading ``prefixes`` (repeatedly) from every key; return the new dict and how many keys changed."""
    out: dict[str, Tensor] = {}
    changed = 0
    for key, value in state.items():
        new = key
        stripping = True
        while stripping:
            stripping = False
            for p in prefixes:
                if p and new.startswith(p):
                    new = new[len(p) :]
                    stripping = True
        if new in out:
            raise CheckpointError(f"stripping {prefixes} maps two checkpoint keys onto '{new}'")
        changed += new != key
        out[new] = value
    return out, changed


@dataclass
class LoadReport:
    """What a by-key load did. ``not_loaded`` are model tensors left at their initial values."""

    where: str
    model_keys: int
    matched: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    not_loaded: list[str] = field(default_factory=list)
    # model tensors of layers the file cannot hold (modules inserted into a backbone, e.g. AMR's
    # AMMs): absent by design, so listed here instead of in ``missing``/``not_loaded``
    new_layers: list[str] = field(default_factory=list)
    stripped: int = 0  # keys renamed by strip_prefixes before loading (set by the caller)

    def counts(self) -> str:
        text = (
            f"{len(self.matched)}/{self.model_keys} model tensors matched, {len(self.missing)} missing, "
            f"{len(self.unexpected)} unexpected, {len(self.mismatched)} shape-mismatched, "
            f"{len(self.skipped)} skipped"
        )
        if self.new_layers:
            text += f", {len(self.new_layers)} of new (inserted) layers keep their initialisation"
        return text

    def summary(self) -> str:
        text = f"{self.where}: {self.counts()}"
        if self.stripped:
            text += f" ({self.stripped} keys had a prefix stripped)"
        if self.not_loaded:
            text += f"; not loaded: {', '.join(self.not_loaded[:8])}"
            if len(self.not_loaded) > 8:
                text += f" … (+{len(self.not_loaded) - 8})"
        return text


def load_weights(
    model: nn.Module,
    state: Mapping[str, Tensor],
    *,
    min_matched: int | float,
    skip: tuple[str, ...] = (),
    where: str = "checkpoint",
    new_layers: tuple[str, ...] = (),
) -> LoadReport:
    """Copy every ``state`` tensor whose key and shape match into ``model``; report the rest.

    ``min_matched`` is an absolute number of model tensors (int) or a fraction of them
    (float in (0, 1]). ``skip`` lists key prefixes to leave out on purpose (e.g. heads trained
    for another class set); ``new_layers`` module-name prefixes of model layers the file is not
    expected to hold (reported in ``new_layers``, not as missing). Raises ``CheckpointError``
    naming ``where`` and the counts when too few tensors match; the model is then left unchanged.
    """
    own = model.state_dict()
    required = _required_count(min_matched, len(own))
    report = LoadReport(where=where, model_keys=len(own))
    for key, value in state.items():
        if skip and key.startswith(skip):
            report.skipped.append(key)
        elif key not in own:
            report.unexpected.append(key)
        elif tuple(value.shape) != tuple(own[key].shape):
            report.mismatched.append((key, tuple(value.shape), tuple(own[key].shape)))
        else:
            report.matched.append(key)
    matched = set(report.matched)
    report.new_layers = [k for k in own if k not in matched and _under_any(k, new_layers)]
    new = set(report.new_layers)
    report.missing = [k for k in own if k not in state and k not in new]
    report.not_loaded = [k for k in own if k not in matched and k not in new]
    if len(report.matched) < required:
        hint = _diagnose(report, own) or (
            f" Is it a checkpoint of another architecture? Use weights made for {type(model).__name__} "
            "(the recipe's backbone), or none (pretrained: null) to train from scratch."
        )
        raise CheckpointError(
            f"checkpoint '{where}' does not fit the model: {report.counts()}; at least {required} must match.{hint}"
        )
    model.load_state_dict({k: state[k] for k in report.matched}, strict=False)
    log.info("loaded %s", report.summary())
    return report


def _under_any(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key.startswith(p + ".") for p in prefixes)


def _required_count(min_matched: int | float, total: int) -> int:
    if isinstance(min_matched, bool) or not isinstance(min_matched, (int, float)):
        raise TypeError(f"min_matched must be an int count or a float fraction, got {min_matched!r}")
    if isinstance(min_matched, float):
        if not 0.0 < min_matched <= 1.0:
            raise ValueError(f"min_matched as a fraction must be in (0, 1], got {min_matched}")
        return math.ceil(min_matched * total)
    return min_matched


def _diagnose(report: LoadReport, own: Mapping[str, Tensor]) -> str:
    """Point at the usual cause: a key prefix that differs between checkpoint and model."""
    for ukey in report.unexpected[:50]:
        parts = ukey.split(".")
        for i in range(1, len(parts)):
            if ".".join(parts[i:]) in own:
                prefix = ".".join(parts[:i]) + "."
                return (
                    f" Checkpoint keys look prefixed with '{prefix}' (e.g. '{ukey}'); "
                    f"strip it with strip_prefixes(state, ('{prefix}',))."
                )
        for key in own:
            if key.endswith("." + ukey):
                prefix = key[: -len(ukey)]
                return f" Model keys carry the prefix '{prefix}' (e.g. '{key}'); load into that submodule."
    if report.mismatched:
        key, got, want = report.mismatched[0]
        return f" E.g. '{key}' has shape {list(got)} in the file but {list(want)} in the model."
    return ""
