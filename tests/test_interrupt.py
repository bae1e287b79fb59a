"""SIGTERM taken like Ctrl-C, the one-line message with the resume command, and whose temporary
files an interrupted process may remove."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import wsss.cli.pipeline as cli_pipeline
from wsss.cli import main
from wsss.files import TEMP_MARKER, atomic_path, remove_stale_temp_files, temp_file_owner
from wsss.interrupt import RunInterrupted, Terminated, exit_status, sigterm_as_interrupt
from wsss.processes import host_tag

if sys.platform == "win32":  # pragma: no cover
    pytest.skip("POSIX signals", allow_module_level=True)


def test_sigterm_raises_terminated_inside_and_the_old_handler_comes_back() -> None:
    def before(signum: int, frame: object) -> None:
        raise AssertionError("the previous handler must not run inside the block")

    old = signal.signal(signal.SIGTERM, before)
    try:
        with pytest.raises(Terminated) as info, sigterm_as_interrupt():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises at once
        assert isinstance(info.value, KeyboardInterrupt)  # finally blocks and atomic writers clean up
        assert exit_status(info.value) == 143 and exit_status(KeyboardInterrupt()) == 130
        assert signal.getsignal(signal.SIGTERM) is before
    finally:
        signal.signal(signal.SIGTERM, old)


def test_an_ignored_sigterm_stays_ignored() -> None:
    old = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        with sigterm_as_interrupt():
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, old)


def _interrupting(exc: BaseException):
    def cmd(args: object) -> int:
        raise exc

    return cmd


def test_run_interrupted_prints_one_line_with_stage_and_resume_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    exc = RunInterrupted(Path("runs/synth-demo"), "make-cams", signal.SIGTERM)
    monkeypatch.setattr(cli_pipeline, "cmd_run", _interrupting(exc))
    rc = main(["run", "synth/demo", "--set", "cams.scales=[64.0, 96.0]", "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 143
    assert err == (
        "wsss run: interrupted by SIGTERM in stage make-cams; finished files and checkpoints are kept; "
        "resume with: wsss run synth/demo --set 'cams.scales=[64.0, 96.0]' --device cpu "
        "--out runs/synth-demo\n"
    )


def test_stage_command_resume_line_keeps_the_given_out_and_shard(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    exc = RunInterrupted(Path("/data/run 1"), "make-cams", signal.SIGINT)
    monkeypatch.setattr(cli_pipeline, "_stage_command", lambda stage: _interrupting(exc))
    rc = main(["make-cams", "synth/demo", "--out", "/data/run 1", "--shard", "1/2"])
    assert rc == 130
    assert capsys.readouterr().err == (
        "wsss make-cams: interrupted by SIGINT in stage make-cams; finished files and checkpoints are "
        "kept; resume with: wsss make-cams synth/demo --out '/data/run 1' --shard 1/2\n"
    )


def test_demo_resumes_with_its_own_out_not_the_upper_bound_directory(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    exc = RunInterrupted(Path("runs/demo/upper-bound"), "train-seg", signal.SIGINT)
    monkeypatch.setattr(cli_pipeline, "cmd_demo", _interrupting(exc))
    assert main(["demo", "--quick", "--with-upper-bound"]) == 130
    assert capsys.readouterr().err.endswith(
        "in stage train-seg; finished files and checkpoints are kept; "
        "resume with: wsss demo --quick --with-upper-bound --out runs/demo\n"
    )


def test_interrupt_outside_a_run_still_gives_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli_pipeline, "cmd_recipes", _interrupting(KeyboardInterrupt()))
    assert main(["recipes"]) == 130
    assert (
        capsys.readouterr().err
        == "wsss recipes: interrupted by SIGINT; finished outputs are kept, rerun to resume\n"
    )


def test_temporary_names_carry_their_writer(tmp_path: Path) -> None:
    with atomic_path(tmp_path / "a.png") as tmp:
        assert TEMP_MARKER in tmp.name and tmp.name.startswith(".a") and tmp.suffix == ".png"
        assert temp_file_owner(tmp) == (host_tag(), os.getpid())
    assert temp_file_owner(tmp_path / "a.png") is None


def test_only_temporary_files_of_ended_writers_and_this_process_are_removed(
    tmp_path: Path, sleeper: subprocess.Popen
) -> None:
    """Beside other live writers (shards), a process may remove only what nobody writes any more."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    here = host_tag()
    names = {
        "own": f".a.npz{TEMP_MARKER}{here}-{os.getpid()}-00000001.tmp",
        "ended": f".b.npz{TEMP_MARKER}{here}-{dead.pid}-00000002.tmp",
        "live": f".c.npz{TEMP_MARKER}{here}-{sleeper.pid}-00000003.tmp",
        "other host": f".d.npz{TEMP_MARKER}{'0' * 6 if here != '0' * 6 else '1' * 6}-{dead.pid}-00000004.tmp",
        "no owner": f".e.npz{TEMP_MARKER}0badf00d.tmp",  # an older version's name
    }
    folder = tmp_path / "cams"
    folder.mkdir()
    for name in names.values():
        (folder / name).write_bytes(b"partial")
    (folder / "f.npz").write_bytes(b"finished")
    removed = remove_stale_temp_files(tmp_path, all_writers=False)
    assert sorted(p.name for p in removed) == sorted([names["own"], names["ended"]])
    kept = sorted(p.name for p in folder.iterdir())
    assert kept == sorted([names["live"], names["other host"], names["no owner"], "f.npz"])
    # the sole writer (holding the whole directory's lock) removes every leftover
    assert len(remove_stale_temp_files(tmp_path)) == 3
    assert [p.name for p in folder.iterdir()] == ["f.npz"]
