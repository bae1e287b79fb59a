"""Conformer (Peng et al., 2021): a ResNet-like CNN branch coupled to a ViT branch, block by block.

Submodule names follow the official ``pengzhiliang/Conformer`` state_dict key scheme exactly
(``conv_trans_5.cnn_block.bn2.weight`` …) so the published ImageNet checkpoints, and
TransCAM's trained weights, load by key without any renaming.

Two deviations from the official code, both invisible to checkpoints:

* Inputs whose height or width is not a multiple of ``patch_size`` are zero-padded at the
  bottom/right inside ``forward_features`` (the official model crashes on them). All outputs
  live on the padded grid; ``ConformerFeatures.input_size`` lets the caller crop.
* The token grid ``(h, w)`` is carried explicitly, so rectangular inputs work.

Attention weights are only materialised when asked for (``with_attention=True``); otherwise the
fused ``F.scaled_dot_product_attention`` kernel runs. Both paths compute the same function (they
agree to ~1e-14 in float64); in float32 the fused kernel's different rounding moves the outputs by
~1e-5 relative. Readers of the maps (TransCAM's ``A*``) take ``A*`` and the CAM from one explicit pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import StochasticDepth

from wsss.errors import ConfigError
from wsss.models.weights import LoadReport, load_checkpoint_file, load_weights, strip_prefixes
from wsss.registry import BACKBONES, suggest

# BatchNorm / LayerNorm epsilon inside the blocks (the stem BN and ``trans_norm`` use PyTorch's default).
BLOCK_NORM_EPS = 1e-6
STEM_CHANNELS = 64  # fixed in the official model; ``conv_1`` and ``trans_patch_conv`` read from it
EXPANSION = 4  # bottleneck expansion of every ConvBlock
HEAD_PREFIXES = ("conv_cls_head.", "trans_cls_head.")  # class-specific tensors, never transferred


@dataclass(frozen=True)
class ConformerSpec:
    """Architecture hyperparameters of one Conformer variant."""

    patch_size: int = 16
    channel_ratio: float = 4
    embed_dim: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    base_channel: int = 64

    @property
    def stage_channels(self) -> tuple[int, int, int]:
        c1 = int(self.base_channel * self.channel_ratio)
        return c1, 2 * c1, 4 * c1


CONFORMER_VARIANTS: dict[str, ConformerSpec] = {
    # CPU-test size: same modules and key names as the real ones, tiny widths.
    "conformer_nano": ConformerSpec(channel_ratio=0.25, embed_dim=48, num_heads=3),
    "conformer_tiny": ConformerSpec(channel_ratio=1, embed_dim=384, num_heads=6),
    "conformer_small": ConformerSpec(channel_ratio=4, embed_dim=384, num_heads=6),
    "conformer_base": ConformerSpec(channel_ratio=6, embed_dim=576, num_heads=9),
}


def conformer_spec(name: str) -> ConformerSpec:
    """Look up a variant by registry name, with a did-you-mean error."""
    if name not in CONFORMER_VARIANTS:
        raise ConfigError(
            f"unknown Conformer variant '{name}'{suggest(name, CONFORMER_VARIANTS)}; "
            f"available: {', '.join(CONFORMER_VARIANTS)}"
        )
    return CONFORMER_VARIANTS[name]


def _drop_path(rate: float) -> nn.Module:
    return StochasticDepth(rate, mode="row") if rate > 0 else nn.Identity()


class Mlp(nn.Module):
    """Transformer feed-forward: fc1 → GELU → dropout → fc2 → dropout."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Attention(nn.Module):
    """Multi-head self-attention that can also hand back its head-averaged weights.

    TransCAM needs the post-softmax attention of every block; everything else only needs the
    output, for which the fused SDPA kernel is faster and never stores the T×T matrix. The two
    branches are the same function (same scale, same dropout); only float rounding differs.
    """

    def __init__(
        self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor, need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        """Return ``(output, weights)``; ``weights`` is B×T×T (mean over heads) or None."""
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        if need_weights:
            attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
            attn = self.attn_drop(attn)
            out = attn @ v
            weights = attn.mean(dim=1)
        else:
            p = self.attn_drop.p if self.training else 0.0
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=p, scale=self.scale)
            weights = None
        out = out.transpose(1, 2).reshape(b, t, d)
        return self.proj_drop(self.proj(out)), weights


