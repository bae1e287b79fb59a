"""Folder-level evaluation used by the stages and the CLI: CAM files or label PNGs against GT masks.

Files are matched by image name: ``<cam_dir>/<name>.npz``, ``<pred_dir>/<name>.png`` and
``<gt_dir>/<name>.png``. Every per-file problem becomes a ``DataError`` naming the file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from wsss.cams.files import cam_path, load_cam
from wsss.data.base import read_list_file
from wsss.data.palette import read_label_png
from wsss.errors import DataError
from wsss.eval.confusion import ConfusionMatrix
from wsss.eval.metrics import scores
from wsss.eval.sweep import ORACLE_LABEL, FixedThreshold, ThresholdSweep

FIXED_LABEL = "fixed threshold (given, not chosen on this split's ground truth)"


def read_name_list(path: str | os.PathLike) -> list[str]:
    """Image names from a split list (VOC, IRN and PSA lists all work): the datasets' own reader,
    so a name listed twice or one climbing out of the folder (``../x``) is refused here too."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"list file not found: {path}; check the path (one image name per line)")
    return read_list_file(path)


def _check_class_names(class_names: Sequence[str] | None, num_classes: int) -> None:
    if class_names is not None and len(class_names) != num_classes:
        raise DataError(f"{len(class_names)} class names given for num_classes={num_classes}")


def evaluate_cam_dir(
    cam_dir: str | os.PathLike,
    gt_dir: str | os.PathLike,
    names: Sequence[str],
    num_classes: int,
    thresholds: Sequence[float],
    *,
    fixed_threshold: float | None = None,
    class_names: Sequence[str] | None = None,
    mean: str = "all",
    progress: bool = True,
) -> dict[str, Any]:
    """Sweep background thresholds over a folder of CAM files in one pass.

    Returns ``{"num_images", "norm", "sweep", "oracle", "fixed"}``: ``sweep`` has the mIoU at every
    threshold, ``oracle`` the per-class scores at the best one (labelled as chosen on this split's
    ground truth), ``fixed`` those at ``fixed_threshold`` (``None`` when not given).
    """
    _check_class_names(class_names, num_classes)
    if not names:
        raise DataError("no images to evaluate (empty name list)")
    sweep = ThresholdSweep(num_classes, thresholds)
    fixed = FixedThreshold(num_classes, fixed_threshold) if fixed_threshold is not None else None
    norm: str | None = None
    first_file: Path | None = None
    for name in tqdm(names, desc="eval CAMs", unit="img", disable=not progress):
        path = cam_path(cam_dir, name)
        rec = load_cam(path)
        if norm is None:
            norm, first_file = rec.norm, path
        elif rec.norm != norm:
            raise DataError(
                f"{path} is '{rec.norm}'-normalised but {first_file} is '{norm}'; one threshold cannot "
                "serve differently normalised CAMs"
            )
        gt_file = Path(gt_dir) / f"{name}.png"
        gt = read_label_png(gt_file)
        if gt.shape != tuple(rec.size):
            raise DataError(
                f"{path} is for a {rec.size[0]}x{rec.size[1]} (HxW) image but its mask {gt_file} is "
                f"{gt.shape[0]}x{gt.shape[1]}"
            )
        cams = rec.full_resolution()
        keys = rec.keys.astype(np.int64)
        try:
            sweep.update(cams, keys, gt)
            if fixed is not None:
                fixed.update(cams, keys, gt)
        except ValueError as exc:
            raise DataError(f"{path} with mask {gt_file}: {exc}") from exc
    result = sweep.results(mean)
    oracle = None
    if result["best"] is not None:
        t = result["best"]["threshold"]
        oracle = {"threshold": t, "label": ORACLE_LABEL, **scores(sweep.matrix_at(t), class_names, mean)}
    fixed_result = None
    if fixed is not None:
        fixed_result = {"label": FIXED_LABEL, **fixed.results(class_names, mean)}
    return {"num_images": len(names), "norm": norm, "sweep": result, "oracle": oracle, "fixed": fixed_result}


def evaluate_label_dir(
    pred_dir: str | os.PathLike,
    gt_dir: str | os.PathLike,
    names: Sequence[str],
    num_classes: int,
    class_names: Sequence[str] | None = None,
    *,
    mean: str = "all",
    pred_ignore_as: int | None = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Score palette-PNG label maps (pseudo-masks or predictions) against GT masks.

    Predicted 255 (uncertain) counts as background unless ``pred_ignore_as`` says otherwise
    (see :mod:`wsss.eval.confusion`). Returns ``scores()`` plus ``num_images``.
    """
    _check_class_names(class_names, num_classes)
    if not names:
        raise DataError("no images to evaluate (empty name list)")
    cm = ConfusionMatrix(num_classes, pred_ignore_as=pred_ignore_as)
    for name in tqdm(names, desc="eval labels", unit="img", disable=not progress):
        pred_file = Path(pred_dir) / f"{name}.png"
        if not pred_file.is_file():
            raise DataError(f"prediction file not found: {pred_file} (image '{name}' is in the list)")
        gt_file = Path(gt_dir) / f"{name}.png"
        gt = read_label_png(gt_file)
        pred = read_label_png(pred_file)
        if pred.shape != gt.shape:
            raise DataError(
                f"prediction {pred_file} is {pred.shape[1]}x{pred.shape[0]} (WxH) but its mask {gt_file} "
                f"is {gt.shape[1]}x{gt.shape[0]}"
            )
        try:
            cm.update(pred, gt)
        except ValueError as exc:
            raise DataError(f"{pred_file} against {gt_file}: {exc}") from exc
    return {"num_images": len(names), **scores(cm.matrix, class_names, mean)}
