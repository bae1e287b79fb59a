"""ViT encoder: loads timm state_dicts by key and reproduces timm's tokens, attention and block outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer

from wsss.errors import CheckpointError, ConfigError, DataError
from wsss.models.backbones.vit import (
    VIT_ENCODERS,
    ViTEncoder,
    build_vit_encoder,
    load_vit_weights,
    resize_pos_embed,
)

TOL = 1e-5
# the vit_tiny variant (patch 8) and a custom patch-16 one with qk-norm and LayerScale
TINY = dict(VIT_ENCODERS["vit_tiny"])
CUSTOM = dict(patch_size=16, embed_dim=48, depth=3, num_heads=3, mlp_ratio=2.0, qk_norm=True, init_values=0.1)
CONFIGS = {"tiny": (TINY, 64, 96), "custom": (CUSTOM, 48, 80)}  # config, native size, larger size


def timm_reference(config: dict[str, Any], img_size: int, seed: int = 0) -> VisionTransformer:
    """A timm ViT with a classifier head and every tensor perturbed, so a mis-mapped key shows."""
    torch.manual_seed(seed)
    model = VisionTransformer(img_size=img_size, num_classes=5, **config).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.1 * torch.randn_like(param))
    return model


def timm_at_size(
    ref: VisionTransformer, config: dict[str, Any], size: int | tuple[int, int]
) -> VisionTransformer:
    """timm's own model at another (h, w) size, pos_embed resized by timm's resampler (no antialias)."""
    h, w = (size, size) if isinstance(size, int) else size
    grid = [h // config["patch_size"], w // config["patch_size"]]
    model = VisionTransformer(img_size=(h, w), num_classes=5, **config).eval()
    state = ref.state_dict()
    state["pos_embed"] = resample_abs_pos_embed(state["pos_embed"], grid, antialias=False)
    model.load_state_dict(state)
    return model


def save(state: dict[str, torch.Tensor], path: Path) -> Path:
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save({"model": state}, path)  # the wrapped form training scripts write
    return path


def loaded_encoder(kind: str, tmp_path: Path, **kwargs: Any) -> tuple[ViTEncoder, VisionTransformer]:
    config, native, _ = CONFIGS[kind]
    ref = timm_reference(config, native)
    encoder = ViTEncoder(img_size=native, **kwargs, **config).eval()
    load_vit_weights(encoder, save(ref.state_dict(), tmp_path / "w.safetensors"))
    return encoder, ref


def images(size: int | tuple[int, int], batch: int = 2, seed: int = 1) -> torch.Tensor:
    h, w = (size, size) if isinstance(size, int) else size
    return torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
@pytest.mark.parametrize("kind", ["tiny", "custom"])
def test_tokens_match_timm_native_and_resized(kind: str, suffix: str, tmp_path: Path) -> None:
    config, native, large = CONFIGS[kind]
    ref = timm_reference(config, native)
    path = save(ref.state_dict(), tmp_path / f"w{suffix}")
    if kind == "tiny":
        encoder = build_vit_encoder("vit_tiny", pretrained=path, img_size=native)
    else:
        encoder = ViTEncoder(img_size=native, **config)
        load_vit_weights(encoder, path)
    encoder.eval()
    # timm's key layout, minus the classifier
    assert set(encoder.state_dict()) == {k for k in ref.state_dict() if not k.startswith("head.")}
    ref_large = timm_at_size(ref, config, large)
    with torch.no_grad():
        for _ in range(2):  # sizes alternate between calls: nothing may be cached
            for size, model in ((native, ref), (large, ref_large)):
                x = images(size)
                out = encoder(x)
                expected = model.forward_features(x)[:, 1:]
                grid = size // config["patch_size"]
                assert out.grid == (grid, grid)
                assert out.tokens.shape == (2, grid * grid, config["embed_dim"])
                assert (out.tokens - expected).abs().max() <= TOL
                plain = encoder(x, with_attention=False)
                assert plain.attn_logits == []
                assert (plain.tokens - expected).abs().max() <= TOL


def test_resize_pos_embed_is_plain_bicubic_keeping_cls() -> None:
    pos = torch.randn(1, 1 + 4 * 4, 6, generator=torch.Generator().manual_seed(0))
    out = resize_pos_embed(pos, (4, 4), (7, 5))
    assert out.shape == (1, 1 + 35, 6)
    assert torch.equal(out[:, :1], pos[:, :1])
    expected = resample_abs_pos_embed(pos, [7, 5], old_size=[4, 4], antialias=False)
    assert (out - expected).abs().max() <= 1e-6
    # antialiased upsampling (timm's dynamic_img_size path) uses another kernel: the choice matters
    assert (out - resample_abs_pos_embed(pos, [7, 5], old_size=[4, 4])).abs().max() > 1e-3
    assert resize_pos_embed(pos, (4, 4), (4, 4)) is pos
    # a constant field stays constant (bicubic weights sum to one)
    const = torch.ones(1, 1 + 9, 2)
    assert torch.allclose(resize_pos_embed(const, (3, 3), (6, 6)), torch.ones(1, 37, 2), atol=1e-6)


def test_pos_embed_resized_on_load_when_grid_differs(tmp_path: Path) -> None:
    ref = timm_reference(TINY, 64)  # 8×8 grid in the file
    encoder = build_vit_encoder(
        "vit_tiny", img_size=128, pretrained=save(ref.state_dict(), tmp_path / "w.pth")
    )
    assert encoder.pos_embed.shape == (1, 1 + 16 * 16, 64)
    x = images(128)
    with torch.no_grad():
        expected = timm_at_size(ref, TINY, 128).forward_features(x)[:, 1:]
        assert (encoder.eval()(x).tokens - expected).abs().max() <= TOL


@pytest.mark.parametrize("kind", ["tiny", "custom"])
def test_attention_logits_match_recomputed_attention(kind: str, tmp_path: Path) -> None:
    encoder, ref = loaded_encoder(kind, tmp_path)
    size = (CONFIGS[kind][1], CONFIGS[kind][2])  # rectangular grid
    ref = timm_at_size(ref, CONFIGS[kind][0], size)
    captured: list[torch.Tensor] = []
    hooks = [b.attn.qkv.register_forward_hook(lambda m, i, o: captured.append(o)) for b in ref.blocks[-2:]]
    x = images(size)
    with torch.no_grad():
        ref.forward_features(x)
        out = encoder(x)
    for hook in hooks:
        hook.remove()
    heads, n = encoder.num_heads, out.grid[0] * out.grid[1]
    assert len(out.attn_logits) == 2
    for block, qkv, logits in zip(ref.blocks[-2:], captured, out.attn_logits, strict=True):
        attn = block.attn
        b, length, _ = qkv.shape
        q, k, _ = qkv.reshape(b, length, 3, heads, -1).permute(2, 0, 3, 1, 4)
        q, k = attn.q_norm(q), attn.k_norm(k)
        full = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5
        probs = full.softmax(-1)[:, :, 1:, 1:]  # with the cls column, then restricted and renormalised
        assert logits.shape == (2, heads, n, n)
        assert (logits - full[:, :, 1:, 1:]).abs().max() <= TOL
        renorm = probs / probs.sum(-1, keepdim=True)
        assert (logits.softmax(-1) - renorm).abs().max() <= TOL


def test_attn_blocks_count_and_zero() -> None:
    encoder = build_vit_encoder("vit_tiny", img_size=64, attn_blocks=3).eval()
    with torch.no_grad():
        assert len(encoder(images(64)).attn_logits) == 3
        encoder.attn_blocks = 0
        assert encoder(images(64)).attn_logits == []


@pytest.mark.parametrize(("kind", "aux_block"), [("tiny", -3), ("custom", -2), ("custom", 0)])
def test_aux_tokens_are_block_output(kind: str, aux_block: int, tmp_path: Path) -> None:
    encoder, ref = loaded_encoder(kind, tmp_path, aux_block=aux_block)
    captured: list[torch.Tensor] = []
    ref.blocks[aux_block].register_forward_hook(lambda m, i, o: captured.append(o))
    x = images(CONFIGS[kind][1])
    with torch.no_grad():
        ref.forward_features(x)
        out = encoder(x)
    assert out.aux_tokens.shape == out.tokens.shape
    assert (out.aux_tokens - captured[0][:, 1:]).abs().max() <= TOL
    assert (out.aux_tokens - out.tokens).abs().max() > 1e-2  # not the final, normed tokens


def test_tiny_attributes_and_grid() -> None:
    encoder = build_vit_encoder("vit_tiny", img_size=64)
    assert (encoder.embed_dim, encoder.num_heads, encoder.patch_size, encoder.depth) == (64, 4, 8, 4)
    assert encoder.aux_block == 1  # -3 of 4 blocks
    out = encoder(images(64, batch=1))
    assert out.grid == (8, 8) and out.tokens.shape == (1, 64, 64)


def test_gradients_reach_patch_embedding() -> None:
    encoder = build_vit_encoder("vit_tiny", img_size=64)
    encoder(images(64)).tokens.sum().backward()
    grad = encoder.patch_embed.proj.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert encoder.pos_embed.grad is not None and encoder.pos_embed.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (lambda s: s.__setitem__("blocks.0.attn.qkv.weight", torch.zeros(3, 64)), "blocks.0.attn.qkv.weight"),
        (lambda s: s.pop("norm.weight"), "norm.weight"),
        (lambda s: s.__setitem__("blocks.7.mlp.fc1.weight", torch.zeros(1)), "blocks.7.mlp.fc1.weight"),
        (lambda s: s.__setitem__("pos_embed", torch.zeros(1, 1 + 63, 64)), "pos_embed"),
    ],
    ids=["shape", "missing", "unexpected", "non_square_pos_embed"],
)
def test_bad_checkpoint_names_the_key(edit: Any, key: str, tmp_path: Path) -> None:
    state = timm_reference(TINY, 64).state_dict()
    edit(state)
    path = save(state, tmp_path / "bad.safetensors")
    encoder = build_vit_encoder("vit_tiny", img_size=64)
    before = encoder.patch_embed.proj.weight.clone()
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")) as info:
        load_vit_weights(encoder, path)
    assert str(path) in str(info.value)
    assert torch.equal(encoder.patch_embed.proj.weight, before)  # nothing half-loaded


def test_missing_and_npz_files(tmp_path: Path) -> None:
    encoder = build_vit_encoder("vit_tiny", img_size=64)
    with pytest.raises(CheckpointError, match=r"nope\.pth"):
        load_vit_weights(encoder, tmp_path / "nope.pth")
    npz = tmp_path / "augreg.npz"
    npz.write_bytes(b"PK")
    with pytest.raises(CheckpointError, match="timm"):
        load_vit_weights(encoder, npz)


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match="did you mean 'vit_tiny'") as info:
        build_vit_encoder("vit_tinny")
    assert "vit_b16" in str(info.value)
    with pytest.raises(ConfigError, match="aux_block"):
        build_vit_encoder("vit_tiny", img_size=64, aux_block=4)
    with pytest.raises(ConfigError, match="img_size"):
        build_vit_encoder("vit_tiny", img_size=60)
    with pytest.raises(ConfigError, match="reg_tokens"):
        ViTEncoder(img_size=64, reg_tokens=1, **TINY)
    with pytest.raises(ConfigError, match="num_classes"):
        ViTEncoder(img_size=64, num_classes=3, **TINY)


def test_input_not_multiple_of_patch() -> None:
    encoder = build_vit_encoder("vit_tiny", img_size=64)
    with pytest.raises(DataError, match=r"60×64.*patch size 8"):
        encoder(images((60, 64)))


def test_explicit_attention_matches_fused_in_training_mode() -> None:
    """With dropout-free training mode, the explicit blocks equal timm's (fused) forward too."""
    encoder = build_vit_encoder("vit_tiny", img_size=64).train()
    x = images(64)
    a, b = encoder(x).tokens, encoder(x, with_attention=False).tokens
    assert (a - b).abs().max() <= TOL


def test_a_timm_vit_b16_file_loads_by_key_and_gives_timms_tokens(tmp_path: Path) -> None:
    """The acceptance case at full size: timm's own ``vit_base_patch16_224`` (random init, no download),
    its state dict saved as a file, loaded into ``vit_b16`` by key; tokens equal timm's forward."""

    torch.manual_seed(0)
    ref = timm.create_model("vit_base_patch16_224", pretrained=False).eval()
    path = tmp_path / "vit_b16.safetensors"
    save(ref.state_dict(), path)
    encoder = build_vit_encoder("vit_b16", pretrained=path, img_size=224).eval()
    x = images(224, batch=1)
    with torch.no_grad():
        out = encoder(x)
        expected = ref.forward_features(x)[:, 1:]
    assert out.tokens.shape == (1, 196, 768) and len(out.attn_logits) == 2
    assert out.attn_logits[0].shape == (1, 12, 196, 196)
    assert (out.tokens - expected).abs().max() <= TOL
