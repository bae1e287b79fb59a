"""Numerical guards: a NaN/inf loss, gradient or CAM is caught, named and handled by the
``nonfinite`` policy (``stop``: a NumericalError that says where and what to do; ``skip``: no
update / no CAM file, counted and recorded)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image
from torch import nn

from tests.stage_context import cpu_context
from wsss.cams.files import cam_path, load_cam, nonfinite_classes, nonfinite_marker, save_cam
from wsss.cams.nonfinite import admit_cam
from wsss.config import load_recipe, recipe_from_dict
from wsss.data.images import read_image
from wsss.data.synth import generate_synth
from wsss.engine import load_training_state
from wsss.errors import DataError, NumericalError
from wsss.stages import make_cams, make_labels
from wsss.stages.nonfinite import MAX_SKIPPED_IN_A_ROW, SkipBudget, Where, nonfinite_grads
from wsss.stages.training import train_loop

N, BATCH, EPOCHS = 4, 2, 2  # two steps per epoch, four in all
LOG = logging.getLogger("test")


class Points(torch.utils.data.Dataset):
    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(N, 3, generator=g)
        self.y = torch.randn(N, 1, generator=g)

    def __len__(self) -> int:
        return N

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"x": self.x[i], "y": self.y[i], "name": f"img{i}"}


class Toy(nn.Module):
    """A linear model whose forward records the weights it sees and the batch's names."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(3, 1)
        self.seen: list[tuple[list[str], dict[str, torch.Tensor]]] = []

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        self.seen.append((list(batch["name"]), {k: v.clone() for k, v in self.lin.state_dict().items()}))
        return self.lin(batch["x"])


def _step(bad_loss: set[int] = frozenset(), bad_grad: set[int] = frozenset()):
    """A step giving a NaN loss at the calls in ``bad_loss`` and a finite loss with NaN gradients
    (d sqrt|z| at z = 0) at the calls in ``bad_grad``; ``mse`` stays finite throughout."""
    calls = [0]

    def step(net: nn.Module, batch: dict[str, Any], _: Any) -> dict[str, torch.Tensor]:
        calls[0] += 1
        out = net(batch)
        mse = nn.functional.mse_loss(out, batch["y"])
        loss = mse
        if calls[0] in bad_loss:
            loss = mse * float("nan")
        if calls[0] in bad_grad:
            loss = mse + (out - out.detach()).abs().sqrt().sum()  # value mse, gradient NaN
        return {"loss": loss, "mse": mse.detach()}

    return step


def _train(tmp_path: Path, step, policy: str = "stop", model: Toy | None = None, on_epoch_end=None):
    recipe = recipe_from_dict({"seed": 3})
    cfg = recipe.classifier  # train_loop finds the section by identity: messages say classifier.*
    cfg.epochs, cfg.batch_size, cfg.num_workers = EPOCHS, BATCH, 0
    cfg.optimizer, cfg.schedule, cfg.lr, cfg.weight_decay, cfg.momentum = "sgd", "poly", 0.1, 0.0, 0.9
    cfg.nonfinite = policy
    model = model or Toy()
    metrics = train_loop(
        cpu_context(recipe, tmp_path / "run"),
        name="train-toy",
        model=model,
        dataset=Points(),
        cfg=cfg,
        step_fn=step,
        state_path=tmp_path / "state.pt",
        on_epoch_end=on_epoch_end,
    )
    return model, metrics


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_policies_train_the_same_weights_when_all_is_finite(tmp_path: Path) -> None:
    stop, m_stop = _train(tmp_path / "stop", _step(), "stop")
    skip, m_skip = _train(tmp_path / "skip", _step(), "skip")
    for k, v in stop.state_dict().items():
        assert torch.equal(v, skip.state_dict()[k]), k
    assert m_stop["skipped_steps"] == m_skip["skipped_steps"] == 0 and m_stop["steps"] == 4
    assert m_stop["final_losses"] == m_skip["final_losses"]


