"""Segmentation test-time inference: MS + flip averaging, batching, sliding windows, CRF post-processing."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wsss.errors import ConfigError
from wsss.seg.inference import (
    TEST_PROTOCOLS,
    _tiles,
    get_protocol,
    postprocess_crf,
    predict_probs,
    scaled_size,
    tile_starts,
    window_stride,
)

CLASSES = 4


class StridedNet(nn.Module):
    """A small fully convolutional net with stride 4 and a left/right-asymmetric 3×3 receptive field."""

    def __init__(self, classes: int = CLASSES, dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, classes, 1),
        )
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen))
            bn = self.body[1]
            bn.running_mean.uniform_(-0.5, 0.5, generator=gen)
            bn.running_var.uniform_(0.5, 2.0, generator=gen)
        self.to(dtype).eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class PixelNet(nn.Module):
    """Per-pixel colour classifier: 1×1 convolutions only, so its receptive field is one pixel."""

    def __init__(self, classes: int = CLASSES, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(1)
        self.body = nn.Sequential(nn.Conv2d(3, 6, 1), nn.ReLU(), nn.Conv2d(6, classes, 1))
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 2)
        self.to(dtype).eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _image(h: int, w: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(3, h, w, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ---------------------------------------------------------------------------------------------
# geometry helpers
# ---------------------------------------------------------------------------------------------


def _mmseg_starts(length: int, window: int, stride: int) -> list[int]:
    """mmseg ``slide_inference`` window starts along one axis, written out independently."""
    grids = max(length - window + stride - 1, 0) // stride + 1
    starts = []
    for k in range(grids):
        end = min(k * stride + window, length)
        starts.append(max(end - window, 0))
    return starts


def test_tile_starts_hand_worked() -> None:
    # PMM: crop 512, stride 480. 1000 px → grids (488 + 479) // 480 + 1 = 3 at 0, 480, 960; the
    # last one is moved back to 1000 - 512 = 488
    assert tile_starts(1000, 512, 480) == [0, 480, 488]
    assert tile_starts(512, 512, 480) == [0]
    assert tile_starts(513, 512, 480) == [0, 1]  # one pixel over: a second window shifted to 1
    assert tile_starts(992, 512, 480) == [0, 480]  # 480 + 512 == 992: exact cover, no shift
    assert tile_starts(10, 4, 3) == [0, 3, 6]  # 6 + 4 == 10: exact cover
    assert tile_starts(11, 4, 3) == [0, 3, 6, 7]  # 9 would overhang by 2 → moved back to 7
    assert tile_starts(4, 4, 3) == [0]
    assert tile_starts(125, 64, 60) == [0, 60, 61]  # pixels 61..63 are covered three times


def test_short_side_is_one_unpadded_window() -> None:
    """A side shorter than the window is one window of that side (mmseg crops y1:min(y1+h, H))."""
    shape, tiles = _tiles((300, 1000), 512, 1 / 16)
    assert shape == (300, 512)
    assert [(t.y, t.x, t.h, t.w) for t in tiles] == [(0, 0, 300, 512), (0, 480, 300, 512), (0, 488, 300, 512)]
    assert tile_starts(300, 300, 480) == [0]
    shape, tiles = _tiles((300, 200), 512, 1 / 16)
    assert shape == (300, 200) and [(t.y, t.x, t.h, t.w) for t in tiles] == [(0, 0, 300, 200)]


def test_tiles_lie_inside_the_image_and_cover_it() -> None:
    rng = np.random.default_rng(0)
    for _ in range(300):
        h, w = (int(v) for v in rng.integers(1, 200, size=2))
        window = int(rng.integers(1, 80))
        overlap = float(rng.choice([0.0, 1 / 16, 1 / 3, 0.5, 0.9]))
        stride = window_stride(window, overlap)
        shape, tiles = _tiles((h, w), window, overlap)
        assert shape == (min(window, h), min(window, w))
        count = np.zeros((h, w), dtype=int)
        for t in tiles:
            assert t.y >= 0 and t.y + t.h <= h and t.x >= 0 and t.x + t.w <= w
            assert (t.h, t.w) == shape
            count[t.y : t.y + t.h, t.x : t.x + t.w] += 1
        assert count.min() >= 1
        assert tile_starts(h, shape[0], stride) == _mmseg_starts(h, min(window, h), stride)
        assert tile_starts(w, shape[1], stride) == _mmseg_starts(w, min(window, w), stride)


def test_window_stride_and_validation() -> None:
    assert window_stride(512, 1 / 16) == 480  # PMM's slide setting
    assert window_stride(16, 1 / 3) == 11
    assert window_stride(8, 0.0) == 8
    with pytest.raises(ValueError, match="overlap"):
        window_stride(16, 1.0)
    with pytest.raises(ValueError, match="window"):
        window_stride(0, 0.5)


def test_scaled_size_modes() -> None:
    assert scaled_size((375, 500), 0.5, "relative") == (188, 250)
    assert scaled_size((375, 500), 1.75, "relative") == (656, 875)
    assert scaled_size((375, 500), 448, "square") == (448, 448)
    assert scaled_size((375, 500), 512, "short_side") == (512, 683)  # 500 * 512/375 = 682.7
    assert scaled_size((500, 375), 256, "short_side") == (341, 256)
    with pytest.raises(ConfigError, match="did you mean 'square'"):
        scaled_size((10, 10), 1.0, "sqare")


# ---------------------------------------------------------------------------------------------
# combining passes
# ---------------------------------------------------------------------------------------------


def _width_logits(x: torch.Tensor) -> torch.Tensor:
    """Logits [W/10, 0] everywhere, at stride 2: the pass's input width picks the score."""
    b, _, h, w = x.shape
    out = torch.zeros(b, 2, math.ceil(h / 2), math.ceil(w / 2), dtype=x.dtype)
    out[:, 0] = w / 10
    return out


