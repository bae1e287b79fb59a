"""SPU stage 1: the pixel-wise transfer loss, its detach switch, the pair's groups and CAM source."""

from __future__ import annotations

import pytest
import torch

from wsss.errors import ConfigError
from wsss.losses.spu import pixel_transfer_loss
from wsss.registry import CAM_MODELS, METHODS


def test_transfer_loss_is_the_mean_absolute_difference() -> None:
    a = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    b = torch.tensor([[1.5, 2.0], [1.0, 4.0]])
    assert float(pixel_transfer_loss(a, b)) == pytest.approx((0.5 + 0 + 2 + 0) / 4)
    with pytest.raises(ConfigError, match="differ in shape"):
        pixel_transfer_loss(a, b[:1])
    with pytest.raises(ConfigError, match="detach_target must be one of none, spm, plain"):
        pixel_transfer_loss(a, b, "both")


@pytest.mark.parametrize(
    ("detach", "plain_moves", "spm_moves"),
    [("none", True, True), ("spm", True, False), ("plain", False, True)],
)
def test_transfer_gradient_reaches_both_sides_unless_detached(
    detach: str, plain_moves: bool, spm_moves: bool
) -> None:
    plain = torch.randn(2, 3, 4, 4, requires_grad=True)
    spm = torch.randn(2, 3, 4, 4, requires_grad=True)
    pixel_transfer_loss(plain, spm, detach).backward()
    assert (plain.grad is not None) == plain_moves and (spm.grad is not None) == spm_moves
    if plain_moves:  # d mean|p − s| / dp = sign(p − s) / N
        torch.testing.assert_close(plain.grad, torch.sign(plain - spm).detach() / plain.numel())


def _spu(**kwargs):
    torch.manual_seed(0)
    return CAM_MODELS.build("spu", backbone="mobilenet_v2", num_classes=4, output_stride=16, **kwargs).train()


def test_the_pair_trains_both_nets_and_cams_come_from_the_plain_net() -> None:
    model = _spu()
    x, y = torch.randn(2, 3, 64, 64), torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    losses = METHODS.build("spu")(model(x), y)
    w = 0.5 * (losses["cls"] + losses["cls_spm"] + losses["pt"])
    torch.testing.assert_close(losses["loss"], w)
    losses["pt"].backward()  # the transfer term alone moves both nets' early layers
    for net in (model.plain, model.spm):
        assert net.backbone.features[2].conv[0][0].weight.grad.abs().sum() > 0
    assert model.spm.backbone.inserts["stage2"].channel.mlp[0].weight.grad is not None
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model.extract(x), model.plain.extract(x))
        torch.testing.assert_close(_spu(cam_from="spm").eval().extract(x), _spu().spm.eval().extract(x))


def test_groups_put_attention_and_classifiers_at_the_head_rate() -> None:
    model = _spu()
    groups = {g["name"]: g for g in model.optimizer_groups(0.1, 1e-4, 10.0)}
    assert groups["backbones"]["lr"] == 0.1 and groups["new_layers"]["lr"] == pytest.approx(1.0)
    ids = {n: {id(p) for p in g["params"]} for n, g in groups.items()}
    assert not ids["backbones"] & ids["new_layers"]
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert ids["backbones"] | ids["new_layers"] == trainable
    attention = {id(p) for p in model.spm.backbone.inserts.parameters()}
    heads = {id(p) for p in (*model.plain.classifier.parameters(), *model.spm.classifier.parameters())}
    assert ids["new_layers"] == attention | heads


def test_spu_refusals() -> None:
    with pytest.raises(ConfigError, match="transfer_level 'stage9'"):
        _spu(transfer_level="stage9")
    with pytest.raises(ConfigError, match="cam_from must be one of plain, spm"):
        _spu(cam_from="both")
    with pytest.raises(ConfigError, match="not inside backbone_args"):
        _spu(backbone_args={"insert": "amm"})
