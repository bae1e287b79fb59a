"""Multi-scale CAMs and the per-iteration labels P1 (thresholds), P2 (PAR) and P3 (affinity + PAR)."""

from __future__ import annotations

import pytest
import torch

from wsss.errors import ConfigError, DataError
from wsss.refine.online_labels import (
    dual_threshold_labels,
    multiscale_cams,
    refine_with_affinity,
    refine_with_background,
)
from wsss.refine.par import PAR

IGN = 255


def test_multiscale_min_max_of_a_known_cam() -> None:
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 8, 12, generator=gen)
    seen = []

    def cam_fn(x: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(x.shape))
        return torch.cat([x[:, :1], -x[:, 1:2]], dim=1)  # class 1 is all ≤ 0: ReLU leaves zeros

    cams = multiscale_cams(cam_fn, images, (1.0, 0.5, 0.75))
    assert seen == [(4, 3, 8, 12), (4, 3, 4, 6), (4, 3, 6, 9)]  # image and flip in one batch of 2B
    assert cams.shape == (2, 2, 8, 12)
    assert torch.allclose(cams[:, 0].amax(dim=(-2, -1)), torch.ones(2), atol=1e-4)
    assert torch.equal(cams[:, 0].amin(dim=(-2, -1)), torch.zeros(2))
    assert (cams[:, 1] == 0).all()
    # one scale: the CAM is the first channel itself (its flip, un-flipped, is the same), min-max scaled
    single = multiscale_cams(cam_fn, images, (1.0,))[:, 0]
    first = images[:, 0]
    lo, hi = first.amin(dim=(-2, -1), keepdim=True), first.amax(dim=(-2, -1), keepdim=True)
    assert torch.allclose(single, (first - lo) / (hi - lo + 1e-5), atol=1e-6)


def test_multiscale_takes_max_with_the_unflipped_flip() -> None:
    ramp = torch.tensor([1.0, 2.0, 3.0, 4.0])
    images = torch.rand(1, 3, 2, 4)

    def cam_fn(x: torch.Tensor) -> torch.Tensor:  # not flip-equivariant: weights columns left to right
        return x[:, :1] * ramp

    out = multiscale_cams(cam_fn, images, (1.0,))[0, 0]
    expected = images[0, 0] * torch.maximum(ramp, ramp.flip(0))  # img·ramp vs unflip(flip(img)·ramp)
    expected = expected - expected.min()
    assert torch.allclose(out, expected / (expected.max() + 1e-5), atol=1e-6)


def test_multiscale_runs_without_grad_and_checks_scales() -> None:
    weight = torch.ones(1, requires_grad=True)
    out = multiscale_cams(lambda x: x[:, :1] * weight, torch.rand(1, 3, 4, 4), (1.0,))
    assert not out.requires_grad
    with pytest.raises(ConfigError, match="scales"):
        multiscale_cams(lambda x: x, torch.rand(1, 3, 4, 4), ())


def test_dual_threshold_hand_computed_bands() -> None:
    cams = torch.tensor([[[[0.9, 0.5], [0.1, 0.3]], [[0.2, 0.8], [0.05, 0.6]]]])
    both = dual_threshold_labels(cams, torch.tensor([[1, 1]]), high=0.7, low=0.25)
    assert both.tolist() == [[[1, 2], [0, IGN]]]  # above high → class; ≤ low → bg; between → ignore
    only_first = dual_threshold_labels(cams, torch.tensor([[1, 0]]), high=0.7, low=0.25)
    assert only_first.tolist() == [[[1, IGN], [0, IGN]]]
    assert only_first.dtype == torch.long
    at_edges = torch.tensor([[[[0.7, 0.25]]]])  # "≤" on both thresholds
    assert dual_threshold_labels(at_edges, torch.tensor([[1]]), 0.7, 0.25, ignore_index=9).tolist() == [
        [[9, 0]]
    ]


def test_dual_threshold_never_picks_an_absent_class() -> None:
    gen = torch.Generator().manual_seed(0)
    cams = torch.rand(4, 5, 6, 6, generator=gen) * 2 - 0.5
    labels = torch.tensor([[1, 0, 0, 1, 0], [0, 0, 0, 0, 1], [0, 1, 1, 0, 0], [0, 0, 0, 0, 0]])
    out = dual_threshold_labels(cams, labels, high=0.7, low=0.25)
    for b in range(4):
        allowed = {0, IGN} | {k + 1 for k in range(5) if labels[b, k]}
        assert set(out[b].unique().tolist()) <= allowed
    assert (out[3] == 0).all()  # no class present: the masked CAM is 0 everywhere → background


