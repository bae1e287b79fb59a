"""UniA's objective: the online labels it makes, which terms run at which iteration, the label switches."""

from __future__ import annotations

import pytest
import torch

from wsss.engine.progress import TrainProgress
from wsss.errors import ConfigError
from wsss.losses.unia import balanced_seg_loss, distribution_loss, foreground_mask
from wsss.losses.unia_objective import UniAObjective
from wsss.registry import CAM_MODELS, METHODS

HEAD = {
    "num_heads": 4,
    "pooling_size": 4,
    "hidden_dim": 32,
    "proj_hidden": 48,
    "proj_bottleneck": 16,
    "mask_heads": 4,
}
STARTS = {"ptc": 0, "aff": 0, "dis": 0, "seg": 10, "reg": 10}


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return CAM_MODELS.build(
        "unia", backbone="vit_tiny", num_classes=4, img_size=32, decoder_channels=16, head_args=HEAD
    ).train()


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    return torch.randn(2, 3, 32, 32), torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])


def _objective(**kw: object) -> UniAObjective:
    args = {"starts": STARTS, "cam_scales": (1.0, 0.5), "par_dilations": (1, 2), "par_iters": 2}
    return METHODS.build_with_compat("unia", "classifier.method", {**args, **kw}, kw.pop("compat", "clean"))


def test_terms_start_at_their_iteration_and_every_term_runs_after_warm_up() -> None:
    model, (x, y) = _model(), _batch()
    objective = _objective()
    early = objective.step(model, x, y, TrainProgress(step=9, total_steps=20, epoch=0))
    assert set(early) == {"loss", "cls", "aux_cls", "ptc", "aff", "dis"}
    late = objective.step(model, x, y, TrainProgress(step=10, total_steps=20, epoch=0))
    assert set(late) == {"loss", "cls", "aux_cls", "ptc", "aff", "dis", "seg", "reg"}
    assert all(torch.isfinite(v) for v in late.values())
    w = objective.weights
    expected = (
        late["cls"] + late["aux_cls"] + sum(w[t] * late[t] for t in ("ptc", "aff", "dis", "seg", "reg"))
    )
    assert torch.allclose(late["loss"], expected)
    late["loss"].backward()
    assert float(model.decoder.cls_conv.weight.grad.abs().sum()) > 0
    assert float(model.uncertainty.input_proj.mlp[0].weight.grad.abs().sum()) > 0


def test_a_zero_weight_switches_a_term_off() -> None:
    model, (x, y) = _model(), _batch()
    out = _objective(weights={"reg": 0.0}).step(model, x, y, TrainProgress(50, 100, 0))
    assert "reg" not in out and "seg" in out


def test_online_labels_are_label_maps_of_present_classes() -> None:
    model, (x, y) = _model(), _batch()
    objective = _objective()
    with torch.no_grad():
        out = model(x)
    labels = objective.pseudo_labels(model, x, y, out.affinity, iteration=0)
    assert set(labels) == {"p1", "p2", "p3", "final", "aux"}
    for name, label in labels.items():
        assert label.shape == (2, 32, 32), name
        # image 0 is tagged with classes 1 and 3, image 1 with class 2
        assert set(label[0].unique().tolist()) <= {0, 1, 3, 255}, name
        assert set(label[1].unique().tolist()) <= {0, 2, 255}, name


def _fake_labels(value_aux: int, value_final: int) -> dict[str, torch.Tensor]:
    base = torch.zeros(2, 32, 32, dtype=torch.long)
    return {
        "p1": base.clone(),
        "p2": base.clone(),
        "p3": base.clone(),
        "final": base.clone().fill_(value_final),
        "aux": base.clone().fill_(value_aux),
    }


def test_distribution_target_switches_from_aux_to_fused_label_at_aux2final() -> None:
    model, (x, y) = _model(), _batch()
    objective = _objective(aux2final=5)
    out = model(x)
    labels = _fake_labels(value_aux=0, value_final=0)
    labels["aux"][:, :, :16] = 1  # aux: left half foreground; fused: right half (a constant map is uniform)
    labels["final"][:, :, 16:] = 2
    before = objective.losses(out, x, y, labels, iteration=4)["dis"]
    after = objective.losses(out, x, y, labels, iteration=5)["dis"]
    assert torch.allclose(before, distribution_loss(foreground_mask(labels["aux"]), out.sampled_mean))
    assert torch.allclose(after, distribution_loss(foreground_mask(labels["final"]), out.sampled_mean))
    assert not torch.allclose(before, after)


def test_affinity_labels_follow_the_switch_but_stay_aux_under_the_released_code() -> None:
    model, (x, y) = _model(), _batch()
    out = model(x)
    labels = _fake_labels(value_aux=255, value_final=1)  # aux all ignored: no positive pair, loss 0
    clean = _objective(aux2final=5).losses(out, x, y, labels, iteration=6)["aff"]
    released = _objective(aux2final=5, compat="authors_code").losses(out, x, y, labels, iteration=6)["aff"]
    assert float(released.detach()) == 0.0
    assert float(clean.detach()) > 0.0


def test_segmentation_trains_on_p2_until_seg2final() -> None:
    model, (x, y) = _model(), _batch()
    out = model(x)
    labels = _fake_labels(value_aux=0, value_final=2)
    objective = _objective(seg2final=30)
    up = torch.nn.functional.interpolate(out.seg, size=(32, 32), mode="bilinear", align_corners=False)
    on_p2 = objective.losses(out, x, y, labels, iteration=20)["seg"]
    on_final = objective.losses(out, x, y, labels, iteration=30)["seg"]
    assert torch.allclose(on_p2, balanced_seg_loss(up, labels["p2"]))
    assert torch.allclose(on_final, balanced_seg_loss(up, labels["final"]))


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ({"weights": {"ptcc": 0.3}}, "did you mean 'ptc'"),
        ({"starts": {"segg": 3}}, "did you mean 'seg'"),
        ({"high": 0.2, "low": 0.3}, "low < high"),
        ({"fusion": "mrc"}, "did you mean 'mcr'"),
    ],
)
def test_bad_settings_name_the_key(args: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        UniAObjective(**args)


def test_mcr_acdc_is_selectable() -> None:
    objective = UniAObjective(fusion="mcr_acdc", acdc_iter=9000)
    assert objective.fusion_args == {"switch_iter": 6000, "acdc_iter": 9000}


def test_full_supervision_reads_the_masks_for_every_label() -> None:
    model, (x, y) = _model(), _batch()
    objective = _objective(supervision="full")
    assert objective.needs_masks
    masks = torch.zeros(2, 32, 32, dtype=torch.long)
    masks[0, :, 16:], masks[1, 8:24, 8:24] = 3, 2
    masks[0, 0, 0] = 255
    out = objective.step(model, x, y, TrainProgress(50, 100, 0), masks=masks)
    ref = objective.losses(model(x), x, y, dict.fromkeys(("p1", "p2", "p3", "final", "aux"), masks), 50)
    # the same network state and labels give the same segmentation term (the uncertainty head samples,
    # so only the label-driven, noise-free terms are compared)
    assert torch.allclose(out["seg"], ref["seg"]) and torch.allclose(out["ptc"], ref["ptc"])
    with pytest.raises(ConfigError, match="masks"):
        objective.step(model, x, y, TrainProgress(50, 100, 0))