def test_stop_names_the_step_and_images_and_keeps_the_checkpoint(tmp_path: Path) -> None:
    hashes: dict[int, str] = {}
    state = tmp_path / "state.pt"
    model = Toy()
    with pytest.raises(NumericalError) as err:
        _train(
            tmp_path, _step(bad_loss={3}), model=model, on_epoch_end=lambda e: hashes.update({e: _sha(state)})
        )
    msg = str(err.value)
    names = model.seen[2][0]  # the third batch: epoch 2, its first batch
    assert msg.startswith("train-toy: epoch 2/2, step 3 (batch 1/2 of the epoch); images: ")
    assert f"images: {', '.join(names)}:" in msg
    assert "loss terms not finite: loss=nan." in msg and "mse=" not in msg
    assert f"The last finished checkpoint, {state} (epoch 1), is kept" in msg
    assert "lower classifier.lr (now 0.1)" in msg and "set classifier.nonfinite: skip" in msg
    assert list(hashes) == [1] and _sha(state) == hashes[1]  # epoch 1's checkpoint, unchanged
    assert int(load_training_state(state, model=Toy())["epoch"]) == 1
    # the kept checkpoint is a valid one: resuming from it ends where an uninterrupted run does
    resumed, metrics = _train(tmp_path, _step())
    clean, _ = _train(tmp_path / "clean", _step())
    assert metrics["steps"] == 4 and len(resumed.seen) == 2  # only epoch 2 ran again
    for k, v in clean.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k


def test_stop_in_the_first_epoch_says_there_is_no_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(
        NumericalError, match=r"step 2 .*No epoch has finished yet, so there is no checkpoint"
    ):
        _train(tmp_path, _step(bad_loss={2}))
    assert not (tmp_path / "state.pt").exists()


def test_skip_leaves_the_weights_and_counts_the_step(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = Toy()
    with caplog.at_level(logging.WARNING, logger="test"):
        model, metrics = _train(tmp_path, _step(bad_loss={3}), "skip", model=model)
    w = [weights for _, weights in model.seen]
    assert len(w) == 4 and metrics["steps"] == 4 and metrics["skipped_steps"] == 1
    assert all(torch.equal(w[2][k], w[3][k]) for k in w[2])  # the bad step changed nothing
    assert not torch.equal(w[1]["weight"], w[2]["weight"])  # a good step does
    assert not torch.equal(w[3]["weight"], model.lin.weight)  # and training went on
    assert int(load_training_state(tmp_path / "state.pt", model=Toy())["extra"]["skipped_steps"]) == 1
    warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    names = ", ".join(model.seen[2][0])
    assert warning == [
        f"train-toy: epoch 2/2, step 3 (batch 1/2 of the epoch); images: {names}: loss terms not finite: "
        "loss=nan; optimizer step skipped (nonfinite: skip)"
    ]
    # the epoch's mean losses leave the skipped step out: epoch 2's is its one good step's
    assert np.isfinite(metrics["final_losses"]["loss"])
    assert metrics["final_losses"]["loss"] == pytest.approx(metrics["final_losses"]["mse"])


def test_too_many_skips_stop_the_run(tmp_path: Path) -> None:
    with pytest.raises(NumericalError) as err:
        _train(tmp_path, _step(bad_loss={1, 2, 3, 4}), "skip")
    msg = str(err.value)
    assert "epoch 1/2, step 2" in msg
    assert (
        "2 steps of this epoch were skipped, more than nonfinite: skip allows (1: 10% of its 2 steps)" in msg
    )
    assert "set classifier.nonfinite: skip" not in msg  # it is already set


def test_non_finite_gradients_of_a_finite_loss(tmp_path: Path) -> None:
    with pytest.raises(
        NumericalError, match=r"step 2 .*gradients not finite \(loss finite\) for lin\.weight"
    ):
        _train(tmp_path / "stop", _step(bad_grad={2}))
    model, metrics = _train(tmp_path / "skip", _step(bad_grad={2}), "skip")
    w = [weights for _, weights in model.seen]
    assert metrics["skipped_steps"] == 1 and all(torch.equal(w[1][k], w[2][k]) for k in w[1])
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())


def test_nonfinite_grads_names_the_parameters() -> None:
    net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    assert nonfinite_grads(net) == []  # no gradients yet
    net(torch.ones(1, 2)).sum().backward()
    assert nonfinite_grads(net) == []
    net[0].bias.grad[1] = float("inf")
    assert nonfinite_grads(net) == ["0.bias"]


