"""IRN (inter-pixel relation network, Ahn et al. CVPR'19) on any backbone: class boundaries and displacements.

Architecture (``jiwoon-ahn/irn`` ``net/resnet50_irn.py``). A frozen ImageNet backbone feeds two
new branches built from 1×1 convs with GroupNorm:

* **edge** (class boundaries): every level → bias-free 1×1 conv to 32 channels → GroupNorm(4)
  → bilinear upsampling to the finest level's stride (×1, ×2, ×4) → ReLU, cropped to the
  finest grid; the concatenation (5·32 = 160 on ResNet-50) → 1×1 conv with bias → 1 logit.
  ``sigmoid`` gives the boundary map at stride 4.
* **displacement** (IRN's instance part, off by default): levels at the finest stride
  (IRN: stem 64, ``layer1`` 128 channels) and the coarser ones (``layer2``, ``layer3``,
  ``layer4``: 256 each, upsampled to the coarsest-but-one stride, 8) are projected the same way
  (GroupNorm with 8 channels per group up to 128 channels, 16 groups above); the coarse part is
  fused (768 → 256, upsampled to stride 4), concatenated with the fine part (448) → 256 → ReLU
  → 2 channels (dy, dx in stride-4 grid cells) → a mean shift that subtracts the running mean
  of the field at inference (IRN's ``MeanShift``).

Level mapping (IRN name → our backbone contract): ``x1`` stem after max-pool (64 ch, stride 4)
→ ``stem``; ``x2`` ``layer1`` → ``stage1``; ``x3`` ``layer2`` → ``stage2``; ``x4`` ``layer3``
→ ``stage3``; ``x5`` ``layer4`` → ``stage4``. ``levels=None`` takes every level the backbone
lists, so a ResNet without a ``stem`` level gives a 4-level edge branch (128 → 1).

Freezing (IRN detaches every backbone output and keeps the backbone in eval mode): the
backbone runs under ``no_grad``, its parameters have ``requires_grad=False`` and ``train()``
keeps it in eval mode. Only the branches train, in IRN's two optimiser groups
(:meth:`IRNet.optimizer_groups`, which the training stage uses): the edge branch at ``lr``, the
displacement branch at ``head_lr_mult·lr`` (IRN: 10), weight decay on every parameter of both
(GroupNorm and biases included). IRN's ResNet-50 has stride 16 with an *undilated* ``layer4``
(``strides=[2, 2, 2, 1]``), hence ``output_stride=16, dilate=False`` by default for ResNets.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from wsss.errors import ConfigError
from wsss.models.backbones.base import Backbone, FeatureInfo
from wsss.refine.pairs import Cover
from wsss.refine.path_index import IRN_TRAIN_RADIUS, IRN_WALK, PathIndex, walk_with_edge
from wsss.refine.random_walk import WalkSettings, foreground_to_labels
from wsss.registry import AFFINITY_MODELS, BACKBONES

EDGE_CHANNELS = 32
# IRN's displacement widths for its five levels (stem, layer1 … layer4); fewer levels take the tail
DISPLACEMENT_CHANNELS = (64, 128, 256, 256, 256)
DISPLACEMENT_FUSE = 256
DEFAULT_BACKBONE_KWARGS: dict[str, dict[str, Any]] = {
    "resnet50": {"output_stride": 16, "dilate": False},
    "resnet101": {"output_stride": 16, "dilate": False},
}


def group_count(channels: int) -> int:
    """IRN's GroupNorm group counts: 32 → 4, 64 → 8, 128 and wider → 16."""
    return 16 if channels >= 128 else max(1, channels // 8)


class ProjectUp(nn.Sequential):
    """1×1 conv (no bias) → GroupNorm → optional bilinear ×``scale`` → ReLU (IRN's branch unit)."""

    def __init__(self, in_channels: int, out_channels: int, scale: int = 1) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.GroupNorm(group_count(out_channels), out_channels),
        ]
        if scale > 1:
            layers.append(nn.Upsample(scale_factor=scale, mode="bilinear", align_corners=False))
        layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


