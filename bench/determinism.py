"""What makes the demo's numbers differ between runs: thread count, CPU instruction set, load.

Runs ``wsss demo --quick`` (64 images, one epoch each) once per variant in a fresh process and
prints the three scored steps of each, so the variants that change a number stand out:

* torch threads 1, 2 and 3 (``OMP_NUM_THREADS``);
* the CPU kernels limited to AVX2 (``ATEN_CPU_CAPABILITY=avx2``, ``ONEDNN_MAX_CPU_ISA=AVX2``): what
  a machine without AVX-512 runs;
* the same run twice, and once beside two busy-loop processes (a loaded machine).

    python bench/determinism.py                 # all variants, about 1 minute each on 2 cores
    python bench/determinism.py --variants threads-2 threads-1
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
# name: (extra environment, number of busy-loop processes beside the run)
VARIANTS: dict[str, tuple[dict[str, str], int]] = {
    "threads-2": ({"OMP_NUM_THREADS": "2"}, 0),
    "threads-2-again": ({"OMP_NUM_THREADS": "2"}, 0),
    "threads-1": ({"OMP_NUM_THREADS": "1"}, 0),
    "threads-3": ({"OMP_NUM_THREADS": "3"}, 0),
    "threads-2-avx2": ({"OMP_NUM_THREADS": "2", **AVX2}, 0),
    "threads-2-beside-2-busy-loops": ({"OMP_NUM_THREADS": "2"}, 2),
}


def scored_steps(run_dir: Path) -> tuple[float, float, float]:
    """(CAM seeds train oracle, pseudo-labels train, segmentation val) mIoU in % from run.json."""
    stages = json.loads((run_dir / "run.json").read_text())["stages"]
    seeds = stages["eval-cams"]["metrics"]["splits"]["train"]["oracle_miou"]
    return (
        100 * seeds,
        100 * stages["make-labels"]["metrics"]["miou"],
        100 * stages["predict"]["metrics"]["val"]["miou"],
    )


def run_variant(name: str, out: Path) -> tuple[float, float, float]:
    extra, busy = VARIANTS[name]
    loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
    try:
        subprocess.run(
            [sys.executable, "-m", "wsss", "demo", "--quick", "--out", str(out / name)],
            env={**os.environ, **extra},
            check=True,
            capture_output=True,
        )
    finally:
        for loop in loops:
            loop.terminate()
            loop.wait()
    return scored_steps(out / name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = ap.parse_args()
    print(f"wsss demo --quick, mIoU %; load average at start {os.getloadavg()[0]:.1f}")
    print("| variant | seeds (train, oracle) | pseudo-labels (train) | segmentation (val) |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.variants:
            numbers = run_variant(name, Path(tmp))
            print(f"| {name} | " + " | ".join(f"{v:.2f}" for v in numbers) + " |", flush=True)


if __name__ == "__main__":
    main()
