"""The contract every CNN backbone follows, so CAM heads, affinity heads and segmentation heads
can sit on any of them.

A backbone is a plain ``nn.Module`` that lists its feature levels in ``feature_info`` (name,
channels, stride relative to the input) and returns them all from ``forward_features`` as a
dict. Heads pick the levels they need by name; ``output_stride`` and ``out_channels`` describe
the last level.

A backbone may also carry *inserted modules* (``BACKBONE_INSERTS`` entries such as AMR's AMM) after
each block or each stage, so attention plug-ins extend the backbone instead of forking it. They are
listed in ``insert_names``; ImageNet files do not hold them (reported as new layers), and they keep
their own train/eval mode whatever the freezing rules say (see ``FreezableBackbone``).
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torchvision.models import WeightsEnum

from wsss.errors import CheckpointError, ConfigError
from wsss.models.weights import LoadReport, load_checkpoint_file, load_weights, strip_prefixes

TORCHVISION = "torchvision"  # ``pretrained`` value that downloads torchvision's ImageNet weights
# Where a backbone inserts a BACKBONE_INSERTS module: after every residual block (before the
# residual add, AMR's released code) or after every stage (the AMR paper's figure).
INSERT_POSITIONS = ("block", "stage")


@dataclass(frozen=True)
class FeatureInfo:
    """One feature level: its dict key, channel count and stride relative to the input."""

    name: str
    channels: int
    stride: int


class Backbone(nn.Module, metaclass=ABCMeta):
    """Base class: subclasses set ``feature_info`` and implement ``forward_features``."""

    feature_info: tuple[FeatureInfo, ...] = ()
    insert_names: tuple[str, ...] = ()  # submodule names of the inserted modules

    @abstractmethod
    def forward_features(self, x: Tensor) -> dict[str, Tensor]:
        """Every level of ``feature_info``, keyed by name."""

    def forward(self, x: Tensor) -> Tensor:
        """The last feature level."""
        return self.forward_features(x)[self.feature_info[-1].name]

    @property
    def out_channels(self) -> int:
        return self.feature_info[-1].channels

    @property
    def output_stride(self) -> int:
        return self.feature_info[-1].stride

    def level(self, name: str) -> FeatureInfo:
        for info in self.feature_info:
            if info.name == name:
                return info
        raise KeyError(
            f"{type(self).__name__} has no feature level '{name}'; levels: "
            f"{', '.join(i.name for i in self.feature_info)}"
        )


class FreezableBackbone(Backbone):
    """A backbone whose leading stages can be frozen and whose BatchNorms can be fixed.

    Subclasses list their stages in ``stage_modules`` (submodule names, stem first) and call
    ``configure_freezing`` at the end of ``__init__``. ``train()`` keeps frozen stages (and,
    with ``freeze_bn``, every BatchNorm) in eval mode; unlike IRN's override it still calls
    ``nn.Module.train`` so ``model.eval()`` really switches everything else to eval.

    Inserted modules are new layers without ImageNet statistics, so ``freeze_bn`` and
    ``freeze_bn_affine`` leave their BatchNorms alone and they follow the model's mode even inside
    a frozen stage: there they get no gradient but normalise with batch statistics in training,
    as the AMMs behind AMR's detached ``layer1`` do.
    """

    stage_modules: tuple[tuple[str, ...], ...] = ()
    frozen_stages: int = -1
    freeze_bn: bool = False
    freeze_bn_affine: bool = False

    def configure_freezing(self, frozen_stages: int, freeze_bn: bool, freeze_bn_affine: bool) -> None:
        """Set ``requires_grad=False`` on what is frozen and apply the eval-mode rules."""
        last = len(self.stage_modules) - 1
        if (
            isinstance(frozen_stages, bool)
            or not isinstance(frozen_stages, int)
            or not -1 <= frozen_stages <= last
        ):
            raise ConfigError(
                f"{type(self).__name__}: frozen_stages must be an integer from -1 (nothing frozen) to "
                f"{last} (every stage), got {frozen_stages!r}"
            )
        self.frozen_stages = frozen_stages
        self.freeze_bn = bool(freeze_bn)
        self.freeze_bn_affine = bool(freeze_bn_affine)
        for name in self.frozen_module_names():
            self.get_submodule(name).requires_grad_(False)
        if self.freeze_bn_affine:
            for module in self.backbone_norms():
                module.requires_grad_(False)
        self.train(self.training)

    def freeze_all(self) -> None:
        """Freeze every stage (a branch that only supplies features, e.g. AMR's spotlight)."""
        self.configure_freezing(len(self.stage_modules) - 1, self.freeze_bn, self.freeze_bn_affine)

    def backbone_norms(self) -> Iterator[_BatchNorm]:
        """The backbone's own BatchNorms (those of inserted modules excluded)."""
        inserted = {id(m) for name in self.insert_names for m in self.get_submodule(name).modules()}
        return (m for m in self.modules() if isinstance(m, _BatchNorm) and id(m) not in inserted)

    def frozen_module_names(self) -> tuple[str, ...]:
        """Submodule names of the frozen stages, stem first."""
        return tuple(name for stage in self.stage_modules[: self.frozen_stages + 1] for name in stage)

    def train(self, mode: bool = True) -> FreezableBackbone:
        super().train(mode)
        if mode:
            for name in self.frozen_module_names():
                self.get_submodule(name).eval()
            if self.freeze_bn:
                for module in self.backbone_norms():
                    module.eval()
        for name in self.insert_names:
            self.get_submodule(name).train(mode)
        return self


def check_insert_options(
    owner: str,
    insert: str | None,
    insert_args: Mapping[str, Any] | None,
    insert_at: str,
    positions: tuple[str, ...] = INSERT_POSITIONS,
    insert_levels: Sequence[str] | None = None,
) -> None:
    """ConfigError naming the key when the insert options do not make sense for ``owner``."""
    if insert is None:
        if insert_levels is not None:
            raise ConfigError(f"{owner}: insert_levels is given but insert is not; name the module to insert")
        if insert_args:
            raise ConfigError(
                f"{owner}: insert_args is given but insert is not; name the module to insert (e.g. insert: amm)"
            )
        return
    if insert_at not in positions:
        raise ConfigError(
            f"{owner}: insert_at must be one of {', '.join(positions)}, got {insert_at!r}"
            + ("" if positions == INSERT_POSITIONS else " (this backbone has no per-block insertion point)")
        )
    if insert_args and "channels" in insert_args:
        raise ConfigError(
            f"{owner}: insert_args may not set 'channels'; the backbone passes each insertion point's channel count"
        )


def insert_levels_of(
    owner: str, feature_info: tuple[FeatureInfo, ...], insert_at: str, insert_levels: Sequence[str] | None
) -> list[str]:
    """The feature levels that get a between-stage insert: all by default, else the named ones (SPU:
    after stages 1-3, not the last); ConfigError for an unknown level or per-block inserts."""
    names = [info.name for info in feature_info]
    if insert_levels is None:
        return names
    if insert_at != "stage":
        raise ConfigError(f"{owner}: insert_levels chooses stages; set insert_at: stage (got {insert_at!r})")
    unknown = [n for n in insert_levels if n not in names]
    if unknown or not insert_levels:
        raise ConfigError(
            f"{owner}: insert_levels {list(insert_levels)} must name some of its levels: {', '.join(names)}"
        )
    return [n for n in names if n in insert_levels]


def build_insert(name: str, insert_args: Mapping[str, Any] | None, channels: int, owner: str) -> nn.Module:
    """One ``BACKBONE_INSERTS`` module for a ``channels``-channel feature map."""
    from wsss.registry import BACKBONE_INSERTS

    module = BACKBONE_INSERTS.build(
        name, where=f"{owner} insert '{name}' (insert_args)", channels=channels, **dict(insert_args or {})
    )
    if not isinstance(module, nn.Module):
        raise ConfigError(f"backbone insert '{name}' built a {type(module).__name__}, not an nn.Module")
    return module


def build_cnn_backbone(
    backbone: str, owner: str, given: dict[str, Any], backbone_args: dict[str, Any] | None
) -> Backbone:
    """The registered ``backbone`` for a CAM network (``owner`` names it in errors).

    ``given`` holds the options the network's builder takes directly (None = the backbone's own
    default); ``backbone_args`` any other backbone keyword. An option given both ways is an error.
    """
    from wsss.registry import BACKBONES

    kwargs = dict(backbone_args or {})
    for key, value in given.items():
        if value is None:
            continue
        if key in kwargs:
            raise ConfigError(f"{owner}: '{key}' is given both directly and in backbone_args; keep one")
        kwargs[key] = value
    net = BACKBONES.build(backbone, where=f"backbone '{backbone}'", **kwargs)
    if not isinstance(net, Backbone):
        raise ConfigError(
            f"{owner} needs a CNN backbone with named feature levels (the Backbone contract: resnet38, "
            f"resnet50, resnet101, mobilenet_v2 …); '{backbone}' is a {type(net).__name__}"
        )
    return net


def loadable_keys(model: nn.Module) -> list[str]:
    """State keys a weight file is expected to provide (BN ``num_batches_tracked`` counters excepted:
    old torchvision and converted files do not carry them)."""
    return [k for k in model.state_dict() if not k.endswith("num_batches_tracked")]


def load_backbone_weights(
    model: nn.Module,
    source: str,
    *,
    skip: tuple[str, ...] = (),
    torchvision_weights: WeightsEnum | None = None,
    state: Mapping[str, Tensor] | None = None,
) -> LoadReport:
    """Load ImageNet weights into a backbone by key; every loadable backbone tensor must match.

    ``source`` is a local file (``.pth``/``.pt``/``.safetensors``, bare or ``{'model': …}``,
    ``module.`` prefixes stripped) or ``"torchvision"``, which downloads ``torchvision_weights``
    through torchvision (needs internet; the only path that does). ``state`` (already read)
    overrides reading ``source``. ``skip`` lists key prefixes of heads to leave out (reported).
    Tensors of inserted modules (``insert_names``) are not in ImageNet files: they are reported as
    new layers and not required.
    """
    stripped = 0
    if state is None:
        if source == TORCHVISION:
            if torchvision_weights is None:
                raise ConfigError(
                    f"{type(model).__name__} has no torchvision weights; give a weight file path"
                )
            try:
                state = torchvision_weights.get_state_dict(progress=True)
            except Exception as exc:
                raise CheckpointError(
                    f"cannot download torchvision weights {torchvision_weights} ({type(exc).__name__}: {exc}); "
                    "download the file elsewhere and pass its local path as pretrained"
                ) from exc
        else:
            state, stripped = strip_prefixes(load_checkpoint_file(source))
    inserted = tuple(getattr(model, "insert_names", ()))
    required = [k for k in loadable_keys(model) if not any(k.startswith(n + ".") for n in inserted)]
    report = load_weights(
        model, state, min_matched=len(required), skip=skip, where=source, new_layers=inserted
    )
    report.stripped = stripped
    return report
