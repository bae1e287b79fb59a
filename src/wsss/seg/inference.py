"""Test-time inference of a segmentation network: multi-scale + flip, sliding window, dense CRF.

Every seed method evaluates its segmentation model with test-time augmentation, and they differ
in the details that move mIoU by a point or two:

* TransCAM/BNR (DeepLab-LargeFOV): scales 0.5–1.75 relative to the image, + flip, the logits
  are averaged over all passes and then softmaxed, then the 1-iteration ``deeplab`` CRF.
* PMM (PSPNet, mmseg ``aug_test``): the same scales applied to a short side of 512, + flip,
  512×512 sliding window at stride 480 (mmseg ``slide_inference``: the last window is shifted back
  inside the image, nothing is padded, overlaps are averaged), the *softmax* outputs are
  averaged, then a CRF.
* UniA: square 448·s inputs for s ∈ {1, 1.25, 1.5}; the flip pair's logits are summed, the
  maximum over scales is softmaxed, then the ``toco`` CRF.

:func:`predict_probs` covers all three with ``mode`` (``"logits"``, ``"probs"``,
``"max_logits"``), ``scale_mode`` and ``window``; :data:`TEST_PROTOCOLS` names the settings.
Each pass's output (given at the network's stride) is upsampled to the size of the input it saw
and then to the image size, so passes at different scales line up pixel for pixel.
``batched=True`` stacks an input's tiles and their flips into one forward per scale;
``batched=False`` runs every tile and flip on its own (the reference; least memory).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from wsss.errors import ConfigError
from wsss.refine.crf import crf_labels, resolve_params
from wsss.registry import suggest

Mode = Literal["logits", "probs", "max_logits"]
MODES: tuple[str, ...] = ("logits", "probs", "max_logits")
ScaleMode = Literal["relative", "square", "short_side"]
SCALE_MODES: tuple[str, ...] = ("relative", "square", "short_side")

SegFn = Callable[[torch.Tensor], Any]
"""Maps a normalised B×3×h×w batch to B×C×h'×w' logits at any stride (a tensor, a tuple whose
first item is that tensor, or a mapping with key ``"out"`` as torchvision's models return)."""


# ---------------------------------------------------------------------------------------------
# geometry
# ---------------------------------------------------------------------------------------------


def scaled_size(size: tuple[int, int], scale: float, mode: str = "relative") -> tuple[int, int]:
    """Network input size (h, w) for one test scale.

    ``relative``: both sides times ``scale`` (TransCAM's DeepLab test). ``square``: ``scale`` ×
    ``scale`` pixels, aspect ratio not kept (UniA: 448, 560, 672). ``short_side``: the short side
    becomes ``scale`` pixels and the long side follows the aspect ratio (mmseg's keep-ratio resize
    to (2048, 512)·r that PMM uses, for images less than 4:1, the long-side cap never binds).
    """
    h, w = size
    if not scale > 0:
        raise ValueError(f"test scales must be > 0, got {scale}")
    if mode == "relative":
        return max(1, round(h * scale)), max(1, round(w * scale))
    if mode == "square":
        side = max(1, round(scale))
        return side, side
    if mode == "short_side":
        factor = scale / min(h, w)
        return max(1, int(h * factor + 0.5)), max(1, int(w * factor + 0.5))
    raise ConfigError(f"unknown scale_mode {mode!r}{suggest(mode, SCALE_MODES)}; choose from {SCALE_MODES}")


def window_stride(window: int, overlap: float) -> int:
    """Step between neighbouring windows: ``window·(1 − overlap)`` rounded (PMM: 512, 1/16 → 480)."""
    if window < 1:
        raise ValueError(f"the sliding window must be >= 1 pixel, got {window}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"window overlap must lie in [0, 1), got {overlap}")
    return max(1, round(window * (1.0 - overlap)))


def tile_starts(length: int, window: int, stride: int) -> list[int]:
    """Offsets of the windows along one axis, as mmseg's ``slide_inference`` places them.

    ``max(length − window + stride − 1, 0) // stride + 1`` windows start every ``stride``; a
    window that would run past the end is moved back to end at ``length``, so no window needs
    padding (e.g. 1000 px, window 512, stride 480 → 0, 480, 488). A side no longer than the window
    is one window at 0 (which :func:`_tiles` shrinks to the side).
    """
    if length < 1 or window < 1 or stride < 1:
        raise ValueError(
            f"tile_starts needs positive sizes, got length={length} window={window} stride={stride}"
        )
    count = max(length - window + stride - 1, 0) // stride + 1
    return [max(min(i * stride, length - window), 0) for i in range(count)]


@dataclass(frozen=True)
class _Tile:
    """One window of the scaled input: its top-left corner and size (always inside the image)."""

    y: int
    x: int
    h: int
    w: int


def _tiles(size: tuple[int, int], window: int | None, overlap: float) -> tuple[tuple[int, int], list[_Tile]]:
    """The tile shape fed to the network and the tiles covering ``size``.

    Without a window the whole input is one tile. Every tile lies inside the input, the last one
    on an axis shifted back to end at the border (mmseg), so none is padded. A side shorter than
    the window is not padded up to it either: the tile shrinks to that side (mmseg crops
    ``y1:min(y1 + window, h)``), so every tile has the same shape and small inputs cost nothing.
    """
    h, w = size
    if window is None:
        return (h, w), [_Tile(0, 0, h, w)]
    stride = window_stride(window, overlap)
    th, tw = min(window, h), min(window, w)
    tiles = [_Tile(y, x, th, tw) for y in tile_starts(h, th, stride) for x in tile_starts(w, tw, stride)]
    return (th, tw), tiles


# ---------------------------------------------------------------------------------------------
# network passes
# ---------------------------------------------------------------------------------------------


def _logits_of(output: Any) -> torch.Tensor:
    """The main logits out of a network's return value (tensor, (main, aux…) or {'out': …})."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    if isinstance(output, Mapping) and isinstance(output.get("out"), torch.Tensor):
        return output["out"]
    raise TypeError(
        f"the segmentation model returned {type(output).__name__}; expected B×C×h×w logits, a tuple whose "
        "first item is the logits, or a mapping with key 'out'"
    )


def _run(model: SegFn, batch: torch.Tensor, num_classes: int, max_batch: int | None) -> torch.Tensor:
    """Forward ``batch`` (in chunks of ``max_batch``) and check the logits' shape."""
    step = batch.shape[0] if max_batch is None else max_batch
    outs = []
    for start in range(0, batch.shape[0], step):
        chunk = batch[start : start + step]
        out = _logits_of(model(chunk))
        if out.ndim != 4 or out.shape[0] != chunk.shape[0] or out.shape[1] != num_classes:
            raise ValueError(
                f"the segmentation model returned logits of shape {tuple(out.shape)} for a batch of "
                f"{chunk.shape[0]}; expected ({chunk.shape[0]}, {num_classes}, h, w) (num_classes={num_classes})"
            )
        outs.append(out)
    return outs[0] if len(outs) == 1 else torch.cat(outs)


def _resize(x: torch.Tensor, size: tuple[int, int], align_corners: bool) -> torch.Tensor:
    """Bilinear resize of a (B, C, h, w) tensor; a no-op at the same size."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=align_corners)


def _crop(x: torch.Tensor, tile: _Tile) -> torch.Tensor:
    """The tile's (3, th, tw) input, cut out of ``x`` (tiles lie inside it: nothing is padded)."""
    return x[:, tile.y : tile.y + tile.h, tile.x : tile.x + tile.w]


def _pass_logits(
    model: SegFn,
    x: torch.Tensor,
    *,
    num_classes: int,
    flip: bool,
    window: int | None,
    overlap: float,
    batched: bool,
    max_batch: int | None,
    align_corners: bool,
) -> torch.Tensor:
    """(P, C, h, w) logits of the P passes over the scaled input ``x`` (3, h, w): plain, then flipped.

    Each tile's output is upsampled to the tile, the flipped tile's output is flipped back and
    added into the pass's canvas; overlapping tiles' logits are averaged by a per-pixel count
    (mmseg ``slide_inference``: sum, then divide by the count).
    """
    size = (x.shape[-2], x.shape[-1])
    shape, tiles = _tiles(size, window, overlap)
    crops = [_crop(x, t) for t in tiles]
    flips = (False, True) if flip else (False,)
    jobs = [(t, crop, flipped) for flipped in flips for t, crop in zip(tiles, crops)]
    inputs = [crop.flip(-1) if flipped else crop for _, crop, flipped in jobs]
    if batched:
        outs = _run(model, torch.stack(inputs), num_classes, max_batch)
    else:
        outs = torch.cat([_run(model, inp[None], num_classes, None) for inp in inputs])

    if len(tiles) == 1 and shape == size:  # whole input: no canvas needed
        up = _resize(outs, size, align_corners)
        return torch.cat([up[:1], up[1:].flip(-1)]) if flip else up
    canvas = torch.zeros((len(flips), num_classes, *size), dtype=outs.dtype, device=outs.device)
    count = torch.zeros((1, *size), dtype=canvas.dtype, device=canvas.device)
    for t in tiles:
        count[:, t.y : t.y + t.h, t.x : t.x + t.w] += 1
    for (t, _, flipped), out in zip(jobs, outs):
        up = _resize(out[None], shape, align_corners)[0]
        if flipped:
            up = up.flip(-1)
        canvas[int(flipped), :, t.y : t.y + t.h, t.x : t.x + t.w] += up
    return canvas / count


# ---------------------------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------------------------


def _check_inputs(image: torch.Tensor, scales: Sequence[float], mode: str, num_classes: int) -> None:
    if not isinstance(image, torch.Tensor) or image.ndim != 3 or image.shape[0] != 3:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"predict_probs needs one normalised (3, H, W) image tensor, got {shape}")
    if not image.is_floating_point():
        raise ValueError(
            f"predict_probs needs a normalised float image, got {image.dtype} (normalise uint8 images first)"
        )
    if len(scales) == 0:
        raise ValueError("predict_probs needs at least one test scale")
    if mode not in MODES:
        raise ConfigError(f"unknown inference mode {mode!r}{suggest(mode, MODES)}; choose from {MODES}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")


@torch.no_grad()
def predict_probs(
    model: SegFn,
    image: torch.Tensor,
    *,
    num_classes: int,
    scales: Sequence[float] = (1.0,),
    scale_mode: str = "relative",
    flip: bool = False,
    mode: str = "logits",
    batched: bool = True,
    window: int | None = None,
    overlap: float = 1 / 3,
    max_batch: int | None = None,
    align_corners: bool = False,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """(C, H, W) class probabilities of one normalised (3, H, W) image under test-time augmentation.

    For every scale the image is resized bilinearly (align_corners False; sizes from
    :func:`scaled_size` with ``scale_mode``) and run through ``model`` (whole, or tiled with
    ``window``-pixel windows overlapping by ``overlap``, placed as mmseg's ``slide_inference``
    places them: see :func:`tile_starts`); with ``flip`` the mirrored input is a
    second pass, un-mirrored. A pass's logits are upsampled to its input and then to (H, W)
    (``align_corners`` for these logit resizes; TransCAM's DeepLab uses True). Passes combine by
    ``mode``:

    * ``"logits"``: mean of all passes' logits, then softmax (TransCAM/BNR);
    * ``"probs"``: mean of all passes' softmax (PMM / mmseg ``aug_test``);
    * ``"max_logits"``: per scale the passes' logits are *summed*, the maximum over scales is
      softmaxed (UniA).

    ``batched`` stacks every tile and flip of a scale into one forward (``max_batch`` caps its
    size); ``batched=False`` forwards them one at a time. The model is used as given: put it in
    eval mode first. Runs on ``device`` (default: the image's); the result stays there, in the
    image's dtype.
    """
    _check_inputs(image, scales, mode, num_classes)
    if max_batch is not None and max_batch < 1:
        raise ValueError(f"max_batch must be >= 1 or None, got {max_batch}")
    if window is not None:
        window_stride(window, overlap)  # validates window and overlap before any forward
    if device is not None:
        image = image.to(device)
    size = (image.shape[-2], image.shape[-1])
    total: torch.Tensor | None = None
    passes = 0
    for scale in scales:
        x = _resize(image[None], scaled_size(size, scale, scale_mode), align_corners=False)[0]
        pass_logits = _pass_logits(
            model,
            x,
            num_classes=num_classes,
            flip=flip,
            window=window,
            overlap=overlap,
            batched=batched,
            max_batch=max_batch,
            align_corners=align_corners,
        )
        full = _resize(pass_logits, size, align_corners)
        if mode == "max_logits":
            summed = full.sum(0)
            total = summed if total is None else torch.maximum(total, summed)
            continue
        for logits in full:
            term = logits.softmax(0) if mode == "probs" else logits
            total = term if total is None else total + term
            passes += 1
    assert total is not None  # at least one scale (checked above)
    if mode == "logits":
        return (total / passes).softmax(0)
    if mode == "probs":
        return total / passes
    return total.softmax(0)


def postprocess_crf(
    image: np.ndarray,
    probs: torch.Tensor | np.ndarray,
    preset: str = "deeplab",
    backend: str = "auto",
    *,
    device: torch.device | str | None = None,
) -> np.ndarray:
    """HxW int64 labels: a dense CRF over ``probs`` (C, H, W) on the HxWx3 uint8 ``image``.

    Softmax-unary presets (``deeplab``, ``deeplab_v2``, ``toco``, …) take the probabilities as
    they are; a label-unary preset (``label``) takes their argmax with ``n_labels = C``. ``backend``
    and ``device`` as in :func:`wsss.refine.crf.dense_crf`.
    """
    params = resolve_params(preset)
    if isinstance(probs, torch.Tensor):
        probs = probs.detach().to("cpu", torch.float32).numpy()
    scores = np.asarray(probs, dtype=np.float32)
    if scores.ndim != 3:
        raise ValueError(f"postprocess_crf needs (C, H, W) probabilities, got shape {scores.shape}")
    image = np.asarray(image)
    if image.shape[:2] != scores.shape[1:]:
        raise ValueError(
            f"the image is {image.shape[0]}x{image.shape[1]} but the probabilities are "
            f"{scores.shape[1]}x{scores.shape[2]}; predict at the image's size"
        )
    n_labels = scores.shape[0]
    unary_input = np.argmax(scores, axis=0) if params.unary == "labels" else scores
    return crf_labels(image, unary_input, params, n_labels=n_labels, backend=backend, device=device)


# ---------------------------------------------------------------------------------------------
# named protocols
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SegTestProtocol:
    """A seed paper's test-time settings: :func:`predict_probs` keywords plus the CRF preset."""

    scales: tuple[float, ...]
    scale_mode: ScaleMode
    flip: bool
    mode: Mode
    window: int | None
    overlap: float
    align_corners: bool
    crf: str | None

    def predict_kwargs(self) -> dict[str, Any]:
        """Keywords for :func:`predict_probs` (everything except the CRF)."""
        return {
            "scales": self.scales,
            "scale_mode": self.scale_mode,
            "flip": self.flip,
            "mode": self.mode,
            "window": self.window,
            "overlap": self.overlap,
            "align_corners": self.align_corners,
        }


TEST_PROTOCOLS: dict[str, SegTestProtocol] = {
    # TransCAM test_deeplab.py (BNR uses it unchanged): logits upsampled with align_corners True,
    # averaged, softmax, the 1-iteration DeepLab CRF.
    "transcam": SegTestProtocol(
        (0.5, 0.75, 1.0, 1.25, 1.5, 1.75), "relative", True, "logits", None, 0.0, True, "deeplab"
    ),
    # PMM WSSS_MMSeg aug_test: keep-ratio resize to short side 512·r, slide 512 / stride 480
    # (overlap 1/16), softmax averaged, DenseCRF with the kazuto1011 numbers.
    "pmm": SegTestProtocol(
        (256.0, 384.0, 512.0, 640.0, 768.0, 896.0),
        "short_side",
        True,
        "probs",
        512,
        1 / 16,
        False,
        "deeplab_v2",
    ),
    # UniA tools/voc/infer_seg.py: square 448·{1, 1.25, 1.5}, flip-sum, max over scales, ToCo CRF.
    "unia": SegTestProtocol((448.0, 560.0, 672.0), "square", True, "max_logits", None, 0.0, False, "toco"),
}


def get_protocol(name: str) -> SegTestProtocol:
    """The named test protocol; an unknown name raises ConfigError listing them."""
    try:
        return TEST_PROTOCOLS[name]
    except KeyError:
        raise ConfigError(
            f"unknown segmentation test protocol {name!r}{suggest(name, TEST_PROTOCOLS)}; "
            f"protocols: {', '.join(TEST_PROTOCOLS)}"
        ) from None
