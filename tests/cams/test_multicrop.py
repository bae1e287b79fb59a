"""PMM's multi-crop CAM inference: overlap averaging, exactness against full-image inference, make-cams."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tests.stage_context import cpu_context
from wsss.cams.extractors import get_extractor
from wsss.cams.files import load_cam
from wsss.cams.inference import minmax_normalise, multiscale_cams
from wsss.cams.multicrop import multicrop_cams, multicrop_forwards
from wsss.config import load_recipe
from wsss.data.heat_crops import scaled_windows
from wsss.data.synth import generate_synth
from wsss.stages import make_cams, train_cls


class ConstantCam:
    """Every class map is ``value`` at the stride-``stride`` grid; counts the images it sees."""

    def __init__(self, classes: int, value: float, stride: int) -> None:
        self.classes, self.value, self.stride, self.seen = classes, value, stride, 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.seen += len(x)
        h, w = math.ceil(x.shape[-2] / self.stride), math.ceil(x.shape[-1] / self.stride)
        return torch.full((len(x), self.classes + 1, h, w), self.value)


def _image(h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (3, h, w), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


@pytest.mark.parametrize("authors_code", [False, True])
@pytest.mark.parametrize("target_stride", [1, 4])
def test_constant_model_gives_a_constant_map(authors_code: bool, target_stride: int) -> None:
    # 48x64 at 0.5 / 1 / 2 with 20-px windows every 12: 1 to 8x7 windows, overlaps of 1-4 per scale
    # (PMM's floor mapping is exact at these scales, so its single canvas is covered everywhere)
    cam = ConstantCam(3, 0.7, stride=4)
    label = torch.tensor([1.0, 0.0, 1.0])
    out = multicrop_cams(
        cam,
        [_image(48, 64)],
        [label],
        [0.5, 1.0, 2.0],
        window=20,
        window_stride=12,
        output_stride=4,
        target_stride=target_stride,
        authors_code=authors_code,
    )[0]
    assert out.shape == (3, math.ceil(48 / target_stride), math.ceil(64 / target_stride))
    assert torch.allclose(out[0], torch.tensor(0.7)) and torch.allclose(out[2], torch.tensor(0.7))
    assert out[1].abs().max() == 0
    assert cam.seen == multicrop_forwards((48, 64), [0.5, 1.0, 2.0], 20, 12, authors_code=authors_code)


def test_pmm_floor_mapping_leaves_the_last_row_uncovered() -> None:
    # 50 px at 0.75: int(37.5) = 37 scaled rows map back to int(37 / 0.75) = 49: row 49 gets no window
    cam = ConstantCam(1, 0.5, stride=1)
    kw = dict(window=16, window_stride=12, output_stride=1)
    pmm = multicrop_cams(cam, [_image(50, 40)], [torch.tensor([1.0])], [0.75], authors_code=True, **kw)[0]
    assert torch.allclose(pmm[0, :49], torch.tensor(0.5)) and pmm[0, 49].abs().max() == 0
    clean = multicrop_cams(cam, [_image(50, 40)], [torch.tensor([1.0])], [0.75], **kw)[0]
    assert torch.allclose(clean, torch.tensor(0.5))


class IndexCam:
    """Each image it sees gets its own constant map: 1, 2, 3, … in the order of the batches."""

    def __init__(self) -> None:
        self.seen = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        values = torch.arange(self.seen + 1, self.seen + len(x) + 1, dtype=torch.float32)
        self.seen += len(x)
        return values.view(-1, 1, 1, 1).expand(len(x), 2, *x.shape[-2:]).clone()


def test_pmm_counter_is_shared_by_all_scales() -> None:
    # PMM divides one canvas by one counter over every window of every scale and flip, so a scale
    # with more windows over a pixel weighs more there than with a per-scale mean
    size, scales = (48, 64), [1.0, 2.0]
    out = multicrop_cams(
        IndexCam(),
        [_image(*size)],
        [torch.tensor([1.0])],
        scales,
        window=20,
        window_stride=12,
        output_stride=1,
        authors_code=True,
    )[0][0]
    total, count, per_scale, value = torch.zeros(size), torch.zeros(size), [], 1
    for scale in scales:
        t, c = torch.zeros(size), torch.zeros(size)
        for _flip in range(2):  # each scale's windows, then their flips
            for y0, x0, y1, x1 in scaled_windows(size, scale, 20, 12, authors_code=True):
                t[y0:y1, x0:x1] += value
                c[y0:y1, x0:x1] += 1
                value += 1
        total, count = total + t, count + c
        per_scale.append(t / c)
    shared, separate = total / count, sum(per_scale) / len(scales)
    assert torch.allclose(out, shared, atol=1e-4)
    assert (shared - separate).abs().max() > 1  # the test tells the two rules apart


def test_forward_count_hand_computed() -> None:
    # 40x56, window 24, stride 16: scale 1 → 2 x 3 windows; scale 2 (80x112) → 5 x 7; x2 for the flips
    assert multicrop_forwards((40, 56), [1.0, 2.0], 24, 16) == 2 * (6 + 35)
    assert multicrop_forwards((40, 56), [1.0, 2.0], 24, 16, flip=False) == 41
    # PMM's grid has the same number of windows per axis
    assert multicrop_forwards((40, 56), [1.0, 2.0], 24, 16, authors_code=True) == 82


class PixelCam(nn.Module):
    """A 1x1 conv: each output pixel is a function of its own input pixel only (stride 1)."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, classes + 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


