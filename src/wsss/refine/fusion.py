"""MCR, UniA's mutual complementing refinement (``dr``): one label map fused from P1, P2 and P3.

P3 (affinity + PAR) is the base. P2 (PAR only) fills in foreground where P3 has none. Once
training is past ``switch_iter``, a pixel on which the CAM label P1 and P2 agree on a foreground
class takes that class, even over a different P3 class. A P2 ignore never overrides a P3
background. Labels: 0 background, 1..K foreground, ``ignore_index`` uncertain.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from wsss.errors import DataError


def _foreground(label: Tensor, ignore_index: int) -> Tensor:
    return (label > 0) & (label != ignore_index)


def _check_same_shape(p1: Tensor, p2: Tensor, p3: Tensor) -> None:
    if not p1.shape == p2.shape == p3.shape:
        raise DataError(
            f"MCR needs labels of one shape, got {tuple(p1.shape)}, {tuple(p2.shape)}, {tuple(p3.shape)}"
        )


def mcr_fuse(
    p1: Tensor, p2: Tensor, p3: Tensor, iteration: int, *, switch_iter: int = 6000, ignore_index: int = 255
) -> Tensor:
    """The fused label: P3, completed by P2's foreground, and by P1 = P2 agreement after ``switch_iter``."""
    _check_same_shape(p1, p2, p3)
    fused = p3.clone()
    fill = _foreground(p2, ignore_index) & ((p3 == 0) | (p3 == ignore_index))
    fused[fill] = p2[fill]
    if iteration > switch_iter:
        agree = _foreground(p1, ignore_index) & (p2 == p1)
        fused[agree] = p1[agree]
    return fused


def mcr_fuse_acdc(
    p1: Tensor,
    p2: Tensor,
    p3: Tensor,
    iteration: int,
    *,
    switch_iter: int = 6000,
    acdc_iter: int = 9000,
    ignore_index: int = 255,
) -> Tensor:
    """UniA's ACDC variant (``dr_acdc``): :func:`mcr_fuse`, and after ``acdc_iter`` P1's foreground
    also fills the pixels P2 left uncertain."""
    fused = mcr_fuse(p1, p2, p3, iteration, switch_iter=switch_iter, ignore_index=ignore_index)
    if iteration > acdc_iter:
        fill = (p2 == ignore_index) & _foreground(p1, ignore_index)
        fused[fill] = p1[fill]
    return fused


LABEL_FUSIONS: dict[str, Callable[..., Tensor]] = {"mcr": mcr_fuse, "mcr_acdc": mcr_fuse_acdc}
