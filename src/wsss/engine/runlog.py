"""Per-run logging: a plain log file, console output on rank 0, scalars in TensorBoard and JSONL.

Every stage logs to ``<run_dir>/logs/<name>.log`` so a run can be checked after the fact (other
ranks write ``<name>.rank<k>.log`` and stay off the console). Scalars go both to TensorBoard
and to ``<run_dir>/metrics.jsonl``, so the numbers survive without TensorBoard installed or
open. Log files are append streams, not atomic outputs: a resumed run continues them.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from wsss.engine.distributed import get_rank

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_HANDLER_TAG = "_wsss_run_handler"


def setup_run_logging(run_dir: str | os.PathLike, name: str, level: int = logging.INFO) -> logging.Logger:
    """Return logger ``wsss.<name>`` writing to ``run_dir/logs/<name>.log`` (+ console on rank 0).

    Calling it again (e.g. a second stage in the same process) replaces the handlers it added
    before instead of duplicating every line.
    """
    rank = get_rank()
    log_dir = Path(run_dir) / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    logger = logging.getLogger(f"wsss.{name}")
    logger.setLevel(level)
    logger.propagate = False
    for handler in [h for h in logger.handlers if getattr(h, _HANDLER_TAG, False)]:
        logger.removeHandler(handler)
        handler.close()
    file_name = f"{name}.log" if rank == 0 else f"{name}.rank{rank}.log"
    handlers: list[logging.Handler] = [logging.FileHandler(log_dir / file_name, encoding="utf-8")]
    if rank == 0:
        handlers.append(logging.StreamHandler(sys.stderr))
    formatter = logging.Formatter(_FORMAT)
    for handler in handlers:
        handler.setFormatter(formatter)
        setattr(handler, _HANDLER_TAG, True)
        logger.addHandler(handler)
    return logger


class ScalarWriter:
    """Scalars to TensorBoard (``run_dir/tb``, opened on first use) and to ``metrics.jsonl``.

    Only rank 0 writes; on other ranks every method is a no-op, so training code calls it
    unconditionally. After a resume the JSONL may hold an interrupted run's entries past the
    checkpoint step; readers should keep the last entry per (tag, step).
    """

    def __init__(
        self, run_dir: str | os.PathLike, *, enabled: bool | None = None, tensorboard: bool = True
    ) -> None:
        self.run_dir = Path(run_dir)
        self.enabled = get_rank() == 0 if enabled is None else enabled
        self.jsonl_path = self.run_dir / "metrics.jsonl"
        self._use_tensorboard = tensorboard
        self._tb: Any = None

    def add_scalar(self, tag: str, value: float | torch.Tensor, step: int) -> None:
        """Record one scalar (a float or a 0-d tensor) at global ``step``."""
        self.add_scalars({tag: value}, step)

    def add_scalars(self, values: dict[str, float | torch.Tensor], step: int) -> None:
        """Record several scalars at the same ``step`` (one JSONL line each)."""
        if not self.enabled:
            return
        now = time.time()
        lines = []
        numbers = {tag: float(v.item() if isinstance(v, torch.Tensor) else v) for tag, v in values.items()}
        for tag, number in numbers.items():
            record = {
                "tag": tag,
                "value": number if math.isfinite(number) else str(number),
                "step": int(step),
            }
            record["time"] = round(now, 3)
            lines.append(json.dumps(record))
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.jsonl_path, "a", encoding="utf-8") as fh:
            fh.write("\n".join(lines) + "\n")
        writer = self._tensorboard()
        if writer is not None:
            for tag, number in numbers.items():
                writer.add_scalar(tag, number, int(step))

    def flush(self) -> None:
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self) -> ScalarWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _tensorboard(self) -> Any:
        if self._tb is None and self._use_tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                warnings.warn("tensorboard is not installed; scalars go to metrics.jsonl only", stacklevel=3)
                self._use_tensorboard = False
                return None
            self._tb = SummaryWriter(log_dir=str(self.run_dir / "tb"))
        return self._tb


def read_scalars(run_dir: str | os.PathLike) -> dict[str, list[tuple[int, float]]]:
    """Read ``metrics.jsonl`` back as ``{tag: [(step, value), ...]}`` sorted by step.

    When a step was logged twice (a resumed run), the later entry wins.
    """
    path = Path(run_dir) / "metrics.jsonl"
    latest: dict[str, dict[int, float]] = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                record = json.loads(line)
                latest.setdefault(record["tag"], {})[int(record["step"])] = float(record["value"])
    return {tag: sorted(steps.items()) for tag, steps in latest.items()}
