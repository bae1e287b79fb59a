"""Distributed helpers: single-process behaviour, sharding, device choice, and a real 2-rank gloo group."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from wsss.engine.device import resolve_device
from wsss.engine.distributed import (
    DistInfo,
    all_reduce_sum,
    barrier,
    destroy,
    init_distributed,
    is_main,
    parse_shard,
    shard_indices,
    unwrap,
    wrap_ddp,
)
from wsss.errors import ConfigError

WORLD = 2
STEPS = 3
LR = 0.1


@pytest.fixture
def no_torchrun_env(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(("n", "world"), [(0, 3), (2, 4), (10, 1), (10, 3), (12, 4)])
def test_shards_are_disjoint_and_cover(n, world):
    shards = [shard_indices(n, rank, world) for rank in range(world)]
    flat = sorted(i for shard in shards for i in shard)
    assert flat == list(range(n))
    assert max(len(s) for s in shards) - min(len(s) for s in shards) <= 1  # round-robin balance
    assert shard_indices(10, 1, 3) == [1, 4, 7]


def test_shard_indices_rejects_bad_rank():
    with pytest.raises(ConfigError):
        shard_indices(10, 3, 3)


@pytest.mark.parametrize(("text", "expected"), [("0/4", (0, 4)), ("3/4", (3, 4)), (" 0/1 ", (0, 1))])
def test_parse_shard(text, expected):
    assert parse_shard(text) == expected


@pytest.mark.parametrize("text", ["4/4", "1", "a/b", "1/0", "-1/2", "1/2/3", ""])
def test_parse_shard_rejects_bad_text(text):
    with pytest.raises(ConfigError, match="shard"):
        parse_shard(text)


def test_single_process_needs_no_launcher(no_torchrun_env):
    info = init_distributed()
    assert info == DistInfo(rank=0, world_size=1, local_rank=0, backend=None)
    assert not info.is_distributed and info.is_main and is_main()
    assert not torch.distributed.is_initialized()
    t = torch.tensor([1.0, 2.0])
    assert all_reduce_sum(t) is t and t.tolist() == [1.0, 2.0]
    barrier()
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    assert wrap_ddp(model, info, sync_bn=True) is model
    destroy()


def test_malformed_torchrun_env(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ConfigError, match="WORLD_SIZE"):
        init_distributed()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ConfigError, match="RANK=2"):
        init_distributed()


def test_unwrap_removes_wrappers():
    inner = nn.Linear(2, 2)
    assert unwrap(nn.DataParallel(inner)) is inner
    assert unwrap(inner) is inner


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto").type in ("cpu", "mps")
        with pytest.raises(ConfigError, match=r"'cuda:1'.*CUDA.*is_available"):
            resolve_device("cuda:1")
    with pytest.raises(ConfigError, match="'gpu0'"):
        resolve_device("gpu0")
    with pytest.raises(ConfigError, match="'meta'"):
        resolve_device("meta")


class _Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _global_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 5, generator=g), torch.randn(8, 2, generator=g)) for _ in range(STEPS)]


def _train(model: nn.Module, batches, rank: int, world: int) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    for x, y in batches:
        per_rank = x.shape[0] // world
        rows = slice(rank * per_rank, (rank + 1) * per_rank)
        loss = nn.functional.mse_loss(model(x[rows]), y[rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def _worker(rank: int, out_dir: str) -> None:
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(WORLD), "LOCAL_RANK": str(rank)})
    info = init_distributed(backend="gloo", init_method=f"file://{out_dir}/store")
    try:
        summed = all_reduce_sum(torch.tensor([rank + 1.0, 10.0 * (rank + 1)]))
        counts = all_reduce_sum(torch.tensor([[rank, 1], [0, 2]], dtype=torch.int64))
        try:
            wrap_ddp(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)), info, sync_bn=True)
            sync_bn_error = ""
        except ConfigError as exc:  # SyncBatchNorm is GPU-only: refused clearly on CPU
            sync_bn_error = str(exc)

        torch.manual_seed(0)
        model = wrap_ddp(_Mlp(), info)
        _train(model, _global_batches(), info.rank, info.world_size)
        barrier()
        torch.save(
            {
                "info": [info.rank, info.world_size, info.local_rank, info.backend, is_main()],
                "summed": summed,
                "counts": counts,
                "sync_bn_error": sync_bn_error,
                "is_ddp": isinstance(model, nn.parallel.DistributedDataParallel),
                "weights": unwrap(model).state_dict(),
            },
            Path(out_dir) / f"rank{rank}.pt",
        )
    finally:
        destroy()


def test_two_process_gloo_group_matches_single_process(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path),), nprocs=WORLD, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]

    torch.manual_seed(0)
    reference = _Mlp()
    _train(reference, _global_batches(), rank=0, world=1)  # one process, whole batch
    expected = reference.state_dict()
    torch.manual_seed(0)
    initial = _Mlp().state_dict()
    assert all((expected[k] - initial[k]).abs().max() > 1e-3 for k in expected)  # training moved every tensor

    for rank, result in enumerate(results):
        assert result["info"] == [rank, WORLD, rank, "gloo", rank == 0]
        assert result["summed"].tolist() == [3.0, 30.0]
        assert result["counts"].tolist() == [[1, 2], [0, 4]]
        assert "sync_bn needs the model on CUDA" in result["sync_bn_error"] and result["is_ddp"]
        for key, value in expected.items():
            assert torch.allclose(result["weights"][key], value, atol=1e-6, rtol=0), key
    for key in expected:
        assert torch.equal(results[0]["weights"][key], results[1]["weights"][key]), key
