"""Modules inserted into CNN backbones (AMR's AMM): placement, exactness, freezing, weight loading."""

from __future__ import annotations

import pytest
import torch
import torchvision

from wsss.errors import CheckpointError, ConfigError
from wsss.models.backbones.base import load_backbone_weights, loadable_keys
from wsss.models.modules import AMM
from wsss.models.weights import load_weights
from wsss.registry import BACKBONES

RESNET50_BLOCKS = {1: 3, 2: 4, 3: 6, 4: 3}
RESNET_CHANNELS = {1: 256, 2: 512, 3: 1024, 4: 2048}


def _randomise_bn_stats(model: torch.nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)


@pytest.mark.parametrize("insert_at", ["block", "stage"])
def test_identity_inserts_leave_resnet_outputs_bit_identical(insert_at: str) -> None:
    torch.manual_seed(0)
    plain = BACKBONES.build("resnet50", output_stride=16, dilate=False)
    _randomise_bn_stats(plain)
    inserted = BACKBONES.build(
        "resnet50", output_stride=16, dilate=False, insert="identity", insert_at=insert_at
    )
    inserted.load_state_dict(plain.state_dict())  # strict: same keys (identity has none)
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        want = plain.eval().forward_features(x)
        got = inserted.eval().forward_features(x)
    assert all(torch.equal(got[k], want[k]) for k in want)
    count = 16 if insert_at == "block" else 4
    assert len(inserted.insert_names) == count
    assert sum(isinstance(m, torch.nn.Identity) for m in inserted.modules()) == count


def test_amm_sits_after_every_bottleneck_with_its_channels_and_trains() -> None:
    torch.manual_seed(0)
    model = BACKBONES.build("resnet50", insert="amm", frozen_stages=1).train()
    names = [f"layer{k}.{i}.insert" for k, n in RESNET50_BLOCKS.items() for i in range(n)]
    assert list(model.insert_names) == names and len(names) == 16
    for name in names:
        amm = model.get_submodule(name)
        assert isinstance(amm, AMM)
        assert amm.channel.mlp[0].in_features == RESNET_CHANNELS[int(name[5])]
        assert amm.channel.mlp[0].out_features == RESNET_CHANNELS[int(name[5])] // 16
    # the block computes ReLU(AMM(bn3(conv3(.))) + residual): a spy on the AMM sees bn3's output
    seen: dict[str, torch.Tensor] = {}
    block = model.layer2[1]
    block.bn3.register_forward_hook(lambda m, i, o: seen.__setitem__("bn3", o.clone()))
    block.insert.register_forward_hook(lambda m, i, o: seen.__setitem__("amm_in", i[0].clone()))
    model(torch.randn(2, 3, 64, 64)).mean().backward()
    assert torch.equal(seen["bn3"], seen["amm_in"])
    # layer1 is frozen (AMR detaches it): its AMMs get no gradient, every later one does
    for name in names:
        grads = [p.grad for p in model.get_submodule(name).parameters()]
        if name.startswith("layer1."):
            assert all(g is None for g in grads), name
        else:
            assert all(g is not None and bool(g.abs().sum() > 0) for g in grads), name


def test_stage_inserts_follow_each_layer_and_freeze_with_it() -> None:
    torch.manual_seed(0)
    model = BACKBONES.build("resnet50", insert="amm", insert_at="stage", frozen_stages=1).train()
    assert model.insert_names == ("inserts.stage1", "inserts.stage2", "inserts.stage3", "inserts.stage4")
    outs: dict[str, torch.Tensor] = {}
    model.layer3.register_forward_hook(lambda m, i, o: outs.__setitem__("layer3", o.clone()))
    feats = model.forward_features(torch.randn(2, 3, 64, 64))
    with torch.no_grad():
        assert torch.equal(feats["stage3"], model.inserts["stage3"](outs["layer3"]))
    feats["stage4"].mean().backward()
    assert all(p.grad is None for p in model.inserts["stage1"].parameters())
    assert all(p.grad is not None for k in (2, 3, 4) for p in model.inserts[f"stage{k}"].parameters())
    assert not any(p.requires_grad for p in model.inserts["stage1"].parameters())


