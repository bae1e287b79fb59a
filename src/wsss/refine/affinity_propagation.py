"""Spreading token scores along a dense token affinity (UniA's P3), with optional normalisation.

Index convention: a ``gh×gw`` token grid is flattened row-major, token ``i = row·gw + col``.
``aff[b, i, j]`` is the weight with which source token ``i`` sends its scores to target token
``j``; :func:`propagate` computes ``c_j = Σ_i p_i · A(i, j)``, i.e. ``scores (C×N) @ A (N×N)``.

UniA's training code propagates with the raw sigmoid affinity (``"none"``, the default here).
``"row"`` makes every source's outgoing weights sum to 1; ``"sinkhorn"`` makes the matrix
approximately doubly stochastic — the paper's "Sinkhorn-based" wording, absent from its code.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from wsss.errors import ConfigError, DataError

AFFINITY_NORMS = ("none", "row", "sinkhorn")


def radius_mask(h: int, w: int, radius: int, device: torch.device | str | None = None) -> Tensor:
    """``N×N`` bool, ``N = h·w``: True where two tokens are at most ``radius`` apart in row *and* column.

    Each token's window is the ``(2r+1)²`` square around it (clipped at the border), itself included.
    """
    if int(radius) < 0:
        raise ConfigError(f"affinity radius must be a non-negative integer, got {radius}")
    idx = torch.arange(h * w, device=device)
    rows, cols = idx // w, idx % w
    near_rows = (rows[:, None] - rows[None, :]).abs() <= radius
    near_cols = (cols[:, None] - cols[None, :]).abs() <= radius
    return near_rows & near_cols


def _grid_for(n: int, grid: tuple[int, int] | None) -> tuple[int, int]:
    """The token grid: as given, or the square one when ``n`` is a perfect square."""
    if grid is not None:
        gh, gw = (int(g) for g in grid)
        if gh * gw != n:
            raise DataError(f"affinity has {n} tokens but grid {gh}×{gw} has {gh * gw}")
        return gh, gw
    side = math.isqrt(n)
    if side * side != n:
        raise ConfigError(f"affinity with {n} tokens is not square: pass grid=(rows, cols) with the radius")
    return side, side


def normalise_affinity(
    aff: Tensor,
    norm: str = "none",
    *,
    radius: int | None = None,
    grid: tuple[int, int] | None = None,
    iters: int = 3,
    eps: float = 0.05,
) -> Tensor:
    """``B×N×N`` affinity restricted to a radius window (if ``radius``) and normalised by ``norm``.

    * ``"none"``: the raw affinity, zero outside the window;
    * ``"row"``: the masked affinity divided by its row sums (each source's weights sum to 1);
    * ``"sinkhorn"``: ``K = exp(A/eps) ⊙ M_radius``, then ``iters`` rounds of row then column
      normalisation (columns sum to 1 exactly, rows approximately). Done in the log domain so that
      a small ``eps`` cannot overflow.
    """
    if norm not in AFFINITY_NORMS:
        raise ConfigError(f"affinity_norm {norm!r} is not one of {', '.join(AFFINITY_NORMS)}")
    if aff.dim() != 3 or aff.shape[-1] != aff.shape[-2]:
        raise DataError(f"affinity must be B×N×N, got {tuple(aff.shape)}")
    if norm == "sinkhorn":
        if int(iters) < 1:
            raise ConfigError(f"sinkhorn iters must be >= 1, got {iters}")
        if eps <= 0:
            raise ConfigError(f"sinkhorn eps must be > 0, got {eps}")
    mask = None
    if radius is not None:
        gh, gw = _grid_for(aff.shape[-1], grid)
        mask = radius_mask(gh, gw, radius, device=aff.device)
    if norm == "sinkhorn":
        work = aff.float() if aff.dtype in (torch.float16, torch.bfloat16) else aff
        log_k = work / eps
        if mask is not None:
            log_k = log_k.masked_fill(~mask, float("-inf"))
        for _ in range(int(iters)):
            log_k = log_k - torch.logsumexp(log_k, dim=-1, keepdim=True)
            log_k = log_k - torch.logsumexp(log_k, dim=-2, keepdim=True)
        return log_k.exp().to(aff.dtype)
    out = aff if mask is None else aff.masked_fill(~mask, 0.0)
    if norm == "row":
        out = out / out.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(out.dtype).tiny)
    return out


def propagate(cams: Tensor, aff: Tensor) -> Tensor:
    """``B×C×h×w`` scores sent along ``B×N×N`` affinity: ``c_j = Σ_i p_i · A(i, j)``, ``N = h·w``."""
    b, c, h, w = cams.shape
    if aff.shape != (b, h * w, h * w):
        raise DataError(
            f"affinity {tuple(aff.shape)} does not fit scores {tuple(cams.shape)}: need "
            f"({b}, {h * w}, {h * w})"
        )
    out = torch.bmm(cams.reshape(b, c, h * w), aff.to(cams.dtype))
    return out.reshape(b, c, h, w)
