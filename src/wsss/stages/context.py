"""What every stage receives: the validated recipe, the run directory and the process's place
in a (possibly distributed) job, plus the run directory's file layout in one place."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from wsss.config import DataConfig, LabelConfig, Recipe
from wsss.engine import DistInfo
from wsss.errors import DataError
from wsss.registry import DATASETS


def progress_wanted(progress: bool | None) -> bool:
    """Progress bars on / off as asked; None: only when stderr is a terminal (a log file gets none)."""
    return progress if progress is not None else sys.stderr.isatty()


def build_dataset(data: DataConfig, split: str, *, root: str | None = None, **kwargs: Any):
    """The recipe's dataset for ``split`` (``root`` overrides ``data.root``); extra keywords
    (``transform``, ``with_masks``…) go to the registered builder."""
    return DATASETS.build(
        data.dataset,
        where="data.dataset",
        root=data.root if root is None else root,
        split=split,
        labels_file=data.labels_file,
        mask_dir=data.mask_dir,
        **data.args,
        **kwargs,
    )


@dataclass(frozen=True)
class RunPaths:
    """The run directory layout; stages never build paths by hand elsewhere."""

    root: Path

    @property
    def pretrain_dir(self) -> Path:
        """The first classifier of a two-stage method (``pretrain-cls``; AMR's spotlight branch)."""
        return self.root / "pretrain-cls"

    @property
    def pretrain_state(self) -> Path:
        return self.pretrain_dir / "state.pt"

    @property
    def pretrain_weights(self) -> Path:
        return self.pretrain_dir / "model.safetensors"

    @property
    def classifier_dir(self) -> Path:
        return self.root / "train-cls"

    @property
    def classifier_state(self) -> Path:
        return self.classifier_dir / "state.pt"

    @property
    def classifier_weights(self) -> Path:
        return self.classifier_dir / "model.safetensors"

    # One folder per kind of per-image output, whatever split an image belongs to (names are
    # unique within a dataset), so e.g. seeds on VOC train read the CAMs made for train_aug.
    @property
    def cam_dir(self) -> Path:
        return self.root / "cams"

    @property
    def label_dir(self) -> Path:
        """Seed / confident pseudo-labels of ``make-labels``."""
        return self.root / "labels"

    @property
    def uns_dir(self) -> Path:
        """SPU's UNS network (``train-uns``)."""
        return self.root / "train-uns"

    @property
    def uns_state(self) -> Path:
        return self.uns_dir / "state.pt"

    @property
    def uns_weights(self) -> Path:
        return self.uns_dir / "model.safetensors"

    @property
    def uns_cam_dir(self) -> Path:
        """The UNS network's CAMs (``make-uns-cams``)."""
        return self.root / "uns-cams"

    @property
    def uns_label_dir(self) -> Path:
        """Confident labels of the UNS CAMs (``make-uns-cams``)."""
        return self.root / "uns-labels"

    @property
    def affinity_dir(self) -> Path:
        return self.root / "train-affinity"

    @property
    def affinity_state(self) -> Path:
        return self.affinity_dir / "state.pt"

    @property
    def affinity_weights(self) -> Path:
        return self.affinity_dir / "model.safetensors"

    @property
    def seg_dir(self) -> Path:
        return self.root / "train-seg"

    @property
    def seg_state(self) -> Path:
        return self.seg_dir / "state.pt"

    @property
    def seg_weights(self) -> Path:
        return self.seg_dir / "model.safetensors"

    @property
    def cycle_dir(self) -> Path:
        """PMM's cyclic round: its labels, model and predictions."""
        return self.root / "cycle"

    @property
    def prediction_dir(self) -> Path:
        return self.root / "predictions"

    @property
    def pseudo_dir(self) -> Path:
        """Final pseudo-masks (after the affinity random walk and CRF)."""
        return self.root / "pseudo"

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
    # progress bars: None = only when stderr is a terminal (a log file gets no bar per image)
    progress: bool | None = None
    _datasets: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def paths(self) -> RunPaths:
        return RunPaths(self.run_dir)

    @property
    def show_progress(self) -> bool:
        """Whether this process draws progress bars: the main process, when asked or on a terminal."""
        return self.dist.is_main and progress_wanted(self.progress)

    def my_indices(self, n: int) -> list[int]:
        """Indices of the n items this process handles (sharded map stages)."""
        from wsss.engine import shard_indices

        if self.shard is not None:
            return shard_indices(n, self.shard[0], self.shard[1])
        return shard_indices(n, self.dist.rank, self.dist.world_size)

    def dataset(self, split: str, *, with_masks: bool = False, **kwargs: Any):
        """The recipe's dataset for ``split``; extra keywords (``transform``…) go to the builder.

        Untransformed datasets are cached: building one may derive labels from every mask.
        ``with_masks=True`` requires a mask for every image (evaluation).
        """
        key = (split, with_masks)
        if not kwargs and key in self._datasets:
            return self._datasets[key]
        ds = build_dataset(self.recipe.data, split, with_masks=with_masks, **kwargs)
        if not kwargs:
            self._datasets[key] = ds
        return ds

    def gt_dataset(self, split: str):
        """The split with its ground-truth masks, or None (logged) when it has none."""
        try:
            ds = self.dataset(split, with_masks=True)
        except DataError as exc:
            self.logger.info("split %s has no complete ground truth (%s); not scored", split, exc)
            return None
        return ds if ds.has_masks else None

    @property
    def refines_cams(self) -> bool:
        """Whether the recipe replaces the CAMs by a refinement stage's (SPU's ``make-uns-cams``)."""
        return "make-uns-cams" in self.recipe.stages

    @property
    def walk_cam_dir(self) -> Path:
        """The CAMs the random walk starts from: the refined ones when the recipe makes them."""
        return self.paths.uns_cam_dir if self.refines_cams else self.paths.cam_dir

    @property
    def affinity_label_dir(self) -> Path:
        """The confident labels the affinity network trains on: the refined CAMs' when there are any."""
        return self.paths.uns_label_dir if self.refines_cams else self.paths.label_dir

    @property
    def map_splits(self) -> list[str]:
        """The splits whose images get CAMs, labels and pseudo-masks."""
        return list(dict.fromkeys(self.recipe.cams.splits))

    def label_splits(self, labels: LabelConfig | None = None) -> list[str]:
        """The splits that get pseudo-labels under ``labels`` (default: the recipe's ``labels``)."""
        chosen = (labels or self.recipe.labels).splits
        return self.map_splits if chosen is None else list(dict.fromkeys(chosen))
