"""make-cams' CPU speed-ups leave the maps as they were, up to float rounding.

Each change alone and all together, against the plain path (whole group per forward, BatchNorm
as trained, contiguous tensors): ``forward_images`` (images + flips per forward),
``fold_batchnorm`` and channels-last. In float64 the maps agree to 1e-10 (the same arithmetic);
in float32 to 1e-5 of the map's scale before and absolutely after normalisation, on an ImageNet
MobileNetV2 (the coco128 recipe's network). The stage test runs make-cams with the defaults and with
every change off and compares the files.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tests.stage_context import cpu_context
from wsss.cams.extractors import BoundExtractor, get_extractor
from wsss.cams.files import load_cam
from wsss.cams.inference import (
    _to_target,
    fold_batchnorm,
    max_normalise,
    multiscale_cams,
    normalise_image,
    prepare_cam_model,
    resize_image,
    scaled_size,
)
from wsss.config import load_recipe
from wsss.data.synth import generate_synth
from wsss.errors import CheckpointError, ConfigError
from wsss.registry import CAM_MODELS
from wsss.stages import make_cams, train_cls
from wsss.stages.context import StageContext


def _randomise_norms(model: nn.Module, seed: int = 0) -> None:
    """Running statistics and affine parameters away from 0/1, so folding has work to do."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.rand(c, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.rand(c, generator=g) - 0.5)


class NormNet(nn.Module):
    """Conv → BN pairs in Sequentials (folded), one BN held as an attribute (left alone)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(8),
            nn.ReLU6(),
            nn.Sequential(nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=8), nn.BatchNorm2d(8)),
            nn.Conv2d(8, 16, 1),
        )
        self.side_norm = nn.BatchNorm2d(16)
        self.head = nn.Conv2d(16, 4, 1, bias=False)
        _randomise_norms(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.side_norm(self.body(x))))


def test_fold_batchnorm_is_the_same_function() -> None:
    net = NormNet().double().eval()
    x = torch.randn(2, 3, 19, 23, dtype=torch.float64)
    want = net(x)
    assert fold_batchnorm(net) == 2
    assert isinstance(net.body[1], nn.Identity) and isinstance(net.body[3][1], nn.Identity)
    assert isinstance(net.side_norm, nn.BatchNorm2d)  # not in a Sequential after its conv: kept
    assert torch.allclose(net(x), want, rtol=1e-12, atol=1e-12)


def test_fold_batchnorm_leaves_training_and_hooked_norms() -> None:
    net = NormNet().train()
    assert fold_batchnorm(net) == 0  # training-mode norms use batch statistics
    net = NormNet().eval()
    net.body[0].register_forward_hook(lambda *_: None)
    assert fold_batchnorm(net) == 1  # only the unhooked pair
    assert isinstance(net.body[1], nn.BatchNorm2d)
    with pytest.raises(ValueError, match="eval mode"):
        prepare_cam_model(NormNet().train())


def _mobilenet(dtype: torch.dtype = torch.float32) -> nn.Module:
    """The coco128 recipe's network: plain CAM on MobileNetV2 (ImageNet weights when installed)."""
    torch.manual_seed(0)
    kw = dict(backbone="mobilenet_v2", num_classes=5, output_stride=16)
    try:
        model = CAM_MODELS.build("cam", pretrained="offline", **kw)
    except CheckpointError:
        model = CAM_MODELS.build("cam", **kw)
        _randomise_norms(model)
    with torch.no_grad():
        model.classifier.weight.abs_()  # every class fires somewhere (a max to normalise by)
    return model.to(dtype).eval()


