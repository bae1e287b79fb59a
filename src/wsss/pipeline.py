"""Run a recipe's stages in order in one run directory.

A stage whose outputs are complete is skipped; a partial one resumes (each stage is written
to make that safe). ``run.json`` records the resolved recipe, versions, the git commit, and
every stage's timing and measured numbers; ``recipe.yaml`` is the resolved recipe itself.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import platform
import subprocess
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import yaml

import wsss
from wsss.config import Recipe, save_recipe, to_dict
from wsss.config.schema import ClassifierConfig
from wsss.data.base import TaggedImageDataset, check_file_headers
from wsss.data.diagnostics import tag_report
from wsss.engine import barrier, init_distributed, resolve_device, setup_run_logging
from wsss.engine.runlock import RunLock
from wsss.errors import ConfigError, WsssError
from wsss.files import remove_stale_temp_files, write_json
from wsss.interrupt import RunInterrupted, signal_name, signal_of
from wsss.models.backbones.base import TORCHVISION
from wsss.models.backbones.mobilenet import OFFLINE, OFFLINE_MISSING, offline_mobilenet_v2_weights
from wsss.refine.crf import get_preset
from wsss.refine.label_generators import check_label_config
from wsss.registry import (
    AFFINITY_MODELS,
    BACKBONE_INSERTS,
    BACKBONES,
    CAM_EXTRACTORS,
    CAM_MODELS,
    CAM_TRANSFORMS,
    DATASETS,
    LABEL_GENERATORS,
    LOSSES,
    METHODS,
    SEG_MODELS,
    check_kwargs,
    suggest,
)
from wsss.report import write_report
from wsss.seg.inference import get_protocol
from wsss.stages import (
    cycle_seg,
    eval_cams,
    make_cams,
    make_labels,
    make_uns_cams,
    predict,
    pretrain_cls,
    random_walk,
    train_affinity,
    train_cls,
    train_seg,
    train_uns,
)
from wsss.stages.context import StageContext
from wsss.stages.train_cls import PRETRAIN, heat_mask_folder, missing_pretrain, null_section
from wsss.threads import describe, thread_settings

PROGRESS_FROM = 1000  # images in a split from which the data check shows a progress bar
STAGES: dict[str, ModuleType] = {
    m.NAME: m
    for m in (
        pretrain_cls,
        train_cls,
        make_cams,
        eval_cams,
        make_labels,
        train_uns,
        make_uns_cams,
        train_affinity,
        random_walk,
        train_seg,
        predict,
        cycle_seg,
    )
}


def check_stages(names: list[str]) -> None:
    for name in names:
        if name not in STAGES:
            raise ConfigError(f"unknown stage '{name}'{suggest(name, STAGES)}; stages: {', '.join(STAGES)}")


def _classifier_components(c: ClassifierConfig | None, section: str) -> list[tuple]:
    """(registry, name, key, keyword arguments, their key) a classifier section names, including a
    backbone insert passed in ``model_args`` or ``model_args.backbone_args``."""
    if c is None:
        raise ConfigError(null_section(section))
    found = [
        (CAM_MODELS, c.model, f"{section}.model", c.model_args, f"{section}.model_args"),
        (METHODS, c.method, f"{section}.method", c.method_args, f"{section}.method_args"),
        (BACKBONES, c.backbone, f"{section}.backbone", {}, ""),
    ]
    backbone_args = c.model_args.get("backbone_args") or {}
    for args, key in ((c.model_args, "model_args"), (backbone_args, "model_args.backbone_args")):
        if isinstance(args, dict) and isinstance(args.get("insert"), str):
            where = f"{section}.{key}"
            found.append(
                (
                    BACKBONE_INSERTS,
                    args["insert"],
                    f"{where}.insert",
                    args.get("insert_args") or {},
                    f"{where}.insert_args",
                )
            )
    return found


def check_components(recipe: Recipe, names: list[str]) -> None:
    """Fail before any work when a stage to run names an unknown component (typos cost hours)."""
    a, sg = recipe.affinity, recipe.segmentation
    # (registry, name, recipe key, keyword arguments the recipe passes on, their key)
    seg = [
        (SEG_MODELS, sg.model, "segmentation.model", sg.model_args, "segmentation.model_args"),
        (BACKBONES, sg.backbone, "segmentation.backbone", {}, ""),
        (LOSSES, sg.loss, "segmentation.loss", sg.loss_args, "segmentation.loss_args"),
    ]
    cycle = [
        *seg[:2],
        (
            LOSSES,
            sg.cycle_loss,
            "segmentation.cycle_loss",
            sg.cycle_loss_args,
            "segmentation.cycle_loss_args",
        ),
    ]
    wanted = {
        "train-cls": _classifier_components(recipe.classifier, "classifier"),
        "pretrain-cls": _classifier_components(recipe.pretrain, PRETRAIN) if "pretrain-cls" in names else [],
        "make-cams": [
            (
                CAM_EXTRACTORS,
                recipe.cams.extractor,
                "cams.extractor",
                recipe.cams.extractor_args,
                "cams.extractor_args",
            )
        ],
        "make-labels": [
            (LABEL_GENERATORS, recipe.labels.mode, "labels.mode", {}, ""),  # + check_label_config
            *(
                [
                    (
                        CAM_TRANSFORMS,
                        recipe.labels.cam_transform,
                        "labels.cam_transform",
                        recipe.labels.cam_transform_args,
                        "labels.cam_transform_args",
                    )
                ]
                if recipe.labels.cam_transform is not None
                else []
            ),
        ],
        "train-affinity": [
            (AFFINITY_MODELS, a.model, "affinity.model", a.model_args, "affinity.model_args"),
            (BACKBONES, a.backbone, "affinity.backbone", {}, ""),
        ],
        "train-seg": seg,
        "cycle-seg": cycle,
    }
    if recipe.uns is not None:
        u = recipe.uns
        wanted["train-uns"] = [
            (BACKBONES, u.backbone, "uns.backbone", {}, ""),
            (LOSSES, u.loss, "uns.loss", u.loss_args, "uns.loss_args"),
        ]
        wanted["make-uns-cams"] = [(LABEL_GENERATORS, u.labels.mode, "uns.labels.mode", {}, "")]
    elif {"train-uns", "make-uns-cams"} & set(names):
        raise ConfigError(
            "stages train-uns and make-uns-cams need the recipe's 'uns' section (SPU's noise suppression); "
            "add one (see synth/spu-nano) or drop those stages"
        )
    # named settings outside the registries: CRF presets and segmentation test protocols
    named = {
        "make-labels": [(get_preset, recipe.labels.crf, "labels.crf")],
        "random-walk": [(get_preset, recipe.random_walk.crf, "random_walk.crf")],
        "predict": [
            (get_protocol, recipe.predict.protocol, "predict.protocol"),
            (get_preset, recipe.predict.crf, "predict.crf"),
        ],
    }
    named["cycle-seg"] = named["predict"]  # the cyclic round predicts with the same settings
    DATASETS.get(recipe.data.dataset, "data.dataset")
    for name in names:
        for registry, value, where, kwargs, kwargs_where in wanted.get(name, []):
            builder = registry.get(value, where)
            if kwargs:
                check_kwargs(builder, kwargs, kwargs_where)
        for lookup, value, where in named.get(name, []):
            if value is None:
                continue
            try:
                lookup(value)
            except ConfigError as exc:
                raise ConfigError(f"{where}: {exc}") from None
    if "make-labels" in names:  # the generator's mode_args and its own rules (e.g. PPG without cvs)
        check_label_config(dataclasses.asdict(recipe.labels))
    check_label_splits(recipe)


def label_readers(recipe: Recipe) -> dict[str, tuple[str, list[str]]]:
    """Stage -> (the labels setting whose folder it reads, the splits it reads from there)."""
    maps, d = recipe.cams.splits, recipe.data
    refined = "make-uns-cams" in recipe.stages
    readers: dict[str, tuple[str, list[str]]] = {
        "train-affinity": ("uns.labels" if refined else "labels", [recipe.affinity.split or maps[0]]),
        "train-uns": ("labels", [maps[0]]),
    }
    if recipe.segmentation.labels == "pseudo" and "random-walk" not in recipe.stages:
        readers["train-seg"] = ("labels", [d.train_split])
    return readers


def check_label_splits(recipe: Recipe) -> None:
    """``labels.splits`` (and ``uns.labels.splits``) name CAM splits and cover what later stages read."""
    configs = {"labels": recipe.labels, **({"uns.labels": recipe.uns.labels} if recipe.uns else {})}
    for key, cfg in configs.items():
        if cfg.splits is None:
            continue
        if not cfg.splits:
            raise ConfigError(f"{key}.splits is empty; name at least one split, or null for every CAM split")
        outside = [s for s in cfg.splits if s not in recipe.cams.splits]
        if outside:
            raise ConfigError(
                f"{key}.splits names {outside}, which get no CAMs (cams.splits: {recipe.cams.splits}); "
                "labels come from CAM files: add the split to cams.splits or drop it here"
            )
    for stage, (key, splits) in label_readers(recipe).items():
        chosen = configs[key].splits if key in configs else None
        if stage in recipe.stages and chosen is not None and not set(splits) <= set(chosen):
            raise ConfigError(
                f"{key}.splits is {chosen}, but stage {stage} reads the labels of split(s) {splits}; "
                f"add them to {key}.splits (or set it to null)"
            )


def _weight_files(recipe: Recipe, stage: str) -> list[tuple[str, str | None]]:
    """(recipe key, value) of the weight files ``stage`` reads when it trains."""
    seg = [("segmentation.pretrained", recipe.segmentation.pretrained)]
    if recipe.segmentation.init != "imagenet":
        seg.append(("segmentation.init", recipe.segmentation.init))
    pretrain = [("pretrain.pretrained", recipe.pretrain.pretrained)] if recipe.pretrain is not None else []
    return {
        "pretrain-cls": pretrain,
        "train-cls": [("classifier.pretrained", recipe.classifier.pretrained)],
        "train-affinity": [("affinity.pretrained", recipe.affinity.pretrained)],
        "train-uns": [("uns.pretrained", recipe.uns.pretrained)] if recipe.uns is not None else [],
        "train-seg": seg,
        "cycle-seg": seg,
    }.get(stage, [])


def check_weight_files(recipe: Recipe, stages: list[str]) -> None:
    """Fail before any work when a stage still to run needs a weight file that is not there:
    otherwise a VOC run would stop at the segmentation stage, hours in."""
    for stage in stages:
        if stage == "train-cls" and recipe.classifier.crops == "heat":  # phase-A rough masks too
            heat_mask_folder(recipe.classifier)
        for key, value in _weight_files(recipe, stage):
            if value is None or value == TORCHVISION:
                continue
            if value == OFFLINE:
                if offline_mobilenet_v2_weights() is None:
                    raise ConfigError(
                        f"{key}: {OFFLINE_MISSING} (scripts/install.sh installs it); or --set {key}=PATH "
                        f"to a weight file, or {key}=null to train from scratch"
                    )
            elif not Path(value).is_file():
                raise ConfigError(
                    f"{key}: weight file {value} not found (stage {stage}); put it there, or "
                    f"--set {key}=PATH (see the README for where each file comes from)"
                )


def check_pretrain_order(ctx: StageContext, stages: list[str]) -> None:
    """Fail before any work when ``train-cls`` is to start from the pretrain stage's weights but they
    are neither in the run directory nor made by an earlier stage of this invocation: users of AMR's
    released code trained stage 2 on a random spotlight branch because its README skipped stage 1."""
    c = ctx.recipe.classifier
    if c.init_from is None or "train-cls" not in stages or train_cls.is_complete(ctx):
        return
    if ctx.recipe.pretrain is None:
        raise ConfigError(
            f"classifier.init_from is '{c.init_from}' but the recipe has no 'pretrain' section; add one "
            "(the first classifier, trained by stage pretrain-cls) or set classifier.init_from: null"
        )
    before = stages[: stages.index("train-cls")]
    if "pretrain-cls" not in before and not pretrain_cls.is_complete(ctx):
        raise ConfigError(missing_pretrain(ctx))


def stage_splits(recipe: Recipe, stage: str) -> list[str]:
    """The data splits ``stage`` reads (images, tags or masks)."""
    d, maps = recipe.data, recipe.cams.splits
    seg_val = [d.val_split] if recipe.segmentation.select_by_val else []
    splits = {
        "pretrain-cls": [d.train_split],
        "train-cls": [d.train_split],
        "make-cams": maps,
        "eval-cams": [d.seed_eval_split, *maps],
        "make-labels": [*(recipe.labels.splits or maps), d.seed_eval_split],
        "train-affinity": [recipe.affinity.split or maps[0]],
        "train-uns": [maps[0]],
        "make-uns-cams": [*maps, d.seed_eval_split],
        "random-walk": [*maps, d.seed_eval_split],
        "train-seg": [d.train_split, *seg_val],
        "predict": recipe.predict.splits,
        "cycle-seg": [d.train_split, *recipe.predict.splits],
    }
    return list(dict.fromkeys(splits.get(stage, [])))


def splits_to_check(ctx: StageContext, stages: list[str]) -> list[str]:
    """The splits that stages still to run will read (a finished stage reads nothing)."""
    wanted: dict[str, None] = {}
    for name in stages:
        splits = stage_splits(ctx.recipe, name)
        if not set(splits) <= set(wanted) and not STAGES[name].is_complete(ctx):
            wanted.update(dict.fromkeys(splits))
    return list(wanted)


def check_data(ctx: StageContext, stages: list[str]) -> None:
    """Fail before any work on what the data files show cheaply: list entries naming missing
    files, unknown tags, unreadable headers, a mask whose size differs from its image's.
    Otherwise a bad mask stops a VOC run at eval-cams, after hours of training and CAMs."""
    t0, count = time.time(), 0
    splits = splits_to_check(ctx, stages)
    for split in splits:
        ds = ctx.dataset(split)  # cached: the stages reuse it
        show = ctx.show_progress and len(ds) >= PROGRESS_FROM
        check_file_headers(ds, desc=f"check {split}", progress=show)
        count += len(ds)
    if splits:
        ctx.logger.info(
            "data check: %d images of split(s) %s, sizes and files OK (%.1f s)",
            count,
            ", ".join(splits),
            time.time() - t0,
        )
    if ctx.recipe.data.train_split in splits and ctx.dist.is_main:
        log_training_tags(ctx, ctx.dataset(ctx.recipe.data.train_split))


def log_training_tags(ctx: StageContext, ds: TaggedImageDataset) -> None:
    """Log the training split's tag shares, and warn when its tags cannot localise a class."""
    report = tag_report(ds.labels, ds.class_names[1:])
    shares = ", ".join(f"{c} {k} ({100 * share:.0f} %)" for c, k, share in report.shares())
    split = ctx.recipe.data.train_split
    ctx.logger.info("training tags (%s): %d images; per class: %s", split, report.num_images, shares)
    for warning in report.warnings:
        ctx.logger.warning("training tags (%s): %s", split, warning)


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


