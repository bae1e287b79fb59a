"""Plain ViT encoder for single-stage ViT methods (UniA, ToCo-style): timm's model, plus what they read.

``ViTEncoder`` *is* a timm ``VisionTransformer`` (a thin subclass), so its state_dict uses timm's key
layout (``cls_token``, ``pos_embed``, ``patch_embed.proj.weight``, ``blocks.N.attn.qkv.weight``,
``norm.weight`` …) and a timm checkpoint loads by key. The subclass adds the three things the methods
need and timm's ``forward_features`` does not give:

* the patch grid at any input size: the position embedding is bicubically resized from the
  checkpoint's grid to the input's on every call (nothing is cached, so sizes may change per call);
* the tokens after block ``aux_block`` (−3 by default), before the final LayerNorm;
* the **pre-softmax** attention logits ``q·kᵀ·scale`` of the last ``attn_blocks`` blocks. Those blocks
  run an explicit attention (same modules, same order of operations as timm's unfused path) so the
  logits exist; every other block runs timm's own forward, fused attention included.

The resize is plain bicubic with ``align_corners=False`` and no antialiasing, as in ToCo/UniA's
``prepare_tokens``; timm's ``dynamic_img_size`` path antialiases, which changes the upsampled values.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Attention, Block, VisionTransformer
from torch import Tensor, nn

from wsss.engine.checkpoint import load_model_state
from wsss.errors import CheckpointError, ConfigError, DataError
from wsss.models.weights import load_checkpoint_file
from wsss.registry import BACKBONES, suggest

# Architecture of each named variant, as timm ``VisionTransformer`` kwargs.
VIT_ENCODERS: dict[str, dict[str, Any]] = {
    # timm ``vit_base_patch16_224`` (ToCo/UniA's ``jx_vit_base_p16_224`` weights)
    "vit_b16": dict(patch_size=16, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0, qkv_bias=True),
    # timm ``vit_small_patch16_224``
    "vit_s16": dict(patch_size=16, embed_dim=384, depth=12, num_heads=6, mlp_ratio=4.0, qkv_bias=True),
    # CPU tests and the synthetic recipe: a 64×64 image gives an 8×8 grid
    "vit_tiny": dict(patch_size=8, embed_dim=64, depth=4, num_heads=4, mlp_ratio=2.0, qkv_bias=True),
}

# timm kwargs the encoder sets itself: no classifier, no pooling, patch embedding that accepts any
# multiple of the patch size (output NHWC, so the grid is known), one class token.
_FIXED_TIMM_ARGS: dict[str, Any] = dict(
    num_classes=0, global_pool="", dynamic_img_size=True, class_token=True
)
# File keys of timm's classifier that an encoder has no place for.
IGNORED_PREFIXES = ("head.", "fc_norm.")
_NUM_PREFIX_TOKENS = 1  # the class token


class ViTOutput(NamedTuple):
    """Patch tokens only (class token removed) in row-major grid order, N = h·w."""

    tokens: Tensor  # B×N×C after the final LayerNorm
    aux_tokens: Tensor  # B×N×C output of block ``aux_block``, no norm
    attn_logits: list[Tensor]  # per requested block, B×heads×N×N pre-softmax; [] when not requested
    grid: tuple[int, int]  # (h, w)


def resize_pos_embed(
    pos_embed: Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int], num_prefix: int = 1
) -> Tensor:
    """Resize a 1×(prefix + h·w)×C position embedding to ``new_grid`` bicubically; prefix rows kept.

    Interpolates in float32 (bicubic has no half kernel on every device) and returns the input dtype.
    """
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed
    prefix, grid = pos_embed[:, :num_prefix], pos_embed[:, num_prefix:]
    channels = grid.shape[-1]
    grid = grid.reshape(1, old_grid[0], old_grid[1], channels).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=tuple(new_grid), mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], channels).to(pos_embed.dtype)
    return torch.cat([prefix, grid], dim=1)


class ViTEncoder(VisionTransformer):
    """timm ViT returning final tokens, aux-block tokens and pre-softmax attention logits (see module doc)."""

    def __init__(self, *, aux_block: int = -3, attn_blocks: int = 2, **timm_kwargs: Any) -> None:
        for key, value in _FIXED_TIMM_ARGS.items():
            if key in timm_kwargs and timm_kwargs[key] != value:
                raise ConfigError(
                    f"ViTEncoder sets '{key}={value!r}' itself (got {timm_kwargs[key]!r}); remove '{key}'"
                )
        super().__init__(**{**timm_kwargs, **_FIXED_TIMM_ARGS})
        self._check_supported()
        self.depth = len(self.blocks)
        self.num_heads = self.blocks[0].attn.num_heads
        self.patch_size = self._square_patch()
        if not -self.depth <= aux_block < self.depth:
            raise ConfigError(
                f"aux_block={aux_block} is outside the {self.depth} blocks; use an index in "
                f"[{-self.depth}, {self.depth - 1}] (negative counts from the end)"
            )
        if not 0 <= attn_blocks <= self.depth:
            raise ConfigError(
                f"attn_blocks={attn_blocks} must be in [0, {self.depth}] (the number of blocks)"
            )
        self.aux_block = aux_block % self.depth
        self.attn_blocks = attn_blocks

    def _check_supported(self) -> None:
        """Refuse timm options whose token layout or attention this encoder does not reproduce."""
        problems = []
        if self.reg_token is not None:
            problems.append("register tokens (reg_tokens)")
        if self.no_embed_class:
            problems.append("no_embed_class=True")
        if self.pos_embed is None:
            problems.append("no learned position embedding (pos_embed)")
        if not isinstance(self.patch_drop, nn.Identity):
            problems.append("patch dropout (patch_drop_rate > 0), which breaks the token grid")
        if type(self.patch_embed) is not PatchEmbed or self.patch_embed.dynamic_img_pad:
            problems.append("a patch embedding other than timm's plain PatchEmbed without padding")
        if any(type(b) is not Block or type(b.attn) is not Attention for b in self.blocks):
            problems.append("blocks other than timm's Block with its standard Attention")
        if problems:
            raise ConfigError(
                f"ViTEncoder does not support {'; '.join(problems)}; use a standard ViT config "
                f"(one class token, learned pos_embed, timm Block/Attention; qk_norm and init_values are fine)"
            )

    def _square_patch(self) -> int:
        ph, pw = self.patch_embed.patch_size
        if ph != pw:
            raise ConfigError(f"patch_size must be square, got {ph}×{pw}")
        return int(ph)

    def _pos_embed(self, x: Tensor) -> Tensor:
        """Prepend the class token and add the position embedding resized to this input's grid.

        Overrides timm's hook, so the inherited ``forward_features`` uses the same resize as ``forward``.
        """
        batch, h, w, channels = x.shape  # NHWC from the dynamic-size patch embedding
        pos = resize_pos_embed(self.pos_embed, self.patch_embed.grid_size, (h, w), _NUM_PREFIX_TOKENS)
        x = torch.cat([self.cls_token.expand(batch, -1, -1), x.reshape(batch, h * w, channels)], dim=1)
        return self.pos_drop(x + pos)

    def _check_input(self, x: Tensor) -> tuple[int, int]:
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise DataError(
                f"ViTEncoder expects a B×{self.in_chans}×H×W image batch, got shape {tuple(x.shape)}"
            )
        height, width = x.shape[-2:]
        if height % self.patch_size or width % self.patch_size:
            raise DataError(
                f"input size {height}×{width} is not a multiple of the ViT patch size {self.patch_size}; "
                f"crop or pad the image to a multiple of {self.patch_size}"
            )
        return height // self.patch_size, width // self.patch_size

    def forward(self, x: Tensor, with_attention: bool = True) -> ViTOutput:  # type: ignore[override]
        grid = self._check_input(x)
        x = self.norm_pre(self.patch_drop(self._pos_embed(self.patch_embed(x))))
        first_logged = self.depth - self.attn_blocks if with_attention else self.depth
        logits: list[Tensor] = []
        aux = x
        for index, block in enumerate(self.blocks):
            if index >= first_logged:
                x, block_logits = block_with_logits(block, x)
                logits.append(block_logits[:, :, _NUM_PREFIX_TOKENS:, _NUM_PREFIX_TOKENS:])
            else:
                x = block(x)
            if index == self.aux_block:
                aux = x
        tokens = self.norm(x)
        return ViTOutput(tokens[:, _NUM_PREFIX_TOKENS:], aux[:, _NUM_PREFIX_TOKENS:], logits, grid)


def block_with_logits(block: Block, x: Tensor) -> tuple[Tensor, Tensor]:
    """timm ``Block.forward`` with the attention written out; returns (output, B×heads×L×L logits).

    Mirrors timm's unfused ``Attention`` path (qk-norm, scale-norm, optional gate, dropouts) so the output
    equals the block's own forward up to float rounding.
    """
    attn: Attention = block.attn
    y = block.norm1(x)
    batch, length, _ = y.shape
    gate = getattr(attn, "gate", None)
    gate_values = gate(y).sigmoid() if gate is not None else None
    qkv = attn.qkv(y).reshape(batch, length, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    logits = (q * attn.scale) @ k.transpose(-2, -1)
    probs = attn.attn_drop(logits.softmax(dim=-1))
    out = (probs @ v).transpose(1, 2).reshape(batch, length, attn.num_heads * attn.head_dim)
    out = attn.norm(out)
    if gate_values is not None:
        out = out * gate_values
    out = attn.proj_drop(attn.proj(out))
    x = x + block.drop_path1(block.ls1(out))
    x = x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))
    return x, logits


def build_vit_encoder(
    name: str,
    *,
    pretrained: str | Path | None = None,
    img_size: int = 224,
    aux_block: int = -3,
    attn_blocks: int = 2,
    drop_path_rate: float = 0.0,
) -> ViTEncoder:
    """Build a named variant (random init; never downloads) and optionally load a local timm state_dict.

    ``img_size`` fixes the stored position-embedding grid (img_size / patch); inputs of any multiple
    of the patch size still work, the embedding being resized per call.
    """
    if name not in VIT_ENCODERS:
        raise ConfigError(
            f"unknown ViT encoder '{name}'{suggest(name, VIT_ENCODERS)}; available: {', '.join(VIT_ENCODERS)}"
        )
    spec = VIT_ENCODERS[name]
    if img_size <= 0 or img_size % spec["patch_size"]:
        raise ConfigError(
            f"img_size={img_size} must be a positive multiple of {name}'s patch size {spec['patch_size']}"
        )
    encoder = ViTEncoder(
        aux_block=aux_block, attn_blocks=attn_blocks, img_size=img_size, drop_path_rate=drop_path_rate, **spec
    )
    if pretrained is not None:
        load_vit_weights(encoder, pretrained)
    return encoder


def load_vit_weights(encoder: ViTEncoder, path: str | Path) -> None:
    """Load a local timm ViT state_dict (.safetensors / .pth / .pt / .bin) by key, strictly.

    ``head.*`` and ``fc_norm.*`` (classifier) are skipped; ``pos_embed`` is resized when the file's grid
    differs from the encoder's. Anything else that does not fit raises ``CheckpointError``: a silently
    partial load would train from random weights.
    """
    path = Path(path)
    if path.suffix == ".npz" and path.is_file():
        raise CheckpointError(
            f"checkpoint '{path}' is a JAX .npz file, which is not read here; convert it with timm first: "
            f"timm.create_model('vit_base_patch16_224', pretrained=True, "
            f"pretrained_cfg_overlay=dict(file='{path}')) and save its state_dict() with "
            f"safetensors.torch.save_file"
        )
    state = {k: v for k, v in load_checkpoint_file(path).items() if not k.startswith(IGNORED_PREFIXES)}
    if "pos_embed" in state:
        state["pos_embed"] = _fit_pos_embed(encoder, state["pos_embed"])
    load_model_state(encoder, state, source=path)  # strict; names what does not fit before loading


def _fit_pos_embed(encoder: ViTEncoder, pos: Tensor) -> Tensor:
    """Resize the file's pos_embed to the encoder's stored grid; leave other shapes to the mismatch report."""
    own = encoder.pos_embed
    tokens = pos.shape[1] - _NUM_PREFIX_TOKENS if pos.ndim == 3 else -1
    side = math.isqrt(tokens) if tokens > 0 else 0
    if pos.shape == own.shape or pos.ndim != 3 or pos.shape[-1] != own.shape[-1] or side * side != tokens:
        return pos
    return resize_pos_embed(pos, (side, side), encoder.patch_embed.grid_size, _NUM_PREFIX_TOKENS)


def _registered_builder(name: str) -> Any:
    def build(
        pretrained: str | Path | None = None,
        img_size: int = 224,
        aux_block: int = -3,
        attn_blocks: int = 2,
        drop_path_rate: float = 0.0,
    ) -> ViTEncoder:
        return build_vit_encoder(
            name,
            pretrained=pretrained,
            img_size=img_size,
            aux_block=aux_block,
            attn_blocks=attn_blocks,
            drop_path_rate=drop_path_rate,
        )

    build.__name__ = name
    build.__doc__ = f"{name}: a timm ViT returning tokens, aux tokens and attention logits (ViTEncoder)."
    return build


# named in BACKBONES too, so a recipe's classifier.backbone is checked like the CNN backbones'
for _name in VIT_ENCODERS:
    BACKBONES.register(_name)(_registered_builder(_name))
