"""The one way tests build a single-process CPU ``StageContext`` (as ``wsss.pipeline`` does)."""

from __future__ import annotations

import logging
from pathlib import Path

from wsss.config import Recipe
from wsss.engine import init_distributed, resolve_device
from wsss.stages.context import StageContext


def cpu_context(recipe: Recipe, run_dir: Path, shard: tuple[int, int] | None = None) -> StageContext:
    """A context for running one stage of ``recipe`` in ``run_dir`` on the CPU, no DDP."""
    return StageContext(
        recipe=recipe,
        run_dir=run_dir,
        device=resolve_device("cpu"),
        dist=init_distributed(),
        logger=logging.getLogger("test"),
        shard=shard,
    )
