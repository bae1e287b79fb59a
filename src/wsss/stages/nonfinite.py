"""The training loop's ``nonfinite`` policy: a NaN/inf loss or gradient never reaches the weights.

Checked every step: each loss term before ``backward`` (the loop reads their values anyway, so
this costs nothing more), and, when fp16 AMP's GradScaler is not doing it already, the gradients
after ``backward`` through one fused per-tensor norm (``torch.nn.utils.get_total_norm``): 0.5 % of a
MobileNetV2 step and 1 % of a ResNet-50 step at batch 4 of 128² on one CPU thread, less at real
sizes. ``stop`` raises :class:`~wsss.errors.NumericalError`; ``skip`` drops the optimizer step,
within :class:`SkipBudget`'s bound.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from wsss.errors import NumericalError
from wsss.stages.context import StageContext

MAX_SKIPPED_SHARE = 0.1  # of an epoch's steps (at least one step per epoch may be skipped)
MAX_SKIPPED_IN_A_ROW = 5
_NAMES_SHOWN = 8


def nonfinite_terms(values: dict[str, float]) -> list[str]:
    """The loss terms whose value is NaN or infinite, as ``name=value``."""
    return [f"{k}={v}" for k, v in values.items() if not math.isfinite(v)]


def nonfinite_grads(model: nn.Module) -> list[str]:
    """Names of the parameters whose gradient holds NaN or inf; empty when all are finite.

    One fused norm over every gradient decides; only a failing step looks at each tensor.
    """
    named = [(n, p.grad) for n, p in model.named_parameters() if p.grad is not None]
    if not named:
        return []
    total = _total_norm([g for _, g in named])
    if bool(torch.isfinite(total)):
        return []
    bad = [n for n, g in named if not bool(torch.isfinite(g).all())]
    return bad or ["(gradient norm above the float range)"]


def _total_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    """The gradients' 2-norm, fused where torch has it (``get_total_norm``: torch >= 2.6)."""
    fused = getattr(torch.nn.utils, "get_total_norm", None)
    if fused is not None:
        return fused(grads, norm_type=2.0)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))


def batch_names(batch: Any) -> list[str]:
    """The image names of a batch that carries them (a ``name`` entry), else none."""
    names = batch.get("name") if isinstance(batch, dict) else None
    if isinstance(names, str):
        return [names]
    if isinstance(names, Iterable) and not isinstance(names, torch.Tensor):
        return [str(n) for n in names]
    return []


def shorten(items: list[str]) -> str:
    """At most a few items, then how many there are in all."""
    shown = ", ".join(items[:_NAMES_SHOWN])
    return shown if len(items) <= _NAMES_SHOWN else f"{shown}, … ({len(items)} in all)"


def section_of(ctx: StageContext, cfg: Any) -> str | None:
    """The recipe key of the stage settings ``cfg`` (``classifier``, ``segmentation`` …), if any."""
    for f in dataclasses.fields(ctx.recipe):
        if getattr(ctx.recipe, f.name) is cfg:
            return f.name
    return None


@dataclasses.dataclass
class SkipBudget:
    """How many steps ``nonfinite: skip`` may drop: ``MAX_SKIPPED_SHARE`` of an epoch's steps (at
    least one) and ``MAX_SKIPPED_IN_A_ROW`` in a row; more means the run itself went wrong."""

    steps_per_epoch: int
    total: int = 0  # over the whole training, resumed epochs included
    in_epoch: int = 0
    in_a_row: int = 0

    @property
    def per_epoch(self) -> int:
        return max(1, int(MAX_SKIPPED_SHARE * self.steps_per_epoch))

    def new_epoch(self) -> None:
        self.in_epoch = self.in_a_row = 0

    def good_step(self) -> None:
        self.in_a_row = 0

    def skip(self) -> str | None:
        """Count one skipped step; a description of the bound when it is now exceeded."""
        self.total += 1
        self.in_epoch += 1
        self.in_a_row += 1
        if self.in_epoch > self.per_epoch:
            return (
                f"{self.in_epoch} steps of this epoch were skipped, more than nonfinite: skip allows "
                f"({self.per_epoch}: {MAX_SKIPPED_SHARE:.0%} of its {self.steps_per_epoch} steps)"
            )
        if self.in_a_row > MAX_SKIPPED_IN_A_ROW:
            return (
                f"{self.in_a_row} steps in a row were skipped, more than nonfinite: skip allows "
                f"({MAX_SKIPPED_IN_A_ROW})"
            )
        return None


@dataclasses.dataclass
class Where:
    """The step a non-finite value came from, for messages."""

    stage: str
    epoch: int  # 0-based: also the number of finished epochs
    epochs: int
    step: int  # 1-based global step of the bad batch
    index: int  # 1-based batch index within the epoch
    steps_per_epoch: int
    images: list[str]

    def __str__(self) -> str:
        images = f"; images: {shorten(self.images)}" if self.images else ""
        return (
            f"{self.stage}: epoch {self.epoch + 1}/{self.epochs}, step {self.step} "
            f"(batch {self.index}/{self.steps_per_epoch} of the epoch){images}"
        )


def nonfinite_error(
    where: Where, what: str, state_path: Path, section: str | None, cfg: Any, reason: str | None = None
) -> NumericalError:
    """The ``stop`` error (or the ``skip`` bound's): where, what, the checkpoint kept, what to change."""

    def key(k: str) -> str:
        return f"{section}.{k}" if section else k

    if where.epoch > 0:
        kept = (
            f"The last finished checkpoint, {state_path} (epoch {where.epoch}), is kept and a rerun "
            "resumes from it, but the same settings will meet the same batch again"
        )
    else:
        kept = f"No epoch has finished yet, so there is no checkpoint in {state_path}; a rerun starts over"
    fixes = [f"lower {key('lr')} (now {cfg.lr:g})"]
    if cfg.amp != "none":
        fixes.append(f"set {key('amp')}: none (now {cfg.amp})")
    if cfg.nonfinite == "stop":
        fixes.append(f"set {key('nonfinite')}: skip to skip such steps")
    else:
        fixes.append("check the images named above")
    why = f" {reason}." if reason else ""
    return NumericalError(f"{where}: {what}.{why} {kept}. To go on: {', or '.join(fixes)}.")
