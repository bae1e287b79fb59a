"""Confident-label mining: CAMs + image → HxW uint8 labels with 255 where the label is uncertain.

These are the training targets of affinity networks (PSA AffinityNet, IRN, AMN/SPU's UNS): only
pixels that are confidently foreground of one class, or confidently background, carry a label.
Two schemes are in use:

* :func:`mine_labels_thresholds`, IRN's ``cam_to_ir_label`` (TransCAM's ``out_crf_0.60/0.25``, SPU,
  AMR): a constant background plane at a high threshold gives confident foreground, one at a low
  threshold gives confident background, each sharpened by the label CRF.
* :func:`mine_labels_alpha`, PSA's ``infer_cls.py``: a background score ``(1 − max_c CAM_c)^α``
  with a low α (4, large bg) for foreground and a high α (24 in the paper, 32 in the README) for
  background, each stack refined by the softmax-unary CRF.

``cams`` is (n_keys, H, W) float in [0, 1] at image resolution and ``keys`` the label-space class
ids (1..K) of its planes. ``label_space`` chooses the labels a label-unary CRF picks among
(:func:`wsss.refine.crf.label_space_crf`): None = background + ``keys`` (IRN), or the dataset's
label count (TransCAM/PSA: 21 on VOC).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from wsss.data.palette import IGNORE_INDEX
from wsss.refine.crf import CRFParams, dense_crf, label_space_crf, resolve_params


def _check_inputs(image: np.ndarray, cams: np.ndarray, keys: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(cams as float32, label-space ids with background 0 prepended); shapes and ids validated."""
    cams = np.asarray(cams, dtype=np.float32)
    lut = np.array([0, *[int(k) for k in keys]], dtype=np.int64)
    if cams.ndim != 3 or cams.shape[0] != len(keys):
        raise ValueError(f"cams must be (n_keys, H, W) with n_keys = {len(keys)}, got shape {cams.shape}")
    if np.asarray(image).shape[:2] != cams.shape[1:]:
        raise ValueError(f"image is {np.asarray(image).shape[:2]} but the CAMs are {cams.shape[1:]}")
    if any(not 1 <= int(k) < IGNORE_INDEX for k in keys) or len(set(keys)) != len(keys):
        raise ValueError(f"keys {list(keys)} must be distinct class ids in 1..{IGNORE_INDEX - 1}")
    return cams, lut


def _combine(fg_conf: np.ndarray, bg_conf: np.ndarray) -> np.ndarray:
    """Foreground-confident labels; 255 where they say background; 0 where both say background."""
    out = fg_conf.astype(np.uint8)
    fg_bg = fg_conf == 0
    out[fg_bg] = IGNORE_INDEX
    out[fg_bg & (bg_conf == 0)] = 0
    return out


def _threshold_pass(
    image: np.ndarray,
    cams: np.ndarray,
    lut: np.ndarray,
    threshold: float,
    crf: CRFParams | None,
    backend: str,
    label_space: int | None,
) -> np.ndarray:
    """Label-space ids of argmax([threshold, cams]) (ties → background), optionally label-CRF'd."""
    stack = np.concatenate([np.full((1, *cams.shape[1:]), threshold, dtype=np.float32), cams], axis=0)
    hard = lut[np.argmax(stack, axis=0)]
    if crf is None:
        return hard
    return label_space_crf(image, hard, lut[1:], crf, label_space=label_space, backend=backend)


def threshold_labels_crf(
    image: np.ndarray,
    cams: np.ndarray,
    keys: Sequence[int],
    threshold: float,
    crf: str | CRFParams = "label",
    backend: str = "auto",
    label_space: int | None = None,
) -> np.ndarray:
    """Constant-threshold seed labels (HxW uint8, label-space ids) sharpened by a label CRF."""
    cams, lut = _check_inputs(image, cams, keys)
    if len(keys) == 0:
        return np.zeros(cams.shape[1:], dtype=np.uint8)
    params = resolve_params(crf)
    return _threshold_pass(image, cams, lut, threshold, params, backend, label_space).astype(np.uint8)


