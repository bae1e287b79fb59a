"""The typed recipe schema: one dataclass per pipeline section.

Field defaults are the clean behaviour; recipes in ``recipes/`` set paper values. Component
choices (``model``, ``method``, ``extractor`` …) are registry names; their free-form
``*_args`` dicts are checked against the registered builder's signature when built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass
class DataConfig:
    """Where the images and tags are, and which splits each stage uses."""

    dataset: str = "synth"  # registry name: synth | voc | coco | folder
    root: str = "data/synth"  # dataset root (VOC layout: the folder holding JPEGImages/)
    train_split: str = "train"  # classifier / segmentation training list
    cam_split: str = "train"  # images that get CAMs and pseudo-masks
    seed_eval_split: str = "train"  # split with GT on which seeds and pseudo-masks are scored
    val_split: str = "val"  # segmentation evaluation split
    labels_file: str | None = (
        None  # image-level labels (cls_labels.npy / .npz / tags CSV); None: from masks/XML
    )
    mask_dir: str | None = None  # label folder override (e.g. SegmentationClassAug)
    args: dict[str, Any] = field(default_factory=dict)  # extra dataset-builder keywords


@dataclass
class ClassifierConfig:
    """Stage ``train-cls``: the CAM network and how it is trained."""

    model: str = "transcam"  # CAM model registry name
    backbone: str = "conformer_small"
    pretrained: str | None = None  # path to ImageNet weights (state_dict or {'model': …})
    model_args: dict[str, Any] = field(default_factory=dict)
    method: str = "bnr"  # training objective registry name
    method_args: dict[str, Any] = field(default_factory=dict)
    epochs: int = 22
    batch_size: int = 8
    lr: float = 5.0e-5
    weight_decay: float = 5.0e-4
    resize_long: tuple[int, int] = (320, 640)
    crop_size: int = 512
    flip: bool = True
    color_jitter: tuple[float, float, float, float] = (0.3, 0.3, 0.3, 0.1)
    amp: Literal["none", "bf16", "fp16"] = "none"
    num_workers: int = 2
    log_every: int = 20  # optimizer steps between TensorBoard scalars


@dataclass
class CamConfig:
    """Stage ``make-cams``: multi-scale + flip inference written as CAM files."""

    extractor: Literal["conv", "transcam", "clsattn"] = "transcam"
    splits: list[str] = field(default_factory=lambda: ["train"])  # data splits that get CAM files
    scale_mode: Literal["square", "relative"] = "square"  # square: resize to s×s (TransCAM)
    scales: list[float] = field(default_factory=lambda: [256.0, 512.0, 768.0])
    flip: bool = True
    batched: bool = True  # flips (and equal-size scales) in one forward
    batch_images: int = 4  # images per forward group when batched
    stride: int = 4  # stored CAM stride relative to the original image (1 = full resolution)


@dataclass
class LabelConfig:
    """Stage ``make-labels``: seed pseudo-labels from CAMs."""

    mode: Literal["threshold", "confident"] = "threshold"
    bg_threshold: float = 0.25  # constant background score for 'threshold'
    fg_threshold: float = 0.60  # 'confident': fg where max CAM ≥ this
    low_threshold: float = 0.25  # 'confident': bg where max CAM ≤ this; between → 255


@dataclass
class EvalConfig:
    """Evaluation settings shared by ``eval-cams`` and ``evaluate``."""

    thresholds: tuple[float, float, float] = (0.0, 0.60, 0.01)  # sweep start, stop (exclusive), step
    fixed_threshold: float | None = None  # GT-free threshold; None: pick on the train split
    mean: Literal["all", "absent_as_zero", "gt_present"] = "all"  # see wsss.eval.metrics


@dataclass
class Recipe:
    """A whole pipeline: data, components and stage settings."""

    name: str = "unnamed"
    description: str = ""
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    compat: Literal["clean", "authors_code"] = "clean"
    stages: list[str] = field(default_factory=lambda: ["train-cls", "make-cams", "eval-cams", "make-labels"])
    data: DataConfig = field(default_factory=DataConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    cams: CamConfig = field(default_factory=CamConfig)
    labels: LabelConfig = field(default_factory=LabelConfig)
    evaluate: EvalConfig = field(default_factory=EvalConfig)
