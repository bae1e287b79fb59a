"""Command ``wsss data``: make, convert and check datasets (thin wrappers over ``wsss.data``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from wsss.errors import ConfigError, DataError, WsssError
from wsss.registry import DATASETS

_VOC_LAYOUT = ("voc", "synth")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``data`` and its sub-commands to the ``wsss`` parser."""
    data = subparsers.add_parser(
        "data", help="make, convert and check datasets", description="Make, convert and check datasets."
    )
    sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    sub.required = True

    p = sub.add_parser("synth", help="generate the embedded synthetic dataset (VOC layout)")
    p.add_argument("--root", type=Path, required=True, metavar="DIR", help="output folder")
    p.add_argument("--num-classes", type=int, default=6, metavar="K", help="foreground classes (default 6)")
    p.add_argument("--num-train", type=int, default=800, metavar="N", help="training images (default 800)")
    p.add_argument("--num-val", type=int, default=200, metavar="N", help="validation images (default 200)")
    p.add_argument("--size", type=int, default=96, metavar="PX", help="image side in pixels (default 96)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace a dataset made with other parameters")
    p.set_defaults(func=_run_synth)

    p = sub.add_parser("sbd", help="convert SBD .mat files to SegmentationClassAug PNGs and train_aug.txt")
    p.add_argument("--sbd", type=Path, required=True, metavar="DIR", help="SBD folder (benchmark_RELEASE)")
    p.add_argument("--voc", type=Path, required=True, metavar="DIR", help="VOC2012 folder (written into)")
    _add_converter_args(p, 10582, "expected train_aug size (10582)", "accept any train_aug size")
    p.set_defaults(func=_run_sbd)

    p = sub.add_parser("coco", help="convert a COCO instances JSON to 81-class PNG masks, lists and labels")
    p.add_argument("--annotations", type=Path, required=True, metavar="JSON", help="instances_<subset>.json")
    p.add_argument("--root", type=Path, required=True, metavar="DIR", help="COCO dataset root (written into)")
    p.add_argument(
        "--subset", metavar="NAME", help="image folder name, e.g. train2014 (default: from JSON name)"
    )
    _add_converter_args(
        p, None, "expected labelled images (default 82081/40137)", "accept any number of labelled images"
    )
    p.set_defaults(func=_run_coco)

    p = sub.add_parser(
        "acdc",
        help="convert ACDC cardiac MRI NIfTI volumes to per-slice PNGs, split lists and tags",
        description=(
            "Write every ground-truth frame of an ACDC download as 2-D slice PNGs in the VOC layout that "
            "the 'acdc' dataset reads (needs nibabel: pip install wsss[acdc]). Splits are by patient."
        ),
    )
    p.add_argument(
        "--src", type=Path, required=True, metavar="DIR", help="ACDC folder (database/ or training/)"
    )
    p.add_argument("--root", type=Path, required=True, metavar="DIR", help="output dataset root")
    p.add_argument("--size", type=int, metavar="PX", help="resize slices to PX x PX (default: keep)")
    p.add_argument(
        "--val-every",
        type=int,
        default=5,
        metavar="N",
        help="every N-th patient number is val (default 5; 0: no val split)",
    )
    p.add_argument(
        "--val-patients",
        nargs="+",
        metavar="ID",
        help="the val patients (e.g. patient005); overrides --val-every",
    )
    p.add_argument("--skip-empty", action="store_true", help="leave out slices with no RV, Myo or LV pixel")
    p.add_argument("--overwrite", action="store_true", help="rewrite slices that already exist")
    p.set_defaults(func=_run_acdc)

    p = sub.add_parser(
        "tags", help="write image-level labels (from masks, XML or tags) as a pickle-free .npz"
    )
    _add_dataset_args(p)
    p.add_argument(
        "--source",
        choices=("auto", "masks", "xml", "file"),
        default="auto",
        help="where labels come from (VOC layout only; default: labels file, then masks, then XML)",
    )
    p.add_argument("--out", type=Path, required=True, metavar="NPZ", help="output labels file (.npz)")
    p.set_defaults(func=_run_tags)

    p = sub.add_parser(
        "folder",
        help="rewrite a dataset as a users' folder (images, classes.txt, tags.csv, masks, split lists)",
        description=(
            "Rewrite any dataset wsss loads as a 'folder' dataset (README: 'Bringing your own data'): images "
            "copied unchanged, tags.csv from the image-level labels, grey index masks, split lists."
        ),
    )
    _add_dataset_args(p)
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder (new or empty)")
    p.add_argument(
        "--list",
        action="append",
        default=[],
        dest="lists",
        metavar="NAME",
        help="also write NAME.txt listing the source's split NAME (repeatable; its images must be exported)",
    )
    p.add_argument("--no-masks", action="store_true", help="write no masks, as for a user without them")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier export in --out")
    p.set_defaults(func=_run_folder)

    p = sub.add_parser("check", help="load a dataset, count images and classes, and validate every file")
    _add_dataset_args(p)
    p.set_defaults(func=_run_check)

    for action in sub.choices.values():
        action.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _add_converter_args(
    p: argparse.ArgumentParser, expected: int | None, expected_help: str, no_check_help: str
) -> None:
    """The count check and overwrite options every converter (sbd, coco) shares."""
    p.add_argument("--expected", type=int, default=expected, metavar="N", help=expected_help)
    p.add_argument("--no-count-check", action="store_true", help=no_check_help)
    p.add_argument("--overwrite", action="store_true", help="rewrite masks that already exist")


