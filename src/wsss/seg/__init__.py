"""Segmentation-network test-time inference: multi-scale + flip, sliding window, CRF post-processing."""

from wsss.seg.inference import (
    TEST_PROTOCOLS,
    SegTestProtocol,
    get_protocol,
    postprocess_crf,
    predict_probs,
    scaled_size,
)

__all__ = [
    "TEST_PROTOCOLS",
    "SegTestProtocol",
    "get_protocol",
    "postprocess_crf",
    "predict_probs",
    "scaled_size",
]
