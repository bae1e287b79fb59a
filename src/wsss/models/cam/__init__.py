"""CAM networks selectable by name from ``wsss.registry.CAM_MODELS``."""

import wsss.models.cam.amr  # fills CAM_MODELS: amr
import wsss.models.cam.plain_cam  # fills CAM_MODELS: cam
import wsss.models.cam.seam  # fills CAM_MODELS: seam
import wsss.models.cam.spu  # fills CAM_MODELS: spu
import wsss.models.cam.unia  # noqa: F401  (fills CAM_MODELS: unia)
from wsss.models.cam.transcam import (
    EXTRACT_METHODS,
    TransCAM,
    TransCAMOutput,
    a_star,
    build_transcam,
    class_token_attention,
    refine,
)

__all__ = [
    "EXTRACT_METHODS",
    "TransCAM",
    "TransCAMOutput",
    "a_star",
    "build_transcam",
    "class_token_attention",
    "refine",
]
