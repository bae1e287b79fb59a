"""The report's curves: CAM seed mIoU against the background threshold, and training losses.

Both are drawn here from the numbers a run keeps (``eval/cams.json``, ``metrics.jsonl``, the
per-epoch lines of ``logs/pipeline.log``), at a size meant to be read on the page. Losses come
from two sources because ``metrics.jsonl`` holds one point every ``log_every`` steps: a short run
has none there, while the log has every epoch's mean.
"""

from __future__ import annotations

import io
import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from wsss.report.results import metric_dicts

FIGSIZE = (6.4, 4.0)  # inches; about 600x400 pixels once cropped, shown at that size (two a row)
DPI = 100
_EPOCH_LINE = re.compile(r" wsss\.pipeline: (?P<stage>[\w-]+) epoch (?P<epoch>\d+)/\d+: (?P<values>.+)$")


def figure_png(fig: Figure) -> bytes:
    """``fig`` as PNG bytes, cropped to what is drawn (legends outside the axes included)."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    return buf.getvalue()


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def threshold_figure(
    split: str,
    sweep: dict[str, Any],
    oracle: dict[str, Any] | None,
    fixed: dict[str, Any] | None,
    chosen_from: str,
) -> Figure:
    """The sweep of one split, its oracle and fixed thresholds named in a legend below the axes:
    notes beside the markers overlapped each other (the two points often coincide) and the frame."""
    fig = Figure(figsize=FIGSIZE)
    ax = fig.add_subplot(1, 1, 1)
    ys = [float("nan") if v is None else 100.0 * v for v in sweep["miou"]]
    ax.plot(sweep["thresholds"], ys, marker=".", linewidth=1.5, color="tab:blue", label="mIoU")
    if oracle is not None:
        label = f"oracle: threshold {oracle['threshold']:.2f} (best on {split}'s ground truth), {_pct(oracle['miou'])}"
        ax.plot([oracle["threshold"]], [100 * oracle["miou"]], "*", ms=15, color="tab:red", label=label)
    if fixed is not None:
        label = f"fixed: threshold {fixed['threshold']:.2f} ({chosen_from}), {_pct(fixed['miou'])}"
        ax.plot(
            [fixed["threshold"]],
            [100 * fixed["miou"]],
            "o",
            ms=7,
            mfc="none",
            mew=2,
            color="tab:green",
            label=label,
        )
    ax.set_xlabel("background threshold")
    ax.set_ylabel("mIoU (%)")
    ax.set_title(f"CAM seed mIoU vs background threshold ({split})")
    ax.grid(True, alpha=0.3)
    ax.margins(x=0.04, y=0.08)  # markers at the ends of the sweep stay clear of the frame
    ax.legend(loc="upper left", bbox_to_anchor=(0.0, -0.16), frameon=False, fontsize=9)
    return fig


def threshold_curves(eval_dir: Path) -> list[tuple[str, bytes]]:
    """(alt text, PNG) per scored split, drawn from ``eval/cams.json``; the stage's own PNGs
    when that file holds no sweep (an older run)."""
    path = eval_dir / "cams.json"
    try:
        saved = json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError:
        saved = {}
    chosen_from = str((saved.get("summary") or {}).get("chosen_from") or "given")
    out = []
    for split, res in (saved.get("details") or {}).items():
        if isinstance(res, dict) and (res.get("sweep") or {}).get("thresholds"):
            fig = threshold_figure(split, res["sweep"], res.get("oracle"), res.get("fixed"), chosen_from)
            out.append((f"threshold_curve_{split}", figure_png(fig)))
    if not out:
        out = [(p.stem, p.read_bytes()) for p in sorted(eval_dir.glob("threshold_curve_*.png"))]
    values = (saved.get("summary") or {}).get("cam_values")
    if isinstance(values, dict) and sum(values.get("histogram") or []):
        out.append(("cam_values", figure_png(cam_value_figure(values))))
    return out


def cam_value_figure(values: dict[str, Any]) -> Figure:
    """The distribution of the tagged classes' CAM values (``wsss.eval.cam_stats``), with the
    threshold the labels use: flat maps show as mass piled up on the right of it."""
    hist = values["histogram"]
    total = max(sum(hist), 1)
    width = 1.0 / len(hist)
    fig = Figure(figsize=FIGSIZE)
    ax = fig.add_subplot(1, 1, 1)
    lefts = [i * width for i in range(len(hist))]
    ax.bar(lefts, [100.0 * h / total for h in hist], width=width, align="edge", color="tab:blue")
    t, share = values.get("threshold"), values.get("foreground_share")
    if t is not None:
        label = f"threshold {t:.2f}" + (
            f": {100 * share:.0f} % of pixels foreground" if share is not None else ""
        )
        gt = values.get("gt_foreground_share")
        label += f" (ground truth {100 * gt:.0f} %)" if gt is not None else ""
        ax.axvline(t, color="tab:red", linewidth=2, label=label)
        ax.legend(loc="upper left", bbox_to_anchor=(0.0, -0.16), frameon=False, fontsize=9)
    ax.set_xlabel(f"CAM value ('{values.get('norm')}' normalised) of a tagged class")
    ax.set_ylabel("share of pixels (%)")
    ax.set_title(f"CAM values, {values.get('images')} images")
    ax.grid(True, alpha=0.3)
    return fig


def step_losses(metrics_file: Path) -> dict[str, list[tuple[int, float]]]:
    """Total loss per logged step of every training stage, from ``metrics.jsonl`` (later wins)."""
    series: dict[str, dict[int, float]] = defaultdict(dict)
    lines = metrics_file.read_text().splitlines() if metrics_file.is_file() else []
    for line in lines:
        try:
            item = json.loads(line)
            tag, step, value = str(item.get("tag", "")), int(item["step"]), float(item["value"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):  # a line cut by a kill
            continue
        if tag.endswith("/loss"):
            series[tag[: -len("/loss")]][step] = value
    return {stage: sorted(points.items()) for stage, points in series.items()}


def epoch_losses(log_file: Path) -> dict[str, dict[int, dict[str, float]]]:
    """Every epoch's mean losses per training stage, from the run's log (a resumed epoch: the
    later line wins)."""
    out: dict[str, dict[int, dict[str, float]]] = defaultdict(dict)
    lines = log_file.read_text(encoding="utf-8", errors="replace").splitlines() if log_file.is_file() else []
    for line in lines:
        m = _EPOCH_LINE.search(line)
        if m is None:
            continue
        try:
            values = {k: float(v) for k, v in (pair.split() for pair in m["values"].split(", "))}
        except ValueError:
            continue
        out[m["stage"]][int(m["epoch"])] = values
    return dict(out)


def steps_per_epoch(record: dict[str, Any], stage: str) -> float | None:
    """Optimiser steps per epoch of ``stage`` from its recorded ``steps`` and ``epochs``."""
    for m in metric_dicts((record.get("stages", {}).get(stage) or {}).get("metrics") or {}):
        if isinstance(m.get("steps"), int) and isinstance(m.get("epochs"), int) and m["epochs"] > 0:
            return m["steps"] / m["epochs"]
    return None


def _epoch_means(ax: Any, per_epoch: dict[int, dict[str, float]]) -> None:
    """Each loss term's epoch mean at the middle of its epoch; the total loss drawn boldest."""
    epochs = sorted(per_epoch)
    terms = list(dict.fromkeys(k for e in epochs for k in per_epoch[e]))
    # a lone term equals the total (segmentation: ce): drawn once, as the total
    terms = [
        t
        for t in terms
        if t == "loss" or any(per_epoch[e].get(t) != per_epoch[e].get("loss") for e in epochs)
    ]
    for k, term in enumerate(terms):
        pts = [(e - 0.5, per_epoch[e][term]) for e in epochs if term in per_epoch[e]]
        bold = term == "loss"
        ax.plot(
            [x for x, _ in pts],
            [y for _, y in pts],
            marker="o",
            linewidth=2.2 if bold else 1.2,
            color="tab:blue" if bold else f"C{k + 1}",
            label=f"{term}, epoch mean",
        )


