"""AMR's stage-2 objective (``jieqin-ai/AMR`` ``step/train_amr.py``) on an :class:`AMROutput`.

``L = w_S·MLSM(logits_S, y) + w_C·MLSM(logits_C, y) + λ·L_cps`` with w = (0.5, 0.5), λ = 0.05.
The spotlight logits arrive detached, so ``w_S·MLSM`` is reported but trains nothing; the cross
pseudo supervision ``L_cps`` (L1 between the branches' ReLU CAMs) trains the spotlight classifier
and the whole compensation branch.

CPS pairing (``cps_form``):

* ``per_image`` (clean default): image i's spotlight CAM against image i's compensation CAM, on the
  classes image i is tagged with; the mean |M_S − M_C| over those classes and positions, averaged
  over the images that have a class (images without one add nothing).
* ``authors_code``: the released code forms each branch's map as ``cam[0] + cam[1].flip(-1)`` (the
  inference-time [image, flipped image] fusion, kept in training), i.e. image 0 plus the mirrored
  image 1 of the batch, and takes the mean |M_S − M_C| over all classes; images 2… are unused.

``cps_norm``: ``none`` (default) compares the CAMs as they are, the scale λ = 0.05 was tuned for;
``max`` divides each (image, class) map by its maximum (+1e-5) first, the reference's optional
resolution (with it λ acts on values in [0, 1] and is comparatively much weaker).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from wsss.errors import ConfigError
from wsss.losses.objective import Objective, check_image_labels
from wsss.models.cam.amr import AMROutput, max_normalise
from wsss.registry import METHODS, suggest

CPS_FORMS = ("per_image", "authors_code")
CPS_NORMS = ("none", "max")


def cps_per_image(cam_s: Tensor, cam_c: Tensor, labels: Tensor, norm: str = "none") -> Tensor:
    """Per-image L1 of B×K×h×w ReLU CAMs on each image's present classes (``labels`` B×K)."""
    if norm == "max":
        cam_s, cam_c = max_normalise(cam_s), max_normalise(cam_c)
    diff = (cam_s - cam_c).abs().mean(dim=(2, 3))  # B×K
    present = (labels > 0.5).to(diff.dtype)
    count = present.sum(dim=1)
    per_image = (diff * present).sum(dim=1) / count.clamp_min(1)
    tagged = count > 0
    if not bool(tagged.any()):
        return diff.sum() * 0  # keeps the graph: a batch of untagged images contributes 0
    return per_image[tagged].mean()


def cps_authors_code(cam_s: Tensor, cam_c: Tensor) -> Tensor:
    """The released pairing: mean |(S₀ + flip(S₁)) − (C₀ + flip(C₁))| over every class and position."""
    if cam_s.shape[0] < 2:
        raise ConfigError(
            "AMR's authors_code CPS pairs images 0 and 1 of the batch and needs batch_size >= 2; "
            "use cps_form: per_image or a larger batch"
        )
    pair_s = cam_s[0] + cam_s[1].flip(-1)
    pair_c = cam_c[0] + cam_c[1].flip(-1)
    return (pair_s - pair_c).abs().mean()


class AMRObjective(Objective):
    """Returns ``{'loss', 'cls_s', 'cls_c', 'cps'}``."""

    needs_attention = False

    def __init__(
        self,
        cls_weights: Sequence[float] = (0.5, 0.5),
        cps_weight: float = 0.05,
        cps_form: str = "per_image",
        cps_norm: str = "none",
    ) -> None:
        super().__init__()
        for value, choices, key in ((cps_form, CPS_FORMS, "cps_form"), (cps_norm, CPS_NORMS, "cps_norm")):
            if value not in choices:
                raise ConfigError(
                    f"unknown amr {key} '{value}'{suggest(str(value), choices)}; available: {', '.join(choices)}"
                )
        if cps_form == "authors_code" and cps_norm != "none":
            raise ConfigError("amr: cps_form authors_code compares unnormalised CAMs; set cps_norm: none")
        weights = [float(w) for w in cls_weights]
        if len(weights) != 2:
            raise ConfigError(
                f"amr cls_weights must be two numbers (spotlight, compensation), got {cls_weights!r}"
            )
        self.cls_weights = tuple(weights)
        self.cps_weight = float(cps_weight)
        self.cps_form = cps_form
        self.cps_norm = cps_norm

    def class_probabilities(self, out: AMROutput) -> Tensor:
        """The mean of the two branches' probabilities (both classifiers are trained here; the
        CAMs fuse both branches)."""
        return 0.5 * (torch.sigmoid(out.logits_s[:, 1:]) + torch.sigmoid(out.logits_c[:, 1:]))

    def forward(self, out: AMROutput, labels: Tensor) -> dict[str, Tensor]:
        check_image_labels(labels, out.logits_c)
        y = labels.to(out.logits_c.dtype)
        cls_s = F.multilabel_soft_margin_loss(out.logits_s[:, 1:], y)
        cls_c = F.multilabel_soft_margin_loss(out.logits_c[:, 1:], y)
        cam_s, cam_c = F.relu(out.cam_s[:, 1:]), F.relu(out.cam_c[:, 1:])
        if self.cps_form == "authors_code":
            cps = cps_authors_code(cam_s, cam_c)
        else:
            cps = cps_per_image(cam_s, cam_c, labels, self.cps_norm)
        w_s, w_c = self.cls_weights
        loss = w_s * cls_s + w_c * cls_c + self.cps_weight * cps
        return {"loss": loss, "cls_s": cls_s, "cls_c": cls_c, "cps": cps}


@METHODS.register("amr")
def build_amr_objective(
    cls_weights: Sequence[float] = (0.5, 0.5),
    cps_weight: float = 0.05,
    cps_form: str | None = None,
    cps_norm: str = "none",
    compat: str = "clean",
) -> AMRObjective:
    """AMR's stage-2 loss. ``cps_form`` None follows the stage's ``compat`` (``authors_code``: the
    released batch-mixing pairing; ``clean``: per image), which ``train-cls`` passes in."""
    form = cps_form if cps_form is not None else ("authors_code" if compat == "authors_code" else "per_image")
    return AMRObjective(cls_weights, cps_weight, form, cps_norm)
