"""The measured numbers of a run, read from its ``run.json``, in one flat list.

Both the demo's printed table and the HTML report show these; keeping the reading in one place
means the two can never disagree about what a stage measured.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Result:
    """One scored output: what was measured, by which stage, on which split."""

    what: str
    stage: str
    split: str
    miou: float
    per_class: dict[str, float] = field(default_factory=dict)
    baseline: float | None = None  # mIoU of all-background on the same masks (older runs: None)
    dice: float | None = None  # mean Dice over the foreground classes (older runs: None)
    per_class_dice: dict[str, float] = field(default_factory=dict)

    @property
    def below_baseline(self) -> bool:
        """Worse than (or equal to) predicting background everywhere: the output is useless."""
        return self.baseline is not None and self.miou <= self.baseline


def _number(m: dict[str, Any], key: str) -> float | None:
    value = m.get(key)
    return float(value) if isinstance(value, (int, float)) else None


def _baseline(m: dict[str, Any]) -> float | None:
    return _number(m, "all_background_miou")


def metric_dicts(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """A stage's metrics and their per-split sub-dicts: stages record a number either at the top
    (make-labels) or under a split key (predict: ``{"val": {...}}``)."""
    return [metrics, *(v for v in metrics.values() if isinstance(v, dict))]


def _labelled(stage: str, metrics: dict[str, Any], what: str) -> list[Result]:
    """Results of a stage whose metrics hold ``miou`` either at the top or under a split key."""
    found = []
    for m in metric_dicts(metrics):
        if isinstance(m.get("miou"), (int, float)):
            split = str(m.get("evaluated_on", ""))
            per_class = dict(m.get("per_class_iou") or {})
            found.append(
                Result(
                    what,
                    stage,
                    split,
                    float(m["miou"]),
                    per_class,
                    _baseline(m),
                    _number(m, "mean_dice"),
                    dict(m.get("per_class_dice") or {}),
                )
            )
    return found


def _cam_results(metrics: dict[str, Any]) -> list[Result]:
    out = []
    chosen, chosen_from = metrics.get("chosen_threshold"), metrics.get("chosen_from")
    for split, s in metrics.get("splits", {}).items():
        if s.get("miou_at_chosen") is None:
            out.append(
                Result(
                    f"CAM seeds, oracle threshold {s['oracle_threshold']:.2f}",
                    "eval-cams",
                    split,
                    s["oracle_miou"],
                    baseline=_baseline(s),
                    dice=_number(s, "oracle_mean_dice"),
                )
            )
            continue
        out.append(
            Result(
                f"CAM seeds, threshold {chosen:.2f} ({chosen_from})",
                "eval-cams",
                split,
                float(s["miou_at_chosen"]),
                dict(s.get("per_class_iou_at_chosen") or {}),
                _baseline(s),
                _number(s, "mean_dice_at_chosen"),
                dict(s.get("per_class_dice_at_chosen") or {}),
            )
        )
    return out


# stage -> what its scored output is called in tables
_OUTPUT_NAMES = {
    "make-labels": "pseudo-labels (make-labels)",
    "random-walk": "pseudo-masks (random walk)",
    "predict": "segmentation prediction",
    "cycle-seg": "segmentation prediction, cyclic round",
    "upper-bound": "fully supervised upper bound (trained on GT)",
}


# eval/<stem>.json of the stages that score a label folder -> the stage whose output it scores
_EVAL_FILES = {"labels": "make-labels", "pseudo": "random-walk", "seg_cycle_": "cycle-seg", "seg_": "predict"}


def output_name(stem: str) -> str:
    """The human name of the output an ``eval/<stem>.json`` scores (``seg_val`` -> segmentation
    prediction); a file no stage writes keeps its file name, so it is still findable."""
    for prefix, stage in _EVAL_FILES.items():
        if stem == prefix or (prefix.endswith("_") and stem.startswith(prefix)):
            return _OUTPUT_NAMES[stage]
    return f"eval/{stem}.json"


def collect_results(record: dict[str, Any]) -> list[Result]:
    """Every scored output of a run record, in stage order."""
    results: list[Result] = []
    for stage, info in record.get("stages", {}).items():
        metrics = info.get("metrics") or {}
        if stage == "eval-cams":
            results += _cam_results(metrics)
        elif stage in _OUTPUT_NAMES:
            results += _labelled(stage, metrics, _OUTPUT_NAMES[stage])
    return results


def format_results_table(results: list[Result]) -> str:
    """A plain-text table (what | split | mIoU % | all-background mIoU %) for the terminal."""
    width = max([len(r.what) for r in results] + [10])
    lines = [f"{'result':{width}s}  {'split':6s}  mIoU %  all-bg %"]
    for r in results:
        base = "     -" if r.baseline is None else f"{100 * r.baseline:6.1f}"
        lines.append(f"{r.what:{width}s}  {r.split:6s}  {100 * r.miou:6.1f}    {base}")
    return "\n".join(lines)


def baseline_warnings(results: list[Result]) -> list[str]:
    """One line for every scored output that does not beat predicting background everywhere."""
    return [
        f"{r.what} on {r.split}: mIoU {100 * r.miou:.1f} % is not above the all-background baseline "
        f"({100 * r.baseline:.1f} %, every pixel background); this output is useless as it stands"
        for r in results
        if r.below_baseline and r.baseline is not None
    ]


def stage_warnings(record: dict[str, Any]) -> list[tuple[str, str]]:
    """(stage, warning) for every warning a stage recorded (e.g. eval-cams on unusable maps), so
    the terminal summary and the report show what a plausible-looking number hides."""
    return [
        (stage, str(w))
        for stage, info in record.get("stages", {}).items()
        for w in ((info.get("metrics") or {}).get("warnings") or [])
    ]


def classifier_validations(record: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(stage, held-out tag report) of every training stage that scored its classifier."""
    return [
        (stage, v)
        for stage, info in record.get("stages", {}).items()
        if isinstance(v := (info.get("metrics") or {}).get("validation"), dict) and "map" in v
    ]


def format_validation(stage: str, v: dict[str, Any]) -> str:
    """One terminal line: the classifier's held-out mAP against chance, and its F1."""

    def pct(x: float | None) -> str:
        return "–" if x is None else f"{100 * x:.1f} %"

    return (
        f"{stage}: classifier on {v.get('split')} ({v.get('images')} images): mAP {pct(v.get('map'))} "
        f"(chance {pct(v.get('chance_map'))}), F1 {pct(v.get('f1_macro'))} at {v.get('threshold')}"
    )


def summary_lines(record: dict[str, Any]) -> list[str]:
    """What ``wsss run`` and ``wsss demo`` print at the end: the results table, each classifier's
    held-out score and every stage warning."""
    results = collect_results(record)
    lines = [format_results_table(results)] if results else []
    lines += [format_validation(stage, v) for stage, v in classifier_validations(record)]
    lines += [f"warning: {line}" for line in baseline_warnings(results)]
    return lines + [f"warning ({stage}): {warning}" for stage, warning in stage_warnings(record)]