def _converter_options(args: argparse.Namespace) -> dict[str, Any]:
    """Those options (and ``--no-progress``) as the converters' keyword arguments."""
    return {
        "expected_count": args.expected,
        "check_counts": not args.no_count_check,
        "overwrite": args.overwrite,
        "progress": not args.no_progress,
    }


def _add_dataset_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dataset", default="voc", metavar="NAME", help="dataset type: voc, synth, coco, folder, acdc"
    )
    p.add_argument("--root", type=Path, required=True, metavar="DIR", help="dataset root")
    p.add_argument(
        "--split", default=None, metavar="NAME", help="split name or list file (default per dataset)"
    )
    p.add_argument(
        "--labels-file", type=Path, metavar="FILE", help="image-level labels (.npy/.npz/.csv/.json)"
    )
    p.add_argument("--mask-dir", metavar="DIR", help="mask folder (e.g. SegmentationClassAug)")


def _build_dataset(args: argparse.Namespace, with_masks: bool, **extra: Any) -> Any:
    kwargs: dict[str, Any] = {"root": args.root, "labels_file": args.labels_file, "with_masks": with_masks}
    if args.split is not None:
        kwargs["split"] = args.split
    if args.mask_dir is not None:
        kwargs["mask_dir"] = args.mask_dir
    return DATASETS.build(args.dataset, where="--dataset", **kwargs, **extra)


def _print_json(obj: dict[str, Any]) -> None:
    print(json.dumps(obj, indent=2, default=str))


