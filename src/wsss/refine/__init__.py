"""Turning CAMs into pseudo-masks: seed labels, label mining with dense CRF, affinity random walk."""

from wsss.refine import (  # noqa: F401
    crf,
    crf_torch,
    cvs,
    label_generators,
    mining,
    pairs,
    pool,
    ppg,
    random_walk,
    seeds,
)
