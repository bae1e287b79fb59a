"""A pool whose parent is killed with SIGKILL must not leave its workers running."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

if sys.platform == "win32":  # pragma: no cover
    pytest.skip("SIGKILL is POSIX-only", allow_module_level=True)

WORK = """
import os, time

def slow_pid(item):
    time.sleep(0.2)
    return os.getpid()
"""

PARENT = """
from wsss.refine.pool import parallel_map
from work import slow_pid
for pid in parallel_map(slow_pid, range(1000), workers=2, progress=False):
    print(pid, flush=True)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by init) counts as gone
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.is_file() and stat.read_text().split(") ")[-1].startswith("Z"))


def test_workers_exit_when_the_parent_is_killed(tmp_path: Path) -> None:
    (tmp_path / "work.py").write_text(textwrap.dedent(WORK))
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True, env=env, cwd=tmp_path
    )
    workers: set[int] = set()
    deadline = time.monotonic() + 120
    while len(workers) < 2 and time.monotonic() < deadline:  # both workers have done some work
        workers.add(int(parent.stdout.readline()))
    assert len(workers) == 2 and parent.pid not in workers
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 20
    while any(map(_alive, workers)) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [pid for pid in workers if _alive(pid)]
    for pid in left:  # do not leak them from the test either
        os.kill(pid, 9)
    assert not left, f"workers {left} outlived their killed parent"