def _photos() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Three images, two of the same size (so they can share a forward), smooth + noise."""
    g = torch.Generator().manual_seed(5)
    images = []
    for h, w in ((40, 56), (40, 56), (52, 36)):
        yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
        base = torch.stack([yy, xx, (yy + xx) / 2]) * 200
        images.append((base + torch.rand(3, h, w, generator=g) * 55).to(torch.uint8))
    labels = [torch.tensor([1.0, 0, 1, 0]), torch.tensor([0.0, 1, 0, 0]), torch.tensor([1.0, 1, 1, 1])]
    return images, labels


def _cams(
    model: nn.Module,
    dtype: torch.dtype,
    forward_images: int | None,
    scales: tuple[float, ...] = (0.5, 1.0, 1.5),
) -> list[torch.Tensor]:
    images, labels = _photos()

    def cam_fn(x: torch.Tensor) -> torch.Tensor:
        return model.extract(x.to(dtype), "cam")

    return multiscale_cams(
        cam_fn,
        images,
        labels,
        list(scales),
        scale_mode="relative",
        flip=True,
        output_stride=16,
        target_stride=4,
        forward_images=forward_images,
    )


VARIANTS = {  # name: (forward_images, fold_bn, channels_last)
    "one image per forward": (1, False, False),
    "fold_bn": (None, True, False),
    "channels_last": (None, False, True),
    "all": (1, True, True),
}


@functools.cache
def _reference() -> list[torch.Tensor]:
    return _cams(_mobilenet(), torch.float32, None)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_speedups_keep_the_cams_float32(name: str) -> None:
    want = _reference()
    forward_images, fold_bn, channels_last = VARIANTS[name]
    model = prepare_cam_model(_mobilenet(), fold_bn=fold_bn, channels_last=channels_last)
    if fold_bn:
        assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    if channels_last:
        assert model.backbone.features[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    got = _cams(model, torch.float32, forward_images)
    for a, b in zip(got, want):
        scale = float(b.abs().max())
        assert scale > 0 and a.shape == b.shape and a.is_contiguous()
        assert float((a - b).abs().max()) <= 1e-5 * scale
        assert float((max_normalise(a) - max_normalise(b)).abs().max()) <= 1e-5


def test_speedups_keep_the_cams_float64() -> None:
    """In float64 rounding is out of the way: the changed path computes the same maps."""
    want = _cams(_mobilenet(torch.float64), torch.float64, None, (0.5, 1.0))
    model = prepare_cam_model(_mobilenet(torch.float64), fold_bn=True, channels_last=True)
    got = _cams(model, torch.float64, 1, (0.5, 1.0))
    for a, b in zip(got, want):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-10 * float(b.abs().max()))


def test_only_present_classes_are_upsampled_and_the_sums_are_exact() -> None:
    """multiscale_cams upsamples only the image's classes (absent ones are multiplied by 0): the
    sums equal, bit for bit, every class upsampled and weighted by the labels, as written here."""
    model = _mobilenet()
    images, labels = _photos()
    labels[1] = torch.zeros(4)  # an image without any class

    def cam_fn(x: torch.Tensor) -> torch.Tensor:
        return model.extract(x, "conv")  # signed maps: a -0.0 or a sign slip would show

    scales = [0.5, 1.0, 1.5]
    got = multiscale_cams(
        cam_fn,
        images,
        labels,
        scales,
        scale_mode="relative",
        output_stride=16,
        target_stride=4,
        forward_images=1,
    )
    with torch.no_grad():
        for img, lab, out in zip(images, labels, got):
            h, w = img.shape[-2:]
            target = (-(-h // 4), -(-w // 4))
            want = torch.zeros(4, *target)
            for scale in scales:
                x = normalise_image(resize_image(img, scaled_size((h, w), scale, "relative")))
                raw = cam_fn(torch.stack([x, x.flip(-1)]))[:, 1:]
                maps = _to_target(raw, tuple(x.shape[-2:]), 16, target)
                want = want + maps[0] * lab.view(-1, 1, 1)
                want = want + maps[1].flip(-1) * lab.view(-1, 1, 1)
            assert torch.equal(out, want)
    assert got[1].abs().max() == 0 and got[0][1].abs().max() == 0


def test_forward_images_groups_the_forwards() -> None:
    seen: list[int] = []

    def cam_fn(x: torch.Tensor) -> torch.Tensor:
        seen.append(len(x))
        return torch.zeros(len(x), 2, -(-x.shape[-2] // 16), -(-x.shape[-1] // 16))

    images = [torch.zeros(3, 32, 32, dtype=torch.uint8)] * 5 + [torch.zeros(3, 16, 48, dtype=torch.uint8)]
    labels = [torch.ones(1)] * 6
    for forward_images, sizes in ((None, [10, 2]), (1, [2] * 6), (2, [4, 4, 2, 2]), (9, [10, 2])):
        seen.clear()
        multiscale_cams(
            cam_fn, images, labels, [1.0], scale_mode="relative", flip=True, forward_images=forward_images
        )
        assert seen == sizes, forward_images
    with pytest.raises(ConfigError, match="forward_images"):
        multiscale_cams(cam_fn, images, labels, [32.0], forward_images=0)


# ---------------------------------------------------------------------------------------------
# the stage
# ---------------------------------------------------------------------------------------------

SETS = [
    "classifier.epochs=1",
    "classifier.batch_size=8",
    "classifier.num_workers=0",
    "classifier.resize_long=[56, 72]",
    "classifier.crop_size=64",
    "cams.scales=[1.0, 0.5, 1.5]",
    "cams.batch_images=4",
]
BEFORE = ["cams.forward_images=4", "cams.fold_bn=false", "cams.channels_last=false"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(synth root, a run folder holding a trained irn-nano classifier)."""
    root = tmp_path_factory.mktemp("synth")
    generate_synth(root, num_train=10, num_val=3, size=64, seed=4, progress=False)
    run = tmp_path_factory.mktemp("run")
    train_cls.run(cpu_context(load_recipe("synth/irn-nano", [f"data.root={root}", *SETS]), run))
    return root, run