def test_skip_budget_bounds() -> None:
    per_epoch = SkipBudget(20)  # 10 % of 20 steps: 2 skips an epoch
    assert per_epoch.skip() is None
    per_epoch.good_step()
    assert per_epoch.skip() is None
    assert "3 steps of this epoch were skipped" in per_epoch.skip()
    per_epoch.new_epoch()
    assert per_epoch.skip() is None and per_epoch.total == 4
    in_a_row = SkipBudget(1000)  # 100 an epoch: the run of skips is what stops it
    for _ in range(MAX_SKIPPED_IN_A_ROW):
        assert in_a_row.skip() is None
    in_a_row.good_step()
    for _ in range(MAX_SKIPPED_IN_A_ROW):
        assert in_a_row.skip() is None
    assert f"{MAX_SKIPPED_IN_A_ROW + 1} steps in a row" in in_a_row.skip()


def test_where_without_image_names() -> None:
    assert str(Where("s", 0, 3, 7, 7, 9, [])) == "s: epoch 1/3, step 7 (batch 7/9 of the epoch)"
    many = str(Where("s", 0, 1, 1, 1, 1, [f"n{i}" for i in range(10)]))
    assert many.endswith("images: n0, n1, n2, n3, n4, n5, n6, n7, … (10 in all)")


# --- DDP: every process skips or stops together (or backward's all-reduce would hang) ---------


class Pairs(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"x": torch.full((3,), float(i)), "y": torch.ones(1), "name": f"p{i}"}


def _ddp_train(rank: int, policy: str, run: Path) -> dict[str, Any]:
    """Three epochs of one step per process; rank 1's second loss is NaN (a forward follows it)."""
    recipe = recipe_from_dict({"seed": 0})
    cfg = recipe.classifier
    cfg.epochs, cfg.batch_size, cfg.num_workers, cfg.nonfinite = 3, 4, 0, policy
    cfg.optimizer, cfg.lr = "sgd", 0.1
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    calls = [0]

    def step(net: nn.Module, batch: dict[str, Any], _: Any) -> dict[str, torch.Tensor]:
        calls[0] += 1
        loss = nn.functional.mse_loss(net(batch["x"]), batch["y"])
        return {"loss": loss * float("nan") if (rank, calls[0]) == (1, 2) else loss}

    try:
        metrics = train_loop(
            cpu_context(recipe, run),
            name="ddp",
            model=model,
            dataset=Pairs(),
            cfg=cfg,
            step_fn=step,
            state_path=run / "state.pt",
        )
    except NumericalError as exc:
        return {"error": str(exc)}
    return {"skipped": metrics["skipped_steps"], "weight": model.weight.detach().tolist()}


def _ddp_worker(rank: int, world: int, store: str, out: str) -> None:
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank)})
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        result = {policy: _ddp_train(rank, policy, Path(out) / policy) for policy in ("skip", "stop")}
        (Path(out) / f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def test_ddp_processes_agree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))
    assert r0["skip"]["skipped"] == r1["skip"]["skipped"] == 1
    assert np.isfinite(r0["skip"]["weight"]).all()
    assert r0["skip"]["weight"] == r1["skip"]["weight"]
    assert "epoch 2/3, step 2 (batch 1/1" in r1["stop"]["error"] and "loss=nan" in r1["stop"]["error"]
    assert (
        "step 2 " in r0["stop"]["error"]
        and "a loss term on another process is not finite" in r0["stop"]["error"]
    )


# --- CAMs -----------------------------------------------------------------------------------


