"""The mIoU-versus-background-threshold curve as a PNG (the picture people look at first).

Uses matplotlib's object API with the Agg canvas directly, so it neither needs a display nor
touches pyplot's global figure state or the process-wide backend.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from wsss.files import atomic_path


def _mark_point(
    ax: Axes,
    point: tuple[float, float],
    name: str,
    *,
    color: str,
    marker: str,
    size: float,
    offset: tuple[float, float],
) -> None:
    """A marker at (threshold, mIoU fraction) with a '<name> t=…: <mIoU %>' note beside it."""
    t, y = point[0], 100.0 * point[1]
    ax.plot([t], [y], marker=marker, markersize=size, color=color, linestyle="none")
    ax.annotate(f"{name} t={t:g}: {y:.2f}", (t, y), textcoords="offset points", xytext=offset, color=color)


def plot_threshold_curve(
    thresholds: Sequence[float],
    mious: Sequence[float | None],
    path: str | os.PathLike,
    best: tuple[float, float] | None = None,
    title: str = "CAM mIoU vs. background threshold",
    fixed: tuple[float, float] | None = None,
) -> None:
    """Write the curve to ``path`` atomically; ``best`` is marked "oracle", ``fixed`` as "fixed".

    ``mious`` are fractions in [0, 1] (``None`` where undefined) and are drawn in percent.
    """
    if len(thresholds) != len(mious):
        raise ValueError(f"{len(thresholds)} thresholds but {len(mious)} mIoU values")
    ys = [float("nan") if v is None else 100.0 * v for v in mious]
    fig = Figure(figsize=(6.4, 4.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(list(thresholds), ys, marker=".", linewidth=1.5, label="mIoU")
    if best is not None:
        _mark_point(ax, best, "oracle", color="tab:red", marker="*", size=14, offset=(6, 8))
    if fixed is not None:
        _mark_point(ax, fixed, "fixed", color="tab:green", marker="o", size=8, offset=(6, -14))
    ax.set_xlabel("background threshold")
    ax.set_ylabel("mIoU (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
