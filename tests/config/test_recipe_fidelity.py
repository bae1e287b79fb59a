"""The VOC/COCO recipes run the authors' chain: each switch of docs/fidelity.md has the authors' value.

One test per divergence found against the released TransCAM / PSA / IRN / PMM code, so that a
recipe edit that brings one back fails here (the behaviour of each switch is tested where it is
implemented: tests/refine, tests/stages, tests/seg).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from wsss.config import load_recipe
from wsss.data.transforms import RandomRescale, RandomResizeLong
from wsss.engine.optim import LegacyPolySGD
from wsss.stages.train_affinity import affinity_transform
from wsss.stages.training import build_optimizer

TRANSCAM_FAMILY = ["voc/transcam", "voc/bnr", "coco/transcam", "coco/bnr"]


@pytest.mark.parametrize("name", TRANSCAM_FAMILY)
def test_label_crfs_use_the_dataset_label_space(name: str) -> None:
    """Row 1: crf_inference_label runs with n_labels = 21 (all classes) after the CAMs and the walk."""
    r = load_recipe(name)
    assert r.labels.crf == "label" and r.labels.crf_label_space == "dataset"
    assert r.random_walk.crf == "label" and r.random_walk.crf_label_space == "dataset"


@pytest.mark.parametrize("name", TRANSCAM_FAMILY)
def test_affinity_augmentation_is_crop_and_flip_without_rescale(name: str) -> None:
    """Row 2: train_aff.py crops 448 and flips; no random rescale step may creep back in."""
    a = load_recipe(name).affinity
    steps = affinity_transform(a).transforms
    assert not any(isinstance(t, (RandomResizeLong, RandomRescale)) for t in steps)
    assert a.crop_size == 448 and a.flip


class _TinyAffinity(nn.Module):
    head_names = ("head",)

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Conv2d(3, 4, 1)
        self.head = nn.Conv2d(4, 4, 1)


@pytest.mark.parametrize("name", TRANSCAM_FAMILY)
def test_affinity_optimiser_is_the_legacy_poly_sgd_and_segmentation_keeps_momentum(name: str) -> None:
    """Row 3: the authors' PolyOptimizer puts weight decay (5e-4) in SGD's momentum slot for the
    AffinityNet; TransCAM's DeepLab uses real momentum 0.9, so the quirk is per stage."""
    r = load_recipe(name)
    opt, sched = build_optimizer(_TinyAffinity(), r.affinity, 100, r.compat)
    assert isinstance(opt, LegacyPolySGD) and sched is not None
    assert all(g["momentum"] == pytest.approx(5e-4) for g in opt.param_groups)
    seg_opt, _ = build_optimizer(_TinyAffinity(), r.segmentation, 100, r.compat)
    assert type(seg_opt) is torch.optim.SGD
    assert all(g["momentum"] == pytest.approx(0.9) for g in seg_opt.param_groups)


def test_stage_compat_overrides_the_recipe_and_none_inherits_it() -> None:
    r = load_recipe("voc/transcam", ["compat=authors_code", "affinity.compat=clean"])
    opt, _ = build_optimizer(_TinyAffinity(), r.affinity, 10, r.compat)
    assert type(opt) is torch.optim.SGD
    seg_opt, _ = build_optimizer(_TinyAffinity(), r.segmentation, 10, r.compat)
    assert isinstance(seg_opt, LegacyPolySGD)  # segmentation.compat is None: the recipe's value


@pytest.mark.parametrize("name", TRANSCAM_FAMILY)
def test_transcam_recipes_keep_the_released_code_quirks(name: str) -> None:
    """Padding reads as background in the AffinityNet labels; DeepLab never trains BN affine
    parameters; CAM inputs are resized with PIL bicubic; the 21-class mean."""
    r = load_recipe(name)
    assert r.affinity.padding_as_background
    assert r.segmentation.model_args == {"train_bn_affine": False}
    assert r.cams.resize == "pil" and r.cams.scale_mode == "square"
    assert r.evaluate.mean == "absent_as_zero"


