"""SPU's uncertainty-rectified loss, checked against formulas written out by hand per pixel."""

from __future__ import annotations

import math

import pytest
import torch

from wsss.errors import ConfigError, DataError
from wsss.losses.uncertainty import UncertaintyRectifiedLoss, balanced_weights
from wsss.registry import LOSSES

EPS = 0.4


def softmax(z: list[float]) -> list[float]:
    e = [math.exp(v) for v in z]
    return [v / sum(e) for v in e]


def smoothed_ce(z: list[float], label: int, eps: float = EPS) -> float:
    """−Σ_c q_c log softmax(z)_c with q = 1−ε on ``label`` and ε/(C−1) elsewhere, in plain floats."""
    p = softmax(z)
    q = [1 - eps if c == label else eps / (len(z) - 1) for c in range(len(z))]
    return -sum(qc * math.log(pc) for qc, pc in zip(q, p, strict=True))


def kl(zp: list[float], zq: list[float]) -> float:
    """KL(softmax zp ‖ softmax zq)."""
    p, q = softmax(zp), softmax(zq)
    return sum(pc * math.log(pc / qc) for pc, qc in zip(p, q, strict=True))


def as_logits(pixels: list[list[float]]) -> torch.Tensor:
    """A 1×C×1×N logit tensor from N per-pixel logit vectors."""
    return torch.tensor(pixels, dtype=torch.float64).T.reshape(1, len(pixels[0]), 1, len(pixels))


# Four pixels, three classes; labels bg, bg, fg(1), fg(2). The heads agree on pixels 0 and 2
# and disagree on pixels 1 and 3.
MAIN = [[2.0, 0.0, -1.0], [0.5, 1.0, 0.0], [-1.0, 3.0, 0.0], [0.0, 0.0, 1.0]]
AUX = [[2.0, 0.0, -1.0], [-2.0, 2.0, 1.0], [-1.0, 3.0, 0.0], [3.0, -1.0, 0.0]]
LABELS = [0, 0, 1, 2]
WEIGHTS = [0.25, 0.25, 0.25, 0.25]  # two bg pixels share ½, two fg pixels share ½


def labels_tensor(values: list[int]) -> torch.Tensor:
    return torch.tensor(values).reshape(1, 1, len(values))


def test_identical_heads_reduce_to_balanced_smoothed_ce():
    """D = 0 everywhere: both forms give (a + b)·L_pcl with L_pcl = ½[mean_bg ℓ + mean_fg ℓ]."""
    z = as_logits(MAIN)
    ce = [smoothed_ce(p, y) for p, y in zip(MAIN, LABELS, strict=True)]
    pcl = 0.5 * (ce[0] + ce[1]) / 2 + 0.5 * (ce[2] + ce[3]) / 2
    for form in ("pixelwise", "scalar"):
        out = UncertaintyRectifiedLoss(form=form)(z, labels_tensor(LABELS), z.clone())
        assert out["pcl"].item() == pytest.approx(pcl, rel=1e-6)
        assert out["kl_main"].item() == pytest.approx(0.0, abs=1e-7)
        assert out["confidence"].item() == pytest.approx(1.0)
        assert out["loss"].item() == pytest.approx(1.5 * pcl, rel=1e-6)
    # and with direction weights (1, 0): exactly the balanced label-smoothed CE
    one = UncertaintyRectifiedLoss(direction_weights=(1.0, 0.0))(z, labels_tensor(LABELS), z.clone())
    assert one["loss"].item() == pytest.approx(pcl, rel=1e-6)


def test_pixelwise_form_matches_the_per_pixel_formula():
    out = UncertaintyRectifiedLoss()(as_logits(MAIN), labels_tensor(LABELS), as_logits(AUX))
    ce = [smoothed_ce(p, y) for p, y in zip(MAIN, LABELS, strict=True)]
    d1 = [kl(m, a) for m, a in zip(MAIN, AUX, strict=True)]  # KL(main ‖ aux)
    d2 = [kl(a, m) for m, a in zip(MAIN, AUX, strict=True)]
    term1 = sum(w * c * math.exp(-d) for w, c, d in zip(WEIGHTS, ce, d1, strict=True)) + sum(d1) / 4
    term2 = sum(w * c * math.exp(-d) for w, c, d in zip(WEIGHTS, ce, d2, strict=True)) + sum(d2) / 4
    assert out["loss"].item() == pytest.approx(term1 + 0.5 * term2, rel=1e-6)
    assert out["kl_main"].item() == pytest.approx(sum(d1) / 4, rel=1e-6)
    assert out["kl_aux"].item() == pytest.approx(sum(d2) / 4, rel=1e-6)
    assert out["confidence"].item() == pytest.approx(sum(math.exp(-d) for d in d1) / 4, rel=1e-6)


