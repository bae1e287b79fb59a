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
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml

from wsss.config import Recipe, load_recipe
from wsss.errors import DataError
from wsss.files import write_text
from wsss.report.curves import loss_curves, threshold_curves
from wsss.report.gallery import COLUMNS, Gallery, GallerySources, ImageRow, build_gallery
from wsss.report.results import (
    Result,
    classifier_validations,
    collect_results,
    metric_dicts,
    output_name,
    stage_warnings,
)
from wsss.stages.context import build_dataset

REPORT_NAME = "report.html"

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222;max-width:1280px}
h1{font-size:1.5em;margin-bottom:0}h2{margin-top:1.6em;border-bottom:1px solid #ccc}
.meta{color:#555;margin-top:4px}
.warn{color:#b00020}
table{border-collapse:collapse;margin:8px 0}th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f0f0f0}td.l,th.l{text-align:left}th[colspan]{text-align:center}
.grid td{text-align:center;vertical-align:top;padding:2px}.grid img{display:block;width:144px;height:auto;image-rendering:pixelated}
.grid td.missing{color:#999;width:144px;vertical-align:middle}.grid td.cap{font-size:.8em;color:#444;text-align:left;width:150px}
.curves{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}.curves img{max-width:100%;height:auto}
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


def _warnings(record: dict[str, Any]) -> str:
    """The stages' warnings (e.g. flat CAMs), in red under the stage table: a number that looks
    plausible must not hide that the maps behind it are unusable."""
    items = [f"<li><b>{_e(stage)}</b>: {_e(w)}</li>" for stage, w in stage_warnings(record)]
    return f'<ul id="warnings" class="warn">{"".join(items)}</ul>' if items else ""


def _validation_tables(record: dict[str, Any]) -> str:
    """Each trained classifier's held-out tag scores (per-class AP / F1), shown before the CAM
    numbers: a classifier that did not learn explains every number after it."""
    parts = []
    for stage, v in classifier_validations(record):
        rows = "".join(
            f'<tr><td class="l">{_e(name)}</td><td>{c.get("positives", 0)}</td>'
            f"<td>{_pct(c.get('ap'))}</td><td>{_pct(c.get('f1'))}</td></tr>"
            for name, c in (v.get("per_class") or {}).items()
        )
        parts.append(
            f"<p><b>{_e(stage)}</b> on {_e(v.get('split'))} ({v.get('images')} images): "
            f"mAP <b>{_pct(v.get('map'))}</b> % (a random ranking: {_pct(v.get('chance_map'))} %), "
            f"F1 {_pct(v.get('f1_macro'))} % at probability {v.get('threshold')}</p>"
            f'<details><summary>per class</summary><table class="validation"><tr><th class="l">class</th>'
            f"<th>positives</th><th>AP %</th><th>F1 %</th></tr>{rows}</table></details>"
        )
    if not parts:
        return ""
    return '<h3 id="classifier-validation">Classifier on held-out tags</h3>' + "".join(parts)


def _scored(r: Result) -> str:
    """One split's number with the all-background baseline (marked when not above it) and the
    mean foreground Dice beside it."""
    notes = [] if r.baseline is None else [f"all-background {_pct(r.baseline)}"]
    notes += [] if r.dice is None else [f"mean Dice {_pct(r.dice)}"]
    extra = f" ({'; '.join(notes)})" if notes else ""
    flag = ' <span class="warn">not above all-background</span>' if r.below_baseline else ""
    return f"{_e(r.split)} <b>{_pct(r.miou)}</b>{extra}{flag}"


def _summary_table(record: dict[str, Any], results: list[Result]) -> str:
    by_stage: dict[str, list[Result]] = defaultdict(list)
    for r in results:
        by_stage[r.stage].append(r)
    rows = []
    for stage, info in record.get("stages", {}).items():
        numbers = "; ".join(
            f"{_e(what)}: " + ", ".join(_scored(r) for r in group)
            for what, group in _by_output(by_stage.get(stage, []))
        )
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


def _by_output(results: list[Result]) -> list[tuple[str, list[Result]]]:
    """Results grouped by what was scored, in order: one heading over its splits, not one per split."""
    groups: dict[str, list[Result]] = defaultdict(list)
    for r in results:
        groups[r.what].append(r)
    return list(groups.items())


def _two_row_head(groups: list[tuple[str, list[str]]], table_id: str, sub: str = "") -> str:
    """A header row of output names, each over a row of its splits (``sub`` under the split)."""
    top = "".join(f'<th colspan="{len(splits)}">{_e(what)}</th>' for what, splits in groups)
    low = "".join(f"<th>{_e(split)}{sub}</th>" for _, splits in groups for split in splits)
    return (
        f'<table id="{table_id}"><tr><th class="l" rowspan="2">class</th>{top}</tr>'
        f'<tr class="splits">{low}</tr>'
    )


def _per_class_table(results: list[Result], dice: bool = False) -> str:
    """Classes down, scored outputs across: where a method gains or loses is per class. ``dice``:
    the Dice table (mean over foreground classes), else the IoU one."""
    groups = _by_output([r for r in results if (r.per_class_dice if dice else r.per_class)])
    if not groups:
        return "<p>No per-class scores: the run's splits have no ground truth.</p>"
    cols = [r for _, group in groups for r in group]
    scores = [r.per_class_dice if dice else r.per_class for r in cols]
    classes = list(dict.fromkeys(c for per_class in scores for c in per_class))
    table_id = "per-class-dice" if dice else "per-class"
    head = _two_row_head([(what, [r.split for r in group]) for what, group in groups], table_id)
    body = []
    for c in classes:
        cells = "".join(f"<td>{_pct(per_class.get(c))}</td>" for per_class in scores)
        body.append(f'<tr><td class="l">{_e(c)}</td>{cells}</tr>')
    mean = "".join(f"<td><b>{_pct(r.dice if dice else r.miou)}</b></td>" for r in cols)
    label = "mean Dice (foreground)" if dice else "mIoU"
    body.append(f'<tr><td class="l"><b>{label}</b></td>{mean}</tr>')
    return f"{head}{''.join(body)}</table>"


def _dice_section(results: list[Result]) -> str:
    """Per-class Dice (the medical-imaging score, e.g. ACDC); absent for runs recorded without it."""
    if not any(r.per_class_dice for r in results):
        return ""
    return f"<h3>Per-class Dice (%)</h3>{_per_class_table(results, dice=True)}"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        saved = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return saved if isinstance(saved, dict) else {}


def _pr_of(per_class: Any) -> dict[str, tuple[float, float]] | None:
    """{class: (precision, recall)} of a saved per-class list, or None when it has no such scores."""
    if not per_class or not all("precision" in c and "recall" in c for c in per_class):
        return None
    return {c["name"]: (c["precision"], c["recall"]) for c in per_class}


def _cam_precision_recall(eval_dir: Path) -> list[tuple[str, str, dict[str, tuple[float, float]]]]:
    """(output, split, scores) of the CAM seeds at the threshold the report's tables use."""
    saved = _read_json(eval_dir / "cams.json")
    chosen_from = (saved.get("summary") or {}).get("chosen_from")
    out = []
    for split, res in (saved.get("details") or {}).items():
        scored = (res or {}).get("fixed") or (res or {}).get("oracle") or {}
        pr = _pr_of(scored.get("per_class"))
        if pr is not None and isinstance(scored.get("threshold"), (int, float)):
            t = scored["threshold"]
            what = (
                f"CAM seeds, threshold {t:.2f} ({chosen_from})"
                if res.get("fixed")
                else f"CAM seeds, oracle threshold {t:.2f}"
            )
            out.append((what, split, pr))
    return out


def _precision_recall_table(eval_dir: Path) -> str:
    """Precision / recall per class of every scored output: low recall with high precision is an
    output that misses a class, the reverse one that spills over it."""
    outputs = _cam_precision_recall(eval_dir)
    for path in sorted(eval_dir.glob("*.json")):
        saved = _read_json(path)
        pr = _pr_of((saved.get("scores") or {}).get("per_class"))
        if pr is not None and path.stem != "cams":
            split = str((saved.get("summary") or {}).get("evaluated_on", ""))
            outputs.append((output_name(path.stem), split, pr))
    if not outputs:
        return "<p>No scored outputs.</p>"
    groups: dict[str, list[str]] = defaultdict(list)
    for what, split, _ in outputs:
        groups[what].append(split)
    ordered = [o for what in groups for o in outputs if o[0] == what]
    classes = list(dict.fromkeys(name for *_, pr in ordered for name in pr))
    body = []
    for c in classes:
        cells = "".join(
            f"<td>{_pct(pr[c][0])} / {_pct(pr[c][1])}</td>" if c in pr else "<td>–</td>" for *_, pr in ordered
        )
        body.append(f'<tr><td class="l">{_e(c)}</td>{cells}</tr>')
    head = _two_row_head(list(groups.items()), "precision-recall", "<br>precision / recall")
    return f"{head}{''.join(body)}</table>"


def _curves(run_dir: Path, record: dict[str, Any]) -> str:
    parts = [_img_tag(png, alt) for alt, png in threshold_curves(run_dir / "eval")]
    parts += [_img_tag(png, alt) for alt, png in loss_curves(run_dir, record)]
    if not parts:
        return "<p>No curves: no stage of this run sweeps a threshold or trains a model.</p>"
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


def duration(seconds: float) -> str:
    """'8.1 s', '4 min 05 s', '2 h 03 min': a run's time as people read it."""
    if seconds < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    minutes = round(seconds) // 60
    if minutes < 60:
        return f"{minutes} min {round(seconds) % 60:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def _header(recipe: Recipe, record: dict[str, Any]) -> str:
    """What ran on what, and the time it measured: a recipe's description ("5 minutes on CPU") is
    a promise, and a recipe of one's own inherits its base's."""
    total = sum(info.get("seconds", 0) for info in record.get("stages", {}).values())
    versions = ", ".join(f"{k} {v}" for k, v in record.get("versions", {}).items() if v)
    machine = record.get("machine", {})
    where = (machine.get("gpu") or f"{machine.get('cpu_count', '?')} CPUs") if machine else "machine unknown"
    d = recipe.data
    splits = (
        f"training split '{d.train_split}', seeds scored on '{d.seed_eval_split}', val split '{d.val_split}'"
    )
    return (
        f"data: {_e(d.dataset)} dataset at {_e(_data_root(d.root, record))} ({_e(splits)})<br>"
        f"took {duration(total)} (the stages' measured times added up) on {_e(record.get('device'))} "
        f"({_e(where)}); {_e(versions)}; git {_e((record.get('git_commit') or 'unknown')[:12])}"
    )


def render_report(run_dir: Path, **gallery_kwargs: Any) -> str:
    """The report page of ``run_dir`` as an HTML string."""
    record_path = run_dir / "run.json"
    if not record_path.is_file():
        raise DataError(f"{run_dir} has no run.json: not a wsss run directory (run 'wsss run' first)")
    record = json.loads(record_path.read_text())
    recipe = load_recipe(str(run_dir / "recipe.yaml"))
    results = collect_results(record)
    meta = _header(recipe, record)
    config = yaml.safe_dump(record.get("config", {}), sort_keys=False)
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>wsss report: {_e(recipe.name)}</title><style>{_CSS}</style></head><body>"
        f'<h1>wsss report: {_e(recipe.name)}</h1><p class="meta">{meta}</p>'
        f"<h2>Stages</h2>{_summary_table(record, results)}{_warnings(record)}{_validation_tables(record)}"
        f"<h2>Per-class IoU (%)</h2>{_per_class_table(results)}{_dice_section(results)}"
        f"<h3>Precision / recall (%) of each scored output</h3>"
        f"{_precision_recall_table(run_dir / 'eval')}"
        f"<h2>Curves</h2>{_curves(run_dir, record)}"
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
