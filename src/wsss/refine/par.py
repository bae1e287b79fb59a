"""PAR: pixel-adaptive refinement of soft masks by the image's local colours (ToCo / AFA design).

A mask is refined by repeatedly replacing each pixel by a weighted mean of its neighbours, where
the weights favour neighbours of similar colour. The neighbours of pixel i are the 8 pixels at
offset ``d`` (rows and columns in {-d, 0, d}, the pixel itself excluded) for every dilation ``d``,
with replicate padding at the borders: ``8·len(dilations)`` neighbours in all.

Weights, per pixel i over its neighbours j:

* colour: ``a_ij = −(|I_i − I_j| / (σ_i + 1e-8) / w1)²`` per RGB channel, averaged over channels,
  with ``σ_i`` the (unbiased) standard deviation of the neighbours' values of that channel;
* position: ``p_ij = −(dist_ij / (σ_dist + 1e-8) / w1)²`` with ``dist = d`` for axis neighbours
  and ``d·√2`` for diagonal ones;
* ``aff = softmax_j(a) + w2 · softmax_j(p)``.

Each row of ``aff`` sums to ``1 + w2``, so one step is a convex combination scaled by ``1 + w2``
(kept from the original: only the arg-max of the refined masks is used). Colour differences are
divided by the local standard deviation, so the result does not depend on the image's scale;
images in [0, 1] are expected (any positive scaling gives the same result).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsss.errors import ConfigError, DataError

# Raster order of the 3×3 window without its centre; the diagonals are at positions 0, 2, 5 and 7.
_OFFSETS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


def dilated_neighbours(x: Tensor, dilations: Sequence[int]) -> Tensor:
    """``B×C×M×H×W`` with ``M = 8·len(dilations)``: the 8 neighbours at each dilation (replicate pad)."""
    _, _, h, w = x.shape
    out = []
    for d in dilations:
        padded = F.pad(x, (d, d, d, d), mode="replicate")
        for dy, dx in _OFFSETS:
            top, left = d + dy * d, d + dx * d
            out.append(padded[:, :, top : top + h, left : left + w])
    return torch.stack(out, dim=2)


class PAR(nn.Module):
    """Refine ``B×C×h×w`` masks with the colours of ``B×3×H×W`` images; returns ``B×C×H×W``.

    The masks are first resized to the image size (bilinear, ``align_corners=True``). Call it under
    ``torch.no_grad()`` when the result is a pseudo label.
    """

    def __init__(
        self,
        dilations: Sequence[int] = (1, 2, 4, 8, 12, 24),
        num_iter: int = 10,
        w1: float = 0.3,
        w2: float = 0.01,
    ) -> None:
        super().__init__()
        dilations = tuple(int(d) for d in dilations)
        if not dilations or any(d < 1 for d in dilations):
            raise ConfigError(f"par.dilations must be a non-empty list of integers >= 1, got {dilations}")
        if int(num_iter) < 0:
            raise ConfigError(f"par.num_iter must be a non-negative integer, got {num_iter}")
        if w1 <= 0:
            raise ConfigError(f"par.w1 must be > 0, got {w1}")
        if w2 < 0:
            raise ConfigError(f"par.w2 must be >= 0, got {w2}")
        self.dilations = dilations
        self.num_iter = int(num_iter)
        self.w1 = float(w1)
        self.w2 = float(w2)
        diag = math.sqrt(2.0)
        unit = [diag if dy and dx else 1.0 for dy, dx in _OFFSETS]
        dist = torch.tensor([u * d for d in dilations for u in unit])
        self.register_buffer("distances", dist, persistent=False)

    def extra_repr(self) -> str:
        return f"dilations={self.dilations}, num_iter={self.num_iter}, w1={self.w1}, w2={self.w2}"

    def affinity(self, images: Tensor) -> Tensor:
        """``B×1×M×H×W`` neighbour weights (each pixel's weights sum to ``1 + w2``)."""
        neigh = dilated_neighbours(images, self.dilations)  # B×3×M×H×W
        diff = (neigh - images.unsqueeze(2)).abs()
        std = neigh.std(dim=2, keepdim=True)
        colour = -((diff / (std + 1e-8) / self.w1) ** 2)
        colour = colour.mean(dim=1, keepdim=True)
        dist = self.distances.to(device=images.device, dtype=images.dtype)
        pos = -((dist / (dist.std() + 1e-8) / self.w1) ** 2)
        pos = pos.softmax(dim=0).view(1, 1, -1, 1, 1)
        return colour.softmax(dim=2) + self.w2 * pos

    def forward(self, images: Tensor, masks: Tensor) -> Tensor:
        if images.dim() != 4 or masks.dim() != 4 or images.shape[0] != masks.shape[0]:
            raise DataError(
                f"PAR needs B×3×H×W images and B×C×h×w masks, got {tuple(images.shape)} and {tuple(masks.shape)}"
            )
        masks = F.interpolate(masks, size=images.shape[-2:], mode="bilinear", align_corners=True)
        aff = self.affinity(images.to(masks.dtype))
        for _ in range(self.num_iter):
            masks = (dilated_neighbours(masks, self.dilations) * aff).sum(dim=2)
        return masks
