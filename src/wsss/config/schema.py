"""The typed recipe schema: one dataclass per pipeline section.

Field defaults are the clean behaviour; recipes in ``recipes/`` set paper values. Component
choices (``model``, ``method``, ``extractor`` …) are registry names; their free-form
``*_args`` dicts are checked against the registered builder's signature when built. Values a
type admits but no run can use (a negative lr, a threshold above 1, an empty scale list) are
refused by :func:`value_problems`, by field name, in every section that has the field.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass
class DataConfig:
    """Where the images and tags are, and which splits each stage uses."""

    dataset: str = "synth"  # registry name: synth | voc | coco | folder
    root: str = "data/synth"  # dataset root (VOC layout: the folder holding JPEGImages/)
    train_split: str = "train"  # classifier / segmentation training list
    seed_eval_split: str = "train"  # split with GT on which seeds and pseudo-masks are scored
    val_split: str = "val"  # segmentation evaluation split
    labels_file: str | None = (
        None  # image-level labels (cls_labels.npy / .npz / tags CSV); None: from masks/XML
    )
    mask_dir: str | None = None  # label folder override (e.g. SegmentationClassAug)
    args: dict[str, Any] = field(default_factory=dict)  # extra dataset-builder keywords


@dataclass
class TrainerConfig:
    """What every training stage shares: schedule, optimiser, precision, loader."""

    epochs: int = 22
    batch_size: int = 8
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    # poly: lr·(1 − step/total)^0.9 per step; warmup_poly: the same after a linear warm-up from
    # warmup_ratio·lr over warmup_steps steps (ToCo/UniA's PolyWarmupAdamW)
    schedule: Literal["constant", "poly", "warmup_poly"] = "constant"
    warmup_steps: int = 0
    warmup_ratio: float = 1.0e-6
    lr: float = 5.0e-5
    weight_decay: float = 5.0e-4
    momentum: float = 0.9  # SGD only; compat: authors_code puts weight_decay here (legacy PolyOptimizer)
    head_lr_mult: float = 1.0  # lr multiplier of the model's new layers (IRN/PSA: 10); 1 = one group
    # This stage's optimiser quirks: None follows the recipe's ``compat``; ``authors_code`` builds the
    # legacy PolyOptimizer (momentum = weight_decay) for SGD stages whose authors used it (PSA/TransCAM
    # AffinityNet, IRN) while the other stages keep theirs (TransCAM's DeepLab uses real momentum).
    compat: Literal["clean", "authors_code"] | None = None
    amp: Literal["none", "bf16", "fp16"] = "none"
    sync_bn: bool = False  # DDP on GPUs: SyncBatchNorm across processes (segmentation at small per-GPU batch)
    num_workers: int = 2
    log_every: int = 20  # optimizer steps between TensorBoard scalars
    # Layout of the training batches: channels-last (NHWC) trains MobileNetV2 1.13-1.36x faster on a CPU
    # (oneDNN; bench/real_photo_speed.py) with the same gradients up to float rounding, which a few SGD
    # steps grow into other (not worse) numbers; off, so the README's measured runs repeat. ``auto``:
    # channels-last on the CPU, as loaded elsewhere.
    channels_last: bool | Literal["auto"] = False
    # A loss term (or, without fp16 AMP, a gradient) that is NaN or inf: ``stop`` raises, naming the
    # epoch, step and images, with the last epoch checkpoint kept; ``skip`` drops that optimizer step
    # (no update) and counts it (``skipped_steps``), stopping anyway past 10 % of an epoch's steps or
    # 5 in a row. fp16 AMP's scaler still skips overflowing steps on its own (not counted).
    nonfinite: Literal["stop", "skip"] = "stop"


@dataclass
class ClassifierConfig(TrainerConfig):
    """Stage ``train-cls``: the CAM network and how it is trained (TransCAM: AdamW, constant lr)."""

    model: str = "transcam"  # CAM model registry name
    backbone: str = "conformer_small"
    pretrained: str | None = None  # path to ImageNet weights (state_dict or {'model': …})
    model_args: dict[str, Any] = field(default_factory=dict)
    method: str = "bnr"  # training objective registry name
    method_args: dict[str, Any] = field(default_factory=dict)
    resize_long: tuple[int, int] = (320, 640)
    crop_size: int = 512
    flip: bool = True
    color_jitter: tuple[float, float, float, float] | None = (0.3, 0.3, 0.3, 0.1)  # null: none
    # PMM's heatmap-guided crops: ``random`` = resize-long + random crop (above); ``heat`` = windows of
    # ``crop_size`` every ``heat_stride`` pixels over the image rescaled by one of ``heat_scales``,
    # relabelled from the rough masks in ``heat_masks`` (a label folder of a phase-A run, 255 = unsure):
    # class k stays when the crop holds > ``heat_keep`` of its confident pixels, or they fill > ``heat_keep``
    # of the crop.
    # ``random_resized``: torchvision's RandomResizedCrop to crop_size over ``crop_scale`` of the image's
    # area, bicubic (ToCo/UniA: 0.32-1), instead of resize-long + crop.
    crops: Literal["random", "heat", "random_resized"] = "random"
    crop_scale: tuple[float, float] = (0.32, 1.0)
    color_jitter_p: float = 1.0  # share of images that get the colour jitter (UniA: 0.5)
    heat_masks: str | None = None
    heat_scales: list[float] = field(
        default_factory=lambda: [0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.25, 2.5, 2.75, 3.0]
    )
    heat_stride: int = 300
    heat_keep: float = 0.1
    # Cutout after the crop: (holes, side in pixels) zeroed on the normalised image; null: none.
    # AMR's spotlight branch: [3, 128].
    cutout: tuple[int, int] | None = None
    # ``pretrain``: start from the weights the ``pretrain-cls`` stage wrote (RUN/pretrain-cls/), handed
    # to the model's ``load_pretrained_stage`` (AMR: its frozen spotlight branch); null: nothing.
    init_from: Literal["pretrain"] | None = None
    # Held-out tags, scored at the end of training (mAP, F1: train-cls's metrics and the report) so a
    # classifier that did not learn shows before any CAM is made. ``validation_split``: a split with
    # tags (e.g. val), scored as it is; ``holdout``: instead keep this share of train_split out of
    # training (picked by a hash of each image name: the same images for every seed). Both off: none.
    validation_split: str | None = None
    holdout: float = 0.0
    validate_every: int = 0  # also score every N epochs (0: at the end only)
    # images are scored resized to this long side (one scale, no flip); null: the training crop_size
    validation_size: int | None = None


@dataclass
class CamConfig:
    """Stage ``make-cams``: multi-scale + flip inference written as CAM files."""

    extractor: str = (
        "transcam"  # CAM_EXTRACTORS name: transcam | conv | clsattn (TransCAM), cam, rv (SEAM), …
    )
    extractor_args: dict[str, Any] = field(
        default_factory=dict
    )  # keywords of the extractor (advcam: steps …)
    norm: Literal["minmax", "max"] = "minmax"  # per class: TransCAM min-max, IRN divide-by-max
    splits: list[str] = field(default_factory=lambda: ["train"])  # data splits that get CAM files
    scale_mode: Literal["square", "relative"] = "square"  # square: resize to s×s (TransCAM)
    scales: list[float] = field(default_factory=lambda: [256.0, 512.0, 768.0])
    # Kernel of the per-scale resize: ``pil`` = PIL bicubic on the uint8 image, as TransCAM, PSA and
    # IRN resize (done on the CPU); ``torch`` = torchvision's antialiased bicubic on the device.
    resize: Literal["pil", "torch"] = "pil"
    flip: bool = True
    batched: bool = True  # flips (and equal-size scales) in one forward
    batch_images: int = 4  # images per forward group when batched
    stride: int = 4  # stored CAM stride relative to the original image (1 = full resolution)
    # PMM's multi-crop inference: with ``window`` set, every scale's image is tiled by window×window
    # crops every ``window_stride`` pixels, each crop (and its flip) resized to the window and run, and
    # the maps averaged by overlap count; ``scales`` are then relative factors (PMM: 0.75 … 3.0).
    window: int | None = None
    window_stride: int = 300
    # Speed of make-cams on a CPU; the maps stay the same up to float rounding (bench/real_photo_speed.py).
    # ``forward_images``: images of a ``batch_images`` group (each with its flip) per forward; 0: the whole
    # group. 1 is 1.97x faster for MobileNetV2 on 640x480 photos on a CPU (the coco128 recipes set it) but
    # slower for many small images (the demo's make-cams: 15 s → 40 s). ``fold_bn``: eval-mode
    # BatchNorm folded into the convolution before it. ``channels_last``: the network in NHWC, oneDNN's
    # fast layout (``auto``: on the CPU; true / false: everywhere / nowhere). Gradient extractors
    # (gradcam, advcam) ignore all three.
    forward_images: int = 0
    fold_bn: bool = True
    channels_last: bool | Literal["auto"] = "auto"
    # An image whose stored maps hold NaN or inf: ``stop`` raises naming it and its classes (files
    # written so far are kept; a rerun resumes); ``skip`` writes no CAM file for it but a marker
    # ``NAME.nonfinite.json``, lists it in the stage metrics, and later stages that need its CAM say so.
    nonfinite: Literal["stop", "skip"] = "stop"


@dataclass
class LabelConfig:
    """Stage ``make-labels``: pseudo-labels from CAM files (255 = uncertain)."""

    mode: str = "threshold"  # LABEL_GENERATORS registry name: threshold | confident | alpha | ppg | rough
    mode_args: dict[str, Any] = field(default_factory=dict)  # extra keywords of the generator (ppg: alpha …)
    # A CAM_TRANSFORMS entry applied to every CAM file's maps before the generator (cvs: PMM's
    # coefficient-of-variation smoothing), with its keywords; None: the maps as stored.
    cam_transform: str | None = None
    cam_transform_args: dict[str, Any] = field(default_factory=dict)
    bg_threshold: float = 0.25  # 'threshold': constant background score
    fg_threshold: float = 0.60  # 'confident': fg where the best class ≥ this (TransCAM 0.60, IRN 0.30)
    low_threshold: float = 0.25  # 'confident': bg where the best class ≤ this (TransCAM 0.25, IRN 0.05)
    alpha_fg: float = 4.0  # 'alpha' (PSA): bg score (1 − max)^alpha_fg for confident foreground
    alpha_bg: float = 32.0  # … and (1 − max)^alpha_bg for confident background (paper 24, README 32)
    crf: str | None = None  # CRF preset (label, psa, …); None: no CRF
    crf_backend: Literal["auto", "exact", "torch"] = "auto"
    # Labels a label-unary CRF chooses among: ``present`` = background + the image's classes (IRN's
    # cam_to_ir_label), ``dataset`` = every class of the dataset (TransCAM/PSA crf_inference_label,
    # n_labels 21 on VOC: a non-chosen label costs -log(0.3/20) = 4.20 instead of 1.20 with 2 labels).
    crf_label_space: Literal["present", "dataset"] = "present"
    workers: int = 1  # processes for the CRF
    # The splits that get labels; None: every CAM split (cams.splits). Which images get a label does
    # not change any label, so a rerun may narrow or widen this without starting the run over.
    splits: list[str] | None = None


@dataclass
class UNSConfig(TrainerConfig):
    """Stages ``train-uns`` and ``make-uns-cams``: SPU's uncertainty-guided noise suppression.

    A label-conditioned two-head network (``models/seg/uns.py``) trained on ``make-labels``' confident
    labels with the uncertainty-rectified loss; its main-head maps become the CAMs (``RUN/uns-cams``)
    and the labels (``RUN/uns-labels``) that the affinity net and the walk read instead. Defaults are
    SPU's released ``train_uns.py``: Adam, backbone lr 5e-6, new layers 1e-4, 10 epochs, batch 16.
    """

    backbone: str = "resnet50"
    pretrained: str | None = None
    model_args: dict[str, Any] = field(default_factory=dict)
    loss: str = "uncertainty_rectified"  # LOSSES registry name (needs the main and the auxiliary head)
    loss_args: dict[str, Any] = field(default_factory=dict)
    epochs: int = 10
    batch_size: int = 16
    optimizer: Literal["adamw", "adam", "sgd"] = "adam"
    schedule: Literal["constant", "poly", "warmup_poly"] = "constant"
    lr: float = 5.0e-6
    weight_decay: float = 1.0e-4
    head_lr_mult: float = 20.0  # new layers at 1e-4
    scale: tuple[float, float] = (0.5, 1.5)
    crop_size: int = 512
    flip: bool = True
    color_jitter: tuple[float, float, float, float] | None = None
    # UNS CAMs: main-head logits averaged over these relative scales and their flips, softmax over
    # every class, the image's classes kept and min-max normalised where the first labels are not
    # background (elsewhere the softmax stays), stored at ``cams.stride``
    cam_scales: list[float] = field(default_factory=lambda: [1.0, 0.5, 1.5, 2.0])
    cam_flip: bool = True
    # the labels made from the UNS CAMs (SPU: confident 0.45 / 0.15 + label CRF; set them in the
    # recipe: a nested section's unset keys take LabelConfig's own defaults)
    labels: LabelConfig = field(default_factory=LabelConfig)


@dataclass
class AffinityConfig(TrainerConfig):
    """Stage ``train-affinity``: PSA's AffinityNet on the confident labels of ``make-labels``.

    Defaults are TransCAM's: lr 0.01, 8 epochs, batch 8, crop 448, poly SGD, ×10 on new layers.
    """

    model: str = "psa"  # AFFINITY_MODELS registry name
    backbone: str = "resnet38"
    pretrained: str | None = None  # ImageNet weights of the backbone (a local file)
    model_args: dict[str, Any] = field(default_factory=dict)
    split: str | None = None  # images whose confident labels train it; None: the first CAM split
    epochs: int = 8
    batch_size: int = 8
    optimizer: Literal["adamw", "adam", "sgd"] = "sgd"
    schedule: Literal["constant", "poly", "warmup_poly"] = "poly"
    lr: float = 0.01
    weight_decay: float = 5.0e-4
    head_lr_mult: float = 10.0
    # Random rescale before the crop; each is off when null. PSA/TransCAM train_aff.py: crop 448 + flip
    # only (both null); IRN train_irn.py: scale (0.5, 1.5).
    resize_long: tuple[int, int] | None = None
    scale: tuple[float, float] | None = None
    crop_size: int = 448
    flip: bool = True
    color_jitter: tuple[float, float, float, float] | None = (0.3, 0.3, 0.3, 0.1)  # null: none
    radius: int = 5
    padding_as_background: bool = False  # True: TransCAM's crop padding reads as confident background


@dataclass
class RandomWalkConfig:
    """Stage ``random-walk``: propagate CAMs with AffinityNet affinities (TransCAM: bg 0.42, β 14,
    logt 7, then the label CRF; PSA: (1 − max)^16, β 8, logt 8, no CRF)."""

    beta: float = 14.0
    logt: int = 7  # t = 2^logt transition steps
    radius: int = 5
    bg_mode: Literal["constant", "power"] = "constant"  # power: (1 − max)^bg_value
    bg_value: float = 0.42
    cam_power: float = 1.0
    crf: str | None = "label"  # CRF preset applied to the walked labels; None: no CRF
    crf_backend: Literal["auto", "exact", "torch"] = "auto"
    crf_label_space: Literal["present", "dataset"] = "present"  # as ``labels.crf_label_space``


@dataclass
class SegConfig(TrainerConfig):
    """Stage ``train-seg``: a segmentation network on pseudo-masks (or GT: the upper bound).

    TransCAM: DeepLab-LargeFOV/ResNet-38, 20k iterations at batch 10 (≈ 19 epochs of train_aug),
    lr 1e-3 poly SGD, head ×10, crop 448, scale 0.5–1.5, flip, CE ignoring 255.
    """

    model: str = "deeplab_v3_lite"  # SEG_MODELS registry name
    backbone: str = "mobilenet_v2"
    pretrained: str | None = None  # backbone ImageNet weights (local file, or "offline" for MobileNetV2)
    init: str = "imagenet"  # or a full segmentation checkpoint (e.g. a COCO-pretrained DeepLab): reported
    model_args: dict[str, Any] = field(default_factory=dict)
    labels: str = (
        "pseudo"  # pseudo: random-walk masks if made, else make-labels; gt: ground truth; or a folder
    )
    loss: str = "ce"  # LOSSES registry name: ce | puf | uncertainty_rectified (needs an auxiliary head)
    loss_args: dict[str, Any] = field(default_factory=dict)
    # PMM's cyclic round (stage cycle-seg) trains its fresh model with its own loss: the authors'
    # round-2 configs use plain cross-entropy (PUF only in round 1's ``_pus`` config).
    cycle_loss: str = "ce"
    cycle_loss_args: dict[str, Any] = field(default_factory=dict)
    epochs: int = 19
    batch_size: int = 10
    optimizer: Literal["adamw", "adam", "sgd"] = "sgd"
    schedule: Literal["constant", "poly", "warmup_poly"] = "poly"
    lr: float = 1.0e-3
    weight_decay: float = 5.0e-4
    head_lr_mult: float = 10.0
    scale: tuple[float, float] = (0.5, 1.5)
    crop_size: int = 448
    flip: bool = True
    color_jitter: tuple[float, float, float, float] | None = None
    # Opt-in: after every epoch score the val split (single scale) and keep the best weights too.
    # That checkpoint is chosen on val ground truth and is reported as such; the cyclic round
    # uses it instead of the last checkpoint only when this is on.
    select_by_val: bool = False


@dataclass
class PredictConfig:
    """Stage ``predict``: multi-scale + flip inference (+ CRF) and scoring on the val split."""

    # which trained network predicts: ``segmentation`` (train-seg's model) or ``classifier`` (train-cls's
    # model through its segmentation head: single-stage methods such as UniA, which have no train-seg)
    model: Literal["segmentation", "classifier"] = "segmentation"
    protocol: str | None = None  # a named paper protocol (transcam, pmm, unia) instead of the fields below
    scales: list[float] = field(default_factory=lambda: [1.0])
    flip: bool = False
    mode: Literal["logits", "probs", "max_logits"] = "logits"
    window: int | None = None  # sliding-window size for large images
    crf: str | None = None  # CRF preset (deeplab, deeplab_v2, toco); None: no CRF
    crf_backend: Literal["auto", "exact", "torch"] = "auto"
    splits: list[str] = field(default_factory=lambda: ["val"])


@dataclass
class EvalConfig:
    """Evaluation settings shared by ``eval-cams`` and ``evaluate``."""

    # sweep start, stop (exclusive), step: 0.00-0.95, so the best threshold is never off the top of the range
    thresholds: tuple[float, float, float] = (0.0, 0.96, 0.01)
    fixed_threshold: float | None = None  # GT-free threshold; None: pick on the train split
    # fixed: fixed_threshold, or the seed-evaluation split's best (its ground truth) applied to the
    # other splits; auto: Otsu's threshold of the seed split's CAM values (wsss.eval.cam_stats), no GT
    threshold: Literal["fixed", "auto"] = "fixed"
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
    # Stage ``pretrain-cls``: a first classifier trained before ``classifier`` and written to
    # RUN/pretrain-cls/ (AMR's spotlight branch); ``classifier.init_from: pretrain`` reads it. null: none.
    pretrain: ClassifierConfig | None = None
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    cams: CamConfig = field(default_factory=CamConfig)
    labels: LabelConfig = field(default_factory=LabelConfig)
    uns: UNSConfig | None = None  # SPU's noise suppression (stages train-uns, make-uns-cams); null: none
    affinity: AffinityConfig = field(default_factory=AffinityConfig)
    random_walk: RandomWalkConfig = field(default_factory=RandomWalkConfig)
    segmentation: SegConfig = field(default_factory=SegConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)
    evaluate: EvalConfig = field(default_factory=EvalConfig)


# --------------------------------------------------------------------------- value rules
# field name -> (test of a set value, what the value must be). ``None`` (an optional feature left
# off) is never tested. A name means the same thing in every section that has it (``lr`` of the
# classifier, the affinity net, the segmentation net ...), so one table serves them all.
Rule = tuple[Callable[[Any], bool], str]


def _num(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False) -> Callable[[Any], bool]:
    """A number within [lo, hi] (``lo_open``: above lo). NaN fails every comparison, so it fails."""

    def test(v: Any) -> bool:
        if lo is not None and not (v > lo if lo_open else v >= lo):
            return False
        return hi is None or v <= hi

    return test


def _each(test: Callable[[Any], bool], *, nonempty: bool = False) -> Callable[[Any], bool]:
    return lambda v: (len(v) > 0 or not nonempty) and all(test(x) for x in v)


def _range(lo_test: Callable[[Any], bool]) -> Callable[[Any], bool]:
    """A (low, high) pair, both passing ``lo_test``, low <= high."""
    return lambda v: lo_test(v[0]) and lo_test(v[1]) and v[0] <= v[1]


_POSITIVE = _num(0, lo_open=True)
_AT_LEAST_1 = _num(1)
_NON_NEGATIVE = _num(0)
_UNIT = _num(0, 1)

VALUE_RULES: dict[str, Rule] = {
    "seed": (_num(0, 2**32 - 1), "an integer in [0, 2**32)"),
    "stages": (_each(bool, nonempty=True), "a non-empty list of stage names"),
    "epochs": (_AT_LEAST_1, ">= 1"),
    "batch_size": (_AT_LEAST_1, ">= 1"),
    "lr": (_POSITIVE, "> 0"),
    "weight_decay": (_NON_NEGATIVE, ">= 0"),
    "momentum": (_UNIT, "in [0, 1]"),
    "head_lr_mult": (_POSITIVE, "> 0"),
    "num_workers": (_NON_NEGATIVE, ">= 0"),
    "log_every": (_AT_LEAST_1, ">= 1"),
    "warmup_steps": (_NON_NEGATIVE, ">= 0"),
    "warmup_ratio": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "crop_size": (_AT_LEAST_1, ">= 1"),
    "resize_long": (_range(_AT_LEAST_1), "[low, high] with 1 <= low <= high"),
    "scale": (_range(_POSITIVE), "[low, high] with 0 < low <= high"),
    "color_jitter": (
        lambda v: all(x >= 0 for x in v) and v[3] <= 0.5,
        "[brightness, contrast, saturation, hue], all >= 0 and hue <= 0.5",
    ),
    "cutout": (_each(_AT_LEAST_1), "[holes, side] with both >= 1"),
    "heat_scales": (_each(_POSITIVE, nonempty=True), "a non-empty list of numbers > 0"),
    "heat_stride": (_AT_LEAST_1, ">= 1"),
    "heat_keep": (_UNIT, "in [0, 1]"),
    "crop_scale": (lambda v: 0 < v[0] <= v[1] <= 1, "[low, high] with 0 < low <= high <= 1"),
    "color_jitter_p": (_UNIT, "in [0, 1]"),
    "holdout": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "validate_every": (_NON_NEGATIVE, ">= 0"),
    "validation_size": (_AT_LEAST_1, ">= 1 (or null)"),
    "scales": (_each(_POSITIVE, nonempty=True), "a non-empty list of numbers > 0"),
    "cam_scales": (_each(_POSITIVE, nonempty=True), "a non-empty list of numbers > 0"),
    "stride": (_AT_LEAST_1, ">= 1"),
    "batch_images": (_AT_LEAST_1, ">= 1"),
    "forward_images": (_NON_NEGATIVE, ">= 0"),
    "window": (_AT_LEAST_1, ">= 1 (or null)"),
    "window_stride": (_AT_LEAST_1, ">= 1"),
    "bg_threshold": (_UNIT, "in [0, 1]"),
    "fg_threshold": (_UNIT, "in [0, 1]"),
    "low_threshold": (_UNIT, "in [0, 1]"),
    "fixed_threshold": (_UNIT, "in [0, 1] (or null)"),
    "alpha_fg": (_POSITIVE, "> 0"),
    "alpha_bg": (_POSITIVE, "> 0"),
    "workers": (_AT_LEAST_1, ">= 1"),
    "radius": (_AT_LEAST_1, ">= 1"),
    "beta": (_POSITIVE, "> 0"),
    "logt": (_NON_NEGATIVE, ">= 0"),
    "cam_power": (_POSITIVE, "> 0"),
    "thresholds": (
        lambda v: 0 <= v[0] <= 1 and v[1] > v[0] and v[2] > 0,
        "[start, stop, step] with 0 <= start <= 1, stop > start and step > 0",
    ),
}


def _section_problems(obj: Any, path: str) -> list[tuple[str, Any, str]]:
    """Rules that tie two fields of one section together: (key, value, what it must be)."""
    out: list[tuple[str, Any, str]] = []
    if isinstance(obj, (CamConfig, PredictConfig)) and not (obj.splits and all(obj.splits)):
        out.append((f"{path}splits", obj.splits, "a non-empty list of split names"))  # labels.splits: null
    if isinstance(obj, LabelConfig) and obj.low_threshold > obj.fg_threshold:
        out.append((f"{path}low_threshold", obj.low_threshold, f"<= fg_threshold ({obj.fg_threshold})"))
    if isinstance(obj, RandomWalkConfig):
        if obj.bg_mode == "constant" and not _UNIT(obj.bg_value):
            out.append((f"{path}bg_value", obj.bg_value, "in [0, 1] with bg_mode: constant"))
        if obj.bg_mode == "power" and not _POSITIVE(obj.bg_value):
            out.append((f"{path}bg_value", obj.bg_value, "> 0 with bg_mode: power (the exponent)"))
    return out


def _bad_values(obj: Any, path: str) -> list[tuple[str, Any, str]]:
    found: list[tuple[str, Any, str]] = []
    for f in dataclasses.fields(obj):
        value, key = getattr(obj, f.name), f"{path}{f.name}"
        if dataclasses.is_dataclass(value):
            found += _bad_values(value, f"{key}.")
            continue
        rule = VALUE_RULES.get(f.name)
        if rule is None or value is None or isinstance(value, (dict, str, bool)):
            continue  # free-form *_args and names are the registries' to check
        test, must = rule
        try:
            ok = bool(test(value))
        except (TypeError, IndexError):
            ok = False
        if not ok:
            found.append((key, value, must))
    return found + _section_problems(obj, path)


def value_problems(obj: Any, path: str = "") -> list[str]:
    """Every value of the (type-checked) recipe section ``obj`` that no run can use, one message each,
    naming its dotted key and what it must be."""
    return [
        f"'{key}' must be {must}, got {value!r}; fix it in the recipe or with --set {key}=..."
        for key, value, must in _bad_values(obj, path)
    ]