def test_inserted_batchnorms_follow_the_model_mode_not_the_freezing_rules() -> None:
    model = BACKBONES.build("resnet50", insert="amm", frozen_stages=1, freeze_bn_affine=True).train()
    backbone_bns = list(model.backbone_norms())
    assert backbone_bns and not any(m.training for m in backbone_bns)  # FixedBatchNorm
    for name in model.insert_names:  # even layer1's, inside a frozen stage
        bn = model.get_submodule(name).spatial.bn
        assert bn.training and (bn.weight.requires_grad != name.startswith("layer1."))
    model.eval()
    assert not any(model.get_submodule(n).spatial.bn.training for n in model.insert_names)


def test_imagenet_weights_load_by_key_and_inserts_are_reported_as_new(tmp_path) -> None:
    torch.manual_seed(0)
    ref = torchvision.models.resnet50(weights=None)
    _randomise_bn_stats(ref)
    path = tmp_path / "resnet50.pth"
    torch.save(ref.state_dict(), path)
    model = BACKBONES.build("resnet50", insert="amm")
    report = load_backbone_weights(model, str(path), skip=("fc.",))
    inserted = [k for k in model.state_dict() if ".insert." in k]
    assert len(inserted) == 16 * 10  # mlp 2×(weight, bias), conv, bn weight/bias/mean/var/count
    assert sorted(report.new_layers) == sorted(inserted)
    assert report.missing == [] and report.not_loaded == [] and report.unexpected == []
    assert "160 of new (inserted) layers keep their initialisation" in report.summary()
    own = model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in ref.state_dict().items() if not k.startswith("fc."))
    # without the new-layer allowance the same file would not fit
    with pytest.raises(CheckpointError, match="does not fit"):
        load_weights(model, ref.state_dict(), min_matched=len(loadable_keys(model)), skip=("fc.",))
    built = BACKBONES.build("resnet50", pretrained=str(path), insert="amm", insert_at="stage")
    assert torch.equal(built.layer4[2].conv3.weight, ref.layer4[2].conv3.weight)


def test_mobilenet_inserts_between_levels() -> None:
    torch.manual_seed(0)
    plain = BACKBONES.build("mobilenet_v2")
    inserted = BACKBONES.build("mobilenet_v2", insert="identity")
    inserted.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want, got = plain.eval().forward_features(x), inserted.eval().forward_features(x)
    assert all(torch.equal(got[k], want[k]) for k in want)
    amm = BACKBONES.build("mobilenet_v2", insert="amm", frozen_stages=1).train()
    assert amm.insert_names == ("inserts.stage2", "inserts.stage3", "inserts.stage4")
    widths = [amm.inserts[k].channel.mlp[0].in_features for k in ("stage2", "stage3", "stage4")]
    assert widths == [24, 32, 1280]
    amm.forward_features(x)["stage4"].mean().backward()
    assert all(p.grad is None for p in amm.inserts["stage2"].parameters())  # frozen with stage 1
    assert all(p.grad is not None for p in amm.inserts["stage4"].parameters())


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        ("mobilenet_v2", {"insert": "amm", "insert_at": "block"}, "no per-block insertion point"),
        ("resnet50", {"insert": "amm", "insert_at": "layer"}, "insert_at must be one of block, stage"),
        ("resnet50", {"insert_args": {"reduction": 8}}, "insert_args is given but insert is not"),
        ("resnet50", {"insert": "amm", "insert_args": {"channels": 8}}, "may not set 'channels'"),
        ("resnet50", {"insert": "amn"}, "did you mean 'amm'"),
        ("resnet50", {"insert": "amm", "insert_args": {"ratio": 8}}, r"insert_args\)\.ratio"),
    ],
)
def test_bad_insert_options_name_the_key(name: str, kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        BACKBONES.build(name, **kwargs)
