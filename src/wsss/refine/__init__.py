"""Turning CAMs into pseudo-masks: seed labels, label mining with dense CRF, affinity random walk."""

from wsss.refine import (  # noqa: F401
    affinity_propagation,
    crf,
    crf_torch,
    cvs,
    fusion,
    label_generators,
    mining,
    online_labels,
    pairs,
    par,
    pool,
    ppg,
    random_walk,
    seeds,
)
