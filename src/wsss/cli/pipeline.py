"""Commands that run recipes: ``recipes``, ``run``, ``demo`` and one command per stage."""

from __future__ import annotations

import argparse
from pathlib import Path

from wsss.errors import ConfigError
from wsss.registry import suggest

# The stages of wsss.pipeline.STAGES, in pipeline order; repeated here so that building the
# parser does not import torch (a test keeps the two equal).
STAGE_NAMES = (
    "pretrain-cls",
    "train-cls",
    "make-cams",
    "eval-cams",
    "make-labels",
    "train-uns",
    "make-uns-cams",
    "train-affinity",
    "random-walk",
    "train-seg",
    "predict",
    "cycle-seg",
)

# The eval-cams stage runs through ``wsss run --stages eval-cams``; the ``eval-cams`` command
# itself (wsss.cli.evaluate) scores any folder of CAM files.
# stage command: (one line for ``wsss --help``, the description ``wsss STAGE --help`` shows)
STAGE_HELP = {
    "pretrain-cls": (
        "train the first classifier of a two-stage method",
        "Train the recipe's pretrain classifier (the first of two, e.g. AMR's spotlight branch); "
        "train-cls reads it with classifier.init_from: pretrain.",
    ),
    "train-cls": (
        "train the CAM classifier on image-level tags",
        "Train the CAM classifier on image-level tags.",
    ),
    "make-cams": (
        "write multi-scale + flip CAM files",
        "Write multi-scale + flip CAM files (sharded, resumable).",
    ),
    "make-labels": (
        "turn CAM files into pseudo-labels and score them",
        "Turn CAM files into pseudo-labels (threshold / confident / PSA alpha, + CRF) and score them.",
    ),
    "train-uns": (
        "train SPU's noise-suppression network on the labels",
        "Train SPU's UNS network (label-conditioned, two heads, uncertainty-rectified loss) on the "
        "confident labels of make-labels.",
    ),
    "make-uns-cams": (
        "write the UNS network's maps, their labels and scores",
        "Write the UNS network's maps as CAM files (uns-cams/), their confident labels (uns-labels/) "
        "and the scores of both; the affinity net and the walk then read these.",
    ),
    "train-affinity": (
        "train AffinityNet or IRN on the confident labels",
        "Train PSA's AffinityNet (or IRN) on the confident labels.",
    ),
    "random-walk": (
        "propagate CAMs with affinities into pseudo-masks",
        "Propagate CAMs with AffinityNet affinities (sparse walk, + CRF) into pseudo-masks.",
    ),
    "train-seg": (
        "train a segmentation network on the pseudo-masks",
        "Train a segmentation network on the pseudo-masks (or on ground truth: the upper bound).",
    ),
    "predict": (
        "segment the val split and score it per class",
        "Multi-scale + flip (+ CRF) segmentation of the val split, scored per class.",
    ),
    "cycle-seg": (
        "PMM's cyclic round: retrain on round-1 masks",
        "PMM's cyclic round: round-1 masks on train, a fresh model trained on them, scored on val.",
    ),
}

# Map stages that split their images with --shard I/N (they call StageContext.my_indices).
SHARDED_STAGES = ("make-cams", "make-labels", "make-uns-cams", "random-walk", "predict")


def _parse_shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    from wsss.engine import parse_shard

    return parse_shard(text)


def add_progress_option(p: argparse.ArgumentParser) -> None:
    """``--no-progress`` (``args.progress``: False, or None to follow the terminal)."""
    p.add_argument(
        "--no-progress",
        dest="progress",
        action="store_const",
        const=False,
        default=None,
        help="no progress bars (they are off anyway when stderr is not a terminal, e.g. in a log file)",
    )


