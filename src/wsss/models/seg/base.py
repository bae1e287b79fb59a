"""What every segmentation network shares: the output contract, backbone building and the init choice.

Output contract. ``model(x)`` returns raw logits ``B×C×h×w`` at the model's ``output_stride``,
*not* upsampled: the trainer resizes logits to the label size (the losses in
``wsss.losses.seg`` do it bilinearly) and the predictor to the image size, so one network serves
both without hidden interpolation. For an ``H×W`` input the grid is ``ceil(H/os)×ceil(W/os)``:
every backbone here pads its stride-2 layers that way and every head keeps the grid.
``model(x, with_aux=True)`` returns a :class:`SegOutput` that also carries the auxiliary
logits of models that have an auxiliary head (``aux_weight`` > 0), else ``aux=None``.

Attributes the training code reads: ``output_stride``; ``head_names`` (module-name prefixes of
the freshly initialised layers, for ``wsss.engine.optim.param_groups``: everything else sits
under ``backbone.``); ``aux_weight``; ``init_source`` (a one-line description of where the
weights came from, for logs and reports).

Initialisation is an explicit choice (ecosystem.md §2.6). ``init="imagenet"`` (default) builds
the backbone from ``pretrained`` (an ImageNet file, or None for random) and the head from
scratch. ``init=<path>`` loads a *full segmentation checkpoint* by key, e.g. a DeepLab
pretrained on COCO segmentation; this is not ImageNet-only initialisation and is logged as a
warning so that results can say so. Classifier tensors whose class count differs are left at
their fresh initialisation and reported; every other tensor must match.
"""

from __future__ import annotations

import inspect
import logging
from abc import ABCMeta, abstractmethod
from pathlib import Path
from typing import Any, NamedTuple

from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from wsss.errors import CheckpointError, ConfigError
from wsss.models.backbones.base import Backbone, FeatureInfo, loadable_keys
from wsss.models.weights import LoadReport, load_checkpoint_file, load_weights, strip_prefixes
from wsss.registry import BACKBONES

log = logging.getLogger(__name__)

IMAGENET = "imagenet"  # ``init`` value: backbone from ``pretrained``, head from scratch
_MODEL_KEYS = ("pretrained", "output_stride", "freeze_bn", "freeze_bn_affine")
_MODEL_KEYS_SPELLED = ("pretrained", "output_stride", "freeze_bn", "train_bn_affine")

# Keys of kazuto1011/deeplab-pytorch's converted Caffe DeepLab-v2 (the COCO "init.caffemodel").
# That network is a Caffe ResNet (stride on the 1×1 conv, BGR 0–255 input), not torchvision's.
_CAFFE_DEEPLAB_MARKERS = (".reduce.conv.weight", "layer1.conv1.conv.weight")


class SegOutput(NamedTuple):
    """Main logits and, for models with an auxiliary head, its logits (both at ``output_stride``)."""

    logits: Tensor
    aux: Tensor | None


class SegmentationModel(nn.Module, metaclass=ABCMeta):
    """A backbone under ``backbone.`` plus head layers; subclasses implement ``decode``.

    ``classifier_names``: prefixes of the layers whose shape depends on the class count (left at
    their fresh init when a checkpoint was trained for other classes). ``optional_names``:
    training-only layers a checkpoint may lack (auxiliary heads).
    """

    head_names: tuple[str, ...] = ()
    classifier_names: tuple[str, ...] = ()
    optional_names: tuple[str, ...] = ()

    def __init__(self, backbone: Backbone, num_classes: int, feature_level: str | None = None) -> None:
        super().__init__()
        self.num_classes = check_num_classes(num_classes, type(self).__name__)
        self.backbone = backbone
        self.feature_level = feature_level or backbone.feature_info[-1].name
        self.in_channels = level_of(backbone, self.feature_level, type(self).__name__).channels
        self.output_stride = backbone.level(self.feature_level).stride
        self.aux_weight = 0.0
        self.init_source = "not initialised by a builder"

    @abstractmethod
    def decode(self, feats: dict[str, Tensor]) -> Tensor:
        """Main logits from the backbone's feature levels."""

    def auxiliary(self, feats: dict[str, Tensor]) -> Tensor | None:
        """Auxiliary logits (None for models without an auxiliary head)."""
        return None

    def forward(self, x: Tensor, with_aux: bool = False) -> Tensor | SegOutput:
        """Logits ``B×C×ceil(H/os)×ceil(W/os)``; with ``with_aux`` a :class:`SegOutput`."""
        feats = self.backbone.forward_features(x)
        logits = self.decode(feats)
        if not with_aux:
            return logits
        return SegOutput(logits, self.auxiliary(feats))


