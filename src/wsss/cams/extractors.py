"""CAM extractors by name (``cams.extractor`` in a recipe): how a trained classifier's maps are read.

Each entry maps ``(model, batch) → B×C×h×w`` maps with channel 0 = background (ignored by the CAM
stage). The built-in ones defer to the model's own ``extract``; an extractor that needs more
than one forward (Grad-CAM, AdvCAM) registers here too, so recipes name it the same way.

On TransCAM, ``transcam`` and ``clsattn`` read the attention ``A*`` and so run the model's explicit
attention path; ``conv`` reads only ``M`` and runs the faster fused SDPA kernel (same function,
float32 rounding differences of ~1e-5 relative).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from torch import Tensor, nn

from wsss.registry import CAM_EXTRACTORS

Extractor = Callable[[nn.Module, Tensor], Tensor]


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


def get_extractor(name: str) -> Extractor:
    """The extraction function for ``name`` (ConfigError with a suggestion when unknown)."""
    return CAM_EXTRACTORS.build(name, where="cams.extractor")
