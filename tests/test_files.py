"""Atomic writes: a writer killed mid-file leaves only a marked temporary file, which is cleaned up."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from wsss.files import TEMP_MARKER, atomic_path, remove_stale_temp_files, write_text

KILLED_WRITER = """
import os, signal, sys
from wsss.files import atomic_open, atomic_path
with atomic_open(sys.argv[1], "w") as fh:
    fh.write("half a file")
    fh.flush()
    with atomic_path(sys.argv[2]) as tmp:
        tmp.write_bytes(b"half an image")
        os.kill(os.getpid(), signal.SIGKILL)
"""


def test_killed_writer_leaves_no_target_and_its_temp_files_are_removed(tmp_path: Path) -> None:
    out = tmp_path / "run" / "eval"
    write_text(out / "kept.json", "{}")
    res = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(out / "a.json"), str(out / "b.png")])
    assert res.returncode == -9
    assert not (out / "a.json").exists() and not (out / "b.png").exists()
    leftovers = sorted(p.name for p in out.iterdir() if TEMP_MARKER in p.name)
    assert len(leftovers) == 2
    assert any(n.startswith(".a.json") for n in leftovers) and any(n.startswith(".b") for n in leftovers)
    assert any(n.endswith(".png") for n in leftovers)  # atomic_path keeps the suffix for PIL/numpy
    removed = remove_stale_temp_files(tmp_path / "run")
    assert sorted(p.name for p in removed) == leftovers
    assert sorted(p.name for p in out.iterdir()) == ["kept.json"]


@pytest.mark.parametrize(
    ("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)], ids=["022", "077", "002"]
)
def test_outputs_get_the_mode_open_would_give_them(tmp_path: Path, umask: int, mode: int) -> None:
    """Issue 17: every output was 0600 (mkstemp), unreadable to the user's group whatever the umask."""
    old = os.umask(umask)
    try:
        write_text(tmp_path / "run" / "a.json", "{}")
        with atomic_path(tmp_path / "run" / "b.png") as tmp:
            tmp.write_bytes(b"png")
        with open(tmp_path / "plain.txt", "w") as fh:  # what the user's own files get
            fh.write("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode) == mode
    assert stat.S_IMODE((tmp_path / "run" / "a.json").stat().st_mode) == mode
    assert stat.S_IMODE((tmp_path / "run" / "b.png").stat().st_mode) == mode
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["a.json", "b.png"]