@pytest.mark.parametrize("target_stride", [1, 2])
@pytest.mark.parametrize("resize", ["pil", "torch"])
def test_pixel_model_matches_full_image_inference(target_stride: int, resize: str) -> None:
    # windows of 24 every 16 tile 40x56 (2 x 3) and 80x112 (5 x 7) without any window resize, so
    # each pixel's mean over its windows is the full image's value there: the only difference from
    # multi-scale inference is that it averages (over 2 flips x 2 scales) where that one sums
    net = PixelCam().eval()
    images = [_image(40, 56, seed=1)]
    labels = [torch.tensor([1.0, 0.0, 1.0])]
    kw = dict(flip=True, output_stride=1, target_stride=target_stride, resize=resize)
    crops = multicrop_cams(net, images, labels, [1.0, 2.0], window=24, window_stride=16, **kw)[0]
    full = multiscale_cams(net, images, labels, [1.0, 2.0], scale_mode="relative", **kw)[0]
    assert crops.shape == full.shape == (3, math.ceil(40 / target_stride), math.ceil(56 / target_stride))
    assert full[0].std() > 0.1  # the maps vary from pixel to pixel, so a misplaced window shows
    assert torch.allclose(4 * crops, full, atol=1e-5)


class TinyCam(nn.Module):
    """A stride-4 CAM net (eval mode: no batch dependence)."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, classes + 1, 3, stride=2, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


@pytest.mark.parametrize("authors_code", [False, True])
def test_batched_equals_one_window_at_a_time(authors_code: bool) -> None:
    net = TinyCam().eval()
    images = [_image(45, 61, seed=2), _image(30, 20, seed=3)]  # the second is smaller than a window
    labels = [torch.tensor([0.0, 1.0, 1.0]), torch.tensor([1.0, 0.0, 0.0])]
    kw = dict(window=32, window_stride=20, output_stride=4, target_stride=4, authors_code=authors_code)
    a = multicrop_cams(net, images, labels, [0.75, 1.0, 1.5], batched=True, max_batch=5, **kw)
    b = multicrop_cams(net, images, labels, [0.75, 1.0, 1.5], batched=False, **kw)
    for x, y, img in zip(a, b, images):
        assert x.shape == (3, math.ceil(img.shape[1] / 4), math.ceil(img.shape[2] / 4))
        assert torch.allclose(x, y, atol=1e-5)
    assert a[0][0].abs().max() == 0 and a[1][1:].abs().max() == 0 and a[0][1].abs().max() > 0


# ----------------------------------------------------------------------------- make-cams


def test_make_cams_with_windows_writes_the_usual_files(tmp_path: Path) -> None:
    root = tmp_path / "synth"
    generate_synth(root, num_train=8, num_val=3, size=64, seed=3, progress=False)
    recipe_file = "synth/bnr-nano"
    sets = [
        f"data.root={root}",
        "classifier.epochs=1",
        "classifier.batch_size=4",
        "classifier.num_workers=0",
        "classifier.resize_long=[56, 72]",
        "classifier.crop_size=64",
        "cams.splits=[val]",
        "cams.scales=[0.75, 1.0, 1.5]",
        "cams.window=48",
        "cams.window_stride=32",
        "cams.stride=4",
        "cams.batch_images=2",
    ]
    recipe = load_recipe(recipe_file, sets)
    ctx = cpu_context(recipe, tmp_path / "run")
    train_cls.run(ctx)
    assert make_cams.run(ctx)["written"] == 3
    ds = ctx.dataset("val")
    files = sorted((ctx.paths.cam_dir).glob("*.npz"))
    assert [f.stem for f in files] == sorted(ds.names)
    model = train_cls.load_trained_classifier(ctx, ds.num_classes).eval()
    cam_fn = lambda x: get_extractor(recipe.cams.extractor)(model, x)  # noqa: E731
    for i, name in enumerate(ds.names):
        rec = load_cam(ctx.paths.cam_dir / f"{name}.npz")
        keys = np.flatnonzero(ds.labels[i]) + 1
        assert rec.norm == "minmax" and rec.stride == 4 and rec.size == (64, 64)
        assert rec.keys.tolist() == keys.tolist() and rec.cams.shape == (len(keys), 16, 16)
        # the file holds the multi-crop maps (not the multi-scale ones), normalised
        item = ds[i]
        want = multicrop_cams(
            cam_fn,
            [item["image"]],
            [item["labels"]],
            [0.75, 1.0, 1.5],
            window=48,
            window_stride=32,
            output_stride=getattr(model, "output_stride", 16),
            target_stride=4,
        )[0]
        want = minmax_normalise(want[torch.from_numpy(keys - 1)])
        assert np.allclose(rec.cams.astype(np.float32), want.numpy(), atol=2e-3)
        assert np.isclose(rec.cams.max(axis=(1, 2)), 1.0, atol=1e-3).all()
    # compat: authors_code switches make-cams to PMM's grid and shared counter
    pmm_ctx = cpu_context(load_recipe(recipe_file, [*sets, "compat=authors_code"]), tmp_path / "run")
    make_cams.write_cams(pmm_ctx, model, [item], tmp_path / "pmm")
    rec = load_cam(tmp_path / "pmm" / f"{item['name']}.npz")
    kw = dict(window=48, window_stride=32, output_stride=getattr(model, "output_stride", 16), target_stride=4)
    pmm = multicrop_cams(
        cam_fn, [item["image"]], [item["labels"]], [0.75, 1.0, 1.5], authors_code=True, **kw
    )[0]
    pmm = minmax_normalise(pmm[torch.from_numpy(keys - 1)]).numpy()
    assert np.allclose(rec.cams.astype(np.float32), pmm, atol=2e-3)
    assert np.abs(pmm - want.numpy()).max() > 0.05  # the two rules give different maps here
