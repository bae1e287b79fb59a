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

The two families put the background in at different points, and each order is kept:

* PSA/TransCAM (:func:`pooled_scores`, :func:`refine_cams`, :func:`scores_to_labels`): the
  background plane — a constant (TransCAM 0.42) or ``(1 − max_c CAM_c)^α`` (PSA α=16, SEAM
  α=6) — is built per pixel at full resolution, the whole stack is zero-padded to a multiple
  of the stride and average-pooled onto the affinity grid, walked, upsampled, arg-maxed.
* IRN (:func:`walk_foreground`, :func:`foreground_to_labels`): only the foreground is walked;
  the result is upsampled, cropped to the image, divided by its maximum there, and the
  constant background (0.25) is put in front just before the arg-max.
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
    ``bg_after_walk`` marks IRN's order: walk the foreground only, then (after upsampling and
    cropping) divide by the max and put the constant background in front — see
    :func:`foreground_to_labels`; otherwise (PSA/TransCAM) the background plane is walked with
    the classes. ``cover``/``shrink`` choose the pairs (see ``pair_indices``).
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


def _powered(cams: Tensor, power: float) -> Tensor:
    return cams.clamp_min(0.0) ** power if power != 1.0 else cams


def pooled_scores(cams: Tensor, stride: int, settings: WalkSettings) -> Tensor:
    """PSA's walk input ``(K+1, ceil(H/s), ceil(W/s))``, background first, from full-resolution CAMs ``(K, H, W)``.

    PSA/TransCAM ``infer_aff`` build the background plane per pixel and pool the whole stack
    (after zero-padding to a multiple of ``stride``): a power background is the block mean of
    ``(1 − max)^α``, not ``(1 − block mean)^α``, and a constant one fades in the padded border
    cells like the classes do. ``stride=1`` means the CAMs are already on the grid.
    """
    if cams.dim() != 3:
        raise ValueError(f"cams must be (K, H, W), got shape {tuple(cams.shape)}")
    fg = _powered(cams, settings.cam_power)
    return pool_to_grid(with_background(fg, settings.bg_mode, settings.bg_value), stride)


def refine_cams(
    cams: Tensor, affinity: Tensor, src: Tensor, dst: Tensor, settings: WalkSettings, stride: int = 1
) -> Tensor:
    """PSA/TransCAM's walk of full-resolution foreground CAMs ``(K, H, W)`` on the stride-``stride``
    affinity grid: :func:`pooled_scores`, then :func:`random_walk`. Returns ``(K+1, h, w)``, bg first."""
    if settings.bg_after_walk:
        raise ConfigError(
            "bg_after_walk is IRN's order, whose maximum is taken after upsampling: use walk_foreground "
            "and foreground_to_labels"
        )
    scores = pooled_scores(cams, stride, settings)
    return random_walk(scores, affinity, src, dst, settings.beta, settings.logt, settings.method)


def walk_foreground(
    cams: Tensor, affinity: Tensor, src: Tensor, dst: Tensor, settings: WalkSettings
) -> Tensor:
    """IRN's walk: foreground CAMs ``(K, h, w)`` on the grid, raised to ``cam_power``, walked; no background.

    The result is not normalised: :func:`foreground_to_labels` divides by the maximum of the
    upsampled, cropped map, as IRN does.
    """
    fg = _powered(cams, settings.cam_power)
    return random_walk(fg, affinity, src, dst, settings.beta, settings.logt, settings.method)


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
    return _keyed(up[:, :height, :width].argmax(dim=0), keys, c - 1)


def _keyed(pred: Tensor, keys: Sequence[int] | Tensor | None, n_fg: int) -> Tensor:
    """Channel indices (0 = background) → label ids through ``keys`` (None: channel c → label c)."""
    if keys is None:
        return pred
    keys_t = torch.as_tensor(keys, dtype=torch.long, device=pred.device).reshape(-1)
    if keys_t.numel() != n_fg:
        raise ValueError(f"{keys_t.numel()} keys for {n_fg} foreground channels")
    return torch.cat([keys_t.new_zeros(1), keys_t])[pred]


def foreground_to_labels(
    walked: Tensor,
    image_size: tuple[int, int],
    stride: int,
    bg_value: float,
    keys: Sequence[int] | Tensor | None = None,
) -> Tensor:
    """IRN's label map ``(H, W)`` from walked foreground scores ``(K, h, w)`` (``make_sem_seg_labels``).

    In this order: bilinear ×``stride`` (align_corners False), crop to ``image_size``, divide by
    the maximum of the cropped map (over every class and pixel; a map with no positive score is
    left as is), the constant ``bg_value`` in front, arg-max (ties go to background). Dividing
    by the grid's maximum instead would also count padded cells outside the image.
    """
    if walked.dim() != 3:
        raise ValueError(f"walked scores must be (K, h, w), got shape {tuple(walked.shape)}")
    k, h, w = walked.shape
    height, width = image_size
    if height > h * stride or width > w * stride:
        raise ValueError(f"image size {image_size} exceeds the {h}x{w} grid at stride {stride}")
    up = F.interpolate(walked[None], size=(h * stride, w * stride), mode="bilinear", align_corners=False)[0]
    up = up[:, :height, :width]
    peak = up.max() if up.numel() else up.new_tensor(0.0)
    if float(peak) > 0:
        up = up / peak
    scores = torch.cat([up.new_full((1, height, width), float(bg_value)), up])
    return _keyed(scores.argmax(dim=0), keys, k)
