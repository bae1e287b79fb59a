"""AMR's stage-2 objective: per-image CPS, the released batch-mixing pairing, weights, normalisation."""

from __future__ import annotations

import math

import pytest
import torch

from wsss.errors import ConfigError
from wsss.losses.amr import cps_authors_code, cps_per_image
from wsss.models.cam.amr import AMROutput
from wsss.registry import METHODS


def maps(*rows: list[list[float]]) -> torch.Tensor:
    """B×K×1×W from per-image lists of per-class rows."""
    return torch.tensor(rows, dtype=torch.float32).unsqueeze(2)


def test_per_image_cps_hand_value_on_present_classes() -> None:
    """img 0 (class 0 only): |1−1|, |2−0| → 1; img 1 (both): class 0 (3 + 0)/2, class 1 (0 + 2)/2 →
    1.25; the batch: 1.125. Class 1 of image 0 (|0 − 5| = 5) is absent and must not count."""
    s = maps([[1, 2], [0, 0]], [[3, 0], [1, 1]])
    c = maps([[1, 0], [5, 5]], [[0, 0], [1, 3]])
    labels = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    assert float(cps_per_image(s, c, labels)) == pytest.approx(1.125)


def test_per_image_cps_pairs_each_image_with_itself_only() -> None:
    """Both branches agree image by image: 0. Pairing image i of one branch with image j ≠ i of the
    other (as a batch-level mix would) gives |A − B| = 2 instead."""
    a, b = [[1.0, 3.0]], [[3.0, 1.0]]
    s, c = maps(a, b), maps(a, b)
    labels = torch.ones(2, 1)
    assert float(cps_per_image(s, c, labels)) == 0.0
    assert float(cps_per_image(s, c.flip(0), labels)) == pytest.approx(2.0)
    # the released pairing sees the same batch differently: S0 + flip(S1) vs C0 + flip(C1) → 0 here,
    # but it ignores images past the second one entirely
    s3, c3 = maps(a, b, [[9.0, 9.0]]), maps(a, b, [[0.0, 0.0]])
    assert float(cps_authors_code(s3, c3)) == 0.0
    assert float(cps_per_image(s3, c3, torch.ones(3, 1))) == pytest.approx(3.0)  # (0 + 0 + 9) / 3


def test_released_pairing_mixes_image_zero_with_flipped_image_one() -> None:
    """S0 + flip(S1) = [1 + 4, 2 + 3] = [5, 5]; C0 + flip(C1) = [0, 1]; mean |diff| = (5 + 4)/2 = 4.5.
    Image 2 changes nothing; per image the same batch scores (1.5 + 3 + 0)/3 = 1.5."""
    s = maps([[1, 2]], [[3, 4]], [[7, 7]])
    c = maps([[0, 0]], [[1, 0]], [[7, 7]])
    assert float(cps_authors_code(s, c)) == pytest.approx(4.5)
    s2 = s.clone()
    s2[2] = 100.0
    assert float(cps_authors_code(s2, c)) == pytest.approx(4.5)
    assert float(cps_per_image(s, c, torch.ones(3, 1))) == pytest.approx(1.5)
    with pytest.raises(ConfigError, match="batch_size >= 2"):
        cps_authors_code(s[:1], c[:1])


def test_max_normalised_option_and_untagged_images() -> None:
    """max: [2, 4] → [0.5, 1], [1, 1] → [1, 1] (+1e-5 in the divisor): mean |diff| = 0.25."""
    s, c = maps([[2, 4]]), maps([[1, 1]])
    assert float(cps_per_image(s, c, torch.ones(1, 1), norm="max")) == pytest.approx(0.25, abs=1e-4)
    assert float(cps_per_image(s, c, torch.ones(1, 1))) == pytest.approx(2.0)
    # an image without tags adds nothing; a batch of them gives 0 with a graph
    s2 = maps([[2, 4]], [[50, 50]]).requires_grad_()
    c2 = maps([[1, 1]], [[0, 0]])
    labels = torch.tensor([[1.0], [0.0]])
    assert float(cps_per_image(s2, c2, labels).detach()) == pytest.approx(2.0)
    zero = cps_per_image(s2, c2, torch.zeros(2, 1))
    assert float(zero.detach()) == 0.0 and zero.requires_grad


def _out(cam_s: torch.Tensor, cam_c: torch.Tensor) -> AMROutput:
    bg = torch.zeros(cam_s.shape[0], 1, *cam_s.shape[2:])
    s, c = torch.cat([bg, cam_s], 1), torch.cat([bg, cam_c], 1)
    return AMROutput(s, s.mean(dim=(2, 3)), c, c.mean(dim=(2, 3)))


def test_objective_weights_relu_and_compat_choice() -> None:
    """Raw maps: S = [[2, −2]] (ReLU → [2, 0]), C = [[1, 1]]: CPS = (1 + 1)/2 = 1; logits GAP = 0 and 1;
    MLSM(0, y=1) = log 2, MLSM(1, y=1) = log(1 + e^-1). L = 0.5·log 2 + 0.5·log(1 + e^-1) + 0.05·1."""
    out = _out(maps([[2, -2]]), maps([[1, 1]]))
    labels = torch.ones(1, 1)
    losses = METHODS.build("amr")(out, labels)
    assert set(losses) == {"loss", "cls_s", "cls_c", "cps"}
    assert float(losses["cps"]) == pytest.approx(1.0)
    want = 0.5 * math.log(2) + 0.5 * math.log1p(math.exp(-1)) + 0.05
    assert float(losses["loss"]) == pytest.approx(want, abs=1e-6)
    heavy = METHODS.build("amr", cls_weights=[1.0, 0.0], cps_weight=1.0)(out, labels)
    assert float(heavy["loss"]) == pytest.approx(math.log(2) + 1.0, abs=1e-6)
    assert METHODS.build("amr", compat="authors_code").cps_form == "authors_code"
    assert METHODS.build("amr", compat="clean").cps_form == "per_image"
    assert METHODS.build("amr", compat="authors_code", cps_form="per_image").cps_form == "per_image"
    with pytest.raises(ConfigError, match="did you mean 'per_image'"):
        METHODS.build("amr", cps_form="per-image")
    with pytest.raises(ConfigError, match="num_classes"):
        METHODS.build("amr")(out, torch.ones(1, 2))