def test_amr_recipe_keeps_the_released_code_switches() -> None:
    """docs/fidelity.md, voc/amr: both classifier stages on the legacy PolyOptimizer, the released CPS
    pairing (through compat), AMMs per bottleneck with train-mode BN, one [image, flip] pair per CAM
    forward, stage 1 with Cutout and only the stem frozen, IRN at batch 16 and the walk at power 1.5."""
    from wsss.registry import METHODS
    from wsss.stages.train_cls import build_method

    r = load_recipe("voc/amr")
    assert r.compat == "authors_code" and r.pretrain.compat is None and r.classifier.compat is None
    assert build_method(r.classifier, r.compat).cps_form == "authors_code"
    assert METHODS.build("amr", **r.classifier.method_args).cps_form == "per_image"  # clean default
    args = r.classifier.model_args
    assert (args["insert"], args["insert_at"], args["frozen_stages"]) == ("amm", "block", 1)
    assert args["insert_args"]["bn_train_at_inference"] is True
    assert r.cams.batch_images == 1 and r.cams.norm == "max" and r.cams.stride == 4
    assert r.cams.scales == [1.0, 0.5, 0.75, 1.25, 1.5, 1.75, 2.0]
    assert r.pretrain.cutout == (3, 128) and r.classifier.cutout is None
    assert r.pretrain.model_args["frozen_stages"] == 0
    assert (r.pretrain.lr, r.pretrain.head_lr_mult, r.pretrain.epochs) == (0.01, 10.0, 8)
    assert (r.classifier.lr, r.classifier.head_lr_mult, r.classifier.epochs) == (0.01, 10.0, 8)
    assert (r.labels.fg_threshold, r.labels.low_threshold) == (0.60, 0.33)
    assert r.affinity.batch_size == 16 and r.random_walk.cam_power == 1.5 and r.random_walk.logt == 8


def test_unia_recipes_keep_the_logged_settings() -> None:
    """docs/fidelity.md, voc/unia and coco/unia: the training logs' optimiser, schedule, input pipeline,
    thresholds, loss weights and iteration switches; the ACDC recipe swaps in the ACDC label fusion."""
    voc, coco, acdc = load_recipe("voc/unia"), load_recipe("coco/unia"), load_recipe("acdc/unia")
    c = voc.classifier
    assert (c.model, c.backbone, c.method) == ("unia", "vit_b16", "unia")
    assert (c.optimizer, c.schedule, c.lr, c.weight_decay, c.head_lr_mult) == (
        "adamw",
        "warmup_poly",
        6e-5,
        0.01,
        10.0,
    )
    assert (c.warmup_steps, c.warmup_ratio, c.batch_size, c.crop_size) == (1500, 1e-6, 4, 448)
    assert (c.crops, tuple(c.crop_scale), c.color_jitter_p) == ("random_resized", (0.32, 1.0), 0.5)
    assert tuple(c.color_jitter) == (0.4, 0.4, 0.2, 0.1)
    assert 20_000 <= c.epochs * (10_582 // c.batch_size) < 22_000
    m = c.method_args
    assert (m["high"], m["low"], m["switch_iter"], m["aux2final"]) == (0.7, 0.25, 6000, 8000)
    assert m["weights"] == {"ptc": 0.3, "aff": 0.1, "dis": 0.1, "seg": 0.15, "reg": 0.05}
    assert m["starts"]["seg"] == m["starts"]["reg"] == 2000
    assert (voc.predict.model, voc.predict.protocol) == ("classifier", "unia")
    cm = coco.classifier.method_args
    assert (cm["high"], cm["aux2final"], cm["seg2final"]) == (0.65, 30000, 30000)
    assert cm["starts"] == {"dis": 0, "ptc": 8000, "aff": 12000, "seg": 16000, "reg": 16000}
    assert 78_000 <= coco.classifier.epochs * (82_081 // coco.classifier.batch_size) < 84_000
    assert acdc.classifier.method_args["fusion"] == "mcr_acdc" and acdc.data.dataset == "acdc"