@pytest.mark.parametrize(
    ("mode", "flip", "expected"),
    [
        ("logits", False, torch.tensor(1.5).sigmoid()),  # softmax(mean(1, 2))
        ("logits", True, torch.tensor(1.5).sigmoid()),
        ("probs", True, (torch.tensor(1.0).sigmoid() + torch.tensor(2.0).sigmoid()) / 2),
        ("max_logits", False, torch.tensor(2.0).sigmoid()),  # max(1, 2)
        ("max_logits", True, torch.tensor(4.0).sigmoid()),  # flip pair summed: max(2, 4)
    ],
)
def test_modes_hand_computed(mode: str, flip: bool, expected: torch.Tensor) -> None:
    img = torch.zeros(3, 6, 10, dtype=torch.float64)
    probs = predict_probs(_width_logits, img, num_classes=2, scales=(1.0, 2.0), flip=flip, mode=mode)
    assert probs.shape == (2, 6, 10)
    assert torch.allclose(probs[0], expected.to(torch.float64).expand(6, 10), atol=1e-12)
    assert torch.allclose(probs.sum(0), torch.ones(6, 10, dtype=torch.float64))


def test_strided_logits_are_upsampled_to_the_image() -> None:
    """A stride-4 net (mean of the red channel per 4×4 cell) is upsampled bilinearly to (H, W)."""

    def red_cells(x: torch.Tensor) -> torch.Tensor:
        r = F.avg_pool2d(x[:, :1], 4)
        return torch.cat([r, torch.zeros_like(r)], 1)

    img = _image(16, 24)
    probs = predict_probs(red_cells, img, num_classes=2)
    expected = F.interpolate(F.avg_pool2d(img[None, :1], 4), size=(16, 24), mode="bilinear")[0, 0]
    assert torch.allclose(probs[0], expected.sigmoid(), atol=1e-12)


def test_image_resize_is_half_pixel_bilinear() -> None:
    """Row [0, 1, 2, 3] at scale 0.5 → [0.5, 2.5] (align_corners False) → back to [0.5, 1, 2, 2.5]."""

    def red(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x[:, :1], torch.zeros_like(x[:, :1])], 1)

    img = torch.zeros(3, 4, 4, dtype=torch.float64)
    img[0] = torch.arange(4.0, dtype=torch.float64)
    probs = predict_probs(red, img, num_classes=2, scales=(0.5,))
    expected = torch.tensor([0.5, 1.0, 2.0, 2.5], dtype=torch.float64).sigmoid()
    assert torch.allclose(probs[0], expected.expand(4, 4), atol=1e-12)


