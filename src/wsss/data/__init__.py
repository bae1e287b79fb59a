"""Datasets, image-level labels, transforms and converters.

Importing this package registers the datasets (``voc``, ``synth``, ``coco``, ``folder``, ``acdc``) in
``wsss.registry.DATASETS``; build one with ``DATASETS.build(name, root=..., split=...)``.
"""

from __future__ import annotations

from wsss.data import acdc, coco, folder, voc
from wsss.data.base import TaggedImageDataset

try:  # the synthetic-data generator is an optional module of this package
    from wsss.data import synth
except ModuleNotFoundError as exc:
    if exc.name != "wsss.data.synth":
        raise
    synth = None

__all__ = ["TaggedImageDataset", "acdc", "coco", "folder", "synth", "voc"]
