"""Networks. Importing this package fills ``BACKBONES`` and ``CAM_MODELS``."""

import wsss.models.affinity  # noqa: F401  (fills AFFINITY_MODELS)
from wsss.models import backbones, cam

__all__ = ["backbones", "cam"]
