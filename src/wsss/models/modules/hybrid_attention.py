"""SPU's hybrid attention (Liu et al., Visual Computer 2024; ``pur-suit/SPU`` ``net/hybridAttention.py``).

A BAM-like block whose spatial gate sees a wide context through two dilated 3×3 convolutions, so
the saliency perception net it sits in attends beyond the most discriminative part:

* channel gate: a_c = FC(C/r→C)(ReLU(BN1d(FC(C→C/r)(GAP(X))))) ∈ ℝ^{B×C}, broadcast over H×W;
* spatial gate: a_s = Conv1×1(C/r→1)([Conv3×3 dil d → BN → ReLU]×2 (ReLU(BN(Conv1×1(C→C/r)(X)))))
  ∈ ℝ^{B×1×H×W}, broadcast over C;
* Y = (1 + σ(a_c ⊙ a_s)) ⊙ X with ``combine="product"`` (the released code), or
  (1 + σ(a_c + a_s)) ⊙ X with ``combine="sum"`` (BAM's original form).

r = 16 and d = 4 as released. The BatchNorms are ordinary ones (their train/eval mode follows the
module's; the released code's BN-in-train-mode quirk is §1 of the reference and not copied here).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from wsss.errors import ConfigError
from wsss.registry import BACKBONE_INSERTS, suggest

COMBINES = ("product", "sum")


class HybridChannelGate(nn.Module):
    """a_c: GAP → FC → BN1d → ReLU → FC, one logit per channel (B×C)."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(channels, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, channels)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.mlp(x.mean(dim=(2, 3)))


class HybridSpatialGate(nn.Module):
    """a_s: 1×1 reduce → two dilated 3×3 conv-BN-ReLU → 1×1 to one logit per position (B×1×H×W)."""

    def __init__(self, channels: int, hidden: int, dilation: int = 4) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(channels, hidden, 1), nn.BatchNorm2d(hidden), nn.ReLU()]
        for _ in range(2):
            layers += [
                nn.Conv2d(hidden, hidden, 3, padding=dilation, dilation=dilation),
                nn.BatchNorm2d(hidden),
                nn.ReLU(),
            ]
        layers.append(nn.Conv2d(hidden, 1, 1))
        self.body = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


class HybridAttention(nn.Module):
    """Y = (1 + σ(a_c ∘ a_s)) ⊙ X, ∘ the product (released) or the sum (BAM) of the two gates."""

    def __init__(
        self, channels: int, reduction: int = 16, dilation: int = 4, combine: str = "product"
    ) -> None:
        super().__init__()
        if combine not in COMBINES:
            raise ConfigError(
                f"hybrid attention combine must be one of {', '.join(COMBINES)}, got {combine!r}"
                f"{suggest(str(combine), COMBINES)}"
            )
        if reduction < 1 or dilation < 1:
            raise ConfigError(
                f"hybrid attention reduction and dilation must be >= 1, got {reduction}, {dilation}"
            )
        hidden = max(1, channels // reduction)
        self.channel = HybridChannelGate(channels, hidden)
        self.spatial = HybridSpatialGate(channels, hidden, dilation)
        self.combine = combine

    def gate(self, x: Tensor) -> Tensor:
        """σ(a_c ∘ a_s), B×C×H×W."""
        a_c = self.channel(x)[:, :, None, None]
        a_s = self.spatial(x)
        return torch.sigmoid(a_c * a_s if self.combine == "product" else a_c + a_s)

    def forward(self, x: Tensor) -> Tensor:
        return (1 + self.gate(x)) * x


@BACKBONE_INSERTS.register("hybrid")
def build_hybrid_attention(
    channels: int, reduction: int = 16, dilation: int = 4, combine: str = "product"
) -> HybridAttention:
    """SPU's hybrid attention for a ``channels``-channel feature map."""
    return HybridAttention(channels, reduction, dilation, combine)