def _ctx(root: Path, run: Path, *sets: str) -> StageContext:
    return cpu_context(load_recipe("synth/irn-nano", [f"data.root={root}", *SETS, *sets]), run)


def test_make_cams_files_match_with_and_without_the_speedups(trained, tmp_path: Path) -> None:
    root, run = trained
    folders = {}
    for which, sets in (("before", BEFORE), ("after", [])):
        target = tmp_path / which
        (target / "train-cls").mkdir(parents=True)
        (target / "train-cls" / "model.safetensors").symlink_to(run / "train-cls" / "model.safetensors")
        assert make_cams.run(_ctx(root, target, *sets))["written"] == 10
        folders[which] = target / "cams"
    files = sorted(folders["before"].glob("*.npz"))
    assert len(files) == 10
    for f in files:
        a, b = load_cam(f), load_cam(folders["after"] / f.name)
        assert np.array_equal(a.keys, b.keys) and a.size == b.size and a.cams.dtype == b.cams.dtype
        # float16 files: one float16 step (<= 2**-11 below 1) is the float32 rounding showing
        assert np.abs(a.cams.astype(np.float32) - b.cams.astype(np.float32)).max(initial=0) <= 1e-3, f.name


def test_inference_model_and_forward_images_follow_the_config(trained) -> None:
    root, run = trained
    ctx = _ctx(root, run)
    assert make_cams.forward_images(ctx) is None  # 0: the whole group, on every device
    assert make_cams.forward_images(_ctx(root, run, "cams.forward_images=1")) == 1
    assert make_cams.forward_images(_ctx(root, run, "cams.forward_images=3")) == 3
    with pytest.raises(ConfigError, match="forward_images"):
        make_cams.forward_images(_ctx(root, run, "cams.forward_images=-1"))

    def norms(model: nn.Module) -> int:
        return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())

    model = make_cams.inference_model(ctx, _mobilenet())
    assert norms(model) == 0 and model.classifier.weight.is_contiguous(memory_format=torch.channels_last)
    model = make_cams.inference_model(_ctx(root, run, *BEFORE), _mobilenet())
    assert norms(model) > 0 and model.backbone.features[0][0].weight.is_contiguous()
    # gradient extractors run the model as trained
    grad_ctx = _ctx(root, run, "cams.extractor=gradcam")
    model = make_cams.inference_model(grad_ctx, _mobilenet())
    assert norms(model) > 0 and model.backbone.features[0][0].weight.is_contiguous()
    cam_fn = BoundExtractor(get_extractor("gradcam"), model)
    assert cam_fn.needs_grad
