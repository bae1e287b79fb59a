"""UniA's single-stage objective (seed_methods.md §5.3–5.4): every step makes its own pseudo labels.

One ``step``:

1. no-grad multi-scale CAMs (and aux CAMs) of the batch from the network itself, min–max normalised;
2. P1 = dual threshold of the CAM; P2 = PAR-refined CAM with a high/low background pass;
   P3 = the CAM propagated by the network's own affinity, then PAR; the label fusion (MCR) → final;
3. one graded forward and the losses: MLSM on the logits and aux logits; PTC on the features with
   the aux CAM's dual-threshold labels; the contrastive affinity loss and the distribution loss with
   the aux labels, or the fused label from ``aux2final`` on; balanced CE of the segmentation head on
   P2 (or the fused label from ``seg2final`` on); optionally an energy regulariser.

Each term starts at its own iteration (``starts``): VOC turns segmentation and regulariser on after
2000, COCO staggers KL → PTC → affinity → segmentation. Terms not yet started are not computed.

``supervision: full`` replaces every pseudo label by the ground-truth mask: the same network and
schedule trained with full supervision, the reference the weak / full ratio divides by.

Released-code forms behind ``compat: authors_code`` (docs/fidelity.md): the affinity loss always
takes the aux labels (the VOC script computes the fused label and then overwrites it) and label maps
are resized bilinearly before building pairs (COCO); the clean defaults use the fused label after
``aux2final`` and nearest resizing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsss.data.transforms import unnormalize
from wsss.engine.distributed import unwrap
from wsss.engine.progress import TrainProgress
from wsss.errors import ConfigError
from wsss.losses.objective import Objective, check_image_labels
from wsss.losses.unia import (
    balanced_seg_loss,
    contrastive_affinity_loss,
    distribution_loss,
    downscale_labels,
    energy_loss,
    foreground_mask,
    pair_labels,
    patch_contrast_loss,
)
from wsss.models.cam.unia import UniAOutput
from wsss.refine.fusion import LABEL_FUSIONS
from wsss.refine.online_labels import (
    dual_threshold_labels,
    multiscale_cams,
    refine_with_affinity,
    refine_with_background,
)
from wsss.refine.par import PAR
from wsss.registry import METHODS, suggest

TERMS = ("ptc", "aff", "dis", "seg", "reg")
# VOC log values (seed_methods.md §5.4): w_ptc 0.3, w_aff 0.1, w_kl 0.1, w_seg 0.15, w_reg 0.05
VOC_WEIGHTS = {"ptc": 0.3, "aff": 0.1, "dis": 0.1, "seg": 0.15, "reg": 0.05}
VOC_STARTS = {"ptc": 0, "aff": 0, "dis": 0, "seg": 2000, "reg": 2000}
ENERGY_SCALE = 1e-7  # rloss's DenseEnergyLoss weight, multiplied by w_reg as in the released code


def _check_terms(values: Mapping[str, Any], what: str) -> dict[str, Any]:
    unknown = [k for k in values if k not in TERMS]
    if unknown:
        raise ConfigError(
            f"unia {what} has unknown term '{unknown[0]}'{suggest(unknown[0], TERMS)}; terms: {', '.join(TERMS)}"
        )
    return dict(values)


class UniAObjective(Objective):
    """UniA's losses around its own per-iteration pseudo labels; see the module docstring."""

    forwards_per_step = 1

    def __init__(
        self,
        *,
        weights: Mapping[str, float] | None = None,
        starts: Mapping[str, int] | None = None,
        high: float = 0.7,
        low: float = 0.25,
        cam_scales: Sequence[float] = (1.0, 0.5, 0.75, 1.5),
        fusion: str = "mcr",
        switch_iter: int = 6000,
        acdc_iter: int = 9000,
        aux2final: int | None = 8000,
        seg2final: int | None = None,
        affinity_norm: str = "none",
        affinity_radius: int = 7,
        tau: float = 0.5,
        par_dilations: Sequence[int] = (1, 2, 4, 8, 12, 24),
        par_iters: int = 10,
        down_scale: int = 2,
        supervision: str = "weak",
        compat: str = "clean",
    ) -> None:
        super().__init__()
        if supervision not in ("weak", "full"):
            raise ConfigError(f"unia supervision must be 'weak' or 'full', got {supervision!r}")
        # full: the fully supervised reference of the same network and schedule, every label the
        # ground-truth mask (the weak / full ratio's denominator)
        self.needs_masks = supervision == "full"
        self.weights = {**VOC_WEIGHTS, **_check_terms(weights or {}, "weights")}
        self.starts = {**VOC_STARTS, **_check_terms(starts or {}, "starts")}
        if not 0 <= low < high <= 1:
            raise ConfigError(f"unia thresholds need 0 <= low < high <= 1, got low {low}, high {high}")
        if fusion not in LABEL_FUSIONS:
            raise ConfigError(
                f"unknown unia fusion '{fusion}'{suggest(fusion, LABEL_FUSIONS)}; choices: {', '.join(LABEL_FUSIONS)}"
            )
        if compat not in ("clean", "authors_code"):
            raise ConfigError(f"unia compat must be clean or authors_code, got {compat!r}")
        self.high, self.low = float(high), float(low)
        self.cam_scales = tuple(float(s) for s in cam_scales)
        self.fusion = fusion
        self.fusion_args: dict[str, int] = {"switch_iter": int(switch_iter)}
        if fusion == "mcr_acdc":
            self.fusion_args["acdc_iter"] = int(acdc_iter)
        self.aux2final, self.seg2final = aux2final, seg2final
        self.affinity_norm, self.affinity_radius, self.tau = affinity_norm, int(affinity_radius), float(tau)
        self.down_scale = int(down_scale)
        self.compat = compat
        self.par = PAR(dilations=tuple(par_dilations), num_iter=int(par_iters))

    # -- pseudo labels ------------------------------------------------------------------------

    def pseudo_labels(
        self, model: nn.Module, images: Tensor, labels: Tensor, affinity: Tensor, iteration: int
    ) -> dict[str, Tensor]:
        """P1, P2, P3, the fused label and the aux P1, each B×H×W (255 = ignore), without gradients."""
        k = labels.shape[1]
        with torch.no_grad():

            def both(x: Tensor) -> Tensor:
                cam, aux = model.cam_maps(x)
                return torch.cat([cam, aux], dim=1)

            maps = multiscale_cams(both, images, self.cam_scales)
            cams, aux_cams = maps[:, :k], maps[:, k:]
            grid = affinity_grid(affinity, images, model)
            p1 = dual_threshold_labels(cams, labels, self.high, self.low)
            p2 = refine_with_background(
                self.par, images, cams, labels, self.high, self.low, down_scale=self.down_scale
            )
            p3 = refine_with_affinity(
                self.par,
                images,
                cams,
                affinity.detach(),
                labels,
                self.high,
                self.low,
                grid=grid,
                norm=self.affinity_norm,
                radius=None if self.affinity_norm == "none" else self.affinity_radius,
                down_scale=self.down_scale,
            )
            final = LABEL_FUSIONS[self.fusion](p1, p2, p3, iteration, **self.fusion_args)
            aux_p1 = dual_threshold_labels(aux_cams, labels, self.high, self.low)
        return {"p1": p1, "p2": p2, "p3": p3, "final": final, "aux": aux_p1}

    # -- the step -----------------------------------------------------------------------------

    def step(
        self,
        net: nn.Module,
        images: Tensor,
        labels: Tensor,
        progress: TrainProgress | None = None,
        masks: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Pseudo labels from no-grad passes (or, under ``supervision: full``, the ground-truth
        ``masks`` in their place), one graded forward of ``net``, the losses."""
        it = 0 if progress is None else progress.step
        model = unwrap(net)
        out: UniAOutput = net(images)
        check_image_labels(labels, out.logits)
        if self.needs_masks:
            if masks is None:
                raise ConfigError("unia supervision 'full' needs the batches' masks (train-cls passes them)")
            pl = dict.fromkeys(("p1", "p2", "p3", "final", "aux"), masks.long())
        else:
            pl = self.pseudo_labels(model, images, labels, out.affinity, it)
        return self.losses(out, images, labels, pl, it)

    def active(self, term: str, iteration: int) -> bool:
        return self.weights[term] > 0 and iteration >= self.starts[term]

    def losses(
        self, out: UniAOutput, images: Tensor, labels: Tensor, pl: Mapping[str, Tensor], iteration: int
    ) -> dict[str, Tensor]:
        """Every started term (weighted into ``loss``) from one output and this step's labels."""
        y = labels.to(out.logits.dtype)
        terms: dict[str, Tensor] = {
            "cls": F.multilabel_soft_margin_loss(out.logits[:, 1:], y),
            "aux_cls": F.multilabel_soft_margin_loss(out.aux_logits[:, 1:], y),
        }
        grid = tuple(out.features.shape[-2:])
        mode = "bilinear_compat" if self.compat == "authors_code" else "nearest"
        switched = self.aux2final is not None and iteration >= self.aux2final
        late = pl["final"] if switched else pl["aux"]
        if self.active("ptc", iteration):
            small = downscale_labels(pl["aux"], grid, mode="nearest")
            terms["ptc"] = patch_contrast_loss(out.features, pair_labels(small, diagonal="ignore"))
        if self.active("aff", iteration):
            source = pl["aux"] if self.compat == "authors_code" else late
            small = downscale_labels(source, grid, mode=mode)
            pairs = pair_labels(small, radius=self.affinity_radius, diagonal="positive")
            terms["aff"] = contrastive_affinity_loss(out.affinity, pairs, tau=self.tau)
        if self.active("dis", iteration):
            terms["dis"] = distribution_loss(foreground_mask(late), out.sampled_mean)
        seg_up = None
        if self.active("seg", iteration) or self.active("reg", iteration):
            seg_up = F.interpolate(out.seg, size=images.shape[-2:], mode="bilinear", align_corners=False)
        if self.active("seg", iteration):
            use_final = self.seg2final is not None and iteration >= self.seg2final
            terms["seg"] = balanced_seg_loss(seg_up, pl["final"] if use_final else pl["p2"])
        if self.active("reg", iteration):
            terms["reg"] = ENERGY_SCALE * energy_loss(
                seg_up.softmax(1), unnormalize(images) * 255, torch.ones_like(seg_up[:, 0])
            )
        loss = terms["cls"] + terms["aux_cls"]
        for name in TERMS:
            if name in terms:
                loss = loss + self.weights[name] * terms[name]
        return {"loss": loss, **terms}


def affinity_grid(affinity: Tensor, images: Tensor, model: nn.Module) -> tuple[int, int]:
    """The patch grid of an N×N affinity for these images (the encoder's patch size)."""
    patch = model.encoder.patch_size
    grid = (images.shape[-2] // patch, images.shape[-1] // patch)
    if grid[0] * grid[1] != affinity.shape[-1]:
        raise ConfigError(
            f"affinity of {affinity.shape[-1]} tokens does not fit a {grid[0]}×{grid[1]} patch grid of "
            f"{tuple(images.shape[-2:])} images; crop sizes must be multiples of the patch size {patch}"
        )
    return grid


METHODS.register("unia")(UniAObjective)