def _run_synth(args: argparse.Namespace) -> int:
    try:
        from wsss.data.synth import generate_synth
    except ModuleNotFoundError as exc:
        raise WsssError("this wsss installation has no synthetic-data generator (wsss.data.synth)") from exc
    summary = generate_synth(
        args.root,
        num_classes=args.num_classes,
        num_train=args.num_train,
        num_val=args.num_val,
        size=args.size,
        seed=args.seed,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    _print_json(summary)
    return 0


def _run_sbd(args: argparse.Namespace) -> int:
    from wsss.data.sbd import convert_sbd

    _print_json(convert_sbd(args.sbd, args.voc, **_converter_options(args)))
    return 0


def _run_coco(args: argparse.Namespace) -> int:
    from wsss.data.coco import convert_coco

    _print_json(convert_coco(args.annotations, args.root, subset=args.subset, **_converter_options(args)))
    return 0


def _run_acdc(args: argparse.Namespace) -> int:
    from wsss.data.acdc import export_acdc_slices

    summary = export_acdc_slices(
        args.src,
        args.root,
        size=args.size,
        val_every=args.val_every or None,
        val_patients=args.val_patients,
        skip_empty=args.skip_empty,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    _print_json(summary)
    return 0


def _run_tags(args: argparse.Namespace) -> int:
    from wsss.data.labels import write_labels

    extra: dict[str, Any] = {}
    if args.source != "auto":
        if args.dataset not in _VOC_LAYOUT:
            raise ConfigError(
                f"--source {args.source} applies to VOC-layout datasets ({', '.join(_VOC_LAYOUT)})"
            )
        extra["label_source"] = args.source
    ds = _build_dataset(args, with_masks=False, **extra)
    write_labels(args.out, dict(zip(ds.names, ds.labels)), ds.class_names)
    counts = ds.class_image_counts()
    print(f"wrote labels of {len(ds)} images ({ds.num_classes - 1} classes) to {args.out}")
    print(_class_table(ds.class_names, counts))
    return 0


def _run_folder(args: argparse.Namespace) -> int:
    from wsss.data.export_folder import export_folder, split_names

    if len(set(args.lists)) != len(args.lists):
        raise ConfigError(f"--list names a split twice: {', '.join(args.lists)}")
    ds = _build_dataset(args, with_masks=not args.no_masks)
    # Only a layout split_names does not know is built, and it may need these.
    extra: dict[str, Any] = {"labels_file": args.labels_file}
    if args.mask_dir is not None:
        extra["mask_dir"] = args.mask_dir
    splits = {name: split_names(args.dataset, args.root, name, **extra) for name in args.lists}
    summary = export_folder(
        ds,
        args.out,
        splits=splits,
        with_masks=not args.no_masks,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    _print_json(summary)
    return 0


def _class_table(class_names: tuple[str, ...], counts: Any) -> str:
    width = max(len(c) for c in class_names[1:])
    return "\n".join(
        f"  {i:>3}  {c:<{width}}  {int(n):>7}" for i, (c, n) in enumerate(zip(class_names[1:], counts), 1)
    )


def _size_line(sizes: list[tuple[int, int]]) -> str:
    """Smallest, median and largest image (by area), W×H as everywhere in wsss."""
    by_area = sorted(sizes, key=lambda hw: hw[0] * hw[1])
    pick = [by_area[0], by_area[len(by_area) // 2], by_area[-1]]
    smallest, median, largest = (f"{w}×{h}" for h, w in pick)
    return f"image sizes (W×H): smallest {smallest}, median {median}, largest {largest}"


def _run_check(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from wsss.data.diagnostics import tag_report

    ds = _build_dataset(args, with_masks=True)
    errors: list[str] = []
    sizes: list[tuple[int, int]] = []
    for i in tqdm(range(len(ds)), desc="checking", unit="img", disable=args.no_progress):
        try:
            sizes.append(tuple(ds[i]["image"].shape[-2:]))
        except DataError as exc:
            errors.append(str(exc))
    report = tag_report(ds.labels, ds.class_names[1:])
    print(
        f"{ds.source}: {len(ds)} images, {ds.num_classes} classes incl. background, masks: "
        f"{'yes' if ds.has_masks else 'no'}"
    )
    if sizes:
        print(_size_line(sizes))
    print("images per class (tagged, share of all images):")
    print(report.table())
    if report.pairs:
        print("tags that come together most:")
        print("\n".join(report.pair_lines()))
    for warning in report.warnings:
        print(f"warning: {warning}")
    if report.untagged:
        print(f"note: {report.untagged} images have no foreground tag (background only)")
    if errors:
        shown = "\n  ".join(errors[:10])
        more = f"\n  … and {len(errors) - 10} more" if len(errors) > 10 else ""
        raise DataError(f"{len(errors)} of {len(ds)} images failed the check:\n  {shown}{more}")
    print("all files OK")
    return 0
