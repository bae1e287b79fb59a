"""Modules a backbone inserts after its blocks or stages. Importing fills ``BACKBONE_INSERTS``."""

from wsss.models.modules import amm, hybrid_attention, identity  # noqa: F401  (fill BACKBONE_INSERTS)
from wsss.models.modules.amm import AMM, ChannelGate, SpatialGate, gaussian_remap
from wsss.models.modules.hybrid_attention import HybridAttention

__all__ = ["AMM", "ChannelGate", "HybridAttention", "SpatialGate", "gaussian_remap"]
