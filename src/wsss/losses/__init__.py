"""Training objectives. Importing this package fills ``METHODS`` (and ``LOSSES``)."""

from wsss.losses import bnr

__all__ = ["bnr"]
