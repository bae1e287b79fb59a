"""BNR objective: the Ā* = A*/12 identities, noise scale, loss values, gradient paths."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from wsss.errors import ConfigError
from wsss.losses.bnr import BNRObjective, bnr_maps
from wsss.models.backbones.conformer import Attention
from wsss.models.cam.transcam import TransCAMOutput, a_star, refine
from wsss.registry import CAM_MODELS, METHODS

LABELS = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 0.0, 0.0]])


def nano():
    torch.manual_seed(0)
    return CAM_MODELS.build("transcam", backbone="conformer_nano", num_classes=5, drop_path_rate=0.0)


def fake_output(cam: torch.Tensor, attn_sum: torch.Tensor | None, logits: torch.Tensor | None = None):
    b, c, h, w = cam.shape
    logits = torch.zeros(b, c) if logits is None else logits
    return TransCAMOutput(
        cam, cam.mean((2, 3)), logits, attn_sum, 12, (h, w), (16 * h, 16 * w), (16 * h, 16 * w)
    )


@pytest.fixture(scope="module")
def forward_with_blocks():
    """One eval forward with the per-block head-mean attentions captured separately."""
    model = nano().eval()
    captured = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, o: captured.append(o[1]))
        for m in model.modules()
        if isinstance(m, Attention)
    ]
    with torch.no_grad():
        out = model(torch.randn(2, 3, 48, 48), with_attention=True)
    for hk in hooks:
        hk.remove()
    return out, torch.stack(captured)


def test_mean_attention_is_a_star_over_12(forward_with_blocks):
    out, blocks = forward_with_blocks
    assert blocks.shape[0] == 12 == out.attn_blocks
    a_bar_star = blocks.mean(0)[:, 1:, 1:]  # Eq. 7 with the class token removed
    torch.testing.assert_close(a_bar_star, a_star(out.attn_sum) / 12)


def test_m_double_star_is_a_a_m_over_12(forward_with_blocks):
    out, _ = forward_with_blocks
    a = a_star(out.attn_sum)
    m = out.cam.flatten(2).transpose(1, 2)  # B×N×C
    expected = (a @ a @ m / 12).transpose(1, 2).reshape(out.cam.shape)
    torch.testing.assert_close(bnr_maps(out.cam, out.attn_sum, 12, 1.0), expected, rtol=1e-4, atol=1e-3)
    # "without noise" feeds M* = A*·M itself
    torch.testing.assert_close(bnr_maps(out.cam, out.attn_sum, 12, None), refine(out.cam, a))


def test_noise_scale_two_doubles_z(forward_with_blocks):
    out, _ = forward_with_blocks
    z1 = bnr_maps(out.cam, out.attn_sum, 12, 1.0).mean((2, 3))
    z2 = bnr_maps(out.cam, out.attn_sum, 12, 2.0).mean((2, 3))
    torch.testing.assert_close(z2, 2 * z1)


def test_loss_values_hand_computed():
    # zero CAM → every logit 0 → each MLSM term is log 2
    cam = torch.zeros(2, 5, 2, 2)
    attn_sum = torch.rand(2, 5, 5)
    parts = METHODS.build("bnr")(fake_output(cam, attn_sum), LABELS)
    assert parts["cls"].item() == pytest.approx(math.log(2))
    assert parts["bnr"].item() == pytest.approx(math.log(2))
    assert parts["loss"].item() == pytest.approx(2 * math.log(2))


def test_loss_matches_definition_on_random_values():
    torch.manual_seed(5)
    cam = torch.randn(2, 5, 2, 3)
    attn_sum = torch.rand(2, 7, 7)
    trans = torch.randn(2, 5)
    out = fake_output(cam, attn_sum, trans)
    parts = BNRObjective(noise_scale=1.0)(out, LABELS)
    a = attn_sum[:, 1:, 1:]
    m = cam.reshape(2, 5, 6)
    z = torch.einsum("bij,bjk,bck->bci", a / 12, a, m).mean(-1)
    bnr = F.multilabel_soft_margin_loss(z[:, 1:], LABELS)
    cls = F.multilabel_soft_margin_loss((cam.mean((2, 3)) + trans)[:, 1:], LABELS)
    torch.testing.assert_close(parts["bnr"], bnr)
    torch.testing.assert_close(parts["cls"], cls)
    torch.testing.assert_close(parts["loss"], cls + bnr)
    # the background channel is never supervised
    cam2 = cam.clone()
    cam2[:, 0] += 100.0
    again = BNRObjective()(fake_output(cam2, attn_sum, trans), LABELS)
    torch.testing.assert_close(again["loss"], parts["loss"])


def test_transcam_method_has_no_bnr_term():
    obj = METHODS.build("transcam")
    assert obj.needs_attention is False and METHODS.build("bnr").needs_attention is True
    cam = torch.randn(2, 5, 2, 2)
    parts = obj(fake_output(cam, None), LABELS)
    assert set(parts) == {"loss", "cls"}
    torch.testing.assert_close(parts["loss"], F.multilabel_soft_margin_loss(cam.mean((2, 3))[:, 1:], LABELS))


def test_bnr_without_attention_and_bad_labels_fail_clearly():
    cam = torch.randn(2, 5, 2, 2)
    with pytest.raises(ValueError, match="with_attention=True"):
        BNRObjective()(fake_output(cam, None), LABELS)
    with pytest.raises(ConfigError, match="num_classes"):
        BNRObjective()(fake_output(cam, torch.rand(2, 5, 5)), torch.zeros(2, 5))


def test_noise_scale_validation():
    assert METHODS.build("bnr", noise_scale=None).noise_scale is None
    assert METHODS.build("bnr", noise_scale=2).noise_scale == 2.0
    with pytest.raises(ConfigError, match="noise_scale"):
        METHODS.build("bnr", noise_scale="none")
    with pytest.raises(ConfigError, match="noise_scale"):
        METHODS.build("bnr", noise_scale=True)


def _bnr_grad(detach: bool, cam_detached: bool) -> torch.Tensor | None:
    model = nano().train()
    out = model(torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(1)), with_attention=True)
    if cam_detached:  # isolate the path through the attention
        out = out._replace(cam=out.cam.detach())
    obj = BNRObjective(detach_attention=detach)
    bnr = obj(out, LABELS)["bnr"]
    if not bnr.requires_grad:
        return None
    bnr.backward()
    return model.conv_trans_9.trans_block.attn.qkv.weight.grad


def test_bnr_gradient_reaches_attention_qkv_unless_detached():
    through_attention = _bnr_grad(detach=False, cam_detached=True)
    assert through_attention is not None and through_attention.abs().sum() > 0
    assert _bnr_grad(detach=True, cam_detached=True) is None
    full = _bnr_grad(detach=False, cam_detached=False)
    cam_only = _bnr_grad(detach=True, cam_detached=False)
    assert full is not None and cam_only is not None
    assert not torch.allclose(full, cam_only)


def test_objectives_run_their_own_forward_once_with_the_attention_they_need() -> None:
    """``step(net, x, y)`` is what train-cls calls: one forward, attention only when needed."""
    from wsss.losses.objective import Objective

    calls: list[bool] = []

    class Net(torch.nn.Module):
        def forward(self, x, with_attention=False):
            calls.append(with_attention)
            return fake_output(x, torch.zeros(1))

    class Echo(Objective):
        needs_attention = True

        def forward(self, out, labels):
            return {"loss": out.cam.sum() * 0 + labels.sum()}

    got = Echo().step(Net(), torch.ones(2, 3, 4, 4), torch.tensor([1.0, 2.0]))
    assert calls == [True] and float(got["loss"]) == 3.0
    assert Echo.forwards_per_step == 1 and METHODS.build("bnr").forwards_per_step == 1
