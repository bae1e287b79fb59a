"""SPU's uncertainty-rectified segmentation loss (seed_methods.md §2.6, §2.9.1; ``LOSSES`` name
``uncertainty_rectified``).

Two heads of one network see the same pixels: z₁ (the auxiliary head) and z₂ (the main head),
``B×C×h×w`` each, resized bilinearly to the label size ``B×H×W`` (0 = background, 1..K, 255 =
ignore) like the other segmentation losses and computed in float32. With p₁ = softmax z₁,
p₂ = softmax z₂:

* label-smoothed target q = 1−ε on the label, ε/(C−1) elsewhere (ε = 0.4);
* ℓ(p) = −Σ_c q_c(p) log p₂,c(p) (only the main head is supervised by the labels);
* balanced weights w(p) = 1/(2·N_bg) on background pixels (label 0) and 1/(2·N_fg) on foreground
  pixels (label ∉ {0, 255}), pooled over the batch; when one group is empty the other gets all
  the mass, when both are empty every weight is 0. Σ_p w(p) = 1, and L_pcl = Σ_p w(p)·ℓ(p) is
  ½[mean_bg ℓ + mean_fg ℓ];
* uncertainties D₁(p) = KL(p₂ ‖ p₁) (the released code's ``kl_div(log_softmax(z₁), softmax(z₂))``
  summed over channels) and D₂(p) = KL(p₁ ‖ p₂).

``form="pixelwise"`` (default; the paper's "confidence matrix") weighs every pixel by its own
confidence e^{−D(p)}:

    L = a·[Σ_p w(p)·ℓ(p)·e^{−D₁(p)} + M(D₁)] + b·[Σ_p w(p)·ℓ(p)·e^{−D₂(p)} + M(D₂)]

``form="scalar"`` is the released code (``step/train_uns.py``), where L_pcl is reduced first so
e^{−D} only rescales the whole loss:

    L = a·[L_pcl·M(e^{−D₁}) + M(D₁)] + b·[L_pcl·M(e^{−D₂}) + M(D₂)]

(a, b) = ``direction_weights`` = (1, 0.5). M is the mean over ``mean_over`` pixels: ``"valid"``
(labelled pixels) or ``"all"`` (every pixel, ignored ones included, as the released code does);
by default ``"valid"`` for the pixelwise form and ``"all"`` for the scalar one. Nothing is
detached, so both heads are pulled towards each other; a pixel where the heads disagree keeps a
smaller share of its cross-entropy and pays the disagreement D instead. ``form`` left at None
follows the stage's ``compat`` (``authors_code``: scalar; ``clean``: pixelwise), which
``train-seg`` passes to every ``LOSSES`` builder that takes a ``compat`` keyword.

Deviations from the released code: the logits are upsampled to the labels instead of the labels
being downsampled (nearest) to the logit grid, and an empty background or foreground group
gives its half to the other group instead of a NaN.

The loss needs both heads: it has ``needs_aux_head = True`` and is called as
``loss(main_logits, labels, aux_logits)``; ``train-seg`` does so with ``model(x, with_aux=True)``
and refuses a model without an auxiliary head (e.g. use ``pspnet`` with ``aux_weight`` > 0; the
model's ``aux_weight`` only switches the head on, the loss uses its own ``direction_weights``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from wsss.data.palette import IGNORE_INDEX
from wsss.errors import ConfigError, DataError
from wsss.losses.seg import MEAN_OVER, _check_choice, check_seg_inputs, resize_logits
from wsss.registry import LOSSES

FORMS = ("pixelwise", "scalar")
COMPATS = ("clean", "authors_code")
SPU_EPS = 0.4  # label smoothing of the released code
SPU_DIRECTION_WEIGHTS = (1.0, 0.5)  # KL(p₂‖p₁) term : KL(p₁‖p₂) term


def smoothed_cross_entropy(log_probs: Tensor, labels: Tensor, valid: Tensor, eps: float) -> Tensor:
    """ℓ = −Σ_c q_c log p_c with q = 1−ε on the label and ε/(C−1) elsewhere; 0 at invalid pixels."""
    num_classes = log_probs.shape[1]
    off = eps / (num_classes - 1)
    target = torch.where(valid, labels, torch.zeros_like(labels)).unsqueeze(1)
    on_label = log_probs.gather(1, target).squeeze(1)
    loss = -((1.0 - eps - off) * on_label + off * log_probs.sum(1))
    return torch.where(valid, loss, torch.zeros_like(loss))


def balanced_weights(labels: Tensor, valid: Tensor) -> Tensor:
    """w = 1/(2·N_bg) on background, 1/(2·N_fg) on foreground, 0 at ignored pixels (see module doc).

    An empty group hands its half to the other; computed without a host synchronisation.
    """
    bg = valid & (labels == 0)
    fg = valid & (labels != 0)
    n_bg = bg.sum().float()
    n_fg = fg.sum().float()
    half_bg = torch.where(n_fg > 0, 0.5, 1.0) / n_bg.clamp_min(1)
    half_fg = torch.where(n_bg > 0, 0.5, 1.0) / n_fg.clamp_min(1)
    return bg.float() * half_bg + fg.float() * half_fg


def pixel_kl(log_p: Tensor, log_q: Tensor) -> Tensor:
    """KL(p ‖ q) per pixel, ``B×H×W``, from log-probabilities ``B×C×H×W``; differentiable in both."""
    return (log_p.exp() * (log_p - log_q)).sum(1)


class UncertaintyRectifiedLoss(nn.Module):
    """SPU's uncertainty-rectified loss on a main and an auxiliary head (``uncertainty_rectified``)."""

    needs_aux_head = True

    def __init__(
        self,
        eps: float = SPU_EPS,
        direction_weights: Sequence[float] = SPU_DIRECTION_WEIGHTS,
        form: str = "pixelwise",
        mean_over: str | None = None,
        ignore_index: int = IGNORE_INDEX,
        check_labels: bool = True,
    ) -> None:
        super().__init__()
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0.0 <= eps < 1.0:
            raise ConfigError(f"uncertainty_rectified eps must be a number in [0, 1), got {eps!r}")
        if isinstance(direction_weights, (str, bytes)) or len(direction_weights) != 2:
            raise ConfigError(
                "uncertainty_rectified direction_weights must be two numbers (the KL(main‖aux) term, "
                f"the KL(aux‖main) term; SPU: 1, 0.5), got {direction_weights!r}"
            )
        for w in direction_weights:
            if isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0:
                raise ConfigError(
                    f"uncertainty_rectified direction_weights must be numbers >= 0, got {direction_weights!r}"
                )
        self.eps = float(eps)
        self.direction_weights = (float(direction_weights[0]), float(direction_weights[1]))
        self.form = _check_choice(form, FORMS, "uncertainty_rectified form")
        default_over = "all" if form == "scalar" else "valid"
        self.mean_over = _check_choice(
            default_over if mean_over is None else mean_over, MEAN_OVER, "uncertainty_rectified mean_over"
        )
        self.ignore_index = ignore_index
        self.check_labels = check_labels

    def _mean(self, values: Tensor, valid: Tensor) -> Tensor:
        if self.mean_over == "all":
            return values.mean()
        return torch.where(valid, values, torch.zeros_like(values)).sum() / valid.sum().clamp_min(1)

    def forward(self, logits: Tensor, labels: Tensor, aux_logits: Tensor | None = None) -> dict[str, Tensor]:
        """``logits``: the main head z₂; ``aux_logits``: the auxiliary head z₁ (required)."""
        if aux_logits is None:
            raise ConfigError(
                "the uncertainty_rectified loss needs the auxiliary head's logits: use a model with an "
                "auxiliary head (e.g. pspnet with aux_weight > 0) and call loss(logits, labels, aux_logits)"
            )
        labels = check_seg_inputs(logits, labels, self.ignore_index, self.check_labels)
        if aux_logits.dim() != 4 or aux_logits.shape[:2] != logits.shape[:2]:
            raise DataError(
                f"uncertainty_rectified: auxiliary logits {tuple(aux_logits.shape)} do not match the main "
                f"logits {tuple(logits.shape)} in batch and class count"
            )
        if logits.shape[1] < 2:
            raise DataError(f"uncertainty_rectified needs at least 2 classes, got {logits.shape[1]}")
        size = tuple(labels.shape[-2:])
        log_main = F.log_softmax(resize_logits(logits.float(), size), dim=1)
        log_aux = F.log_softmax(resize_logits(aux_logits.float(), size), dim=1)
        valid = labels != self.ignore_index

        ce = smoothed_cross_entropy(log_main, labels, valid, self.eps)
        weights = balanced_weights(labels, valid)
        pcl = (weights * ce).sum()
        d_main = pixel_kl(log_main, log_aux)  # D₁ = KL(p₂ ‖ p₁)
        d_aux = pixel_kl(log_aux, log_main)  # D₂ = KL(p₁ ‖ p₂)
        conf_main, conf_aux = torch.exp(-d_main), torch.exp(-d_aux)
        if self.form == "pixelwise":
            term_main = (weights * ce * conf_main).sum() + self._mean(d_main, valid)
            term_aux = (weights * ce * conf_aux).sum() + self._mean(d_aux, valid)
        else:
            term_main = pcl * self._mean(conf_main, valid) + self._mean(d_main, valid)
            term_aux = pcl * self._mean(conf_aux, valid) + self._mean(d_aux, valid)
        a, b = self.direction_weights
        loss = a * term_main + b * term_aux
        return {
            "loss": loss,
            "pcl": pcl.detach(),
            "kl_main": self._mean(d_main, valid).detach(),
            "kl_aux": self._mean(d_aux, valid).detach(),
            "confidence": self._mean(conf_main, valid).detach(),
        }


@LOSSES.register("uncertainty_rectified")
def build_uncertainty_rectified(
    eps: float = SPU_EPS,
    direction_weights: Sequence[float] = SPU_DIRECTION_WEIGHTS,
    form: str | None = None,
    mean_over: str | None = None,
    ignore_index: int = IGNORE_INDEX,
    check_labels: bool = True,
    compat: str = "clean",
) -> UncertaintyRectifiedLoss:
    """SPU's uncertainty-rectified loss (needs a model with an auxiliary head, e.g. pspnet).

    ``form`` pixelwise | scalar; None follows ``compat`` (``authors_code``: scalar, the released
    code; ``clean``: pixelwise, the paper's per-pixel confidence), which ``train-seg`` passes in.
    ``mean_over`` valid | all for the KL and confidence means (None: valid for pixelwise, all for scalar).
    """
    _check_choice(compat, COMPATS, "uncertainty_rectified compat")
    chosen = form if form is not None else ("scalar" if compat == "authors_code" else "pixelwise")
    return UncertaintyRectifiedLoss(eps, direction_weights, chosen, mean_over, ignore_index, check_labels)
