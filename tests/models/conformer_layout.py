"""The official Conformer state_dict layout, written from the reference, never from wsss's model.

Source: transcam.md §1.2/§1.4 (official ``pengzhiliang/Conformer``) and §2.2 (TransCAM's
``Net_sm``): key names in state_dict order with their shapes, plus the strides that carry no
weights (stride-2 blocks, last fusion block, ``dw_stride`` per stage). Tests compare our model
against these lists, so nothing here may import or introspect ``wsss``.
"""

from __future__ import annotations

Shape = tuple[int, ...]
Layout = list[tuple[str, Shape]]

BN_ENTRIES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
STEM = 64  # stem width of every variant
MLP_RATIO = 4
BOTTLENECK = 4  # ConvBlock: mid width = out width / 4


def _bn(prefix: str, channels: int) -> Layout:
    return [(f"{prefix}.{e}", () if e == "num_batches_tracked" else (channels,)) for e in BN_ENTRIES]


def _ln(prefix: str, dim: int) -> Layout:
    return [(f"{prefix}.weight", (dim,)), (f"{prefix}.bias", (dim,))]


def _linear(prefix: str, fan_in: int, fan_out: int) -> Layout:
    return [(f"{prefix}.weight", (fan_out, fan_in)), (f"{prefix}.bias", (fan_out,))]


def _conv_block(prefix: str, cin: int, cout: int, residual: bool) -> Layout:
    """Bottleneck ConvBlock: 1×1 (cin→mid), 3×3 (mid→mid), 1×1 (mid→cout), no conv biases."""
    mid = cout // BOTTLENECK
    out: Layout = [(f"{prefix}.conv1.weight", (mid, cin, 1, 1)), *_bn(f"{prefix}.bn1", mid)]
    out += [(f"{prefix}.conv2.weight", (mid, mid, 3, 3)), *_bn(f"{prefix}.bn2", mid)]
    out += [(f"{prefix}.conv3.weight", (cout, mid, 1, 1)), *_bn(f"{prefix}.bn3", cout)]
    if residual:
        out += [(f"{prefix}.residual_conv.weight", (cout, cin, 1, 1)), *_bn(f"{prefix}.residual_bn", cout)]
    return out


def _transformer_block(prefix: str, dim: int) -> Layout:
    out = _ln(f"{prefix}.norm1", dim)
    out += _linear(f"{prefix}.attn.qkv", dim, 3 * dim) + _linear(f"{prefix}.attn.proj", dim, dim)
    out += _ln(f"{prefix}.norm2", dim)
    out += _linear(f"{prefix}.mlp.fc1", dim, MLP_RATIO * dim) + _linear(
        f"{prefix}.mlp.fc2", MLP_RATIO * dim, dim
    )
    return out


def stage_of(i: int, depth: int = 12) -> int:
    """Stage (0, 1, 2) of ``conv_trans_i``: blocks 2…depth/3, then depth/3 per stage."""
    return (i - 1) // (depth // 3)


def official_layout(
    *,
    channel_ratio: float = 4,
    embed_dim: int = 384,
    depth: int = 12,
    patch_size: int = 16,
    num_classes: int = 1000,
    transcam_heads: bool = False,
) -> Layout:
    """(key, shape) in state_dict order. Defaults: ImageNet Conformer-S; ``transcam_heads``:
    TransCAM's ``Net_sm`` (``conv_cls_head`` a 3×3 conv with bias instead of a Linear)."""
    c = [int(64 * channel_ratio) * 2**s for s in range(3)]  # stage widths
    d = embed_dim
    out: Layout = [("cls_token", (1, 1, d))]
    out += _ln("trans_norm", d)
    out += _linear("trans_cls_head", d, num_classes)
    if transcam_heads:
        out += [("conv_cls_head.weight", (num_classes, c[2], 3, 3)), ("conv_cls_head.bias", (num_classes,))]
    else:
        out += _linear("conv_cls_head", c[2], num_classes)
    out += [("conv1.weight", (STEM, 3, 7, 7)), *_bn("bn1", STEM)]
    out += _conv_block("conv_1", STEM, c[0], residual=True)
    k = patch_size // 4
    out += [("trans_patch_conv.weight", (d, STEM, k, k)), ("trans_patch_conv.bias", (d,))]
    out += _transformer_block("trans_1", d)
    for i in range(2, depth + 1):
        s = stage_of(i, depth)
        first = s > 0 and stage_of(i - 1, depth) != s
        cin = c[s - 1] if first else c[s]
        p = f"conv_trans_{i}"
        out += _conv_block(f"{p}.cnn_block", cin, c[s], residual=first)
        out += _conv_block(f"{p}.fusion_block", c[s], c[s], residual=i == depth)
        mid = c[s] // BOTTLENECK
        out += [(f"{p}.squeeze_block.conv_project.weight", (d, mid, 1, 1))]
        out += [(f"{p}.squeeze_block.conv_project.bias", (d,))]
        out += _ln(f"{p}.squeeze_block.ln", d)
        out += [(f"{p}.expand_block.conv_project.weight", (mid, d, 1, 1))]
        out += [(f"{p}.expand_block.conv_project.bias", (mid,))]
        out += _bn(f"{p}.expand_block.bn", mid)
        out += _transformer_block(f"{p}.trans_block", d)
    return out


def official_keys(depth: int = 12) -> list[str]:
    return [k for k, _ in official_layout(depth=depth)]


HEAD_KEYS = ("trans_cls_head.weight", "trans_cls_head.bias", "conv_cls_head.weight", "conv_cls_head.bias")


def official_conv_strides(
    *, depth: int = 12, patch_size: int = 16, last_fusion_stride: int = 2
) -> dict[str, int]:
    """Every Conv2d whose stride is not 1 → its stride (all other convs have stride 1).

    The stem conv (2), the patch embedding (patch/4), the first block of stages 2 and 3
    (its 3×3 conv and residual conv), and the last fusion block (2 official, 1 in TransCAM).
    """
    out = {"conv1": 2, "trans_patch_conv": patch_size // 4}
    for i in range(2, depth + 1):
        s = stage_of(i, depth)
        if s > 0 and stage_of(i - 1, depth) != s:
            out[f"conv_trans_{i}.cnn_block.conv2"] = 2
            out[f"conv_trans_{i}.cnn_block.residual_conv"] = 2
    if last_fusion_stride != 1:
        out[f"conv_trans_{depth}.fusion_block.conv2"] = last_fusion_stride
        out[f"conv_trans_{depth}.fusion_block.residual_conv"] = last_fusion_stride
    return {k: v for k, v in out.items() if v != 1}


def official_dw_stride(i: int, *, depth: int = 12, patch_size: int = 16) -> int:
    """Token stride of ``conv_trans_i`` relative to its CNN map: patch/4, patch/8, patch/16 by stage."""
    return patch_size // 4 // 2 ** stage_of(i, depth)