def three_band_scene() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """16×16 image with three colour bands (cols 0–5, 6–11, 12–15) and a CAM for class 1 of K=3.

    Class 1 scores 0.95 / 0.5 / 0.0 on the bands; the absent class 0 scores 1.0 on the right band.
    """
    gen = torch.Generator().manual_seed(0)
    img = torch.empty(1, 3, 16, 16)
    img[..., :6] = torch.tensor([0.9, 0.1, 0.1])[:, None, None]
    img[..., 6:12] = torch.tensor([0.1, 0.9, 0.1])[:, None, None]
    img[..., 12:] = torch.tensor([0.1, 0.1, 0.9])[:, None, None]
    img = img + 0.01 * torch.rand(img.shape, generator=gen)
    cams = torch.zeros(1, 3, 16, 16)
    cams[0, 1, :, :6] = 0.95
    cams[0, 1, :, 6:12] = 0.5
    cams[0, 0, :, 12:] = 1.0
    return img, cams, torch.tensor([[0, 1, 0]])


def expected_three_band() -> torch.Tensor:
    row = [2] * 6 + [IGN] * 6 + [0] * 4  # fg in both passes / fg only in the low pass / bg in both
    return torch.tensor(row).expand(16, 16)


def test_refine_with_background_labels_the_bands() -> None:
    img, cams, labels = three_band_scene()
    out = refine_with_background(PAR(), img, cams, labels, high=0.7, low=0.25)
    assert out.shape == (1, 16, 16) and out.dtype == torch.long
    assert torch.equal(out[0], expected_three_band())


def test_refine_with_background_image_without_classes_is_background() -> None:
    img, cams, _ = three_band_scene()
    img2, cams2 = img.repeat(2, 1, 1, 1), cams.repeat(2, 1, 1, 1)
    out = refine_with_background(PAR(), img2, cams2, torch.tensor([[0, 1, 0], [0, 0, 0]]), 0.7, 0.25)
    assert torch.equal(out[0], expected_three_band())
    assert (out[1] == 0).all()


def p3_inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    img = torch.rand(2, 3, 16, 12, generator=gen)
    cams = torch.rand(2, 3, 16, 12, generator=gen)
    return img, cams, torch.tensor([[1, 0, 1], [0, 1, 0]])


def test_refine_with_affinity_identity_on_the_par_grid_equals_p2() -> None:
    img, cams, labels = p3_inputs()
    par = PAR(dilations=(1, 2))
    p2 = refine_with_background(par, img, cams, labels, 0.6, 0.3)
    eye = torch.eye(48).expand(2, 48, 48)
    assert torch.equal(refine_with_affinity(par, img, cams, eye, labels, 0.6, 0.3, grid=(8, 6)), p2)
    # radius 0 keeps only the diagonal, which Sinkhorn turns into the identity whatever the affinity
    rand = torch.rand(2, 48, 48)
    p3 = refine_with_affinity(par, img, cams, rand, labels, 0.6, 0.3, grid=(8, 6), norm="sinkhorn", radius=0)
    assert torch.equal(p3, p2)


def test_refine_with_affinity_moves_scores_along_the_affinity() -> None:
    img, cams, labels = p3_inputs(seed=1)
    par = PAR(dilations=(1, 2))
    idx = torch.arange(48).reshape(8, 6)
    mirror = torch.zeros(48, 48)
    mirror[idx.flatten(), idx.flip(-1).flatten()] = 1.0  # token (r, c) sends its scores to (r, 5 − c)
    p3 = refine_with_affinity(par, img, cams, mirror.expand(2, 48, 48), labels, 0.6, 0.3, grid=(8, 6))
    assert torch.equal(p3, refine_with_background(par, img, cams.flip(-1), labels, 0.6, 0.3))
    assert not torch.equal(p3, refine_with_background(par, img, cams, labels, 0.6, 0.3))


def test_refine_with_affinity_checks_its_inputs() -> None:
    img, cams, labels = p3_inputs()
    with pytest.raises(DataError, match="grid"):
        refine_with_affinity(PAR(), img, cams, torch.rand(2, 40, 40), labels, 0.6, 0.3, grid=(8, 6))
    with pytest.raises(ConfigError, match="none, row, sinkhorn"):
        refine_with_affinity(PAR(), img, cams, torch.rand(2, 48, 48), labels, 0.6, 0.3, grid=(8, 6), norm="x")
    with pytest.raises(ConfigError, match="low threshold"):
        refine_with_background(PAR(), img, cams, labels, 0.3, 0.6)
    with pytest.raises(ConfigError, match="down_scale"):
        refine_with_background(PAR(), img, cams, labels, 0.6, 0.3, down_scale=0)
