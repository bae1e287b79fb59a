"""Turning CAMs into pseudo-masks: seed labels, label mining with dense CRF, affinity random walk."""

from wsss.refine import crf, crf_torch, label_generators, mining, pairs, pool, random_walk, seeds  # noqa: F401
