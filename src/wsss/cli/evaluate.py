"""Commands ``evaluate``, ``eval-cams`` and ``import-cams``: parse, then call wsss.eval or wsss.cams."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from wsss.errors import ConfigError
from wsss.files import write_json

_DEFAULT_SWEEP = (0.0, 0.96, 0.01)  # 0.00 … 0.95 (TransCAM/SEAM sweep 0.00 … 0.59; the top is added)

# The choices of wsss.cams.importers.FORMATS and wsss.eval.metrics.MEAN_CONVENTIONS, repeated so
# that building the parser does not import torch (a test keeps them equal).
CAM_DUMP_FORMATS = ("irn", "psa")
MEAN_CHOICES = ("all", "absent_as_zero", "gt_present")


def _num_classes_arg(text: str) -> int:
    value = int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"needs background plus at least one class (>= 2), got {value}")
    return value


def _add_ground_truth_args(p: argparse.ArgumentParser) -> None:
    """What every scoring command needs besides its predictions: GT masks, image names, classes."""
    p.add_argument("--gt", type=Path, required=True, metavar="DIR", help="folder of <name>.png GT masks")
    p.add_argument("--list", type=Path, required=True, metavar="FILE", dest="list_file", help="image names")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument(
        "--classes",
        metavar="voc|coco|FILE",
        help="voc, coco, or a classes.txt: foreground names one per line in mask-index order (index 1 "
        "first); a leading 'background' line is optional",
    )
    g.add_argument(
        "--num-classes", type=_num_classes_arg, metavar="N", help="number of classes incl. background"
    )


def _classes(args: argparse.Namespace) -> tuple[int, list[str] | None]:
    from wsss.data.base import class_list

    if args.classes is not None:
        names = list(class_list(args.classes))
        print(
            f"classes: background + {len(names) - 1} ({', '.join(names[1:4])}{', …' if len(names) > 4 else ''})"
        )
        return len(names), names
    return args.num_classes, None


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the evaluation commands to the ``wsss`` parser."""
    p = subparsers.add_parser(
        "evaluate",
        help="score label PNGs against ground-truth masks",
        description=(
            "Score palette-PNG label maps (pseudo-masks or predictions) against ground-truth masks: "
            "per-class IoU and mIoU from a dataset-level confusion matrix."
        ),
    )
    p.add_argument("--pred", type=Path, required=True, metavar="DIR", help="folder of <name>.png predictions")
    _add_ground_truth_args(p)
    p.add_argument("--out", type=Path, metavar="JSON", help="also write the scores to this JSON file")
    p.add_argument("--mean", choices=list(MEAN_CHOICES), default="all", help="mIoU mean convention")
    p.add_argument(
        "--uncertain",
        choices=("background", "skip"),
        default="background",
        help="how a predicted 255 (uncertain) pixel is scored (default: as background, ToCo's convention)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=_run_evaluate)

    p = subparsers.add_parser(
        "eval-cams",
        help="score CAM files over a background-threshold sweep",
        description=(
            "Sweep the background threshold over CAM files: mIoU at every threshold, computed in one "
            "pass. The best threshold is "
            "chosen on this split's ground truth and is reported as an oracle."
        ),
    )
    p.add_argument("--cams", type=Path, required=True, metavar="DIR", help="folder of <name>.npz CAM files")
    _add_ground_truth_args(p)
    p.add_argument(
        "--thresholds",
        type=float,
        nargs=3,
        metavar=("START", "STOP", "STEP"),
        default=list(_DEFAULT_SWEEP),
        help="sweep START, START+STEP, ... below STOP (default: 0 0.96 0.01, i.e. up to 0.95)",
    )
    gt_free = p.add_mutually_exclusive_group()
    gt_free.add_argument(
        "--fixed-threshold", type=float, metavar="T", help="also score this GT-free threshold"
    )
    gt_free.add_argument(
        "--auto-threshold",
        action="store_true",
        help="also score Otsu's threshold of the CAM values (chosen without ground truth, as evaluate.threshold: auto)",
    )
    p.add_argument("--out", type=Path, metavar="DIR", help="write cam_eval.json and threshold_curve.png here")
    p.add_argument("--mean", choices=list(MEAN_CHOICES), default="all", help="mIoU mean convention")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=_run_eval_cams)

    p = subparsers.add_parser(
        "import-cams",
        help="convert IRN or PSA/SEAM/TransCAM .npy CAMs to .npz",
        description=(
            "Convert IRN or PSA/SEAM/TransCAM pickled .npy CAM dumps to the pickle-free wsss .npz "
            "format. Reading them unpickles the "
            "files, which can execute code, so --trust-pickle is required."
        ),
    )
    p.add_argument(
        "--format", choices=CAM_DUMP_FORMATS, required=True, dest="fmt", help="irn or psa (PSA/SEAM/TransCAM)"
    )
    p.add_argument("--src", type=Path, required=True, metavar="DIR", help="folder of <name>.npy dumps")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for <name>.npz files")
    p.add_argument(
        "--num-classes",
        type=_num_classes_arg,
        default=21,
        metavar="N",
        help="classes incl. background, to check PSA keys (default 21, VOC)",
    )
    p.add_argument("--trust-pickle", action="store_true", help="allow unpickling (only for files you trust)")
    p.add_argument("--overwrite", action="store_true", help="re-convert files that already exist")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=_run_import_cams)


