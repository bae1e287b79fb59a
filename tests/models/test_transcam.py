"""TransCAM model: heads, A*·M refinement, extraction methods, official-weight loading."""

from __future__ import annotations

import argparse
import copy
import math

import pytest
import torch

from tests.models.conformer_layout import HEAD_KEYS, official_layout
from wsss.errors import CheckpointError, ConfigError
from wsss.models.backbones.conformer import Attention, load_conformer_pretrained
from wsss.models.cam.transcam import TransCAM, a_star, class_token_attention, refine
from wsss.registry import CAM_MODELS, METHODS


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    """SDPA and explicit attention differ by float rounding; untrained eval-mode activations are large."""
    torch.testing.assert_close(a, b, atol=1e-5 * float(b.abs().max()), rtol=1e-4)


def nano(num_classes: int = 5) -> TransCAM:
    return CAM_MODELS.build(
        "transcam", backbone="conformer_nano", num_classes=num_classes, drop_path_rate=0.0
    )


def test_refine_matches_explicit_double_loop():
    torch.manual_seed(0)
    b, c, h, w = 2, 3, 2, 3
    n = h * w
    cam = torch.randn(b, c, h, w)
    attn = torch.rand(b, n, n)
    out = refine(cam, attn)
    flat = cam.reshape(b, c, n)
    expected = torch.zeros(b, c, n)
    for bi in range(b):
        for ci in range(c):
            for i in range(n):
                for j in range(n):
                    expected[bi, ci, i] += attn[bi, i, j] * flat[bi, ci, j]
    torch.testing.assert_close(out, expected.reshape(b, c, h, w))
    # rows are queries: a permutation matrix moves values from key j to query i
    perm = torch.eye(n)[torch.tensor([1, 2, 3, 4, 5, 0])].expand(b, n, n)
    torch.testing.assert_close(refine(cam, perm).reshape(b, c, n), flat[:, :, [1, 2, 3, 4, 5, 0]])


def test_refine_rejects_wrong_grid():
    with pytest.raises(ValueError, match="does not fit"):
        refine(torch.zeros(1, 2, 2, 2), torch.zeros(1, 5, 5))


def test_a_star_drops_class_token_without_renormalising():
    attn_sum = torch.arange(2 * 5 * 5, dtype=torch.float).reshape(2, 5, 5)
    assert torch.equal(a_star(attn_sum), attn_sum[:, 1:, 1:])
    assert torch.equal(class_token_attention(attn_sum, (2, 2)), attn_sum[:, 0, 1:].reshape(2, 1, 2, 2))


def test_heads_and_last_fusion_stride():
    model = nano(num_classes=7)
    head = model.conv_cls_head
    assert isinstance(head, torch.nn.Conv2d)
    assert head.kernel_size == (3, 3) and head.padding == (1, 1) and head.bias is not None
    assert head.out_channels == 7 and head.in_channels == model.out_channels
    assert model.conv_trans_12.fusion_block.conv2.stride == (1, 1)
    assert model.conv_trans_12.fusion_block.residual_conv.stride == (1, 1)
    assert model.trans_cls_head.out_features == 7
    assert torch.count_nonzero(model.trans_cls_head.bias) == 0


def test_forward_outputs_and_identities():
    torch.manual_seed(1)
    model = nano().eval()
    x = torch.randn(2, 3, 64, 64)
    captured = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, o: captured.append(o[1]))
        for m in model.modules()
        if isinstance(m, Attention)
    ]
    with torch.no_grad():
        out = model(x, with_attention=True)
        for hk in hooks:
            hk.remove()
        plain = model(x)
    assert out.cam.shape == (2, 5, 4, 4) and out.grid == (4, 4)
    torch.testing.assert_close(out.conv_logits, out.cam.mean(dim=(2, 3)))
    assert out.trans_logits.shape == (2, 5)
    # the running sum equals the sum of the 12 per-block head means
    assert len(captured) == 12 and out.attn_blocks == 12
    torch.testing.assert_close(out.attn_sum, torch.stack(captured).sum(0))
    # attention off: no attention at all, same predictions through SDPA
    assert plain.attn_sum is None and plain.attn_blocks == 0
    close(plain.cam, out.cam)
    close(plain.trans_logits, out.trans_logits)


