"""Optimisers: DeepLab parameter groups, poly schedule, the legacy momentum-slot SGD, and AMP."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from wsss.engine.amp import amp_dtype, autocast, make_grad_scaler
from wsss.engine.optim import LegacyPolySGD, make_sgd, param_groups, poly_lr_lambda
from wsss.errors import ConfigError

LR = 0.01
WD = 5e-4


class SegNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)
        self.head = nn.Conv2d(4, 2, 1)
        self.head2 = nn.Conv2d(2, 2, 1)  # "head" must not match "head2"


def _group_of(groups):
    table = {}
    for group in groups:
        for p in group["params"]:
            assert id(p) not in table, "parameter in two groups"
            table[id(p)] = (group["lr"], group["weight_decay"], group["name"])
    return table


def test_param_groups_give_each_parameter_its_lr_and_decay():
    model = SegNet()
    groups = param_groups(model, ["head"], lr=LR, weight_decay=WD)
    table = _group_of(groups)
    conv, bn = model.backbone[0], model.backbone[1]
    expected = {
        conv.weight: (LR, WD),
        conv.bias: (2 * LR, 0.0),
        bn.weight: (LR, 0.0),
        bn.bias: (2 * LR, 0.0),
        model.head.weight: (10 * LR, WD),
        model.head.bias: (20 * LR, 0.0),
        model.head2.weight: (LR, WD),
        model.head2.bias: (2 * LR, 0.0),
    }
    assert len(table) == len(expected)  # frozen parameters are left out
    for param, (lr, wd) in expected.items():
        got_lr, got_wd, _ = table[id(param)]
        assert got_lr == pytest.approx(lr, rel=1e-12) and got_wd == wd
    assert [g["name"] for g in groups] == [
        "backbone.weight",
        "backbone.bias",
        "backbone.norm",
        "head.weight",
        "head.bias",
    ]


def test_param_groups_can_decay_everything_and_reject_unknown_heads():
    model = SegNet()
    table = _group_of(param_groups(model, ["head"], lr=LR, weight_decay=WD, no_decay_bias_norm=False))
    assert table[id(model.head.bias)][:2] == (pytest.approx(20 * LR), WD)
    assert table[id(model.backbone[1].weight)][1] == WD
    with pytest.raises(ConfigError, match=r"'classifier'.*backbone, frozen, head, head2"):
        param_groups(model, ["classifier"], lr=LR, weight_decay=WD)


@pytest.mark.parametrize("compat", ["clean", "authors_code"])
def test_poly_lr_after_k_steps(compat):
    model = SegNet()
    max_steps = 10
    optimizer, scheduler = make_sgd(
        param_groups(model, ["head"], lr=LR, weight_decay=WD),
        lr=LR,
        weight_decay=WD,
        max_steps=max_steps,
        compat=compat,
    )
    base = [g["lr"] for g in optimizer.param_groups]
    for k in range(max_steps + 1):
        for group, lr0 in zip(optimizer.param_groups, base):
            expected = lr0 * (1 - k / max_steps) ** 0.9
            if compat == "authors_code":
                assert group["lr"] == expected  # closed form, bit for bit as the authors compute it
            else:
                assert group["lr"] == pytest.approx(expected, rel=1e-12, abs=1e-18)
        optimizer.step()
        scheduler.step()
    assert poly_lr_lambda(4)(2) == 0.5**0.9 and poly_lr_lambda(4)(9) == 0.0


def test_compat_optimizer_puts_weight_decay_in_momentum_slot():
    model = SegNet()
    optimizer, _ = make_sgd(model.parameters(), lr=LR, weight_decay=WD, max_steps=5, compat="authors_code")
    assert isinstance(optimizer, LegacyPolySGD)
    group = optimizer.param_groups[0]
    assert group["momentum"] == WD and group["weight_decay"] == 0.0
    clean, _ = make_sgd(model.parameters(), lr=LR, weight_decay=WD, max_steps=5)
    assert clean.param_groups[0]["momentum"] == 0.9 and clean.param_groups[0]["weight_decay"] == WD
    # as in the authors' code, a weight_decay written into a group dict still applies
    legacy_groups = LegacyPolySGD(param_groups(model, ["head"], lr=LR, weight_decay=WD), LR, WD)
    assert {g["weight_decay"] for g in legacy_groups.param_groups} == {WD, 0.0}
    assert {g["momentum"] for g in legacy_groups.param_groups} == {WD}


def test_compat_optimizer_steps_like_sgd_with_tiny_momentum():
    lr, wd = 0.1, 0.01
    p = nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    optimizer = LegacyPolySGD([p], lr, wd)
    p.grad = torch.tensor([2.0], dtype=torch.float64)
    optimizer.step()  # first step: buffer = grad; no decay term
    assert p.item() == pytest.approx(1.0 - lr * 2.0, rel=1e-15)
    p.grad = torch.tensor([1.0], dtype=torch.float64)
    optimizer.step()  # buffer = wd * 2 + 1
    assert p.item() == pytest.approx(1.0 - lr * 2.0 - lr * (1.0 + wd * 2.0), rel=1e-15)


def test_make_sgd_rejects_unknown_compat():
    with pytest.raises(ConfigError, match="'paper'"):
        make_sgd(SegNet().parameters(), lr=LR, weight_decay=WD, max_steps=5, compat="paper")


def test_autocast_modes_on_cpu():
    cpu = torch.device("cpu")
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with autocast(cpu, "none"):
        assert (a @ b).dtype == torch.float32
    with autocast(cpu, "bf16"):
        assert (a @ b).dtype == torch.bfloat16
    with pytest.warns(UserWarning, match="fp16 is only used on CUDA"), autocast(cpu, "fp16"):
        assert (a @ b).dtype == torch.bfloat16
    with pytest.raises(ConfigError, match="'fp8'"):
        autocast(cpu, "fp8")


def test_grad_scaler_only_for_fp16_on_cuda():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert amp_dtype(cuda, "fp16") == torch.float16 and amp_dtype(cuda, "bf16") == torch.bfloat16
    assert amp_dtype(cuda, "none") is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the scaler itself stays quiet
        for mode in ("none", "bf16", "fp16"):
            scaler = make_grad_scaler(cpu, mode)
            assert not scaler.is_enabled()
    # a disabled scaler is a pass-through, so one training-step spelling fits every mode
    p = nn.Parameter(torch.tensor([1.0]))
    optimizer = torch.optim.SGD([p], lr=0.5)
    scaler = make_grad_scaler(cpu, "bf16")
    scaler.scale((p * 3).sum()).backward()
    scaler.step(optimizer)
    scaler.update()
    assert p.item() == pytest.approx(1.0 - 0.5 * 3)
