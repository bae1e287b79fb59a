"""AMR's Attention Modulation Module (Qin et al., AAAI 2022; ``jieqin-ai/AMR`` ``net/amm.py``).

CBAM's channel-then-spatial gate with the sigmoid replaced by a Gaussian re-mapping of the gate
logits, G(a; μ, σ) = exp(−(a − μ)² / (2σ²)) / (√(2π)·σ), with μ and σ the mean and (unbiased)
standard deviation of the whole gate tensor (every image, every channel or position), detached.
Responses near the mean get the largest weight and extreme ones are damped, which spreads the
activation beyond the most discriminative parts. The 1/(√(2π)σ) factor is kept (no
renormalisation to a peak of 1), as in the released code.

* channel gate: a_c = MLP(GAP(F)), MLP = Linear(C, C/r) → ReLU → Linear(C/r, C), average pooling only;
  F_c = F ⊙ G(a_c) broadcast over H×W.
* spatial gate: a_s = BN(conv7×7([max_c F_c; mean_c F_c])), 2 → 1 channels, no bias, BN eps 1e-5,
  momentum 0.01, no ReLU; F_s = F_c ⊙ G(a_s) broadcast over C.

``bn_train_at_inference`` reproduces the released code's ``Net.train()`` override (seed_methods.md
§1): the gate's BatchNorm never leaves training mode, so inference normalises with the statistics of
the batch being inferred (and keeps updating the running ones). Off by default (clean eval mode).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from wsss.errors import ConfigError
from wsss.registry import BACKBONE_INSERTS


def gaussian_remap(a: Tensor) -> Tensor:
    """G(a; μ, σ) with μ, σ the detached mean and unbiased std over every element of ``a``."""
    mu = a.mean().detach()
    sigma = a.std().detach()
    return torch.exp(-((a - mu) ** 2) / (2 * sigma**2)) / (math.sqrt(2 * math.pi) * sigma)


class ChannelGate(nn.Module):
    """F ⊙ G(MLP(GAP(F))) over channels."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, channels))

    def forward(self, x: Tensor) -> Tensor:
        logits = self.mlp(x.mean(dim=(2, 3)))
        return x * gaussian_remap(logits)[:, :, None, None]


class SpatialGate(nn.Module):
    """F ⊙ G(BN(conv7×7([max_c F; mean_c F]))) over positions."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=(kernel_size - 1) // 2, bias=False)
        self.bn = nn.BatchNorm2d(1, eps=1e-5, momentum=0.01)

    def forward(self, x: Tensor) -> Tensor:
        pooled = torch.cat([x.amax(dim=1, keepdim=True), x.mean(dim=1, keepdim=True)], dim=1)
        return x * gaussian_remap(self.bn(self.conv(pooled)))


class AMM(nn.Module):
    """Channel gate, then spatial gate, each through the Gaussian re-mapping."""

    def __init__(self, channels: int, reduction: int = 16, *, bn_train_at_inference: bool = False) -> None:
        super().__init__()
        self.channel = ChannelGate(channels, reduction)
        self.spatial = SpatialGate()
        self.bn_train_at_inference = bn_train_at_inference

    def forward(self, x: Tensor) -> Tensor:
        return self.spatial(self.channel(x))

    def train(self, mode: bool = True) -> AMM:
        super().train(mode)
        if self.bn_train_at_inference:
            self.spatial.bn.train(True)
        return self


@BACKBONE_INSERTS.register("amm")
def build_amm(channels: int, reduction: int = 16, bn_train_at_inference: bool = False) -> AMM:
    """AMR's AMM for ``channels`` features (r = 16); ``bn_train_at_inference``: the released code's
    BatchNorm that stays in training mode at inference (compat), off by default."""
    for key, value in (("channels", channels), ("reduction", reduction)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"amm {key} must be a positive integer, got {value!r}")
    if not isinstance(bn_train_at_inference, bool):
        raise ConfigError(f"amm bn_train_at_inference must be true or false, got {bn_train_at_inference!r}")
    return AMM(channels, reduction, bn_train_at_inference=bn_train_at_inference)
