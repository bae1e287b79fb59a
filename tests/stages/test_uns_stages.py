"""SPU's UNS stages: the network, the maps it stores, and the run that swaps the walk's sources."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.stage_context import cpu_context
from wsss.cams.files import cam_path, load_cam
from wsss.cli import main
from wsss.config import load_recipe
from wsss.data.synth import generate_synth
from wsss.errors import ConfigError
from wsss.models.seg.uns import build_uns
from wsss.pipeline import run_pipeline
from wsss.refine.pairs import downscale_labels
from wsss.stages.context import build_dataset
from wsss.stages.make_uns_cams import uns_maps

TINY = [
    "classifier.pretrained=null",
    "classifier.epochs=1",
    "classifier.batch_size=6",
    "classifier.num_workers=0",
    "classifier.resize_long=[56, 72]",
    "classifier.crop_size=64",
    "classifier.validation_split=null",
    "cams.scales=[1.0, 0.5]",
    "labels.workers=1",
    "uns.pretrained=null",
    "uns.epochs=1",
    "uns.batch_size=6",
    "uns.num_workers=0",
    "uns.crop_size=64",
    "uns.cam_scales=[1.0]",
    "uns.labels.workers=1",
]


def test_uns_maps_normalise_only_where_the_first_labels_are_not_background() -> None:
    logits = torch.zeros(3, 2, 2)
    logits[1] = torch.tensor([[2.0, 0.0], [0.0, -2.0]])  # class 1; class 2 absent (logit 0)
    first = torch.tensor([[1, 0], [255, 0]])
    maps = uns_maps(logits, np.array([1]), first)
    p = torch.softmax(logits, dim=0)[1]
    lo, hi = p.min(), p.max()
    want = torch.where(first != 0, (p - lo) / (hi - lo + 1e-5), p)
    torch.testing.assert_close(maps[0], want)
    assert maps.shape == (1, 2, 2) and float(maps[0, 0, 0]) == pytest.approx(1.0, abs=1e-4)
    assert uns_maps(logits, np.array([], dtype=np.int64), first).shape[0] == 0


def test_the_first_labels_are_read_at_each_cells_corner() -> None:
    """make-uns-cams reads the first labels on the maps' grid with the shared corner downscale."""
    label = torch.arange(1, 26, dtype=torch.uint8).reshape(5, 5)
    got = downscale_labels(label, 2, "corner")
    assert got.tolist() == [[1, 3, 5], [11, 13, 15], [21, 23, 25]]
    assert downscale_labels(label[:3, :3], 2, "corner").tolist() == [[1, 3], [11, 13]]  # ⌈3/2⌉ cells


def test_the_network_is_conditioned_on_the_tags() -> None:
    torch.manual_seed(0)
    net = build_uns("mobilenet_v2", num_classes=4, output_stride=16).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        a = net(x, torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]]))
        b = net(x, torch.tensor([[0.0, 1.0, 0.0], [0.0, 1.0, 1.0]]))
    assert a.logits.shape == a.aux.shape == (2, 4, 4, 4)  # MobileNetV2's stride-8 level resized to 16
    assert not torch.equal(a.logits[0], b.logits[0]) and torch.equal(a.logits[1], b.logits[1])
    with pytest.raises(ConfigError, match="do not fit 2 images and 3 foreground classes"):
        net(x, torch.ones(2, 4))
    groups = {g["name"]: g for g in net.optimizer_groups(5e-6, 1e-4, 20.0)}
    assert groups["heads"]["lr"] == pytest.approx(1e-4)
    assert {id(p) for p in net.main_head.parameters()} <= {id(p) for p in groups["heads"]["params"]}


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    generate_synth(root, num_classes=3, num_train=12, num_val=2, size=64, seed=11, progress=False)
    return root


def test_a_run_refines_the_cams_and_the_walk_reads_the_refined_ones(synth_root: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    sets = [item for o in [f"data.root={synth_root}", *TINY] for item in ("--set", o)]
    argv = ["run", "synth/spu-nano", "--out", str(run), "--device", "cpu", *sets]
    stages = "train-cls,make-cams,eval-cams,make-labels,train-uns,make-uns-cams"
    assert main([*argv, "--stages", stages]) == 0
    record = json.loads((run / "run.json").read_text())
    uns = record["stages"]["make-uns-cams"]["metrics"]
    assert uns["written"] == 12 and "train" in uns["seeds"]["splits"] and "miou" in uns["labels"]
    assert set(record["stages"]["train-uns"]["metrics"]["final_losses"]) >= {"loss"}
    assert (run / "eval" / "uns_cams.json").is_file() and (run / "eval" / "uns_labels.json").is_file()
    recipe = load_recipe("synth/spu-nano", [f"data.root={synth_root}"])
    ds = build_dataset(recipe.data, "train")
    for i, name in enumerate(ds.names):
        rec = load_cam(cam_path(run / "uns-cams", name))
        assert rec.keys.tolist() == (np.flatnonzero(ds.labels[i]) + 1).tolist()
        assert rec.cams.min() >= 0 and rec.cams.max() <= 1.0 + 1e-3 and rec.stride == recipe.cams.stride
        assert (run / "uns-labels" / f"{name}.png").is_file()
    ctx = cpu_context(recipe, run)
    assert ctx.walk_cam_dir == run / "uns-cams" and ctx.affinity_label_dir == run / "uns-labels"
    plain = cpu_context(load_recipe("synth/irn-nano", [f"data.root={synth_root}"]), run)
    assert plain.walk_cam_dir == run / "cams" and plain.affinity_label_dir == run / "labels"


def test_uns_stages_without_the_section_are_refused(synth_root: Path, tmp_path: Path) -> None:
    recipe = load_recipe("synth/spu-nano", [f"data.root={synth_root}", "uns=null"])
    with pytest.raises(ConfigError, match="need the recipe's 'uns' section"):
        run_pipeline(recipe, tmp_path / "run", device="cpu")
    assert not (tmp_path / "run" / "train-cls").exists()
