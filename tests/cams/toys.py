"""Tiny models implementing ``gradcam_branches`` for the gradient-extractor tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LinearToy(nn.Module):
    """Features = the first C input channels themselves; class maps = W·features (1×1, no bias).

    Gradients are hand-computable: ∂ Σ_p ReLU(map_c) / ∂A_kp = W_ck·1[map_c(p) > 0].
    ``logits``: give GAP(map) (B×K) instead of the maps; ``background``: prepend a zero class.
    """

    def __init__(self, weight: Tensor, *, logits: bool = False, background: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.clone())
        self.logits = logits
        self.background = background

    def gradcam_branches(self, x: Tensor) -> list[tuple[Tensor, Tensor]]:
        features = x[:, : self.weight.shape[1]]
        if not features.requires_grad:  # Grad-CAM's input needs no gradient: a leaf will do
            features = features.detach().requires_grad_(True)
        maps = torch.einsum("kc,bchw->bkhw", self.weight, features)
        if self.background:
            maps = torch.cat([torch.zeros_like(maps[:, :1]), maps], 1)
        return [(features, maps.mean((2, 3)) if self.logits else maps)]


class ConvToy(nn.Module):
    """A small nonlinear CAM net at stride 4, with ``branches`` independent heads-and-bodies."""

    output_stride = 4

    def __init__(self, classes: int = 2, branches: int = 1, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.bodies = nn.ModuleList(nn.Conv2d(3, 6, 3, stride=4, padding=1) for _ in range(branches))
        self.heads = nn.ModuleList(nn.Conv2d(6, classes, 1, bias=False) for _ in range(branches))

    def gradcam_branches(self, x: Tensor) -> list[tuple[Tensor, Tensor]]:
        out = []
        for body, head in zip(self.bodies, self.heads):
            features = F.relu(body(x))
            out.append((features, head(features)))
        return out


class OneBranch(nn.Module):
    """Branch ``index`` of a multi-branch toy as a model of its own."""

    def __init__(self, model: nn.Module, index: int) -> None:
        super().__init__()
        self.model, self.index = model, index

    def gradcam_branches(self, x: Tensor) -> list[tuple[Tensor, Tensor]]:
        return [self.model.gradcam_branches(x)[self.index]]
