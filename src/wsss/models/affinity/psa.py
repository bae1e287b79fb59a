"""PSA's AffinityNet on any backbone: a per-pixel embedding whose L1 distances give affinities.

Architecture (PSA, CVPR'18, as TransCAM trains it; transcam.md §2.6): three feature levels of
the backbone — on ResNet-38 ``conv4`` (512 ch), ``conv5`` (1024) and ``conv6`` (4096), all at
stride 8 — each go through a bias-free 1×1 conv (64 / 128 / 256 channels) and ELU; levels
coarser than the finest one are resized to it bilinearly; the concatenation (448 channels)
goes through a bias-free 1×1 conv ``fuse`` (PSA's ``f9``, xavier-uniform init with gain 4) and
ELU. The affinity of pixels ``i, j`` is ``exp(−mean_c |f_i − f_j|)``, in (0, 1].

Freezing (PSA's overridden ``train()``, kept by TransCAM): the stem ``conv1a`` and the first
stage ``b2, b2_1, b2_2`` get no gradient, and every BatchNorm runs in eval mode with frozen
affine parameters. Here that is expressed with names, so it works on any backbone:
``frozen`` lists backbone parameter-name prefixes (a prefix matches the name itself or
anything under ``prefix.``); ``freeze_bn`` holds every BatchNorm. Frozen modules are also kept
in eval mode by :meth:`AffinityNet.train`. Defaults per backbone name live in
``DEFAULT_FROZEN``; a backbone not listed there freezes nothing unless told.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsss.errors import ConfigError
from wsss.models.backbones.base import Backbone
from wsss.refine.pairs import Cover, pair_indices
from wsss.registry import AFFINITY_MODELS, BACKBONES

DEFAULT_FROZEN: dict[str, tuple[str, ...]] = {"resnet38": ("conv1a", "b2", "b2_1", "b2_2")}
_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def _under(name: str, prefixes: Sequence[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def pair_affinities(emb: Tensor, src: Tensor, dst: Tensor) -> Tensor:
    """``(B, P)`` affinities ``exp(−mean_c |emb_src − emb_dst|)`` for flat grid indices ``src, dst``."""
    flat = emb.flatten(2)
    src, dst = src.to(emb.device), dst.to(emb.device)
    dist = (flat.index_select(2, src) - flat.index_select(2, dst)).abs().mean(dim=1)
    return torch.exp(-dist)


class AffinityNet(nn.Module):
    """Backbone + PSA embedding head. ``forward(x)`` → embedding ``(B, embed_dim, h, w)``."""

    head_names = ("proj", "fuse")

    def __init__(
        self,
        backbone: Backbone,
        levels: Sequence[str] = ("conv4", "conv5", "conv6"),
        level_channels: Sequence[int] = (64, 128, 256),
        embed_dim: int = 448,
        frozen: Sequence[str] = (),
        freeze_bn: bool = True,
    ) -> None:
        super().__init__()
        levels, level_channels = tuple(levels), tuple(level_channels)
        if not levels or len(levels) != len(level_channels):
            raise ConfigError(
                f"affinity levels {list(levels)} and level_channels {list(level_channels)} must be "
                "non-empty and of the same length"
            )
        try:
            infos = [backbone.level(name) for name in levels]
        except KeyError as exc:
            raise ConfigError(str(exc.args[0])) from exc
        self.backbone = backbone
        self.levels = levels
        self.output_stride = min(info.stride for info in infos)
        self.embed_dim = embed_dim
        self.proj = nn.ModuleDict(
            {
                info.name: nn.Conv2d(info.channels, ch, 1, bias=False)
                for info, ch in zip(infos, level_channels)
            }
        )
        self.fuse = nn.Conv2d(sum(level_channels), embed_dim, 1, bias=False)
        for conv in self.proj.values():
            nn.init.kaiming_normal_(conv.weight)
        nn.init.xavier_uniform_(self.fuse.weight, gain=4.0)
        self.frozen = tuple(frozen)
        self.freeze_bn = freeze_bn
        self._freeze()

    def _freeze(self) -> None:
        names = [n for n, _ in self.backbone.named_parameters()]
        unknown = [p for p in self.frozen if not any(_under(n, [p]) for n in names)]
        if unknown:
            tops = ", ".join(n for n, _ in self.backbone.named_children())
            raise ConfigError(
                f"frozen prefix(es) {unknown} match no parameter of {type(self.backbone).__name__}; "
                f"its top-level modules are: {tops}"
            )
        for name, param in self.backbone.named_parameters():
            if _under(name, self.frozen):
                param.requires_grad_(False)
        for module in self._held_modules():
            for param in module.parameters():
                param.requires_grad_(False)

    def _held_modules(self) -> list[nn.Module]:
        """Backbone modules kept in eval mode: frozen ones, and every BatchNorm if ``freeze_bn``."""
        held = []
        for name, module in self.backbone.named_modules():
            if (name and _under(name, self.frozen)) or (self.freeze_bn and isinstance(module, _BN_TYPES)):
                held.append(module)
        return held

    def train(self, mode: bool = True) -> AffinityNet:
        super().train(mode)
        if mode:
            for module in self._held_modules():
                module.eval()
        return self

    def forward(self, x: Tensor) -> Tensor:
        feats = self.backbone.forward_features(x)
        parts = [F.elu(self.proj[name](feats[name])) for name in self.levels]
        size = max((p.shape[-2:] for p in parts), key=lambda s: s[0] * s[1])
        parts = [
            p if p.shape[-2:] == size else F.interpolate(p, size=size, mode="bilinear", align_corners=False)
            for p in parts
        ]
        return F.elu(self.fuse(torch.cat(parts, dim=1)))

    @staticmethod
    def affinities(emb: Tensor, src: Tensor, dst: Tensor) -> Tensor:
        """``(B, P)`` affinities of the pairs ``(src, dst)`` (flat indices into ``emb``'s grid)."""
        return pair_affinities(emb, src, dst)

    def forward_pairs(
        self, x: Tensor, radius: int = 5, cover: Cover = "crop"
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Embed ``x`` and return ``(affinity (B, P), src, dst)`` for the radius pairs of its grid."""
        emb = self(x)
        src, dst = pair_indices(emb.shape[-2], emb.shape[-1], radius, cover=cover, device=emb.device)
        return pair_affinities(emb, src, dst), src, dst


@AFFINITY_MODELS.register("psa")
def build_affinity_net(
    backbone: str = "resnet38",
    levels: Sequence[str] = ("conv4", "conv5", "conv6"),
    level_channels: Sequence[int] = (64, 128, 256),
    embed_dim: int = 448,
    pretrained: str | None = None,
    frozen: Sequence[str] | None = None,
    freeze_bn: bool = True,
    **backbone_kwargs: Any,
) -> AffinityNet:
    """AffinityNet on the backbone registered as ``backbone``.

    ``pretrained`` (a local ImageNet weight file) and ``backbone_kwargs`` go to the backbone's
    builder. ``frozen=None`` takes ``DEFAULT_FROZEN[backbone]`` (ResNet-38: ``conv1a``, ``b2*``),
    else nothing; ``freeze_bn`` holds all BatchNorm layers (PSA/TransCAM).
    """
    if pretrained is not None:
        backbone_kwargs["pretrained"] = pretrained
    net = BACKBONES.build(backbone, where="affinity.backbone", **backbone_kwargs)
    if not isinstance(net, Backbone):
        raise ConfigError(
            f"backbone '{backbone}' ({type(net).__name__}) does not follow the Backbone contract "
            "(feature_info + forward_features); AffinityNet needs named feature levels"
        )
    frozen = DEFAULT_FROZEN.get(backbone, ()) if frozen is None else tuple(frozen)
    return AffinityNet(net, levels, level_channels, embed_dim, frozen=frozen, freeze_bn=freeze_bn)
