"""CAM extractors by name (``cams.extractor`` in a recipe): how a trained classifier's maps are read.

A registered builder takes the recipe's ``cams.extractor_args`` and returns the extractor. Two
call forms, told apart by the extractor's class attributes (absent = False):

* plain: ``(model, batch) → B×C×h×w`` maps with channel 0 = background (ignored by the CAM
  stage); the CAM stage adds the mirrored passes itself. The built-in ones defer to the model's
  own ``extract`` and run under ``torch.no_grad``.
* ``needs_labels``: ``(model, batch, labels, *, flip, scale) → B×branches×C×h×w`` maps, the
  mirror already fused in, one block per model branch; such an extractor also has
  ``fuse(branch_sums, normalise)``, which makes the stored maps (Grad-CAM, AdvCAM:
  :mod:`wsss.cams.gradcam`, :mod:`wsss.cams.advcam`).

``needs_grad``: the CAM stage runs the extractor with autograd on (and only that extractor).

On TransCAM, ``transcam`` and ``clsattn`` read the attention ``A*`` and so run the model's explicit
attention path; ``conv`` reads only ``M`` and runs the faster fused SDPA kernel (same function,
float32 rounding differences of ~1e-5 relative).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from torch import Tensor, nn

from wsss.cams.advcam import AdvCAM
from wsss.cams.gradcam import GradCAM
from wsss.registry import CAM_EXTRACTORS, check_kwargs

Extractor = Callable[..., Tensor]


def _model_method(model: nn.Module, x: Tensor, *, method: str) -> Tensor:
    return model.extract(x, method)


def _method_extractor(method: str, doc: str) -> Callable[[], Extractor]:
    def build() -> Extractor:
        return partial(_model_method, method=method)

    build.__doc__ = doc
    return build


for _name, _doc in (
    ("transcam", "TransCAM: M* = A*·M, the block-summed attention propagating the conv CAM"),
    ("conv", "the raw conv CAM head M (TransCAM's convcam; the plain CAM's pre-ReLU map)"),
    ("clsattn", "TransCAM's class-token attention row times M"),
    ("cam", "IRN's CAM: ReLU(W·features) of the plain CAM classifier (and SEAM's fc8 map)"),
    ("rv", "SEAM's PCM-revised CAM (what SEAM and PMM read at inference)"),
):
    CAM_EXTRACTORS.register(_name)(_method_extractor(_name, _doc))

CAM_EXTRACTORS.register("gradcam")(GradCAM)
CAM_EXTRACTORS.register("advcam")(AdvCAM)


def get_extractor(name: str, **kwargs: Any) -> Extractor:
    """The extractor ``name`` built with ``kwargs`` (``cams.extractor_args``); ConfigError with a
    suggestion for an unknown name or keyword."""
    builder = CAM_EXTRACTORS.get(name, where="cams.extractor")
    check_kwargs(builder, kwargs, "cams.extractor_args")
    return builder(**kwargs)


@dataclass(frozen=True)
class BoundExtractor:
    """An extractor with its model bound: the ``CamFn`` the CAM stage passes to ``multiscale_cams``,
    its ``needs_*`` flags still visible (a ``functools.partial`` would hide them)."""

    extractor: Extractor
    model: nn.Module

    @property
    def needs_grad(self) -> bool:
        return bool(getattr(self.extractor, "needs_grad", False))

    @property
    def needs_labels(self) -> bool:
        return bool(getattr(self.extractor, "needs_labels", False))

    def __call__(self, batch: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        return self.extractor(self.model, batch, *args, **kwargs)

    def fuse(self, sums: Tensor, normalise: Callable[[Tensor], Tensor]) -> Tensor:
        """Stored maps from per-branch sums (only extractors that return branches have this)."""
        return self.extractor.fuse(sums, normalise)  # type: ignore[attr-defined]