def check_num_classes(num_classes: int, where: str) -> int:
    """``num_classes`` counts background, so a segmentation model needs at least 2."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ConfigError(f"{where}: num_classes counts background and must be >= 2, got {num_classes!r}")
    return num_classes


def check_bool(value: object, key: str, where: str) -> bool:
    """Reject truthy strings such as ``"false"`` that a YAML typo or CLI override can produce."""
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: {key} must be true or false, got {value!r}")
    return value


def level_of(backbone: Backbone, name: str, where: str) -> FeatureInfo:
    """``backbone.level(name)`` with a ConfigError that says which model asked."""
    try:
        return backbone.level(name)
    except KeyError as exc:
        raise ConfigError(f"{where} feature level: {exc.args[0]}") from exc


def set_bn_momentum(module: nn.Module, momentum: float) -> None:
    """Give every BatchNorm inside ``module`` the running-statistics momentum ``momentum``."""
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0.0 < momentum <= 1.0:
        raise ConfigError(f"bn_momentum must be a number in (0, 1], got {momentum!r}")
    for m in module.modules():
        if isinstance(m, _BatchNorm):
            m.momentum = momentum


def freeze_affine(*modules: nn.Module) -> None:
    """Stop training the scale/shift of every BatchNorm in ``modules`` (statistics still update)."""
    for module in modules:
        for m in module.modules():
            if isinstance(m, _BatchNorm):
                m.requires_grad_(False)


def backbone_bn_defaults(freeze_bn: object, train_bn_affine: object, where: str) -> dict[str, Any]:
    """The backbone keywords every segmentation builder sets: nothing frozen, BN as asked."""
    return {
        "frozen_stages": -1,
        "freeze_bn": check_bool(freeze_bn, "freeze_bn", where),
        "freeze_bn_affine": not check_bool(train_bn_affine, "train_bn_affine", where),
    }


def build_seg_backbone(
    name: str,
    *,
    where: str,
    pretrained: str | None,
    output_stride: int,
    defaults: dict[str, Any],
    backbone_args: dict[str, Any] | None,
) -> Backbone:
    """Build a registered CNN backbone for a segmentation model.

    ``defaults`` (the model's freezing rules, e.g. ``frozen_stages=-1, freeze_bn=False``) are
    passed only where the backbone builder accepts them; ``backbone_args`` overrides them and
    passes anything else the builder takes (e.g. ``width_divisor``). Keys the model sets itself
    (``pretrained``, ``output_stride``, ``freeze_bn`` and, via ``train_bn_affine``,
    ``freeze_bn_affine``) may not be repeated in ``backbone_args``.
    """
    extra = dict(backbone_args or {})
    for own in _MODEL_KEYS:
        if own in extra:
            raise ConfigError(
                f"{where}: '{own}' is set by the model's own keys ({', '.join(_MODEL_KEYS_SPELLED)}), "
                "not inside backbone_args"
            )
    accepted = inspect.signature(BACKBONES.get(name, where=f"{where} backbone")).parameters
    kwargs = {k: v for k, v in defaults.items() if k in accepted}
    kwargs.update(extra)
    net = BACKBONES.build(
        name, where=f"{where} backbone '{name}'", pretrained=pretrained, output_stride=output_stride, **kwargs
    )
    if not isinstance(net, Backbone):
        raise ConfigError(
            f"{where} needs a CNN backbone with named feature levels (resnet38, resnet50, resnet101, "
            f"mobilenet_v2); '{name}' is a {type(net).__name__}"
        )
    return net


def resolve_init(init: str, pretrained: str | None, where: str) -> tuple[Path | None, str | None]:
    """Check ``init`` before anything big is built; return (checkpoint path or None, backbone file).

    With a checkpoint the backbone's ImageNet file would be overwritten at once, so it is not
    read (logged).
    """
    if not isinstance(init, str) or not init:
        raise ConfigError(f"{where}: init must be '{IMAGENET}' or a checkpoint path, got {init!r}")
    if init == IMAGENET:
        return None, pretrained
    path = Path(init)
    if not path.is_file():
        raise CheckpointError(
            f"{where}: init checkpoint '{path}' does not exist or is not a file (init is '{IMAGENET}' "
            "for an ImageNet backbone, or the path of a full segmentation checkpoint)"
        )
    if pretrained is not None:
        log.warning(
            "%s: init=%s replaces every backbone weight, so pretrained=%s is not read",
            where,
            path,
            pretrained,
        )
    return path, None


def finish_init(model: SegmentationModel, checkpoint: Path | None, pretrained: str | None) -> None:
    """Load the full checkpoint when one was chosen and record/log ``model.init_source``."""
    if checkpoint is None:
        weights = pretrained if pretrained is not None else "none (random backbone)"
        model.init_source = f"{IMAGENET}: backbone weights {weights}; head from scratch"
        log.info("%s init: %s", type(model).__name__, model.init_source)
        return
    report = load_segmentation_checkpoint(model, checkpoint)
    model.init_source = f"full segmentation checkpoint {checkpoint} ({len(report.matched)} tensors)"
    log.warning(
        "%s init: %s. This is NOT ImageNet-only initialisation (e.g. a COCO-pretrained DeepLab); "
        "state it next to the results.",
        type(model).__name__,
        model.init_source,
    )


def _under(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def load_segmentation_checkpoint(model: SegmentationModel, path: str | Path) -> LoadReport:
    """Load a full segmentation checkpoint into ``model`` by key (``module.`` prefixes stripped).

    Every tensor outside ``classifier_names``/``optional_names`` must be present with its shape;
    classifier tensors of another class count are skipped (reported), auxiliary-head tensors may
    be absent. Raises :class:`CheckpointError` naming the file, leaving the model unchanged.
    """
    path = Path(path)
    state, _ = strip_prefixes(load_checkpoint_file(path))
    if any(k.endswith(_CAFFE_DEEPLAB_MARKERS) for k in state):
        raise CheckpointError(
            f"'{path}' looks like kazuto1011/deeplab-pytorch's converted Caffe DeepLab-v2 (keys like "
            "'layer1.conv1.conv.weight', '*.reduce.conv.weight'). That network is a Caffe-style ResNet "
            "(stride on the 1×1 conv, BGR 0–255 input) and cannot be loaded into this torchvision-layout "
            "model; converting it is not implemented. Use init='imagenet' or a checkpoint trained with wsss."
        )
    own = model.state_dict()
    tolerant = model.classifier_names + model.optional_names
    reinit = tuple(
        k
        for k, v in state.items()
        if _under(k, model.classifier_names) and k in own and tuple(v.shape) != tuple(own[k].shape)
    )
    required = [k for k in loadable_keys(model) if not _under(k, tolerant)]
    absent = [k for k in required if k not in state]
    wrong = [k for k in required if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if absent or wrong:
        detail = "; ".join(
            part
            for part in (
                f"{len(absent)} missing (e.g. {', '.join(absent[:3])})" if absent else "",
                f"{len(wrong)} of another shape (e.g. '{wrong[0]}': {list(state[wrong[0]].shape)} in the "
                f"file, {list(own[wrong[0]].shape)} in the model)"
                if wrong
                else "",
            )
            if part
        )
        raise CheckpointError(
            f"init checkpoint '{path}' does not fit {type(model).__name__}: {detail}. init expects a full "
            "segmentation checkpoint of this architecture; ImageNet backbone weights go to 'pretrained'."
        )
    report = load_weights(model, state, min_matched=len(required), skip=reinit, where=str(path))
    if reinit:
        log.warning(
            "%s: classifier tensors %s were trained for another class count and keep their fresh init",
            path,
            ", ".join(reinit),
        )
    return report
