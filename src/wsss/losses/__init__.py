"""Training objectives. Importing this package fills ``METHODS`` (and ``LOSSES``)."""

import wsss.losses.affinity  # fills LOSSES: psa_affinity
import wsss.losses.amr  # fills METHODS: amr
import wsss.losses.cam
import wsss.losses.seam  # fills METHODS: seam
import wsss.losses.seg  # fills LOSSES: ce, puf
import wsss.losses.spu  # fills METHODS: spu
import wsss.losses.uncertainty  # fills LOSSES: uncertainty_rectified
import wsss.losses.unia_objective  # noqa: F401  (fills METHODS: unia)
from wsss.losses import bnr
from wsss.losses import irn as irn  # fills LOSSES: irn

__all__ = ["bnr"]
