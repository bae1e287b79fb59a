"""UniA's single-stage network (seed_methods.md §5.2): one ViT trains classification, affinity and
segmentation together.

``tokens T`` (final, normed) → uncertainty inference head → ``T′`` → features ``F`` on the patch grid;
``CAM = conv1×1(F, W_cls)`` (no bias) and ``logits = W_cls·GMP(F)`` (global **max** pooling, as ToCo);
the aux classifier does the same on the tokens of block −3; the LargeFOV decoder segments ``F``; the
affinity head turns the last two blocks' pre-softmax attention logits ``S`` into
``A = σ(conv1×1(S + Sᵀ))`` (AFA-style), B×N×N.

To fit the toolkit's CAM contract every map and logit vector has ``num_classes`` channels with a zero
background channel 0, so ``make-cams``/``eval-cams`` and held-out tag scoring work unchanged; the
segmentation logits have ``num_classes`` channels with a real background.

Released-code quirks behind switches (docs/fidelity.md): ``double_features`` (the code's
``_x4 += _x4``: F = 2·T′, harmless for the argmax but it scales every CAM and logit) and the head's
``separate_mean_proj=False`` (μ through ``std_proj``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsss.errors import ConfigError
from wsss.models.backbones.vit import ViTEncoder, build_vit_encoder
from wsss.models.cam.plain_cam import with_background
from wsss.models.modules.uncertainty_inference import UncertaintyInference, tokens_to_map
from wsss.models.seg.deeplab import LargeFOVDecoder
from wsss.registry import CAM_MODELS

# uncertainty-head sizes of the released ViT-B model (get_uncertainty(768, 16, 4, 1024))
VIT_B_HEAD = {"num_heads": 16, "pooling_size": 4, "hidden_dim": 1024, "mask_heads": 16}


class UniAOutput(NamedTuple):
    """One forward pass (a NamedTuple so DDP sees its tensors).

    ``cam``/``aux_cam``: raw class maps B×(1+K)×h×w on the patch grid, channel 0 zeros; ``logits``/
    ``aux_logits``: B×(1+K), column 0 zeros; ``seg``: B×(1+K)×h×w segmentation logits (real background);
    ``features``: F, B×C×h×w (PTC); ``affinity``: B×N×N in (0, 1) (empty when attention was not
    computed); ``sampled_mean``: z̄, B×h×w (distribution loss).
    """

    cam: Tensor
    logits: Tensor
    aux_cam: Tensor
    aux_logits: Tensor
    seg: Tensor
    features: Tensor
    affinity: Tensor
    sampled_mean: Tensor


class AffinityFromAttention(nn.Module):
    """``A = σ(conv1×1(S + Sᵀ))`` over the stacked attention logits S (B×L·heads×N×N) → B×N×N."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(channels, 1, 1, bias=True)

    def forward(self, attn_logits: list[Tensor]) -> Tensor:
        s = torch.cat(attn_logits, dim=1)
        return torch.sigmoid(self.proj(s + s.transpose(-1, -2))).squeeze(1)