def test_extract_methods():
    torch.manual_seed(2)
    model = nano().eval()
    x = torch.randn(2, 3, 48, 64)
    with torch.no_grad():
        out = model(x, with_attention=True)
        conv = model.extract(x, "conv")
        trans = model.extract(x, "transcam")
        cls = model.extract(x, "clsattn")
    close(conv, out.cam)
    torch.testing.assert_close(trans, refine(out.cam, out.attn_sum[:, 1:, 1:]))
    torch.testing.assert_close(cls, out.attn_sum[:, 0, 1:].reshape(2, 1, 3, 4) * out.cam)
    assert trans.shape == cls.shape == (2, 5, 3, 4)
    with pytest.raises(ConfigError, match="transcam"):
        model.extract(x, "transcm")


@pytest.mark.parametrize(("size", "grid"), [((64, 96), (4, 6)), ((70, 50), (5, 4))])
def test_rectangular_and_odd_inputs(size, grid):
    model = nano().eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, *size), with_attention=True)
        cams = model.extract(torch.randn(1, 3, *size), "transcam")
    assert out.grid == grid and out.input_size == size
    assert out.cam.shape == (1, 5, *grid) and cams.shape == (1, 5, *grid)
    assert out.attn_sum.shape == (1, 1 + grid[0] * grid[1], 1 + grid[0] * grid[1])


def test_builder_rejects_non_conformer_backbone():
    with pytest.raises(ConfigError, match="Conformer"):
        CAM_MODELS.build("transcam", backbone="resnet50")
    with pytest.raises(ConfigError, match="conformer_nano"):
        CAM_MODELS.build("transcam", backbone="conformer_nao")


# --- fused SDPA path vs explicit attention path ----------------------------------------------


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """max|a−b| / max|b|."""
    return float((a - b).abs().max() / b.abs().max())


@pytest.fixture(scope="module")
def calibrated_nano() -> TransCAM:
    """Eval-mode nano TransCAM with random norm affines and biases and BN statistics calibrated on
    random batches (so BN is far from identity and activations have realistic scale)."""
    torch.manual_seed(5)
    model = nano(num_classes=21)
    g = torch.Generator().manual_seed(6)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.LayerNorm)):
                m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
            if isinstance(m, torch.nn.Linear):
                m.bias.copy_(0.05 * torch.randn(m.bias.shape, generator=g))
            if isinstance(m, torch.nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None  # cumulative average over the calibration batches
        model.train()
        for _ in range(3):
            model(torch.randn(4, 3, 64, 64, generator=g))
    model.eval()
    bn = model.conv_trans_8.cnn_block.bn2
    assert bn.running_var.sub(1).abs().max() > 0.1 and bn.running_mean.abs().max() > 0.1
    return model


@pytest.fixture
def sdpa_calls(monkeypatch):
    """Count calls to the fused kernel (it still runs)."""
    calls = []
    real = torch.nn.functional.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting)
    return calls


@pytest.mark.parametrize(("dtype", "bound"), [(torch.float32, 1e-4), (torch.float64, 1e-10)])
def test_sdpa_and_explicit_paths_give_the_same_cam_and_logits(calibrated_nano, sdpa_calls, dtype, bound):
    """float64 shows both paths compute one function; float32 bounds the rounding gap on M."""
    model = copy.deepcopy(calibrated_nano).to(dtype)
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(7), dtype=dtype)
    with torch.no_grad():
        fused = model(x)
        assert len(sdpa_calls) == 12  # one per transformer block
        explicit = model(x, with_attention=True)
        assert len(sdpa_calls) == 12  # the explicit pass never calls it
    assert float(explicit.cam.abs().max()) > 1.0  # a non-degenerate CAM
    assert relative(fused.cam, explicit.cam) <= bound
    assert relative(fused.conv_logits, explicit.conv_logits) <= bound
    assert relative(fused.trans_logits, explicit.trans_logits) <= bound


