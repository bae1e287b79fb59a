"""SPU's UNS network (uncertainty-guided noise suppression; ``pur-suit/SPU`` ``net/resnet50_uns.py``,
AMN's label-conditioned per-pixel classifier with a second head).

The image's tags condition the features channel-wise, so the heads only have to say *where* the
known classes are, not *which* classes:

* aux head:  z₁ = ASPP(Dropout₀.₁(F₃ ⊙ enc₂(y)))
* main head: z₂ = ASPP(Dropout₀.₁([F₄; F₃] ⊙ enc₁(y)))

with F₃, F₄ the backbone's last two levels, enc₁, enc₂ linear maps of the tag vector y to one
multiplier per channel, and ASPP DeepLab-v2's sum of four dilated 3×3 convolutions (6, 12, 18, 24)
to background + K logits. On a backbone whose two last levels differ in stride (MobileNetV2), F₃ is
resized (bilinear) to F₄'s grid before the concatenation; ResNet-50 at output stride 16 has both at
stride 16, as released.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsss.errors import ConfigError
from wsss.models.backbones.base import Backbone, build_cnn_backbone
from wsss.models.seg.deeplab import ASPPSum

UNS_RATES = (6, 12, 18, 24)


class UNSOutput(NamedTuple):
    """Main-head and aux-head logits, B×(1+K)×h×w at the last level's stride."""

    logits: Tensor
    aux: Tensor


class UNSNet(nn.Module):
    """Backbone + tag-conditioned features + two ASPP heads (main on [F₄; F₃], aux on F₃)."""

    def __init__(self, backbone: Backbone, num_classes: int, dropout: float = 0.1) -> None:
        super().__init__()
        if len(backbone.feature_info) < 2:
            raise ConfigError("the UNS network needs a backbone with at least two feature levels")
        if num_classes < 2:
            raise ConfigError(
                f"the UNS network's num_classes counts background and must be >= 2, got {num_classes}"
            )
        f3, f4 = backbone.feature_info[-2], backbone.feature_info[-1]
        self.backbone = backbone
        self.levels = (f3.name, f4.name)
        self.num_classes = num_classes
        self.output_stride = f4.stride
        k = num_classes - 1
        self.label_enc_aux = nn.Linear(k, f3.channels)
        self.label_enc_main = nn.Linear(k, f4.channels + f3.channels)
        self.dropout = nn.Dropout(dropout)
        self.aux_head = ASPPSum(f3.channels, num_classes, UNS_RATES)
        self.main_head = ASPPSum(f4.channels + f3.channels, num_classes, UNS_RATES)
        self.head_names = ("label_enc_aux", "label_enc_main", "aux_head", "main_head")

    def optimizer_groups(self, lr: float, weight_decay: float, head_lr_mult: float) -> list[dict[str, Any]]:
        """The trainable backbone at ``lr``, the tag encoders and heads at ``head_lr_mult``·lr (SPU:
        5e-6 and 1e-4), decay on both."""
        backbone = [p for p in self.backbone.parameters() if p.requires_grad]
        new = [p for n in self.head_names for p in getattr(self, n).parameters() if p.requires_grad]
        groups = [
            {"name": "backbone", "params": backbone, "lr": lr, "weight_decay": weight_decay},
            {"name": "heads", "params": new, "lr": lr * head_lr_mult, "weight_decay": weight_decay},
        ]
        return [g for g in groups if g["params"]]

    def forward(self, x: Tensor, tags: Tensor) -> UNSOutput:
        """``tags``: B×K image labels (0/1) of the foreground classes."""
        if tags.shape != (x.shape[0], self.num_classes - 1):
            raise ConfigError(
                f"UNS tags of shape {tuple(tags.shape)} do not fit {x.shape[0]} images and "
                f"{self.num_classes - 1} foreground classes"
            )
        feats = self.backbone.forward_features(x)
        f3, f4 = feats[self.levels[0]], feats[self.levels[1]]
        if f3.shape[-2:] != f4.shape[-2:]:
            f3 = F.interpolate(f3, size=f4.shape[-2:], mode="bilinear", align_corners=False)
        y = tags.to(f3.dtype)
        aux = self.aux_head(self.dropout(f3 * self.label_enc_aux(y)[:, :, None, None]))
        both = torch.cat([f4, f3], dim=1)
        main = self.main_head(self.dropout(both * self.label_enc_main(y)[:, :, None, None]))
        return UNSOutput(main, aux)


def build_uns(
    backbone: str = "resnet50",
    num_classes: int = 21,
    pretrained: str | None = None,
    output_stride: int | None = None,
    frozen_stages: int | None = None,
    dropout: float = 0.1,
    backbone_args: dict[str, Any] | None = None,
) -> UNSNet:
    """The UNS network on a registered CNN backbone (``pretrained``: ImageNet weights)."""
    given = {"pretrained": pretrained, "output_stride": output_stride, "frozen_stages": frozen_stages}
    return UNSNet(build_cnn_backbone(backbone, "the UNS network", given, backbone_args), num_classes, dropout)