# ---------------------------------------------------------------------------------------------
# invariants
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["logits", "probs", "max_logits"])
def test_ms_flip_is_flip_equivariant(mode: str) -> None:
    net = StridedNet()
    img = _image(21, 30)
    kw = dict(num_classes=CLASSES, scales=(0.5, 1.0, 1.5), mode=mode)
    p = predict_probs(net, img, flip=True, **kw)
    p_mirror = predict_probs(net, img.flip(-1), flip=True, **kw).flip(-1)
    assert torch.allclose(p, p_mirror, atol=1e-6)
    # the net itself is not mirror-symmetric: without the flip pass the identity breaks
    q = predict_probs(net, img, flip=False, **kw)
    q_mirror = predict_probs(net, img.flip(-1), flip=False, **kw).flip(-1)
    assert (q - q_mirror).abs().max() > 1e-3


def test_symmetric_input_gives_symmetric_prediction() -> None:
    half = _image(20, 13, seed=3)
    img = torch.cat([half, half.flip(-1)], -1)  # mirror-symmetric image, 20×26
    p = predict_probs(StridedNet(), img, num_classes=CLASSES, scales=(0.75, 1.0, 1.25), flip=True)
    assert torch.allclose(p, p.flip(-1), atol=1e-6)


@pytest.mark.parametrize("window", [None, 12])
@pytest.mark.parametrize("mode", ["logits", "probs", "max_logits"])
def test_batched_equals_sequential(mode: str, window: int | None) -> None:
    net = StridedNet()
    img = _image(27, 35, seed=1)
    kw = dict(num_classes=CLASSES, scales=(0.5, 1.0, 1.25), flip=True, mode=mode, window=window)
    a = predict_probs(net, img, batched=True, **kw)
    b = predict_probs(net, img, batched=False, **kw)
    c = predict_probs(net, img, batched=True, max_batch=3, **kw)
    assert a.dtype == torch.float64 and a.shape == (CLASSES, 27, 35)
    assert torch.allclose(a, b, atol=1e-5)
    assert torch.allclose(a, c, atol=1e-5)


