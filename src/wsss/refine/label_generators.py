"""Pseudo-label generators, selected by ``labels.mode`` through the ``LABEL_GENERATORS`` registry.

Every generator has one signature, so ``make-labels`` (and a recipe mixing components) can pick
any of them by name: ``(cams, keys, image, cfg) -> HxW uint8`` where ``cams`` are the full-size
(n, H, W) scores of the image's tagged classes, ``keys`` their label-space ids, ``image`` reads
the HxWx3 image on demand (only the CRF needs it) and ``cfg`` is ``LabelConfig`` as a dict.
255 marks pixels left uncertain.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from wsss.refine.mining import mine_labels_alpha, mine_labels_thresholds, threshold_labels_crf
from wsss.refine.seeds import confident_labels, threshold_labels
from wsss.registry import LABEL_GENERATORS

ImageReader = Callable[[], np.ndarray]


@LABEL_GENERATORS.register("threshold")
def threshold_generator(
    cams: torch.Tensor, keys: np.ndarray, image: ImageReader, cfg: dict[str, Any]
) -> np.ndarray:
    """A constant background score ``bg_threshold`` (+ ``crf``): every pixel gets a label."""
    if cfg["crf"] is None:
        return threshold_labels(cams, torch.as_tensor(keys), cfg["bg_threshold"]).numpy().astype(np.uint8)
    return threshold_labels_crf(
        image(), cams.numpy(), keys, cfg["bg_threshold"], crf=cfg["crf"], backend=cfg["crf_backend"]
    )


@LABEL_GENERATORS.register("confident")
def confident_generator(
    cams: torch.Tensor, keys: np.ndarray, image: ImageReader, cfg: dict[str, Any]
) -> np.ndarray:
    """IRN/TransCAM dual threshold: foreground >= ``fg_threshold``, background <= ``low_threshold``,
    255 between (with ``crf``: each pass CRF-refined first, as IRN's label mining does)."""
    fg, low = cfg["fg_threshold"], cfg["low_threshold"]
    if cfg["crf"] is None:
        return confident_labels(cams, torch.as_tensor(keys), fg, low).numpy().astype(np.uint8)
    return mine_labels_thresholds(
        image(), cams.numpy(), keys, fg, low, crf=cfg["crf"], backend=cfg["crf_backend"]
    )


@LABEL_GENERATORS.register("alpha")
def alpha_generator(
    cams: torch.Tensor, keys: np.ndarray, image: ImageReader, cfg: dict[str, Any]
) -> np.ndarray:
    """PSA: background scores (1 - max)^alpha_fg and (1 - max)^alpha_bg, CRF-refined, 255 between."""
    return mine_labels_alpha(
        image(),
        cams.numpy(),
        keys,
        cfg["alpha_fg"],
        cfg["alpha_bg"],
        crf=cfg["crf"],
        backend=cfg["crf_backend"],
    )
