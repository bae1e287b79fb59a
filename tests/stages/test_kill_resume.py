"""Kill ``wsss run`` with SIGKILL inside make-cams and inside train-seg, rerun, compare.

One run directory is interrupted twice (a hard kill, as from an OOM killer or a pre-empted
node) and finished by a plain ``wsss run``; a second directory runs the same recipe straight
through. Resume must be exact (identical CAM files, weights, predictions and mIoU), must not
redo finished work, and must leave no temporary files behind.
"""

from __future__ import annotations

import json
import os
import signal
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
from wsss.engine.runlog import read_scalars

if sys.platform == "win32":  # pragma: no cover
    pytest.skip("SIGKILL is POSIX-only", allow_module_level=True)

DRIVER = Path(__file__).with_name("resume_driver.py")
NUM_TRAIN, NUM_VAL = 48, 16
SEG_EPOCHS = 3
STEPS_PER_EPOCH = NUM_TRAIN // 16  # segmentation.batch_size of the recipe, drop_last
QUICK = [
    "classifier.epochs=1",
    "classifier.num_workers=0",
    "cams.scales=[64.0]",
    "cams.batch_images=16",
    "labels.crf=null",
    "labels.workers=1",
    f"segmentation.epochs={SEG_EPOCHS}",
    "segmentation.pretrained=null",
    "segmentation.num_workers=0",
    "segmentation.log_every=1",
    "predict.scales=[1.0]",
]
WAIT_S = 240.0  # generous: the machine may be loaded; a normal run needs a few seconds per phase


@dataclass
class Interrupted:
    """What the interrupted run looked like at each kill, and its finished directory."""

    run: Path
    cams_at_kill: dict[str, tuple[int, int]]  # CAM file name -> (inode, mtime_ns) right after kill 1
    saved_epoch: int  # epoch in train-seg/state.pt right after kill 2
    saved_step: int


def _run_plain(root: Path, out: Path, log: Path) -> None:
    with log.open("w") as fh:
        rc = subprocess.run(
            [sys.executable, "-m", "wsss", *cli_args(root, out, QUICK)],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=driver_env(),
            timeout=WAIT_S,
        ).returncode
    assert rc == 0, f"wsss run failed ({rc}):\n{log.read_text()[-3000:]}"


def _run_and_kill(
    driver_args: list[str], root: Path, out: Path, log: Path, ready: Callable[[], bool]
) -> None:
    """Start the slowed-down driver, SIGKILL it as soon as ``ready()`` holds, reap it."""
    with log.open("w") as fh:
        proc = subprocess.Popen(
            [sys.executable, str(DRIVER), *driver_args, "--", *cli_args(root, out, QUICK)],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=driver_env(),
        )
        deadline = time.monotonic() + WAIT_S
        try:
            while not ready():
                if proc.poll() is not None:
                    pytest.fail(
                        f"driver exited ({proc.returncode}) before the kill point:\n{log.read_text()}"
                    )
                if time.monotonic() > deadline:
                    pytest.fail(f"kill point not reached in {WAIT_S} s:\n{log.read_text()[-3000:]}")
                time.sleep(0.02)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"driver was not killed (rc {proc.returncode})"


def _cam_files(run: Path) -> list[Path]:
    folder = run / "cams"
    return sorted(p for p in folder.glob("*.npz") if not p.name.startswith(".")) if folder.is_dir() else []


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    generate_synth(root, seed=0, num_train=NUM_TRAIN, num_val=NUM_VAL, progress=False)
    return root


