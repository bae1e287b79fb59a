"""Seed mIoU of several CAM sources on the images they all have CAM files for, per seed and mean ± std.

For a slow extractor (AdvCAM: 60-130 s per coco128 photo on this CPU) that has run on part of a split,
the fair comparison is on that part: this takes, for each seed, the CAM folders of every method, keeps
the images present in all of them (and in every seed, so each seed scores the same images), and runs
``wsss eval-cams`` on that list (oracle threshold and a fixed GT-free one).

    python bench/cam_subset.py                       # coco128: plain CAM vs AMR vs AdvCAM, seeds 0-2
    python bench/cam_subset.py --fixed 0.15 --seeds 0 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

DATA = Path("../shared/data/coco128-voc")
# method -> CAM folder pattern ({s} = seed)
SOURCES = {
    "plain CAM": "runs/recipe-table/coco128-cam-mobilenet-s{s}/cams",
    "AMR (fused)": "runs/amr-coco128/amr-s{s}/cams",
    "AdvCAM (plain classifier)": "runs/amr-coco128/advcam-s{s}/cams",
}


def names_in(folder: Path) -> set[str]:
    return {p.stem for p in folder.glob("*.npz")}


def fmt(values: list[float]) -> str:
    if not values:
        return "—"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.1f} ± {100 * std:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--fixed", type=float, default=0.15)
    ap.add_argument("--data", type=Path, default=DATA)
    args = ap.parse_args()
    folders = {m: {s: Path(p.format(s=s)) for s in args.seeds} for m, p in SOURCES.items()}
    common = set.intersection(*(names_in(f) for per_seed in folders.values() for f in per_seed.values()))
    if not common:
        raise SystemExit("no image has a CAM file in every folder")
    rows: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        listing = Path(tmp) / "names.txt"
        listing.write_text("\n".join(sorted(common)) + "\n")
        for method, per_seed in folders.items():
            for seed, folder in per_seed.items():
                out = Path(tmp) / f"{method}-{seed}".replace(" ", "_")
                cmd = [sys.executable, "-m", "wsss", "eval-cams", "--cams", str(folder)]
                cmd += [
                    "--gt",
                    str(args.data / "SegmentationClass"),
                    "--list",
                    str(listing),
                    "--classes",
                    "voc",
                ]
                cmd += ["--fixed-threshold", str(args.fixed), "--out", str(out), "--no-progress"]
                subprocess.run(cmd, check=True, capture_output=True, text=True)
                result = json.loads((out / "cam_eval.json").read_text())
                row = rows.setdefault(method, {"oracle": [], "fixed": [], "threshold": [], "bg": []})
                row["oracle"].append(result["oracle"]["miou"])
                row["fixed"].append(result["fixed"]["miou"])
                row["threshold"].append(result["oracle"]["threshold"])
                row["bg"].append(result["oracle"]["all_background_miou"])
    print(
        f"{len(common)} images with CAM files from every source and seed ({', '.join(map(str, args.seeds))})"
    )
    print(f"| source | oracle | fixed {args.fixed:g} | oracle thresholds | all background |")
    print("|---|---|---|---|---|")
    for method, row in rows.items():
        thresholds = ", ".join(f"{t:.2f}" for t in row["threshold"])
        print(
            f"| {method} | {fmt(row['oracle'])} | {fmt(row['fixed'])} | {thresholds} | {100 * row['bg'][0]:.1f} |"
        )


if __name__ == "__main__":
    main()
