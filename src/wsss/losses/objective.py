"""The classifier-training objective interface that ``train-cls`` calls once per batch.

``objective.step(net, images, labels, progress) → {'loss': …, …}`` owns the forward passes, so an
objective that needs several views of a batch (SEAM's image and its rescaled copy) runs them itself,
and the training stage stays one loop for every method. ``progress`` (:class:`TrainProgress`) says
which step of how many this is: a single-stage objective (UniA) makes its own pseudo labels with
no-grad passes inside ``step`` and switches loss terms on by iteration. Most objectives need a single forward: they
subclass :class:`Objective` and implement ``forward(out, labels)`` on the network's output;
``step`` then runs the network once (with attention when ``needs_attention``).

``class_probabilities(out)`` reads the per-class probabilities the objective trains out of the
same output, so train-cls can score held-out tags for any method without knowing its output type.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from wsss.engine.progress import TrainProgress
from wsss.errors import ConfigError


def check_image_labels(labels: Tensor, scores: Tensor) -> None:
    """Image labels (B, K) must fit scores (B, K+1, …) whose channel 0 is background."""
    want = (scores.shape[0], scores.shape[1] - 1)
    if tuple(labels.shape) != want:
        raise ConfigError(
            f"image labels of shape {tuple(labels.shape)} do not fit a model with {scores.shape[1]} "
            f"classes including background (expected {want}); check the model's num_classes"
        )


class Objective(nn.Module):
    """Base of the ``METHODS`` entries.

    ``needs_attention``: run the network with ``with_attention=True`` (TransCAM's attention maps).
    ``forwards_per_step``: how many forward passes ``step`` makes; above 1 the training loop
    builds DDP with a static graph, which allows parameters to be used more than once per backward.
    ``needs_masks``: see below.
    """

    needs_attention: bool = False
    forwards_per_step: int = 1
    # the batches carry ground-truth masks, passed to ``step`` as ``masks=`` (a single-stage method's
    # fully supervised reference run: the same network and schedule on the true labels)
    needs_masks: bool = False

    def step(
        self, net: nn.Module, images: Tensor, labels: Tensor, progress: TrainProgress | None = None
    ) -> dict[str, Tensor]:
        """The losses of one batch: one forward of ``net`` (which may be DDP-wrapped), then ``forward``.
        ``progress`` is unused by single-forward objectives."""
        return self(net(images, with_attention=self.needs_attention), labels)

    def class_probabilities(self, out: object) -> Tensor:
        """B×K foreground probabilities from one forward's output: σ of the pooled logits the
        loss scores (``out.logits`` without its background column); override for other outputs."""
        logits = getattr(out, "logits", None)
        if not isinstance(logits, Tensor):
            raise NotImplementedError(
                f"{type(self).__name__} does not say how to read class scores from a {type(out).__name__}; "
                "override class_probabilities"
            )
        return torch.sigmoid(logits[:, 1:])
