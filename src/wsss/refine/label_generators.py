"""Pseudo-label generators, selected by ``labels.mode`` through the ``LABEL_GENERATORS`` registry.

Every generator has one signature, so ``make-labels`` (and a recipe mixing components) can pick
any of them by name: ``(cams, keys, image, cfg, num_classes) -> HxW uint8`` where ``cams`` are the
full-size (n, H, W) scores of the image's tagged classes, ``keys`` their label-space ids, ``image``
reads the HxWx3 image on demand (only the CRF needs it), ``cfg`` is ``LabelConfig`` as a dict and
``num_classes`` the dataset's label count with background (the CRF's label space when
``crf_label_space`` is ``dataset``). 255 marks pixels left uncertain. A generator's own settings
are keyword-only arguments, filled from ``labels.mode_args`` (PMM's ``ppg`` and ``rough``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from wsss.errors import ConfigError
from wsss.refine.crf import resolve_params
from wsss.refine.cvs import check_cvs_args
from wsss.refine.mining import mine_labels_alpha, mine_labels_thresholds, threshold_labels_crf
from wsss.refine.ppg import ppg_labels, rough_labels
from wsss.refine.seeds import confident_labels, threshold_labels
from wsss.registry import LABEL_GENERATORS

ImageReader = Callable[[], np.ndarray]


def _refuse_dataset_label_space(cfg: dict[str, Any], mode: str) -> None:
    """Score-unary CRFs run on the image's own planes: no dataset-wide label space exists for them."""
    if cfg["crf_label_space"] == "dataset":
        raise ConfigError(
            "labels.crf_label_space 'dataset' applies to label-unary CRFs (modes threshold and "
            f"confident); {mode} mode refines score stacks of the image's own classes: use 'present'"
        )


def _check_score_crf(cfg: dict[str, Any], mode: str, crf: Any) -> None:
    """``mode_args.crf`` must name a score-unary (softmax) preset: these modes CRF score stacks."""
    _refuse_dataset_label_space(cfg, mode)
    if resolve_params(crf).unary != "softmax":
        raise ConfigError(
            f"labels.mode_args.crf: {mode} refines score stacks and needs a softmax-unary CRF preset "
            f"(pmm, psa, ...), got {crf!r}"
        )


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
    _refuse_dataset_label_space(cfg, "PSA's alpha")
    return mine_labels_alpha(
        image(),
        cams.numpy(),
        keys,
        cfg["alpha_fg"],
        cfg["alpha_bg"],
        crf=cfg["crf"],
        backend=cfg["crf_backend"],
    )


def _check_ppg(cfg: dict[str, Any], *, crf: Any, cv_scale: float, cam_thresh: float, **_: Any) -> None:
    """PPG smooths with CVS itself: a ``cvs`` CAM transform in front would smooth twice."""
    if cfg["cam_transform"] == "cvs":
        raise ConfigError(
            "labels.cam_transform 'cvs' with labels.mode 'ppg': PPG already smooths its CAMs with CVS; "
            "remove cam_transform and set the smoothing in labels.mode_args (cv_scale, cam_thresh; "
            "cv_scale: 0 turns it off, with cam_thresh: 0 the maps are used as stored)"
        )
    check_cvs_args(cv_scale, cam_thresh)
    _check_score_crf(cfg, "PMM's ppg", crf)


def _check_rough(cfg: dict[str, Any], *, crf: Any, **_: Any) -> None:
    _check_score_crf(cfg, "PMM's rough", crf)


# Rules on a mode's arguments and the other labels.* keys that a signature check cannot see.
_CHECKS: dict[str, Callable[..., None]] = {"ppg": _check_ppg, "rough": _check_rough}


def check_label_config(cfg: dict[str, Any]) -> None:
    """Check ``mode_args`` against the mode's keyword-only arguments and apply the mode's rules with
    them (over its defaults), so make-labels fails before its first image."""
    params = inspect.signature(LABEL_GENERATORS.get(cfg["mode"], "labels.mode")).parameters
    defaults = {n: p.default for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    for key in cfg["mode_args"]:
        if key not in defaults:
            valid = ", ".join(defaults) or "none"
            raise ConfigError(
                f"unknown key 'labels.mode_args.{key}' for mode {cfg['mode']!r}; valid keys: {valid}"
            )
    check = _CHECKS.get(cfg["mode"])
    if check is not None:
        check(cfg, **{**defaults, **cfg["mode_args"]})


@LABEL_GENERATORS.register("ppg")
def ppg_generator(
    cams: torch.Tensor,
    keys: np.ndarray,
    image: ImageReader,
    cfg: dict[str, Any],
    num_classes: int,
    *,
    alpha: float = 11.0,
    crf: str = "pmm",
    fg_threshold: float = 0.5,
    cv_scale: float = 0.3,
    cam_thresh: float = 0.05,
) -> np.ndarray:
    """PMM's PPG (keywords from ``labels.mode_args``): CVS + one binary CRF per class, overlaps to
    the larger proportional importance; no 255. ``labels.crf`` is not used (the CRF is ``crf``)."""
    _check_ppg(cfg, crf=crf, cv_scale=cv_scale, cam_thresh=cam_thresh)
    return ppg_labels(
        image(),
        cams.numpy(),
        keys,
        alpha=alpha,
        crf=crf,
        fg_threshold=fg_threshold,
        cv_scale=cv_scale,
        cam_thresh=cam_thresh,
        backend=cfg["crf_backend"],
    )


@LABEL_GENERATORS.register("rough")
def rough_generator(
    cams: torch.Tensor,
    keys: np.ndarray,
    image: ImageReader,
    cfg: dict[str, Any],
    num_classes: int,
    *,
    alpha: float = 24.0,
    crf: str = "psa",
    confidence: float = 0.9,
) -> np.ndarray:
    """PMM's rough masks (keywords from ``labels.mode_args``): CRF on ``[(1 − max)^alpha, cams]``,
    the class (or 0) whose posterior > ``confidence``, 255 elsewhere. ``labels.crf`` is not used."""
    _check_rough(cfg, crf=crf)
    return rough_labels(
        image(), cams.numpy(), keys, alpha=alpha, crf=crf, confidence=confidence, backend=cfg["crf_backend"]
    )
