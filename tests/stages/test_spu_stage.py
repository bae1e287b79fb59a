"""SPU stage 1 through the pipeline: both nets train, the plain net's CAMs are written and scored."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from wsss.cams.files import cam_path, load_cam
from wsss.cli import main
from wsss.config import load_recipe
from wsss.data.synth import generate_synth
from wsss.registry import CAM_MODELS
from wsss.stages.context import build_dataset

TINY = [
    "classifier.pretrained=null",
    "classifier.epochs=1",
    "classifier.batch_size=6",
    "classifier.num_workers=0",
    "classifier.resize_long=[56, 72]",
    "classifier.crop_size=64",
    "classifier.validation_size=64",
    "cams.scales=[1.0, 0.5]",
]


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    generate_synth(root, num_classes=3, num_train=12, num_val=4, size=64, seed=7, progress=False)
    return root


def test_wsss_run_trains_the_pair_and_writes_the_plain_nets_cams(synth_root: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    sets = [item for o in [f"data.root={synth_root}", *TINY] for item in ("--set", o)]
    argv = ["run", "synth/spu-nano", "--out", str(run), "--device", "cpu", *sets]
    assert main([*argv, "--stages", "train-cls,make-cams,eval-cams"]) == 0
    record = json.loads((run / "run.json").read_text())
    metrics = record["stages"]["train-cls"]["metrics"]
    assert set(metrics["final_losses"]) == {"loss", "cls", "cls_spm", "pt"}
    assert metrics["validation"]["images"] == 4  # the val split's tags, scored on the plain net
    weights = load_file(run / "train-cls" / "model.safetensors")
    assert any(k.startswith("spm.backbone.inserts.stage3.") for k in weights)
    assert not any(k.startswith("plain.backbone.inserts") for k in weights)
    # one CAM file per image, holding exactly its tagged classes, values in [0, 1]
    ds = build_dataset(load_recipe("synth/spu-nano", [f"data.root={synth_root}"]).data, "train")
    assert len(list((run / "cams").glob("*.npz"))) == len(ds) == 12
    for i, name in enumerate(ds.names):
        cam = load_cam(cam_path(run / "cams", name))
        assert cam.keys.tolist() == (torch.nonzero(torch.from_numpy(ds.labels[i]))[:, 0] + 1).tolist()
        assert float(cam.cams.min()) >= 0.0 and float(cam.cams.max()) <= 1.0 + 1e-6
    # the model the files came from makes its CAMs with the plain net
    model = CAM_MODELS.build("spu", backbone="mobilenet_v2", num_classes=4, output_stride=16)
    model.load_state_dict(weights)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model.eval().extract(x), model.plain.extract(x))
