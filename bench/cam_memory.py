"""Peak memory and time of one TransCAM / BNR training step on CPU.

Each configuration runs in a fresh subprocess so that the peak resident set size
(``getrusage`` max RSS, a high-water mark) belongs to that configuration alone; the number
reported is the rise of that mark above the level reached after building the model and
the batch. ``tracemalloc`` cannot see torch's allocations, hence RSS.

    python bench/cam_memory.py                      # conformer_small, batch 2, 256×256
    python bench/cam_memory.py --size 512 --steps 2
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

CONFIGS = {
    # name: (objective, objective kwargs, training step?)
    "transcam (no attention)": ("transcam", {}, True),
    "bnr": ("bnr", {}, True),
    "bnr detach_attention": ("bnr", {"detach_attention": True}, True),
    "inference extract(transcam)": ("transcam", {}, False),
}


def max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def worker(args: argparse.Namespace) -> dict:
    import torch

    from wsss.registry import CAM_MODELS, METHODS

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    method, method_args, train = CONFIGS[args.worker]
    model = CAM_MODELS.build("transcam", backbone=args.backbone, num_classes=21).train(train)
    objective = METHODS.build(method, **method_args)
    x = torch.randn(args.batch, 3, args.size, args.size)
    labels = (torch.rand(args.batch, 20) < 0.2).float()
    base = max_rss_mib()
    times, loss = [], float("nan")
    for _ in range(args.steps + 1):  # the first step is a warm-up
        t0 = time.perf_counter()
        if train:
            model.zero_grad(set_to_none=True)
            out = model(x, with_attention=objective.needs_attention)
            parts = objective(out, labels)
            parts["loss"].backward()
            loss = float(parts["loss"].detach())
        else:
            with torch.no_grad():
                model.extract(x, "transcam")
        times.append(time.perf_counter() - t0)
    return {
        "config": args.worker,
        "seconds": statistics.median(times[1:]),
        "peak_mib": max_rss_mib() - base,
        "loss": loss,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="conformer_small")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--worker", choices=list(CONFIGS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return

    print(
        f"TransCAM on {args.backbone}, batch {args.batch}, {args.size}×{args.size}, CPU, "
        f"{args.threads} threads, median of {args.steps} steps after 1 warm-up"
    )
    print(f"{'configuration':<30} {'s/step':>8} {'peak RSS Δ (MiB)':>17} {'loss':>8}")
    for name in CONFIGS:
        cmd = [
            sys.executable,
            __file__,
            "--worker",
            name,
            "--backbone",
            args.backbone,
            "--batch",
            str(args.batch),
        ]
        cmd += ["--size", str(args.size), "--steps", str(args.steps), "--threads", str(args.threads)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(f"{name:<30} failed: {done.stderr.strip().splitlines()[-1:]}")
            continue
        row = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{name:<30} {row['seconds']:>8.2f} {row['peak_mib']:>17.0f} {row['loss']:>8.3f}")


if __name__ == "__main__":
    main()