def _scale(info: FeatureInfo, stride: int) -> int:
    if info.stride % stride:
        raise ConfigError(
            f"IRN needs level strides that are multiples of the finer ones; '{info.name}' has stride "
            f"{info.stride}, not a multiple of {stride}"
        )
    return info.stride // stride


def _crop(x: Tensor, size: tuple[int, int]) -> Tensor:
    return x[..., : size[0], : size[1]]


class EdgeBranch(nn.Module):
    """Class-boundary logits ``(B, 1, h, w)`` at the finest level's stride."""

    def __init__(self, infos: Sequence[FeatureInfo], channels: int = EDGE_CHANNELS) -> None:
        super().__init__()
        self.stride = min(info.stride for info in infos)
        self.levels = tuple(info.name for info in infos)
        self.fine_level = next(info.name for info in infos if info.stride == self.stride)
        self.proj = nn.ModuleDict(
            {info.name: ProjectUp(info.channels, channels, _scale(info, self.stride)) for info in infos}
        )
        self.fuse = nn.Conv2d(channels * len(infos), 1, 1, bias=True)

    def forward(self, feats: dict[str, Tensor]) -> Tensor:
        size = feats[self.fine_level].shape[-2:]
        parts = [_crop(self.proj[name](feats[name]), size) for name in self.levels]
        return self.fuse(torch.cat(parts, dim=1))


