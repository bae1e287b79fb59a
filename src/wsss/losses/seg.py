"""Segmentation losses on pseudo-masks: cross-entropy and PMM's Pretended Under-Fitting (PUF).

Both take raw logits ``B×C×h×w`` at the model's output stride and labels ``B×H×W`` (0 =
background, 1..K, 255 = ignore). Logits are upsampled bilinearly (``align_corners=False``) to
the label size, so the loss is computed at full label resolution; the loss is computed in
float32 even under autocast. Each ``forward`` returns a dict: ``loss`` (to back-propagate) and
detached parts for logging.

``ce`` (:class:`CrossEntropySegLoss`): per-pixel cross-entropy, ignored pixels excluded.
``mean_over="valid"`` (default, torch's ``ignore_index`` mean) divides by the number of
labelled pixels; ``"all"`` divides by every pixel, as mmsegmentation 0.8 (PMM's code) does.

``puf`` (:class:`PretendedUnderFittingLoss`; seed_methods.md §3.7, "PUS" in PMM's code). With
ℓ_i the per-pixel cross-entropy (0 at ignored pixels) and m = mean ℓ (the gate), when
m < β every ℓ_i is replaced by

* ``clamp`` (the variant PMM uses): min(ℓ_i, k) — pixels with ℓ_i > k stop giving gradient;
* ``pow``: ℓ_i^k (ignored pixels stay 0);
* ``ignore``: ℓ_i · 1[ℓ_i ≤ k];

otherwise ℓ is kept (plain cross-entropy). The loss is the mean of the result. ``gate_over``
names the pixels both the gate and that final mean divide by: ``"all"`` (default; mmseg 0.8,
ignored pixels counted as zeros, the authors' numbers) or ``"valid"`` (labelled pixels only;
then PUF below the gate equals ``ce`` exactly). The gate is evaluated per call, i.e. per
mini-batch on each process (PMM: 2 images per GPU), without a host synchronisation. Once the
model fits the easy pixels (m < β) the pixels it still gets badly wrong — likely label noise —
are muted. PMM: β = k = 0.5 on VOC, 0.8 on COCO, applied to the main and auxiliary heads.

:func:`deep_supervision_loss` adds an auxiliary head's loss with its weight (PSPNet: 0.4).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from wsss.data.palette import IGNORE_INDEX
from wsss.errors import ConfigError, DataError
from wsss.registry import LOSSES, suggest

MEAN_OVER = ("valid", "all")
PUF_MODES = ("clamp", "pow", "ignore")
PUF_VOC = 0.5  # β = k on PASCAL VOC
PUF_COCO = 0.8  # β = k on MS COCO
POW_FLOOR = 1e-12  # ℓ^k has an infinite slope at 0; pow reads ℓ no smaller than this


def resize_logits(logits: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear (``align_corners=False``) resize of ``B×C×h×w`` logits to ``size``; a no-op when equal."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def check_seg_inputs(
    logits: Tensor, labels: Tensor, ignore_index: int = IGNORE_INDEX, check_labels: bool = True
) -> Tensor:
    """Raise :class:`DataError` for mismatched shapes or out-of-range labels; return labels as long."""
    if logits.dim() != 4 or labels.dim() != 3 or logits.shape[0] != labels.shape[0]:
        raise DataError(
            f"segmentation loss needs logits B×C×h×w and labels B×H×W with the same B; got logits "
            f"{tuple(logits.shape)} and labels {tuple(labels.shape)}"
        )
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise DataError(f"segmentation labels must be an integer tensor, got {labels.dtype}")
    labels = labels.long()
    if check_labels:
        num_classes = logits.shape[1]
        bad = (labels != ignore_index) & ((labels < 0) | (labels >= num_classes))
        if bool(bad.any()):
            values = torch.unique(labels[bad])[:8].tolist()
            raise DataError(
                f"segmentation labels hold values {values} outside 0..{num_classes - 1} and the ignore "
                f"value {ignore_index}; check num_classes and the label files"
            )
    return labels


def pixel_cross_entropy(
    logits: Tensor, labels: Tensor, ignore_index: int = IGNORE_INDEX, check_labels: bool = True
) -> tuple[Tensor, Tensor]:
    """Per-pixel cross-entropy ``B×H×W`` (0 at ignored pixels) and the boolean mask of labelled pixels.

    ``logits`` are upsampled to the label size. ``check_labels`` raises :class:`DataError` for
    label values outside 0..C-1 and ``ignore_index`` (costs one host synchronisation).
    """
    labels = check_seg_inputs(logits, labels, ignore_index, check_labels)
    valid = labels != ignore_index
    logits = resize_logits(logits.float(), tuple(labels.shape[-2:]))
    loss_map = F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="none")
    return loss_map, valid


def _check_choice(value: str, choices: tuple[str, ...], key: str) -> str:
    if value not in choices:
        raise ConfigError(
            f"unknown {key} '{value}'{suggest(str(value), choices)}; available: {', '.join(choices)}"
        )
    return value


def masked_mean(values: Tensor, valid: Tensor, over: str) -> Tensor:
    """Sum of ``values`` divided by the number of ``valid`` pixels (``over="valid"``, at least 1) or of all."""
    if over == "all":
        return values.sum() / max(values.numel(), 1)
    return values.sum() / valid.sum().clamp_min(1).to(values.dtype)


def puf_reduce(
    loss_map: Tensor,
    valid: Tensor,
    *,
    beta: float = PUF_VOC,
    k: float = PUF_VOC,
    mode: str = "clamp",
    gate_over: str = "all",
) -> dict[str, Tensor]:
    """PUF on a per-pixel loss map (0 at ignored pixels): ``{'loss', 'ce', 'gated', 'above_k'}``.

    ``ce`` is the ungated mean (the gate's value), ``gated`` 1.0 when the gate was below β,
    ``above_k`` the fraction of labelled pixels with ℓ > k; all three are detached.
    """
    _check_choice(mode, PUF_MODES, "PUF mode")
    _check_choice(gate_over, MEAN_OVER, "PUF gate_over")
    if loss_map.shape != valid.shape:
        raise ValueError(f"loss map {tuple(loss_map.shape)} and valid mask {tuple(valid.shape)} differ")
    mean = masked_mean(loss_map, valid, gate_over)
    if mode == "clamp":
        pretended = loss_map.clamp(max=k)
    elif mode == "pow":
        pretended = torch.where(valid, loss_map.clamp_min(POW_FLOOR).pow(k), torch.zeros_like(loss_map))
    else:
        pretended = loss_map * (loss_map <= k).to(loss_map.dtype)
    gate = mean.detach() < beta
    loss = masked_mean(torch.where(gate, pretended, loss_map), valid, gate_over)
    above = ((loss_map.detach() > k) & valid).sum() / valid.sum().clamp_min(1)
    return {"loss": loss, "ce": mean.detach(), "gated": gate.to(loss.dtype), "above_k": above.to(loss.dtype)}


class CrossEntropySegLoss(nn.Module):
    """Cross-entropy on upsampled logits with an ignore label (``LOSSES`` name ``ce``)."""

    def __init__(
        self, ignore_index: int = IGNORE_INDEX, mean_over: str = "valid", check_labels: bool = True
    ) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.mean_over = _check_choice(mean_over, MEAN_OVER, "cross-entropy mean_over")
        self.check_labels = check_labels

    def forward(self, logits: Tensor, labels: Tensor) -> dict[str, Tensor]:
        loss_map, valid = pixel_cross_entropy(logits, labels, self.ignore_index, self.check_labels)
        loss = masked_mean(loss_map, valid, self.mean_over)
        return {"loss": loss, "ce": loss.detach()}


class PretendedUnderFittingLoss(nn.Module):
    """PMM's PUF: cross-entropy whose hard pixels are muted once the mean loss is below β (``puf``)."""

    def __init__(
        self,
        beta: float = PUF_VOC,
        k: float = PUF_VOC,
        mode: str = "clamp",
        gate_over: str = "all",
        ignore_index: int = IGNORE_INDEX,
        check_labels: bool = True,
    ) -> None:
        super().__init__()
        for key, value in (("beta", beta), ("k", k)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ConfigError(f"PUF {key} must be a positive number, got {value!r}")
        self.beta = float(beta)
        self.k = float(k)
        self.mode = _check_choice(mode, PUF_MODES, "PUF mode")
        self.gate_over = _check_choice(gate_over, MEAN_OVER, "PUF gate_over")
        self.ignore_index = ignore_index
        self.check_labels = check_labels

    def forward(self, logits: Tensor, labels: Tensor) -> dict[str, Tensor]:
        loss_map, valid = pixel_cross_entropy(logits, labels, self.ignore_index, self.check_labels)
        return puf_reduce(loss_map, valid, beta=self.beta, k=self.k, mode=self.mode, gate_over=self.gate_over)


def deep_supervision_loss(
    loss_fn: Callable[[Tensor, Tensor], dict[str, Tensor]],
    logits: Tensor,
    labels: Tensor,
    aux_logits: Tensor | None = None,
    aux_weight: float = 0.0,
) -> dict[str, Tensor]:
    """``loss_fn`` on the main logits plus ``aux_weight`` × ``loss_fn`` on the auxiliary logits.

    Returns the main parts, the auxiliary parts prefixed ``aux_`` and ``loss`` = main + weight·aux.
    Without auxiliary logits (or with weight 0) it is ``loss_fn(logits, labels)``.
    """
    main = loss_fn(logits, labels)
    if aux_logits is None or aux_weight == 0:
        return main
    aux = loss_fn(aux_logits, labels)
    out = dict(main)
    out.update({f"aux_{key}": value.detach() for key, value in aux.items()})
    out["loss"] = main["loss"] + aux_weight * aux["loss"]
    return out


@LOSSES.register("ce")
def build_cross_entropy(
    ignore_index: int = IGNORE_INDEX, mean_over: str = "valid", check_labels: bool = True
) -> CrossEntropySegLoss:
    """Segmentation cross-entropy (ignore 255; mean over labelled pixels, or ``"all"`` as mmseg 0.8)."""
    return CrossEntropySegLoss(ignore_index, mean_over, check_labels)


@LOSSES.register("puf")
def build_puf(
    beta: float = PUF_VOC,
    k: float = PUF_VOC,
    mode: str = "clamp",
    gate_over: str = "all",
    ignore_index: int = IGNORE_INDEX,
    check_labels: bool = True,
) -> PretendedUnderFittingLoss:
    """PMM's Pretended Under-Fitting (VOC β = k = 0.5, COCO 0.8; ``mode`` clamp | pow | ignore)."""
    return PretendedUnderFittingLoss(beta, k, mode, gate_over, ignore_index, check_labels)
