"""Sparse random walk vs PSA's dense squaring on a VOC-sized affinity grid: time, peak memory, agreement.

A 500×375 image gives a 63×47 grid at stride 8 (2961 nodes). With radius 5, β 14 and logt 7
(TransCAM's settings) the dense method squares a 2961² transition matrix 7 times; the sparse
method applies it 128 times as CSR mat-mats on the (2961, 21) score matrix.

Each method runs in its own subprocess so that its RSS high-water mark (``ru_maxrss``) is its
own; the table reports it minus the RSS just before the walk (inputs already built), plus the
walk's wall time (best of ``--repeats``). Results are compared with the dense float64 answer.

    python bench/random_walk.py [--threads 1] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from wsss.models.affinity import pair_affinities
from wsss.refine.pairs import pair_indices
from wsss.refine.random_walk import random_walk, with_background

IMAGE_SIZE = (500, 375)
STRIDE = 8
RADIUS, BETA, LOGT = 5, 14.0, 7
N_CLASSES = 20
METHODS = {
    "sparse-f32": ("sparse", torch.float32),
    "dense-f32": ("dense", torch.float32),
    "sparse-f64": ("sparse", torch.float64),
    "dense-f64": ("dense", torch.float64),
}


def grid_size() -> tuple[int, int]:
    return -(-IMAGE_SIZE[0] // STRIDE), -(-IMAGE_SIZE[1] // STRIDE)


def make_inputs(dtype: torch.dtype, device: str):
    """A synthetic scene: three blobs of different classes; embeddings noisy one-hots, CAMs noisy blobs."""
    gen = torch.Generator().manual_seed(0)
    h, w = grid_size()
    yy, xx = torch.meshgrid(
        torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij"
    )
    regions = torch.zeros(h, w, dtype=torch.long)
    for cls, (cy, cx, ry, rx) in zip((3, 8, 15), ((15, 12, 10, 8), (40, 30, 14, 10), (20, 38, 8, 6))):
        regions[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1] = cls
    emb = torch.nn.functional.one_hot(regions, N_CLASSES + 1).permute(2, 0, 1).double() * 3.0
    emb = emb + 0.3 * torch.randn(emb.shape, generator=gen, dtype=torch.float64)
    src, dst = pair_indices(h, w, RADIUS, cover="all")
    aff = pair_affinities(emb[None], src, dst)[0]
    fg = torch.zeros(N_CLASSES, h, w, dtype=torch.float64)
    for cls in (3, 8, 15):
        inside = (regions == cls).double()
        fg[cls - 1] = (inside * torch.rand(h, w, generator=gen, dtype=torch.float64)).clamp(0, 1)
    scores = with_background(fg, "constant", 0.42)
    return scores.to(device, dtype), aff.to(device, dtype), src.to(device), dst.to(device)


def rss_mb() -> float:
    """Current resident set size (Linux /proc), MB."""
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def worker(method: str, out: Path, repeats: int, device: str) -> None:
    kind, dtype = METHODS[method]
    scores, aff, src, dst = make_inputs(dtype, device)
    base = rss_mb()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_gpu = torch.cuda.memory_allocated()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = random_walk(scores, aff, src, dst, beta=BETA, logt=LOGT, method=kind)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
    if device.startswith("cuda"):
        peak_mb = (torch.cuda.max_memory_allocated() - base_gpu) / 2**20
    np.save(out, result.double().cpu().numpy())
    print(json.dumps({"method": method, "seconds": min(times), "peak_mb": peak_mb}))


def run_worker(method: str, out: Path, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--worker", method, "--out", str(out), "--repeats", str(args.repeats)]
    cmd += ["--threads", str(args.threads), "--device", args.device]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per worker")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument(
        "--repeats", type=int, default=1, help="time each method this many times, report the best"
    )
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--worker", choices=list(METHODS), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.worker:
        worker(args.worker, args.out, args.repeats, args.device)
        return

    h, w = grid_size()
    n_pairs = pair_indices(h, w, RADIUS, cover="all")[0].numel()
    print(
        f"image {IMAGE_SIZE[0]}x{IMAGE_SIZE[1]} -> grid {h}x{w} = {h * w} nodes, {n_pairs} pairs (radius {RADIUS}), "
        f"beta {BETA:g}, logt {LOGT} (t = {2**LOGT}), {N_CLASSES + 1} channels, "
        f"device {args.device}, {args.threads} thread(s)"
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods:
            stats = run_worker(method, Path(tmp) / f"{method}.npy", args)
            stats["result"] = np.load(Path(tmp) / f"{method}.npy")
            rows.append(stats)
    ref = next((r["result"] for r in rows if r["method"] == "dense-f64"), rows[-1]["result"])
    ref_labels = ref.argmax(0)
    scale = np.abs(ref).max()
    print(
        f"\n{'method':<12} {'time (s)':>10} {'peak mem (MB)':>14} {'max |diff|/max':>15} {'argmax agree':>13}"
    )
    for r in rows:
        diff = np.abs(r["result"] - ref).max() / scale
        agree = (r["result"].argmax(0) == ref_labels).mean() * 100
        print(f"{r['method']:<12} {r['seconds']:>10.3f} {r['peak_mb']:>14.1f} {diff:>15.2e} {agree:>12.2f}%")
    print(
        "\nreference: dense-f64 (PSA's squaring in float64); peak mem = RSS high-water minus RSS before the walk"
    )


if __name__ == "__main__":
    main()
