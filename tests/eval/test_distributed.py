"""All-reduce of confusion counts across a 2-process gloo group on CPU."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from wsss.eval.confusion import ConfusionMatrix
from wsss.eval.sweep import ThresholdSweep

WORLD = 2
NUM_CLASSES = 4
THRESHOLDS = [0.1, 0.3, 0.5]


def _data(n_images: int = 6):
    """The same deterministic images in every process."""
    g = torch.Generator().manual_seed(7)
    out = []
    for _ in range(n_images):
        gt = torch.randint(0, NUM_CLASSES, (6, 5), generator=g)
        gt[0, 0] = 255
        pred = torch.randint(0, NUM_CLASSES, (6, 5), generator=g)
        cams = torch.rand(2, 6, 5, generator=g)
        out.append((pred, gt, cams, [1, 3]))
    return out


def _worker(rank: int, store: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    try:
        cm = ConfusionMatrix(NUM_CLASSES)
        sweep = ThresholdSweep(NUM_CLASSES, THRESHOLDS)
        for pred, gt, cams, keys in _data()[rank::WORLD]:  # each rank sees its own half
            cm.update(pred, gt)
            sweep.update(cams, keys, gt)
        local = cm.matrix.clone()
        cm.all_reduce()
        sweep.all_reduce()
        torch.save(
            {"local": local, "global": cm.matrix, "sweep": sweep.matrices(), "images": sweep.images},
            os.path.join(out_dir, f"rank{rank}.pt"),
        )
    finally:
        dist.destroy_process_group()


def test_all_reduce_over_two_gloo_processes_gives_full_data_matrix(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=WORLD, join=True)
    full = ConfusionMatrix(NUM_CLASSES)
    full_sweep = ThresholdSweep(NUM_CLASSES, THRESHOLDS)
    for pred, gt, cams, keys in _data():
        full.update(pred, gt)
        full_sweep.update(cams, keys, gt)
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    assert not torch.equal(results[0]["local"], full.matrix)  # each rank alone saw only part
    assert torch.equal(results[0]["local"] + results[1]["local"], full.matrix)
    for res in results:
        assert torch.equal(res["global"], full.matrix)
        assert torch.equal(res["sweep"], full_sweep.matrices())
        assert res["images"] == 6
