"""Ctrl-C and SIGTERM during ``wsss run``: a clean stop, one line saying how to resume, and a rerun
that ends where an uninterrupted run ends. A second process on the same run directory is refused.

One run directory goes through: Ctrl-C (SIGINT to the whole process group, as a terminal sends
it) inside make-cams, while a second ``wsss run`` on the same directory is refused by the lock;
the printed resume command, killed with SIGTERM (to the main process only, as ``kill PID`` does)
inside train-seg while a DataLoader worker runs; the resume command again, to the end. A second
directory runs the same recipe straight through. The slowed-down CLI of the kill -9 test
(``resume_driver.py``) holds each stage open long enough to signal it at a known point.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.stages.resume_driver import cli_args, driver_env
from wsss.cams.files import load_cam
from wsss.data.palette import read_label_png
from wsss.data.synth import generate_synth
from wsss.engine.runlock import LOCK_NAME
from wsss.files import TEMP_MARKER

if sys.platform != "linux":  # pragma: no cover
    pytest.skip("POSIX signals and /proc", allow_module_level=True)

DRIVER = Path(__file__).with_name("resume_driver.py")
NUM_TRAIN, NUM_VAL = 32, 8
SEG_EPOCHS = 2
QUICK = [
    "stages=[train-cls, make-cams, make-labels, train-seg, predict]",
    "classifier.epochs=1",
    "classifier.num_workers=0",
    "cams.scales=[64.0]",
    "cams.batch_images=16",
    "labels.crf=null",
    "labels.workers=1",
    f"segmentation.epochs={SEG_EPOCHS}",
    "segmentation.pretrained=null",
    "segmentation.num_workers=1",  # a DataLoader worker process that must not outlive the run
    "predict.scales=[1.0]",
]
WAIT_S = 240.0  # generous: the machine may be loaded


@dataclass
class Stop:
    """One interrupted invocation: its exit status, stderr, and the run directory around the signal."""

    returncode: int
    stderr: str
    before: dict[str, str]  # finished file -> sha256 just before the signal
    after: dict[str, str]  # the same files right after the exit
    mtimes: dict[str, int]  # finished file -> mtime_ns just before the signal
    children: list[int]  # child processes seen just before the signal


@dataclass
class Scenario:
    run: Path
    straight: Path
    args: list[str]
    refused: subprocess.CompletedProcess
    refused_listing: tuple[list[str], list[str]]  # run directory's files before / after the refusal
    holder_pid: int
    sigint: Stop
    sigterm: Stop
    saved_epoch: int
    rerun: subprocess.CompletedProcess


def _wsss(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "wsss", *args],
        capture_output=True,
        text=True,
        env=driver_env(),
        timeout=WAIT_S,
    )


def _finished_files(run: Path) -> list[Path]:
    """Outputs a rerun trusts: not logs (append streams), not the run record or lock."""
    return sorted(
        p
        for p in run.rglob("*")
        if p.is_file()
        and not p.name.startswith(".")
        and p.parent.name not in ("logs", "tb")
        and p.suffix in (".npz", ".png", ".safetensors", ".pt")
    )


def _hashes(run: Path, paths: list[Path]) -> dict[str, str]:
    return {
        str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest() if p.exists() else "missing"
        for p in paths
    }


def _children(pid: int) -> list[int]:
    """Live child processes of ``pid``, from /proc (no psutil)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry.name))
    return found


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2 :][0] != "Z"


def _cam_count(run: Path) -> int:
    folder = run / "cams"
    return sum(1 for p in folder.glob("*.npz") if not p.name.startswith(".")) if folder.is_dir() else 0


def _wait(proc: subprocess.Popen, ready: Callable[[], bool], what: str, err: Path) -> None:
    deadline = time.monotonic() + WAIT_S
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"run exited ({proc.returncode}) before {what}:\n{err.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not reached in {WAIT_S} s:\n{err.read_text()[-3000:]}")
        time.sleep(0.02)