class Block(nn.Module):
    """Pre-norm transformer block (``trans_1`` and every ``conv_trans_i.trans_block``)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=BLOCK_NORM_EPS)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=drop)
        self.drop_path = _drop_path(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=BLOCK_NORM_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)

    def forward(self, x: Tensor, need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        y, weights = self.attn(self.norm1(x), need_weights=need_weights)
        x = x + self.drop_path(y)
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x, weights


class ConvBlock(nn.Module):
    """Bottleneck residual block; the 3×3 conv can take a fused map from the transformer branch."""

    def __init__(self, inplanes: int, outplanes: int, stride: int = 1, res_conv: bool = False) -> None:
        super().__init__()
        mid = outplanes // EXPANSION
        self.conv1 = nn.Conv2d(inplanes, mid, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid, eps=BLOCK_NORM_EPS)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(mid, mid, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid, eps=BLOCK_NORM_EPS)
        self.act2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(mid, outplanes, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(outplanes, eps=BLOCK_NORM_EPS)
        self.act3 = nn.ReLU(inplace=True)
        self.res_conv = res_conv
        if res_conv:
            self.residual_conv = nn.Conv2d(inplanes, outplanes, kernel_size=1, stride=stride, bias=False)
            self.residual_bn = nn.BatchNorm2d(outplanes, eps=BLOCK_NORM_EPS)

    def forward(self, x: Tensor, fused: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Return ``(output, x2)`` where ``x2`` is the mid-width activation FCUDown reads."""
        residual = self.residual_bn(self.residual_conv(x)) if self.res_conv else x
        y = self.act1(self.bn1(self.conv1(x)))
        x2 = self.act2(self.bn2(self.conv2(y if fused is None else y + fused)))
        out = self.bn3(self.conv3(x2))
        return self.act3(out + residual), x2


class FCUDown(nn.Module):
    """CNN map → patch tokens: 1×1 projection, average-pool to the token grid, LN, GELU."""

    def __init__(self, inplanes: int, embed_dim: int, dw_stride: int) -> None:
        super().__init__()
        self.conv_project = nn.Conv2d(inplanes, embed_dim, kernel_size=1)
        self.sample_pooling = nn.AvgPool2d(kernel_size=dw_stride, stride=dw_stride)
        self.ln = nn.LayerNorm(embed_dim, eps=BLOCK_NORM_EPS)
        self.act = nn.GELU()

    def forward(self, x: Tensor, tokens: Tensor) -> Tensor:
        patches = self.act(self.ln(self.sample_pooling(self.conv_project(x)).flatten(2).transpose(1, 2)))
        # Slot 0 carries a copy of the current class token, as in the official model.
        return torch.cat([tokens[:, :1], patches], dim=1)


class FCUUp(nn.Module):
    """Patch tokens → CNN map: drop the class token, 1×1 projection, BN, ReLU, nearest upsampling."""

    def __init__(self, embed_dim: int, outplanes: int, up_stride: int) -> None:
        super().__init__()
        self.up_stride = up_stride
        self.conv_project = nn.Conv2d(embed_dim, outplanes, kernel_size=1)
        self.bn = nn.BatchNorm2d(outplanes, eps=BLOCK_NORM_EPS)
        self.act = nn.ReLU()

    def forward(self, tokens: Tensor, grid: tuple[int, int]) -> Tensor:
        h, w = grid
        b, _, d = tokens.shape
        x = tokens[:, 1:].transpose(1, 2).reshape(b, d, h, w)
        x = self.act(self.bn(self.conv_project(x)))
        return F.interpolate(x, size=(h * self.up_stride, w * self.up_stride), mode="nearest")


