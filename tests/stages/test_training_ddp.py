"""The shared training loop under DDP (2 gloo processes) ends with the weights of a single
process trained on the same global batches."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from tests.stage_context import cpu_context
from wsss.config import recipe_from_dict
from wsss.stages.training import train_loop

N = 8  # samples; batch = N, so every step's global batch is the whole dataset in any order


class Points(torch.utils.data.Dataset):
    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(N, 5, generator=g)
        self.y = torch.randn(N, 2, generator=g)

    def __len__(self) -> int:
        return N

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "y": self.y[i]}


def _train(run_dir: Path) -> dict[str, torch.Tensor]:
    recipe = recipe_from_dict({"seed": 3})
    cfg = recipe.classifier
    cfg.epochs, cfg.batch_size, cfg.num_workers = 4, N, 0
    cfg.optimizer, cfg.schedule, cfg.lr, cfg.weight_decay = "sgd", "poly", 0.1, 0.0
    ctx = cpu_context(recipe, run_dir)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 2))

    def step(net: nn.Module, batch: dict, _: object) -> dict[str, torch.Tensor]:
        return {"loss": nn.functional.mse_loss(net(batch["x"]), batch["y"])}

    train_loop(
        ctx, name="toy", model=model, dataset=Points(), cfg=cfg, step_fn=step, state_path=run_dir / "state.pt"
    )
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _worker(rank: int, world: int, store: str, out: str) -> None:
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank)})
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        weights = _train(Path(out) / "run")
        torch.save(weights, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ddp_matches_single_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    single = _train(tmp_path / "single")
    mp.spawn(_worker, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for key, value in single.items():
        assert torch.equal(ranks[0][key], ranks[1][key])  # DDP keeps replicas identical
        assert torch.allclose(ranks[0][key], value, atol=1e-6)
    # and training actually moved the weights
    torch.manual_seed(0)
    init = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 2)).state_dict()
    assert any(not torch.allclose(init[k], single[k]) for k in single)
