"""The contract every CNN backbone follows, so CAM heads, affinity heads and segmentation heads
can sit on any of them.

A backbone is a plain ``nn.Module`` that lists its feature levels in ``feature_info`` (name,
channels, stride relative to the input) and returns them all from ``forward_features`` as a
dict. Heads pick the levels they need by name; ``output_stride`` and ``out_channels`` describe
the last level.
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from dataclasses import dataclass

from torch import Tensor, nn


@dataclass(frozen=True)
class FeatureInfo:
    """One feature level: its dict key, channel count and stride relative to the input."""

    name: str
    channels: int
    stride: int


class Backbone(nn.Module, metaclass=ABCMeta):
    """Base class: subclasses set ``feature_info`` and implement ``forward_features``."""

    feature_info: tuple[FeatureInfo, ...] = ()

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
