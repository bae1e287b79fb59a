"""AdvCAM: the climb raises the target score and lowers the others, the regulariser bounds the
already-high region, maps accumulate over steps within the clamp, one step is Grad-CAM."""

from __future__ import annotations

import pytest
import torch

from tests.cams.toys import ConvToy, LinearToy, OneBranch
from wsss.cams.advcam import AdvCAM, authors_steps, climb
from wsss.cams.gradcam import GradCAM, pooled
from wsss.errors import ConfigError


def scores(model: torch.nn.Module, views: torch.Tensor) -> torch.Tensor:
    """AdvCAM's objective scores (mean of ReLU class maps) per view, summed over views: J×K."""
    with torch.no_grad():
        maps = model.gradcam_branches(views.flatten(0, 1))[0][1]
    return pooled(maps, "mean").unflatten(0, views.shape[:2]).sum(1)


def run_climb(model: torch.nn.Module, x: torch.Tensor, cls: int, **kw):
    kw = dict(steps=4, xi=0.08, lam=7.0, mask_threshold=0.5, num_classes=kw.pop("num_classes", 2)) | kw
    with torch.enable_grad():
        return climb(model, x, torch.tensor([cls]), branch=0, **kw)


def test_climb_raises_the_target_score() -> None:
    model = ConvToy(classes=2, seed=1)
    x = torch.stack([torch.randn(3, 24, 24, generator=torch.Generator().manual_seed(2))] * 2)[None]
    x[0, 1] = x[0, 1].flip(-1)  # an image and its mirror, as the extractor builds them
    before = scores(model, x)
    after = scores(model, run_climb(model, x, 0).images)
    assert after[0, 0] > before[0, 0] * 1.05


def test_climb_lowers_the_other_classes() -> None:
    # features = (x_0, x_1), maps = identity: the objective 2·s_0 − (s_0 + s_1) = s_0 − s_1
    model = LinearToy(torch.eye(2))
    x = torch.rand(1, 1, 3, 4, 4, generator=torch.Generator().manual_seed(3)) - 0.3
    before = scores(model, x)
    after = scores(model, run_climb(model, x, 0, lam=0.0).images)
    assert after[0, 0] > before[0, 0] and after[0, 1] < before[0, 1]


def high_region_case(lam: float):
    """One class whose map is channel 0: [1.0, 0.6, 0.2, 0.0]; channel 2 widens the clamp range.

    The map is its own Grad-CAM region, the objective's gradient is the same at every positive
    pixel, so without λ each step adds ξ to every positive pixel.
    """
    x = torch.zeros(1, 1, 3, 1, 4)
    x[..., 0, 0, :] = torch.tensor([1.0, 0.6, 0.2, 0.0])
    x[..., 2, 0, :2] = torch.tensor([5.0, -5.0])
    run = run_climb(LinearToy(torch.ones(1, 1)), x, 0, steps=8, xi=0.1, lam=lam, num_classes=1)
    return x[0, 0, 0, 0], run.images[0, 0, 0, 0], run.maps[0, 0]


def test_regulariser_keeps_the_high_region_bounded() -> None:
    start, free, _ = high_region_case(lam=0.0)
    start, held, _ = high_region_case(lam=7.0)
    high = start > 0.5 * start.max()  # pixels 0 and 1
    # without λ: 7 climbing steps of ξ everywhere positive, and pixel 2 joins the high region
    torch.testing.assert_close(free, torch.tensor([1.7, 1.3, 0.9, 0.0]))
    assert int((free > 0.5 * free.max()).sum()) == 3
    # with λ: the high region oscillates within ξ of where it started, pixel 2 stays out
    assert float((held - start)[high].abs().max()) <= 0.1 + 1e-5
    assert int((held > 0.5 * held.max()).sum()) == 2


def test_maps_accumulate_over_steps_within_the_clamp() -> None:
    # range [0, 1]: pixel 0 sits at the max and cannot rise; the others rise by ξ = 0.1 a step
    x = torch.zeros(1, 3, 1, 4)
    x[0, 0, 0] = torch.tensor([1.0, 0.6, 0.2, 0.0])
    extractor = AdvCAM(steps=4, xi=0.1, lam=0.0)
    with torch.enable_grad():
        out = extractor(LinearToy(torch.ones(1, 1)), x, torch.ones(1, 1), flip=False)
    assert out.shape == (1, 1, 2, 1, 4)
    # Σ_t R_t: 4·1.0, 0.6 + 0.7 + 0.8 + 0.9, 0.2 + 0.3 + 0.4 + 0.5, 0
    torch.testing.assert_close(out[0, 0, 1, 0], torch.tensor([4.0, 3.0, 1.4, 0.0]))
    assert out[0, 0, 0].abs().max() == 0


def test_one_step_is_gradcam_and_chunking_does_not_matter() -> None:
    model = ConvToy(classes=3, branches=2, seed=4)
    x = torch.randn(2, 3, 20, 16, generator=torch.Generator().manual_seed(5))
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    with torch.enable_grad():
        torch.testing.assert_close(
            AdvCAM(steps=1)(model, x, labels), GradCAM()(model, x, labels), atol=1e-5, rtol=1e-5
        )
        one = AdvCAM(steps=3, max_jobs=1)(model, x, labels)
        many = AdvCAM(steps=3, max_jobs=4)(model, x, labels)
    torch.testing.assert_close(one, many, atol=1e-5, rtol=1e-4)
    assert one.shape == (2, 2, 4, 5, 4)


def test_each_branch_climbs_on_its_own_scores() -> None:
    model = ConvToy(classes=2, branches=2, seed=6)
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(7))
    labels = torch.tensor([[1.0, 1.0]])
    with torch.enable_grad():
        both = AdvCAM(steps=3)(model, x, labels)
        alone = [AdvCAM(steps=3)(OneBranch(model, b), x, labels) for b in range(2)]
    torch.testing.assert_close(both, torch.cat(alone, 1), atol=1e-5, rtol=1e-5)
    assert (both[:, 0] - both[:, 1]).abs().max() > 1e-3  # the branches really differ


def test_authors_short_scale_steps() -> None:
    assert [authors_steps(s) for s in (27, 11, 10, 6, 5, 1)] == [13, 5, 5, 5, 5, 1]
    assert AdvCAM(short_scale=0.5).steps_at(0.5) == 13 and AdvCAM(short_scale=0.5).steps_at(1.0) == 27
    assert AdvCAM().steps_at(0.5) == 27
    with pytest.raises(ConfigError, match="steps"):
        AdvCAM(steps=0)
    with pytest.raises(ConfigError, match="mask_threshold"):
        AdvCAM(mask_threshold=1.5)
