"""Time the embedded synth generator: rendering alone, then the full dataset written to disk.

Usage: python bench/synth_gen.py [--num-train 800 --num-val 200 --size 96 --num-classes 6]
Prints a table; the brief's target is under 15 s for the default dataset on one core.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from wsss.data.synth import SynthParams, generate_synth, render_sample


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-train", type=int, default=800)
    parser.add_argument("--num-val", type=int, default=200)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--num-classes", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    total = args.num_train + args.num_val

    params = SynthParams(num_classes=args.num_classes, size=args.size, seed=args.seed)
    start = time.perf_counter()
    for i in range(args.num_train):
        render_sample(params, "train", i)
    for i in range(args.num_val):
        render_sample(params, "val", i)
    render_s = time.perf_counter() - start

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "synth"
        start = time.perf_counter()
        summary = generate_synth(
            root,
            num_classes=args.num_classes,
            num_train=args.num_train,
            num_val=args.num_val,
            size=args.size,
            seed=args.seed,
            progress=False,
        )
        full_s = time.perf_counter() - start
        start = time.perf_counter()
        again = generate_synth(
            root,
            num_classes=args.num_classes,
            num_train=args.num_train,
            num_val=args.num_val,
            size=args.size,
            seed=args.seed,
            progress=False,
        )
        skip_s = time.perf_counter() - start
        disk_mb = sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) / 2**20
    assert again["skipped"], "identical rerun should have been skipped"

    print(f"synth: {total} images of {args.size}x{args.size}, {args.num_classes} classes, seed {args.seed}")
    print(f"{'step':<28}{'seconds':>10}{'ms/image':>10}")
    print(f"{'render only (numpy)':<28}{render_s:>10.2f}{1000 * render_s / total:>10.2f}")
    print(f"{'generate_synth (to disk)':<28}{full_s:>10.2f}{1000 * full_s / total:>10.2f}")
    print(f"{'rerun, skipped':<28}{skip_s:>10.3f}{'':>10}")
    print(f"dataset size on disk: {disk_mb:.1f} MiB")
    print(f"images per class (train): {summary['class_images']['train']}")


if __name__ == "__main__":
    main()