def test_training_objectives_that_read_attention_never_use_sdpa(calibrated_nano, monkeypatch):
    """BNR needs A*: the training step's forward (``with_attention=needs_attention``) is explicit."""
    model = copy.deepcopy(calibrated_nano).train()
    x = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(8))
    y = torch.zeros(2, 20)
    y[0, 3] = y[1, 11] = 1

    def forbidden(*_args, **_kwargs):
        raise AssertionError("scaled_dot_product_attention called on an attention-reading path")

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", forbidden)
    bnr = METHODS.build("bnr")
    assert bnr.needs_attention
    losses = bnr(model(x, with_attention=bnr.needs_attention), y)
    losses["loss"].backward()
    bnr_value = float(losses["bnr"].detach())
    assert math.isfinite(bnr_value) and bnr_value > 0
    grad = model.conv_trans_9.trans_block.attn.qkv.weight.grad
    assert grad is not None and grad.abs().max() > 0
    # plain TransCAM's objective reads no attention, so its forward goes through the fused kernel
    plain = METHODS.build("transcam")
    assert not plain.needs_attention
    with pytest.raises(AssertionError, match="scaled_dot_product_attention"):
        model(x, with_attention=plain.needs_attention)


# --- official checkpoint layout -------------------------------------------------------------
# The layouts come from tests/models/conformer_layout.py, written from the reference
# (transcam.md §1.4, §2.2), not from our model. Tensor k of a layout is filled with
# ``k + offset + (flat index mod 1021)/1024`` (exact in float32), so each tensor is told apart
# from every other one, and an in-tensor transpose or reshape is caught too.

TRANSCAM_S = official_layout(num_classes=21, transcam_heads=True)  # TransCAM's Net_sm
IMAGENET_S = official_layout(num_classes=1000)  # official Conformer_small_patch16


def _pattern(k: int, shape: tuple[int, ...]) -> torch.Tensor:
    if not shape:  # num_batches_tracked
        return torch.tensor(k, dtype=torch.int64)
    n = math.prod(shape)
    return (k + (torch.arange(n, dtype=torch.int64) % 1021).float() / 1024).reshape(shape)


def patterned_state(layout, offset: int) -> dict[str, torch.Tensor]:
    return {key: _pattern(offset + k, shape) for k, (key, shape) in enumerate(layout)}


def constant_state(layout) -> dict[str, torch.Tensor]:
    """Tiny on disk: every tensor is a stride-0 view of one value."""
    return {key: torch.tensor(1.5 if shape else 7).expand(shape) for key, shape in layout}


def read_by_official_name(model: torch.nn.Module, key: str) -> torch.Tensor:
    """Follow ``key`` through the module tree (attribute names), never through our state_dict."""
    owner, _, leaf = key.rpartition(".")
    return getattr(model.get_submodule(owner), leaf)


def assert_landed(model: torch.nn.Module, layout, offset: int, skip: tuple[str, ...] = ()) -> None:
    for k, (key, shape) in enumerate(layout):
        if key in skip:
            continue
        got = read_by_official_name(model, key)
        assert tuple(got.shape) == shape, key
        assert torch.equal(got, _pattern(offset + k, shape)), f"{key} does not hold tensor #{k} of the file"


@pytest.fixture(scope="module")
def transcam_s() -> TransCAM:
    """One TransCAM on Conformer-S for the module (37.7 M parameters, a few seconds on CPU)."""
    return CAM_MODELS.build("transcam", backbone="conformer_small", num_classes=21)


def test_reference_layouts_have_718_keys_and_differ_only_in_heads():
    assert len(TRANSCAM_S) == len(IMAGENET_S) == 718
    assert sum(key.endswith("num_batches_tracked") for key, _ in TRANSCAM_S) == 85
    diff = {key: (a, b) for (key, a), (_, b) in zip(TRANSCAM_S, IMAGENET_S) if a != b}
    assert diff == {
        "trans_cls_head.weight": ((21, 384), (1000, 384)),
        "trans_cls_head.bias": ((21,), (1000,)),
        "conv_cls_head.weight": ((21, 1024, 3, 3), (1000, 1024)),
        "conv_cls_head.bias": ((21,), (1000,)),
    }


