"""AMR's dual-branch model: gradient flow, optimiser groups, stage hand-over, CAM fusion, Grad-CAM hook."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from wsss.config.schema import ClassifierConfig
from wsss.engine.optim import LegacyPolySGD
from wsss.errors import CheckpointError, ConfigError
from wsss.models.cam.amr import AMR, AMROutput
from wsss.registry import CAM_MODELS, METHODS
from wsss.stages.training import build_optimizer


def small_amr(**kwargs) -> AMR:
    torch.manual_seed(0)
    args = {"output_stride": 16, "insert_at": "stage", **kwargs}
    return CAM_MODELS.build("amr", backbone="mobilenet_v2", num_classes=4, **args)


def test_only_the_spotlight_classifier_and_the_unfrozen_compensation_branch_learn() -> None:
    model = small_amr().train()
    x = torch.randn(2, 3, 64, 64)
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    losses = METHODS.build("amr").step(model, x, labels)
    assert isinstance(model(x), AMROutput)
    losses["loss"].backward()
    spot = model.spotlight
    assert all(p.grad is None and not p.requires_grad for p in spot.backbone.parameters())
    assert spot.classifier.weight.grad is not None and bool(spot.classifier.weight.grad.abs().sum() > 0)
    comp = model.compensation.backbone
    for name, p in comp.named_parameters():
        level = int(name.split(".")[1]) if name.startswith("features.") else None
        frozen = (level is not None and level <= 3) or name.startswith("inserts.stage2")  # stem + stage 1
        assert (p.grad is None) == frozen, name
    assert model.compensation.classifier.weight.grad is not None
    # the spotlight logits are detached: its classification loss alone trains nothing
    out = model(x)
    assert not out.logits_s.requires_grad and out.logits_c.requires_grad
    assert out.cam_s.requires_grad  # through its classifier weight only


def test_spotlight_backbone_stays_frozen_in_train_mode() -> None:
    model = small_amr(freeze_bn=False).train()  # freeze_bn is the compensation branch's
    leaves = [m for m in model.spotlight.backbone.modules() if list(m.parameters(recurse=False))]
    assert leaves and not any(m.training for m in leaves)
    assert model.compensation.backbone.features[10].training
    assert model.compensation.backbone.features[10].conv[1][1].training  # a BatchNorm


def test_optimizer_groups_put_the_compensation_backbone_at_ten_times() -> None:
    model = small_amr()
    cfg = ClassifierConfig(
        model="amr",
        optimizer="sgd",
        schedule="poly",
        lr=0.01,
        weight_decay=1e-4,
        head_lr_mult=10.0,
        compat="authors_code",
    )
    opt, sched = build_optimizer(model, cfg, 10, "clean")
    assert isinstance(opt, LegacyPolySGD) and sched is not None
    assert [(g["name"], g["lr"], g["weight_decay"]) for g in opt.param_groups] == [
        ("compensation_backbone", pytest.approx(0.1), 1e-4),
        ("classifiers", pytest.approx(0.01), 1e-4),
    ]
    grouped = {id(p) for g in opt.param_groups for p in g["params"]}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert grouped == trainable
    assert id(model.spotlight.classifier.weight) in {id(p) for p in opt.param_groups[1]["params"]}
    assert not any(id(p) in grouped for p in model.spotlight.backbone.parameters())


def test_load_pretrained_stage_fills_the_spotlight_strictly() -> None:
    stage1 = CAM_MODELS.build("cam", backbone="mobilenet_v2", num_classes=4, output_stride=16)
    with torch.no_grad():
        for p in stage1.parameters():
            p.add_(1.0)
    model = small_amr()
    model.load_pretrained_stage(stage1.state_dict())
    own = model.spotlight.state_dict()
    assert all(torch.equal(own[k], v) for k, v in stage1.state_dict().items())
    assert not any(p.requires_grad for p in model.spotlight.backbone.parameters())  # still frozen
    other = CAM_MODELS.build("cam", backbone="mobilenet_v2", num_classes=6, output_stride=16)
    with pytest.raises(CheckpointError, match="different shape"):
        model.load_pretrained_stage(other.state_dict(), source="stage1.safetensors")


def test_fused_cam_is_the_weighted_sum_of_max_normalised_branches() -> None:
    model = small_amr(branch_weights=[0.25, 0.75]).eval()
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        fused = model.extract(x, "cam")
        spot = model.extract(x, "spotlight")
        comp = model.extract(x, "compensation")
    assert fused.shape == spot.shape == comp.shape == (2, 4, 4, 5)
    assert torch.equal(fused[:, 0], torch.zeros(2, 4, 5))
    assert bool((spot >= 0).all()) and bool((comp >= 0).all())
    for b in range(2):
        for k in range(1, 4):
            s, c = spot[b, k], comp[b, k]
            want = 0.25 * s / (s.max() + 1e-5) + 0.75 * c / (c.max() + 1e-5)
            torch.testing.assert_close(fused[b, k], want)
    with pytest.raises(ConfigError, match="did you mean 'spotlight'"):
        model.extract(x, "spotligth")
    assert model.output_stride == 16


def test_gradcam_branches_give_features_and_their_class_maps() -> None:
    model = small_amr().eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():  # the hook turns autograd on itself
        branches = model.gradcam_branches(x)
    assert len(branches) == 2
    for (feats, maps), branch in zip(branches, (model.spotlight, model.compensation)):
        assert feats.shape == (1, 1280, 4, 4) and feats.requires_grad and maps.shape == (1, 3, 4, 4)
        w = branch.classifier.weight
        torch.testing.assert_close(maps, F.conv2d(feats, w))
        (grad,) = torch.autograd.grad(maps[0, 1].sum(), feats)
        torch.testing.assert_close(grad[0], w[1].expand(1280, 4, 4))  # d Σ(W·f)_1/df = W_1 everywhere
    with torch.no_grad():
        torch.testing.assert_close(torch.relu(branches[0][1]), model.extract(x, "spotlight")[:, 1:])
    plain = CAM_MODELS.build("cam", backbone="mobilenet_v2", num_classes=4).eval()
    ((feats, maps),) = plain.gradcam_branches(x)
    torch.testing.assert_close(maps.mean(dim=(2, 3)), plain(x).logits[:, 1:])


def test_bad_arguments_fail_with_the_key() -> None:
    with pytest.raises(ConfigError, match="branch_weights"):
        small_amr(branch_weights=[1.0])
    with pytest.raises(ConfigError, match="not inside backbone_args"):
        small_amr(backbone_args={"insert": "amm"})
    with pytest.raises(ConfigError, match="insert_args is given but insert is null"):
        small_amr(insert=None, insert_args={"reduction": 8})
