"""CAM networks selectable by name from ``wsss.registry.CAM_MODELS``."""

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