def test_transcam_checkpoint_lands_by_official_name(transcam_s, tmp_path):
    """TransCAM's released weights (bare Net_sm state_dict): all 718 tensors, each in its place."""
    path = tmp_path / "transcam_6485.pth"
    torch.save(patterned_state(TRANSCAM_S, offset=0), path)
    report = load_conformer_pretrained(transcam_s, str(path))
    path.unlink()  # ~150 MB
    assert len(report.matched) == 718 == report.model_keys
    assert report.not_loaded == report.skipped == report.unexpected == report.mismatched == []
    assert_landed(transcam_s, TRANSCAM_S, offset=0)
    k = [key for key, _ in TRANSCAM_S].index("conv_trans_5.cnn_block.residual_conv.weight")
    assert transcam_s.get_submodule("conv_trans_5.cnn_block.residual_conv").weight[0, 0, 0, 0] == k


def test_imagenet_checkpoint_skips_exactly_the_four_heads(transcam_s, tmp_path):
    """Official ImageNet Conformer-S, wrapped like its main.py (``model`` + ``args`` + ``epoch``)."""
    heads_before = {key: read_by_official_name(transcam_s, key).clone() for key in HEAD_KEYS}
    path = tmp_path / "Conformer_small_patch16.pth"
    args = argparse.Namespace(model="Conformer_small_patch16", lr=1e-3)
    torch.save({"model": patterned_state(IMAGENET_S, offset=2000), "epoch": 299, "args": args}, path)
    report = load_conformer_pretrained(transcam_s, str(path))
    path.unlink()  # ~150 MB
    assert len(report.matched) == 714 and report.model_keys == 718
    assert sorted(report.skipped) == sorted(report.not_loaded) == sorted(HEAD_KEYS)
    assert report.missing == report.unexpected == report.mismatched == []
    assert report.counts() == (
        "714/718 model tensors matched, 0 missing, 0 unexpected, 0 shape-mismatched, 4 skipped"
    )
    assert_landed(transcam_s, IMAGENET_S, offset=2000, skip=HEAD_KEYS)
    for key, before in heads_before.items():  # TransCAM's own heads are kept, not overwritten
        assert torch.equal(read_by_official_name(transcam_s, key), before), key


def test_module_prefix_is_stripped_and_reported(transcam_s, tmp_path):
    """A DDP-saved (``module.``) file loads completely; the report says how many keys were renamed."""
    path = tmp_path / "ddp.pth"
    state = patterned_state(TRANSCAM_S, offset=3000)
    torch.save({f"module.{k}": v for k, v in state.items()}, path)
    report = load_conformer_pretrained(transcam_s, str(path))
    path.unlink()  # ~150 MB
    assert report.stripped == 718 and len(report.matched) == 718
    assert "718 keys had a prefix stripped" in report.summary()
    assert_landed(transcam_s, TRANSCAM_S, offset=3000)


@pytest.mark.parametrize("prefix", ["backbone.", "module.backbone.", "model."])
def test_other_prefixes_fail_loudly_and_leave_the_model_alone(transcam_s, tmp_path, prefix):
    before = transcam_s.conv_trans_9.trans_block.attn.qkv.weight.clone()
    path = tmp_path / "prefixed.pth"
    torch.save({f"{prefix}{k}": v for k, v in constant_state(IMAGENET_S).items()}, path)
    with pytest.raises(CheckpointError) as err:
        load_conformer_pretrained(transcam_s, str(path))
    msg = str(err.value)
    assert "prefixed.pth" in msg and "0/718 model tensors matched" in msg and "at least 714" in msg
    assert f"'{prefix.removeprefix('module.')}'" in msg
    assert torch.equal(transcam_s.conv_trans_9.trans_block.attn.qkv.weight, before)


def test_builder_pretrained_argument_uses_the_same_loader(tmp_path):
    """``pretrained=`` in the registry builder: ImageNet layout at nano widths, heads left out."""
    layout = official_layout(channel_ratio=0.25, embed_dim=48, num_classes=1000)
    path = tmp_path / "imagenet_nano.pth"
    torch.save({"model": patterned_state(layout, offset=100)}, path)
    model = CAM_MODELS.build("transcam", backbone="conformer_nano", num_classes=21, pretrained=str(path))
    assert_landed(model, layout, offset=100, skip=HEAD_KEYS)
    assert tuple(model.conv_cls_head.weight.shape) == (21, 64, 3, 3)
