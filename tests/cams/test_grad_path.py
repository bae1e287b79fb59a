"""The CAM stage's gradient path: only ``needs_grad`` extractors get autograd, ``needs_labels``
ones get labels/flip/scale and fuse the mirror themselves, and ``make-cams`` writes gradient
CAMs normalised per branch before the fusion (AMR's order)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.cams.toys import ConvToy
from tests.stage_context import cpu_context
from wsss.cams.extractors import BoundExtractor, get_extractor
from wsss.cams.files import load_cam
from wsss.cams.inference import max_normalise, multiscale_cams
from wsss.config import load_recipe
from wsss.errors import ConfigError
from wsss.stages import make_cams
from wsss.stages.context import StageContext

IMAGES = [
    torch.randint(0, 256, (3, 32, 40), generator=torch.Generator().manual_seed(0), dtype=torch.uint8),
    torch.randint(0, 256, (3, 32, 40), generator=torch.Generator().manual_seed(1), dtype=torch.uint8),
]
LABELS = [torch.tensor([1.0, 0.0, 1.0]), torch.tensor([0.0, 1.0, 0.0])]


class Recording:
    """A plain (or, with flags, gradient/labelled) extractor that records how it was called."""

    def __init__(self, needs_grad: bool = False, needs_labels: bool = False) -> None:
        self.needs_grad, self.needs_labels = needs_grad, needs_labels
        self.conv = torch.nn.Conv2d(3, 4, 16, stride=16)  # parameters that would build a graph
        self.calls: list[dict] = []

    def __call__(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        self.calls.append({"grad": torch.is_grad_enabled(), "args": args, "kwargs": kwargs, "n": len(x)})
        maps = self.conv(x)
        return torch.stack([maps], 1) if self.needs_labels else maps


@pytest.mark.parametrize("batched", [True, False])
def test_plain_extractors_run_without_a_graph(batched: bool) -> None:
    fn = Recording()
    with torch.enable_grad():  # even when the caller has autograd on
        out = multiscale_cams(fn, IMAGES, LABELS, [32.0, 48.0], flip=True, batched=batched)
    assert fn.calls and not any(c["grad"] for c in fn.calls)
    assert all(c["args"] == () and c["kwargs"] == {} for c in fn.calls)  # the old call form
    assert not any(o.requires_grad for o in out) and out[0].shape == (3, 32, 40)


@pytest.mark.parametrize("batched", [True, False])
def test_gradient_extractors_get_autograd_and_give_detached_maps(batched: bool) -> None:
    fn = Recording(needs_grad=True)
    out = multiscale_cams(fn, IMAGES, LABELS, [32.0], flip=True, batched=batched)
    assert fn.calls and all(c["grad"] for c in fn.calls)
    assert not any(o.requires_grad for o in out)


def test_labelled_extractors_get_labels_flip_and_scale_and_fuse_the_mirror() -> None:
    fn = Recording(needs_labels=True)
    out = multiscale_cams(fn, IMAGES, LABELS, [32.0, 48.0], flip=True, batched=True)
    assert [c["n"] for c in fn.calls] == [2, 2]  # no mirrored rows stacked by the caller
    assert [c["kwargs"] for c in fn.calls] == [{"flip": True, "scale": 32.0}, {"flip": True, "scale": 48.0}]
    assert torch.equal(fn.calls[0]["args"][0], torch.stack(LABELS))
    assert out[0].shape == (1, 3, 32, 40)  # per-branch sums
    # each pass added once, un-mirrored: the sum of the two direct passes, nothing more
    plain = Recording()
    plain.conv = fn.conv
    direct = multiscale_cams(plain, IMAGES, LABELS, [32.0, 48.0], flip=False)
    torch.testing.assert_close(out[0][0], direct[0])


def _ctx(tmp_path: Path, *sets: str) -> StageContext:
    recipe = load_recipe(
        "synth/irn-nano", ["cams.scales=[1.0, 0.5]", "cams.stride=4", "cams.norm=max", *sets]
    )
    return cpu_context(recipe, tmp_path / "run")


def _items() -> list[dict]:
    return [
        {"image": img, "labels": lab, "name": f"im{i}", "size": tuple(img.shape[-2:])}
        for i, (img, lab) in enumerate(zip(IMAGES, LABELS))
    ]


def test_make_cams_stores_branch_normalised_fused_gradcams(tmp_path: Path) -> None:
    model = ConvToy(classes=3, branches=2, seed=2).eval()
    ctx = _ctx(tmp_path, "cams.extractor=gradcam", "cams.extractor_args.fusion=[0.25, 0.75]")
    make_cams.write_cams(ctx, model, _items(), tmp_path / "cams")
    fn = BoundExtractor(get_extractor("gradcam", fusion=[0.25, 0.75]), model)
    sums = multiscale_cams(
        fn, IMAGES, LABELS, [1.0, 0.5], scale_mode="relative", output_stride=4, target_stride=4
    )
    for i, lab in enumerate(LABELS):
        rec = load_cam(tmp_path / "cams" / f"im{i}.npz")
        keys = torch.nonzero(lab).flatten()
        assert rec.keys.tolist() == (keys + 1).tolist() and rec.norm == "max" and rec.stride == 4
        assert rec.cams.shape == (len(keys), 8, 10) and rec.size == (32, 40)
        per_branch = sums[i][:, keys]
        amr = 0.25 * max_normalise(per_branch[0]) + 0.75 * max_normalise(per_branch[1])
        np.testing.assert_allclose(rec.cams.astype(np.float32), amr.numpy(), atol=2e-3)
        if i == 0:  # normalising after the fusion instead would store other maps here
            after = max_normalise(0.25 * per_branch[0] + 0.75 * per_branch[1])
            assert np.abs(after.numpy() - amr.numpy()).max() > 0.05


def test_make_cams_refuses_gradient_extractors_with_multicrop(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, "cams.extractor=gradcam", "cams.window=32")
    with pytest.raises(ConfigError, match=r"cams\.window"):
        make_cams.write_cams(ctx, ConvToy(), _items(), tmp_path / "cams")


def test_make_cams_advcam_on_the_plain_cam(tmp_path: Path) -> None:
    from wsss.models.cam.plain_cam import PlainCAM

    if not hasattr(PlainCAM, "gradcam_branches"):
        pytest.skip("PlainCAM.gradcam_branches is not written yet (the AMR model work adds it)")
    from wsss.registry import CAM_MODELS

    torch.manual_seed(0)
    model = CAM_MODELS.build("cam", backbone="mobilenet_v2", pretrained="offline", num_classes=4).eval()
    with torch.no_grad():  # a random head can be negative everywhere for a class (a zero map)
        model.classifier.weight.abs_()
    ctx = _ctx(tmp_path, "cams.extractor=advcam", "cams.extractor_args.steps=2")
    make_cams.write_cams(ctx, model, _items(), tmp_path / "cams")
    for i, lab in enumerate(LABELS):
        rec = load_cam(tmp_path / "cams" / f"im{i}.npz")
        assert rec.keys.tolist() == (torch.nonzero(lab).flatten() + 1).tolist()
        assert rec.cams.shape == (int(lab.sum()), 8, 10) and rec.norm == "max"
        # GAP-logit scores give small maps (~1e-4 here), so max-normalising's +1e-5 shows
        assert (rec.cams.max(axis=(1, 2)) > 0.9).all() and rec.cams.min() >= 0