@pytest.fixture(scope="module")
def straight(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("straight")
    _run_plain(synth_root, work / "run", work / "run.log")
    return work / "run"


@pytest.fixture(scope="module")
def interrupted(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Interrupted:
    work = tmp_path_factory.mktemp("interrupted")
    run = work / "run"
    # 1: killed inside make-cams, part-way through its first batch of 16 images: the rerun must
    # batch them as the uninterrupted run did (CPU kernels round differently by batch size)
    _run_and_kill(
        ["--cam-delay", "0.5"], synth_root, run, work / "kill1.log", lambda: len(_cam_files(run)) >= 10
    )
    cams_at_kill = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in _cam_files(run)}
    assert 10 <= len(cams_at_kill) < NUM_TRAIN + NUM_VAL, "kill 1 did not land inside make-cams"
    assert not (run / "train-seg").exists()
    # 2: resumes make-cams, runs on, killed inside train-seg after at least one finished epoch
    state = run / "train-seg" / "state.pt"
    _run_and_kill(["--step-delay", "1.0"], synth_root, run, work / "kill2.log", state.is_file)
    saved = torch.load(state, weights_only=True)
    assert not (run / "train-seg" / "model.safetensors").exists(), "kill 2 did not land inside train-seg"
    assert 1 <= saved["epoch"] < SEG_EPOCHS
    # 3: a plain rerun finishes the job
    _run_plain(synth_root, run, work / "rerun.log")
    return Interrupted(run, cams_at_kill, int(saved["epoch"]), int(saved["step"]))


def test_cam_files_identical_to_uninterrupted_run(straight: Path, interrupted: Interrupted) -> None:
    a_files, b_files = _cam_files(straight), _cam_files(interrupted.run)
    assert [p.name for p in a_files] == [p.name for p in b_files]
    assert len(a_files) == NUM_TRAIN + NUM_VAL
    for pa, pb in zip(a_files, b_files):
        a, b = load_cam(pa), load_cam(pb)
        assert np.array_equal(a.keys, b.keys), pa.name
        assert a.cams.dtype == b.cams.dtype and np.array_equal(a.cams, b.cams), pa.name
        assert (a.size, a.stride, a.norm) == (b.size, b.stride, b.norm), pa.name


def test_cams_written_before_the_kill_were_not_redone(interrupted: Interrupted) -> None:
    for name, (inode, mtime) in interrupted.cams_at_kill.items():
        st = (interrupted.run / "cams" / name).stat()
        assert (st.st_ino, st.st_mtime_ns) == (inode, mtime), f"{name} was rewritten"
    record = json.loads((interrupted.run / "run.json").read_text())
    written = record["stages"]["make-cams"]["metrics"]["written"]
    assert written == NUM_TRAIN + NUM_VAL - len(interrupted.cams_at_kill)


def test_seg_training_resumed_at_the_saved_epoch(straight: Path, interrupted: Interrupted) -> None:
    log = (interrupted.run / "logs" / "pipeline.log").read_text().splitlines()
    resumes = [line for line in log if "train-seg: resuming from" in line]
    assert len(resumes) == 1 and resumes[0].endswith(f"at epoch {interrupted.saved_epoch}")
    # after the resume only the remaining epochs ran
    after = log[log.index(resumes[0]) + 1 :]
    epochs = [line.split("train-seg epoch ")[1].split(":")[0] for line in after if "train-seg epoch " in line]
    assert epochs == [f"{e}/{SEG_EPOCHS}" for e in range(interrupted.saved_epoch + 1, SEG_EPOCHS + 1)]
    assert interrupted.saved_step == interrupted.saved_epoch * STEPS_PER_EPOCH
    # per-step losses: steps up to the checkpoint were logged once (not redone), and every step's
    # loss equals the uninterrupted run's (a redone partial epoch logs the same value again)
    lines = [json.loads(x) for x in (interrupted.run / "metrics.jsonl").read_text().splitlines() if x]
    steps = [r["step"] for r in lines if r["tag"] == "train-seg/loss"]
    assert all(steps.count(s) == 1 for s in range(1, interrupted.saved_step + 1))
    total = SEG_EPOCHS * STEPS_PER_EPOCH
    assert sorted(set(steps)) == list(range(1, total + 1))
    reference = dict(read_scalars(straight)["train-seg/loss"])
    for r in lines:
        if r["tag"] == "train-seg/loss":
            assert r["value"] == reference[r["step"]], f"loss differs at step {r['step']}"


def test_final_outputs_match_the_uninterrupted_run(straight: Path, interrupted: Interrupted) -> None:
    run = interrupted.run
    rec_a = json.loads((straight / "run.json").read_text())
    rec_b = json.loads((run / "run.json").read_text())
    assert list(rec_b["stages"]) == list(rec_a["stages"])
    miou_a = rec_a["stages"]["predict"]["metrics"]["val"]["miou"]
    miou_b = rec_b["stages"]["predict"]["metrics"]["val"]["miou"]
    assert miou_a == miou_b
    seg_a = json.loads((straight / "eval" / "seg_val.json").read_text())["scores"]
    seg_b = json.loads((run / "eval" / "seg_val.json").read_text())["scores"]
    assert seg_a == seg_b and seg_b["miou"] == miou_b
    assert rec_b["stages"]["train-seg"]["metrics"]["steps"] == SEG_EPOCHS * STEPS_PER_EPOCH
    wa = load_file(straight / "train-seg" / "model.safetensors")
    wb = load_file(run / "train-seg" / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    for folder in ("labels", "predictions"):
        pa = sorted((straight / folder).glob("*.png"))
        assert [p.name for p in pa] == sorted(p.name for p in (run / folder).glob("*.png"))
        for p in pa:
            assert np.array_equal(read_label_png(p), read_label_png(run / folder / p.name)), p


def test_no_temporary_files_are_left(interrupted: Interrupted) -> None:
    leftovers = [
        p
        for p in interrupted.run.rglob("*")
        if p.name.startswith(".") or p.name.endswith((".tmp", ".partial"))
    ]
    assert leftovers == []
