"""The no-op insert: the same insertion points without a module (ablations, and the tests that
check an insert changes nothing but what it computes)."""

from __future__ import annotations

from torch import nn

from wsss.registry import BACKBONE_INSERTS


@BACKBONE_INSERTS.register("identity")
def build_identity(channels: int) -> nn.Identity:
    """Pass features through unchanged (``channels`` is accepted for the uniform call)."""
    del channels
    return nn.Identity()