def loss_figure(
    stage: str,
    per_epoch: dict[int, dict[str, float]],
    per_step: list[tuple[int, float]],
    step_len: float | None,
) -> Figure:
    """One training stage's losses against epochs: each term's epoch mean, and the total loss at
    every logged step as a thin line behind them (when the epoch length is known, or alone)."""
    fig = Figure(figsize=FIGSIZE)
    ax = fig.add_subplot(1, 1, 1)
    if per_step and not step_len and not per_epoch:  # no epochs to place the steps on
        ax.plot([s for s, _ in per_step], [v for _, v in per_step], color="tab:blue", label="loss")
        ax.set_xlabel("step")
    else:
        xmax = float(max(per_epoch, default=1))
        if per_step and step_len:
            xs = [s / step_len for s, _ in per_step]
            ax.plot(
                xs, [v for _, v in per_step], color="tab:blue", alpha=0.35, lw=1, label="loss, logged steps"
            )
            xmax = max(xmax, xs[-1])
        _epoch_means(ax, per_epoch)
        ax.set_xlim(0, xmax)
        ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title(f"{stage}: training loss")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=9)
    return fig


def loss_curves(run_dir: Path, record: dict[str, Any]) -> list[tuple[str, bytes]]:
    """(alt text, PNG) per training stage that logged a loss."""
    per_step = step_losses(run_dir / "metrics.jsonl")
    per_epoch = epoch_losses(run_dir / "logs" / "pipeline.log")
    stages = [s for s in record.get("stages", {}) if s in per_step or s in per_epoch]
    stages += sorted(s for s in {*per_step, *per_epoch} if s not in stages)
    return [
        (
            f"{stage} training loss",
            figure_png(
                loss_figure(
                    stage, per_epoch.get(stage, {}), per_step.get(stage, []), steps_per_epoch(record, stage)
                )
            ),
        )
        for stage in stages
    ]
