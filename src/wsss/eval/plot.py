"""The mIoU-versus-background-threshold curve as a PNG (the picture people look at first).

Uses matplotlib's object API with the Agg canvas directly, so it neither needs a display nor
touches pyplot's global figure state or the process-wide backend.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from wsss.files import atomic_path


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
        t, v = best
        ax.plot([t], [100.0 * v], marker="*", markersize=14, color="tab:red", linestyle="none")
        ax.annotate(
            f"oracle t={t:g}: {100.0 * v:.2f}",
            (t, 100.0 * v),
            textcoords="offset points",
            xytext=(6, 8),
            color="tab:red",
        )
    if fixed is not None:
        t, v = fixed
        ax.plot([t], [100.0 * v], marker="o", markersize=8, color="tab:green", linestyle="none")
        ax.annotate(
            f"fixed t={t:g}: {100.0 * v:.2f}",
            (t, 100.0 * v),
            textcoords="offset points",
            xytext=(6, -14),
            color="tab:green",
        )
    ax.set_xlabel("background threshold")
    ax.set_ylabel("mIoU (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
