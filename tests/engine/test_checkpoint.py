"""Checkpoints: exact resume, weights_only loading, loud mismatches, safetensors export, run logs."""

from __future__ import annotations

import argparse
import json
import logging
import random

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from wsss.engine.checkpoint import (
    export_weights,
    load_model_state,
    load_training_state,
    load_weights,
    save_training_state,
)
from wsss.engine.optim import make_sgd
from wsss.engine.runlog import ScalarWriter, read_scalars, setup_run_logging
from wsss.engine.seeding import epoch_generator, seed_everything
from wsss.errors import CheckpointError

SEED = 17
EPOCHS = 4
BATCH = 5
N_SAMPLES = 23  # not a multiple of BATCH: the last batch is short


class TinyNet(nn.Module):
    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, width), nn.ReLU(), nn.Dropout(0.3))
        self.head = nn.Linear(width, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def _dataset() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(
        torch.randn(N_SAMPLES, 6, generator=g), torch.randint(0, 3, (N_SAMPLES,), generator=g)
    )


def _build(init_seed: int):
    seed_everything(init_seed)
    model = TinyNet()
    steps = EPOCHS * -(-N_SAMPLES // BATCH)
    optimizer, scheduler = make_sgd(model.parameters(), lr=0.2, weight_decay=1e-3, max_steps=steps)
    return model, optimizer, scheduler


def _train(model, optimizer, scheduler, dataset, start: int, stop: int) -> None:
    """Dropout (torch RNG), numpy noise and python jitter all draw from global generators."""
    model.train()
    for epoch in range(start, stop):
        loader = DataLoader(dataset, batch_size=BATCH, shuffle=True, generator=epoch_generator(SEED, epoch))
        for x, y in loader:
            noise = torch.from_numpy(np.random.normal(scale=0.05, size=tuple(x.shape))).float()
            x = (x + noise) * (1.0 + 0.1 * random.random())
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()


def _resumed_weights(tmp_path, restore_rng: bool) -> dict[str, torch.Tensor]:
    data = _dataset()
    model, optimizer, scheduler = _build(SEED)
    _train(model, optimizer, scheduler, data, 0, 2)
    path = tmp_path / "state.pt"
    save_training_state(path, model=model, optimizer=optimizer, scheduler=scheduler, epoch=2, step=10)
    del model, optimizer, scheduler
    # a fresh "process": different global RNG, new objects with different initial weights
    model, optimizer, scheduler = _build(4242)
    info = load_training_state(
        path, model=model, optimizer=optimizer, scheduler=scheduler, restore_rng=restore_rng
    )
    assert info["epoch"] == 2 and info["step"] == 10
    _train(model, optimizer, scheduler, data, info["epoch"], EPOCHS)
    return model.state_dict()


def test_resume_is_bit_identical_to_uninterrupted_training(tmp_path):
    model, optimizer, scheduler = _build(SEED)
    _train(model, optimizer, scheduler, _dataset(), 0, EPOCHS)
    straight = model.state_dict()

    resumed = _resumed_weights(tmp_path, restore_rng=True)
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key

    # the check is sharp: without the RNG snapshot, dropout and noise diverge
    unrestored = _resumed_weights(tmp_path, restore_rng=False)
    assert not all(torch.equal(straight[k], unrestored[k]) for k in straight)


def test_state_file_is_weights_only_and_unwraps_wrappers(tmp_path):
    model = TinyNet()
    optimizer, scheduler = make_sgd(model.parameters(), lr=0.1, weight_decay=0.0, max_steps=5)
    path = tmp_path / "sub" / "state.pt"
    save_training_state(
        path,
        model=nn.DataParallel(model),
        optimizer=optimizer,
        scheduler=scheduler,
        epoch=3,
        step=7,
        extra={"config": {"lr": 0.1, "name": "x"}, "history": [1.0, 2.0], "tensor": torch.ones(2)},
    )
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "wsss.training_state" and raw["version"] == 1
    assert set(raw["model"]) == {"body.0.weight", "body.0.bias", "head.weight", "head.bias"}
    assert [p.name for p in path.parent.iterdir()] == ["state.pt"]  # no temp file left behind
    info = load_training_state(path, model=TinyNet())
    assert info["extra"]["config"] == {"lr": 0.1, "name": "x"}
    assert torch.equal(info["extra"]["tensor"], torch.ones(2))


def test_extra_with_objects_is_refused_before_writing(tmp_path):
    model = TinyNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    path = tmp_path / "state.pt"
    with pytest.raises(CheckpointError, match=r"extra.*'args'.*Namespace"):
        save_training_state(
            path, model=model, optimizer=optimizer, epoch=0, step=0, extra={"args": argparse.Namespace(a=1)}
        )
    assert not path.exists()


def test_mismatched_model_is_reported_with_counts(tmp_path):
    model = TinyNet(width=16)
    path = tmp_path / "state.pt"
    save_training_state(
        path, model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), epoch=0, step=0
    )
    with pytest.raises(CheckpointError) as err:
        load_training_state(path, model=TinyNet(width=8))
    message = str(err.value)
    assert "state.pt" in message
    assert "1/4 keys match" in message  # only head.bias (shape (3,)) still fits
    assert "3 with a different shape" in message

    class Other(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Linear(6, 16))
            self.extra = nn.Linear(2, 2)

    with pytest.raises(CheckpointError, match=r"2/4 keys match; 2 missing.*2 unexpected"):
        load_training_state(path, model=Other())


def test_optimizer_mismatch_and_bad_files_raise_checkpoint_error(tmp_path):
    model = TinyNet()
    path = tmp_path / "state.pt"
    save_training_state(
        path, model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), epoch=0, step=0
    )
    fresh = TinyNet()
    two_groups = torch.optim.SGD(
        [{"params": fresh.body.parameters()}, {"params": fresh.head.parameters()}], lr=0.1
    )
    with pytest.raises(CheckpointError, match=r"optimizer state in .*state\.pt"):
        load_training_state(path, model=fresh, optimizer=two_groups)

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"garbage\.pt"):
        load_training_state(garbage, model=TinyNet())

    pickled = tmp_path / "pickled.pt"
    torch.save({"args": argparse.Namespace(lr=1)}, pickled)
    with pytest.raises(CheckpointError, match=r"pickled\.pt.*weights_only"):
        load_training_state(pickled, model=TinyNet())

    bare = tmp_path / "bare.pt"
    torch.save(TinyNet().state_dict(), bare)
    with pytest.raises(CheckpointError, match="not a wsss training state"):
        load_training_state(bare, model=TinyNet())

    with pytest.raises(CheckpointError, match="does not exist"):
        load_training_state(tmp_path / "missing.pt", model=TinyNet())


