"""Segmentation test-time inference speed: MS + flip with the flip pair batched vs one pass at a time.

The TransCAM/BNR test protocol runs every image at six scales (0.5–1.75) and their mirror images:
twelve forward passes. ``predict_probs(batched=True)`` stacks each scale's input with its flip
(one forward per scale); ``batched=False`` runs the twelve passes one by one. Both give the same
probabilities (checked here); this prints images/s for each on 320×240 images.

    python bench/seg_infer.py                         # deeplab_v3_lite (random init), 4 images, CPU
    python bench/seg_infer.py --model tiny --images 8
    python bench/seg_infer.py --window 192            # tiled at every scale (1/3 overlap)

On a CPU shared with other jobs use ``--threads 1``: with two OpenMP threads and one core taken
by another process every parallel region waits for the descheduled thread, and a MobileNet
forward of any size took about 2.5 s instead of 0.05–0.3 s on the 2-core development machine.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
from torch import nn

from wsss.registry import SEG_MODELS
from wsss.seg.inference import predict_probs

SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


class TinySegNet(nn.Module):
    """Stand-in when no registered model is wanted: four 3×3 convs, output stride 8."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = 3
        for out, stride in ((16, 2), (32, 2), (64, 2), (64, 1)):
            layers += [nn.Conv2d(width, out, 3, stride=stride, padding=1), nn.BatchNorm2d(out), nn.ReLU()]
            width = out
        layers.append(nn.Conv2d(width, num_classes, 1))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def build_model(name: str, num_classes: int) -> tuple[nn.Module, str]:
    """The registered ``deeplab_v3_lite`` (random weights) when available, else the tiny net."""
    if name == "deeplab_v3_lite" and name in SEG_MODELS:
        return SEG_MODELS.build(name, num_classes=num_classes, pretrained=None), name
    return TinySegNet(num_classes), "tiny conv net (OS 8)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="deeplab_v3_lite", choices=["deeplab_v3_lite", "tiny"])
    ap.add_argument("--images", type=int, default=4, help="images per measurement (320x240)")
    ap.add_argument("--classes", type=int, default=21)
    ap.add_argument("--mode", default="logits", choices=["logits", "probs", "max_logits"])
    ap.add_argument("--window", type=int, default=0, help="sliding window size (0: whole image)")
    ap.add_argument("--repeats", type=int, default=1, help="timed rounds per path (best is kept)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    model, label = build_model(args.model, args.classes)
    model = model.to(device).eval()
    images = [torch.randn(3, 240, 320, device=device) for _ in range(args.images)]
    kw = dict(
        num_classes=args.classes,
        scales=SCALES,
        flip=True,
        mode=args.mode,
        window=args.window or None,
    )
    predict_probs(model, images[0], batched=True, **kw)  # warm-up
    rows = []
    results: dict[bool, list[torch.Tensor]] = {}
    for name, batched in (
        ("batched (image + flip in one forward per scale)", True),
        ("per-pass loop (12 forwards of batch 1)", False),
    ):
        best = float("inf")
        for _ in range(max(1, args.repeats)):
            t0 = time.perf_counter()
            results[batched] = [predict_probs(model, img, batched=batched, **kw) for img in images]
            best = min(best, time.perf_counter() - t0)
        rows.append((name, len(images) / best))
    diff = max(float((a - b).abs().max()) for a, b in zip(results[True], results[False]))
    tiling = f", window {args.window}" if args.window else ""
    print(
        f"# {label}, {args.classes} classes, scales {'/'.join(f'{s:g}' for s in SCALES)} + flip "
        f"({2 * len(SCALES)} passes/image), mode {args.mode}{tiling}, {args.images} images 320x240, "
        f"{torch.get_num_threads()} threads, {device.type} ({platform.processor() or platform.machine()})"
    )
    print(f"{'path':50s} {'images/s':>9s} {'speed-up':>9s}")
    base = rows[1][1]
    for name, rate in rows:
        print(f"{name:50s} {rate:9.2f} {rate / base:9.2f}x")
    print(f"max |batched - loop| over probabilities = {diff:.2e}")


if __name__ == "__main__":
    main()
