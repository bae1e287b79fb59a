"""Per-image multi-scale + flip CAM inference time: batched passes vs sequential batch-1 passes.

TransCAM's protocol resizes each image to square 256/512/768 and flips each size: six forward
passes. ``multiscale_cams(batched=True)`` stacks an image with its flip (and images of the
same size) into one forward per scale; the reference runs the six passes one at a time. Both
paths give the same maps (checked here); this prints their time per image.

    python bench/cam_infer.py                      # Conformer-S, 2 images, CPU
    python bench/cam_infer.py --backbone conformer_nano --images 8 --scales 64 96 128
"""

from __future__ import annotations

import argparse
import platform
import time
from functools import partial

import torch

from wsss.cams.inference import multiscale_cams
from wsss.registry import CAM_MODELS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="conformer_small")
    ap.add_argument("--images", type=int, default=2, help="images per measurement (VOC-like 500x375)")
    ap.add_argument("--group", type=int, default=2, help="images per batched forward group")
    ap.add_argument("--scales", type=float, nargs="+", default=[256.0, 512.0, 768.0])
    ap.add_argument("--method", default="transcam", choices=["conv", "transcam", "clsattn"])
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    model = CAM_MODELS.build("transcam", backbone=args.backbone, num_classes=21).to(device).eval()
    cam_fn = partial(model.extract, method=args.method)
    images = [torch.randint(0, 256, (3, 375, 500), dtype=torch.uint8) for _ in range(args.images)]
    labels = [(torch.arange(20) % (i + 3) == 0).float() for i in range(args.images)]
    run = partial(multiscale_cams, cam_fn, scales=args.scales, flip=True, device=device)
    run(images[:1], labels[:1], batched=True)  # warm-up
    rows = []
    results = {}
    for name, batched in (
        ("batched (flip + same-size images in one forward)", True),
        ("sequential batch-1 passes", False),
    ):
        t0 = time.perf_counter()
        out = []
        for start in range(0, len(images), args.group):
            out += run(
                images[start : start + args.group], labels[start : start + args.group], batched=batched
            )
        results[batched] = out
        rows.append((name, (time.perf_counter() - t0) / len(images)))
    # random-init maps are large (~1e4–1e5): report the difference relative to each map's scale
    diff = max(
        float((a - b).abs().max() / a.abs().max().clamp_min(1e-12))
        for a, b in zip(results[True], results[False])
    )
    passes = len(args.scales) * 2
    print(
        f"# {args.backbone}, {passes} passes/image ({', '.join(f'{s:g}' for s in args.scales)} x flip), "
        f"{args.images} images 500x375, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}"
    )
    print(f"{'path':52s} {'s/image':>9s} {'speed-up':>9s}")
    base = rows[1][1]
    for name, sec in rows:
        print(f"{name:52s} {sec:9.2f} {base / sec:9.2f}x")
    print(f"max |batched - sequential| / max |map| = {diff:.2e}")


if __name__ == "__main__":
    main()