def _signal_and_reap(
    proc: subprocess.Popen, run: Path, err: Path, send: Callable[[], None], children: list[int]
) -> Stop:
    files = _finished_files(run)
    before = _hashes(run, files)
    mtimes = {str(p.relative_to(run)): p.stat().st_mtime_ns for p in files}
    send()
    try:
        proc.wait(timeout=WAIT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return Stop(proc.returncode, err.read_text(), before, _hashes(run, files), mtimes, children)


def _driver(slow: list[str], args: list[str], err: Path) -> subprocess.Popen:
    with err.open("w") as fh:
        return subprocess.Popen(
            [sys.executable, str(DRIVER), *slow, "--", *args],
            stdout=subprocess.DEVNULL,
            stderr=fh,
            env=driver_env(),
            start_new_session=True,  # its own process group, as a terminal's foreground job has
        )


def _resume_args(stderr: str) -> list[str]:
    """The arguments of the resume command the interrupted run printed."""
    words = shlex.split(stderr.rstrip("\n").splitlines()[-1].split("resume with: ", 1)[1])
    assert words[0] == "wsss"
    return words[1:]


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    root = tmp_path_factory.mktemp("synth")
    generate_synth(root, seed=0, num_train=NUM_TRAIN, num_val=NUM_VAL, progress=False)
    work = tmp_path_factory.mktemp("interrupt")
    run, straight = work / "run", work / "straight"
    args = cli_args(root, run, QUICK)
    with (work / "straight.log").open("w") as log:  # runs beside the interrupted one
        plain = subprocess.Popen(
            [sys.executable, "-m", "wsss", *cli_args(root, straight, QUICK)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=driver_env(),
        )
    try:
        # 1: Ctrl-C inside make-cams; meanwhile a second process on the same directory is refused
        err = work / "sigint.err"
        proc = _driver(["--cam-delay", "1.0"], args, err)
        _wait(proc, lambda: _cam_count(run) >= 4, "4 CAM files", err)
        listing = sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.parent.name != "cams")
        refused = _wsss(args)
        listing_after = sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.parent.name != "cams")
        assert proc.poll() is None, "the first run stopped while the second was refused"
        holder = proc.pid
        sigint = _signal_and_reap(proc, run, err, lambda: os.killpg(proc.pid, signal.SIGINT), [])
        # 2: the printed resume command, SIGTERM to the main process inside train-seg's second epoch
        err = work / "sigterm.err"
        proc = _driver(["--step-delay", "1.0"], _resume_args(sigint.stderr), err)
        state = run / "train-seg" / "state.pt"
        _wait(proc, state.is_file, "the first train-seg checkpoint", err)
        _wait(proc, lambda: bool(_children(proc.pid)), "a DataLoader worker of epoch 2", err)
        children = _children(proc.pid)
        sigterm = _signal_and_reap(proc, run, err, lambda: os.kill(proc.pid, signal.SIGTERM), children)
        saved_epoch = int(torch.load(state, weights_only=True)["epoch"])
        # 3: the resume command once more, to the end
        rerun = _wsss(_resume_args(sigterm.stderr))
        assert plain.wait(timeout=WAIT_S) == 0, (work / "straight.log").read_text()[-3000:]
    finally:
        if plain.poll() is None:
            plain.kill()
            plain.wait()
    return Scenario(
        run, straight, args, refused, (listing, listing_after), holder, sigint, sigterm, saved_epoch, rerun
    )


def _message(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("wsss run: interrupted")]


def test_a_second_process_on_the_run_directory_is_refused(scenario: Scenario) -> None:
    res = scenario.refused
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith(
        f"wsss run: error: run directory {scenario.run} is in use by another wsss process "
        f"(pid {scenario.holder_pid} on {socket.gethostname()}, started "
    )
    assert "command: resume_driver.py --cam-delay 1.0 -- run synth/bnr-nano" in lines[0]
    assert "wait for it to finish, or use another --out" in lines[0]
    before, after = scenario.refused_listing
    assert after == before  # it wrote nothing: no log, no recipe, no lock of its own