def test_batched_uses_one_forward_per_scale() -> None:
    calls: list[int] = []

    def counting(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        return PixelNet(dtype=torch.float64)(x)

    img = _image(30, 40)
    predict_probs(counting, img, num_classes=CLASSES, scales=(0.5, 1.0), flip=True, window=16)
    # scale 0.5 → 15×20: tile 15×16 at x 0, 4 (11 shifted back inside) → 2 tiles; scale 1 → 30×40: 3×4 = 12 tiles; ×2 flips
    assert calls == [4, 24]
    calls.clear()
    predict_probs(counting, img, num_classes=CLASSES, scales=(0.5, 1.0), flip=True, batched=False)
    assert calls == [1, 1, 1, 1]


@pytest.mark.parametrize("mode", ["logits", "probs", "max_logits"])
@pytest.mark.parametrize(("window", "overlap"), [(16, 1 / 3), (20, 0.0), (7, 0.5), (64, 1 / 3)])
def test_sliding_window_equals_whole_image_for_pixel_net(window: int, overlap: float, mode: str) -> None:
    net = PixelNet()
    img = _image(37, 50, seed=2, dtype=torch.float32)
    kw = dict(num_classes=CLASSES, scales=(0.75, 1.0, 1.5), flip=True, mode=mode)
    whole = predict_probs(net, img, **kw)
    tiled = predict_probs(net, img, window=window, overlap=overlap, **kw)
    assert torch.allclose(tiled, whole, atol=1e-6)


def test_sliding_window_really_tiles() -> None:
    """With a 3×3 receptive field, the zero padding at tile borders must show (the windows are real)."""
    net = StridedNet()
    img = _image(40, 40, seed=4)
    whole = predict_probs(net, img, num_classes=CLASSES)
    tiled = predict_probs(net, img, num_classes=CLASSES, window=16, overlap=0.25)
    assert (tiled - whole).abs().max() > 1e-3


def test_pixel_net_with_shifted_and_triple_covered_windows() -> None:
    """125×130 at window 64 / stride 60: rows at 0, 60, 61 and columns at 0, 60, 66, so some pixels
    are seen by up to 9 windows; a per-pixel net must still give the whole-image answer."""
    net = PixelNet()
    img = _image(125, 130, seed=6, dtype=torch.float32)
    assert window_stride(64, 1 / 16) == 60
    for mode in ("logits", "probs"):
        whole = predict_probs(net, img, num_classes=CLASSES, mode=mode, flip=True)
        tiled = predict_probs(net, img, num_classes=CLASSES, mode=mode, flip=True, window=64, overlap=1 / 16)
        assert torch.allclose(tiled, whole, atol=1e-5)


def _coordinate_image(h: int, w: int) -> torch.Tensor:
    """Channels: row index, column index, ones — a crop tells where it came from and if it was padded."""
    rows = torch.arange(h, dtype=torch.float64).view(h, 1).expand(h, w)
    cols = torch.arange(w, dtype=torch.float64).view(1, w).expand(h, w)
    return torch.stack([rows, cols, torch.ones(h, w, dtype=torch.float64)])


@pytest.mark.parametrize("batched", [True, False])
def test_windows_fed_to_the_model_are_mmseg_crops(batched: bool) -> None:
    """Record every crop the model receives: each is an unpadded piece of the image at mmseg's places."""
    h, w, window, overlap = 45, 23, 16, 0.25  # stride 12: rows 0, 12, 24, 29; columns 0, 7
    img = _coordinate_image(h, w)
    seen: list[tuple[int, int, int, int]] = []

    def recording(x: torch.Tensor) -> torch.Tensor:
        for crop in x:
            ch, cw = crop.shape[-2:]
            y0, x0 = int(crop[0, 0, 0]), int(crop[1, 0, 0])
            assert torch.equal(crop, img[:, y0 : y0 + ch, x0 : x0 + cw])  # nothing padded or moved
            seen.append((y0, x0, ch, cw))
        return torch.zeros(x.shape[0], CLASSES, *x.shape[-2:], dtype=x.dtype)

    predict_probs(recording, img, num_classes=CLASSES, window=window, overlap=overlap, batched=batched)
    stride = window_stride(window, overlap)
    expected = [(y, x, 16, 16) for y in _mmseg_starts(h, 16, stride) for x in _mmseg_starts(w, 16, stride)]
    assert seen == expected == [(y, x, 16, 16) for y in (0, 12, 24, 29) for x in (0, 7)]
    assert all(y + ch <= h and x + cw <= w for y, x, ch, cw in seen)


def test_sliding_window_matches_an_mmseg_reference() -> None:
    """A net with a 3×3 receptive field (it sees tile borders) against mmseg's slide loop written out."""
    net = StridedNet()
    img = _image(37, 29, seed=7)
    window, overlap = 16, 0.25
    stride = window_stride(window, overlap)
    preds = torch.zeros(1, CLASSES, 37, 29, dtype=torch.float64)
    count = torch.zeros(1, 1, 37, 29, dtype=torch.float64)
    for y in _mmseg_starts(37, window, stride):
        for x in _mmseg_starts(29, window, stride):
            crop = img[None, :, y : y + window, x : x + window]
            out = F.interpolate(net(crop), size=crop.shape[-2:], mode="bilinear", align_corners=False)
            preds[..., y : y + window, x : x + window] += out
            count[..., y : y + window, x : x + window] += 1
    expected = (preds / count)[0].softmax(0)
    got = predict_probs(net, img, num_classes=CLASSES, window=window, overlap=overlap)
    assert torch.allclose(got, expected, atol=1e-10)


def test_scales_change_nothing_for_a_colour_only_net() -> None:
    """A per-pixel colour classifier on a block image: every scale agrees away from block edges."""
    net = PixelNet(dtype=torch.float64)
    gen = torch.Generator().manual_seed(5)
    blocks = torch.randn(3, 3, 4, generator=gen, dtype=torch.float64)
    img = blocks.repeat_interleave(16, 1).repeat_interleave(16, 2)  # 48×64, 16-px blocks
    single = predict_probs(net, img, num_classes=CLASSES)
    edge = torch.zeros(48, 64, dtype=torch.bool)
    for k in range(16, 64, 16):
        edge[:, k - 4 : k + 4] = True
        edge[k - 4 : k + 4, :] = True
    interior = ~edge
    for mode in ("logits", "probs", "max_logits"):
        multi = predict_probs(net, img, num_classes=CLASSES, scales=(0.5, 0.75, 1.5, 2.0), mode=mode)
        assert torch.allclose(multi[:, interior], single[:, interior], atol=1e-9)
    # a constant image agrees everywhere, whatever the scales (also square inputs)
    flat = torch.ones(3, 25, 33, dtype=torch.float64) * torch.tensor([0.3, -1.0, 0.7]).view(3, 1, 1)
    one = predict_probs(net, flat, num_classes=CLASSES)
    many = predict_probs(net, flat, num_classes=CLASSES, scales=(16.0, 40.0), scale_mode="square", flip=True)
    assert torch.allclose(one, many, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# model outputs and bad input
# ---------------------------------------------------------------------------------------------


def test_model_output_forms() -> None:
    net = PixelNet(dtype=torch.float64)
    img = _image(9, 11)
    ref = predict_probs(net, img, num_classes=CLASSES)
    as_tuple = predict_probs(lambda x: (net(x), net(x) * 0), img, num_classes=CLASSES)
    as_dict = predict_probs(lambda x: {"out": net(x), "aux": net(x) * 0}, img, num_classes=CLASSES)
    assert torch.equal(ref, as_tuple) and torch.equal(ref, as_dict)
    with pytest.raises(TypeError, match="mapping with key 'out'"):
        predict_probs(lambda x: {"logits": net(x)}, img, num_classes=CLASSES)


def test_bad_input_is_reported() -> None:
    net = PixelNet(dtype=torch.float64)
    img = _image(9, 11)
    with pytest.raises(ValueError, match="num_classes=21"):
        predict_probs(net, img, num_classes=21)
    with pytest.raises(ValueError, match="normalised float image"):
        predict_probs(net, torch.zeros(3, 9, 11, dtype=torch.uint8), num_classes=CLASSES)
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        predict_probs(net, img[None], num_classes=CLASSES)
    with pytest.raises(ConfigError, match="did you mean 'probs'"):
        predict_probs(net, img, num_classes=CLASSES, mode="prob")
    with pytest.raises(ValueError, match="overlap"):
        predict_probs(net, img, num_classes=CLASSES, window=8, overlap=1.5)


# ---------------------------------------------------------------------------------------------
# protocols and CRF
# ---------------------------------------------------------------------------------------------


def test_protocols() -> None:
    transcam = get_protocol("transcam")
    assert transcam.scales == (0.5, 0.75, 1.0, 1.25, 1.5, 1.75) and transcam.flip
    assert (transcam.mode, transcam.crf, transcam.align_corners) == ("logits", "deeplab", True)
    assert get_protocol("pmm").mode == "probs" and get_protocol("pmm").window == 512
    assert window_stride(512, get_protocol("pmm").overlap) == 480
    assert get_protocol("unia").mode == "max_logits"
    with pytest.raises(ConfigError, match="did you mean 'unia'"):
        get_protocol("unai")
    net = PixelNet(dtype=torch.float64)
    img = _image(12, 16)
    for name in TEST_PROTOCOLS:
        kw = get_protocol(name).predict_kwargs()
        kw["scales"] = tuple(s / 32 for s in kw["scales"]) if kw["scale_mode"] != "relative" else kw["scales"]
        probs = predict_probs(net, img, num_classes=CLASSES, **kw)
        assert probs.shape == (CLASSES, 12, 16)
        assert torch.allclose(probs.sum(0), torch.ones(12, 16, dtype=torch.float64))


def _two_region_case() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image with a dark left and a bright right half; probs agree except a few flipped pixels."""
    h, w = 24, 32
    image = np.zeros((h, w, 3), np.uint8)
    image[:, w // 2 :] = 220
    truth = np.zeros((h, w), np.int64)
    truth[:, w // 2 :] = 1
    probs = np.where(truth[None] == np.arange(2)[:, None, None], 0.9, 0.1).astype(np.float32)
    noisy = probs.copy()
    for y, x in ((5, 4), (12, 9), (20, 22), (3, 27)):
        noisy[:, y, x] = noisy[::-1, y, x]  # 0.1 / 0.9 swapped: an isolated wrong pixel
    return image, truth, noisy


@pytest.mark.parametrize("backend", ["torch", pytest.param("exact", marks=pytest.mark.crf)])
def test_crf_removes_isolated_errors(backend: str) -> None:
    if backend == "exact":
        pytest.importorskip("pydensecrf")
    image, truth, noisy = _two_region_case()
    assert (noisy.argmax(0) != truth).sum() == 4
    for preset in ("deeplab", "deeplab_v2", "label"):
        labels = postprocess_crf(image, torch.from_numpy(noisy), preset, backend=backend)
        assert labels.shape == truth.shape and labels.dtype == np.int64
        np.testing.assert_array_equal(labels, truth)


def test_crf_shape_mismatch_is_reported() -> None:
    image, _, noisy = _two_region_case()
    with pytest.raises(ValueError, match="predict at the image's size"):
        postprocess_crf(image[:-1], noisy, backend="torch")
    with pytest.raises(ConfigError, match="unknown CRF preset"):
        postprocess_crf(image, noisy, "deeplab3", backend="torch")
