"""PIL vs torchvision bicubic for multi-scale CAM inference: resized pixels and the CAMs they give.

TransCAM, PSA and IRN resize with PIL bicubic on the uint8 image (``cams.resize: pil``); the
alternative is torchvision's antialiased bicubic on the device (``cams.resize: torch``). On the
first photos of coco128-voc this prints, per image, the max / mean absolute difference of the
two uint8 resizes at square 256/512/768, and the max / mean absolute difference of the min-max
normalised CAMs the two kernels give with the plain CAM on an ImageNet MobileNetV2 (offline weights, a seeded
random 1x1 classifier: the maps are ImageNet feature read-outs, not a trained classifier's) for
the coco128 recipe's scales (relative 0.5/1/1.5 + flip) and TransCAM's (square 256/512/768 + flip).

    python bench/resize_kernel.py                       # 8 photos, CAMs stored at stride 4
    python bench/resize_kernel.py --images 4 --stride 1 --device cuda
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from wsss.cams.inference import minmax_normalise, multiscale_cams, resize_image
from wsss.registry import CAM_MODELS

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco128-voc" / "JPEGImages"
SQUARES = (256, 512, 768)
PROTOCOLS = {
    "rel 0.5/1/1.5": ("relative", [0.5, 1.0, 1.5]),
    "sq 256/512/768": ("square", [256.0, 512.0, 768.0]),
}


def load_images(folder: Path, count: int) -> list[tuple[str, torch.Tensor]]:
    """The first ``count`` photos (sorted by name) as uint8 3xHxW tensors."""
    files = sorted(folder.glob("*.jpg"))[:count]
    return [
        (f.stem, torch.from_numpy(np.array(Image.open(f).convert("RGB"))).permute(2, 0, 1).contiguous())
        for f in files
    ]


def pixel_diffs(img: torch.Tensor) -> list[tuple[int, float]]:
    """(max, mean) |PIL - torch| of the uint8 resizes to each square size."""
    out = []
    for side in SQUARES:
        a = resize_image(img, (side, side), "pil").int()
        b = resize_image(img, (side, side), "torch").int()
        d = (a - b).abs()
        out.append((int(d.max()), float(d.float().mean())))
    return out


def cam_diffs(cam_fn, img: torch.Tensor, labels: torch.Tensor, stride: int, device: torch.device) -> dict:
    """Per protocol: (max, mean) |PIL CAM - torch CAM| of the min-max normalised maps.

    (The plain CAM is ReLU'd, so its minimum is 0 and max normalisation gives the same numbers.)
    """
    res = {}
    for name, (mode, scales) in PROTOCOLS.items():
        run = partial(multiscale_cams, cam_fn, [img], [labels], scales, scale_mode=mode, flip=True)
        cams = {
            k: minmax_normalise(run(target_stride=stride, device=device, resize=k)[0].double().cpu())
            for k in ("pil", "torch")
        }
        d = (cams["pil"] - cams["torch"]).abs()
        res[name] = (float(d.max()), float(d.mean()))
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument(
        "--stride", type=int, default=4, help="stored CAM stride (coco128 recipe: 4, TransCAM: 1)"
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    args = ap.parse_args()
    if not args.data.is_dir():
        print(f"skipped: no photos at {args.data} (the coco128-voc data set is not here)")
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = CAM_MODELS.build(
        "cam", backbone="mobilenet_v2", num_classes=21, pretrained="offline", output_stride=16
    )
    model = model.to(device).eval()
    cam_fn = partial(model.extract, method="cam")
    labels = torch.ones(20)  # every class map: the classifier is random, so all 20 are samples

    images = load_images(args.data, args.images)
    if not images:
        print(f"skipped: no .jpg files in {args.data}")
        return
    head = " ".join(f"{f'px {s} max/mean':>16s}" for s in SQUARES)
    cams = " ".join(f"{f'CAM {p} max/mean':>27s}" for p in PROTOCOLS)
    print(f"# MobileNetV2 (ImageNet, offline) plain CAM, 20 maps, CAMs at stride {args.stride}, {device}")
    print(f"{'image':14s} {'HxW':>9s} {head} {cams}")
    worst = {p: 0.0 for p in PROTOCOLS}
    for name, img in images:
        px = pixel_diffs(img)
        cd = cam_diffs(cam_fn, img, labels, args.stride, device)
        for p, (most, _) in cd.items():
            worst[p] = max(worst[p], most)
        cells = " ".join(f"{f'{m:d} / {a:.3f}':>16s}" for m, a in px)
        cam_cells = " ".join(f"{f'{most:.4f} / {mean:.5f}':>27s}" for most, mean in cd.values())
        print(f"{name:14s} {f'{img.shape[1]}x{img.shape[2]}':>9s} {cells} {cam_cells}")
    for p, most in worst.items():
        print(f"max over images, {p}: the min-max normalised CAMs differ by at most {most:.4f}")


if __name__ == "__main__":
    main()
