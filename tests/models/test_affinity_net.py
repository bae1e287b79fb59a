"""AffinityNet on a tiny backbone: shapes, the affinity formula, freezing, BN mode, registry and groups."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from wsss.engine.optim import param_groups
from wsss.errors import ConfigError
from wsss.losses.affinity import affinity_loss
from wsss.models.affinity import DEFAULT_FROZEN, AffinityNet, build_affinity_net, pair_affinities
from wsss.models.backbones.base import Backbone, FeatureInfo
from wsss.refine.pairs import affinity_labels, pair_indices, radius_offsets
from wsss.registry import AFFINITY_MODELS, BACKBONES


class TinyBackbone(Backbone):
    """ResNet-38-like names: ``conv1a`` stem, ``b2`` block with BN, two levels at stride 8, one at 16."""

    feature_info = (FeatureInfo("conv4", 4, 8), FeatureInfo("conv5", 6, 8), FeatureInfo("conv6", 8, 16))

    def __init__(self) -> None:
        super().__init__()
        self.conv1a = nn.Conv2d(3, 4, 8, stride=8)
        self.b2 = nn.Sequential(nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1))
        self.b3 = nn.Conv2d(4, 6, 3, padding=1)
        self.b4 = nn.Conv2d(6, 8, 3, stride=2, padding=1)
        self.bn7 = nn.BatchNorm2d(8)

    def forward_features(self, x: Tensor) -> dict[str, Tensor]:
        c4 = torch.relu(self.b2(self.conv1a(x)))
        c5 = torch.relu(self.b3(c4))
        c6 = torch.relu(self.bn7(self.b4(c5)))
        return {"conv4": c4, "conv5": c5, "conv6": c6}


def _net(**kwargs) -> AffinityNet:
    torch.manual_seed(0)
    kwargs.setdefault("level_channels", (2, 3, 5))
    kwargs.setdefault("embed_dim", 10)
    return AffinityNet(TinyBackbone(), **kwargs)


def test_embedding_shape_and_range() -> None:
    net = _net()
    emb = net(torch.randn(2, 3, 64, 48))
    assert emb.shape == (2, 10, 8, 6)  # stride 8; conv6 (stride 16) resized up to the finest grid
    assert net.output_stride == 8
    assert (emb > -1).all()  # ELU output


def test_affinity_formula_hand_computed() -> None:
    emb = torch.zeros(1, 2, 1, 3)
    emb[0, :, 0, 0] = torch.tensor([0.0, 1.0])
    emb[0, :, 0, 1] = torch.tensor([1.0, 3.0])
    emb[0, :, 0, 2] = torch.tensor([0.0, 1.0])
    src, dst = torch.tensor([0, 0, 1]), torch.tensor([1, 2, 2])
    got = AffinityNet.affinities(emb, src, dst)
    # mean |diff| over channels: (1 + 2)/2 = 1.5; 0; 1.5
    torch.testing.assert_close(got, torch.tensor([[math.exp(-1.5), 1.0, math.exp(-1.5)]]))
    # symmetric in the pair order
    torch.testing.assert_close(pair_affinities(emb, dst, src), got)


def test_head_init_and_no_bias() -> None:
    net = _net(level_channels=(64, 128, 256), embed_dim=448)
    bound = 4.0 * math.sqrt(6.0 / (448 + 448))  # xavier-uniform, gain 4
    w = net.fuse.weight
    assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound
    assert all(conv.bias is None for conv in net.proj.values()) and net.fuse.bias is None


def test_freezing_by_name_and_bn_mode() -> None:
    net = _net(frozen=("conv1a", "b2"), freeze_bn=True)
    frozen = {n for n, p in net.named_parameters() if not p.requires_grad}
    assert frozen == {
        "backbone.conv1a.weight",
        "backbone.conv1a.bias",
        "backbone.b2.0.weight",
        "backbone.b2.0.bias",
        "backbone.b2.1.weight",
        "backbone.b2.1.bias",
        "backbone.bn7.weight",
        "backbone.bn7.bias",
    }
    net.train()
    assert net.training and net.backbone.b3.training
    assert (
        not net.backbone.bn7.training and not net.backbone.b2[0].training and not net.backbone.conv1a.training
    )
    before = net.backbone.bn7.running_mean.clone()
    emb = net(torch.randn(2, 3, 32, 32))
    torch.testing.assert_close(net.backbone.bn7.running_mean, before)  # BN statistics untouched
    emb.square().mean().backward()
    assert net.backbone.conv1a.weight.grad is None and net.backbone.bn7.weight.grad is None
    assert net.backbone.b3.weight.grad is not None and net.fuse.weight.grad is not None
    assert all(conv.weight.grad is not None for conv in net.proj.values())


def test_bn_trains_when_not_frozen() -> None:
    net = _net(frozen=(), freeze_bn=False)
    assert all(p.requires_grad for p in net.parameters())
    net.train()
    before = net.backbone.bn7.running_mean.clone()
    net(torch.randn(2, 3, 32, 32))
    assert net.backbone.bn7.training
    assert not torch.allclose(net.backbone.bn7.running_mean, before)


def test_bad_options_name_the_problem() -> None:
    with pytest.raises(ConfigError, match="conv9"):
        _net(levels=("conv4", "conv9"), level_channels=(2, 3))
    with pytest.raises(ConfigError, match="same length"):
        _net(level_channels=(2, 3))
    with pytest.raises(ConfigError, match="b9"):
        _net(frozen=("b9",))


def test_param_groups_give_heads_ten_times_lr() -> None:
    net = _net(frozen=("conv1a", "b2"))
    groups = {g["name"]: g for g in param_groups(net, net.head_names, lr=0.01, weight_decay=5e-4)}
    head = {id(p) for p in groups["head.weight"]["params"]}
    assert head == {id(p) for p in [*net.proj.parameters(), *net.fuse.parameters()]}
    assert groups["head.weight"]["lr"] == pytest.approx(0.1)
    assert (
        groups["backbone.bias"]["lr"] == pytest.approx(0.02) and groups["backbone.bias"]["weight_decay"] == 0
    )
    listed = {id(p) for g in groups.values() for p in g["params"]}
    assert id(net.backbone.conv1a.weight) not in listed and id(net.backbone.bn7.weight) not in listed


def test_registry_builder(monkeypatch: pytest.MonkeyPatch) -> None:
    BACKBONES.names()  # load the providers before adding the test backbone
    monkeypatch.setitem(BACKBONES._builders, "tiny_aff_test", lambda: TinyBackbone())
    net = AFFINITY_MODELS.build("psa", backbone="tiny_aff_test", level_channels=[2, 3, 5], embed_dim=10)
    assert isinstance(net, AffinityNet) and net.frozen == ()  # no default freezing for unknown backbones
    monkeypatch.setitem(DEFAULT_FROZEN, "tiny_aff_test", ("conv1a",))
    net = build_affinity_net("tiny_aff_test", level_channels=(2, 3, 5), embed_dim=10)
    assert not net.backbone.conv1a.weight.requires_grad and net.backbone.b3.weight.requires_grad
    with pytest.raises(ConfigError, match="unknown key"):
        build_affinity_net("tiny_aff_test", output_strides=8)
    monkeypatch.setitem(BACKBONES._builders, "not_a_backbone", lambda: nn.Linear(2, 2))
    with pytest.raises(ConfigError, match="Backbone contract"):
        build_affinity_net("not_a_backbone")
    assert DEFAULT_FROZEN["resnet38"] == ("conv1a", "b2", "b2_1", "b2_2")


def test_pairs_labels_loss_line_up_and_train() -> None:
    net = _net(frozen=("conv1a",))
    x = torch.randn(2, 3, 96, 96)
    aff, src, dst = net.forward_pairs(x, radius=5, cover="crop")
    n_src = (12 - 4) * (12 - 8)
    assert aff.shape == (2, 34 * n_src) and ((aff > 0) & (aff <= 1)).all()
    labels = torch.zeros(2, 12, 12, dtype=torch.long)
    labels[:, :, 6:] = 1
    labels[1, :3] = 255
    bg, fg, neg = affinity_labels(labels, radius_offsets(5))
    assert bg.shape == aff.shape
    s2, d2 = pair_indices(12, 12, 5, cover="crop")
    assert torch.equal(s2, src) and torch.equal(d2, dst)
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.05)
    first = affinity_loss(aff, bg, fg, neg)["loss"]
    first.backward()
    opt.step()
    later = affinity_loss(net.forward_pairs(x)[0], bg, fg, neg)["loss"]
    assert later < first


@pytest.mark.slow
def test_on_real_resnet38_when_available() -> None:
    if "resnet38" not in BACKBONES:
        pytest.skip("resnet38 backbone not registered yet")
    net = build_affinity_net("resnet38")
    assert net.frozen == DEFAULT_FROZEN["resnet38"]
    net.eval()
    with torch.no_grad():
        emb = net(torch.randn(1, 3, 64, 64))
    assert emb.shape == (1, 448, 8, 8)
