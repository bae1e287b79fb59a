"""``report.html``: one self-contained page per run directory.

Everything a reader needs to judge a run is on the page: what ran and how long it took, every
measured number, per-class IoU side by side across stages, the threshold and loss curves, and
pictures (image | ground truth | CAM | pseudo-mask | prediction) for a sample and for the best
and worst images. Pictures are embedded as base64 PNGs, so the file can be mailed or opened
offline; no script, font or stylesheet is fetched.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from wsss.config import Recipe, load_recipe
from wsss.errors import DataError
from wsss.files import write_text
from wsss.report.gallery import COLUMNS, Gallery, GallerySources, ImageRow, build_gallery
from wsss.report.results import Result, collect_results, metric_dicts
from wsss.stages.context import build_dataset

REPORT_NAME = "report.html"

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222;max-width:1280px}
h1{font-size:1.5em;margin-bottom:0}h2{margin-top:1.6em;border-bottom:1px solid #ccc}
.meta{color:#555;margin-top:4px}
table{border-collapse:collapse;margin:8px 0}th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f0f0f0}td.l,th.l{text-align:left}
.grid td{text-align:center;vertical-align:top;padding:2px}.grid img{display:block;width:144px;height:auto;image-rendering:pixelated}
.grid td.missing{color:#999;width:144px;vertical-align:middle}.grid td.cap{font-size:.8em;color:#444;text-align:left;width:150px}
.curves img{max-width:420px;margin-right:8px;vertical-align:top}
details pre{background:#f7f7f7;padding:8px;overflow:auto;font-size:.85em}
"""


def _e(x: Any) -> str:
    return html.escape(str(x))


def _img_tag(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def _not_scored(metrics: dict[str, Any]) -> list[str]:
    """Why a stage has no number (no ground truth, missing files), as the stage recorded it."""
    reasons = []
    for m in metric_dicts(metrics):
        why = m.get("not_scored")
        if isinstance(why, str):
            reasons.append(why)
        elif isinstance(why, dict):
            reasons += [f"{split}: {text}" for split, text in why.items()]
    return list(dict.fromkeys(reasons))


def _summary_table(record: dict[str, Any], results: list[Result]) -> str:
    by_stage: dict[str, list[Result]] = defaultdict(list)
    for r in results:
        by_stage[r.stage].append(r)
    rows = []
    for stage, info in record.get("stages", {}).items():
        scored = by_stage.get(stage, [])
        numbers = "; ".join(f"{_e(r.what)} ({_e(r.split)}): <b>{_pct(r.miou)}</b>" for r in scored)
        reasons = _not_scored(info.get("metrics") or {})
        numbers = numbers or (f"not scored: {_e('; '.join(reasons))}" if reasons else "–")
        rows.append(
            f'<tr><td class="l">{_e(stage)}</td><td>{info.get("seconds", 0):.1f}</td>'
            f'<td class="l">{numbers}</td></tr>'
        )
    return (
        '<table id="stages"><tr><th class="l">stage</th><th>seconds</th><th class="l">mIoU %</th></tr>'
        + "".join(rows)
        + "</table>"
    )


def _per_class_table(results: list[Result]) -> str:
    """Classes down, scored outputs across: where a method gains or loses is per class."""
    cols = [r for r in results if r.per_class]
    if not cols:
        return "<p>No per-class scores: the run's splits have no ground truth.</p>"
    classes = list(dict.fromkeys(c for r in cols for c in r.per_class))
    head = "".join(f"<th>{_e(r.what)}<br>({_e(r.split)})</th>" for r in cols)
    body = []
    for c in classes:
        cells = "".join(f"<td>{_pct(r.per_class.get(c))}</td>" for r in cols)
        body.append(f'<tr><td class="l">{_e(c)}</td>{cells}</tr>')
    mean = "".join(f"<td><b>{_pct(r.miou)}</b></td>" for r in cols)
    body.append(f'<tr><td class="l"><b>mIoU</b></td>{mean}</tr>')
    return f'<table id="per-class"><tr><th class="l">class</th>{head}</tr>{"".join(body)}</table>'


def _precision_recall_table(eval_dir: Path) -> str:
    """Precision / recall per class of every scored label folder (eval/*.json with per-class
    scores): low recall with high precision is an output that misses a class, the reverse one
    that spills over it."""
    outputs = []
    for path in sorted(eval_dir.glob("*.json")):
        try:
            saved = json.loads(path.read_text())
        except json.JSONDecodeError:
            continue
        scores, summary = saved.get("scores") or {}, saved.get("summary") or {}
        per_class = scores.get("per_class") or []
        if per_class and all("precision" in c and "recall" in c for c in per_class):
            name = f"{path.stem} ({summary['evaluated_on']})" if "evaluated_on" in summary else path.stem
            outputs.append((name, {c["name"]: (c["precision"], c["recall"]) for c in per_class}))
    if not outputs:
        return "<p>No scored label folders.</p>"
    classes = list(dict.fromkeys(name for _, pr in outputs for name in pr))
    head = "".join(f"<th>{_e(stem)}<br>precision / recall</th>" for stem, _ in outputs)
    body = []
    for c in classes:
        cells = "".join(
            f"<td>{_pct(pr[c][0])} / {_pct(pr[c][1])}</td>" if c in pr else "<td>–</td>" for _, pr in outputs
        )
        body.append(f'<tr><td class="l">{_e(c)}</td>{cells}</tr>')
    return f'<table id="precision-recall"><tr><th class="l">class</th>{head}</tr>{"".join(body)}</table>'


def _figure_png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return buf.getvalue()


def _loss_curves(metrics_file: Path) -> bytes | None:
    """Training loss per step of every training stage, from ``metrics.jsonl``."""
    if not metrics_file.is_file():
        return None
    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for line in metrics_file.read_text().splitlines():
        try:
            item = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a kill: the rest of the file is still good
            continue
        tag = str(item.get("tag", ""))
        if tag.endswith("/loss"):
            series[tag[: -len("/loss")]].append((int(item["step"]), float(item["value"])))
    if not series:
        return None
    fig = Figure(figsize=(4.0 * len(series), 2.8))
    for k, (stage, points) in enumerate(sorted(series.items())):
        ax = fig.add_subplot(1, len(series), k + 1)
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], color="tab:blue")
        ax.set_title(f"{stage} loss")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    return _figure_png(fig)