def _run_evaluate(args: argparse.Namespace) -> int:
    from wsss.eval.metrics import format_table
    from wsss.eval.runner import evaluate_label_dir, read_name_list

    num_classes, class_names = _classes(args)
    names = read_name_list(args.list_file)
    result = evaluate_label_dir(
        args.pred,
        args.gt,
        names,
        num_classes,
        class_names,
        mean=args.mean,
        pred_ignore_as=0 if args.uncertain == "background" else None,
        progress=not args.no_progress,
    )
    print(f"{result['num_images']} images, {args.pred} vs {args.gt}")
    print(format_table(result))
    if args.out is not None:
        write_json(args.out, result)
        print(f"wrote {args.out}")
    return 0


def _sweep_thresholds(values: list[float]) -> list[float]:
    from wsss.eval.sweep import threshold_range

    try:
        return threshold_range(*values)
    except ValueError as exc:
        raise ConfigError(f"--thresholds {' '.join(f'{v:g}' for v in values)}: {exc}") from exc


def _run_eval_cams(args: argparse.Namespace) -> int:
    from wsss.eval.runner import evaluate_cam_dir, read_name_list

    num_classes, class_names = _classes(args)
    thresholds = _sweep_thresholds(args.thresholds)
    names = read_name_list(args.list_file)
    fixed = args.fixed_threshold
    if args.auto_threshold:
        from wsss.eval.cam_stats import cam_value_stats, otsu_threshold

        labels = class_names or ["background", *(f"class {k}" for k in range(1, num_classes))]
        fixed = otsu_threshold(cam_value_stats(args.cams, names, labels)["pixel_max_histogram"])
        print(f"auto threshold (Otsu on the CAM values, no ground truth): {fixed:g}")
    result = evaluate_cam_dir(
        args.cams,
        args.gt,
        names,
        num_classes,
        thresholds,
        fixed_threshold=fixed,
        class_names=class_names,
        mean=args.mean,
        progress=not args.no_progress,
    )
    _print_cam_result(result)
    if args.out is not None:
        from wsss.eval.plot import plot_threshold_curve  # matplotlib only when a picture is wanted

        write_json(args.out / "cam_eval.json", result)
        sweep, oracle, fixed = result["sweep"], result["oracle"], result["fixed"]
        plot_threshold_curve(
            sweep["thresholds"],
            sweep["miou"],
            args.out / "threshold_curve.png",
            best=(oracle["threshold"], oracle["miou"]) if oracle and oracle["miou"] is not None else None,
            fixed=(fixed["threshold"], fixed["miou"]) if fixed and fixed["miou"] is not None else None,
            title=f"CAM mIoU vs. background threshold ({result['num_images']} images)",
        )
        print(f"wrote {args.out / 'cam_eval.json'} and {args.out / 'threshold_curve.png'}")
    return 0


def _print_cam_result(result: dict[str, Any]) -> None:
    from wsss.eval.metrics import format_table

    sweep = result["sweep"]
    n_thr = len(sweep["thresholds"])
    print(f"{result['num_images']} images, CAMs normalised '{result['norm']}', {n_thr} thresholds")
    oracle = result["oracle"]
    if oracle is None:
        print("no scorable pixels: every ground-truth pixel is ignore (255)")
        return
    print(f"best threshold {oracle['threshold']:g}: mIoU {100 * oracle['miou']:.2f}  [{oracle['label']}]")
    print(format_table(oracle))
    fixed = result["fixed"]
    if fixed is not None:
        miou = "-" if fixed["miou"] is None else f"{100 * fixed['miou']:.2f}"
        print(f"\nthreshold {fixed['threshold']:g}: mIoU {miou}  [{fixed['label']}]")
        print(format_table(fixed))


def _run_import_cams(args: argparse.Namespace) -> int:
    from wsss.cams.importers import import_dir

    counts = import_dir(
        args.fmt,
        args.src,
        args.out,
        num_classes=args.num_classes,
        trust=args.trust_pickle,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    print(
        f"converted {counts['converted']} files, kept {counts['skipped']} already converted, into {args.out}"
    )
    return 0
