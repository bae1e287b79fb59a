"""IRN on a tiny five-level backbone: widths, shapes, freezing, gradients, flip averaging and the walk."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from wsss.config.schema import AffinityConfig
from wsss.engine.optim import LegacyPolySGD
from wsss.errors import ConfigError
from wsss.losses.irn import irn_loss
from wsss.models.affinity.irn import (
    DEFAULT_BACKBONE_KWARGS,
    IRNet,
    MeanShift,
    build_irn,
    irn_refine,
)
from wsss.models.backbones.base import Backbone, FeatureInfo
from wsss.refine.pairs import affinity_labels, downscale_labels, radius_offsets
from wsss.refine.random_walk import WALK_PRESETS
from wsss.registry import AFFINITY_MODELS, BACKBONES
from wsss.stages.training import build_optimizer

WALK_PSA = WALK_PRESETS["psa"]


class TinyResNetLike(Backbone):
    """IRN's five levels in miniature: stem and stage1 at stride 4, stage2 at 8, stage3/4 at 16."""

    feature_info = (
        FeatureInfo("stem", 4, 4),
        FeatureInfo("stage1", 6, 4),
        FeatureInfo("stage2", 8, 8),
        FeatureInfo("stage3", 10, 16),
        FeatureInfo("stage4", 12, 16),
    )

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.feature_info = (FeatureInfo("stem", width, 4), *self.feature_info[1:])
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, stride=4, padding=1), nn.BatchNorm2d(width))
        self.layer1 = nn.Conv2d(width, 6, 3, padding=1)
        self.layer2 = nn.Conv2d(6, 8, 3, stride=2, padding=1)
        self.layer3 = nn.Conv2d(8, 10, 3, stride=2, padding=1)
        self.layer4 = nn.Conv2d(10, 12, 3, padding=1)

    def forward_features(self, x: Tensor) -> dict[str, Tensor]:
        s0 = torch.relu(self.stem(x))
        s1 = torch.relu(self.layer1(s0))
        s2 = torch.relu(self.layer2(s1))
        s3 = torch.relu(self.layer3(s2))
        s4 = torch.relu(self.layer4(s3))
        return {"stem": s0, "stage1": s1, "stage2": s2, "stage3": s3, "stage4": s4}


def _net(**kwargs) -> IRNet:
    torch.manual_seed(0)
    return IRNet(TinyResNetLike(), **kwargs)


def test_edge_branch_widths_and_output_grid() -> None:
    net = _net()
    assert net.levels == ("stem", "stage1", "stage2", "stage3", "stage4")
    assert net.displacement is None
    assert not hasattr(net, "head_names")  # DeepLab-style groups would give biases 2× lr and no decay
    for name, info in zip(net.levels, TinyResNetLike.feature_info):
        conv, norm = net.edge.proj[name][0], net.edge.proj[name][1]
        assert conv.weight.shape == (32, info.channels, 1, 1) and conv.bias is None
        assert isinstance(norm, nn.GroupNorm) and norm.num_groups == 4
    assert net.edge.fuse.weight.shape == (1, 160, 1, 1) and net.edge.fuse.bias is not None
    out = net(torch.randn(2, 3, 30, 43))
    assert out.edge_logits.shape == (2, 1, 8, 11)  # ceil(30/4) x ceil(43/4)
    assert out.displacement is None
    assert net.output_stride == 4


def test_displacement_branch_widths_and_shape() -> None:
    net = _net(with_displacement=True)
    dp = net.displacement
    assert dp is not None
    widths = {name: dp.proj[name][0].out_channels for name in net.levels}
    assert widths == {"stem": 64, "stage1": 128, "stage2": 256, "stage3": 256, "stage4": 256}
    groups = {name: dp.proj[name][1].num_groups for name in net.levels}
    assert groups == {"stem": 8, "stage1": 16, "stage2": 16, "stage3": 16, "stage4": 16}
    assert dp.fuse_coarse[0].in_channels == 768 and dp.head[0].in_channels == 448
    assert dp.head[3].weight.shape == (2, 256, 1, 1)
    out = net(torch.randn(2, 3, 30, 43))
    assert out.displacement is not None and out.displacement.shape == (2, 2, 8, 11)


