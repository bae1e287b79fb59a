"""SEAM's training objective (Wang et al., CVPR 2020) as PMM runs it (``pipeline/train_cam.py``,
the same as ``YudeWang/SEAM`` ``train_SEAM.py``; seed_methods.md §3.2).

Two views per batch: the images (view 1) and their bilinear ×0.3 rescale (view 2, size
floor(0.3·H) × floor(0.3·W), align corners), each through the network once. Each view's
``cam`` and ``cam_rv`` are upsampled to that view's input size (bilinear, align corners). With
y⁺ = [1, y] (background always present) and ``n(·)`` SEAM's ``max_norm`` (ReLU, then per
channel (v − min − 1e-5)₊ / (max − min + 1e-5)):

* ``cls`` = ½ Σ_views MLSM(GAP(cam)[fg], y), GAP over the upsampled map;
* ``rvmin`` = ½ Σ_views mean over images of the mean of ReLU of the smallest quarter of
  max_{fg c}(cam_rv·y⁺) over pixels ("adaptive min-pooling"; background channel left out);
* ``er`` = mean |n(cam₁)↓ · y⁺ − n(cam₂) · y⁺| over the foreground channels (↓ = bilinear to
  view 2's size, align corners), gradients into both views;
* ``ecr`` = Σ over the two directions of the mean of the top 20 % (per image, over all
  channels and pixels) of |t(other view) − n(cam_rv)·y⁺| at view 2's size, where the target
  t is the *detached* n(cam)·y⁺ with background 1 − max fg and each pixel's non-max foreground
  zeroed (SEAM's ``max_onehot`` keeps the max value, it is not one-hot).

``loss = cls + rvmin + er + ecr``. Because PCM propagates a detached CAM, ``rvmin`` and ``ecr``
train only PCM's layers; ``cls`` and ``er`` train the backbone and ``fc8``. PMM skips the
optimiser step when the loss is NaN; this objective does not (a trainer NaN policy can).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsss.engine.progress import TrainProgress
from wsss.errors import ConfigError
from wsss.losses.objective import Objective, check_image_labels
from wsss.models.cam.seam import SEAMOutput
from wsss.registry import METHODS

SCALE = 0.3  # view 2's rescale factor
MIN_FRACTION = 4  # rvmin averages the smallest h·w // 4 pixels
TOP_FRACTION = 0.2  # ecr averages the largest 20 % of the differences
NORM_EPS = 1e-5  # SEAM's ``max_norm`` eps


def max_norm(x: Tensor) -> Tensor:
    """SEAM's ``max_norm``: ReLU, then per-channel min–max to [0, 1) (values at the min become 0)."""
    x = F.relu(x)
    hi = x.amax(dim=(2, 3), keepdim=True)
    lo = x.amin(dim=(2, 3), keepdim=True)
    return F.relu(x - lo - NORM_EPS) / (hi - lo + NORM_EPS)


def resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize with aligned corners, as every resize of SEAM's loop."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


def cls_loss(cam: Tensor, labels: Tensor) -> Tensor:
    """MLSM on the spatial mean of the foreground channels (channel 0 is not supervised)."""
    return F.multilabel_soft_margin_loss(cam.mean(dim=(2, 3))[:, 1:], labels)