SPLIT_CHOICES = ("labels.splits", "uns.labels.splits", "predict.splits")
# A recipe section and the run-directory folders of the stages that read it. While none of them exists,
# the section has shaped nothing in that directory, so a change to it (a newer recipe version, or
# settings for a stage added later) is not "another recipe".
SECTION_OUTPUTS: dict[str, tuple[str, ...]] = {
    "pretrain": ("pretrain-cls",),
    "uns": ("train-uns", "uns-cams", "uns-labels"),
    "affinity": ("train-affinity", "pseudo"),
    "random_walk": ("pseudo",),
    "segmentation": ("train-seg", "predictions", "cycle"),
    "predict": ("predictions", "cycle"),
}


def unused_sections(run_dir: Path) -> set[str]:
    """The sections of SECTION_OUTPUTS that no stage has used in ``run_dir`` yet."""
    return {name for name, dirs in SECTION_OUTPUTS.items() if not any((run_dir / d).exists() for d in dirs)}


def _check_same_recipe(run_dir: Path, recipe: Recipe) -> None:
    """Refuse to resume a run directory that was made with different settings."""
    path = run_dir / "recipe.yaml"
    if not path.is_file():
        return
    old = _flatten(yaml.safe_load(path.read_text()) or {})
    new = _flatten(to_dict(recipe))
    # may change between invocations of the same run: what runs, where, and which images a per-image
    # stage covers (each image's output is the same whichever splits are asked for)
    ignore = {"stages", "device", *SPLIT_CHOICES}
    # keys only one side has come from a schema change between versions: not a different recipe
    # the non-finite policy (``*.nonfinite``) says what to do with a bad step, not what a good one
    # computes: switching to ``skip`` after a ``stop`` must resume from the kept checkpoint
    unused = unused_sections(run_dir)
    diff = sorted(
        k
        for k in set(old) & set(new)
        if k not in ignore
        and not k.endswith(".nonfinite")
        and k.split(".")[0] not in unused
        and old[k] != new[k]
    )
    if diff:
        shown = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff[:5])
        raise ConfigError(
            f"run directory {run_dir} was made with a different recipe ({shown}"
            f"{' …' if len(diff) > 5 else ''}); use another --out, or delete the directory to start over"
        )