def _add_run_options(p: argparse.ArgumentParser, *, out_required: bool, shard: bool) -> None:
    p.add_argument("recipe", help="shipped recipe name (see 'wsss recipes') or a YAML file")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe value, e.g. --set classifier.epochs=5 (repeatable)",
    )
    p.add_argument("--out", required=out_required, type=Path, help="run directory")
    p.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N (default: the recipe's)")
    add_progress_option(p)
    if shard:
        p.add_argument(
            "--shard",
            default=None,
            metavar="I/N",
            help=f"process only shard I of N of the images (map stages: {', '.join(SHARDED_STAGES)})",
        )


def parse_stages(text: str | None) -> list[str] | None:
    """``--stages a,b`` as a list; an unknown name fails at once, before the recipe loads."""
    if text is None:
        return None
    names = [s.strip() for s in text.split(",") if s.strip()]
    for name in names:
        if name not in STAGE_NAMES:
            raise ConfigError(
                f"--stages: unknown stage '{name}'{suggest(name, STAGE_NAMES)}; "
                f"valid stages: {', '.join(STAGE_NAMES)}"
            )
    return names


def _is_main() -> bool:
    from wsss.engine import is_main

    return is_main()


def _default_out(recipe_ref: str) -> Path:
    return Path("runs") / Path(recipe_ref).with_suffix("").as_posix().replace("/", "-")


def cmd_recipes(args: argparse.Namespace) -> int:
    from wsss.config import load_recipe, recipe_names, recipe_yaml

    if args.show:
        recipe = load_recipe(args.show, args.overrides)
        print(f"# {args.show}, fully resolved (base recipes merged, every default filled in)")
        print(recipe_yaml(recipe), end="")
        return 0
    for name in recipe_names():
        r = load_recipe(name)
        print(f"{name:28s} {r.description}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    stages = parse_stages(args.stages)
    from wsss.config import load_recipe
    from wsss.pipeline import run_pipeline

    recipe = load_recipe(args.recipe, args.overrides)
    out = args.out or _default_out(args.recipe)
    record = run_pipeline(
        recipe, out, stages=stages, device=args.device, shard=_parse_shard(args.shard), progress=args.progress
    )
    if not _is_main():
        return 0
    from wsss.report import REPORT_NAME, summary_lines

    print(f"run directory: {out}")
    for name, info in record.get("stages", {}).items():
        print(f"  {name:12s} {info['seconds']:8.1f} s")
    for line in summary_lines(record):
        print(line)
    if (out / REPORT_NAME).is_file():
        print(f"report: {out / REPORT_NAME}")
    return 0


def _stage_command(stage: str):
    def cmd(args: argparse.Namespace) -> int:
        from wsss.config import load_recipe
        from wsss.pipeline import run_pipeline

        recipe = load_recipe(args.recipe, args.overrides)
        shard = _parse_shard(getattr(args, "shard", None))
        run_pipeline(
            recipe, args.out, stages=[stage], device=args.device, shard=shard, progress=args.progress
        )
        if _is_main():
            print(f"{stage}: done in {args.out}")
        return 0

    return cmd


def cmd_demo(args: argparse.Namespace) -> int:
    from wsss.demo import run_demo

    run_demo(
        out=args.out,
        device=args.device,
        quick=args.quick,
        overrides=args.overrides,
        with_upper_bound=args.with_upper_bound,
        progress=args.progress,
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="the whole BNR pipeline on the embedded dataset",
        description="Generate the embedded dataset and run the whole BNR pipeline on it (CPU, 5 minutes).",
    )
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="run directory (default runs/demo)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--quick", action="store_true", help="tiny dataset and one epoch (smoke test)")
    p.add_argument(
        "--with-upper-bound",
        action="store_true",
        help="also train the segmentation model on ground truth (the fully supervised upper bound)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a value of the demo recipe",
    )
    add_progress_option(p)
    p.set_defaults(func=cmd_demo, resumable=True)

    p = sub.add_parser(
        "run",
        help="run a recipe's stages in one run directory",
        description="Run a recipe's stages in one run directory; finished work is skipped, the rest resumed.",
    )
    _add_run_options(p, out_required=False, shard=True)
    p.add_argument(
        "--stages",
        default=None,
        metavar="A,B,...",
        help=f"comma-separated subset of the recipe's stages, in order; valid: {', '.join(STAGE_NAMES)}",
    )
    p.set_defaults(func=cmd_run, resumable=True)

    p = sub.add_parser(
        "recipes",
        help="list the shipped recipes, or show one resolved",
        description="List the shipped recipes, or show one fully resolved.",
    )
    p.add_argument(
        "--show",
        metavar="RECIPE",
        default=None,
        help="print this recipe (shipped name or YAML file) with every setting resolved, as a run would use it",
    )
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=cmd_recipes)

    for stage, (text, description) in STAGE_HELP.items():
        p = sub.add_parser(stage, help=text, description=description)
        _add_run_options(p, out_required=True, shard=stage in SHARDED_STAGES)
        p.set_defaults(func=_stage_command(stage), resumable=True)
