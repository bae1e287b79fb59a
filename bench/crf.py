"""Benchmark: images/s of the label CRF (IRN/TransCAM preset) over a process pool.

Synthetic VOC-sized scenes: 500×375 (W×H) images with a textured background and two flat-ish
coloured ellipses (3 labels), and label maps with 20% of the pixels flipped to a random label,
as a noisy CAM seed would be. Each configuration runs the same images through ``parallel_map``;
"wall" includes starting the worker processes, "steady" counts from the first result on.
The last column is the pixel accuracy of the CRF output against the clean labels (noisy input:
about 0.87).

    python bench/crf.py                       # exact backend if installed, else torch; 1 and 2 workers
    python bench/crf.py --backend torch --images 10
"""

from __future__ import annotations

import argparse
import functools
import time

import numpy as np

from wsss.refine.crf import crf_labels, exact_available
from wsss.refine.pool import parallel_map

H, W, N_LABELS = 375, 500, 3


def make_scene(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image uint8 HxWx3, clean labels, noisy labels) for one synthetic scene."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:H, :W]
    clean = np.zeros((H, W), np.int64)
    colours = rng.integers(0, 256, size=(N_LABELS, 3))
    for label in (1, 2):
        cy, cx = rng.uniform(0.25, 0.75) * H, rng.uniform(0.25, 0.75) * W
        ry, rx = rng.uniform(0.12, 0.3) * H, rng.uniform(0.12, 0.3) * W
        clean[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1.0] = label
    image = colours[clean] + rng.normal(0.0, 12.0, size=(H, W, 3))
    image = np.clip(image, 0, 255).astype(np.uint8)
    noisy = clean.copy()
    flip = rng.random((H, W)) < 0.2
    noisy[flip] = rng.integers(0, N_LABELS, size=int(flip.sum()))
    return image, clean, noisy


def refine(scene: tuple[np.ndarray, np.ndarray, np.ndarray], backend: str) -> float:
    """Run the label CRF on one scene; return its pixel accuracy against the clean labels."""
    image, clean, noisy = scene
    pred = crf_labels(image, noisy, "label", n_labels=N_LABELS, backend=backend)
    return float((pred == clean).mean())


def run(scenes: list, backend: str, workers: int) -> tuple[float, float, float]:
    """(wall seconds, steady seconds per image after the first result, mean accuracy)."""
    start = time.perf_counter()
    first = None
    accuracies = []
    for acc in parallel_map(functools.partial(refine, backend=backend), scenes, workers, progress=False):
        if first is None:
            first = time.perf_counter()
        accuracies.append(acc)
    end = time.perf_counter()
    steady = (end - first) / max(1, len(scenes) - 1) if first is not None else float("nan")
    return end - start, steady, float(np.mean(accuracies))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20, help="number of 500x375 images (default 20)")
    parser.add_argument("--backend", choices=("auto", "exact", "torch"), default="auto")
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts (default 1,2)")
    args = parser.parse_args(argv)

    backend = args.backend
    if backend == "auto":
        backend = "exact" if exact_available() else "torch"
    scenes = [make_scene(seed) for seed in range(args.images)]
    noisy_acc = float(np.mean([(noisy == clean).mean() for _, clean, noisy in scenes]))
    print(f"label CRF, {args.images} images of {W}x{H}, {N_LABELS} labels, backend={backend}")
    print(f"noisy-input pixel accuracy {noisy_acc:.4f}")
    print(f"{'workers':>7} {'wall s':>8} {'img/s (wall)':>13} {'img/s (steady)':>15} {'accuracy':>9}")
    for workers in (int(w) for w in args.workers.split(",")):
        wall, steady, acc = run(scenes, backend, workers)
        print(f"{workers:>7} {wall:>8.2f} {args.images / wall:>13.2f} {1.0 / steady:>15.2f} {acc:>9.4f}")


if __name__ == "__main__":
    main()
