"""Progress bars: off with --no-progress, and by default off when stderr is not a terminal."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest

from wsss.cli import main
from wsss.config import load_recipe
from wsss.engine import init_distributed, resolve_device
from wsss.stages.context import StageContext


class _Stderr(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


def _ctx(progress: bool | None) -> StageContext:
    return StageContext(
        recipe=load_recipe("synth/bnr-nano"),
        run_dir=Path("unused"),
        device=resolve_device("cpu"),
        dist=init_distributed(),
        logger=logging.getLogger("test"),
        progress=progress,
    )


@pytest.mark.parametrize(
    ("progress", "tty", "shown"),
    [(None, True, True), (None, False, False), (False, True, False), (True, False, True)],
)
def test_bars_follow_the_flag_then_the_terminal(monkeypatch, progress, tty, shown) -> None:
    monkeypatch.setattr("sys.stderr", _Stderr(tty))
    assert _ctx(progress).show_progress is shown


def test_wsss_run_and_stage_commands_pass_no_progress_on(monkeypatch, tmp_path: Path) -> None:
    import wsss.pipeline

    seen = []
    monkeypatch.setattr(
        wsss.pipeline, "run_pipeline", lambda *a, **k: seen.append(k["progress"]) or {"stages": {}}
    )
    assert main(["run", "synth/bnr-nano", "--out", str(tmp_path), "--no-progress"]) == 0
    assert main(["run", "synth/bnr-nano", "--out", str(tmp_path)]) == 0
    assert main(["make-labels", "synth/bnr-nano", "--out", str(tmp_path), "--no-progress"]) == 0
    assert seen == [False, None, False]


def test_wsss_demo_passes_no_progress_on(monkeypatch, tmp_path: Path) -> None:
    import wsss.demo

    seen = []
    monkeypatch.setattr(wsss.demo, "run_demo", lambda **k: seen.append(k["progress"]) or {})
    assert main(["demo", "--out", str(tmp_path), "--no-progress"]) == 0
    assert main(["demo", "--out", str(tmp_path)]) == 0
    assert seen == [False, None]