def test_four_levels_without_stem() -> None:
    net = _net(levels=("stage1", "stage2", "stage3", "stage4"), with_displacement=True)
    assert net.edge.fuse.in_channels == 128
    assert net.displacement is not None and net.displacement.head[0].in_channels == 128 + 256
    assert net(torch.randn(1, 3, 32, 32)).edge_logits.shape == (1, 1, 8, 8)


def test_unknown_level_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="no feature level 'conv9'"):
        _net(levels=("stage1", "conv9"))


def _labels(h: int, w: int) -> Tensor:
    """A stride-1 label map: background left, class 3 right, an uncertain band between."""
    lab = torch.zeros(2, h, w, dtype=torch.long)
    lab[:, :, w // 2 :] = 3
    lab[:, :, w // 2 - 4 : w // 2] = 255
    return lab


def test_gradient_reaches_the_branches_but_not_the_frozen_backbone() -> None:
    net = _net(with_displacement=True).train()
    before = {k: v.clone() for k, v in net.backbone.state_dict().items()}
    x = torch.randn(2, 3, 96, 112)
    pairs = net.forward_pairs(x, radius=4, cover="crop")
    grid = downscale_labels(_labels(96, 112), 4, "centre")
    assert grid.shape[-2:] == (24, 28)
    bg, fg, neg = affinity_labels(grid, radius_offsets(4), cover="crop")
    assert bg.shape == pairs.affinity.shape and neg.any() and fg.any() and bg.any()
    loss = irn_loss(pairs.affinity, bg, fg, neg, pairs.displacement, pairs.src, pairs.dst)["loss"]
    loss.backward()
    for name, p in net.edge.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert net.displacement is not None
    for name, p in net.displacement.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    for name, p in net.backbone.named_parameters():
        assert not p.requires_grad and p.grad is None, name
    # the backbone stays in eval mode: its BatchNorm statistics did not move
    assert not net.backbone.training and net.edge.training
    for key, value in net.backbone.state_dict().items():
        assert torch.equal(value, before[key]), key


def _ids(params) -> set[int]:
    return {id(p) for p in params}


def test_build_optimizer_gives_irns_two_groups() -> None:
    """train_irn.py: edge layers at lr, displacement layers at 10·lr, weight decay on both (biases
    and GroupNorm included), the frozen backbone in neither; PolyOptimizer's momentum = decay."""
    net = _net(with_displacement=True)
    cfg = AffinityConfig(model="irn", lr=0.1, weight_decay=1e-4, head_lr_mult=10.0, compat="authors_code")
    opt, sched = build_optimizer(net, cfg, total_steps=30, compat="clean")
    assert isinstance(opt, LegacyPolySGD) and sched is not None
    groups = opt.param_groups
    assert [g["name"] for g in groups] == ["edge", "displacement"]
    assert [g["lr"] for g in groups] == pytest.approx([0.1, 1.0])
    assert [g["weight_decay"] for g in groups] == [1e-4, 1e-4]
    assert all(g["momentum"] == pytest.approx(1e-4) for g in groups)
    assert net.displacement is not None
    assert _ids(groups[0]["params"]) == _ids(net.edge.parameters())
    assert _ids(groups[1]["params"]) == _ids(net.displacement.parameters())
    biases = [
        m.bias for m in net.edge.modules() if isinstance(m, (nn.Conv2d, nn.GroupNorm)) and m.bias is not None
    ]
    assert biases and _ids(biases) <= _ids(groups[0]["params"])  # no DeepLab-style bias group
    assert not _ids(net.backbone.parameters()) & (_ids(groups[0]["params"]) | _ids(groups[1]["params"]))


def test_optimizer_groups_follow_head_lr_mult_and_drop_an_absent_branch() -> None:
    groups = _net(with_displacement=True).optimizer_groups(lr=0.02, weight_decay=5e-4, head_lr_mult=3.0)
    assert [g["lr"] for g in groups] == pytest.approx([0.02, 0.06])
    edge_only = _net().optimizer_groups(0.1, 1e-4, 10.0)
    assert [g["name"] for g in edge_only] == ["edge"] and edge_only[0]["weight_decay"] == 1e-4


def test_flip_averaged_edge_map() -> None:
    net = _net().eval()
    x = torch.randn(1, 3, 28, 36)
    with torch.no_grad():
        single = net.edge_map(x, flip=False)
        both = net.edge_map(x)
        mirrored = net.edge_map(x.flip(-1))
        logits = (net(x).edge_logits + net(x.flip(-1)).edge_logits.flip(-1)) / 2
    assert single.shape == both.shape == (1, 1, 7, 9)
    assert ((both >= 0) & (both <= 1)).all()
    torch.testing.assert_close(both, torch.sigmoid(logits))
    torch.testing.assert_close(mirrored, both.flip(-1))  # flip-equivariant by construction


def test_mean_shift_tracks_in_training_and_subtracts_in_eval() -> None:
    shift = MeanShift(2, momentum=0.5)
    x = torch.zeros(2, 2, 3, 3)
    x[:, 0] = 4.0
    x[:, 1] = -2.0
    assert torch.equal(shift(x), x)
    torch.testing.assert_close(shift.running_mean, torch.tensor([2.0, -1.0]))
    shift.eval()
    out = shift(x)
    torch.testing.assert_close(out[:, 0], torch.full((2, 3, 3), 2.0))
    torch.testing.assert_close(out[:, 1], torch.full((2, 3, 3), -1.0))


def test_registry_builder_merges_backbone_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    BACKBONES.names()  # load the providers before adding the test backbone
    monkeypatch.setitem(BACKBONES._builders, "tiny_irn_test", lambda width=4: TinyResNetLike(width))
    monkeypatch.setitem(DEFAULT_BACKBONE_KWARGS, "tiny_irn_test", {"width": 5})
    net = AFFINITY_MODELS.build("irn", backbone="tiny_irn_test")
    assert isinstance(net, IRNet) and net.edge.proj["stem"][0].in_channels == 5
    net = build_irn(backbone="tiny_irn_test", width=7)
    assert net.edge.proj["stem"][0].in_channels == 7
    monkeypatch.setitem(BACKBONES._builders, "not_a_backbone", lambda: nn.Linear(2, 2))
    with pytest.raises(ConfigError, match="Backbone contract"):
        build_irn(backbone="not_a_backbone")


def test_irn_refine_spreads_seed_within_its_region(monkeypatch: pytest.MonkeyPatch) -> None:
    """A two-region toy image: the hand-set edge map is a wall; a one-pixel seed fills its side only."""
    net = _net().eval()
    h, w, wall = 10, 13, 6
    image = torch.zeros(3, h * 4 - 1, w * 4 - 2)
    edge = torch.zeros(1, 1, h, w)
    edge[..., wall] = 1.0
    seen: list[tuple[int, ...]] = []

    def fake_edge_map(x: Tensor, flip: bool = True) -> Tensor:
        seen.append(tuple(x.shape))
        return edge

    monkeypatch.setattr(net, "edge_map", fake_edge_map)
    cams = torch.zeros(1, h, w)
    cams[0, 3, 2] = 1.0
    labels = irn_refine(cams, image, net, keys=[5])
    assert seen == [(1, 3, h * 4 - 1, w * 4 - 2)]
    assert labels.shape == (h * 4 - 1, w * 4 - 2)
    assert labels[:, : wall * 4 - 2].eq(5).all() and labels[:, wall * 4 + 2 :].eq(0).all()


def test_irn_refine_with_the_real_edge_branch() -> None:
    net = _net().eval()
    torch.manual_seed(1)
    cams = torch.rand(2, 6, 8)
    labels = irn_refine(cams, torch.randn(3, 23, 30), net, keys=[4, 11])
    assert labels.shape == (23, 30)
    assert set(labels.unique().tolist()) <= {0, 4, 11} and labels.ne(0).any()
    with pytest.raises(ValueError, match="same stride-4 grid"):
        irn_refine(cams, torch.randn(3, 40, 30), net)
    with pytest.raises(ConfigError, match="constant background"):
        irn_refine(cams, torch.randn(3, 23, 30), net, WALK_PSA)


@pytest.mark.slow
def test_resnet50_irn_shapes() -> None:
    if "resnet50" not in BACKBONES:
        pytest.skip("resnet50 backbone not registered yet")
    net = AFFINITY_MODELS.build("irn", backbone="resnet50", with_displacement=True).eval()
    assert net.backbone.output_stride == 16
    assert all(not p.requires_grad for p in net.backbone.parameters())
    with torch.no_grad():
        out = net(torch.randn(1, 3, 70, 64))
    assert out.edge_logits.shape == (1, 1, 18, 16)
    assert out.displacement is not None and out.displacement.shape == (1, 2, 18, 16)
    assert net.edge.fuse.in_channels == 32 * len(net.levels)