def _versions() -> dict[str, str | None]:
    import numpy
    import torchvision

    return {
        "wsss": wsss.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": numpy.__version__,
        "cuda": torch.version.cuda,
        "cudnn": str(torch.backends.cudnn.version()) if torch.backends.cudnn.is_available() else None,
    }


def _machine(dev: torch.device) -> dict[str, Any]:
    """What the timings were measured on."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        # the vector instruction set torch's CPU kernels run with: numbers differ between AVX2 and
        # AVX-512 machines (README, Reliability), so a record says which one made them
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    if dev.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(dev)
    return info


def _git_commit() -> str | None:
    try:
        here = Path(wsss.__file__).resolve().parent
        res = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
        return res.stdout.strip() or None if res.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _start_record(path: Path, recipe: Recipe, dev: torch.device, world_size: int) -> dict[str, Any]:
    """The run record: the one in run.json (stages done by earlier invocations), brought up to date."""
    record: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    record.update(
        {
            "recipe": recipe.name,
            "config": to_dict(recipe),
            "versions": _versions(),
            "machine": {**_machine(dev), "threads": thread_settings(recipe)},  # wsss.threads
            "git_commit": _git_commit(),
            "cwd": str(Path.cwd()),  # relative paths in the recipe are relative to this
            "device": str(dev),
            "world_size": world_size,
        }
    )
    record.setdefault("stages", {})
    record.pop("interrupted", None)  # an earlier invocation's: this one resumes it
    return record


def _note_interruption(path: Path, record: dict[str, Any], stage: str | None, signum: int) -> None:
    """Write run.json with the stages finished so far and where the run stopped (a finished
    rerun drops the note)."""
    record["interrupted"] = {
        "stage": stage,
        "signal": signal_name(signum),
        "at": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    with contextlib.suppress(OSError):  # a full disk must not hide the interruption itself
        write_json(path, record)


def run_pipeline(
    recipe: Recipe,
    run_dir: str | Path,
    *,
    stages: list[str] | None = None,
    device: str | None = None,
    shard: tuple[int, int] | None = None,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Run ``stages`` (default: the recipe's) and return the run record (also in run.json).
    ``progress``: progress bars on / off; None shows them only when stderr is a terminal.

    The run directory (or, for a shard, the shard) is locked for the whole call (rank 0 holds the
    lock under DDP). Interrupted (SIGINT, or SIGTERM under ``sigterm_as_interrupt``), it removes
    its temporary files, notes the stage in run.json, releases the lock and raises
    :class:`RunInterrupted`; finished files and checkpoints stay for the rerun to resume from.
    """
    run_dir = Path(run_dir)
    names = stages or recipe.stages
    check_stages(names)
    check_components(recipe, names)
    dist = init_distributed()
    dev = resolve_device(device or recipe.device, local_rank=dist.local_rank if dist.world_size > 1 else None)
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = RunLock(run_dir, shard) if dist.is_main else None
    stale_locks = lock.acquire() if lock is not None else []
    record_path = run_dir / "run.json"
    record: dict[str, Any] | None = None
    current: str | None = None  # the stage under way, for the interruption message
    try:
        _check_same_recipe(run_dir, recipe)
        logger = setup_run_logging(run_dir, "pipeline")
        logger.info(describe(thread_settings(recipe)))  # wsss.threads: the CPU parallelism used
        for holder in stale_locks:
            logger.warning(
                "took over the stale lock %s: its process has ended (%s)", holder.path, holder.describe()
            )
        ctx = StageContext(
            recipe=recipe,
            run_dir=run_dir,
            device=dev,
            dist=dist,
            logger=logger,
            shard=shard,
            progress=progress,
        )
        # before recipe.yaml is written, so that fixing a path with --set does not count as another recipe
        # only training stages read weight files, and their is_complete is a file check (make-cams'
        # would open every CAM file, which the stage loop does anyway)
        check_weight_files(
            recipe, [n for n in names if _weight_files(recipe, n) and not STAGES[n].is_complete(ctx)]
        )
        check_pretrain_order(ctx, names)
        check_data(ctx, names)
        # the sole writer removes every leftover of a killed run; beside other writers (shards,
        # ranks) only those of ended processes on this host
        sole_writer = dist.world_size == 1 and shard is None
        for path in remove_stale_temp_files(run_dir, all_writers=sole_writer):
            logger.info("removed %s, a partial file left by an interrupted run", path)
        record = _start_record(record_path, recipe, dev, dist.world_size)
        if dist.is_main:
            save_recipe(recipe, run_dir / "recipe.yaml")
        for name in names:
            current = name
            stage = STAGES[name]
            if stage.is_complete(ctx):
                logger.info("stage %s: outputs complete, skipped", name)
                continue
            logger.info("stage %s: running", name)
            t0 = time.time()
            # measurement stages run on rank 0 only; the others wait at the barrier
            metrics = stage.run(ctx) if dist.is_main or not getattr(stage, "MAIN_ONLY", False) else {}
            barrier()
            record["stages"][name] = {"seconds": round(time.time() - t0, 1), "metrics": metrics}
            if dist.is_main:
                write_json(record_path, record)
            if shard is not None and not stage.is_complete(ctx):
                logger.info(
                    "stage %s: shard %d/%d done; later stages wait for the other shards", name, *shard
                )
                break
        current = None
        if dist.is_main:
            write_json(record_path, record)
            try:  # the report is a view of finished outputs: a problem drawing it does not undo the run
                logger.info("report: %s", write_report(run_dir))
            except (WsssError, OSError) as exc:
                logger.warning("report not written (%s); fix that and run 'wsss report %s'", exc, run_dir)
        return record
    except KeyboardInterrupt as exc:
        signum = signal_of(exc)
        if record is not None and dist.is_main and shard is None:  # shards share run.json: leave it
            _note_interruption(record_path, record, current, signum)
        raise RunInterrupted(run_dir, current, signum) from exc
    finally:
        remove_stale_temp_files(run_dir, all_writers=False)  # this process's own, and its ended workers'
        if lock is not None:
            lock.release()
