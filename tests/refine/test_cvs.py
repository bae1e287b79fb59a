"""PMM's CVS: coefficient of variation over values > t (population std), power 1 − CoV, zero below t."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from wsss.errors import ConfigError
from wsss.refine.cvs import coefficient_of_variation, cvs
from wsss.registry import CAM_TRANSFORMS

# class 1: values above t = 0.05 (strictly) are 0.2, 0.5, 0.8, 1.0; 0.05 itself is kept but not counted.
# class 2: nothing strictly above 0.05, so CoV = 0 and the map is only zeroed below t.
MAPS = torch.tensor(
    [
        [[0.0, 0.04, 0.05, 0.2], [0.5, 0.8, 1.0, 0.03]],
        [[0.01, 0.05, 0.0, 0.02], [0.03, 0.0, 0.04, 0.05]],
    ]
)


def test_cvs_equals_the_formula_worked_by_hand() -> None:
    # mean 2.5 / 4 = 0.625; population variance (0.180625 + 0.015625 + 0.030625 + 0.140625) / 4
    # = 0.091875 (the sample variance, / 3, would give another CoV); CoV = 0.3 * std / mean.
    cov = 0.3 * math.sqrt(0.091875) / 0.625
    e = 1.0 - cov
    np.testing.assert_allclose(coefficient_of_variation(MAPS).numpy(), [cov, 0.0], rtol=1e-6)
    want = [
        [[0.0, 0.0, 0.05**e, 0.2**e], [0.5**e, 0.8**e, 1.0, 0.0]],
        [[0.0, 0.05, 0.0, 0.0], [0.0, 0.0, 0.0, 0.05]],
    ]
    np.testing.assert_allclose(cvs(MAPS, cv_scale=0.3, cam_thresh=0.05).numpy(), want, rtol=1e-6, atol=1e-7)


def test_a_more_uneven_map_is_raised_more() -> None:
    # both maps hold 0.5 at pixel 0; the first is uneven (0.1 .. 1.0), the second nearly flat
    maps = torch.tensor([[[0.5, 0.1, 1.0, 1.0]], [[0.5, 0.55, 0.6, 0.5]]])
    cov = coefficient_of_variation(maps)
    out = cvs(maps)
    assert cov[0] > cov[1] > 0
    assert out[0, 0, 0] > out[1, 0, 0] > 0.5


def test_cv_scale_zero_is_the_identity_on_values_at_or_above_t() -> None:
    maps = torch.rand(3, 20, 20, generator=torch.Generator().manual_seed(0))
    out = cvs(maps, cv_scale=0.0, cam_thresh=0.05)
    keep = maps >= 0.05
    assert torch.equal(out[keep], maps[keep]) and torch.equal(out[~keep], torch.zeros_like(out[~keep]))
    # with t = 0 as well, the maps come back as they are
    assert torch.equal(cvs(maps, cv_scale=0.0, cam_thresh=0.0), maps)


def test_registered_transform_uses_its_arguments() -> None:
    transform = CAM_TRANSFORMS.build("cvs", cv_scale=0.5, cam_thresh=0.1)
    assert torch.equal(transform(MAPS, np.array([3, 7])), cvs(MAPS, 0.5, 0.1))
    assert not torch.equal(transform(MAPS, np.array([3, 7])), cvs(MAPS))


@pytest.mark.parametrize("args", [{"cv_scale": -0.1}, {"cam_thresh": -0.01}, {"cam_thresh": 1.0}])
def test_transform_refuses_bad_settings(args: dict) -> None:
    with pytest.raises(ConfigError):
        CAM_TRANSFORMS.build("cvs", **args)


def test_a_power_at_or_below_zero_is_refused() -> None:
    # CoV of the first map is 0.3 * 0.3031 / 0.625 = 0.1455: cv_scale 7 makes 1 - CoV negative
    with pytest.raises(ValueError, match="cv_scale"):
        cvs(MAPS, cv_scale=7.0)
