"""Feature extractors selectable by name from ``wsss.registry.BACKBONES``."""

from wsss.models.backbones import mobilenet, resnet, resnet38, vit  # noqa: F401  (fill BACKBONES)
from wsss.models.backbones.conformer import CONFORMER_VARIANTS, Conformer, ConformerFeatures, ConformerSpec

__all__ = ["CONFORMER_VARIANTS", "Conformer", "ConformerFeatures", "ConformerSpec"]
