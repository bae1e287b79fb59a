"""How good are the labels a trained UniA network makes for itself? P1, P2, P3, the fused label and the aux
P1, scored against the masks on the pixels each one labels (the rest is ignore), with that share.

Loads a finished ``synth/unia-tiny`` (or any UniA) run's weights, takes the first ``--images`` training
images at their full size (no augmentation), and runs the objective's own ``pseudo_labels`` at an
iteration past every switch, as the last training steps did.

    python bench/unia_online_labels.py runs/recipe-table/synth-unia-tiny-s0 [more run dirs]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from wsss.config import load_recipe
from wsss.data.transforms import eval_transform
from wsss.engine import load_weights
from wsss.registry import CAM_MODELS, METHODS
from wsss.stages.context import build_dataset

KINDS = ("p1", "p2", "p3", "final", "aux")


def score(run: Path, images: int, batch: int) -> dict[str, tuple[float, float]]:
    recipe = load_recipe(str(run / "recipe.yaml"))
    c = recipe.classifier
    ds = build_dataset(recipe.data, recipe.data.train_split, transform=eval_transform(), with_masks=True)
    model = CAM_MODELS.build(
        c.model, backbone=c.backbone, num_classes=ds.num_classes, pretrained=None, **c.model_args
    )
    load_weights(run / "train-cls" / "model.safetensors", model)
    model.eval()
    objective = METHODS.build_with_compat(
        c.method, "classifier.method", c.method_args, c.compat or recipe.compat
    )
    k = ds.num_classes
    conf = {kind: np.zeros((k, k), np.int64) for kind in KINDS}
    share: dict[str, list[float]] = {kind: [] for kind in KINDS}
    for start in range(0, min(images, len(ds)), batch):
        items = [ds[i] for i in range(start, min(start + batch, images, len(ds)))]
        x = torch.stack([it["image"] for it in items])
        y = torch.stack([torch.as_tensor(it["labels"]) for it in items]).float()
        gt = torch.stack([torch.as_tensor(it["mask"]) for it in items]).long()
        with torch.no_grad():
            labels = objective.pseudo_labels(model, x, y, model(x).affinity, 10**9)
        for kind in KINDS:
            lab = labels[kind]
            valid = (lab != 255) & (gt != 255)
            share[kind].append(float(valid.float().mean()))
            conf[kind] += np.bincount((gt[valid] * k + lab[valid]).numpy(), minlength=k * k).reshape(k, k)
    out = {}
    for kind, m in conf.items():
        union = m.sum(0) + m.sum(1) - np.diag(m)
        present = union > 0
        out[kind] = (float((np.diag(m)[present] / union[present]).mean()), float(np.mean(share[kind])))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", type=Path, nargs="+")
    ap.add_argument("--images", type=int, default=96)
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args()
    print(f"mIoU % on the pixels each label marks (share of pixels marked), first {args.images} train images")
    print("| run | " + " | ".join(KINDS) + " |")
    print("|---|" + "---|" * len(KINDS))
    for run in args.runs:
        result = score(run, args.images, args.batch)
        cells = [f"{100 * m:.1f} ({100 * s:.0f} %)" for m, s in (result[kind] for kind in KINDS)]
        print(f"| {run.name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