def mine_labels_thresholds(
    image: np.ndarray,
    cams: np.ndarray,
    keys: Sequence[int],
    fg_threshold: float,
    bg_threshold: float,
    crf: str | CRFParams | None = "label",
    backend: str = "auto",
    label_space: int | None = None,
) -> np.ndarray:
    """IRN / TransCAM confident labels (HxW uint8; 0 bg, class ids, 255 uncertain).

    ``fg_conf`` = CRF(argmax of [fg_threshold, cams]) and ``bg_conf`` likewise at
    ``bg_threshold`` (IRN 0.30/0.05, TransCAM 0.60/0.25, SPU's UNS 0.45/0.15). The result is
    ``fg_conf``, 255 where ``fg_conf`` is background, and 0 where both are background. ``crf``: a
    label-unary preset name or parameters, or None for the plain threshold maps.
    """
    if bg_threshold > fg_threshold:
        raise ValueError(f"bg_threshold {bg_threshold} must not exceed fg_threshold {fg_threshold}")
    cams, lut = _check_inputs(image, cams, keys)
    if len(keys) == 0:  # nothing but background in the image: everything is confident background
        return np.zeros(cams.shape[1:], dtype=np.uint8)
    params = None if crf is None else resolve_params(crf)
    fg_conf = _threshold_pass(image, cams, lut, fg_threshold, params, backend, label_space)
    bg_conf = _threshold_pass(image, cams, lut, bg_threshold, params, backend, label_space)
    return _combine(fg_conf, bg_conf)


def alpha_scores(
    image: np.ndarray,
    cams: np.ndarray,
    alpha: float,
    crf: str | CRFParams | None = "psa",
    backend: str = "auto",
) -> np.ndarray:
    """(1 + n_keys, H, W) scores ``[(1 − max_c cams)^α, cams]``, CRF-refined unless ``crf`` is None.

    PSA saves exactly these (per key) and average-pools them by 8 for AffinityNet; with a CRF they
    are the posterior marginals of the softmax-unary CRF on the un-normalised stack.
    """
    cams = np.asarray(cams, dtype=np.float32)
    peak = cams.max(axis=0) if cams.shape[0] else np.zeros(cams.shape[1:], dtype=np.float32)
    background = np.power(1.0 - peak, alpha, dtype=np.float32)
    stack = np.concatenate([background[None], cams], axis=0)
    if crf is None or stack.shape[0] < 2:
        return stack
    return dense_crf(image, stack, resolve_params(crf), backend=backend)


def mine_labels_alpha(
    image: np.ndarray,
    cams: np.ndarray,
    keys: Sequence[int],
    alpha_fg: float = 4.0,
    alpha_bg: float = 32.0,
    crf: str | CRFParams | None = "psa",
    backend: str = "auto",
) -> np.ndarray:
    """PSA confident labels (HxW uint8; 0 bg, class ids, 255 uncertain).

    ``la`` = argmax of :func:`alpha_scores` at ``alpha_fg`` (low α: large background score, so only
    confident foreground survives) and ``ha`` at ``alpha_bg``. The label is ``la``'s class, 255 where
    ``la`` is background, 0 where ``ha`` is background. PSA takes these argmaxes after 8× average
    pooling inside its AffinityNet dataset; here they are taken at full resolution.
    """
    if alpha_bg < alpha_fg:
        raise ValueError(f"alpha_bg {alpha_bg} must be >= alpha_fg {alpha_fg} (higher α, less background)")
    cams, lut = _check_inputs(image, cams, keys)
    la = np.argmax(alpha_scores(image, cams, alpha_fg, crf, backend), axis=0)
    ha = np.argmax(alpha_scores(image, cams, alpha_bg, crf, backend), axis=0)
    out = lut[la].astype(np.uint8)
    out[la == 0] = IGNORE_INDEX
    out[ha == 0] = 0
    return out