class MeanShift(nn.Module):
    """Identity in training (while tracking the batch mean per channel); subtracts that mean in eval.

    IRN's displacement field should average to zero offset; its ``MeanShift`` is a BatchNorm
    without affine parameters whose normalised output is thrown away during training.
    """

    running_mean: Tensor

    def __init__(self, channels: int, momentum: float = 0.1) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("running_mean", torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            with torch.no_grad():
                batch_mean = x.detach().mean(dim=(0, 2, 3))
                self.running_mean.mul_(1.0 - self.momentum).add_(batch_mean, alpha=self.momentum)
            return x
        return x - self.running_mean.view(1, -1, 1, 1)


class DisplacementBranch(nn.Module):
    """Displacement field ``(B, 2, h, w)`` (dy, dx in grid cells) at the finest level's stride."""

    def __init__(
        self,
        infos: Sequence[FeatureInfo],
        channels: Sequence[int] | None = None,
        fuse_channels: int = DISPLACEMENT_FUSE,
    ) -> None:
        super().__init__()
        infos = tuple(infos)
        if channels is None:
            if len(infos) > len(DISPLACEMENT_CHANNELS):
                raise ConfigError(
                    f"{len(infos)} levels but IRN's default displacement widths cover "
                    f"{len(DISPLACEMENT_CHANNELS)}; give displacement_channels explicitly"
                )
            channels = DISPLACEMENT_CHANNELS[len(DISPLACEMENT_CHANNELS) - len(infos) :]
        channels = tuple(channels)
        if len(channels) != len(infos):
            raise ConfigError(f"{len(channels)} displacement widths for {len(infos)} levels")
        self.stride = min(info.stride for info in infos)
        fine = [(i, c) for i, c in zip(infos, channels) if i.stride == self.stride]
        coarse = [(i, c) for i, c in zip(infos, channels) if i.stride != self.stride]
        if not coarse:
            raise ConfigError(
                "the displacement branch needs levels coarser than the finest one (IRN: layer2 … layer4)"
            )
        self.coarse_stride = min(i.stride for i, _ in coarse)
        self.fine_levels = tuple(i.name for i, _ in fine)
        self.coarse_levels = tuple(i.name for i, _ in coarse)
        self.coarse_ref = next(i.name for i, _ in coarse if i.stride == self.coarse_stride)
        self.proj = nn.ModuleDict({i.name: ProjectUp(i.channels, c) for i, c in fine})
        for info, c in coarse:
            self.proj[info.name] = ProjectUp(info.channels, c, _scale(info, self.coarse_stride))
        if self.coarse_stride % self.stride:
            raise ConfigError(f"coarse stride {self.coarse_stride} is not a multiple of {self.stride}")
        coarse_in = sum(c for _, c in coarse)
        self.fuse_coarse = ProjectUp(coarse_in, fuse_channels, self.coarse_stride // self.stride)
        fine_in = sum(c for _, c in fine) + fuse_channels
        self.head = nn.Sequential(
            nn.Conv2d(fine_in, fuse_channels, 1, bias=False),
            nn.GroupNorm(group_count(fuse_channels), fuse_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(fuse_channels, 2, 1, bias=False),
            MeanShift(2),
        )

    def forward(self, feats: dict[str, Tensor]) -> Tensor:
        fine_size = feats[self.fine_levels[0]].shape[-2:]
        coarse_size = feats[self.coarse_ref].shape[-2:]
        coarse = [_crop(self.proj[name](feats[name]), coarse_size) for name in self.coarse_levels]
        up = _crop(self.fuse_coarse(torch.cat(coarse, dim=1)), fine_size)
        fine = [self.proj[name](feats[name]) for name in self.fine_levels]
        return self.head(torch.cat([*fine, up], dim=1))


class IRNOutput(NamedTuple):
    """Edge logits ``(B, 1, h, w)`` and, with ``with_displacement``, the field ``(B, 2, h, w)``."""

    edge_logits: Tensor
    displacement: Tensor | None


class IRNPairs(NamedTuple):
    """Pair affinities ``(B, P)`` on ``(src, dst)`` and the displacement field (or None)."""

    affinity: Tensor
    src: Tensor
    dst: Tensor
    displacement: Tensor | None


class IRNet(nn.Module):
    """Frozen backbone + IRN's edge branch (+ optional displacement branch)."""

    def __init__(
        self,
        backbone: Backbone,
        levels: Sequence[str] | None = None,
        edge_channels: int = EDGE_CHANNELS,
        with_displacement: bool = False,
        displacement_channels: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        names = tuple(info.name for info in backbone.feature_info) if levels is None else tuple(levels)
        if not names:
            raise ConfigError(f"{type(backbone).__name__} lists no feature levels for IRN")
        try:
            infos = [backbone.level(name) for name in names]
        except KeyError as exc:
            raise ConfigError(str(exc.args[0])) from exc
        self.backbone = backbone
        self.backbone.requires_grad_(False)
        self.levels = names
        self.edge = EdgeBranch(infos, edge_channels)
        self.displacement = DisplacementBranch(infos, displacement_channels) if with_displacement else None
        self.output_stride = self.edge.stride
        self.backbone.eval()

    def train(self, mode: bool = True) -> IRNet:
        super().train(mode)
        self.backbone.eval()
        return self

    def features(self, x: Tensor) -> dict[str, Tensor]:
        """The backbone levels, computed without a graph (the backbone never trains)."""
        with torch.no_grad():
            feats = self.backbone.forward_features(x)
        return {name: feats[name] for name in self.levels}

    def forward(self, x: Tensor) -> IRNOutput:
        feats = self.features(x)
        dp = self.displacement(feats) if self.displacement is not None else None
        return IRNOutput(self.edge(feats), dp)

    def edge_map(self, x: Tensor, flip: bool = True) -> Tensor:
        """Boundary map in [0, 1], ``(B, 1, h, w)``; ``flip`` averages the logits of ``x`` and its mirror (IRN)."""
        if not flip:
            return torch.sigmoid(self.edge(self.features(x)))
        logits = self.edge(self.features(torch.cat([x, x.flip(-1)], dim=0)))
        b = x.shape[0]
        return torch.sigmoid((logits[:b] + logits[b:].flip(-1)) / 2)

    def forward_pairs(self, x: Tensor, radius: int = IRN_TRAIN_RADIUS, cover: Cover = "crop") -> IRNPairs:
        """Edge → pair affinities ``1 − max edge`` on the path (IRN training: radius 10, crop layout).

        The pairs are those of ``offset_pairs(h, w, radius_offsets(radius), cover)``, so the
        masks of ``affinity_labels(label_grid, radius_offsets(radius), cover)`` line up with them.
        """
        out = self(x)
        aff, src, dst = PathIndex.build(radius).affinity(torch.sigmoid(out.edge_logits), cover)
        return IRNPairs(aff, src, dst, out.displacement)

    def trainable_parameters(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """``(edge parameters, displacement parameters)`` (the second empty without displacement)."""
        dp = list(self.displacement.parameters()) if self.displacement is not None else []
        return list(self.edge.parameters()), dp

    def optimizer_groups(
        self, lr: float, weight_decay: float, head_lr_mult: float = 10.0
    ) -> list[dict[str, Any]]:
        """IRN's groups (``train_irn.py``): edge at ``lr``, displacement at ``head_lr_mult·lr``, decay on all.

        Not DeepLab-style ``head_names`` groups: IRN gives biases and GroupNorm parameters the
        same lr and weight decay as the weights, and the frozen backbone has no group.
        """
        edge, dp = self.trainable_parameters()
        groups = [{"name": "edge", "params": edge, "lr": lr, "weight_decay": weight_decay}]
        if dp:
            groups.append(
                {"name": "displacement", "params": dp, "lr": head_lr_mult * lr, "weight_decay": weight_decay}
            )
        return groups


@AFFINITY_MODELS.register("irn")
def build_irn(
    backbone: str = "resnet50",
    pretrained: str | None = None,
    levels: Sequence[str] | None = None,
    edge_channels: int = EDGE_CHANNELS,
    with_displacement: bool = False,
    displacement_channels: Sequence[int] | None = None,
    **backbone_kwargs: Any,
) -> IRNet:
    """IRN on the backbone registered as ``backbone`` (ImageNet weights from ``pretrained``).

    ResNets default to IRN's ``output_stride=16, dilate=False``; ``backbone_kwargs`` override.
    """
    kwargs = {**DEFAULT_BACKBONE_KWARGS.get(backbone, {}), **backbone_kwargs}
    if pretrained is not None:
        kwargs["pretrained"] = pretrained
    net = BACKBONES.build(backbone, where="affinity.backbone", **kwargs)
    if not isinstance(net, Backbone):
        raise ConfigError(
            f"backbone '{backbone}' ({type(net).__name__}) does not follow the Backbone contract "
            "(feature_info + forward_features); IRN needs named feature levels"
        )
    return IRNet(net, levels, edge_channels, with_displacement, displacement_channels)


def irn_refine(
    cams: Tensor,
    image: Tensor,
    model: IRNet,
    settings: WalkSettings = IRN_WALK,
    keys: Sequence[int] | Tensor | None = None,
) -> Tensor:
    """IRN's semantic random walk for one image (``make_sem_seg_labels``): the label map ``(H, W)``.

    ``cams``: foreground CAMs ``(K, h, w)`` on the model's stride-4 grid (IRN's strided ``cam``,
    max-normalised); ``image``: the normalised input ``(3, H, W)`` with ``ceil(H/4) = h``. The
    edge map comes from the image and its mirror; :func:`walk_with_edge` walks (CAM power,
    ×(1 − edge), ``1 − max edge`` affinities with radius 5, β 10, 2^8 steps); then
    :func:`foreground_to_labels` upsamples ×4, crops to ``H×W``, divides by the max, puts the
    constant background (0.25) in front and arg-maxes. ``keys`` maps channels 1.. to label ids.
    """
    if image.dim() != 3:
        raise ValueError(f"image must be (3, H, W), got shape {tuple(image.shape)}")
    if settings.bg_mode != "constant":
        raise ConfigError(f"IRN's walk puts a constant background in front, not bg_mode {settings.bg_mode!r}")
    param = next(model.parameters(), None)
    device = param.device if param is not None else image.device
    with torch.no_grad():
        edge = model.edge_map(image[None].to(device))[0, 0]
    walked = walk_with_edge(cams.to(device), edge, settings)
    size = (int(image.shape[-2]), int(image.shape[-1]))
    return foreground_to_labels(walked, size, model.output_stride, settings.bg_value, keys)


__all__ = [
    "DEFAULT_BACKBONE_KWARGS",
    "DisplacementBranch",
    "EdgeBranch",
    "IRNOutput",
    "IRNPairs",
    "IRNet",
    "MeanShift",
    "build_irn",
    "irn_refine",
]
