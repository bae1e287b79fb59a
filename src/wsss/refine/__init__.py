"""Turning CAMs into pseudo-masks: seed labels, (later) CRF and affinity random walk."""

from wsss.refine import seeds  # noqa: F401  (registers label generators)