class UniA(nn.Module):
    """ViT encoder + uncertainty head + classifiers + LargeFOV decoder + affinity head."""

    def __init__(
        self,
        encoder: ViTEncoder,
        num_classes: int,
        *,
        head_args: dict[str, Any] | None = None,
        decoder_channels: int = 512,
        double_features: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ConfigError(f"unia num_classes counts background and must be >= 2, got {num_classes!r}")
        dim = encoder.embed_dim
        self.encoder = encoder
        self.num_classes = num_classes
        self.double_features = bool(double_features)
        self.uncertainty = UncertaintyInference(dim, **(head_args or {}))
        self.classifier = nn.Conv2d(dim, num_classes - 1, 1, bias=False)
        self.aux_classifier = nn.Conv2d(dim, num_classes - 1, 1, bias=False)
        self.decoder = LargeFOVDecoder(dim, num_classes, channels=decoder_channels)
        self.attn_proj = AffinityFromAttention(encoder.num_heads * encoder.attn_blocks)

    def _heads(self, tokens: Tensor, grid: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """(F, z̄): the features the heads read, and the sampled mean of the uncertainty head."""
        u = self.uncertainty(tokens, grid)
        feats = tokens_to_map(u.tokens, grid)
        if self.double_features:
            feats = feats + feats
        return feats, u.sampled_mean

    @staticmethod
    def _cam_and_logits(feats: Tensor, classifier: nn.Conv2d) -> tuple[Tensor, Tensor]:
        cam = classifier(feats)
        logits = classifier(F.adaptive_max_pool2d(feats, 1)).flatten(1)
        return with_background(cam), F.pad(logits, (1, 0))

    def forward(self, x: Tensor, with_attention: bool = True) -> UniAOutput:
        """Every head; ``with_attention`` is the training loop's uniform keyword (the affinity head
        always reads the attention logits, so it is computed either way)."""
        out = self.encoder(x, with_attention=True)
        feats, z_mean = self._heads(out.tokens, out.grid)
        cam, logits = self._cam_and_logits(feats, self.classifier)
        aux_cam, aux_logits = self._cam_and_logits(
            tokens_to_map(out.aux_tokens, out.grid), self.aux_classifier
        )
        return UniAOutput(
            cam=cam,
            logits=logits,
            aux_cam=aux_cam,
            aux_logits=aux_logits,
            seg=self.decoder(feats),
            features=feats,
            affinity=self.attn_proj(out.attn_logits),
            sampled_mean=z_mean,
        )

    def cam_maps(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(CAM, aux CAM), foreground channels only, B×K×h×w: the cheap path the online labels run
        under no-grad at several scales (no decoder, no attention logits)."""
        out = self.encoder(x, with_attention=False)
        feats, _ = self._heads(out.tokens, out.grid)
        return self.classifier(feats), self.aux_classifier(tokens_to_map(out.aux_tokens, out.grid))

    def fit_patches(self, x: Tensor) -> Tensor:
        """``x`` resized (bilinear) to the nearest multiple of the patch size on each side, for
        segmentation of images of any size (training crops must already be multiples); predict
        resizes the logits back to the image, so they stay aligned with it."""
        p = self.encoder.patch_size
        size = tuple(max(p, round(s / p) * p) for s in x.shape[-2:])
        if size == tuple(x.shape[-2:]):
            return x
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)

    @property
    def output_stride(self) -> int:
        """Pixels per map cell (the patch size): make-cams maps the grid back to the image with it."""
        return self.encoder.patch_size

    def extract(self, x: Tensor, method: str = "cam") -> Tensor:
        """ReLU CAM (``cam``) or aux CAM (``aux``) with the zero background channel, for make-cams.

        An input whose sides are not multiples of the patch is zero-padded at the bottom and right
        (zero is the mean colour after normalisation), so the map has ⌈H/p⌉×⌈W/p⌉ cells of
        ``output_stride`` pixels from the top-left corner: the CNN convention make-cams crops by."""
        if method not in ("cam", "aux"):
            raise ConfigError(f"unia has CAM extractors 'cam' and 'aux', not {method!r}")
        p = self.output_stride
        pad_h, pad_w = (-x.shape[-2]) % p, (-x.shape[-1]) % p
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        cam, aux = self.cam_maps(x)
        return with_background(torch.relu(cam if method == "cam" else aux))

    def segment(self, x: Tensor) -> Tensor:
        """Segmentation logits B×(1+K)×h×w on the patch grid (predict upsamples them)."""
        out = self.encoder(self.fit_patches(x), with_attention=False)
        feats, _ = self._heads(out.tokens, out.grid)
        return self.decoder(feats)

    def optimizer_groups(self, lr: float, weight_decay: float, head_lr_mult: float) -> list[dict[str, Any]]:
        """ToCo/UniA's four groups, all with weight decay: encoder weights and encoder norms at lr;
        classifiers, affinity projection and the whole uncertainty head, and the decoder at
        ``head_lr_mult``·lr (10 in the released code)."""
        enc_norm, enc_other = [], []
        for name, p in self.encoder.named_parameters():
            if p.requires_grad:
                (enc_norm if "norm" in name else enc_other).append(p)
        heads = [
            p
            for m in (self.classifier, self.aux_classifier, self.attn_proj, self.uncertainty)
            for p in m.parameters()
            if p.requires_grad
        ]
        decoder = [p for p in self.decoder.parameters() if p.requires_grad]
        groups = [
            (enc_other, lr),
            (enc_norm, lr),
            (heads, lr * head_lr_mult),
            (decoder, lr * head_lr_mult),
        ]
        return [{"params": ps, "lr": g_lr, "weight_decay": weight_decay} for ps, g_lr in groups if ps]


@CAM_MODELS.register("unia")
def build_unia(
    backbone: str = "vit_b16",
    num_classes: int = 21,
    pretrained: str | None = None,
    *,
    img_size: int = 224,
    aux_block: int = -3,
    attn_blocks: int = 2,
    drop_path_rate: float = 0.0,
    head_args: dict[str, Any] | None = None,
    decoder_channels: int = 512,
    double_features: bool = False,
) -> UniA:
    """UniA on a ViT from ``wsss.models.backbones.vit`` (``vit_b16`` for VOC/COCO, ``vit_tiny`` on a
    CPU). ``pretrained``: a local timm state-dict file (``img_size`` is its training size; the position
    embedding is resized to each input). ``head_args``: keywords of
    :class:`~wsss.models.modules.uncertainty_inference.UncertaintyInference` (ViT-B defaults: 16 heads,
    4×4 pooling, 1024 hidden)."""
    encoder = build_vit_encoder(
        backbone,
        pretrained=pretrained,
        img_size=img_size,
        aux_block=aux_block,
        attn_blocks=attn_blocks,
        drop_path_rate=drop_path_rate,
    )
    return UniA(
        encoder,
        num_classes,
        head_args=head_args,
        decoder_channels=decoder_channels,
        double_features=double_features,
    )