def rvmin_loss(cam_rv: Tensor, labels: Tensor) -> Tensor:
    """Adaptive min-pooling: mean of ReLU over the smallest quarter of each image's max fg score."""
    fg = cam_rv[:, 1:] * labels[:, :, None, None]
    peak = fg.amax(dim=1).flatten(1)
    k = max(1, peak.shape[1] // MIN_FRACTION)
    return F.relu(peak.topk(k, dim=1, largest=False).values).mean()


def er_loss(norm1: Tensor, norm2: Tensor) -> Tensor:
    """Equivariance: mean |norm1↓ − norm2| over the foreground channels (both already masked)."""
    small = resize(norm1, (norm2.shape[-2], norm2.shape[-1]))
    return (small[:, 1:] - norm2[:, 1:]).abs().mean()


def ecr_target(norm: Tensor) -> Tensor:
    """Detached target: background 1 − max fg; at each pixel fg channels below the max zeroed."""
    norm = norm.detach()
    fg = norm[:, 1:]
    top = fg.amax(dim=1, keepdim=True)
    fg = torch.where(fg != top, torch.zeros_like(fg), fg)
    return torch.cat([1.0 - top, fg], dim=1)


def ecr_term(target: Tensor, rv: Tensor) -> Tensor:
    """Mean of the top 20 % of |target − rv| per image (over every channel and pixel)."""
    diff = (target - rv).abs().flatten(1)
    k = max(1, int(diff.shape[1] * TOP_FRACTION))
    return diff.topk(k, dim=1).values.mean()


def seam_losses(cam1: Tensor, rv1: Tensor, cam2: Tensor, rv2: Tensor, labels: Tensor) -> dict[str, Tensor]:
    """All terms from each view's maps at its input size (view 2 is the smaller one)."""
    y_bg = torch.cat([labels.new_ones((labels.shape[0], 1)), labels], dim=1)[:, :, None, None]
    size2 = (cam2.shape[-2], cam2.shape[-1])
    cls = (cls_loss(cam1, labels) + cls_loss(cam2, labels)) / 2
    rvmin = (rvmin_loss(rv1, labels) + rvmin_loss(rv2, labels)) / 2
    n1, n2 = max_norm(cam1) * y_bg, max_norm(cam2) * y_bg
    er = er_loss(n1, n2)
    n1_small = resize(n1, size2)
    rv1_small = resize(max_norm(rv1), size2) * y_bg
    rv2_norm = max_norm(rv2) * y_bg
    ecr = ecr_term(ecr_target(n2), rv1_small) + ecr_term(ecr_target(n1_small), rv2_norm)
    loss = cls + rvmin + er + ecr
    return {"loss": loss, "cls": cls, "rvmin": rvmin, "er": er, "ecr": ecr}


def view2_size(size: tuple[int, int]) -> tuple[int, int]:
    """floor(0.3·H) × floor(0.3·W), what ``F.interpolate(scale_factor=0.3)`` gives."""
    h, w = (math.floor(s * SCALE) for s in size)
    if h < 1 or w < 1:
        raise ConfigError(f"SEAM's ×{SCALE} view of a {size[0]}×{size[1]} input is empty; use larger crops")
    return h, w


class SEAMObjective(Objective):
    """SEAM's four terms over two views; returns ``{'loss', 'cls', 'rvmin', 'er', 'ecr'}``."""

    needs_attention = False
    forwards_per_step = 2

    def step(
        self, net: nn.Module, images: Tensor, labels: Tensor, progress: TrainProgress | None = None
    ) -> dict[str, Tensor]:
        """Run the images and their ×0.3 rescale through ``net`` separately, then score both."""
        size1 = (images.shape[-2], images.shape[-1])
        size2 = view2_size(size1)
        small = F.interpolate(images, size=size2, mode="bilinear", align_corners=True)
        out1, out2 = net(images), net(small)
        return self(out1, out2, labels, size1, size2)

    def forward(
        self,
        out1: SEAMOutput,
        out2: SEAMOutput,
        labels: Tensor,
        size1: tuple[int, int],
        size2: tuple[int, int],
    ) -> dict[str, Tensor]:
        """The losses from two forward outputs and the two views' input sizes."""
        labels = labels.to(out1.cam.dtype)
        check_image_labels(labels, out1.cam)
        cam1, rv1 = resize(out1.cam, size1), resize(out1.cam_rv, size1)
        cam2, rv2 = resize(out2.cam, size2), resize(out2.cam_rv, size2)
        return seam_losses(cam1, rv1, cam2, rv2, labels)


@METHODS.register("seam")
def build_seam_objective() -> SEAMObjective:
    """SEAM/PMM classifier training: cls + adaptive min-pooling + equivariance + ECR."""
    return SEAMObjective()
