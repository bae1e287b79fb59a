"""Multi-scale + flip CAM inference (TransCAM protocol) with the passes batched.

For every scale the image is resized (square sizes, as TransCAM does, or a relative factor),
the flipped copy is stacked beside it, and all images of a group go through the network in one
forward. Each pass's foreground maps are upsampled to the target grid, un-flipped, restricted
to the image's classes and summed; then negatives are clipped and every class is min-max
normalised. ``batched=False`` runs the same passes one at a time (reference / low memory).

Everything runs under ``torch.no_grad`` except an extractor that declares ``needs_grad``
(Grad-CAM, AdvCAM), which alone is called with autograd on; one that declares ``needs_labels``
is also given its images' label vectors, the flip and the scale, and fuses the mirror itself
(see :mod:`wsss.cams.extractors`).

The per-scale resize is PIL bicubic on the uint8 image by default (``resize="pil"``), as
TransCAM, PSA and IRN resize; ``resize="torch"`` uses torchvision's antialiased bicubic on the
device instead (see :func:`resize_image` for how far the two differ).

Speed (same maps up to float rounding): ``forward_images`` caps how many images of a group (each
with its flip) share one forward: on a CPU small batches keep the activations in cache (one image
+ flip per forward ran MobileNetV2 1.2-1.5x faster per image than four). :func:`prepare_cam_model`
folds eval-mode BatchNorm into the convolution before it and can switch the network to
channels-last (NHWC) tensors, oneDNN's fast layout on a CPU. Only the image's classes are
upsampled (an absent class's map is multiplied by 0), and the ``pil`` kernel converts each image
to PIL once for all scales; both leave the sums bit for bit as they were.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torch.nn.utils.parametrize import is_parametrized
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from wsss.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from wsss.errors import ConfigError
from wsss.registry import suggest

CamFn = Callable[..., torch.Tensor]
"""Maps a normalised B×3×H×W batch to raw B×C×h×w CAMs (channel 0 = background); with
``needs_labels`` it takes ``(batch, labels, *, flip, scale)`` and gives B×branches×C×h×w."""


def scaled_size(size: tuple[int, int], scale: float, mode: str = "square") -> tuple[int, int]:
    """Network input size for one scale: ``square`` resizes to scale×scale pixels (TransCAM,
    aspect ratio not kept); ``relative`` multiplies both sides by ``scale`` (IRN)."""
    if mode == "square":
        return int(scale), int(scale)
    h, w = size
    return max(1, round(h * scale)), max(1, round(w * scale))


RESIZE_KERNELS: tuple[str, ...] = ("pil", "torch")


def _check_kernel(kernel: str) -> None:
    """Reject an unknown resize kernel before any work, naming the close match."""
    if kernel not in RESIZE_KERNELS:
        raise ConfigError(
            f"unknown resize kernel {kernel!r}{suggest(kernel, RESIZE_KERNELS)}; choose from {RESIZE_KERNELS}"
        )


def resize_image(
    img: torch.Tensor, size: tuple[int, int], kernel: str = "pil", device: torch.device | str = "cpu"
) -> torch.Tensor:
    """uint8 3×H×W → uint8 3×h×w on ``device``, bicubic, with the kernel the CAM recipe names.

    ``pil``: ``PIL.Image.resize`` with ``Resampling.BICUBIC`` on the CPU (TransCAM, PSA, IRN),
    then moved to ``device``. ``torch``: torchvision's antialiased bicubic on ``device``. Both
    are the same separable a = −0.5 filter and usually agree within 1–2 grey levels, but each
    rounds and clips its intermediate image to uint8 after the first pass, and Pillow runs the
    vertical pass first when the height shrinks while the width grows (e.g. 640×481 → 512×512)
    where torch always starts with the horizontal one, so there ~20 % of pixels move by one level
    and saturated edges, whose bicubic overshoot is clipped in one order only, by up to ~10.
    """
    _check_kernel(kernel)
    h, w = size
    if kernel == "torch":
        return TF.resize(img.to(device), [h, w], interpolation=InterpolationMode.BICUBIC, antialias=True)
    return _pil_resize(_as_pil(img), size, device)


def _as_pil(img: torch.Tensor) -> Image.Image:
    """A uint8 3×H×W tensor as an RGB PIL image (what the ``pil`` kernel resizes)."""
    if img.dtype != torch.uint8 or img.ndim != 3 or img.shape[0] != 3:
        raise ValueError(f"PIL resizing needs a uint8 (3, H, W) image, got {img.dtype} {tuple(img.shape)}")
    return Image.fromarray(img.detach().to("cpu").permute(1, 2, 0).contiguous().numpy())


def _pil_resize(pil: Image.Image, size: tuple[int, int], device: torch.device | str) -> torch.Tensor:
    h, w = size
    out = pil.resize((w, h), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.array(out)).permute(2, 0, 1).contiguous().to(device)


def fold_batchnorm(model: nn.Module) -> int:
    """Fold, in place, every eval-mode ``BatchNorm2d`` that directly follows a ``Conv2d`` inside
    an ``nn.Sequential`` into that convolution (the norm becomes ``nn.Identity``); return how many.

    In eval mode the norm is an affine map per channel, so ``bn(conv(x))`` equals the folded
    convolution up to float rounding (~1e-6 relative), and saves the norm's pass over the
    activations (MobileNetV2: ~15 % of a CPU forward). Only plain ``nn.Conv2d`` →
    ``nn.BatchNorm2d`` pairs with running statistics, no hooks and no parametrisation are folded
    (torchvision's conv-norm-activation blocks, ResNet downsample branches); a norm in training
    mode is left alone. For inference only: the folded model no longer trains as before.
    """
    folded = 0
    for seq in model.modules():
        if not isinstance(seq, nn.Sequential):
            continue
        for i in range(len(seq) - 1):
            conv, bn = seq[i], seq[i + 1]
            if type(conv) is not nn.Conv2d or type(bn) is not nn.BatchNorm2d:
                continue
            if bn.training or bn.running_mean is None or bn.running_var is None:
                continue
            hooked = any(
                m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or is_parametrized(m)
                for m in (conv, bn)
            )
            if hooked:
                continue
            seq[i] = fuse_conv_bn_eval(conv, bn)
            seq[i + 1] = nn.Identity()
            folded += 1
    return folded


def prepare_cam_model(model: nn.Module, *, fold_bn: bool = True, channels_last: bool = False) -> nn.Module:
    """The eval-mode ``model`` made faster for CAM inference, in place: BatchNorm folded into the
    convolutions (:func:`fold_batchnorm`) and, with ``channels_last``, its 4-D weights in NHWC
    order (oneDNN then runs the whole network channels-last). The maps stay the same up to float
    rounding (≤ 1e-5 after normalisation); a model in training mode is refused."""
    if model.training:
        raise ValueError("prepare_cam_model needs a model in eval mode (call .eval() first)")
    if fold_bn:
        fold_batchnorm(model)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def cam_output_stride(model: nn.Module) -> int:
    """Pixels per cell of ``model``'s maps: its ``output_stride`` (a ViT's patch size, a CNN's
    stride), 16 for a model that does not say (the stride-16 CNNs of the seed methods)."""
    return int(getattr(model, "output_stride", 16))


def normalise_image(img: torch.Tensor) -> torch.Tensor:
    """uint8 (…,3,H,W) → float ImageNet-normalised."""
    mean = torch.tensor(IMAGENET_MEAN, device=img.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=img.device).view(3, 1, 1)
    return (img.float() / 255.0 - mean) / std


def _crop_valid(cams: torch.Tensor, in_size: tuple[int, int], stride: int) -> torch.Tensor:
    """Upsample the (possibly padded) grid to pixels and drop the padding of the input."""
    gh, gw = cams.shape[-2:]
    full = F.interpolate(cams, size=(gh * stride, gw * stride), mode="bilinear", align_corners=False)
    return full[..., : in_size[0], : in_size[1]]


def _to_target(
    cams: torch.Tensor, in_size: tuple[int, int], stride: int, target: tuple[int, int]
) -> torch.Tensor:
    gh, gw = cams.shape[-2:]
    if gh * stride == in_size[0] and gw * stride == in_size[1]:
        return F.interpolate(cams, size=target, mode="bilinear", align_corners=False)
    valid = _crop_valid(cams, in_size, stride)
    return F.interpolate(valid, size=target, mode="bilinear", align_corners=False)


def _passes(
    cam_fn: CamFn,
    batch: torch.Tensor,
    labels: torch.Tensor,
    *,
    flip: bool,
    scale: float,
    together: bool,
) -> list[tuple[int, torch.Tensor, bool]]:
    """(row of ``batch``, raw maps, mirrored?) of one group: the flips stacked behind the images in
    one forward (``together``) or run apart; a ``needs_labels`` extractor gets the group's
    ``labels`` and fuses the flip itself; only a ``needs_grad`` one runs with autograd on.

    The plain maps come back contiguous whatever layout the network computes in (channels-last),
    so everything after the forward runs as with a contiguous network."""
    grad = getattr(cam_fn, "needs_grad", False)
    n = len(batch)
    with torch.enable_grad() if grad else nullcontext():
        if getattr(cam_fn, "needs_labels", False):
            out = cam_fn(batch, labels, flip=flip, scale=scale).detach()
            return [(k, out[k], False) for k in range(n)]
        if together:
            out = cam_fn(torch.cat([batch, batch.flip(-1)]) if flip else batch).detach().contiguous()
            plain, mirrored = out[:n], out[n:]
        else:
            plain = cam_fn(batch).detach().contiguous()
            mirrored = cam_fn(batch.flip(-1)).detach().contiguous() if flip else plain[:0]
    runs = []
    for k in range(n):
        runs.append((k, plain[k], False))
        if flip:
            runs.append((k, mirrored[k], True))
    return runs


@torch.no_grad()
def multiscale_cams(
    cam_fn: CamFn,
    images: Sequence[torch.Tensor],
    labels: Sequence[torch.Tensor],
    scales: Sequence[float],
    *,
    scale_mode: str = "square",
    flip: bool = True,
    batched: bool = True,
    output_stride: int = 16,
    target_stride: int = 1,
    device: torch.device | str = "cpu",
    resize: str = "pil",
    forward_images: int | None = None,
) -> list[torch.Tensor]:
    """Summed, un-normalised foreground CAMs for each image, shape (K, ceil(H/s), ceil(W/s)), or
    (branches, K, …) for an extractor that returns branches (Grad-CAM, AdvCAM).

    ``images`` are uint8 3×H×W tensors (any sizes), ``labels`` K-dim multi-hot vectors; absent
    classes come out as zero maps. ``resize`` picks the kernel of the per-scale image resize
    (:func:`resize_image`: ``pil`` as the reference code, or ``torch`` on the device).
    ``batched``: images of equal resized shape share a forward, at most ``forward_images`` of
    them (each with its flip; None: all), in their order.
    """
    _check_kernel(resize)
    if forward_images is not None and forward_images < 1:
        raise ConfigError(f"forward_images must be >= 1 (or None: the whole group), got {forward_images}")
    device = torch.device(device)
    sizes = [tuple(img.shape[-2:]) for img in images]
    targets = [(math.ceil(h / target_stride), math.ceil(w / target_stride)) for h, w in sizes]
    sums: list[torch.Tensor | None] = [None] * len(images)

    def add(i: int, raw: torch.Tensor, in_size: tuple[int, int], flipped: bool) -> None:
        maps = raw.reshape(-1, *raw.shape[-3:])[:, 1:].float()  # (branches, K, h, w)
        weight = labels[i].to(maps.device)
        present = torch.nonzero(weight).flatten()
        if len(present) == maps.shape[1]:
            fg = _to_target(maps, in_size, output_stride, targets[i])
        else:  # an absent class's map is multiplied by 0 below: upsample only the image's classes
            fg = maps.new_zeros((maps.shape[0], maps.shape[1], *targets[i]))
            if len(present):
                fg[:, present] = _to_target(maps[:, present], in_size, output_stride, targets[i])
        fg = fg[0] if raw.ndim == 3 else fg
        if flipped:
            fg = fg.flip(-1)
        fg = fg * weight.view(-1, 1, 1)
        sums[i] = fg if sums[i] is None else sums[i] + fg

    # the PIL kernel resizes every scale from one PIL copy of each image (made once, not per scale)
    pils = [_as_pil(img) for img in images] if resize == "pil" else None
    for scale in scales:
        resized = []
        for i, img in enumerate(images):
            size = scaled_size(tuple(img.shape[-2:]), scale, scale_mode)
            pixels = (
                _pil_resize(pils[i], size, device)
                if pils is not None
                else resize_image(img, size, resize, device)
            )
            resized.append(normalise_image(pixels))
        if batched:
            # group images of equal resized shape; each group (plus flips) is one forward, or
            # several of at most ``forward_images`` images each
            groups: dict[tuple[int, int], list[int]] = {}
            for i, x in enumerate(resized):
                groups.setdefault(tuple(x.shape[-2:]), []).append(i)
            for in_size, members in groups.items():
                step = forward_images or len(members)
                for start in range(0, len(members), step):
                    idx = members[start : start + step]
                    batch = torch.stack([resized[i] for i in idx])
                    group_labels = torch.stack([labels[i] for i in idx]).to(device)
                    runs = _passes(cam_fn, batch, group_labels, flip=flip, scale=scale, together=True)
                    for k, raw, flipped in runs:
                        add(idx[k], raw, in_size, flipped)
        else:
            for i, x in enumerate(resized):
                runs = _passes(
                    cam_fn, x[None], labels[i][None].to(device), flip=flip, scale=scale, together=False
                )
                for _, raw, flipped in runs:
                    add(i, raw, tuple(x.shape[-2:]), flipped)
    return [s for s in sums if s is not None]


def minmax_normalise(cams: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """TransCAM's per-class normalisation: clip < 0, then (x − min − eps)/(max − min + eps), ≥ 0."""
    cams = cams.clamp_min(0)
    flat = cams.flatten(1)
    lo = flat.min(dim=1).values.view(-1, 1, 1)
    hi = flat.max(dim=1).values.view(-1, 1, 1)
    out = (cams - lo - eps) / (hi - lo + eps)
    return out.clamp_min(0)


def max_normalise(cams: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """IRN's per-class normalisation: ReLU, then divide by the class's max (+ eps)."""
    cams = cams.clamp_min(0)
    return cams / (cams.flatten(1).max(dim=1).values.view(-1, 1, 1) + eps)


NORMALISERS = {"minmax": minmax_normalise, "max": max_normalise}
