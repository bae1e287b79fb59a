"""Dataset-level confusion matrices: the one accumulator every mIoU in the toolkit comes from.

Rows are ground truth, columns are predictions. Pixels whose ground truth is ``ignore_index``
(255) are skipped. A *prediction* of 255 means "uncertain" in a pseudo-label; by default it is
scored as background (``pred_ignore_as=0``), which is ToCo's convention for scoring pseudo-labels
and what IRN's evaluation does as well, so an uncertain region costs recall instead of vanishing
from the score. ``pred_ignore_as=None`` instead leaves those pixels out entirely.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

from wsss.data.palette import IGNORE_INDEX


def as_label_tensor(x: torch.Tensor | np.ndarray, device: torch.device | None = None) -> torch.Tensor:
    """An integer label map (numpy or torch) as an int64 tensor; float or bool maps are refused."""
    t = torch.as_tensor(np.ascontiguousarray(x) if isinstance(x, np.ndarray) else x)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"label maps must hold integer class indices, got dtype {t.dtype}")
    return t.to(device=device, dtype=torch.long)


def confusion_matrix(
    pred: torch.Tensor | np.ndarray,
    gt: torch.Tensor | np.ndarray,
    num_classes: int,
    ignore_index: int = IGNORE_INDEX,
    *,
    pred_ignore_as: int | None = 0,
) -> torch.Tensor:
    """Count (gt, pred) pairs into a ``(C, C)`` int64 matrix, rows = ground truth.

    ``pred`` and ``gt`` are integer maps of the same shape (any number of dims). Ground-truth
    pixels equal to ``ignore_index`` are skipped; predicted ``ignore_index`` pixels count as class
    ``pred_ignore_as`` (background by default) or are skipped when it is ``None``. Any other value
    outside ``0..C-1`` is a ``ValueError``: silently dropping it would hide a class-count mismatch.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    gt_t = as_label_tensor(gt)
    pred_t = as_label_tensor(pred, device=gt_t.device)
    if pred_t.shape != gt_t.shape:
        raise ValueError(f"prediction shape {tuple(pred_t.shape)} != ground-truth shape {tuple(gt_t.shape)}")
    gt_t = gt_t.reshape(-1)
    pred_t = pred_t.reshape(-1)

    keep = gt_t != ignore_index
    pred_uncertain = pred_t == ignore_index
    if pred_ignore_as is None:
        keep &= ~pred_uncertain
    else:
        if not 0 <= pred_ignore_as < num_classes:
            raise ValueError(f"pred_ignore_as={pred_ignore_as} is not a class index in 0..{num_classes - 1}")
        pred_t = torch.where(pred_uncertain, pred_ignore_as, pred_t)
    gt_t = gt_t[keep]
    pred_t = pred_t[keep]

    for what, t in (("ground truth", gt_t), ("prediction", pred_t)):
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= num_classes):
            bad = torch.unique(t[(t < 0) | (t >= num_classes)])[:8].tolist()
            raise ValueError(
                f"{what} holds values {bad} outside 0..{num_classes - 1} (and not the ignore value "
                f"{ignore_index}); is num_classes={num_classes} right for this data?"
            )
    flat = gt_t * num_classes + pred_t
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def all_reduce_sum(t: torch.Tensor, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """Sum ``t`` in place over a ``torch.distributed`` group; a no-op without one.

    NCCL reduces only CUDA tensors, so a CPU counter is reduced on the current CUDA device and
    copied back; gloo reduces CPU tensors directly.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return t
    if dist.get_backend(group) == "nccl" and t.device.type == "cpu":
        work = t.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(work, op=dist.ReduceOp.SUM, group=group)
        t.copy_(work.cpu())
    else:
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
    return t


class ConfusionMatrix:
    """Accumulates a confusion matrix over many images (and, with ``all_reduce``, many processes)."""

    def __init__(
        self,
        num_classes: int,
        ignore_index: int = IGNORE_INDEX,
        *,
        pred_ignore_as: int | None = 0,
        device: torch.device | str | None = None,
    ) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.pred_ignore_as = pred_ignore_as
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self._matrix = torch.zeros(num_classes, num_classes, dtype=torch.long, device=self.device)
        self._reduced = False

    @property
    def matrix(self) -> torch.Tensor:
        """The ``(C, C)`` int64 counts so far (rows = ground truth, columns = prediction)."""
        return self._matrix

    def update(self, pred: torch.Tensor | np.ndarray, gt: torch.Tensor | np.ndarray) -> None:
        """Add one image (or a batch of images of equal size)."""
        if self._reduced:
            raise RuntimeError("update() after all_reduce(): call reset() before accumulating again")
        gt_t = as_label_tensor(gt, device=self.device)
        self._matrix += confusion_matrix(
            pred, gt_t, self.num_classes, self.ignore_index, pred_ignore_as=self.pred_ignore_as
        )

    def all_reduce(self, group: dist.ProcessGroup | None = None) -> torch.Tensor:
        """Sum the counts of every process in ``group`` (collective: every rank must call it once).

        Without an initialised process group this is a no-op, so single-process code needs no
        special case. A second call would multiply the counts by the world size, so it is refused.
        """
        if self._reduced:
            raise RuntimeError("all_reduce() was already called; counts are already global")
        all_reduce_sum(self._matrix, group)
        self._reduced = True
        return self._matrix

    def reset(self) -> None:
        """Zero the counts (and allow ``update`` again after an ``all_reduce``)."""
        self._matrix.zero_()
        self._reduced = False
