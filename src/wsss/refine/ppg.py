"""PMM's pseudo-masks from CAMs: proportional pseudo-mask generation (PPG) and the rough masks.

PPG (``pipeline/refine_cam.py:ppmg``): every tagged class gets its own binary dense CRF on
``[(1 − M̃_k)^α, M̃_k]`` (M̃ the CVS-smoothed CAM, :mod:`wsss.refine.cvs`), so the classes'
foregrounds F_k may overlap. An overlap goes to the class with the largest *proportional
importance* ``P_k = M_k / (1 + Σ_y M_k(y)·F_k(y))``: the raw CAM divided by the class's CAM mass
inside its own foreground, so a small object is not swallowed by a large one. Pixels outside every
F_k are background. Every pixel gets a label (no 255).

Rough masks (``pipeline/infer_multi_scale.py``, PMM's phase A): one score CRF on
``[(1 − max_c M_c)^α, M]`` (α 24, PSA's CRF numbers); a pixel is labelled where a posterior
exceeds ``confidence`` (0.9, the cut PMM's heat-crop relabelling applies to them), 255 elsewhere.

``cams`` are (n_keys, H, W) in [0, 1] at image resolution and ``keys`` their label-space ids.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from wsss.data.palette import IGNORE_INDEX
from wsss.refine.crf import CRFParams, dense_crf
from wsss.refine.cvs import cvs
from wsss.refine.mining import _check_inputs, alpha_scores

UNIT_TOLERANCE = 1e-3  # float16 storage and bilinear upsampling may step just outside [0, 1]


def _unit_maps(image: np.ndarray, cams: np.ndarray, keys: Sequence[int]) -> np.ndarray:
    """Validated float32 maps clipped to [0, 1]: (1 − M)^α is NaN for M > 1 (un-normalised CAMs)."""
    cams, _ = _check_inputs(image, cams, keys)
    if cams.size and (cams.min() < -UNIT_TOLERANCE or cams.max() > 1 + UNIT_TOLERANCE):
        raise ValueError(
            f"PMM's masks need CAMs in [0, 1] (min-max normalised), got {cams.min():.3g}..{cams.max():.3g}"
        )
    return np.clip(cams, 0.0, 1.0)


def class_foreground(
    image: np.ndarray,
    smoothed: np.ndarray,
    alpha: float,
    crf: str | CRFParams,
    fg_threshold: float,
    backend: str = "auto",
) -> np.ndarray:
    """HxW bool F_k: the binary CRF on ``[(1 − M̃)^α, M̃]``, foreground where Q(fg) > fg_threshold."""
    smoothed = np.asarray(smoothed, dtype=np.float32)
    background = np.power(1.0 - smoothed, alpha, dtype=np.float32)
    q = dense_crf(image, np.stack([background, smoothed]), crf, backend=backend)
    return q[1] > fg_threshold


def proportional_labels(cams: np.ndarray, foreground: np.ndarray, keys: Sequence[int]) -> np.ndarray:
    """HxW uint8 argmax over {bg: 1[no F_k]; k: F_k · M_k / (1 + Σ M_k F_k)}; ties to the lower plane.

    A pixel inside some F_k whose raw M_k is 0 scores 0 everywhere and falls back to background.
    """
    raw = np.asarray(cams, dtype=np.float64)
    fg = np.asarray(foreground, dtype=bool)
    mass = (raw * fg).sum(axis=(1, 2))
    importance = np.where(fg, raw / (1.0 + mass)[:, None, None], 0.0)
    background = (~fg.any(axis=0)).astype(np.float64)
    lut = np.array([0, *[int(k) for k in keys]], dtype=np.int64)
    return lut[np.argmax(np.concatenate([background[None], importance]), axis=0)].astype(np.uint8)


def ppg_labels(
    image: np.ndarray,
    cams: np.ndarray,
    keys: Sequence[int],
    alpha: float = 11.0,
    crf: str | CRFParams = "pmm",
    fg_threshold: float = 0.5,
    cv_scale: float = 0.3,
    cam_thresh: float = 0.05,
    backend: str = "auto",
) -> np.ndarray:
    """PMM's PPG masks (HxW uint8: 0 background or a key): M̃ drives the CRFs, raw M the proportions."""
    cams = _unit_maps(image, cams, keys)
    smoothed = cvs(torch.from_numpy(cams), cv_scale, cam_thresh).numpy()
    foreground = np.zeros(cams.shape, dtype=bool)
    for k, plane in enumerate(smoothed):
        foreground[k] = class_foreground(image, plane, alpha, crf, fg_threshold, backend)
    return proportional_labels(cams, foreground, keys)


def confident_posteriors(posteriors: np.ndarray, keys: Sequence[int], confidence: float) -> np.ndarray:
    """HxW uint8 label of the plane (0 background, then ``keys``) whose posterior > ``confidence``; 255 if none."""
    q = np.asarray(posteriors)
    lut = np.array([0, *[int(k) for k in keys]], dtype=np.int64)
    out = lut[np.argmax(q, axis=0)].astype(np.uint8)
    out[q.max(axis=0) <= confidence] = IGNORE_INDEX
    return out


def rough_labels(
    image: np.ndarray,
    cams: np.ndarray,
    keys: Sequence[int],
    alpha: float = 24.0,
    crf: str | CRFParams = "psa",
    confidence: float = 0.9,
    backend: str = "auto",
) -> np.ndarray:
    """PMM's rough masks (HxW uint8; 255 where no CRF posterior of ``[(1 − max M)^α, M]`` > confidence)."""
    cams = _unit_maps(image, cams, keys)
    return confident_posteriors(alpha_scores(image, cams, alpha, crf, backend), keys, confidence)
