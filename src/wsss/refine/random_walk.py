"""PSA's random walk: spread CAM scores along predicted pixel affinities, without a dense matrix.

The walk (PSA, CVPR'18; IRN uses the same transition) on an ``h×w`` grid of ``n = h·w`` nodes:

1. ``W``: the affinity of every radius pair, entered in both directions, plus 1 on the diagonal;
2. ``W^∘β`` (element-wise power; sharpens weak links towards 0);
3. ``T = W^∘β D⁻¹`` with ``D`` the column sums (columns of ``T`` sum to 1);
4. ``scores · T^t`` with ``t = 2^logt`` (IRN calls ``logt`` ``exp_times``).

The authors square a dense ``n×n`` ``T`` ``logt`` times: O(n²) memory and O(n³) time, the
source of the "random walk is slow / runs out of memory" complaints (a 500×375 image gives
n = 2961; a COCO image 6400). Squaring ``logt`` times *is* applying ``T`` ``2^logt`` times, so
here the ``(C, n)`` score matrix is multiplied by the sparse ``T`` ``t`` times (CSR mat-mats
with C columns): O(t·nnz·C), with nnz ≈ 69·n at radius 5. ``method="dense"`` keeps the
authors' squaring for parity checks and small grids.

``scores`` carries a background plane, built by :func:`background_plane`: a constant
(TransCAM 0.42, IRN 0.25) or ``(1 − max_c CAM_c)^α`` (PSA α=16, SEAM α=6).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from wsss.errors import ConfigError
from wsss.refine.pairs import Cover, pair_indices

BG_MODES = ("constant", "power")
METHODS = ("sparse", "dense")
Method = Literal["sparse", "dense"]


def background_plane(cams: Tensor, mode: str = "constant", value: float = 0.42) -> Tensor:
    """Background score ``(..., h, w)`` for foreground CAMs ``(..., K, h, w)``.

    ``"constant"``: ``value`` everywhere. ``"power"``: ``(1 − max_k cams_k)^value`` (PSA's α),
    with the max taken as 0 when there is no foreground plane. Scores are expected in [0, 1].
    """
    if mode not in BG_MODES:
        raise ConfigError(f"background mode {mode!r} is not one of {', '.join(BG_MODES)}")
    shape = cams.shape[:-3] + cams.shape[-2:]
    if mode == "constant":
        return torch.full(shape, float(value), dtype=cams.dtype, device=cams.device)
    peak = cams.amax(dim=-3) if cams.shape[-3] else torch.zeros(shape, dtype=cams.dtype, device=cams.device)
    return (1.0 - peak).clamp_min(0.0) ** value


def with_background(cams: Tensor, mode: str = "constant", value: float = 0.42) -> Tensor:
    """``(..., K+1, h, w)``: :func:`background_plane` stacked in front of the foreground CAMs."""
    return torch.cat([background_plane(cams, mode, value).unsqueeze(-3), cams], dim=-3)


def _weighted_entries(
    affinity: Tensor, src: Tensor, dst: Tensor, n_nodes: int, beta: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Row, column and value of every non-zero of ``W^∘β`` (pairs both ways + unit diagonal)."""
    affinity = affinity.reshape(-1)
    if affinity.numel() != src.numel() or src.numel() != dst.numel():
        raise ValueError(f"{affinity.numel()} affinities for {src.numel()} sources and {dst.numel()} targets")
    if src.numel() and int(torch.maximum(src.max(), dst.max())) >= n_nodes:
        raise ValueError(f"pair index out of range for {n_nodes} nodes")
    diag = torch.arange(n_nodes, device=affinity.device)
    src, dst = src.to(affinity.device), dst.to(affinity.device)
    powered = affinity.clamp_min(0.0) ** beta
    rows = torch.cat([src, dst, diag])
    cols = torch.cat([dst, src, diag])
    vals = torch.cat([powered, powered, torch.ones(n_nodes, dtype=affinity.dtype, device=affinity.device)])
    return rows, cols, vals


def transition_operator(affinity: Tensor, src: Tensor, dst: Tensor, n_nodes: int, beta: float) -> Tensor:
    """Sparse CSR ``Tᵀ`` (n×n), so that ``scores · T = (Tᵀ · scoresᵀ)ᵀ``.

    ``T = W^∘β D⁻¹`` with ``D`` the column sums of ``W^∘β``; the diagonal keeps every column sum
    at least 1, so there is no division by zero.
    """
    rows, cols, vals = _weighted_entries(affinity, src, dst, n_nodes, beta)
    col_sum = torch.zeros(n_nodes, dtype=vals.dtype, device=vals.device).index_add_(0, cols, vals)
    # entry (r, c) of T is vals / col_sum[c]; stored transposed at (c, r)
    op = torch.sparse_coo_tensor(
        torch.stack([cols, rows]), vals / col_sum[cols], (n_nodes, n_nodes), check_invariants=False
    )
    # torch warns that CSR support is "beta" on first use; the CSR mat-mat used here is stable
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return op.coalesce().to_sparse_csr()


def dense_transition(affinity: Tensor, src: Tensor, dst: Tensor, n_nodes: int, beta: float) -> Tensor:
    """Dense ``T = W^∘β D⁻¹`` (n×n), as PSA/IRN build it. O(n²) memory: small grids only."""
    rows, cols, vals = _weighted_entries(affinity, src, dst, n_nodes, beta)
    w = torch.zeros(n_nodes, n_nodes, dtype=vals.dtype, device=vals.device)
    w.index_put_((rows, cols), vals, accumulate=True)
    return w / w.sum(dim=0, keepdim=True)


def random_walk(
    scores: Tensor,
    affinity: Tensor,
    src: Tensor,
    dst: Tensor,
    beta: float = 14.0,
    logt: int = 7,
    method: Method = "sparse",
) -> Tensor:
    """``scores · T^(2^logt)`` for score maps ``(C, h, w)`` and affinities on pairs ``(src, dst)``.

    ``affinity`` has one value per pair (shape ``(P,)`` or ``(1, P)``); the pairs index the
    row-major ``h·w`` grid (see :mod:`wsss.refine.pairs`; use ``cover="all"`` for inference).
    ``method="sparse"`` applies ``T`` ``2^logt`` times as sparse mat-mats; ``"dense"`` squares
    a dense ``T`` ``logt`` times like the authors (same result up to rounding). Computed in the
    dtype of ``scores``. Returns ``(C, h, w)``.
    """
    if scores.dim() != 3:
        raise ValueError(f"scores must be (C, h, w), got shape {tuple(scores.shape)}")
    if method not in METHODS:
        raise ConfigError(f"random-walk method {method!r} is not one of {', '.join(METHODS)}")
    if logt < 0:
        raise ValueError(f"logt must be >= 0, got {logt}")
    c, h, w = scores.shape
    n = h * w
    affinity = affinity.to(device=scores.device, dtype=scores.dtype)
    if method == "dense":
        trans = dense_transition(affinity, src, dst, n, beta)
        for _ in range(logt):
            trans = trans @ trans
        return (scores.reshape(c, n) @ trans).reshape(c, h, w)
    op = transition_operator(affinity, src, dst, n, beta)
    state = scores.reshape(c, n).t().contiguous()
    for _ in range(2**logt):
        state = torch.sparse.mm(op, state)
    return state.t().reshape(c, h, w)


@dataclass(frozen=True)
class WalkSettings:
    """Everything that chooses a walk. Defaults are TransCAM's (β 14, logt 7, constant bg 0.42).

    ``cam_power`` raises the foreground CAMs before the walk (IRN-family forks use 1.3–1.5).
    ``bg_after_walk`` is IRN's order: walk the foreground only, divide by the global max, then
    put the constant background plane in front; otherwise (PSA/TransCAM) the background plane
    is walked with the classes. ``cover``/``shrink`` choose the pairs (see ``pair_indices``).
    """

    beta: float = 14.0
    logt: int = 7
    radius: int = 5
    bg_mode: str = "constant"
    bg_value: float = 0.42
    cam_power: float = 1.0
    bg_after_walk: bool = False
    cover: Cover = "all"
    shrink: bool = True
    method: Method = "sparse"

    def __post_init__(self) -> None:
        if self.bg_mode not in BG_MODES:
            raise ConfigError(f"bg_mode {self.bg_mode!r} is not one of {', '.join(BG_MODES)}")
        if self.method not in METHODS:
            raise ConfigError(f"method {self.method!r} is not one of {', '.join(METHODS)}")
        if self.bg_after_walk and self.bg_mode != "constant":
            raise ConfigError(
                "bg_after_walk (IRN) thresholds the walked maps with a constant: use bg_mode 'constant'"
            )


WALK_PRESETS: dict[str, WalkSettings] = {
    "transcam": WalkSettings(beta=14.0, logt=7, bg_mode="constant", bg_value=0.42),
    "psa": WalkSettings(beta=8.0, logt=8, bg_mode="power", bg_value=16.0),
    "seam": WalkSettings(beta=8.0, logt=6, bg_mode="power", bg_value=6.0),
    "irn": WalkSettings(beta=10.0, logt=8, bg_mode="constant", bg_value=0.25, bg_after_walk=True),
}


def pool_to_grid(cams: Tensor, stride: int) -> Tensor:
    """Full-resolution maps ``(..., H, W)`` → ``(..., ceil(H/s), ceil(W/s))`` by s×s average pooling.

    The maps are zero-padded at the bottom/right to a multiple of ``stride`` first, as PSA pads
    the image and the CAM before pooling.
    """
    h, w = cams.shape[-2:]
    pad_h, pad_w = (-h) % stride, (-w) % stride
    lead = cams.shape[:-2]
    x = F.pad(cams.reshape(-1, 1, h, w), (0, pad_w, 0, pad_h))
    x = F.avg_pool2d(x, stride, stride)
    return x.reshape(*lead, *x.shape[-2:])


def refine_cams(cams: Tensor, affinity: Tensor, src: Tensor, dst: Tensor, settings: WalkSettings) -> Tensor:
    """Walk foreground CAMs ``(K, h, w)`` (on the affinity grid); returns ``(K+1, h, w)`` with bg first."""
    fg = cams.clamp_min(0.0) ** settings.cam_power if settings.cam_power != 1.0 else cams
    if not settings.bg_after_walk:
        scores = with_background(fg, settings.bg_mode, settings.bg_value)
        return random_walk(scores, affinity, src, dst, settings.beta, settings.logt, settings.method)
    walked = random_walk(fg, affinity, src, dst, settings.beta, settings.logt, settings.method)
    peak = walked.max() if walked.numel() else walked.new_tensor(0.0)
    walked = walked / peak if float(peak) > 0 else walked
    return with_background(walked, "constant", settings.bg_value)


def walk_pairs(
    h: int, w: int, settings: WalkSettings, device: torch.device | str | None = None
) -> tuple[Tensor, Tensor]:
    """The ``(src, dst)`` pairs the walk of ``settings`` uses on an ``h×w`` grid."""
    return pair_indices(h, w, settings.radius, cover=settings.cover, shrink=settings.shrink, device=device)


def scores_to_labels(
    scores: Tensor, image_size: tuple[int, int], stride: int, keys: Sequence[int] | Tensor | None = None
) -> Tensor:
    """Label map ``(H, W)`` from grid scores ``(C, h, w)`` with channel 0 = background.

    Upsampled bilinearly to the padded size ``(h·stride, w·stride)`` (PSA), cropped to
    ``image_size``, arg-maxed (ties go to the lower channel, i.e. background). ``keys`` maps
    channels 1.. to label ids (e.g. a CAM file's ``keys``); default: channel c → label c.
    """
    c, h, w = scores.shape
    up = F.interpolate(scores[None], size=(h * stride, w * stride), mode="bilinear", align_corners=False)[0]
    height, width = image_size
    if height > h * stride or width > w * stride:
        raise ValueError(f"image size {image_size} exceeds the {h}x{w} grid at stride {stride}")
    pred = up[:, :height, :width].argmax(dim=0)
    if keys is None:
        return pred
    keys_t = torch.as_tensor(keys, dtype=torch.long, device=pred.device).reshape(-1)
    if keys_t.numel() != c - 1:
        raise ValueError(f"{keys_t.numel()} keys for {c - 1} foreground channels")
    lookup = torch.cat([keys_t.new_zeros(1), keys_t])
    return lookup[pred]
