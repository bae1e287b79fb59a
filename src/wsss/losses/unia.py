"""UniA's losses (seed_methods.md §5.4) as plain functions; the objective weighs and schedules them.

Label maps are ``B×H×W`` integers: 0 background, 1..K foreground, 255 (``ignore_index``) unknown.
Pair labels are ``B×N×N`` over the row-major ``h·w`` token grid (N = h·w): 1 = same label,
0 = different labels, ``ignore_index`` = not supervised.

* :func:`pair_labels` builds pair labels for ToCo's patch-token contrast (``diagonal="ignore"``)
  and for UniA's contrastive affinity loss (``radius=7``, ``diagonal="positive"``).
* :func:`patch_contrast_loss` — ToCo's PTC on the final patch tokens.
* :func:`contrastive_affinity_loss` — softmax-style NLL of positive pairs over a whole row of A.
* :func:`distribution_loss` — KL between the softmaxed foreground mask and the softmaxed channel
  mean of the sampled uncertainty features, both taken over the h·w positions.
* :func:`balanced_seg_loss` — ½(background CE + foreground CE) on the decoder's logits.
* :func:`energy_loss` — a pure-PyTorch stand-in for rloss's ``DenseEnergyLoss`` (no compiled
  bilateral filter needed).

Losses are computed in float32 (float64 inputs stay float64) even under autocast.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn import functional as F

from wsss.data.palette import IGNORE_INDEX
from wsss.errors import ConfigError, DataError
from wsss.losses.seg import _check_choice, masked_mean, pixel_cross_entropy
from wsss.losses.uncertainty import pixel_kl
from wsss.refine.affinity_propagation import radius_mask

DIAGONALS = ("positive", "ignore")
DOWNSCALE_MODES = ("nearest", "bilinear_compat")
PTC_EPS = 1e-8  # norm floor when L2-normalising tokens
AFF_TAU = 0.5  # temperature of the contrastive affinity loss
AFF_DELTA = 1e-4  # the released code adds this to the softmax denominator
SIGMA_RGB = 15.0  # rloss bandwidths used by UniA (colour in 0..255, position in input pixels)
SIGMA_XY = 100.0
ENERGY_SCALE = 0.5
MAX_DENSE_TOKENS = 4096  # dense N×N kernel up to this many tokens per image (64 MiB in float32)
WINDOW_RADIUS = 8  # half-width (in sampled offsets) of the windowed kernel beyond that


def _floating(x: Tensor) -> Tensor:
    """``x`` as float32, or unchanged when float64 (tests compare in double precision)."""
    return x if x.dtype == torch.float64 else x.float()


def _label_map(labels: Tensor, where: str) -> Tensor:
    if labels.dim() != 3 or labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise DataError(
            f"{where} needs an integer label map B×h×w, got {labels.dtype} of shape {tuple(labels.shape)}"
        )
    return labels.long()


def _positive_number(value: object, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"{key} must be a positive number, got {value!r}")
    return float(value)


def _int_at_least(value: object, low: int, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{key} must be an integer >= {low}, got {value!r}")
    return value


def _check_pairs(pair_label: Tensor, batch: int, tokens: int, where: str) -> None:
    if pair_label.shape != (batch, tokens, tokens):
        raise DataError(
            f"{where}: pair labels must be B×N×N = {(batch, tokens, tokens)}, got {tuple(pair_label.shape)}"
        )


# ---------------------------------------------------------------------------------------- labels


def downscale_labels_nearest(labels: Tensor, size: tuple[int, int]) -> Tensor:
    """Nearest-neighbour resize of a label map to ``size`` (the clean default before building pairs).

    torch's ``nearest`` takes the top-left pixel of each block (448 → 28: pixel 16·k), as ToCo's
    code does for its PTC labels; class ids and ignore are never blended.
    """
    return downscale_labels(labels, size, mode="nearest")


def downscale_labels(labels: Tensor, size: tuple[int, int], mode: str = "nearest") -> Tensor:
    """Resize a ``B×H×W`` label map to ``size`` = (h, w); returns long.

    ``mode="nearest"`` is :func:`downscale_labels_nearest`. ``"bilinear_compat"`` reproduces a bug
    of the released COCO script, which resized the MCR label map *bilinearly* (assumed
    ``align_corners=False``) and truncated to long before building the affinity and KL targets:
    at region borders it invents labels (e.g. between 0 and 255 it yields 127, a bogus class; between
    classes 3 and 7 a 5). Use it only under ``code_compat``.
    """
    labels = _label_map(labels, "downscale_labels")
    mode = _check_choice(mode, DOWNSCALE_MODES, "label downscale mode")
    if (
        not isinstance(size, (tuple, list))
        or len(size) != 2
        or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in size)
    ):
        raise ConfigError(f"label downscale size must be two positive integers (h, w), got {size!r}")
    size = (int(size[0]), int(size[1]))
    if tuple(labels.shape[-2:]) == size:
        return labels
    maps = labels[:, None].float()  # exact for label ids < 2^24
    if mode == "nearest":
        out = F.interpolate(maps, size=size, mode="nearest")
    else:
        out = F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
    return out[:, 0].long()


def foreground_mask(labels: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """1.0 where the label is a foreground class (≥ 1, not ignore), else 0.0 (float32, ``B×H×W``)."""
    labels = _label_map(labels, "foreground_mask")
    return ((labels >= 1) & (labels != ignore_index)).float()


def pair_labels(
    labels: Tensor,
    *,
    radius: int | None = None,
    ignore_index: int = IGNORE_INDEX,
    diagonal: str = "positive",
) -> Tensor:
    """Pair labels ``B×N×N`` (long) from a token-grid label map ``B×h×w``.

    1 where tokens i and j carry the same label, 0 where they differ. ``ignore_index`` where either
    token is ignore or, with ``radius``, where j is outside the (2r+1)² square window around i
    (AFA/UniA: r = 7, a 15×15 window). ``diagonal="positive"`` (affinity loss) labels the self-pair
    like any other pair, so it is 1 for a labelled token (an ignored token's self-pair stays
    ignore, as in the released code); ``"ignore"`` (ToCo's PTC) sets the whole diagonal to ignore.
    """
    labels = _label_map(labels, "pair_labels")
    _check_choice(diagonal, DIAGONALS, "pair_labels diagonal")
    if radius is not None:
        _int_at_least(radius, 0, "pair_labels radius")
    b, h, w = labels.shape
    n = h * w
    flat = labels.reshape(b, n)
    pairs = (flat[:, :, None] == flat[:, None, :]).long()
    unknown = flat == ignore_index
    drop = unknown[:, :, None] | unknown[:, None, :]
    if radius is not None:
        drop = drop | ~radius_mask(h, w, radius, labels.device)
    if diagonal == "ignore":
        drop = drop | torch.eye(n, dtype=torch.bool, device=labels.device)
    return pairs.masked_fill(drop, ignore_index)


# ---------------------------------------------------------------------------------- pair losses


def patch_contrast_loss(features: Tensor, pair_label: Tensor) -> Tensor:
    """ToCo's patch-token contrast on ``B×C×h×w`` features and ``B×N×N`` pair labels.

    cos_ij = |cos(f_i, f_j)| with L2-normalised tokens (norm floor 1e-8). Sums and counts run
    over the whole batch: L = ½(1 − Σ_pos cos / (|pos| + 1)) + ½·Σ_neg cos / (|neg| + 1).
    Positive pairs are pulled to (anti-)parallel, negative pairs to orthogonal; the +1 keeps an
    empty set finite (no positives leaves ½, no negatives 0).
    """
    if features.dim() != 4:
        raise DataError(f"patch_contrast_loss needs features B×C×h×w, got {tuple(features.shape)}")
    b, _, h, w = features.shape
    _check_pairs(pair_label, b, h * w, "patch_contrast_loss")
    tokens = F.normalize(_floating(features).flatten(2), dim=1, eps=PTC_EPS)  # B×C×N
    cos = torch.bmm(tokens.transpose(1, 2), tokens).abs()
    pos = (pair_label == 1).to(cos.dtype)
    neg = (pair_label == 0).to(cos.dtype)
    pos_term = 0.5 * (1.0 - (pos * cos).sum() / (pos.sum() + 1.0))
    neg_term = 0.5 * (neg * cos).sum() / (neg.sum() + 1.0)
    return pos_term + neg_term


def contrastive_affinity_loss(affinity: Tensor, pair_label: Tensor, *, tau: float = AFF_TAU) -> Tensor:
    """UniA's contrastive affinity loss on affinities ``B×N×N`` (in (0, 1)) and pair labels.

    L = Σ_{(i,j)∈pos} −log( e^{A_ij/τ} / (Σ_k e^{A_ik/τ} + 1e-4) ) / (|pos| + 1) / (2B), with |pos|
    counted over the batch. The denominator runs over all N tokens k — negatives, out-of-window
    and ignored pairs alike — so raising positives pushes every other pair of the row down.

    Computed as log(Σ_k e^{a_ik} + δ) − a_ij with log(Σ_k e^{a_ik} + δ) = logaddexp(logsumexp_k a_ik,
    log δ): algebraically identical to the formula (no deviation beyond rounding) and stable for
    any scale of A.
    """
    tau = _positive_number(tau, "contrastive affinity tau")
    if affinity.dim() != 3 or affinity.shape[1] != affinity.shape[2]:
        raise DataError(f"contrastive_affinity_loss needs affinities B×N×N, got {tuple(affinity.shape)}")
    b, n, _ = affinity.shape
    _check_pairs(pair_label, b, n, "contrastive_affinity_loss")
    logits = _floating(affinity) / tau
    row = torch.logsumexp(logits, dim=-1, keepdim=True)
    log_denominator = torch.logaddexp(row, row.new_tensor(math.log(AFF_DELTA)))
    pos = pair_label == 1
    nll = torch.where(pos, log_denominator - logits, torch.zeros_like(logits))
    return nll.sum() / (pos.sum() + 1).to(nll.dtype) / (2 * b)


# ------------------------------------------------------------------------------ distribution


def distribution_loss(fg_mask: Tensor, sampled_mean: Tensor) -> Tensor:
    """KL(softmax_x(m) ‖ softmax_x(z̄)), softmax over the h·w positions, averaged over the batch.

    ``fg_mask`` m: ``B×H×W`` in {0, 1} (see :func:`foreground_mask`), resized bilinearly
    (``align_corners=False``) to the grid of ``sampled_mean`` z̄ (``B×h×w``, the channel mean of
    the sampled features) when the sizes differ. This is the released ``KLloss`` (``batchmean``):
    it matches the *spatial distribution* of z̄ to the mask, not a Gaussian prior. Both softmaxes
    ignore a constant shift, so z̄ = m + c gives 0. The gradient reaches z̄ (and m, if it has one).
    """
    if fg_mask.dim() != 3 or sampled_mean.dim() != 3 or fg_mask.shape[0] != sampled_mean.shape[0]:
        raise DataError(
            f"distribution_loss needs a mask B×H×W and a sampled mean B×h×w with the same B; got "
            f"{tuple(fg_mask.shape)} and {tuple(sampled_mean.shape)}"
        )
    z = _floating(sampled_mean)
    m = fg_mask.to(z.dtype)
    if m.shape[-2:] != z.shape[-2:]:
        m = F.interpolate(m[:, None], size=tuple(z.shape[-2:]), mode="bilinear", align_corners=False)[:, 0]
    log_p = F.log_softmax(m.flatten(1), dim=1)
    log_q = F.log_softmax(z.flatten(1), dim=1)
    return pixel_kl(log_p, log_q).sum() / z.shape[0]


# ------------------------------------------------------------------------------ segmentation


def balanced_seg_loss(
    logits: Tensor, labels: Tensor, ignore_index: int = IGNORE_INDEX, *, check_labels: bool = True
) -> Tensor:
    """½(mean CE over background pixels + mean CE over foreground pixels), ignore excluded.

    ``logits`` ``B×C×h×w`` are upsampled bilinearly to the label size (as ToCo/UniA do); means
    pool the whole batch. A part with no pixels contributes 0, so an all-background batch gives
    ½·(background CE). The released code (two ``cross_entropy`` calls whose every target is
    ignored) returns NaN there instead.
    """
    loss_map, valid = pixel_cross_entropy(logits, labels, ignore_index, check_labels)
    bg = valid & (labels == 0)
    fg = valid & (labels != 0)
    zero = torch.zeros_like(loss_map)
    bg_loss = masked_mean(torch.where(bg, loss_map, zero), bg, "valid")
    fg_loss = masked_mean(torch.where(fg, loss_map, zero), fg, "valid")
    return 0.5 * (bg_loss + fg_loss)


# ------------------------------------------------------------------------------------ energy


class _QuadraticEnergy(torch.autograd.Function):
    """E = −Σ S·(WS) / B from S and the precomputed WS; dE/dS = −2·WS / B.

    Valid because W is symmetric and does not depend on S (rloss's backward is the same). Only
    WS (``B×C×h×w``) is kept for backward, never the kernel.
    """

    @staticmethod
    def forward(ctx, seg: Tensor, filtered: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(filtered)
        ctx.batch = seg.shape[0]
        return -(seg * filtered).sum() / seg.shape[0]

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        (filtered,) = ctx.saved_tensors
        return -2.0 * grad * filtered / ctx.batch, None


def _dense_filter(seg: Tensor, image: Tensor, sigma_rgb: float, sigma_xy: float) -> Tensor:
    """(W S) with the full N×N Gaussian kernel, W_ii = 0; one image at a time to bound memory."""
    b, c, h, w = seg.shape
    n = h * w
    ys = torch.arange(h, device=seg.device, dtype=seg.dtype).repeat_interleave(w)
    xs = torch.arange(w, device=seg.device, dtype=seg.dtype).repeat(h)
    spatial = ((ys[:, None] - ys[None, :]) ** 2 + (xs[:, None] - xs[None, :]) ** 2) / (2 * sigma_xy**2)
    out = torch.empty_like(seg).flatten(2)
    colours = image.flatten(2)
    for k in range(b):
        exponent = spatial.clone()
        for channel in colours[k]:  # per channel: exact differences, no |a|²+|b|²−2ab cancellation
            exponent += (channel[:, None] - channel[None, :]) ** 2 / (2 * sigma_rgb**2)
        kernel = torch.exp(-exponent)
        kernel.fill_diagonal_(0.0)
        out[k] = seg[k].reshape(c, n) @ kernel  # kernel is symmetric
    return out.reshape(b, c, h, w)


def _window_offsets(radius: int, dilation: int) -> list[tuple[int, int]]:
    """Half of the (2r+1)² window's non-zero offsets (scaled by ``dilation``); −o is implied."""
    half = []
    for dy in range(0, radius + 1):
        for dx in range(-radius, radius + 1):
            if dy > 0 or dx > 0:
                half.append((dy * dilation, dx * dilation))
    return half


def _window_filter(
    seg: Tensor, image: Tensor, sigma_rgb: float, sigma_xy: float, radius: int, dilation: int
) -> Tensor:
    """(W S) with the kernel restricted to a (2r+1)² window of offsets spaced ``dilation`` apart.

    Each sampled offset stands for a dilation² block of offsets, so its weight is multiplied by
    dilation². Loops over half the offsets and adds each pair's term to both ends: memory stays at
    a few ``B×C×h×w`` tensors whatever the window.
    """
    _, _, h, w = seg.shape
    out = torch.zeros_like(seg)
    area = float(dilation**2)
    for dy, dx in _window_offsets(radius, dilation):
        x0, x1 = max(0, -dx), w - max(0, dx)
        if dy >= h or x1 <= x0:
            continue
        src = (slice(None), slice(None), slice(0, h - dy), slice(x0, x1))
        dst = (slice(None), slice(None), slice(dy, h), slice(x0 + dx, x1 + dx))
        colour = ((image[src] - image[dst]) ** 2).sum(1, keepdim=True)
        weight = area * torch.exp(-(dy * dy + dx * dx) / (2 * sigma_xy**2) - colour / (2 * sigma_rgb**2))
        out[src] += weight * seg[dst]
        out[dst] += weight * seg[src]
    return out


def energy_loss(
    probs: Tensor,
    images: Tensor,
    roi: Tensor,
    *,
    sigma_rgb: float = SIGMA_RGB,
    sigma_xy: float = SIGMA_XY,
    scale: float = ENERGY_SCALE,
    max_tokens: int = MAX_DENSE_TOKENS,
    window_radius: int = WINDOW_RADIUS,
    window_dilation: int = 1,
) -> Tensor:
    """Pure-PyTorch approximation of rloss's ``DenseEnergyLoss`` (the relaxed dense-CRF energy).

    ``probs`` ``B×C×H×W`` (softmax of the segmentation logits), ``images`` ``B×3×H×W`` RGB in
    **0..255** (de-normalised, as UniA/ToCo feed rloss; ``sigma_rgb`` is in those units), ``roi``
    ``B×H×W`` with 1 = counted (zero it at ignored pixels yourself; UniA gates by ROI and ignore).

    As rloss: probs are downsampled by ``scale`` bilinearly, images and ROI by nearest; S = probs·roi;
    then E = −(1/B) Σ_b Σ_{i≠j} W_ij ⟨S_i, S_j⟩ with W_ij = exp(−|p_i−p_j|²/(2σ_xy²) −
    |I_i−I_j|²/(2σ_rgb²)), positions p in input pixels (σ_xy·scale on the downsampled grid).
    B is the batch size (rloss divides by its ``N``, the batch dimension), so E grows with the
    pixel count. Gradient: dE/dS = −2·WS/B, flowing through the ROI mask and resize to ``probs``.

    Paths. With N = h·w ≤ ``max_tokens`` the kernel is dense and exact. Beyond that (a 448 crop at
    scale 0.5 has N = 50176) W is truncated to a (2r+1)² window of offsets r = ``window_radius``
    spaced ``window_dilation`` apart, each weighted by dilation²; pairs outside the window count 0.
    Memory stays O(B·C·N) on both paths (the dense one adds N² per image).

    Differences from rloss's CUDA/C++ version: rloss filters with a permutohedral lattice — an
    approximate Gaussian over the whole image that also splats each pixel onto itself, with the
    lattice's own blur weights — whereas here the diagonal is excluded and the kernel is exact
    (dense) or exact-but-truncated (window). With σ_xy = 100 the true kernel spans the whole
    crop, so the windowed path keeps mostly the colour term of nearby pixels; raise
    ``window_dilation`` to reach further. **The absolute scale is not calibrated against rloss**:
    the recipe weight (UniA: 1e-7 × w_reg) is a recipe setting to tune, and weight 0 (no
    regulariser) is supported.
    """
    sigma_rgb = _positive_number(sigma_rgb, "energy sigma_rgb")
    sigma_xy = _positive_number(sigma_xy, "energy sigma_xy")
    scale = _positive_number(scale, "energy scale")
    if scale > 1:
        raise ConfigError(f"energy scale must be in (0, 1] (UniA: 0.5), got {scale!r}")
    max_tokens = _int_at_least(max_tokens, 0, "energy max_tokens")
    window_radius = _int_at_least(window_radius, 1, "energy window_radius")
    window_dilation = _int_at_least(window_dilation, 1, "energy window_dilation")
    if (
        probs.dim() != 4
        or images.dim() != 4
        or images.shape[1] != 3
        or images.shape[0] != probs.shape[0]
        or images.shape[-2:] != probs.shape[-2:]
        or roi.shape != (probs.shape[0], *probs.shape[-2:])
    ):
        raise DataError(
            f"energy_loss needs probs B×C×H×W, images B×3×H×W and roi B×H×W of one size; got "
            f"{tuple(probs.shape)}, {tuple(images.shape)}, {tuple(roi.shape)}"
        )
    _, _, height, width = probs.shape
    size = (max(1, int(height * scale)), max(1, int(width * scale)))
    seg = _floating(probs)
    image = images.detach().to(seg.dtype)
    mask = roi.detach().to(seg.dtype)[:, None]
    if size != (height, width):
        seg = F.interpolate(seg, size=size, mode="bilinear", align_corners=False)
        image = F.interpolate(image, size=size, mode="nearest")
        mask = F.interpolate(mask, size=size, mode="nearest")
    seg = seg * mask
    grid_sigma_xy = sigma_xy * scale
    with torch.no_grad():
        if size[0] * size[1] <= max_tokens:
            filtered = _dense_filter(seg, image, sigma_rgb, grid_sigma_xy)
        else:
            filtered = _window_filter(seg, image, sigma_rgb, grid_sigma_xy, window_radius, window_dilation)
    return _QuadraticEnergy.apply(seg, filtered)
