"""Real photos on a small CPU: train-cls and make-cams speed before vs after the CPU speed-ups.

The recipe is ``coco128/cam-mobilenet`` (plain CAM on an ImageNet MobileNetV2, offline weights) on
the photos of ../shared/data/coco128-voc (640x480-ish JPEGs). Each row runs the old and the new
code path alternately (A/B interleaved, ``--rounds`` times each, fresh run folders), so a change
in the machine's load hits both; a row gives the median throughput of each, their ratio and the
1-minute load average seen while it ran (the machine may be shared).

* ``read_image``: the image reader before (decode, ``convert("RGB")`` copy, array) and now (an RGB
  JPEG is not copied by ``convert``); the arrays are checked equal.
* ``train-cls epoch``: ``classifier.channels_last: false`` + the old reader vs the defaults
  (channels-last batches on the CPU); images per second of the training loop (its own timer, the
  model build excluded), and the final losses of both.
* ``make-cams``: the old reader and the old ``multiscale_cams`` (copied here: a PIL conversion per
  scale, every class upsampled) with ``cams.forward_images`` = the whole ``batch_images`` group,
  ``fold_bn: false``, ``channels_last: false``, vs the code and defaults now (one image and its
  flip per forward, BatchNorm folded, channels-last), on a classifier trained here; the CAM files
  of the two are compared (float16 files: one float16 step, <= 1e-3, is float rounding).

``--rows ...,ablations`` isolates one make-cams change per row: the new summing (present classes
upsampled, one PIL copy per image), one image per forward (on 640x480 photos only, so that groups
of equal shape exist; the first photos of the split seldom make one), BatchNorm folding and
channels-last, each against the new summing with everything else off. On a shared machine the
2-thread numbers swing by +-20 % between rounds; ``--threads 1`` is far steadier.

    python bench/real_photo_speed.py                 # ~6 min on 2 cores at load average 6, less idle
    python bench/real_photo_speed.py --rows cams,ablations --rounds 2 --cam-images 8 --threads 1
    python bench/real_photo_speed.py --rounds 1 --train-images 32 --cam-images 6   # quick look
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import math
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import wsss.data.base as data_base
from wsss.cams.files import load_cam
from wsss.cams.inference import (
    _check_kernel,
    _passes,
    _to_target,
    multiscale_cams,
    normalise_image,
    resize_image,
    scaled_size,
)
from wsss.config import load_recipe
from wsss.data.images import image_size, read_image
from wsss.engine import init_distributed, resolve_device
from wsss.stages import make_cams, train_cls
from wsss.stages.context import StageContext

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco128-voc"
RECIPE = "coco128/cam-mobilenet"
VERBOSE = False  # --verbose: print every run

BEFORE_TRAIN = ["classifier.channels_last=false"]
BEFORE_CAMS = ["cams.fold_bn=false", "cams.channels_last=false"]  # + forward_images = batch_images


def read_image_before(path: str | os.PathLike) -> np.ndarray:
    """``wsss.data.images.read_image`` as it was (errors aside): ``convert("RGB")`` always copies."""
    with Image.open(path) as img:
        img.load()
        return np.array(img.convert("RGB"), dtype=np.uint8)


@torch.no_grad()
def multiscale_cams_before(
    cam_fn: Callable[..., torch.Tensor],
    images: Sequence[torch.Tensor],
    labels: Sequence[torch.Tensor],
    scales: Sequence[float],
    *,
    scale_mode: str = "square",
    flip: bool = True,
    batched: bool = True,
    output_stride: int = 16,
    target_stride: int = 1,
    device: torch.device | str = "cpu",
    resize: str = "pil",
    forward_images: int | None = None,
) -> list[torch.Tensor]:
    """``wsss.cams.inference.multiscale_cams`` as it was: every scale converts the image to PIL
    again, every class is upsampled before the labels zero the absent ones, and a group of equal
    shapes is one forward (``forward_images`` is ignored)."""
    del forward_images
    _check_kernel(resize)
    device = torch.device(device)
    sizes = [tuple(img.shape[-2:]) for img in images]
    targets = [(math.ceil(h / target_stride), math.ceil(w / target_stride)) for h, w in sizes]
    sums: list[torch.Tensor | None] = [None] * len(images)

    def add(i: int, raw: torch.Tensor, in_size: tuple[int, int], flipped: bool) -> None:
        maps = raw.reshape(-1, *raw.shape[-3:])[:, 1:].float()
        fg = _to_target(maps, in_size, output_stride, targets[i])
        fg = fg[0] if raw.ndim == 3 else fg
        if flipped:
            fg = fg.flip(-1)
        fg = fg * labels[i].to(fg.device).view(-1, 1, 1)
        sums[i] = fg if sums[i] is None else sums[i] + fg

    for scale in scales:
        resized = []
        for img in images:
            size = scaled_size(tuple(img.shape[-2:]), scale, scale_mode)
            resized.append(normalise_image(resize_image(img, size, resize, device)))
        if batched:
            groups: dict[tuple[int, int], list[int]] = {}
            for i, x in enumerate(resized):
                groups.setdefault(tuple(x.shape[-2:]), []).append(i)
            for in_size, idx in groups.items():
                batch = torch.stack([resized[i] for i in idx])
                group_labels = torch.stack([labels[i] for i in idx]).to(device)
                runs = _passes(cam_fn, batch, group_labels, flip=flip, scale=scale, together=True)
                for k, raw, flipped in runs:
                    add(idx[k], raw, in_size, flipped)
        else:
            for i, x in enumerate(resized):
                runs = _passes(
                    cam_fn, x[None], labels[i][None].to(device), flip=flip, scale=scale, together=False
                )
                for _, raw, flipped in runs:
                    add(i, raw, tuple(x.shape[-2:]), flipped)
    return [s for s in sums if s is not None]


OLD = (read_image_before, multiscale_cams_before)
MID = (read_image_before, multiscale_cams)  # the ablations' base: the new summing, nothing else
NEW = (read_image, multiscale_cams)


def cam_rows(batch_images: int) -> dict[str, tuple[tuple, list[str], tuple, list[str]]]:
    """make-cams rows: name → (before code, its overrides, after code, its overrides); code =
    (image reader, multiscale_cams). The first row is every change; the others (``--rows
    ablations``) isolate one change each."""
    before = [*BEFORE_CAMS, f"cams.forward_images={batch_images}"]
    return {
        "make-cams (all changes)": (OLD, before, NEW, []),
        "make-cams: present classes, 1 PIL": (OLD, before, MID, before),
        "make-cams: forward_images=1 (640x480)": (MID, before, MID, [*before, "cams.forward_images=1"]),
        "make-cams: fold_bn only": (MID, before, MID, [*before, "cams.fold_bn=true"]),
        "make-cams: channels_last only": (MID, before, MID, [*before, "cams.channels_last=true"]),
    }


@contextlib.contextmanager
def code(read: Callable[[str | os.PathLike], np.ndarray], cams: Callable | None = None):
    """The datasets (and the DataLoader workers forked meanwhile) read images with ``read``;
    make-cams sums its passes with ``cams`` (None: as installed)."""
    saved = data_base.read_image, make_cams.multiscale_cams
    data_base.read_image = read
    make_cams.multiscale_cams = cams or saved[1]
    try:
        yield
    finally:
        data_base.read_image, make_cams.multiscale_cams = saved


def context(overrides: list[str], run_dir: Path) -> StageContext:
    recipe = load_recipe(RECIPE, overrides)
    return StageContext(
        recipe=recipe,
        run_dir=run_dir,
        device=resolve_device("cpu"),
        dist=init_distributed(),
        logger=logging.getLogger("bench"),
    )


def quiet(stage: Callable[[StageContext], dict], ctx: StageContext) -> dict:
    """Run a stage without its progress bars."""
    with contextlib.redirect_stderr(io.StringIO()):
        return stage(ctx)


def load1() -> float:
    return os.getloadavg()[0]


class Row:
    """One A/B row: per-round throughputs of before and after, and the load averages seen."""

    def __init__(self, name: str, unit: str) -> None:
        self.name, self.unit = name, unit
        self.before: list[float] = []
        self.after: list[float] = []
        self.loads: list[float] = []
        self.note = ""

    def add(self, which: str, value: float) -> None:
        getattr(self, which).append(value)
        self.loads.append(load1())
        if VERBOSE:
            print(f"  {self.name}: {which} {value:.2f} {self.unit} (load {self.loads[-1]:.2f})", flush=True)

    def line(self) -> str:
        b, a = statistics.median(self.before), statistics.median(self.after)
        load = f"{min(self.loads):.1f}-{max(self.loads):.1f}"
        return f"{self.name:38s} {b:9.2f} {a:9.2f}  {self.unit:9s} {a / b:6.2f}x  {load:>9s}  {self.note}"


def bench_read(paths: list[Path], rounds: int) -> Row:
    row = Row("read_image (JPEG -> HxWx3)", "img/s")
    assert all(np.array_equal(read_image_before(p), read_image(p)) for p in paths), "arrays differ"
    for _ in range(rounds):
        for which, fn in (("before", read_image_before), ("after", read_image)):
            t0 = time.perf_counter()
            for _ in range(3):
                for p in paths:
                    fn(p)
            row.add(which, 3 * len(paths) / (time.perf_counter() - t0))
    row.note = "arrays equal"
    return row


def bench_train(common: list[str], work: Path, rounds: int) -> tuple[Row, Path]:
    row = Row("train-cls epoch", "img/s")
    losses: dict[str, list[float]] = {"before": [], "after": []}
    trained = None
    for r in range(rounds):
        for which, sets, fn in (("before", BEFORE_TRAIN, read_image_before), ("after", [], read_image)):
            run = work / f"train-{which}-{r}"
            with code(fn):
                metrics = quiet(train_cls.run, context([*common, *sets], run))
            row.add(which, metrics["images_per_s"])
            losses[which].append(metrics["final_losses"]["loss"])
            if which == "after" and trained is None:
                trained = run
    row.note = "last-epoch loss " + " vs ".join(
        f"{which} {statistics.mean(v):.4f}" for which, v in losses.items()
    )
    assert trained is not None
    return row, trained


def cam_diff(a: Path, b: Path) -> tuple[float, int]:
    """Max |a - b| over every CAM file of two folders, and how many files differ at all."""
    worst, differ = 0.0, 0
    for fa in sorted(a.glob("*.npz")):
        ra, rb = load_cam(fa), load_cam(b / fa.name)
        assert np.array_equal(ra.keys, rb.keys) and ra.cams.shape == rb.cams.shape, fa.name
        d = float(np.abs(ra.cams.astype(np.float32) - rb.cams.astype(np.float32)).max(initial=0.0))
        worst, differ = max(worst, d), differ + (d > 0)
    return worst, differ


def bench_cams(common: list[str], trained: Path, work: Path, rounds: int, name: str, same_size: Path) -> Row:
    """One make-cams row of :func:`cam_rows`, before and after interleaved. The forward_images row
    maps the ``same_size`` list (640x480 photos only: whole groups of one shape, which the first
    photos of the split rarely make, so that batching has something to change)."""
    row = Row(name, "img/s")
    code_a, sets_a, code_b, sets_b = cam_rows(load_recipe(RECIPE, common).cams.batch_images)[name]
    if "640x480" in name:
        common = [*common, f"cams.splits=[{same_size}]"]
    folders: dict[str, Path] = {}
    for r in range(rounds):
        for which, (read, cams), sets in (("before", code_a, sets_a), ("after", code_b, sets_b)):
            run = work / f"cams-{which}-{r}"
            (run / "train-cls").mkdir(parents=True)
            for f in (trained / "train-cls").glob("model.*"):
                (run / "train-cls" / f.name).symlink_to(f)
            with code(read, cams):
                metrics = quiet(make_cams.run, context([*common, *sets], run))
            row.add(which, 1.0 / metrics["s_per_image"])
            folders.setdefault(which, run / "cams")
    worst, differ = cam_diff(folders["before"], folders["after"])
    count = len(list(folders["after"].glob("*.npz")))
    row.note = f"CAM files: max |diff| {worst:.1e} ({differ} of {count} differ)"
    return row


def write_list(path: Path, names: list[str]) -> Path:
    path.write_text("".join(f"{n}\n" for n in names))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA, help="coco128-voc folder")
    ap.add_argument("--train-images", type=int, default=48, help="photos train-cls trains on (all split)")
    ap.add_argument("--epochs", type=int, default=2, help="train-cls epochs per run")
    ap.add_argument("--cam-images", type=int, default=12, help="photos make-cams maps (train split)")
    ap.add_argument("--rounds", type=int, default=3, help="A/B repetitions of every row")
    ap.add_argument(
        "--rows",
        default="read,train,cams",
        help="comma-separated rows: read, train, cams, ablations (each make-cams change alone)",
    )
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--verbose", action="store_true", help="print every run's number as it comes")
    args = ap.parse_args()
    global VERBOSE
    VERBOSE = args.verbose
    wanted = set(args.rows.split(","))
    if not wanted or wanted - {"read", "train", "cams", "ablations"}:
        raise SystemExit(f"--rows takes read, train, cams, ablations; got {args.rows!r}")
    data = args.data.resolve()
    if not (data / "JPEGImages").is_dir():
        raise SystemExit(f"no coco128-voc photos at {data} (pass --data)")
    if args.threads:
        torch.set_num_threads(args.threads)
    splits = data / "ImageSets" / "Segmentation"
    all_names = (splits / "all.txt").read_text().split()[: args.train_images]
    train_names = (splits / "train.txt").read_text().split()
    cam_names = train_names[: args.cam_images]
    jpeg = data / "JPEGImages"
    same_names = [n for n in train_names if image_size(jpeg / f"{n}.jpg") == (480, 640)][: args.cam_images]
    t_start = time.time()
    with tempfile.TemporaryDirectory(prefix="real_photo_speed_") as tmp:
        work = Path(tmp)
        common = [
            f"data.root={data}",
            f"data.train_split={write_list(work / 'train.txt', all_names)}",
            f"cams.splits=[{write_list(work / 'cams.txt', cam_names)}]",
            f"classifier.epochs={args.epochs}",
        ]
        print(
            f"# {RECIPE} on {data.name}: train-cls {len(all_names)} photos x {args.epochs} epochs, "
            f"make-cams {len(cam_names)} photos; {args.rounds} A/B rounds per row; "
            f"{torch.get_num_threads()} torch threads, {os.cpu_count()} CPUs, "
            f"{platform.processor() or platform.machine()}, torch {torch.__version__}",
            flush=True,
        )
        same_size = write_list(work / "same_size.txt", same_names)
        print(f"# load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())}", flush=True)
        rows: list[Row] = []
        if "read" in wanted:
            rows.append(bench_read([data / "JPEGImages" / f"{n}.jpg" for n in all_names], args.rounds))
            print(rows[-1].line(), flush=True)
        trained = work / "train" / "classifier"
        if "train" in wanted:
            row, trained = bench_train(common, work / "train", args.rounds)
            rows.append(row)
            print(row.line(), flush=True)
        elif wanted & {"cams", "ablations"}:  # make-cams needs a trained classifier: train one, untimed
            quiet(train_cls.run, context(common, trained))
        for i, name in enumerate(cam_rows(1)):
            if ("cams" if i == 0 else "ablations") in wanted:
                rows.append(bench_cams(common, trained, work / f"cams{i}", args.rounds, name, same_size))
                print(rows[-1].line(), flush=True)
    print()
    print(f"{'':38s} {'before':>9s} {'after':>9s}  {'unit':9s} {'ratio':>7s}  {'load avg':>9s}")
    for row in rows:
        print(row.line())
    print(f"# medians of {args.rounds} interleaved rounds; load avg = 1-min range over the row's runs")
    print(
        f"# total {time.time() - t_start:.0f} s; load average at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}"
    )


if __name__ == "__main__":
    main()
