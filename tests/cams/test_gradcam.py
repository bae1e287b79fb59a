"""Grad-CAM extractor: hand-computed maps (AMR's positive-count weights vs the plain mean), the
flip pair's joint count, class layout, branch fusion."""

from __future__ import annotations

import pytest
import torch

from tests.cams.toys import ConvToy, LinearToy
from wsss.cams.extractors import get_extractor
from wsss.cams.gradcam import GradCAM, fuse_branches
from wsss.cams.inference import max_normalise
from wsss.errors import ConfigError

W = torch.tensor([[1.0, -1.0], [0.5, 2.0]])  # K=2 classes × C=2 channels


def image() -> torch.Tensor:
    """1×3×1×3: A_0 = [1, 2, −1], A_1 = [0, 1, 1] (channel 2 unused)."""
    return torch.tensor([[[[1.0, 2.0, -1.0]], [[0.0, 1.0, 1.0]], [[0.0, 0.0, 0.0]]]])


def run(extractor: GradCAM, model: torch.nn.Module, labels: list[float], flip: bool) -> torch.Tensor:
    with torch.enable_grad():
        return extractor(model, image(), torch.tensor([labels]), flip=flip)


def test_positive_count_weights_by_hand() -> None:
    # class 0: map [1, 1, −2]; grads W_0k·1[map > 0] → channel sums (2, −2), 2 positive entries
    # → w = (1, −1), R = ReLU([1, 1, −2]). class 1: map [0.5, 3, 1.5] > 0; sums (1.5, 6), 6
    # positive entries → w = (0.25, 1), R = 0.25·A_0 + A_1.
    out = run(GradCAM(), LinearToy(W), [1.0, 1.0], flip=False)
    assert out.shape == (1, 1, 3, 1, 3)  # B × branches × (1 + K) × h × w
    torch.testing.assert_close(out[0, 0, 1, 0], torch.tensor([1.0, 1.0, 0.0]))
    torch.testing.assert_close(out[0, 0, 2, 0], torch.tensor([0.25, 1.5, 0.75]))
    assert out[0, 0, 0].abs().max() == 0  # background channel


def test_plain_mean_weights_by_hand() -> None:
    # the same channel sums divided by the 3 positions: w = (2/3, −2/3) and (0.5, 2)
    out = run(GradCAM(grad_pool="mean"), LinearToy(W), [1.0, 1.0], flip=False)
    torch.testing.assert_close(out[0, 0, 1, 0], torch.tensor([2 / 3, 2 / 3, 0.0]))
    torch.testing.assert_close(out[0, 0, 2, 0], torch.tensor([0.5, 3.0, 1.5]))


def test_logit_scores_by_hand() -> None:
    # GAP logits: every position's gradient is W_ck/3. class 1: sums (0.5, 2), 6 positive
    # entries → w = (1/12, 1/3); class 0: sums (1, −1), 3 positive entries → w = (1/3, −1/3)
    out = run(GradCAM(), LinearToy(W, logits=True), [1.0, 1.0], flip=False)
    torch.testing.assert_close(out[0, 0, 1, 0], torch.tensor([1 / 3, 1 / 3, 0.0]))
    torch.testing.assert_close(out[0, 0, 2, 0], torch.tensor([1 / 12, 0.5, 0.25]))


def test_flip_pair_shares_one_positive_count() -> None:
    # AdvCAM's tensor is the image and its mirror: the count covers both (4 for class 0), so
    # w = (0.5, −0.5) per view and the fused map equals the unflipped one; separate counts
    # would give twice that.
    out = run(GradCAM(), LinearToy(W), [1.0, 1.0], flip=True)
    torch.testing.assert_close(out[0, 0, 1, 0], torch.tensor([1.0, 1.0, 0.0]))
    torch.testing.assert_close(out[0, 0, 2, 0], torch.tensor([0.25, 1.5, 0.75]))
    # with the plain mean there is no shared count: the two views add up
    mean = run(GradCAM(grad_pool="mean"), LinearToy(W), [1.0, 1.0], flip=True)
    torch.testing.assert_close(mean[0, 0, 1, 0], torch.tensor([4 / 3, 4 / 3, 0.0]))


def test_absent_classes_are_zero_and_background_columns_are_skipped() -> None:
    out = run(GradCAM(), LinearToy(W, background=True), [0.0, 1.0], flip=False)
    assert out[0, 0, :2].abs().max() == 0
    torch.testing.assert_close(out[0, 0, 2, 0], torch.tensor([0.25, 1.5, 0.75]))


def test_batch_rows_are_independent() -> None:
    """Two images with different classes in one call equal each image alone."""
    model = ConvToy(classes=3)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 16, 20, generator=g)
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    with torch.enable_grad():
        both = GradCAM()(model, x, labels)
        alone = [GradCAM()(model, x[i : i + 1], labels[i : i + 1]) for i in range(2)]
    torch.testing.assert_close(both, torch.cat(alone), atol=1e-6, rtol=1e-5)
    assert both[0, 0, 2].abs().max() == 0 and both[1, 0, 1].abs().max() == 0
    assert both[0, 0, 1].max() > 0 and both[1, 0, 2].max() > 0


def test_needs_autograd() -> None:
    with torch.no_grad(), pytest.raises(RuntimeError, match="enable_grad"):
        GradCAM()(LinearToy(W), image(), torch.tensor([[1.0, 0.0]]))


def test_fusion_normalises_each_branch_then_weighs() -> None:
    sums = torch.tensor([[[[0.0, 2.0, 4.0]]], [[[3.0, 0.0, 0.0]]]])  # 2 branches × 1 class × 1×3
    out = fuse_branches(sums, lambda m: m / m.flatten(1).amax(1).view(-1, 1, 1), (0.25, 0.75))
    torch.testing.assert_close(out, torch.tensor([[[0.75, 0.125, 0.25]]]))
    # None = equal weights
    even = fuse_branches(sums, lambda m: m / m.flatten(1).amax(1).view(-1, 1, 1), None)
    torch.testing.assert_close(even, torch.tensor([[[0.5, 0.25, 0.5]]]))
    # one branch is exactly the normaliser
    one = torch.rand(1, 2, 4, 5)
    assert torch.equal(fuse_branches(one, max_normalise, None), max_normalise(one[0]))
    with pytest.raises(ConfigError, match="2 branches"):
        fuse_branches(sums, max_normalise, (1.0,))


def test_keywords_are_checked() -> None:
    assert get_extractor("gradcam", fusion=[0.3, 0.7]).fusion == (0.3, 0.7)
    with pytest.raises(ConfigError, match="sum to 1"):
        get_extractor("gradcam", fusion=[0.5, 0.7])
    with pytest.raises(ConfigError, match="positive"):
        get_extractor("gradcam", grad_pool="positve")
    with pytest.raises(ConfigError, match=r"cams\.extractor_args\.fussion.*did you mean 'fusion'"):
        get_extractor("gradcam", fussion=[1.0])
