"""``wsss report RUN_DIR``: (re)write a run directory's self-contained ``report.html``."""

from __future__ import annotations

import argparse
from pathlib import Path


def cmd_report(args: argparse.Namespace) -> int:
    from wsss.report import write_report

    path = write_report(args.run_dir, n_sample=args.sample, n_extreme=args.extremes)
    print(f"report: {path}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="write RUN_DIR/report.html, a self-contained page",
        description="Write RUN_DIR/report.html: numbers per stage, per-class IoU, curves, pictures.",
    )
    p.add_argument("run_dir", type=Path, help="a run directory made by 'wsss run' or 'wsss demo'")
    p.add_argument("--sample", type=int, default=6, help="images in the even sample (default 6)")
    p.add_argument("--extremes", type=int, default=4, help="best and worst images shown (default 4 each)")
    p.set_defaults(func=cmd_report)
