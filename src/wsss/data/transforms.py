"""Joint image + mask augmentation on ``torchvision.transforms.v2``.

Images travel as ``tv_tensors.Image`` and masks as ``tv_tensors.Mask``, so one random draw
moves both and torchvision picks the right kernel for each (bicubic for images, centre-sampled nearest
for masks; masks are untouched by colour jitter and normalisation). The training pipeline is the
one the TransCAM/IRN lineage uses: random long-side resize, flip, colour jitter, normalise,
then a random crop whose padding is 0 in normalised space (the ImageNet mean colour) for the
image and 255 (ignore) for the mask.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as F

from wsss.data.palette import IGNORE_INDEX
from wsss.errors import ConfigError

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def _spatial_size(flat_inputs: list[Any]) -> tuple[int, int]:
    for inpt in flat_inputs:
        if isinstance(inpt, (tv_tensors.Image, tv_tensors.Mask)):
            h, w = F.get_size(inpt)
            return int(h), int(w)
    raise TypeError("the sample holds no tv_tensors.Image or tv_tensors.Mask to resize")


class _JointResize(v2.Transform, abc.ABC):
    """Resize images (bicubic, antialiased) and masks (nearest) to a size drawn per call."""

    @abc.abstractmethod
    def _target_size(self, height: int, width: int) -> list[int]:
        """The random output size [H, W] for an input of ``height`` x ``width``."""

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"size": self._target_size(*_spatial_size(flat_inputs))}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.Mask):
            return _resize_mask_centred(inpt, params["size"])
        return F.resize(inpt, params["size"], interpolation=InterpolationMode.BICUBIC, antialias=True)


def _resize_mask_centred(mask: tv_tensors.Mask, size: list[int]) -> tv_tensors.Mask:
    """Nearest-neighbour resize sampling at pixel centres (as PIL does).

    torchvision's own mask kernel uses the legacy ``nearest`` rule, which samples
    ``floor(i * scale)`` and so drifts up to half a source pixel from where the bicubic image
    resize (pixel-centre aligned) puts the same content; at non-integer scales about a tenth
    of the pixels then carry the wrong class. ``nearest-exact`` keeps both aligned.
    """
    data = mask.as_subclass(torch.Tensor)
    flat = data.reshape(-1, 1, *data.shape[-2:]).to(torch.float32)  # exact for indices < 2**24
    out = torch.nn.functional.interpolate(flat, size=list(size), mode="nearest-exact")
    out = out.round().to(data.dtype).reshape(*data.shape[:-2], *out.shape[-2:])
    return tv_tensors.wrap(out, like=mask)


class RandomResizeLong(_JointResize):
    """Resize so the long side is a uniform random integer in ``[min_long, max_long]``."""

    def __init__(self, min_long: int, max_long: int) -> None:
        super().__init__()
        if not 0 < min_long <= max_long:
            raise ValueError(f"need 0 < min_long <= max_long, got {min_long}, {max_long}")
        self.min_long, self.max_long = int(min_long), int(max_long)

    def _target_size(self, height: int, width: int) -> list[int]:
        long_side = int(torch.randint(self.min_long, self.max_long + 1, ()))
        scale = long_side / max(height, width)
        return [max(1, round(height * scale)), max(1, round(width * scale))]


class RandomRescale(_JointResize):
    """Scale both sides by one factor drawn uniformly from ``[min_scale, max_scale]``."""

    def __init__(self, min_scale: float, max_scale: float) -> None:
        super().__init__()
        if not 0 < min_scale <= max_scale:
            raise ValueError(f"need 0 < min_scale <= max_scale, got {min_scale}, {max_scale}")
        self.min_scale, self.max_scale = float(min_scale), float(max_scale)

    def _target_size(self, height: int, width: int) -> list[int]:
        scale = self.min_scale + (self.max_scale - self.min_scale) * float(torch.rand(()))
        return [max(1, round(height * scale)), max(1, round(width * scale))]


class Cutout(v2.Transform):
    """Zero ``holes`` square patches of the (normalised) image; masks pass unchanged.

    AMR's spotlight-branch augmentation (``misc/imutils.py: cutout``, applied to the CHW crop after
    normalisation, so a hole is the ImageNet mean colour): each hole's centre is uniform over the
    image and it spans ``size // 2`` pixels either side, clipped at the border (holes may overlap).
    """

    def __init__(self, holes: int = 3, size: int = 128) -> None:
        super().__init__()
        if holes < 1 or size < 2:
            raise ValueError(f"cutout needs holes >= 1 and size >= 2, got holes={holes}, size={size}")
        self.holes, self.size = int(holes), int(size)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = _spatial_size(flat_inputs)
        half = self.size // 2
        boxes = []
        for _ in range(self.holes):
            y, x = int(torch.randint(h, ())), int(torch.randint(w, ()))
            boxes.append((max(0, y - half), min(h, y + half), max(0, x - half), min(w, x + half)))
        return {"boxes": boxes}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not isinstance(inpt, tv_tensors.Image):
            return inpt
        out = inpt.clone()
        for y1, y2, x1, x2 in params["boxes"]:
            out[..., y1:y2, x1:x2] = 0
        return out


def normalize_steps(
    mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> list[v2.Transform]:
    """uint8 image → float in [0, 1] → (x - mean) / std; masks stay int64."""
    return [
        v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
        v2.Normalize(mean=list(mean), std=list(std)),
    ]


def train_transform(
    resize_long: tuple[int, int] | None = (320, 640),
    crop_size: int | tuple[int, int] | None = 512,
    flip: bool = True,
    color_jitter: tuple[float, float, float, float] | None = (0.3, 0.3, 0.3, 0.1),
    scale: tuple[float, float] | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    cutout: tuple[int, int] | None = None,
    resized_crop: tuple[float, float] | None = None,
    jitter_p: float = 1.0,
) -> v2.Compose:
    """Classifier / segmentation training augmentation; ``None`` switches a step off.

    ``cutout`` = (holes, size): :class:`Cutout` on the normalised crop, last (AMR's spotlight: (3, 128)).
    ``resized_crop`` = (min, max) area share: instead of resize-long + crop, torchvision's
    ``RandomResizedCrop`` to ``crop_size`` (bicubic; ToCo/UniA: (0.32, 1.0)). ``jitter_p``: the
    probability an image gets the colour jitter (UniA: 0.5).
    """
    steps: list[v2.Transform] = []
    if resized_crop is not None:
        if crop_size is None:
            raise ConfigError("a random resized crop needs a crop_size")
        steps.append(
            v2.RandomResizedCrop(
                crop_size, scale=resized_crop, interpolation=InterpolationMode.BICUBIC, antialias=True
            )
        )
    if resize_long is not None and resized_crop is None:
        steps.append(RandomResizeLong(*resize_long))
    if scale is not None:
        steps.append(RandomRescale(*scale))
    if flip:
        steps.append(v2.RandomHorizontalFlip(p=0.5))
    if color_jitter is not None:
        brightness, contrast, saturation, hue = color_jitter
        jitter = v2.ColorJitter(brightness=brightness, contrast=contrast, saturation=saturation, hue=hue)
        steps.append(jitter if jitter_p >= 1.0 else v2.RandomApply([jitter], p=jitter_p))
    steps += normalize_steps(mean, std)
    if crop_size is not None and resized_crop is None:
        steps.append(
            v2.RandomCrop(
                crop_size, pad_if_needed=True, fill={tv_tensors.Image: 0.0, tv_tensors.Mask: IGNORE_INDEX}
            )
        )
    if cutout is not None:
        steps.append(Cutout(*cutout))
    return v2.Compose(steps)


def eval_transform(
    resize_long: int | None = None, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> v2.Compose:
    """Deterministic evaluation transform: optional long-side resize, then normalise."""
    steps: list[v2.Transform] = []
    if resize_long is not None:
        steps.append(RandomResizeLong(resize_long, resize_long))
    return v2.Compose(steps + normalize_steps(mean, std))


def unnormalize(
    image: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> torch.Tensor:
    """Undo :func:`normalize_steps` as float: (…, 3, H, W) → values in [0, 1] (clamped)."""
    m = torch.as_tensor(mean, dtype=image.dtype, device=image.device).view(3, 1, 1)
    s = torch.as_tensor(std, dtype=image.dtype, device=image.device).view(3, 1, 1)
    return (image * s + m).clamp(0, 1)


def denormalize(
    image: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> torch.Tensor:
    """Undo :func:`normalize_steps` for display: (…, 3, H, W) float → uint8."""
    return (unnormalize(image, mean, std) * 255).round().to(torch.uint8)
