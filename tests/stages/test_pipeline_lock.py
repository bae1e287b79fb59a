"""run_pipeline and the run lock, in process: refused before writing anything, stale locks taken over,
shards independent, and an interrupted stage cleaned up (temporary files, run.json, the lock)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from wsss.config import load_recipe
from wsss.data.synth import generate_synth
from wsss.engine.runlock import LOCK_NAME, lock_name
from wsss.errors import WsssError
from wsss.files import TEMP_MARKER
from wsss.interrupt import RunInterrupted, Terminated
from wsss.pipeline import run_pipeline
from wsss.processes import host_tag
from wsss.stages import make_cams, train_cls

if sys.platform == "win32":  # pragma: no cover
    pytest.skip("pid liveness checks are POSIX-only", allow_module_level=True)

TINY = [
    "classifier.epochs=1",
    "classifier.batch_size=8",
    "classifier.num_workers=0",
    "classifier.resize_long=[56, 72]",
    "classifier.crop_size=64",
    "cams.scales=[48.0]",
]


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    generate_synth(root, num_train=8, num_val=4, size=64, seed=3, progress=False)
    return root


def _recipe(root: Path, stages: str):
    return load_recipe("synth/bnr-nano", [f"data.root={root}", *TINY, f"stages=[{stages}]"])


def _lock_file(path: Path, pid: int, shard: list[int] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"pid": pid, "host": socket.gethostname(), "started": "2026-01-02T03:04:05+00:00"}
    path.write_text(json.dumps({**data, "command": "wsss run x", "shard": shard, "token": "t"}))


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_held_run_directory_is_refused_before_anything_is_written(
    synth_root: Path, tmp_path: Path, sleeper: subprocess.Popen
) -> None:
    run = tmp_path / "run"
    _lock_file(run / LOCK_NAME, sleeper.pid)
    with pytest.raises(WsssError) as info:
        run_pipeline(_recipe(synth_root, "train-cls"), run, device="cpu")
    assert f"run directory {run} is in use by another wsss process (pid {sleeper.pid} on " in str(info.value)
    assert sorted(p.name for p in run.iterdir()) == [LOCK_NAME]  # no logs, no recipe.yaml


def test_a_stale_lock_is_taken_over_and_logged(
    synth_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run, dead = tmp_path / "run", _dead_pid()
    _lock_file(run / LOCK_NAME, dead)
    monkeypatch.setattr(train_cls, "run", lambda ctx: {"fake": 1})
    record = run_pipeline(_recipe(synth_root, "train-cls"), run, device="cpu")
    assert record["stages"]["train-cls"]["metrics"] == {"fake": 1}
    log = (run / "logs" / "pipeline.log").read_text()
    assert f"took over the stale lock {run / LOCK_NAME}: its process has ended (pid {dead} on " in log
    assert not (run / LOCK_NAME).exists()  # released at the end


def test_shards_lock_only_their_own_share(
    synth_root: Path, tmp_path: Path, sleeper: subprocess.Popen, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    seen = []
    monkeypatch.setattr(make_cams, "run", lambda ctx: seen.append(ctx.shard) or {})
    recipe = _recipe(synth_root, "make-cams")
    _lock_file(run / lock_name((1, 2)), sleeper.pid, [1, 2])  # the other shard, at work
    run_pipeline(recipe, run, device="cpu", shard=(0, 2))
    assert seen == [(0, 2)]
    assert sorted(p.name for p in run.glob("*.lock")) == ["run.shard-1-of-2.lock"]
    _lock_file(run / lock_name((0, 2)), sleeper.pid, [0, 2])  # a copy of this shard, at work
    with pytest.raises(WsssError, match=rf"shard 0/2 of run directory {run} is in use .*pid {sleeper.pid} "):
        run_pipeline(recipe, run, device="cpu", shard=(0, 2))
    with pytest.raises(WsssError, match=r"\(shard 0/2, pid"):  # and the whole run waits for the shards
        run_pipeline(recipe, run, device="cpu")
    assert seen == [(0, 2)]


def test_an_interrupted_stage_leaves_no_temporary_files_and_notes_where_it_stopped(
    synth_root: Path, tmp_path: Path, sleeper: subprocess.Popen, monkeypatch: pytest.MonkeyPatch
) -> None:
    run, dead, here = tmp_path / "run", _dead_pid(), host_tag()
    partial = {
        "own": run / "train-cls" / f".state.pt{TEMP_MARKER}{here}-{os.getpid()}-0000000a.pt",
        "ended worker": run / "cams" / f".x.npz{TEMP_MARKER}{here}-{dead}-0000000b.tmp",
        "live writer": run / "cams" / f".y.npz{TEMP_MARKER}{here}-{sleeper.pid}-0000000c.tmp",
    }

    def interrupted_training(ctx: object) -> dict:
        for path in partial.values():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"half")
        raise Terminated()

    monkeypatch.setattr(train_cls, "run", interrupted_training)
    recipe = _recipe(synth_root, "train-cls, make-cams")
    with pytest.raises(RunInterrupted) as info:
        run_pipeline(recipe, run, device="cpu")
    assert (info.value.run_dir, info.value.stage, info.value.signum) == (run, "train-cls", signal.SIGTERM)
    assert isinstance(info.value.__cause__, Terminated)
    assert not partial["own"].exists() and not partial["ended worker"].exists()
    assert partial["live writer"].exists()  # another process may still be writing it
    assert not (run / LOCK_NAME).exists()
    record = json.loads((run / "run.json").read_text())
    assert record["stages"] == {}
    assert {k: record["interrupted"][k] for k in ("stage", "signal")} == {
        "stage": "train-cls",
        "signal": "SIGTERM",
    }
    # the rerun resumes (here: starts) the stage, and the note goes
    monkeypatch.undo()
    record = run_pipeline(recipe, run, device="cpu")
    assert list(record["stages"]) == ["train-cls", "make-cams"] and "interrupted" not in record
    assert "interrupted" not in json.loads((run / "run.json").read_text())
    assert not partial["live writer"].exists()  # the sole writer holding the lock removes every leftover
    assert list(run.rglob(f"*{TEMP_MARKER}*")) == [] and not (run / LOCK_NAME).exists()


def _ddp_rank(rank: int, world: int, store: str, root: str, run: str) -> None:
    """One torchrun-like rank: its train-cls stage notes who holds the lock while it runs."""
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank)})
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)

    def note_lock(ctx: object) -> dict:
        dist.barrier()  # both ranks are inside the stage
        holder = json.loads((Path(run) / LOCK_NAME).read_text())
        locks = sorted(p.name for p in Path(run).glob("*.lock"))
        (Path(run) / f"rank{rank}.json").write_text(json.dumps([os.getpid(), holder["pid"], locks]))
        return {}

    try:
        train_cls.run = note_lock
        run_pipeline(_recipe(Path(root), "train-cls"), run, device="cpu")
    finally:
        dist.destroy_process_group()


def test_under_ddp_rank_0_holds_the_one_lock(synth_root: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    mp.spawn(_ddp_rank, args=(2, str(tmp_path / "store"), str(synth_root), str(run)), nprocs=2, join=True)
    (pid0, holder0, locks0), (pid1, holder1, locks1) = (
        json.loads((run / f"rank{r}.json").read_text()) for r in (0, 1)
    )
    assert holder0 == holder1 == pid0 != pid1
    assert locks0 == locks1 == [LOCK_NAME]
    assert not (run / LOCK_NAME).exists()  # released when rank 0 finished
