"""The run-directory lock: one writer per directory (per shard), holders named, stale locks taken over."""

from __future__ import annotations

import datetime
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from wsss.engine.runlock import LOCK_NAME, RunLock, lock_name
from wsss.errors import WsssError
from wsss.processes import process_start_ticks

if sys.platform == "win32":  # pragma: no cover
    pytest.skip("pid liveness checks are POSIX-only", allow_module_level=True)


def _dead_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _write_lock(path: Path, pid: int, host: str | None = None, **extra: object) -> str:
    """Write a lock file as another process would have; return its text."""
    data = {
        "pid": pid,
        "host": host or socket.gethostname(),
        "started": "2026-01-02T03:04:05+00:00",
        "command": "wsss run synth/demo --out elsewhere",
        "shard": None,
        "proc_start": None,
        "token": "0123456789abcdef",
        **extra,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data)
    path.write_text(text)
    return text


def test_lock_file_names_the_holder_and_release_removes_it(tmp_path: Path) -> None:
    lock = RunLock(tmp_path / "run")
    assert lock.acquire() == []
    data = json.loads((tmp_path / "run" / LOCK_NAME).read_text())
    assert data["pid"] == os.getpid() and data["host"] == socket.gethostname()
    assert data["shard"] is None and data["proc_start"] == process_start_ticks(os.getpid())
    started = datetime.datetime.fromisoformat(data["started"])
    assert abs((datetime.datetime.now().astimezone() - started).total_seconds()) < 60
    assert data["command"]  # this process's argv, for the message another process shows
    lock.release()
    assert not (tmp_path / "run" / LOCK_NAME).exists()
    lock.release()  # twice is harmless


def test_second_lock_is_refused_with_the_holder_named(tmp_path: Path, sleeper: subprocess.Popen) -> None:
    run = tmp_path / "run"
    text = _write_lock(run / LOCK_NAME, sleeper.pid, proc_start=process_start_ticks(sleeper.pid))
    other = RunLock(run)
    with pytest.raises(WsssError) as info:
        other.acquire()
    message = str(info.value)
    assert f"run directory {run} is in use by another wsss process" in message
    assert f"pid {sleeper.pid} on {socket.gethostname()}" in message
    assert "started 2026-01-02T03:04:05+00:00" in message
    assert "command: wsss run synth/demo --out elsewhere" in message
    assert "wait for it to finish, or use another --out" in message
    other.release()  # never removes a lock it does not hold
    assert (run / LOCK_NAME).read_text() == text


def test_two_locks_in_one_process_exclude_each_other(tmp_path: Path) -> None:
    first = RunLock(tmp_path)
    first.acquire()
    with pytest.raises(WsssError, match=f"pid {os.getpid()} "):
        RunLock(tmp_path).acquire()
    first.release()
    with RunLock(tmp_path):  # free again
        pass


def test_stale_lock_of_an_ended_process_is_taken_over(tmp_path: Path) -> None:
    dead = _dead_pid()
    _write_lock(tmp_path / LOCK_NAME, dead)
    lock = RunLock(tmp_path)
    taken = lock.acquire()
    assert [(h.pid, h.command) for h in taken] == [(dead, "wsss run synth/demo --out elsewhere")]
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK_NAME]  # no renamed copy left
    lock.release()


def test_a_reused_pid_does_not_keep_a_stale_lock(tmp_path: Path) -> None:
    """The recorded start time tells the ended holder from a new process with its pid (here: us)."""
    ticks = process_start_ticks(os.getpid())
    if ticks is None:
        pytest.skip("no /proc start times on this system")
    _write_lock(tmp_path / LOCK_NAME, os.getpid(), proc_start=ticks - 1)
    lock = RunLock(tmp_path)
    assert [h.pid for h in lock.acquire()] == [os.getpid()]
    lock.release()


def test_a_lock_from_another_host_is_not_taken_over(tmp_path: Path) -> None:
    text = _write_lock(tmp_path / LOCK_NAME, _dead_pid(), host="node-that-is-not-this-one")
    with pytest.raises(WsssError) as info:
        RunLock(tmp_path).acquire()
    message = str(info.value)
    assert "on node-that-is-not-this-one" in message
    assert "cannot tell whether a process on node-that-is-not-this-one still runs" in message
    assert f"delete {tmp_path / LOCK_NAME}" in message
    assert (tmp_path / LOCK_NAME).read_text() == text


def test_an_unreadable_lock_file_is_reported_not_taken(tmp_path: Path) -> None:
    (tmp_path / LOCK_NAME).write_text("")  # a maker killed between creating and writing it
    with pytest.raises(WsssError, match=f"lock file {tmp_path / LOCK_NAME} cannot be read"):
        RunLock(tmp_path).acquire()
    assert (tmp_path / LOCK_NAME).exists()


def test_shards_share_a_directory_but_not_a_shard(tmp_path: Path) -> None:
    assert lock_name((1, 4)) == "run.shard-1-of-4.lock"
    a, b = RunLock(tmp_path, (0, 2)), RunLock(tmp_path, (1, 2))
    a.acquire()
    b.acquire()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.shard-0-of-2.lock", "run.shard-1-of-2.lock"]
    with pytest.raises(WsssError, match=r"shard 0/2 of run directory .* in use"):
        RunLock(tmp_path, (0, 2)).acquire()
    # a whole-directory run would redo the shards' images; shards split another way overlap them
    with pytest.raises(WsssError, match=r"in use by another wsss process \(shard 0/2, pid"):
        RunLock(tmp_path).acquire()
    with pytest.raises(WsssError, match=r"\(shard 0/2, pid"):
        RunLock(tmp_path, (3, 4)).acquire()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.shard-0-of-2.lock", "run.shard-1-of-2.lock"]
    a.release()
    b.release()
    whole = RunLock(tmp_path)
    whole.acquire()
    with pytest.raises(WsssError, match=r"in use by another wsss process \(pid"):
        RunLock(tmp_path, (0, 2)).acquire()
    assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK_NAME]
    whole.release()


def test_a_stale_shard_lock_does_not_block_the_whole_run(tmp_path: Path) -> None:
    dead = _dead_pid()
    _write_lock(tmp_path / "run.shard-1-of-2.lock", dead, shard=[1, 2])
    lock = RunLock(tmp_path)
    assert [(h.pid, h.shard) for h in lock.acquire()] == [(dead, (1, 2))]
    assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK_NAME]
    lock.release()


def test_lock_is_released_when_the_block_raises(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="stage failed"), RunLock(tmp_path / "run"):
        assert (tmp_path / "run" / LOCK_NAME).is_file()
        raise RuntimeError("stage failed")
    assert not (tmp_path / "run" / LOCK_NAME).exists()


def test_release_leaves_a_lock_that_is_no_longer_ours(tmp_path: Path) -> None:
    lock = RunLock(tmp_path)
    lock.acquire()
    text = _write_lock(tmp_path / LOCK_NAME, os.getpid(), token="someone-else")
    lock.release()
    assert (tmp_path / LOCK_NAME).read_text() == text
