"""Pseudo-label generators, selected by ``labels.mode`` through the ``LABEL_GENERATORS`` registry.

Every generator has one signature, so ``make-labels`` (and a recipe mixing components) can pick
any of them by name: ``(cams, keys, image, cfg, num_classes) -> HxW uint8`` where ``cams`` are the
full-size (n, H, W) scores of the image's tagged classes, ``keys`` their label-space ids, ``image``
reads the HxWx3 image on demand (only the CRF needs it), ``cfg`` is ``LabelConfig`` as a dict and
``num_classes`` the dataset's label count with background (the CRF's label space when
``crf_label_space`` is ``dataset``). 255 marks pixels left uncertain.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from wsss.errors import ConfigError
from wsss.refine.mining import mine_labels_alpha, mine_labels_thresholds, threshold_labels_crf
from wsss.refine.seeds import confident_labels, threshold_labels
from wsss.registry import LABEL_GENERATORS

ImageReader = Callable[[], np.ndarray]


def crf_label_space(cfg: dict[str, Any], num_classes: int) -> int | None:
    """The label-unary CRF's label count: the dataset's (``dataset``) or None for background + tags."""
    return num_classes if cfg["crf_label_space"] == "dataset" else None


@LABEL_GENERATORS.register("threshold")
def threshold_generator(
    cams: torch.Tensor, keys: np.ndarray, image: ImageReader, cfg: dict[str, Any], num_classes: int
) -> np.ndarray:
    """A constant background score ``bg_threshold`` (+ ``crf``): every pixel gets a label."""
    if cfg["crf"] is None:
        return threshold_labels(cams, torch.as_tensor(keys), cfg["bg_threshold"]).numpy().astype(np.uint8)
    return threshold_labels_crf(
        image(),
        cams.numpy(),
        keys,
        cfg["bg_threshold"],
        crf=cfg["crf"],
        backend=cfg["crf_backend"],
        label_space=crf_label_space(cfg, num_classes),
    )


@LABEL_GENERATORS.register("confident")
def confident_generator(
    cams: torch.Tensor, keys: np.ndarray, image: ImageReader, cfg: dict[str, Any], num_classes: int
) -> np.ndarray:
    """IRN/TransCAM dual threshold: foreground >= ``fg_threshold``, background <= ``low_threshold``,
    255 between (with ``crf``: each pass CRF-refined first, as IRN's label mining does)."""
    fg, low = cfg["fg_threshold"], cfg["low_threshold"]
    if cfg["crf"] is None:
        return confident_labels(cams, torch.as_tensor(keys), fg, low).numpy().astype(np.uint8)
    return mine_labels_thresholds(
        image(),
        cams.numpy(),
        keys,
        fg,
        low,
        crf=cfg["crf"],
        backend=cfg["crf_backend"],
        label_space=crf_label_space(cfg, num_classes),
    )


@LABEL_GENERATORS.register("alpha")
def alpha_generator(
    cams: torch.Tensor, keys: np.ndarray, image: ImageReader, cfg: dict[str, Any], num_classes: int
) -> np.ndarray:
    """PSA: background scores (1 - max)^alpha_fg and (1 - max)^alpha_bg, CRF-refined, 255 between.

    PSA's score CRF runs on the image's own planes (background + tags); there is no dataset-wide
    label space for a score stack, so ``crf_label_space: dataset`` is refused here.
    """
    if cfg["crf_label_space"] == "dataset":
        raise ConfigError(
            "labels.crf_label_space 'dataset' applies to label-unary CRFs (modes threshold and "
            "confident); PSA's alpha mode refines score stacks of the image's own classes: use 'present'"
        )
    return mine_labels_alpha(
        image(),
        cams.numpy(),
        keys,
        cfg["alpha_fg"],
        cfg["alpha_bg"],
        crf=cfg["crf"],
        backend=cfg["crf_backend"],
    )
