"""AMR's Attention Modulation Module: the Gaussian re-mapping, the gates, detached statistics, BN quirk."""

from __future__ import annotations

import math

import pytest
import torch

from wsss.errors import ConfigError
from wsss.models.modules.amm import AMM, gaussian_remap
from wsss.registry import BACKBONE_INSERTS, BACKBONES


def test_gaussian_remap_hand_values_damp_the_extremes() -> None:
    """a = 0..4: μ = 2, σ = √2.5 (unbiased); G(2) = 1/(√(2π)·σ) = 0.252313, G(1) = G(3) = G(2)·e^-0.2,
    G(0) = G(4) = G(2)·e^-0.8: the mean gets the largest weight, the extremes less than half of it."""
    g = gaussian_remap(torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0]))
    want = torch.tensor([0.1133717, 0.2065766, 0.2523133, 0.2065766, 0.1133717])
    torch.testing.assert_close(g, want, atol=1e-6, rtol=0)
    assert float(g[2] / g[0]) == pytest.approx(math.exp(0.8))
    # the peak is 1/(√(2π)σ), not renormalised to 1: a wider spread lowers every weight
    wide = gaussian_remap(torch.tensor([0.0, 2.0, 4.0, 6.0, 8.0]))
    assert float(wide[2]) == pytest.approx(0.252313 / 2, abs=1e-6)


def test_gaussian_statistics_are_detached() -> None:
    """With μ, σ constants, dΣG/da_i = −G(a_i)·(a_i − μ)/σ²; through μ and σ it would differ."""
    a = torch.tensor([0.0, 1.0, 3.0, 7.0], requires_grad=True)
    (grad,) = torch.autograd.grad(gaussian_remap(a).sum(), a)
    mu, sigma = a.detach().mean(), a.detach().std()
    g = gaussian_remap(a.detach())
    torch.testing.assert_close(grad, -g * (a.detach() - mu) / sigma**2)

    def attached(x: torch.Tensor) -> torch.Tensor:
        m, s = x.mean(), x.std()
        return torch.exp(-((x - m) ** 2) / (2 * s**2)) / (math.sqrt(2 * math.pi) * s)

    (through,) = torch.autograd.grad(attached(a).sum(), a)
    assert float((through - grad).abs().max()) > 1e-3  # the check can tell the two apart


def test_amm_keeps_shapes_and_every_parameter_learns() -> None:
    torch.manual_seed(0)
    amm = BACKBONE_INSERTS.build("amm", channels=32).train()
    assert [tuple(p.shape) for p in amm.channel.mlp.parameters()] == [(2, 32), (2,), (32, 2), (32,)]
    assert amm.spatial.conv.weight.shape == (1, 2, 7, 7) and amm.spatial.conv.bias is None
    assert (amm.spatial.bn.eps, amm.spatial.bn.momentum) == (1e-5, 0.01)
    x = torch.randn(3, 32, 9, 11)
    y = amm(x)
    assert y.shape == x.shape
    (y * torch.randn_like(y)).sum().backward()
    for name, p in amm.named_parameters():
        assert p.grad is not None and bool(p.grad.abs().sum() > 0), name


def test_amm_is_the_channel_then_spatial_gate_by_hand() -> None:
    torch.manual_seed(1)
    amm = AMM(16, 4).eval()
    with torch.no_grad():
        amm.spatial.bn.running_mean.fill_(0.3)
        amm.spatial.bn.running_var.fill_(2.0)
        x = torch.randn(2, 16, 5, 6)
        a_c = amm.channel.mlp(x.mean(dim=(2, 3)))
        f_c = x * gaussian_remap(a_c)[:, :, None, None]
        pooled = torch.cat([f_c.max(dim=1, keepdim=True).values, f_c.mean(dim=1, keepdim=True)], dim=1)
        s = (amm.spatial.conv(pooled) - 0.3) / math.sqrt(2.0 + 1e-5)  # eval BN, affine 1/0
        torch.testing.assert_close(amm(x), f_c * gaussian_remap(s))


def test_statistics_span_the_whole_batch() -> None:
    """μ and σ are taken over every image of the batch (the released code): an image's modulation
    depends on what it is batched with, even in eval mode. make-cams' batch_images fixes the groups."""
    torch.manual_seed(2)
    amm = AMM(8, 4).eval()
    x = torch.randn(2, 8, 6, 6)
    other = x.clone()
    other[1] *= 5
    with torch.no_grad():
        assert not torch.allclose(amm(x)[0], amm(other)[0], atol=1e-3)


def test_bn_train_mode_at_inference_only_behind_the_flag() -> None:
    """The released Net.train() override leaves the spatial gate's BN in training mode: inference
    normalises with the batch's statistics and keeps moving the running ones. Clean eval does not."""
    torch.manual_seed(2)
    x = torch.randn(2, 8, 6, 6)
    clean = AMM(8, 4).eval()
    quirk = BACKBONE_INSERTS.build("amm", channels=8, reduction=4, bn_train_at_inference=True)
    quirk.load_state_dict(clean.state_dict())
    quirk.eval()
    assert not clean.spatial.bn.training
    assert quirk.spatial.bn.training and not quirk.channel.training
    with torch.no_grad():
        out_clean, out_quirk = clean(x), quirk(x)
    assert torch.equal(clean.spatial.bn.running_mean, torch.zeros(1))
    assert not torch.equal(quirk.spatial.bn.running_mean, torch.zeros(1))
    assert not torch.allclose(out_clean, out_quirk, atol=1e-3)
    # the quirk's spatial logits are standardised with this batch's own statistics
    with torch.no_grad():
        f_c = quirk.channel(x)
        pooled = torch.cat([f_c.amax(dim=1, keepdim=True), f_c.mean(dim=1, keepdim=True)], dim=1)
        s = quirk.spatial.conv(pooled)
        s = (s - s.mean()) / torch.sqrt(s.var(unbiased=False) + 1e-5)
        torch.testing.assert_close(out_quirk, f_c * gaussian_remap(s), atol=1e-5, rtol=1e-4)
    # inside a backbone, model.eval() and the freeze_bn rule keep it too
    net = BACKBONES.build("mobilenet_v2", insert="amm", insert_args={"bn_train_at_inference": True}).eval()
    assert all(net.inserts[k].spatial.bn.training for k in net.inserts)
    with pytest.raises(ConfigError, match="bn_train_at_inference"):
        BACKBONE_INSERTS.build("amm", channels=8, bn_train_at_inference="yes")
