"""Pixel-affinity networks selectable by name from ``wsss.registry.AFFINITY_MODELS``."""

import wsss.models.affinity.irn  # noqa: F401  (fills AFFINITY_MODELS: irn)
from wsss.models.affinity.psa import DEFAULT_FROZEN, AffinityNet, build_affinity_net, pair_affinities

__all__ = ["DEFAULT_FROZEN", "AffinityNet", "build_affinity_net", "pair_affinities"]