def test_admit_cam_and_the_marker(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "cams" / "a.npz"
    bad = np.zeros((2, 2, 3), np.float32)
    bad[1, 0, 2] = np.nan
    names = ["bg", "a", "b", "c", "d", "e", "f", "cat"]
    kw: dict[str, Any] = dict(stage="make-cams", logger=LOG, class_names=names)
    assert admit_cam(path, np.zeros((2, 2, 3)), [3, 7], policy="stop", **kw)
    with pytest.raises(
        NumericalError, match=r"make-cams: the CAM of image 'a' is NaN or infinite for classes 7 \(cat\)"
    ):
        admit_cam(path, bad, [3, 7], policy="stop", **kw)
    assert not nonfinite_marker(path).exists()
    with pytest.raises(ValueError, match=r"contain NaN or inf \(classes 7\)"):  # the writer refuses it too
        save_cam(path, bad, [3, 7], (2, 3))
    with caplog.at_level(logging.WARNING, logger="test"):
        assert not admit_cam(path, torch.from_numpy(bad), torch.tensor([3, 7]), policy="skip", **kw)
    assert not path.exists()
    marker = json.loads(nonfinite_marker(path).read_text())
    assert marker == {"image": "a", "stage": "make-cams", "classes": [7], "class_names": ["cat"]}
    assert "CAM of image 'a' is NaN or infinite for classes 7 (cat); no CAM file written" in caplog.text
    with pytest.raises(
        DataError,
        match=r"make-cams skipped image 'a' because its CAM was NaN or infinite \(classes 7 \(cat\)\)",
    ):
        load_cam(path)
    # written later (e.g. by a retrained classifier): the marker goes
    save_cam(path, np.zeros((2, 2, 3)), [3, 7], (2, 3))
    assert load_cam(path).keys.tolist() == [3, 7] and not nonfinite_marker(path).exists()
    with pytest.raises(DataError, match=r"^CAM file not found: \S+b\.npz$"):  # a plain missing file
        load_cam(tmp_path / "cams" / "b.npz")
    assert nonfinite_classes(np.full((3, 1, 1), np.inf), [1, 2, 5]) == [1, 2, 5]
    assert nonfinite_classes(np.zeros((0, 2, 3)), []) == nonfinite_classes(torch.zeros(0, 2, 3), []) == []
    assert admit_cam(path, np.zeros((0, 2, 3)), [], policy="stop", **kw)  # an image without classes


class FlatIsNaN(nn.Module):
    """A CAM "classifier" whose maps divide by the image's spread: a flat image gives inf/NaN.

    ``extract`` is the plain extractors' call (``cams.extractor: cam``)."""

    output_stride = 4

    def __init__(self, classes: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, classes, 4, stride=4)

    def extract(self, x: torch.Tensor, method: str) -> torch.Tensor:
        spread = (x.amax((2, 3)) - x.amin((2, 3))).sum(1).view(-1, 1, 1, 1)  # 0: no pixel differs
        return (self.conv(x).abs() + 0.1) / spread


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    generate_synth(root, num_train=4, num_val=2, size=32, seed=6, progress=False)
    return root


def test_make_cams_stop_then_skip(synth_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sets = [
        f"data.root={synth_root}",
        "cams.scales=[1.0, 0.5]",
        "cams.batch_images=2",
        "cams.fold_bn=false",
        "labels.workers=1",
        "labels.crf=null",
    ]
    recipe = load_recipe("synth/irn-nano", sets)
    ctx = cpu_context(recipe, tmp_path / "run")
    ds = ctx.dataset("train")
    names = list(ds.names)
    Image.new("RGB", (32, 32), (128, 128, 128)).save(ds.image_path(2))  # the third image: flat
    assert np.ptp(read_image(ds.image_path(2))) == 0
    monkeypatch.setattr(make_cams, "load_trained_classifier", lambda ctx, k: FlatIsNaN(k))
    folder = ctx.paths.cam_dir
    with pytest.raises(NumericalError) as err:
        make_cams.run(ctx)
    present = [ds.class_names[k] for k in np.flatnonzero(ds.labels[2]) + 1]
    assert f"make-cams: the CAM of image '{names[2]}' is NaN or infinite for classes" in str(err.value)
    assert all(c in str(err.value) for c in present) and "cams.nonfinite: skip" in str(err.value)
    # the first group's files are written and kept; nothing for the bad image or after it
    assert [cam_path(folder, n).is_file() for n in names] == [True, True, False, False]
    first = _sha(cam_path(folder, names[0]))
    recipe.cams.nonfinite = "skip"
    metrics = make_cams.run(ctx)
    assert metrics["written"] == 1 and metrics["skipped_nonfinite"] == [names[2]]
    assert [cam_path(folder, n).is_file() for n in names] == [True, True, False, True]
    assert (
        _sha(cam_path(folder, names[0])) == first and nonfinite_marker(cam_path(folder, names[2])).is_file()
    )
    assert not make_cams.is_complete(ctx)
    # the next stage that needs the file says why it is missing (make-labels' pool passes it on as is)
    with pytest.raises(DataError) as err:
        make_labels.run(ctx)
    cause = err.value
    skipped = (
        f"make-cams skipped image '{names[2]}' because its CAM was NaN or infinite (classes 3 (triangle))"
    )
    assert skipped in str(cause)
