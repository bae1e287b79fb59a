"""Atomic writes: a writer killed mid-file leaves only a marked temporary file, which is cleaned up."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from wsss.files import TEMP_MARKER, remove_stale_temp_files, write_text

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
