"""PMM's coefficient-of-variation smoothing (CVS) of CAMs (Li et al., ICCV 2021).

A CAM that peaks sharply on a discriminative part (an uneven map: a high coefficient of variation)
covers too little of its object. Raising the map to a power below one lifts its low activations,
and the more uneven the map, the lower the power. PMM (``pipeline/refine_cam.py``: ``get_CoV`` and
``ppmg``) does it per class:

* ``CoV_k = cv_scale · std(M_k[M_k > t]) / (mean(M_k[M_k > t]) + 1e-8)``: population std (numpy's
  default), values strictly above ``t = cam_thresh``; 0 for a map with no such value.
* ``M̃_k = (M_k · 1[M_k ≥ t])^(1 − CoV_k)``: values below ``t`` are zeroed (``t`` itself is kept).

PPG (:mod:`wsss.refine.ppg`) smooths with it internally; ``labels.cam_transform: cvs`` puts it in
front of any other label generator.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from wsss.errors import ConfigError
from wsss.registry import CAM_TRANSFORMS

COV_EPS = 1e-8  # PMM adds it to the mean (get_CoV); kept for fidelity, the mean of values > t >= 0 is > 0

CamTransform = Callable[[torch.Tensor, np.ndarray], torch.Tensor]


def check_cvs_args(cv_scale: float, cam_thresh: float) -> None:
    """Refuse settings that make the power meaningless (a negative scale lowers instead of lifts)."""
    if cv_scale < 0:
        raise ConfigError(f"cv_scale must be >= 0 (0 turns the smoothing off), got {cv_scale}")
    if not 0 <= cam_thresh < 1:
        raise ConfigError(f"cam_thresh must lie in [0, 1) (CAMs are min-max normalised), got {cam_thresh}")


def coefficient_of_variation(
    cams: torch.Tensor, cv_scale: float = 0.3, cam_thresh: float = 0.05
) -> torch.Tensor:
    """(n,) float64 ``cv_scale · std / mean`` of each map's values above ``cam_thresh``; 0 if none."""
    out = torch.zeros(cams.shape[0], dtype=torch.float64)
    for k, plane in enumerate(cams):
        values = plane[plane > cam_thresh].double()
        if values.numel():
            out[k] = cv_scale * values.std(correction=0) / (values.mean() + COV_EPS)
    return out


def cvs(cams: torch.Tensor, cv_scale: float = 0.3, cam_thresh: float = 0.05) -> torch.Tensor:
    """(n, H, W) ``(M · 1[M ≥ t])^(1 − CoV)`` of (n, H, W) maps in [0, 1]."""
    exponent = 1.0 - coefficient_of_variation(cams, cv_scale, cam_thresh)
    if (exponent <= 0).any():
        # PMM's code would turn the zeroed pixels into 1 (0^0) or inf: the map stops being a CAM
        raise ValueError(
            f"cv_scale {cv_scale} gives a coefficient of variation >= 1 ({(1 - exponent).max().item():.3f}); "
            "lower cv_scale so that the power 1 - CoV stays positive"
        )
    kept = torch.where(cams >= cam_thresh, cams, torch.zeros_like(cams))
    return kept.pow(exponent.to(cams.dtype)[:, None, None])


@CAM_TRANSFORMS.register("cvs")
def build_cvs(cv_scale: float = 0.3, cam_thresh: float = 0.05) -> CamTransform:
    """``labels.cam_transform: cvs``: the smoothing with these settings, as ``(cams, keys) -> cams``."""
    check_cvs_args(cv_scale, cam_thresh)

    def transform(cams: torch.Tensor, keys: np.ndarray) -> torch.Tensor:
        return cvs(cams, cv_scale, cam_thresh)

    return transform