def test_ctrl_c_stops_make_cams_with_one_line_naming_the_resume_command(scenario: Scenario) -> None:
    stop = scenario.sigint
    assert stop.returncode == 130, stop.stderr[-3000:]
    expected = (
        "wsss run: interrupted by SIGINT in stage make-cams; finished files and checkpoints are kept; "
        f"resume with: {shlex.join(['wsss', *scenario.args])}"
    )
    assert _message(stop.stderr) == [expected]
    assert stop.stderr.rstrip("\n").splitlines()[-1] == expected
    assert "Traceback" not in stop.stderr
    assert 4 <= sum(name.startswith("cams/") for name in stop.before) < NUM_TRAIN + NUM_VAL
    assert stop.after == stop.before  # finished CAM files and the classifier untouched


def test_sigterm_stops_train_seg_and_its_dataloader_worker(scenario: Scenario) -> None:
    stop = scenario.sigterm
    assert stop.returncode == 143, stop.stderr[-3000:]
    assert _message(stop.stderr) == [
        "wsss run: interrupted by SIGTERM in stage train-seg; finished files and checkpoints are kept; "
        f"resume with: {shlex.join(['wsss', *scenario.args])}"
    ]
    assert "Traceback" not in stop.stderr
    assert stop.children, "no DataLoader worker was running"
    deadline = time.monotonic() + 10  # an orphan would still run; the workers' own exit takes a moment
    while any(_running(pid) for pid in stop.children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [pid for pid in stop.children if _running(pid)] == []
    assert stop.after == stop.before  # CAMs, labels, classifier and the epoch-1 checkpoint untouched
    assert "train-seg/state.pt" in stop.before and "train-seg/model.safetensors" not in stop.before
    assert scenario.saved_epoch == 1


def test_nothing_is_left_that_a_rerun_would_trust(scenario: Scenario) -> None:
    """After each stop: no temporary file, no lock, and run.json saying where it stopped."""
    for name in ("sigint", "sigterm"):
        log = (scenario.run / "logs" / "pipeline.log").read_text()
        assert f"interrupted by {name.upper()}" in log  # the message and its traceback, in the log only
    record = json.loads((scenario.run / "run.json").read_text())
    assert "interrupted" not in record  # the finished rerun dropped the last note
    assert list(scenario.run.rglob(f"*{TEMP_MARKER}*")) == []
    assert list(scenario.run.glob("*.lock")) == [] and not (scenario.run / LOCK_NAME).exists()


def test_finished_files_were_not_redone_by_the_reruns(scenario: Scenario) -> None:
    for rel, mtime in scenario.sigint.mtimes.items():
        if rel.startswith(("cams/", "train-cls/")):
            assert (scenario.run / rel).stat().st_mtime_ns == mtime, f"{rel} was rewritten"


def test_the_resumed_run_ends_where_an_uninterrupted_run_ends(scenario: Scenario) -> None:
    assert scenario.rerun.returncode == 0, scenario.rerun.stderr[-3000:]
    run, straight = scenario.run, scenario.straight
    cams = sorted(p.name for p in (straight / "cams").glob("*.npz"))
    assert len(cams) == NUM_TRAIN + NUM_VAL
    assert sorted(p.name for p in (run / "cams").glob("*.npz")) == cams
    for name in cams:
        a, b = load_cam(straight / "cams" / name), load_cam(run / "cams" / name)
        assert np.array_equal(a.keys, b.keys) and np.array_equal(a.cams, b.cams), name
    wa = load_file(straight / "train-seg" / "model.safetensors")
    wb = load_file(run / "train-seg" / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    for folder in ("labels", "predictions"):
        names = sorted(p.name for p in (straight / folder).glob("*.png"))
        assert names and names == sorted(p.name for p in (run / folder).glob("*.png"))
        for name in names:
            assert np.array_equal(
                read_label_png(straight / folder / name), read_label_png(run / folder / name)
            )
    rec_a = json.loads((straight / "run.json").read_text())
    rec_b = json.loads((run / "run.json").read_text())
    assert list(rec_b["stages"]) == list(rec_a["stages"])
    assert rec_b["stages"]["predict"]["metrics"] == rec_a["stages"]["predict"]["metrics"]
