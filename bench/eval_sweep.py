"""Benchmark: one-pass background-threshold sweep versus one confusion matrix per threshold.

Synthetic VOC-sized data: 500×375 (W×H) masks with 21 classes and CAM-like score maps for 1–3
foreground classes per image (smooth blobs, ~5% ignore pixels), 60 thresholds 0.00..0.59 as in
TransCAM's evaluation. Both methods see the same tensors; data generation is not timed.

    python bench/eval_sweep.py            # full size: 500 images
    python bench/eval_sweep.py --images 20
    python bench/eval_sweep.py --threads 0   # torch's default thread count
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from wsss.eval.confusion import ConfusionMatrix
from wsss.eval.metrics import mean_iou
from wsss.eval.sweep import ThresholdSweep, cam_to_label, threshold_range


def make_image(g: torch.Generator, num_classes: int, h: int, w: int):
    """A CAM-like image: low-res random fields upsampled to smooth blobs, GT where they are high."""
    n = int(torch.randint(1, 4, (1,), generator=g))
    keys = (torch.randperm(num_classes - 1, generator=g)[:n] + 1).sort().values
    low = torch.rand(1, n, 6, 8, generator=g) ** 3
    cams = F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)[0]
    cams = cams / cams.amax(dim=(1, 2), keepdim=True)  # max-normalised, like IRN
    noisy = cams + 0.15 * torch.randn(n, h, w, generator=g)
    score, arg = noisy.max(0)
    gt = torch.where(score > 0.35, keys[arg], torch.zeros_like(arg))
    gt[torch.rand(h, w, generator=g) < 0.05] = 255
    return cams, keys, gt


def one_pass(images, num_classes, thresholds):
    sweep = ThresholdSweep(num_classes, thresholds)
    for cams, keys, gt in images:
        sweep.update(cams, keys, gt)
    return sweep.matrices()


def per_threshold(images, num_classes, thresholds):
    """The straightforward evaluation: for each threshold, label every image and count."""
    out = []
    for t in thresholds:
        cm = ConfusionMatrix(num_classes)
        for cams, keys, gt in images:
            cm.update(cam_to_label(cams, keys, t), gt)
        out.append(cm.matrix)
    return torch.stack(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500, help="number of images (default 500)")
    parser.add_argument("--classes", type=int, default=21, help="classes incl. background (default 21)")
    parser.add_argument("--height", type=int, default=375)
    parser.add_argument("--width", type=int, default=500)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: these per-image ops are too small to gain from more, and on a "
        "shared 2-core machine extra OpenMP threads make them many times slower; 0 keeps torch's default)",
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    g = torch.Generator().manual_seed(0)
    images = [make_image(g, args.classes, args.height, args.width) for _ in range(args.images)]
    thresholds = threshold_range(0.0, 0.6, 0.01)

    t0 = time.perf_counter()
    fast = one_pass(images, args.classes, thresholds)
    t_fast = time.perf_counter() - t0
    t0 = time.perf_counter()
    slow = per_threshold(images, args.classes, thresholds)
    t_slow = time.perf_counter() - t0

    same = torch.equal(fast, slow)
    miou = mean_iou(fast)
    best = int(torch.argmax(miou))
    print(
        f"{args.images} images {args.width}x{args.height}, {args.classes} classes, "
        f"{len(thresholds)} thresholds, torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(f"{'method':<28}{'seconds':>10}{'ratio':>9}")
    print(f"{'one-pass sweep':<28}{t_fast:>10.2f}{1.0:>9.1f}")
    print(f"{'per-threshold loop (60x)':<28}{t_slow:>10.2f}{t_slow / t_fast:>9.1f}")
    print(f"identical matrices: {same}; max |mIoU diff| {float((mean_iou(slow) - miou).abs().max()):.2e}")
    print(f"oracle threshold {thresholds[best]:.2f}, mIoU {100 * float(miou[best]):.2f}")
    if not same:
        raise SystemExit("one-pass sweep and per-threshold loop disagree")


if __name__ == "__main__":
    main()
