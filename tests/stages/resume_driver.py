"""Run the ``wsss`` CLI with two per-item functions slowed down, for the kill-and-resume test.

The test kills this process with SIGKILL and needs the signal to land *inside* a stage whatever
the load of the machine: a pause after every CAM file written by ``make-cams`` and before every
optimizer step of ``train-seg`` stretches those stages so the test can watch the run directory
and kill at a known point. Nothing else changes, so what the killed run left behind is exactly
what a real interrupted run leaves.

Usage: ``python resume_driver.py [--cam-delay S] [--step-delay S] -- run RECIPE --out DIR ...``
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import wsss.stages.make_cams as make_cams
import wsss.stages.train_seg as train_seg
from wsss.cli import main as cli_main


def driver_env() -> dict[str, str]:
    """The environment of the tests' runs: one thread (the interrupted and the uninterrupted run
    compute with the same reduction order, and the shared cores stay free), unbuffered output."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def cli_args(root: Path, out: Path, overrides: list[str]) -> list[str]:
    """``wsss run synth/bnr-nano`` on the tests' synthetic ``root`` into ``out`` with ``overrides``."""
    args = ["run", "synth/bnr-nano", "--out", str(out), "--device", "cpu", "--set", f"data.root={root}"]
    for item in overrides:
        args += ["--set", item]
    return args


def slow_after(fn: Callable[..., Any], delay: float) -> Callable[..., Any]:
    """``fn`` followed by a pause: the pause comes after the output exists, so a kill seen by
    the watcher lands between two items rather than in the middle of a write."""

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        out = fn(*args, **kwargs)
        time.sleep(delay)
        return out

    return wrapped


def slow_steps(loop: Callable[..., Any], delay: float) -> Callable[..., Any]:
    """``train_loop`` whose ``step_fn`` pauses before every optimizer step."""

    def wrapped(*args: Any, step_fn: Callable[..., Any], **kwargs: Any) -> Any:
        def slow_step(net: Any, batch: Any, progress: Any) -> Any:
            time.sleep(delay)
            return step_fn(net, batch, progress)

        return loop(*args, step_fn=slow_step, **kwargs)

    return wrapped


def main(argv: list[str]) -> int:
    if "--" not in argv:
        print("usage: resume_driver.py [--cam-delay S] [--step-delay S] -- CLI ARGS", file=sys.stderr)
        return 2
    cut = argv.index("--")
    parser = argparse.ArgumentParser(prog="resume_driver.py")
    parser.add_argument("--cam-delay", type=float, default=0.0, help="seconds after each CAM file")
    parser.add_argument("--step-delay", type=float, default=0.0, help="seconds before each train-seg step")
    args = parser.parse_args(argv[:cut])
    if args.cam_delay > 0:
        make_cams.save_cam = slow_after(make_cams.save_cam, args.cam_delay)
    if args.step_delay > 0:
        train_seg.train_loop = slow_steps(train_seg.train_loop, args.step_delay)
    return cli_main(argv[cut + 1 :])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
