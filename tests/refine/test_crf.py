"""Dense CRF: presets, unary formulas, backend selection, both backends cleaning a noisy toy mask, pool."""

from __future__ import annotations

import dataclasses
import math
import operator
import sys
import types
import warnings

import numpy as np
import pytest
import torch

from wsss.errors import ConfigError, DataError
from wsss.refine import crf as crf_mod
from wsss.refine.crf import (
    CRF_PRESETS,
    CRFParams,
    crf_labels,
    dense_crf,
    get_preset,
    label_unary,
    resolve_backend,
    softmax_unary,
)
from wsss.refine.crf_torch import mean_field_crf
from wsss.refine.pool import ParallelMapError, parallel_map

# Parameters each preset must hand to pydensecrf: (gaussian sxy, compat), (bilateral sxy, srgb, compat), iterations.
EXPECTED = {
    "label": ((3, 3), (50, 5, 10), 10),
    "psa": ((3, 3), (80, 13, 10), 10),
    "deeplab": ((3, 3), (32, 13, 10), 1),
    "deeplab_v2": ((1, 3), (67, 3, 4), 10),
    "toco": ((1, 1), (121, 5, 4), 10),
    "pmm": ((3, 10), (80, 13, 10), 10),
}


def _toy(h: int, w: int, seed: int = 0, noise: float = 0.2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flat-coloured disk on a flat background; clean mask and a copy with `noise` labels flipped."""
    yy, xx = np.mgrid[:h, :w]
    mask = (((yy - h / 2) ** 2 + (xx - w / 2) ** 2) < (min(h, w) / 3) ** 2).astype(np.int64)
    image = np.where(mask[..., None] == 1, [200, 40, 40], [40, 120, 200]).astype(np.uint8)
    rng = np.random.default_rng(seed)
    noisy = mask.copy()
    flip = rng.random(mask.shape) < noise
    noisy[flip] = 1 - noisy[flip]
    return image, mask, noisy


def _iou(pred: np.ndarray, mask: np.ndarray) -> float:
    return float(((pred == 1) & (mask == 1)).sum() / ((pred == 1) | (mask == 1)).sum())


# ---------------------------------------------------------------- presets


def test_presets_match_the_reference_table() -> None:
    assert set(CRF_PRESETS) == set(EXPECTED)
    for name, ((gs, gc), (bs, br, bc), it) in EXPECTED.items():
        p = get_preset(name)
        assert (p.gauss_sxy, p.gauss_compat, p.bilat_sxy, p.bilat_srgb, p.bilat_compat, p.iterations) == (
            gs,
            gc,
            bs,
            br,
            bc,
            it,
        ), name
    assert get_preset("label").unary == "labels" and get_preset("label").gt_prob == 0.7
    assert all(CRF_PRESETS[n].unary == "softmax" for n in EXPECTED if n != "label")


def test_unknown_preset_suggests_the_closest() -> None:
    with pytest.raises(ConfigError, match=r"did you mean 'psa'"):
        get_preset("pas")


def test_params_are_validated() -> None:
    with pytest.raises(ConfigError, match="gt_prob"):
        CRFParams("labels", 1.0, 3, 3, 50, 5, 10, 10)
    with pytest.raises(ConfigError, match="unary"):
        CRFParams("probs", None, 3, 3, 50, 5, 10, 10)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="iterations"):
        CRFParams("softmax", None, 3, 3, 50, 5, 10, -1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_preset("psa").iterations = 3  # type: ignore[misc]


# ---------------------------------------------------------------- unaries


def test_label_unary_hand_computed() -> None:
    labels = np.array([[0, 2], [1, 0]])
    u = label_unary(labels, 3, 0.7)
    on, off = -math.log(0.7), -math.log(0.15)
    assert u.shape == (3, 2, 2) and u.dtype == np.float32
    np.testing.assert_allclose(u[:, 0, 1], [off, off, on], rtol=1e-6)
    np.testing.assert_allclose(u[:, 1, 0], [off, on, off], rtol=1e-6)
    with pytest.raises(ValueError, match="n_labels"):
        label_unary(labels, 2, 0.7)


def test_softmax_unary_clips_like_pydensecrf() -> None:
    p = np.array([[[0.5, 0.0]], [[2.0, 1.0]]], dtype=np.float32)
    u = softmax_unary(p)
    np.testing.assert_allclose(u[:, 0, 0], [math.log(2), 0.0], atol=1e-6)
    np.testing.assert_allclose(u[0, 0, 1], -math.log(1e-5), rtol=1e-6)


@pytest.mark.crf
def test_unaries_equal_pydensecrf_utils() -> None:
    pytest.importorskip("pydensecrf")
    from pydensecrf.utils import unary_from_labels, unary_from_softmax

    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, size=(5, 7))
    np.testing.assert_allclose(
        label_unary(labels, 4, 0.7).reshape(4, -1),
        unary_from_labels(labels, 4, 0.7, zero_unsure=False),
        rtol=1e-6,
    )
    probs = rng.random((3, 5, 7)).astype(np.float32)
    probs[0, 0, 0] = 0.0
    np.testing.assert_allclose(softmax_unary(probs).reshape(3, -1), unary_from_softmax(probs), rtol=1e-6)


def test_unary_kind_must_match_the_input() -> None:
    image, _, noisy = _toy(6, 7)
    with pytest.raises(ValueError, match="with a 'softmax' preset"):
        dense_crf(image, np.ones((2, 6, 7), np.float32), "label", n_labels=2, backend="torch")
    with pytest.raises(ValueError, match="label map with a 'labels' preset"):
        dense_crf(image, noisy, "psa", backend="torch")
    with pytest.raises(ValueError, match="needs n_labels"):
        dense_crf(image, noisy, "label", backend="torch")


# ---------------------------------------------------------------- zero iterations = softmax of the unary


@pytest.mark.parametrize("backend", ["torch", pytest.param("exact", marks=pytest.mark.crf)])
def test_zero_iterations_return_the_unary_softmax(backend: str) -> None:
    if backend == "exact":
        pytest.importorskip("pydensecrf")
    image, _, noisy = _toy(8, 9)
    params = dataclasses.replace(get_preset("label"), iterations=0)
    q = dense_crf(image, noisy, params, n_labels=3, backend=backend)
    want = np.full((3, 8, 9), 0.15, np.float32)
    np.put_along_axis(want, noisy[None], 0.7, axis=0)
    np.testing.assert_allclose(q, want, atol=1e-6)


# ---------------------------------------------------------------- both backends clean a noisy mask


@pytest.mark.parametrize("size", [(32, 40), (90, 120)])  # exact bilateral / downsampled-grid bilateral
def test_torch_backend_improves_noisy_mask(size: tuple[int, int]) -> None:
    image, mask, noisy = _toy(*size)
    before = _iou(noisy, mask)
    after = _iou(crf_labels(image, noisy, "label", n_labels=2, backend="torch"), mask)
    assert before < 0.6
    assert after > 0.95


@pytest.mark.crf
def test_exact_backend_improves_noisy_mask() -> None:
    pytest.importorskip("pydensecrf")
    image, mask, noisy = _toy(32, 40)
    after = _iou(crf_labels(image, noisy, "label", n_labels=2, backend="exact"), mask)
    assert _iou(noisy, mask) < 0.6
    assert after > 0.95


def test_torch_softmax_crf_sharpens_towards_colour_edges() -> None:
    """A blurred probability map on a two-colour image: the CRF argmax snaps to the colour edge."""
    image, mask, _ = _toy(30, 36)
    t = torch.from_numpy(mask).float()[None, None]
    blurred = torch.nn.functional.avg_pool2d(t, 7, stride=1, padding=3, count_include_pad=False)[0, 0].numpy()
    probs = np.stack([1 - blurred, blurred]).astype(np.float32) * 0.6 + 0.2  # weak, edge-blurred scores
    probs[:, :, :3] = 0.5  # an uninformative strip: colour alone must decide it
    pred = crf_labels(image, probs, "psa", backend="torch")
    assert _iou(pred, mask) > 0.97
    q = dense_crf(image, probs, "psa", backend="torch")
    np.testing.assert_allclose(q.sum(axis=0), 1.0, atol=1e-5)


def test_mean_field_runs_on_tensors_and_keeps_device() -> None:
    image, _, noisy = _toy(10, 12)
    unary = torch.from_numpy(label_unary(noisy, 2, 0.7))
    q = mean_field_crf(torch.from_numpy(image), unary, get_preset("label"), max_grid_pixels=16)
    assert q.device == unary.device and q.shape == (2, 10, 12)
    assert torch.allclose(q.sum(0), torch.ones(10, 12), atol=1e-5)


# ---------------------------------------------------------------- the parameters reach pydensecrf


class _RecordingCRF:
    """Stands in for ``pydensecrf.densecrf.DenseCRF2D`` and records every call."""

    calls: list[tuple[str, tuple, dict]] = []  # noqa: RUF012  (reset by the fixture)

    def __init__(self, w: int, h: int, n: int) -> None:
        self.shape = (n, h * w)
        self.calls.append(("init", (w, h, n), {}))

    def setUnaryEnergy(self, unary: np.ndarray) -> None:
        assert unary.flags["C_CONTIGUOUS"] and unary.dtype == np.float32 and unary.shape == self.shape
        self.calls.append(("unary", (), {}))

    def addPairwiseGaussian(self, **kw: object) -> None:
        self.calls.append(("gauss", (), kw))

    def addPairwiseBilateral(self, **kw: object) -> None:
        rgb = kw["rgbim"]
        assert isinstance(rgb, np.ndarray) and rgb.flags["C_CONTIGUOUS"] and rgb.dtype == np.uint8
        self.calls.append(("bilateral", (), {k: v for k, v in kw.items() if k != "rgbim"}))

    def inference(self, t: int) -> np.ndarray:
        self.calls.append(("inference", (t,), {}))
        return np.full(self.shape, 1.0 / self.shape[0], np.float32)


@pytest.fixture
def fake_pydensecrf(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, tuple, dict]]:
    package = types.ModuleType("pydensecrf")
    module = types.ModuleType("pydensecrf.densecrf")
    module.DenseCRF2D = _RecordingCRF  # type: ignore[attr-defined]
    package.densecrf = module  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pydensecrf", package)
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", module)
    monkeypatch.setattr(_RecordingCRF, "calls", [])
    return _RecordingCRF.calls


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_preset_reaches_pydensecrf(name: str, fake_pydensecrf: list) -> None:
    (gs, gc), (bs, br, bc), it = EXPECTED[name]
    image = np.zeros((4, 5, 3), np.uint8)[:, ::-1]  # a non-contiguous view must be made contiguous
    if get_preset(name).unary == "labels":
        q = dense_crf(image, np.zeros((4, 5), np.int64), name, n_labels=3, backend="exact")
    else:
        q = dense_crf(image, np.full((3, 4, 5), 1 / 3, np.float32), name, backend="exact")
    assert q.shape == (3, 4, 5)
    assert fake_pydensecrf == [
        ("init", (5, 4, 3), {}),
        ("unary", (), {}),
        ("gauss", (), {"sxy": gs, "compat": gc}),
        ("bilateral", (), {"sxy": bs, "srgb": br, "compat": bc}),
        ("inference", (it,), {}),
    ]


def test_auto_prefers_the_exact_backend(fake_pydensecrf: list) -> None:
    image, _, noisy = _toy(4, 5)
    crf_labels(image, noisy, "label", n_labels=2, backend="auto")
    assert fake_pydensecrf[0][0] == "init"


# ---------------------------------------------------------------- missing pydensecrf


@pytest.fixture
def no_pydensecrf(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pydensecrf", None)
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    crf_mod._warn_fallback_once.cache_clear()
    yield
    crf_mod._warn_fallback_once.cache_clear()


def test_exact_without_package_says_how_to_install(no_pydensecrf: None) -> None:
    with pytest.raises(ConfigError, match=r"pip install wsss\[crf\].*3\.12"):
        resolve_backend("exact")


def test_auto_without_package_falls_back_and_warns_once(no_pydensecrf: None) -> None:
    image, _mask, noisy = _toy(16, 20)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        a = crf_labels(image, noisy, "label", n_labels=2, backend="auto")
        b = crf_labels(image, noisy, "label", n_labels=2, backend="auto")
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "pip install wsss[crf]" in messages[0]
    torch_pred = crf_labels(image, noisy, "label", n_labels=2, backend="torch")
    assert np.array_equal(a, torch_pred) and np.array_equal(b, torch_pred)


def test_unknown_backend_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="did you mean 'torch'"):
        resolve_backend("torc")


# ---------------------------------------------------------------- process pool


def test_parallel_map_in_process_keeps_order() -> None:
    assert list(parallel_map(operator.neg, range(7), workers=1, progress=False)) == [
        0,
        -1,
        -2,
        -3,
        -4,
        -5,
        -6,
    ]


def test_parallel_map_names_the_failing_item() -> None:
    with pytest.raises(ParallelMapError, match=r"crf: item #2 -1\.0 failed: ValueError") as info:
        list(parallel_map(math.sqrt, [4.0, 9.0, -1.0, 16.0], workers=1, desc="crf", progress=False))
    assert info.value.item == -1.0 and isinstance(info.value.__cause__, ValueError)


def test_parallel_map_with_processes_keeps_order_and_names_failures() -> None:
    """One spawn pool (worker start-up is the slow part): ordered results, then the failing item."""
    items = [float(i * i) for i in range(12)] + [-3.0, 1.0, 4.0]
    results = parallel_map(math.sqrt, items, workers=2, desc="sqrt", progress=False)
    got = [next(results) for _ in range(12)]
    assert got == [float(i) for i in range(12)]
    with pytest.raises(ParallelMapError, match=r"sqrt: item #12 -3\.0 failed: ValueError") as info:
        next(results)
    assert info.value.index == 12 and isinstance(info.value.__cause__, ValueError)


def _refuse_negative(x: float) -> float:
    """A pool task that fails the way input checks do: with a WsssError naming the item."""
    if x < 0:
        raise DataError(f"item {x} is negative; give a number >= 0")
    return x


@pytest.mark.parametrize("workers", [1, 2])
def test_parallel_map_passes_a_wsss_error_on_unwrapped(workers: int) -> None:
    """An input error raised in a worker reaches the CLI as itself (one 'error:' line), not wrapped."""
    with pytest.raises(DataError, match=r"^item -2\.0 is negative; give a number >= 0$"):
        list(parallel_map(_refuse_negative, [1.0, -2.0, 3.0], workers=workers, progress=False))


def test_gaussian_message_banded_equals_convolution() -> None:
    """Both ways of blurring give the same normalised message (j ≠ i, renormalised at borders)."""
    from wsss.refine import crf_torch

    q = torch.rand(3, 13, 17, generator=torch.Generator().manual_seed(0))
    banded = crf_torch._GaussianMessage((13, 17), 2.0, torch.device("cpu"))
    conv = crf_torch._GaussianMessage((13, 17), 2.0, torch.device("cpu"))
    conv.banded = False
    conv.norm = (conv._blur(torch.ones(1, 13, 17)) - 1.0).clamp_min(1e-20)
    assert banded.banded
    torch.testing.assert_close(banded(q), conv(q), rtol=1e-5, atol=1e-6)
    # a constant belief map is a fixed point of the normalised message
    torch.testing.assert_close(banded(torch.full((1, 13, 17), 0.3)), torch.full((1, 13, 17), 0.3))


def test_bilateral_message_matches_brute_force() -> None:
    """Dense (small-image) bilateral message against the kernel written out pair by pair."""
    from wsss.refine import crf_torch

    g = torch.Generator().manual_seed(1)
    h, w, sxy, srgb = 3, 4, 2.0, 30.0
    image = torch.randint(0, 256, (3, h, w), generator=g).float()
    q = torch.rand(2, h, w, generator=g)
    msg = crf_torch._BilateralMessage(image, sxy, srgb, 64, torch.device("cpu"))(q)
    want = torch.zeros(2, h, w)
    for i in range(h * w):
        yi, xi = divmod(i, w)
        num, den = torch.zeros(2), 0.0
        for j in range(h * w):
            if j == i:
                continue
            yj, xj = divmod(j, w)
            d2 = ((yi - yj) ** 2 + (xi - xj) ** 2) / sxy**2
            d2 += float(((image[:, yi, xi] - image[:, yj, xj]) ** 2).sum()) / srgb**2
            k = math.exp(-0.5 * d2)
            num += k * q[:, yj, xj]
            den += k
        want[:, yi, xi] = num / den
    torch.testing.assert_close(msg, want, rtol=1e-4, atol=1e-6)
    # on the downsampled grid a constant belief map stays constant
    grid = crf_torch._BilateralMessage(image.repeat(1, 8, 8), sxy, srgb, 64, torch.device("cpu"))
    assert not grid.exact and grid.grid[0] * grid.grid[1] <= 64
    torch.testing.assert_close(grid(torch.full((2, 24, 32), 0.25)), torch.full((2, 24, 32), 0.25))