def test_disabled_scaler_round_trips(tmp_path):
    model = TinyNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    path = tmp_path / "state.pt"
    save_training_state(path, model=model, optimizer=optimizer, scaler=scaler, epoch=1, step=2)
    info = load_training_state(
        path, model=TinyNet(), optimizer=torch.optim.SGD(TinyNet().parameters(), lr=0.1), scaler=scaler
    )
    assert info["step"] == 2


def test_load_model_state_strips_ddp_prefix():
    source = TinyNet()
    prefixed = {f"module.{k}": v for k, v in source.state_dict().items()}
    target = TinyNet()
    assert load_model_state(target, prefixed, source="ddp.pth") == 4
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values()))


class TiedNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(5, 4)
        self.out = nn.Linear(4, 5, bias=False)
        self.out.weight = self.embed.weight


def test_export_weights_round_trip_with_sidecar(tmp_path):
    model = TiedNet()
    meta = {"arch": "tied_test", "classes": ["background", "cat"], "stride": 16}
    weights, sidecar = export_weights(tmp_path / "model.safetensors", model, meta)
    assert sidecar == tmp_path / "model.json"
    side = json.loads(sidecar.read_text())
    assert side["arch"] == "tied_test" and side["classes"] == ["background", "cat"]
    assert side["format"] == "wsss.weights" and side["num_tensors"] == 2 and side["num_parameters"] == 20
    assert torch.equal(load_file(str(weights))["embed.weight"], model.embed.weight)

    fresh = TiedNet()
    assert load_weights(weights, fresh)["stride"] == 16
    assert torch.equal(fresh.embed.weight, model.embed.weight)
    assert fresh.out.weight is fresh.embed.weight  # still tied after loading

    with pytest.raises(CheckpointError, match="not JSON-serialisable"):
        export_weights(tmp_path / "bad.safetensors", model, {"arch": object()})
    assert not (tmp_path / "bad.safetensors").exists()
    with pytest.raises(CheckpointError, match=r"\.safetensors"):
        export_weights(tmp_path / "model.pth", model, meta)


def test_run_logging_writes_file_once_per_line(tmp_path):
    logger = setup_run_logging(tmp_path, "train_cls")
    logger.info("first")
    logger = setup_run_logging(tmp_path, "train_cls")  # a second call must not duplicate handlers
    logger.info("second")
    for handler in logger.handlers:
        handler.flush()
    lines = (tmp_path / "logs" / "train_cls.log").read_text().splitlines()
    assert len(lines) == 2
    assert lines[0].endswith("INFO wsss.train_cls: first") and lines[1].endswith("second")
    assert sum(isinstance(h, logging.StreamHandler) for h in logger.handlers) == 2  # file + console


def test_run_logging_on_other_ranks_has_no_console(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    logger = setup_run_logging(tmp_path, "stage")
    logger.info("hello")
    assert [type(h) for h in logger.handlers] == [logging.FileHandler]
    logger.handlers[0].flush()
    assert "hello" in (tmp_path / "logs" / "stage.rank1.log").read_text()


def test_scalar_writer_jsonl_and_tensorboard(tmp_path):
    with ScalarWriter(tmp_path) as writer:
        writer.add_scalar("loss", torch.tensor(0.5), step=1)
        writer.add_scalars({"loss": 0.25, "lr": 0.01}, step=2)
        writer.add_scalar("loss", 0.2, step=2)  # a resumed run logging step 2 again: later wins
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["tag"], r["step"], r["value"]) for r in records] == [
        ("loss", 1, 0.5),
        ("loss", 2, 0.25),
        ("lr", 2, 0.01),
        ("loss", 2, 0.2),
    ]
    assert read_scalars(tmp_path) == {"loss": [(1, 0.5), (2, 0.2)], "lr": [(2, 0.01)]}
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_scalar_writer_is_silent_off_rank_zero(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "3")
    writer = ScalarWriter(tmp_path)
    writer.add_scalar("loss", 1.0, step=0)
    writer.close()
    assert not (tmp_path / "metrics.jsonl").exists() and not (tmp_path / "tb").exists()
