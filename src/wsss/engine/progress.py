"""Where a training step sits in its run, handed to every step function.

Single-stage methods change what they train by iteration (UniA adds its segmentation loss after a
warm-up and switches its label rule later), so the loop tells each step its global index and the
run's length instead of every objective counting calls (which a resume would reset).
"""

from __future__ import annotations

from typing import NamedTuple


class TrainProgress(NamedTuple):
    """``step``: optimizer steps taken before this batch (0-based index of this step, kept across a
    resume); ``total_steps``: steps of the whole run; ``epoch``: 0-based epoch of this batch."""

    step: int
    total_steps: int
    epoch: int
