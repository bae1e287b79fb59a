"""Segmentation networks selectable by name from ``wsss.registry.SEG_MODELS``.

``deeplab_largefov`` (TransCAM/BNR), ``deeplab_v2`` (IRN family), ``pspnet`` (PMM) and
``deeplab_v3_lite`` (CPU). Each returns raw logits at its ``output_stride``; see
``wsss.models.seg.base`` for the shared contract and the explicit ``init`` choice.
"""

from wsss.models.seg.base import IMAGENET, SegmentationModel, SegOutput, load_segmentation_checkpoint
from wsss.models.seg.deeplab import (
    ASPPSum,
    DeepLabLargeFOV,
    DeepLabV2,
    DeepLabV3Lite,
    LargeFOVDecoder,
    LiteASPP,
)
from wsss.models.seg.pspnet import FCNHead, PSPHead, PSPNet

__all__ = [
    "IMAGENET",
    "ASPPSum",
    "DeepLabLargeFOV",
    "DeepLabV2",
    "DeepLabV3Lite",
    "FCNHead",
    "LargeFOVDecoder",
    "LiteASPP",
    "PSPHead",
    "PSPNet",
    "SegOutput",
    "SegmentationModel",
    "load_segmentation_checkpoint",
]