class ConvTransBlock(nn.Module):
    """One coupled stage step: CNN block → tokens → transformer block → back into the fusion block."""

    def __init__(
        self,
        inplanes: int,
        outplanes: int,
        *,
        res_conv: bool,
        stride: int,
        dw_stride: int,
        embed_dim: int,
        num_heads: int,
        mlp_ratio: float,
        qkv_bias: bool,
        drop_rate: float,
        attn_drop_rate: float,
        drop_path_rate: float,
        fusion_stride: int | None = None,
    ) -> None:
        super().__init__()
        self.dw_stride = dw_stride
        self.cnn_block = ConvBlock(inplanes, outplanes, stride=stride, res_conv=res_conv)
        # ``fusion_stride`` is set only for the last block, which always carries a residual conv
        # (official: stride 2; TransCAM: stride 1, same weight shapes).
        if fusion_stride is None:
            self.fusion_block = ConvBlock(outplanes, outplanes)
        else:
            self.fusion_block = ConvBlock(outplanes, outplanes, stride=fusion_stride, res_conv=True)
        self.squeeze_block = FCUDown(outplanes // EXPANSION, embed_dim, dw_stride)
        self.expand_block = FCUUp(embed_dim, outplanes // EXPANSION, dw_stride)
        self.trans_block = Block(
            embed_dim,
            num_heads,
            mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias,
            drop=drop_rate,
            attn_drop=attn_drop_rate,
            drop_path=drop_path_rate,
        )

    def forward(
        self, x: Tensor, tokens: Tensor, need_weights: bool = False
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        x, x2 = self.cnn_block(x)
        grid = (x2.shape[2] // self.dw_stride, x2.shape[3] // self.dw_stride)
        tokens, weights = self.trans_block(self.squeeze_block(x2, tokens) + tokens, need_weights=need_weights)
        x, _ = self.fusion_block(x, self.expand_block(tokens, grid))
        return x, tokens, weights


@dataclass
class ConformerFeatures:
    """What the trunk hands to a head.

    ``cnn`` is the last CNN map, ``tokens`` the final tokens *before* ``trans_norm``
    (index 0 = class token), ``grid`` the patch-token grid of the padded input, ``attn_sum`` the
    running sum over blocks of the head-mean attention (B×T×T, only when requested) and
    ``attn_blocks`` how many blocks went into that sum (0 when not requested).
    """

    cnn: Tensor
    tokens: Tensor
    grid: tuple[int, int]
    input_size: tuple[int, int]
    padded_size: tuple[int, int]
    attn_sum: Tensor | None = None
    attn_blocks: int = 0


def pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """Zero-pad an N×C×H×W batch at the bottom/right so H and W are multiples of ``multiple``."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    return F.pad(x, (0, pw, 0, ph)) if ph or pw else x


def token_grid(size: tuple[int, int], patch_size: int = 16) -> tuple[int, int]:
    """Token grid of an H×W input after the bottom/right padding: ``(ceil(H/p), ceil(W/p))``."""
    return math.ceil(size[0] / patch_size), math.ceil(size[1] / patch_size)


class Conformer(nn.Module):
    """The official Conformer classifier (ImageNet heads) with optional attention output.

    ``last_fusion_stride`` = 2 is the official layout (final CNN map at 1/32); 1 keeps the final
    CNN map on the 1/16 token grid, as TransCAM does. Weight shapes are identical for both.
    """

    def __init__(
        self,
        spec: ConformerSpec,
        num_classes: int = 1000,
        *,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        last_fusion_stride: int = 2,
    ) -> None:
        super().__init__()
        if spec.patch_size % 16 or spec.patch_size <= 0:
            raise ConfigError(
                f"Conformer patch_size must be a positive multiple of 16, got {spec.patch_size}"
            )
        if spec.depth % 3 or spec.depth < 3:
            raise ConfigError(f"Conformer depth must be a positive multiple of 3, got {spec.depth}")
        if last_fusion_stride not in (1, 2):
            raise ConfigError(f"last_fusion_stride must be 1 or 2, got {last_fusion_stride}")
        self.spec = spec
        self.num_classes = num_classes
        self.depth = spec.depth
        self.patch_size = spec.patch_size
        c1, c2, c3 = spec.stage_channels
        self.out_channels = c3
        d = spec.embed_dim
        dpr = torch.linspace(0, drop_path_rate, spec.depth).tolist()

        # Registration order mirrors the official state_dict order.
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.trans_norm = nn.LayerNorm(d)
        self.trans_cls_head = nn.Linear(d, num_classes)
        self.pooling = nn.AdaptiveAvgPool2d(1)
        self.conv_cls_head: nn.Module = nn.Linear(c3, num_classes)

        self.conv1 = nn.Conv2d(in_chans, STEM_CHANNELS, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(STEM_CHANNELS)
        self.act1 = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

        dw = spec.patch_size // 4  # token stride relative to the 1/4 stem map
        self.conv_1 = ConvBlock(STEM_CHANNELS, c1, stride=1, res_conv=True)
        self.trans_patch_conv = nn.Conv2d(STEM_CHANNELS, d, kernel_size=dw, stride=dw)
        self.trans_1 = Block(
            d,
            spec.num_heads,
            mlp_ratio=spec.mlp_ratio,
            qkv_bias=spec.qkv_bias,
            drop=drop_rate,
            attn_drop=attn_drop_rate,
            drop_path=dpr[0],
        )

        per_stage = spec.depth // 3
        self._block_names: list[str] = []
        for i in range(2, spec.depth + 1):
            stage = (i - 1) // per_stage  # 0: blocks 2…per_stage, 1: the next per_stage, 2: the rest
            first_of_stage = stage > 0 and i == stage * per_stage + 1
            in_ch, out_ch = [(c1, c1), (c1, c2), (c2, c3)][stage]
            name = f"conv_trans_{i}"
            self.add_module(
                name,
                ConvTransBlock(
                    in_ch if first_of_stage else out_ch,
                    out_ch,
                    res_conv=first_of_stage,
                    stride=2 if first_of_stage else 1,
                    dw_stride=dw // (2**stage),
                    embed_dim=d,
                    num_heads=spec.num_heads,
                    mlp_ratio=spec.mlp_ratio,
                    qkv_bias=spec.qkv_bias,
                    drop_rate=drop_rate,
                    attn_drop_rate=attn_drop_rate,
                    drop_path_rate=dpr[i - 1],
                    fusion_stride=last_fusion_stride if i == spec.depth else None,
                ),
            )
            self._block_names.append(name)

        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.apply(_init_weights)

    def coupled_blocks(self) -> list[ConvTransBlock]:
        """``conv_trans_2`` … ``conv_trans_{depth}`` in order."""
        return [getattr(self, n) for n in self._block_names]

    def no_weight_decay(self) -> set[str]:
        return {"cls_token"}

    def forward_features(self, x: Tensor, with_attention: bool = False) -> ConformerFeatures:
        """Run both branches; see ``ConformerFeatures``. Input is padded to a multiple of the patch size."""
        input_size = (int(x.shape[-2]), int(x.shape[-1]))
        x = pad_to_multiple(x, self.patch_size)
        padded_size = (int(x.shape[-2]), int(x.shape[-1]))
        base = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        cnn, _ = self.conv_1(base)
        patches = self.trans_patch_conv(base)
        grid = (int(patches.shape[-2]), int(patches.shape[-1]))
        tokens = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), patches.flatten(2).transpose(1, 2)], 1)
        tokens, attn_sum = self.trans_1(tokens, need_weights=with_attention)
        for block in self.coupled_blocks():
            cnn, tokens, weights = block(cnn, tokens, need_weights=with_attention)
            if weights is not None:
                # A running sum keeps one B×T×T tensor alive instead of a depth-long stack.
                attn_sum = attn_sum + weights
        return ConformerFeatures(
            cnn=cnn,
            tokens=tokens,
            grid=grid,
            input_size=input_size,
            padded_size=padded_size,
            attn_sum=attn_sum,
            attn_blocks=self.depth if with_attention else 0,
        )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """ImageNet-style ``(conv_logits, trans_logits)``; the official model evaluates their sum."""
        feats = self.forward_features(x)
        conv_logits = self.conv_cls_head(self.pooling(feats.cnn).flatten(1))
        trans_logits = self.trans_cls_head(self.trans_norm(feats.tokens)[:, 0])
        return conv_logits, trans_logits


def _init_weights(m: nn.Module) -> None:
    """The official initialisation: trunc-normal Linear, kaiming fan-out Conv, unit norms."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    elif isinstance(m, (nn.LayerNorm, nn.BatchNorm2d)):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def head_keys(model: nn.Module) -> tuple[str, ...]:
    """The four classifier-head tensors, which never transfer between class sets."""
    return tuple(k for k in model.state_dict() if k.startswith(HEAD_PREFIXES))


def load_conformer_pretrained(model: Conformer, path: str) -> LoadReport:
    """Load official ImageNet weights (bare or ``{'model': …}``) into ``model`` by key.

    The heads are loaded only when they have the ImageNet shapes; otherwise the four head
    tensors are skipped and every other tensor must match, else ``CheckpointError``.
    Returns the ``LoadReport``.
    """
    state, stripped = strip_prefixes(load_checkpoint_file(path))
    own = model.state_dict()
    heads = head_keys(model)
    heads_fit = all(k in state and tuple(state[k].shape) == tuple(own[k].shape) for k in heads)
    skip = () if heads_fit else HEAD_PREFIXES
    need = len(own) if heads_fit else len(own) - len(heads)
    report = load_weights(model, state, min_matched=need, skip=skip, where=str(path))
    report.stripped = stripped
    return report


def _make_builder(name: str):
    spec = CONFORMER_VARIANTS[name]

    def build(
        num_classes: int = 1000,
        pretrained: str | None = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        last_fusion_stride: int = 2,
    ) -> Conformer:
        model = Conformer(
            spec,
            num_classes,
            drop_rate=drop_rate,
            attn_drop_rate=attn_drop_rate,
            drop_path_rate=drop_path_rate,
            last_fusion_stride=last_fusion_stride,
        )
        if pretrained is not None:
            load_conformer_pretrained(model, pretrained)
        return model

    build.__name__ = name
    build.__doc__ = (
        f"Build {name} (patch {spec.patch_size}, embed {spec.embed_dim}, ratio {spec.channel_ratio})."
    )
    return build


for _name in CONFORMER_VARIANTS:
    BACKBONES.register(_name)(_make_builder(_name))