def _curves(run_dir: Path) -> str:
    parts = []
    for path in sorted((run_dir / "eval").glob("threshold_curve_*.png")):
        parts.append(_img_tag(path.read_bytes(), path.stem))
    loss = _loss_curves(run_dir / "metrics.jsonl")
    if loss is not None:
        parts.append(_img_tag(loss, "training loss"))
    if not parts:
        return "<p>No curves yet.</p>"
    return f'<div class="curves">{"".join(parts)}</div>'


def _row_html(row: ImageRow) -> str:
    cells = []
    for col in COLUMNS:
        png = row.pictures.get(col)
        cells.append(
            f"<td>{_img_tag(png, f'{row.name} {col}')}</td>" if png else '<td class="missing">–</td>'
        )
    score = f"; {row.scored} mIoU {_pct(row.score)}" if row.score is not None else ""
    tags = ", ".join(row.classes) or "no tags"
    caption = f'<td class="cap">{_e(row.name)}<br>{_e(tags)}{_e(score)}</td>'
    return f"<tr>{caption}{''.join(cells)}</tr>"


def _grid(title: str, rows: list[ImageRow], key: str) -> str:
    if not rows:
        return ""
    head = "".join(f"<th>{_e(c)}</th>" for c in COLUMNS)
    body = "".join(_row_html(r) for r in rows)
    return (
        f'<h3>{_e(title)}</h3><table class="grid" id="{_e(key)}">'
        f'<tr><th class="l">name, tags</th>{head}</tr>{body}</table>'
    )


def _gallery_html(gallery: Gallery) -> str:
    if gallery.scored_output:
        among = (
            f"all {gallery.size}"
            if gallery.ranked == gallery.size
            else f"{gallery.ranked} (evenly spaced) of {gallery.size}"
        )
        note = (
            f"Best and worst by per-image mIoU of the {gallery.scored_output} (classes present in either map), "
            f"ranked among {among} images."
        )
    else:
        note = "This split has no ground truth, so images are not ranked."
    key = gallery.split
    return (
        f"<h3>Split {_e(gallery.split)}</h3><p>{_e(note)}</p>"
        + _grid(f"Sample ({gallery.split})", gallery.sample, f"{key}-sample")
        + _grid(f"Best ({gallery.split})", gallery.best, f"{key}-best")
        + _grid(f"Worst ({gallery.split})", gallery.worst, f"{key}-worst")
    )


