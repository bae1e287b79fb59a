"""Networks. Importing this package fills ``BACKBONES`` and ``CAM_MODELS``."""

from wsss.models import backbones, cam

__all__ = ["backbones", "cam"]
