"""Turning CAMs into pseudo-masks: seed labels, (later) CRF and affinity random walk."""

from wsss.refine import pairs, random_walk, seeds  # noqa: F401  (registers label generators)