def gallery_splits(recipe: Recipe) -> list[str]:
    """The splits to show pictures of: one predicted split that also has CAMs and pseudo-masks;
    otherwise a CAM split (the seed-evaluation one if it is among them) and the predicted split."""
    predicted = recipe.predict.splits[:1] if "predict" in recipe.stages else []
    if predicted and predicted[0] in recipe.cams.splits:
        return predicted
    d = recipe.data
    cam_split = d.seed_eval_split if d.seed_eval_split in recipe.cams.splits else recipe.cams.splits[0]
    return list(dict.fromkeys([cam_split, *predicted]))


def _data_root(root: str, record: dict[str, Any]) -> str:
    """A relative ``data.root`` is relative to where the run was started, not to the reader."""
    path = Path(root)
    if path.is_absolute() or "cwd" not in record:
        return root
    return str(Path(record["cwd"]) / path)


def _load_galleries(run_dir: Path, recipe: Recipe, record: dict[str, Any], **kwargs: Any) -> str:
    sources = GallerySources(
        cam_dir=run_dir / "cams",
        pseudo_dirs=(run_dir / "pseudo", run_dir / "labels"),
        prediction_dir=run_dir / "predictions",
    )
    parts = []
    for split in gallery_splits(recipe):
        try:
            ds = build_dataset(
                recipe.data, split, root=_data_root(recipe.data.root, record), with_masks=False
            )
        except DataError as exc:
            parts.append(
                f"<p>Split {_e(split)}: no pictures, the dataset cannot be read here ({_e(exc)}).</p>"
            )
            continue
        parts.append(_gallery_html(build_gallery(ds, split, sources, **kwargs)))
    intro = (
        "<p>CAM: the strongest tagged class per pixel (jet) over the image. Masks in the VOC palette, "
        "white = ignored; – = that output does not exist for the image.</p>"
    )
    return intro + "".join(parts)


def render_report(run_dir: Path, **gallery_kwargs: Any) -> str:
    """The report page of ``run_dir`` as an HTML string."""
    record_path = run_dir / "run.json"
    if not record_path.is_file():
        raise DataError(f"{run_dir} has no run.json: not a wsss run directory (run 'wsss run' first)")
    record = json.loads(record_path.read_text())
    recipe = load_recipe(str(run_dir / "recipe.yaml"))
    results = collect_results(record)
    total = sum(info.get("seconds", 0) for info in record.get("stages", {}).values())
    versions = ", ".join(f"{k} {v}" for k, v in record.get("versions", {}).items() if v)
    machine = record.get("machine", {})
    where = (machine.get("gpu") or f"{machine.get('cpu_count', '?')} CPUs") if machine else "machine unknown"
    meta = (
        f"{_e(recipe.description)}<br>device {_e(record.get('device'))} ({_e(where)}); {_e(versions)}; "
        f"git {_e((record.get('git_commit') or 'unknown')[:12])}; stages took {total:.0f} s in all"
    )
    config = yaml.safe_dump(record.get("config", {}), sort_keys=False)
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>wsss report: {_e(recipe.name)}</title><style>{_CSS}</style></head><body>"
        f'<h1>wsss report: {_e(recipe.name)}</h1><p class="meta">{meta}</p>'
        f"<h2>Stages</h2>{_summary_table(record, results)}"
        f"<h2>Per-class IoU (%)</h2>{_per_class_table(results)}"
        f"<h3>Precision / recall (%) of each scored output (eval/*.json)</h3>"
        f"{_precision_recall_table(run_dir / 'eval')}"
        f"<h2>Curves</h2>{_curves(run_dir)}"
        f"<h2>Pictures</h2>{_load_galleries(run_dir, recipe, record, **gallery_kwargs)}"
        f"<h2>Configuration</h2><details><summary>resolved recipe</summary><pre>{_e(config)}</pre></details>"
        "</body></html>"
    )


def write_report(run_dir: str | Path, **gallery_kwargs: Any) -> Path:
    """Write ``run_dir/report.html`` (atomically) and return its path."""
    run_dir = Path(run_dir)
    path = run_dir / REPORT_NAME
    write_text(path, render_report(run_dir, **gallery_kwargs))
    return path
