"""The ``cams.nonfinite`` policy: what a CAM stage does with an image whose maps hold NaN or inf.

``stop`` raises :class:`~wsss.errors.NumericalError` naming the image and its classes before
anything is written for it (files written before stay: the stage resumes). ``skip`` writes no
CAM file but a small marker ``NAME.nonfinite.json`` beside where it would be, so that a later
stage that needs the file says the image was skipped as non-finite instead of just "not found"
(:func:`wsss.cams.files.missing_cam_message`). A CAM file written later (``save_cam``) removes
its marker.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from wsss.cams.files import nonfinite_classes, nonfinite_marker
from wsss.errors import ConfigError, NumericalError
from wsss.files import write_json

POLICIES = ("stop", "skip")


def describe_classes(keys: list[int], class_names: Sequence[str] | None) -> str:
    """``3 (cat), 7 (dog)``; bare keys without names."""
    if class_names is None:
        return ", ".join(map(str, keys))
    return ", ".join(f"{k} ({class_names[k]})" if 0 <= k < len(class_names) else str(k) for k in keys)


def admit_cam(
    path: str | os.PathLike,
    cams: np.ndarray | torch.Tensor,
    keys: np.ndarray | torch.Tensor | list[int],
    *,
    policy: str,
    stage: str,
    logger: logging.Logger,
    class_names: Sequence[str] | None = None,
) -> bool:
    """Whether the maps ``cams`` of the CAM file ``path`` may be saved: True when all are finite;
    otherwise ``policy`` ``stop`` raises and ``skip`` writes the marker and returns False.

    ``class_names`` (index = key, background first) only make the messages clearer.
    """
    if policy not in POLICIES:
        raise ConfigError(f"cams.nonfinite must be one of {', '.join(POLICIES)}, got {policy!r}")
    bad = nonfinite_classes(cams, keys)
    if not bad:
        return True
    path = Path(path)
    which = describe_classes(bad, class_names)
    if policy == "stop":
        raise NumericalError(
            f"{stage}: the CAM of image '{path.stem}' is NaN or infinite for classes {which} "
            f"(cams.nonfinite: stop). Files written so far in {path.parent} are kept and a rerun "
            "resumes; the classifier gives non-finite maps for this image: retrain it with a lower lr "
            "or amp: none, or set cams.nonfinite: skip to leave such images out (later stages then "
            "name them as skipped)"
        )
    marker = nonfinite_marker(path)
    info: dict[str, object] = {"image": path.stem, "stage": stage, "classes": bad}
    if class_names is not None:
        info["class_names"] = [class_names[k] if 0 <= k < len(class_names) else str(k) for k in bad]
    write_json(marker, info)
    logger.warning(
        "%s: CAM of image '%s' is NaN or infinite for classes %s; no CAM file written (cams.nonfinite: "
        "skip, marker %s)",
        stage,
        path.stem,
        which,
        marker,
    )
    return False
