"""The loop tells each step where it is (single-stage methods switch terms by iteration), also after a
resume, and the warm-up poly schedule (ToCo/UniA's PolyWarmupAdamW) gives the hand-computed rates."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from tests.stage_context import cpu_context
from wsss.config import recipe_from_dict
from wsss.engine import TrainProgress, warmup_poly_lr_lambda
from wsss.errors import ConfigError
from wsss.stages.training import build_optimizer, train_loop


class Points(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 6

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"x": torch.full((3,), float(i)), "y": torch.ones(1)}


def _run(tmp_path: Path, epochs: int, seen: list[TrainProgress]) -> None:
    recipe = recipe_from_dict({"seed": 0})
    cfg = recipe.classifier
    cfg.epochs, cfg.batch_size, cfg.num_workers = epochs, 2, 0
    cfg.optimizer, cfg.schedule, cfg.warmup_steps, cfg.lr = "adamw", "warmup_poly", 2, 0.1
    torch.manual_seed(0)
    model = nn.Linear(3, 1)

    def step(net: nn.Module, batch: dict[str, Any], progress: TrainProgress) -> dict[str, torch.Tensor]:
        seen.append(progress)
        return {"loss": nn.functional.mse_loss(net(batch["x"]), batch["y"])}

    train_loop(
        cpu_context(recipe, tmp_path / "run"),
        name="train-toy",
        model=model,
        dataset=Points(),
        cfg=cfg,
        step_fn=step,
        state_path=tmp_path / "state.pt",
    )


def test_each_step_gets_its_global_index_the_total_and_its_epoch(tmp_path: Path) -> None:
    seen: list[TrainProgress] = []
    _run(tmp_path, epochs=2, seen=seen)
    assert seen == [TrainProgress(s, 6, s // 3) for s in range(6)]


def test_the_index_continues_after_a_resume(tmp_path: Path) -> None:
    first: list[TrainProgress] = []
    _run(tmp_path, epochs=1, seen=first)  # one epoch, checkpointed; then the run is extended to two
    rest: list[TrainProgress] = []
    _run(tmp_path, epochs=2, seen=rest)
    assert [p.step for p in first] == [0, 1, 2]
    assert [p.step for p in rest] == [3, 4, 5] and all(p.epoch == 1 for p in rest)


def test_warmup_poly_multipliers_by_hand() -> None:
    lam = warmup_poly_lr_lambda(max_steps=10, warmup_steps=4, warmup_ratio=0.1)
    # linear from 0.1 to 1 over 4 steps: 1 - (1 - s/4)(1 - 0.1)
    assert [lam(s) for s in range(4)] == pytest.approx([0.1, 0.325, 0.55, 0.775])
    # then poly counted from step 0: (1 - s/10)^0.9
    assert lam(4) == pytest.approx(0.6**0.9) and lam(9) == pytest.approx(0.1**0.9)
    assert lam(10) == 0.0 and lam(12) == 0.0
    no_warmup = warmup_poly_lr_lambda(max_steps=10, warmup_steps=0)
    assert no_warmup(0) == 1.0 and no_warmup(5) == pytest.approx(0.5**0.9)
    with pytest.raises(ConfigError, match="warmup_ratio"):
        warmup_poly_lr_lambda(10, 2, warmup_ratio=0.0)


def test_build_optimizer_applies_the_warm_up_to_every_group() -> None:
    recipe = recipe_from_dict({"seed": 0})
    cfg = recipe.classifier
    cfg.optimizer, cfg.schedule, cfg.warmup_steps, cfg.warmup_ratio, cfg.lr = (
        "adamw",
        "warmup_poly",
        4,
        0.1,
        1.0,
    )
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    model.optimizer_groups = lambda lr, wd, mult: [  # type: ignore[method-assign]
        {"params": list(model[0].parameters()), "lr": lr},
        {"params": list(model[1].parameters()), "lr": lr * mult},
    ]
    cfg.head_lr_mult = 10.0
    opt, sched = build_optimizer(model, cfg, total_steps=10, compat="clean")
    assert isinstance(opt, torch.optim.AdamW)
    rates = []
    for _ in range(5):
        rates.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    assert rates[0] == pytest.approx([0.1, 1.0]) and rates[1] == pytest.approx([0.325, 3.25])
    assert rates[4] == pytest.approx([0.6**0.9, 10 * 0.6**0.9])
