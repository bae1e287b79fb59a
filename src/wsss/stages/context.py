"""What every stage receives: the validated recipe, the run directory and the process's place
in a (possibly distributed) job, plus the run directory's file layout in one place."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from wsss.config import Recipe
from wsss.engine import DistInfo
from wsss.registry import DATASETS


@dataclass(frozen=True)
class RunPaths:
    """The run directory layout; stages never build paths by hand elsewhere."""

    root: Path

    @property
    def classifier_dir(self) -> Path:
        return self.root / "train-cls"

    @property
    def classifier_state(self) -> Path:
        return self.classifier_dir / "state.pt"

    @property
    def classifier_weights(self) -> Path:
        return self.classifier_dir / "model.safetensors"

    def cam_dir(self, split: str) -> Path:
        return self.root / "cams" / split

    def label_dir(self, split: str) -> Path:
        return self.root / "labels" / split

    @property
    def affinity_dir(self) -> Path:
        return self.root / "train-affinity"

    @property
    def affinity_state(self) -> Path:
        return self.affinity_dir / "state.pt"

    @property
    def affinity_weights(self) -> Path:
        return self.affinity_dir / "model.safetensors"

    def pseudo_dir(self, split: str) -> Path:
        """Final pseudo-masks (after affinity random walk and CRF)."""
        return self.root / "pseudo" / split

    @property
    def eval_dir(self) -> Path:
        return self.root / "eval"

    @property
    def log_dir(self) -> Path:
        return self.root / "logs"


@dataclass
class StageContext:
    recipe: Recipe
    run_dir: Path
    device: torch.device
    dist: DistInfo
    logger: logging.Logger
    shard: tuple[int, int] | None = None  # (index, count) from --shard i/n; overrides DDP ranks
    _datasets: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def paths(self) -> RunPaths:
        return RunPaths(self.run_dir)

    def my_indices(self, n: int) -> list[int]:
        """Indices of the n items this process handles (sharded map stages)."""
        from wsss.engine import shard_indices

        if self.shard is not None:
            return shard_indices(n, self.shard[0], self.shard[1])
        return shard_indices(n, self.dist.rank, self.dist.world_size)

    def dataset(self, split: str, **kwargs: Any):
        """The recipe's dataset for ``split``; extra keywords (``transform``…) go to the builder.

        Untransformed datasets are cached: building one may derive labels from every mask.
        """
        if not kwargs and split in self._datasets:
            return self._datasets[split]
        d = self.recipe.data
        ds = DATASETS.build(
            d.dataset,
            where="data.dataset",
            root=d.root,
            split=split,
            labels_file=d.labels_file,
            mask_dir=d.mask_dir,
            **d.args,
            **kwargs,
        )
        if not kwargs:
            self._datasets[split] = ds
        return ds