def test_pixelwise_weighting_down_weights_exactly_the_disagreeing_pixels():
    """Per pixel, the CE part of the loss is w·ℓ·e^{−D}: the ratio to w·ℓ is 1 where the heads agree
    and e^{−D(p)} < 1 where they disagree. The KL part is removed by weighting (1, 0) and
    subtracting mean D₁, and each pixel is isolated by giving only it a label."""
    d1 = [kl(m, a) for m, a in zip(MAIN, AUX, strict=True)]
    assert d1[0] == pytest.approx(0.0, abs=1e-12) and d1[2] == pytest.approx(0.0, abs=1e-12)
    assert d1[1] > 0.1 and d1[3] > 0.1
    loss = UncertaintyRectifiedLoss(direction_weights=(1.0, 0.0), mean_over="all")
    mean_d1 = sum(d1) / 4
    for p, label in enumerate(LABELS):
        only = [255] * 4
        only[p] = label  # the one labelled pixel gets all the mass: w = 1
        rectified = loss(as_logits(MAIN), labels_tensor(only), as_logits(AUX))["loss"].item() - mean_d1
        plain = smoothed_ce(MAIN[p], label)
        ratio = rectified / plain
        assert ratio == pytest.approx(math.exp(-d1[p]), rel=1e-6)
        if p in (0, 2):
            assert ratio == pytest.approx(1.0, rel=1e-6)
        else:
            assert ratio < 0.9
    # with every pixel labelled, the per-pixel form is not the scalar one (it would be if e^{−D}
    # only rescaled the whole loss)
    full = [
        UncertaintyRectifiedLoss(form=f, mean_over="valid")(
            as_logits(MAIN), labels_tensor(LABELS), as_logits(AUX)
        )["loss"].item()
        for f in ("pixelwise", "scalar")
    ]
    assert abs(full[0] - full[1]) > 1e-3


def test_scalar_form_matches_the_released_code_by_hand():
    """L = [L_pcl·mean e^{−D₁} + mean D₁] + ½[L_pcl·mean e^{−D₂} + mean D₂], means over every
    pixel (the released code), ignored ones included; L_pcl over labelled pixels only."""
    labels = [0, 0, 1, 255]
    out = UncertaintyRectifiedLoss(form="scalar")(as_logits(MAIN), labels_tensor(labels), as_logits(AUX))
    ce = [smoothed_ce(MAIN[p], labels[p]) for p in range(3)]
    pcl = 0.5 * (ce[0] + ce[1]) / 2 + 0.5 * ce[2]
    d1 = [kl(m, a) for m, a in zip(MAIN, AUX, strict=True)]
    d2 = [kl(a, m) for m, a in zip(MAIN, AUX, strict=True)]
    term1 = pcl * sum(math.exp(-d) for d in d1) / 4 + sum(d1) / 4
    term2 = pcl * sum(math.exp(-d) for d in d2) / 4 + sum(d2) / 4
    assert out["pcl"].item() == pytest.approx(pcl, rel=1e-6)
    assert out["loss"].item() == pytest.approx(term1 + 0.5 * term2, rel=1e-6)
    # over labelled pixels instead: the three first pixels
    valid = UncertaintyRectifiedLoss(form="scalar", mean_over="valid")(
        as_logits(MAIN), labels_tensor(labels), as_logits(AUX)
    )
    t1 = pcl * sum(math.exp(-d) for d in d1[:3]) / 3 + sum(d1[:3]) / 3
    t2 = pcl * sum(math.exp(-d) for d in d2[:3]) / 3 + sum(d2[:3]) / 3
    assert valid["loss"].item() == pytest.approx(t1 + 0.5 * t2, rel=1e-6)


def test_compat_chooses_the_form_unless_form_is_given():
    assert LOSSES.build("uncertainty_rectified").form == "pixelwise"
    authors = LOSSES.build("uncertainty_rectified", compat="authors_code")
    assert authors.form == "scalar" and authors.mean_over == "all"
    assert LOSSES.build("uncertainty_rectified", compat="authors_code", form="pixelwise").form == "pixelwise"
    assert LOSSES.build("uncertainty_rectified").mean_over == "valid"


def test_balanced_weights_give_background_and_foreground_equal_mass():
    labels = torch.zeros(1, 4, 4, dtype=torch.long)
    labels[0, 2, 1] = 3  # 1 fg pixel, 15 bg pixels
    w = balanced_weights(labels, labels != 255)
    assert w[0, 2, 1].item() == pytest.approx(0.5)
    assert w[labels == 0].sum().item() == pytest.approx(0.5)
    assert w[labels == 0].unique().tolist() == pytest.approx([1 / 30])
    # the loss sees the same: a fg pixel costs as much as all 15 bg pixels together
    z = torch.zeros(1, 4, 4, 4)
    z[0, 0] = 1.0  # every pixel predicts bg; ℓ_bg = a, ℓ_fg = b
    out = UncertaintyRectifiedLoss(direction_weights=(1.0, 0.0))(z, labels, z.clone())
    a = smoothed_ce([1.0, 0.0, 0.0, 0.0], 0)
    b = smoothed_ce([1.0, 0.0, 0.0, 0.0], 3)
    assert out["pcl"].item() == pytest.approx(0.5 * a + 0.5 * b, rel=1e-6)
    # only one group: it gets all the mass; ignored pixels none; nothing labelled: all zero
    only_bg = torch.zeros(1, 2, 2, dtype=torch.long)
    only_bg[0, 0, 0] = 255
    w = balanced_weights(only_bg, only_bg != 255)
    assert w.flatten().tolist() == pytest.approx([0.0, 1 / 3, 1 / 3, 1 / 3])
    none = torch.full((1, 2, 2), 255)
    assert balanced_weights(none, none != 255).sum().item() == 0.0
    only_fg = torch.tensor([[[1, 2], [2, 255]]])
    assert balanced_weights(only_fg, only_fg != 255).flatten().tolist() == pytest.approx([1 / 3] * 3 + [0])


