"""Modules a backbone inserts after its blocks or stages. Importing fills ``BACKBONE_INSERTS``."""

from wsss.models.modules import amm, identity  # noqa: F401  (fill BACKBONE_INSERTS: amm, identity)
from wsss.models.modules.amm import AMM, ChannelGate, SpatialGate, gaussian_remap

__all__ = ["AMM", "ChannelGate", "SpatialGate", "gaussian_remap"]
