"""AdvCAM vs Grad-CAM vs the plain CAM: time per image and extra peak memory on CPU.

A MobileNetV2 plain CAM (offline ImageNet weights, 21 classes) reads images of 320×240 with two
present classes at scales (1.0, 0.5, 1.5) + flip, through ``multiscale_cams`` as ``make-cams``
calls it. Each configuration runs in a fresh subprocess so that its peak resident set size
(``getrusage`` max RSS, a high-water mark) is its own; the number reported is the rise of that
mark above the level reached after building the model and the images and one small warm-up
pass. ``gradcam, frozen`` turns off the backbone parameters' gradients, so the graph only spans
the classifier head (all Grad-CAM differentiates); the plain CAM's ``gradcam_branches`` then
returns its features as a leaf.

    python bench/advcam.py                       # 2 images, 1 thread, AdvCAM's 27 steps
    python bench/advcam.py --images 4 --steps 27 --threads 1
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

CONFIGS = {
    # name: (extractor, keywords ("steps" is filled from --steps), backbone parameters frozen?)
    "cam (no_grad)": ("cam", {}, False),
    "gradcam": ("gradcam", {}, False),
    "gradcam, frozen": ("gradcam", {}, True),  # no graph through the backbone: head-only backward
    "advcam": ("advcam", {"steps": None}, False),
}
SCALES = (1.0, 0.5, 1.5)


def max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def worker(args: argparse.Namespace) -> dict:
    import torch

    from wsss.cams.extractors import BoundExtractor, get_extractor
    from wsss.cams.inference import multiscale_cams
    from wsss.registry import CAM_MODELS

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    model = CAM_MODELS.build("cam", backbone="mobilenet_v2", pretrained="offline", num_classes=21).eval()
    name, kwargs, frozen = CONFIGS[args.worker]
    model.backbone.requires_grad_(not frozen)
    kwargs = {k: args.steps if k == "steps" else v for k, v in kwargs.items()}
    cam_fn = BoundExtractor(get_extractor(name, **kwargs), model)
    g = torch.Generator().manual_seed(1)
    images = [
        torch.randint(0, 256, (3, 240, 320), generator=g, dtype=torch.uint8) for _ in range(args.images)
    ]
    labels = [torch.zeros(20) for _ in images]
    for lab in labels:
        lab[[4, 14]] = 1.0  # two present classes
    kw = dict(
        scale_mode="relative", flip=True, batched=True, output_stride=model.output_stride, target_stride=4
    )
    multiscale_cams(cam_fn, images[:1], labels[:1], (0.5,), **kw)  # warm-up (one-time allocations)
    base = max_rss_mib()
    t0 = time.perf_counter()
    out = multiscale_cams(cam_fn, images, labels, SCALES, **kw)
    seconds = time.perf_counter() - t0
    return {
        "config": args.worker,
        "s_per_image": seconds / len(images),
        "peak_mib": max_rss_mib() - base,
        "shape": list(out[0].shape),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--steps", type=int, default=27, help="AdvCAM steps")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--worker", choices=list(CONFIGS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return

    print(
        f"MobileNetV2 plain CAM, {args.images} images 320×240 with 2 classes, scales {SCALES} + flip, "
        f"CPU, {args.threads} thread(s); AdvCAM {args.steps} steps, one (image, class) pair per forward"
    )
    print(f"{'extractor':<16} {'s/image':>9} {'× cam':>7} {'peak RSS Δ (MiB)':>17}")
    rows = []
    for name in CONFIGS:
        cmd = [sys.executable, __file__, "--worker", name, "--images", str(args.images)]
        cmd += ["--steps", str(args.steps), "--threads", str(args.threads)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(f"{name:<16} failed: {done.stderr.strip().splitlines()[-1:]}")
            continue
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    base = rows[0]["s_per_image"] if rows and rows[0]["config"] == "cam (no_grad)" else float("nan")
    for row in rows:
        ratio = row["s_per_image"] / base
        print(f"{row['config']:<16} {row['s_per_image']:>9.2f} {ratio:>7.1f} {row['peak_mib']:>17.0f}")


if __name__ == "__main__":
    main()