@pytest.mark.parametrize("form", ["pixelwise", "scalar"])
def test_ignored_pixels_contribute_nothing(form):
    torch.manual_seed(0)
    main, aux = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    labels = torch.randint(0, 3, (2, 4, 4))
    labels[0, :2] = 255
    labels[1, 3, 3] = 255
    loss = UncertaintyRectifiedLoss(form=form, mean_over="valid")
    before = loss(main, labels, aux)
    ignored = (labels == 255).unsqueeze(1).expand_as(main)
    main2, aux2 = main.clone(), aux.clone()
    main2[ignored] = torch.randn(int(ignored.sum())) * 50
    aux2[ignored] = torch.randn(int(ignored.sum())) * 50
    after = loss(main2, labels, aux2)
    for key in ("loss", "pcl", "kl_main", "kl_aux", "confidence"):
        assert after[key].item() == pytest.approx(before[key].item(), rel=1e-6), key
    # a labelled pixel does matter
    main2[0, 0, 3, 0] += 5.0  # one channel of a labelled pixel
    assert loss(main2, labels, aux2)["loss"].item() != pytest.approx(before["loss"].item())
    # nothing labelled: zero loss that still back-propagates
    nothing = torch.full_like(labels, 255)
    m = main.clone().requires_grad_(True)
    out = loss(m, nothing, aux)
    out["loss"].backward()
    assert out["loss"].item() == 0.0 and m.grad is not None


@pytest.mark.parametrize("form", ["pixelwise", "scalar"])
def test_gradients_reach_both_heads(form):
    torch.manual_seed(1)
    main = torch.randn(2, 3, 3, 3, requires_grad=True)
    aux = torch.randn(2, 3, 3, 3, requires_grad=True)
    labels = torch.randint(0, 3, (2, 6, 6))  # logits at stride 2: upsampled to the labels
    out = UncertaintyRectifiedLoss(form=form)(main, labels, aux)
    out["loss"].backward()
    assert main.grad is not None and main.grad.abs().sum() > 0
    assert aux.grad is not None and aux.grad.abs().sum() > 0
    for key in ("pcl", "kl_main", "kl_aux", "confidence"):
        assert not out[key].requires_grad


def test_logits_are_resized_and_computed_in_float32():
    torch.manual_seed(2)
    main, aux = torch.randn(1, 3, 2, 2), torch.randn(1, 3, 2, 2)
    labels = torch.randint(0, 3, (1, 4, 4))
    loss = UncertaintyRectifiedLoss()
    full = loss(main, labels, aux)["loss"]
    half = loss(main.half(), labels, aux.half())["loss"]
    assert full.dtype == torch.float32 and half.dtype == torch.float32
    up = torch.nn.functional.interpolate
    same = loss(
        up(main, size=(4, 4), mode="bilinear", align_corners=False),
        labels,
        up(aux, size=(4, 4), mode="bilinear", align_corners=False),
    )["loss"]
    assert full.item() == pytest.approx(same.item(), rel=1e-6)


def test_bad_inputs_and_keywords_raise():
    z = torch.zeros(1, 3, 2, 2)
    with pytest.raises(ConfigError, match="auxiliary head"):
        UncertaintyRectifiedLoss()(z, torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(DataError, match=r"outside 0\.\.2"):
        UncertaintyRectifiedLoss()(z, torch.full((1, 2, 2), 5), z)
    with pytest.raises(DataError, match="auxiliary logits"):
        UncertaintyRectifiedLoss()(z, torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1, 4, 2, 2))
    with pytest.raises(ConfigError, match="eps"):
        UncertaintyRectifiedLoss(eps=1.0)
    with pytest.raises(ConfigError, match="direction_weights"):
        UncertaintyRectifiedLoss(direction_weights=(1.0,))
    with pytest.raises(ConfigError, match="pixelwise"):
        UncertaintyRectifiedLoss(form="pixel")
    with pytest.raises(ConfigError, match="compat"):
        LOSSES.build("uncertainty_rectified", compat="authors")
    assert UncertaintyRectifiedLoss.needs_aux_head is True
