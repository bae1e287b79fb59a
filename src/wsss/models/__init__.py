"""Networks. Importing this package fills ``BACKBONES``, ``BACKBONE_INSERTS`` and ``CAM_MODELS``."""

import wsss.models.affinity
import wsss.models.seg  # noqa: F401  (fills SEG_MODELS)
from wsss.models import backbones, cam, modules

__all__ = ["backbones", "cam", "modules"]
