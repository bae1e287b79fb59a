"""Seed pseudo-labels from normalised CAMs.

``threshold``: a constant background score ``t`` is stacked under the class maps and the
argmax taken; ties go to background (TransCAM's evaluation code), so a pixel is foreground only
where its best class scores strictly above ``t``. The comparison happens in the CAMs' dtype;
``wsss.eval`` applies this same function to float64 CAMs to score a fixed threshold.
``confident`` (IRN's dual threshold): foreground where the best class ≥ ``hi``, background where
it is ≤ ``lo``, 255 (ignore) in between — the training labels of affinity networks.
"""

from __future__ import annotations

import torch

from wsss.data.palette import IGNORE_INDEX


def _best(cams: torch.Tensor, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Max score and its label-space class per pixel (score 0 / class 0 when no keys)."""
    if cams.shape[0] == 0:
        z = torch.zeros(cams.shape[-2:], dtype=cams.dtype, device=cams.device)
        return z, z.long()
    score, idx = cams.max(dim=0)
    return score, keys.to(cams.device).long()[idx]


def threshold_labels(cams: torch.Tensor, keys: torch.Tensor, bg_threshold: float) -> torch.Tensor:
    """HxW long labels: class where its score > bg_threshold, else 0."""
    score, cls = _best(cams, keys)
    return torch.where(score > bg_threshold, cls, torch.zeros_like(cls))


def confident_labels(
    cams: torch.Tensor, keys: torch.Tensor, fg_threshold: float, low_threshold: float
) -> torch.Tensor:
    """HxW long labels: class where score ≥ fg_threshold, 0 where ≤ low_threshold, else 255."""
    if low_threshold > fg_threshold:
        raise ValueError(f"low_threshold {low_threshold} must not exceed fg_threshold {fg_threshold}")
    score, cls = _best(cams, keys)
    out = torch.full_like(cls, IGNORE_INDEX)
    out[score <= low_threshold] = 0
    fg = score >= fg_threshold
    out[fg] = cls[fg]
    return out
