"""IRN's branches of the affinity stages: training steps on a constructed boundary, the walk's CAM
source, and the whole chain (plain CAM → stride-4 CAMs → confident labels → IRN → walk) end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import wsss.stages.random_walk as random_walk_stage
from wsss.cams.files import CamRecord
from wsss.config import load_recipe
from wsss.config.schema import AffinityConfig
from wsss.data.palette import read_label_png
from wsss.data.synth import generate_synth
from wsss.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from wsss.engine.optim import LegacyPolySGD
from wsss.models.affinity.irn import IRNet, irn_refine
from wsss.pipeline import run_pipeline
from wsss.refine.random_walk import WALK_PRESETS, pool_to_grid
from wsss.registry import AFFINITY_MODELS
from wsss.stages.affinity_kinds import cams_for_walk, training_loss, walk_image
from wsss.stages.training import build_optimizer

CPU = torch.device("cpu")


def _irn(with_displacement: bool = True) -> IRNet:
    """IRN on a randomly initialised (frozen) MobileNetV2: no weight file needed."""
    torch.manual_seed(0)
    return AFFINITY_MODELS.build("irn", backbone="mobilenet_v2", with_displacement=with_displacement)


def _two_region_batch(size: int = 64) -> tuple[dict[str, torch.Tensor], list[int]]:
    """Red background left of column ``x0``, a blue class-1 region right of it; ``x0`` = 24, 28, 32, 36."""
    torch.manual_seed(1)
    b = 4
    image = torch.zeros(b, 3, size, size)
    mask = torch.zeros(b, size, size, dtype=torch.long)
    edges = [24 + 4 * i for i in range(b)]
    for i, x0 in enumerate(edges):
        image[i, 0, :, :x0] = 1.0
        image[i, 2, :, x0:] = 1.0
        mask[i, :, x0:] = 1
    image = image + 0.05 * torch.randn_like(image)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    batch = {
        "image": (image - mean) / std,
        "mask": mask,
        "padding": torch.zeros(b, size, size, dtype=torch.bool),
    }
    return batch, edges


def test_irn_training_steps_learn_the_label_boundary() -> None:
    """40 steps of IRN's loss with IRN's optimiser: the loss falls and the boundary map peaks on the
    label boundary (grid column x0/4 − 1 or x0/4) rather than inside either region."""
    model = _irn()
    cfg = AffinityConfig(
        model="irn", backbone="mobilenet_v2", lr=0.1, weight_decay=1e-4, compat="authors_code"
    )
    steps = 40
    opt, sched = build_optimizer(model, cfg, steps, "clean")
    assert isinstance(opt, LegacyPolySGD) and sched is not None
    assert [(g["name"], g["lr"], g["weight_decay"]) for g in opt.param_groups] == [
        ("edge", pytest.approx(0.1), 1e-4),
        ("displacement", pytest.approx(1.0), 1e-4),
    ]
    batch, edges = _two_region_batch()
    model.train()
    losses = []
    for _ in range(steps):
        loss = training_loss(model, model, batch, cfg, CPU)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:3])
    model.eval()
    with torch.no_grad():
        edge = model.edge_map(batch["image"][:1])[0, 0].mean(dim=0)  # column profile of image 0
    col = edges[0] // 4
    boundary = float(edge[col - 1 : col + 1].max())
    inside = torch.cat([edge[: col - 1], edge[col + 1 :]])
    assert boundary > float(inside.max()) + 0.05, edge.tolist()


def _sparse_labels(size: int, start: int, step: int) -> dict[str, torch.Tensor]:
    """Labels only at rows/columns ``start + step·i`` (background left, class 1 right), 255 elsewhere."""
    mask = torch.full((2, size, size), 255, dtype=torch.long)
    mask[:, start::step, start::step] = 0
    mask[:, start::step, size // 2 + start :: step] = 1
    torch.manual_seed(3)
    image = torch.randn(2, 3, size, size)
    return {"image": image, "mask": mask, "padding": torch.zeros(2, size, size, dtype=torch.bool)}


@torch.no_grad()
def _loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], cfg: AffinityConfig) -> float:
    return float(training_loss(model, model, batch, cfg, CPU)["loss"])


def test_training_labels_sample_where_each_authors_resize_does() -> None:
    """IRN's grid takes each 4×4 block's centre pixel (PIL nearest, 4i+2), the AffinityNet's each 8×8
    block's top-left one (OpenCV nearest, 8i): labels elsewhere are invisible, and with none visible
    every pair is masked out and the loss is exactly 0."""
    irn, irn_cfg = _irn(with_displacement=False), AffinityConfig(model="irn", crop_size=64)
    assert _loss(irn, _sparse_labels(64, 2, 4), irn_cfg) > 0
    assert _loss(irn, _sparse_labels(64, 0, 4), irn_cfg) == 0
    psa = AFFINITY_MODELS.build(
        "psa",
        backbone="mobilenet_v2",
        levels=["stage3", "stage4"],
        level_channels=[8, 8],
        embed_dim=8,
        output_stride=8,
    )
    psa_cfg = AffinityConfig(model="psa", crop_size=64)
    assert _loss(psa, _sparse_labels(64, 0, 8), psa_cfg) > 0
    assert _loss(psa, _sparse_labels(64, 4, 8), psa_cfg) == 0


def test_the_walk_reads_the_files_strided_maps_at_irns_stride() -> None:
    """A stride-4 file is walked as stored (pooling its upsampled maps would blur the one-cell peak);
    other strides, and the AffinityNet, get the full-resolution maps."""
    grid = np.zeros((1, 4, 5), dtype=np.float16)
    grid[0, 1, 2] = 1.0
    rec = CamRecord(keys=np.array([3]), cams=grid, size=(14, 19), stride=4, norm="max")
    model = _irn(with_displacement=False).eval()
    cams, stride = cams_for_walk(model, rec, CPU)
    assert stride == 4 and cams.dtype == torch.float32
    assert torch.equal(cams, torch.from_numpy(grid.astype(np.float32)))
    assert not torch.equal(pool_to_grid(rec.full_resolution(), 4), cams)  # what the old path walked
    full = CamRecord(keys=np.array([3]), cams=rec.full_resolution().numpy(), size=(14, 19), stride=1)
    cams1, stride1 = cams_for_walk(model, full, CPU)
    assert stride1 == 1 and cams1.shape == (1, 14, 19)
    psa = AFFINITY_MODELS.build(
        "psa",
        backbone="mobilenet_v2",
        levels=["stage3", "stage4"],
        level_channels=[32, 1280],
        embed_dim=16,
        output_stride=8,
    )
    assert cams_for_walk(psa, rec, CPU)[1] == 1
    # walk_image on the stored grid is IRN's walk of exactly that grid
    torch.manual_seed(2)
    image = torch.randn(3, 14, 19)
    keys = torch.tensor([3])
    settings = WALK_PRESETS["irn"]
    got = walk_image(model, image, cams, keys, settings, cam_stride=4)
    want = irn_refine(cams, image, model, settings, keys).numpy()
    assert got.shape == (14, 19) and np.array_equal(got, want)
    assert set(np.unique(got)) <= {0, 3} and (got == 3).any()
    with pytest.raises(ValueError, match="full resolution"):
        walk_image(psa, image, cams, keys, WALK_PRESETS["transcam"], cam_stride=4)


def test_affinitynet_walk_builds_the_background_before_pooling(monkeypatch: pytest.MonkeyPatch) -> None:
    """PSA (α 16) with affinities forced to 0, so the walk moves nothing: every 8×8 block holds 16 CAM
    pixels at 1 and 48 at 0, i.e. fg 0.25 and bg mean(0, 1, 1, 1) = 0.75 → background everywhere.
    Pooling first would give bg (1 − 0.25)^16 ≈ 0.01 and label every pixel with the class."""
    psa = AFFINITY_MODELS.build(
        "psa",
        backbone="mobilenet_v2",
        levels=["stage3", "stage4"],
        level_channels=[8, 8],
        embed_dim=8,
        output_stride=8,
    ).eval()
    monkeypatch.setattr(
        "wsss.stages.affinity_kinds.pair_affinities", lambda emb, src, dst: emb.new_zeros(1, src.numel())
    )
    cams = torch.zeros(1, 16, 16)
    cams[0, ::2, ::2] = 1.0
    labels = walk_image(psa, torch.randn(3, 16, 16), cams, torch.tensor([6]), WALK_PRESETS["psa"])
    assert labels.shape == (16, 16) and (labels == 0).all()
    brighter = cams.clone()
    brighter[0, :, ::2] = 1.0
    brighter[0, 1::2, 1::4] = 1.0  # 5/8 of the pixels at 1: fg 0.625 > bg 3/8
    labels = walk_image(psa, torch.randn(3, 16, 16), brighter, torch.tensor([6]), WALK_PRESETS["psa"])
    assert (labels == 6).all()


TINY = [
    "stages=[train-cls,make-cams,make-labels,train-affinity,random-walk]",
    "classifier.pretrained=null",
    "classifier.model_args={output_stride: 16}",
    "classifier.epochs=1",
    "classifier.batch_size=6",
    "classifier.num_workers=0",
    "classifier.resize_long=[56, 72]",
    "classifier.crop_size=64",
    "cams.scales=[1.0, 0.5]",
    "labels.crf_backend=torch",
    "labels.workers=1",
    "affinity.pretrained=null",
    "affinity.crop_size=64",
    "affinity.epochs=1",
    "affinity.batch_size=4",
    "affinity.num_workers=0",
]


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    generate_synth(root, num_classes=3, num_train=12, num_val=2, size=64, seed=5, progress=False)
    return root


def test_irn_chain_writes_one_walked_mask_per_image(
    synth_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    strides: list[int] = []

    def spy(model: torch.nn.Module, rec: CamRecord, device: torch.device) -> tuple[torch.Tensor, int]:
        cams, stride = cams_for_walk(model, rec, device)
        strides.append(stride)
        return cams, stride

    monkeypatch.setattr(random_walk_stage, "cams_for_walk", spy)
    recipe = load_recipe("synth/irn-nano", [f"data.root={synth_root}", *TINY])
    run = tmp_path / "run"
    record = run_pipeline(recipe, run, device="cpu")
    assert list(record["stages"]) == [
        "train-cls",
        "make-cams",
        "make-labels",
        "train-affinity",
        "random-walk",
    ]
    assert (run / "train-affinity" / "model.safetensors").is_file()
    cams = sorted(p.stem for p in (run / "cams").glob("*.npz"))
    pseudo = sorted((run / "pseudo").glob("*.png"))
    assert len(cams) == 12 and [p.stem for p in pseudo] == cams
    assert strides == [4] * 12  # every image walked its stored stride-4 CAM
    for path in pseudo:
        mask = read_label_png(path)
        keys = np.load(run / "cams" / f"{path.stem}.npz")["keys"].tolist()
        assert mask.shape == (64, 64)
        assert set(np.unique(mask).tolist()) <= {0, *keys}  # no 255, no class the image is not tagged with
    miou = record["stages"]["random-walk"]["metrics"]["miou"]
    assert 0.0 <= miou <= 1.0
