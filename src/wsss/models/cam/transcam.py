"""TransCAM (Li et al., 2023): a Conformer whose CNN branch yields the CAM and whose
attention refines it, ``M* = A*·M``.

Changes against the ImageNet Conformer (transcam.md §2.2): the last fusion block keeps
stride 1 so the final CNN map sits on the 1/16 token grid; ``conv_cls_head`` is a 3×3 conv
(with bias) producing the raw CAM ``M`` for all classes including background, and the conv
logits are ``GAP(M)``; ``trans_cls_head`` classifies the normalised class token. The module
is a ``Conformer`` subclass so its state_dict keys are the official ones: ImageNet weights
load by key with only the four head tensors left out, and TransCAM's released weights load
completely.

``forward(x, with_attention=True)`` computes every block's attention explicitly (needed by
the ``transcam``/``clsattn`` extractors and the BNR loss); without it the blocks use the fused
SDPA kernel, which gives the same ``M`` and logits up to float32 rounding.

Outputs live on the token grid of the input *padded* to a multiple of 16 (bottom/right);
``TransCAMOutput.input_size`` is the unpadded size, which the CAM stage uses to crop.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from wsss.errors import ConfigError
from wsss.models.backbones.conformer import (
    CONFORMER_VARIANTS,
    Conformer,
    ConformerSpec,
    conformer_spec,
    load_conformer_pretrained,
)
from wsss.registry import CAM_MODELS, suggest

EXTRACT_METHODS = ("conv", "transcam", "clsattn")
# The methods that read A*. Only the explicit softmax(q·kᵀ·scale) attention path yields the maps,
# so these always run it; ``conv`` reads M alone and keeps the fused SDPA kernel.
ATTENTION_METHODS = frozenset({"transcam", "clsattn"})


class TransCAMOutput(NamedTuple):
    """One forward pass.

    ``cam``: raw pre-ReLU CAM ``M`` (B×C×h×w, C includes background at 0);
    ``conv_logits = GAP(M)``; ``trans_logits`` from the class token (B×C);
    ``attn_sum``: Σ over blocks of the head-mean attention (B×(1+N)×(1+N), N = h·w) or None;
    ``attn_blocks``: number of blocks in that sum (0 without attention);
    ``grid``: (h, w); ``input_size``/``padded_size``: (H, W) before / after padding.
    """

    cam: Tensor
    conv_logits: Tensor
    trans_logits: Tensor
    attn_sum: Tensor | None
    attn_blocks: int
    grid: tuple[int, int]
    input_size: tuple[int, int]
    padded_size: tuple[int, int]


def a_star(attn_sum: Tensor) -> Tensor:
    """``A*``: the block-summed attention among patch tokens (class-token row/column dropped, no renormalisation)."""
    return attn_sum[:, 1:, 1:]


def refine(cam: Tensor, attn: Tensor) -> Tensor:
    """Propagate a CAM along attention with query rows: ``out[b,c,i] = Σ_j attn[b,i,j]·cam[b,c,j]``.

    ``cam`` is B×C×h×w, ``attn`` B×N×N with N = h·w; returns B×C×h×w.
    """
    b, c, h, w = cam.shape
    if attn.shape != (b, h * w, h * w):
        raise ValueError(
            f"attention of shape {tuple(attn.shape)} does not fit a {h}×{w} CAM grid (batch {b})"
        )
    return torch.bmm(cam.flatten(2), attn.transpose(1, 2)).reshape(b, c, h, w)


def class_token_attention(attn_sum: Tensor, grid: tuple[int, int]) -> Tensor:
    """The class token's block-summed attention to each patch, as B×1×h×w."""
    return attn_sum[:, 0, 1:].reshape(attn_sum.shape[0], 1, *grid)


class TransCAM(Conformer):
    """Conformer with TransCAM's CAM head; see the module docstring."""

    def __init__(
        self,
        spec: ConformerSpec,
        num_classes: int = 21,
        *,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
    ) -> None:
        super().__init__(
            spec,
            num_classes,
            drop_rate=drop_rate,
            attn_drop_rate=attn_drop_rate,
            drop_path_rate=drop_path_rate,
            last_fusion_stride=1,
        )
        # Re-assigning an existing name keeps its slot, so the state_dict order stays official.
        self.conv_cls_head = nn.Conv2d(self.out_channels, num_classes, kernel_size=3, padding=1, bias=True)
        # Authors' init: kaiming fan-out weight, PyTorch's default bias; the Linear head was
        # already trunc-normal(.02) / zero by the parent's init.
        nn.init.kaiming_normal_(self.conv_cls_head.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor, with_attention: bool = False) -> TransCAMOutput:  # type: ignore[override]
        feats = self.forward_features(x, with_attention=with_attention)
        cam = self.conv_cls_head(feats.cnn)
        trans_logits = self.trans_cls_head(self.trans_norm(feats.tokens)[:, 0])
        return TransCAMOutput(
            cam=cam,
            conv_logits=cam.mean(dim=(2, 3)),
            trans_logits=trans_logits,
            attn_sum=feats.attn_sum,
            attn_blocks=feats.attn_blocks,
            grid=feats.grid,
            input_size=feats.input_size,
            padded_size=feats.padded_size,
        )

    def extract(self, x: Tensor, method: str = "transcam") -> Tensor:
        """CAMs (B×C×h×w, raw, on the padded grid) by ``method``: conv ``M``, ``transcam`` ``A*·M`` or ``clsattn``.

        ``transcam`` and ``clsattn`` run the explicit attention path (they need ``A*``); ``conv``
        runs SDPA, the same function up to float32 rounding (~1e-5 relative on ``M``).
        """
        if method not in EXTRACT_METHODS:
            raise ConfigError(
                f"unknown CAM extraction method '{method}'{suggest(method, EXTRACT_METHODS)}; "
                f"available: {', '.join(EXTRACT_METHODS)}"
            )
        out = self(x, with_attention=method in ATTENTION_METHODS)
        if method == "conv":
            return out.cam
        assert out.attn_sum is not None
        if method == "transcam":
            return refine(out.cam, a_star(out.attn_sum))
        return class_token_attention(out.attn_sum, out.grid) * out.cam


@CAM_MODELS.register("transcam")
def build_transcam(
    backbone: str = "conformer_small",
    num_classes: int = 21,
    pretrained: str | None = None,
    drop_path_rate: float = 0.1,
    drop_rate: float = 0.0,
    attn_drop_rate: float = 0.0,
) -> TransCAM:
    """Build TransCAM on a Conformer variant; ``pretrained`` = ImageNet Conformer file (heads not loaded)."""
    if not backbone.startswith("conformer_"):
        raise ConfigError(
            f"TransCAM needs a Conformer backbone, got '{backbone}'; available: {', '.join(CONFORMER_VARIANTS)}"
        )
    model = TransCAM(
        conformer_spec(backbone),
        num_classes,
        drop_rate=drop_rate,
        attn_drop_rate=attn_drop_rate,
        drop_path_rate=drop_path_rate,
    )
    if pretrained is not None:
        load_conformer_pretrained(model, pretrained)
    return model
