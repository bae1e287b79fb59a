"""SEAM objective: every term by hand, the composition against a plain-Python reference,
equivariance of a toy model, the two views of ``step``, and a short training run."""

from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsss.errors import ConfigError
from wsss.losses.seam import (
    SEAMObjective,
    cls_loss,
    ecr_target,
    ecr_term,
    max_norm,
    rvmin_loss,
    seam_losses,
)
from wsss.models.cam.seam import SEAMOutput
from wsss.registry import CAM_MODELS, METHODS

E = 1e-5  # SEAM's max_norm eps


# ---------------------------------------------------------------- a plain-Python SEAM reference


def py_max_norm(ch: list[list[float]]) -> list[list[float]]:
    r = [[max(0.0, v) for v in row] for row in ch]
    hi, lo = max(max(row) for row in r), min(min(row) for row in r)
    return [[max(0.0, v - lo - E) / (hi - lo + E) for v in row] for row in r]


def py_resize(ch: list[list[float]], h: int, w: int) -> list[list[float]]:
    """Bilinear with aligned corners."""
    H, W = len(ch), len(ch[0])

    def pos(i: int, n_out: int, n_in: int) -> tuple[int, int, float]:
        s = i * (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
        i0 = min(math.floor(s), n_in - 1)
        return i0, min(i0 + 1, n_in - 1), s - i0

    out = []
    for i in range(h):
        y0, y1, fy = pos(i, h, H)
        row = []
        for j in range(w):
            x0, x1, fx = pos(j, w, W)
            top = ch[y0][x0] * (1 - fx) + ch[y0][x1] * fx
            bot = ch[y1][x0] * (1 - fx) + ch[y1][x1] * fx
            row.append(top * (1 - fy) + bot * fy)
        out.append(row)
    return out


def py_losses(cam1, rv1, cam2, rv2, labels) -> dict[str, float]:
    """SEAM's loop on nested lists [image][channel][row][col]."""
    h2, w2 = len(cam2[0][0]), len(cam2[0][0][0])
    cls = rvmin = er = 0.0
    ecr = [0.0, 0.0]
    n_img = len(labels)
    for b, y in enumerate(labels):
        yb = [1.0, *y]
        for cam in (cam1[b], cam2[b]):
            s = [sum(map(sum, ch)) / (len(ch) * len(ch[0])) for ch in cam[1:]]
            terms = [math.log1p(math.exp(-v)) if t else math.log1p(math.exp(v)) for v, t in zip(s, y)]
            cls += sum(terms) / len(terms) / n_img / 2
        for rv in (rv1[b], rv2[b]):
            peak = [
                max(rv[c + 1][i][j] * y[c] for c in range(len(y)))
                for i in range(len(rv[0]))
                for j in range(len(rv[0][0]))
            ]
            k = len(peak) // 4
            rvmin += sum(max(0.0, v) for v in sorted(peak)[:k]) / k / n_img / 2
        n1 = [
            [[v * yb[c] for v in row] for row in py_resize(py_max_norm(ch), h2, w2)]
            for c, ch in enumerate(cam1[b])
        ]
        n2 = [[[v * yb[c] for v in row] for row in py_max_norm(ch)] for c, ch in enumerate(cam2[b])]
        r1 = [
            [[v * yb[c] for v in row] for row in py_resize(py_max_norm(ch), h2, w2)]
            for c, ch in enumerate(rv1[b])
        ]
        r2 = [[[v * yb[c] for v in row] for row in py_max_norm(ch)] for c, ch in enumerate(rv2[b])]
        diffs = [
            abs(n1[c][i][j] - n2[c][i][j]) for c in range(1, len(yb)) for i in range(h2) for j in range(w2)
        ]
        er += sum(diffs) / len(diffs) / n_img
        for d, (target, rv) in enumerate(((n2, r1), (n1, r2))):
            vals = []
            for i in range(h2):
                for j in range(w2):
                    top = max(target[c][i][j] for c in range(1, len(yb)))
                    t = [1 - top] + [
                        target[c][i][j] if target[c][i][j] == top else 0.0 for c in range(1, len(yb))
                    ]
                    vals += [abs(t[c] - rv[c][i][j]) for c in range(len(yb))]
            k = int(len(vals) * 0.2)
            ecr[d] += sum(sorted(vals, reverse=True)[:k]) / k / n_img
    return {"cls": cls, "rvmin": rvmin, "er": er, "ecr": sum(ecr), "loss": cls + rvmin + er + sum(ecr)}


# ---------------------------------------------------------------- terms by hand


def test_max_norm_by_hand():
    x = torch.tensor([[-1.0, 0.0, 1.0, 3.0], [2.0, 4.0, 3.0, 2.0]]).view(1, 2, 1, 4)
    want = [
        [0.0, 0.0, (1 - E) / (3 + E), (3 - E) / (3 + E)],  # ReLU first: min 0, max 3
        [0.0, (2 - E) / (2 + E), (1 - E) / (2 + E), 0.0],  # min 2, max 4
    ]
    torch.testing.assert_close(max_norm(x), torch.tensor(want).view(1, 2, 1, 4))


def test_cls_is_mlsm_of_the_foreground_means_by_hand():
    bg = [100.0, 100.0, 100.0, 100.0]  # never supervised
    cam = torch.tensor([bg, [1.0, 2.0, 3.0, 2.0], [-1.0, -1.0, -1.0, -1.0]]).view(1, 3, 2, 2)
    # class 1 present (score 2), class 2 absent (score -1)
    want = (math.log(1 + math.exp(-2.0)) + math.log(1 + math.exp(-1.0))) / 2
    assert cls_loss(cam, torch.tensor([[1.0, 0.0]])).item() == pytest.approx(want, rel=1e-6)


def test_rvmin_averages_the_smallest_quarter_of_the_masked_max_by_hand():
    bg = [5.0] * 8  # background channel left out
    img1 = [bg, [0.5, 0.1, 0.9, 0.3, 0.2, 0.7, 0.05, 0.6], [1.0] * 8]  # class 2 absent: masked
    img2 = [bg, [0.4, -0.2, 0.8, 0.3, 0.6, 0.0, 0.1, 0.9], [0.1, -0.3, 0.2, 0.5, 0.7, 0.3, 0.2, 0.1]]
    rv = torch.tensor([img1, img2]).view(2, 3, 2, 4)
    labels = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    # k = 8 // 4 = 2 smallest per image of the per-pixel max over present classes, then ReLU
    smallest1 = [0.05, 0.1]
    # image 2 maxima: 0.4, -0.2, 0.8, 0.5, 0.7, 0.3, 0.2, 0.9 → smallest -0.2 (ReLU → 0) and 0.2
    smallest2 = [0.0, 0.2]
    want = (sum(smallest1) + sum(smallest2)) / (2 * 2)
    assert rvmin_loss(rv, labels).item() == pytest.approx(want, rel=1e-6)


def test_er_by_hand_on_fg_channels_after_max_norm_and_rescale():
    torch.manual_seed(0)
    labels = torch.tensor([[1.0, 0.0]])
    fg1 = torch.zeros(7, 7)
    fg1[0, 0], fg1[6, 6], fg1[3, 3] = 2.0, 1.0, -5.0  # the ReLU hides the -5
    cam1 = torch.stack([torch.randn(7, 7), fg1, torch.full((7, 7), 3.0)])[None]
    # 7 → 2 with aligned corners samples rows/cols 0 and 6 exactly
    cam2 = torch.tensor([[[9.0, 1.0], [4.0, 2.0]], [[1.0, 0.0], [0.0, 0.0]], [[5.0, 6.0], [7.0, 8.0]]])[None]
    rv = torch.rand(1, 3, 7, 7), torch.rand(1, 3, 2, 2)
    # class 1: corners of n(cam1) = (2-e)/(2+e), 0, 0, (1-e)/(2+e) vs n(cam2) = (1-e)/(1+e), 0, 0, 0;
    # class 2 is absent (masked on both sides); background not compared
    want = (abs((2 - E) / (2 + E) - (1 - E) / (1 + E)) + (1 - E) / (2 + E)) / 8
    er = seam_losses(cam1, rv[0], cam2, rv[1], labels)["er"]
    assert er.item() == pytest.approx(want, rel=1e-5)


def test_ecr_target_keeps_the_max_value_and_sets_background():
    fg1 = [0.9, 0.2, 0.0, 0.5, 0.3]
    fg2 = [0.1, 0.6, 0.0, 0.5, 0.0]
    norm = torch.tensor([[7.0] * 5, fg1, fg2]).view(1, 3, 1, 5).requires_grad_()
    want = [
        [0.1, 0.4, 1.0, 0.5, 0.7],  # 1 − max fg
        [0.9, 0.0, 0.0, 0.5, 0.3],  # non-max zeroed, ties kept, the value (not 1) kept
        [0.0, 0.6, 0.0, 0.5, 0.0],
    ]
    target = ecr_target(norm)
    torch.testing.assert_close(target, torch.tensor(want).view(1, 3, 1, 5))
    assert not target.requires_grad


def test_ecr_term_is_the_top_fifth_mean_by_hand():
    target = torch.tensor([[0.1, 0.4, 1.0, 0.5, 0.7], [0.9, 0.0, 0.0, 0.5, 0.3], [0.0, 0.6, 0.0, 0.5, 0.0]])
    rv = torch.tensor([[0.3, 0.4, 0.2, 0.5, 0.1], [0.5, 0.1, 0.0, 0.4, 0.3], [0.0, 0.5, 0.3, 0.5, 0.0]])
    # |diff| = .2 0 .8 0 .6 / .4 .1 0 .1 0 / 0 .1 .3 0 0; k = int(15 · 0.2) = 3 → .8 .6 .4
    want = (0.8 + 0.6 + 0.4) / 3
    got = ecr_term(target.view(1, 3, 1, 5), rv.view(1, 3, 1, 5))
    assert got.item() == pytest.approx(want, rel=1e-6)


def test_seam_losses_match_a_plain_python_reference():
    torch.manual_seed(1)
    cam1, rv1 = torch.randn(2, 3, 10, 10), torch.rand(2, 3, 10, 10)
    cam2, rv2 = torch.randn(2, 3, 3, 3), torch.rand(2, 3, 3, 3)
    labels = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    got = seam_losses(cam1, rv1, cam2, rv2, labels)
    want = py_losses(cam1.tolist(), rv1.tolist(), cam2.tolist(), rv2.tolist(), labels.tolist())
    for key, value in want.items():
        assert got[key].item() == pytest.approx(value, rel=1e-5, abs=1e-6), key
    assert got["ecr"].item() > 0 and got["er"].item() > 0 and got["rvmin"].item() > 0


# ---------------------------------------------------------------- step, equivariance, training


class Pointwise(nn.Module):
    """A toy 'network' whose CAM is a pointwise function of the input (stride 1): it commutes with
    any resize that samples input pixels exactly. ``blur`` breaks that (a 3×3 box filter)."""

    def __init__(self, blur: bool = False) -> None:
        super().__init__()
        self.blur = blur
        self.seen: list[Tensor] = []

    def forward(self, x: Tensor) -> SEAMOutput:
        self.seen.append(x)
        cam = 3 * torch.tanh(x)
        if self.blur:
            cam = F.avg_pool2d(cam, 3, stride=1, padding=1, count_include_pad=False)
        rv = x.flip(-1).abs()  # anything that is not the CAM
        return SEAMOutput(cam=cam, cam_rv=rv, logits=cam.mean(dim=(2, 3)))


def equivariance_input() -> Tensor:
    """11×11 → 3×3 samples rows/cols 0, 5, 10; each channel's extremes sit on sampled pixels."""
    torch.manual_seed(2)
    x = torch.rand(1, 3, 11, 11) * 0.8 + 0.1
    x[:, :, 5, 5] = 2.0
    x[:, :, 10, 0] = -1.0
    return x


def test_er_is_zero_for_an_equivariant_model_and_not_for_a_blurring_one():
    labels = torch.tensor([[1.0, 1.0]])
    x = equivariance_input()
    er = SEAMObjective().step(Pointwise(), x, labels)["er"]
    assert er.item() < 1e-6
    blurred = SEAMObjective().step(Pointwise(blur=True), x, labels)["er"]
    assert blurred.item() > 1e-2


def test_step_runs_the_image_and_its_aligned_corner_downscale():
    net = Pointwise()
    x = torch.randn(2, 3, 10, 13)
    out = SEAMObjective().step(net, x, torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    assert set(out) == {"loss", "cls", "rvmin", "er", "ecr"}
    assert [tuple(v.shape) for v in net.seen] == [(2, 3, 10, 13), (2, 3, 3, 3)]  # floor(0.3·size)
    small = net.seen[1]
    torch.testing.assert_close(small[..., 0, 0], x[..., 0, 0])
    torch.testing.assert_close(small[..., 2, 2], x[..., 9, 12])  # corners align
    torch.testing.assert_close(small[..., 1, 1], x[..., 4:6, 6].mean(dim=-1))  # rows 4.5, col 6
    objective = METHODS.build("seam")
    assert objective.forwards_per_step == 2 and objective.needs_attention is False


def test_step_rejects_wrong_labels_and_tiny_inputs():
    with pytest.raises(ConfigError, match="expected \\(1, 2\\)"):
        SEAMObjective().step(Pointwise(), torch.randn(1, 3, 10, 10), torch.ones(1, 3))
    with pytest.raises(ConfigError, match="larger crops"):
        SEAMObjective().step(Pointwise(), torch.randn(1, 3, 3, 3), torch.ones(1, 2))


def toy_batch() -> tuple[Tensor, Tensor]:
    """Class 1 = a red square on the left, class 2 = a blue square on the right."""
    rng = random.Random(0)
    images, labels = [], []
    for y in ([1, 0], [0, 1], [1, 1], [1, 0], [0, 1], [1, 1]):
        img = torch.zeros(3, 64, 64)
        if y[0]:
            r, c = rng.randrange(4, 20), rng.randrange(0, 12)
            img[0, r : r + 20, c : c + 20] = 2.0
        if y[1]:
            r, c = rng.randrange(4, 20), rng.randrange(32, 44)
            img[2, r : r + 20, c : c + 20] = 2.0
        images.append(img)
        labels.append(y)
    return torch.stack(images), torch.tensor(labels, dtype=torch.float32)


def test_a_few_steps_lower_the_loss():
    # batch-statistics BN: a randomly initialised tiny ResNet-38 with fixed BN gives near-zero CAMs
    torch.manual_seed(0)
    model = CAM_MODELS.build(
        "seam",
        backbone="resnet38",
        num_classes=3,
        dropout=0.0,
        freeze_bn=False,
        backbone_args={"width_divisor": 16},
    ).train()
    optimizer = torch.optim.SGD(model.optimizer_groups(0.01, 5e-4, 10.0), lr=0.01, momentum=0.9)
    objective = METHODS.build("seam")
    x, y = toy_batch()
    losses, cls = [], []
    for _ in range(20):
        out = objective.step(model, x, y)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        losses.append(out["loss"].item())
        cls.append(out["cls"].item())
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-3:]) / 3 < 0.85 * losses[0]
    assert sum(cls[-3:]) / 3 < 0.6 * cls[0]  # the classifier itself learns, not only PCM
