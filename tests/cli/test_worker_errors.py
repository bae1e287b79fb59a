"""An error raised in a DataLoader worker reaches the user as its one line, not torch's traceback."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from wsss.cli import user_message
from wsss.data.synth import generate_synth
from wsss.errors import ConfigError, DataError

MESSAGE = "image /data/a.jpg is corrupt or truncated (broken data stream); re-create or re-download it"


class _Broken(Dataset):
    """Fails as ``read_image`` does: a DataError raised from the decoder's OSError."""

    def __init__(self, cls: type) -> None:
        self.cls = cls

    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int) -> torch.Tensor:
        try:
            raise OSError("broken data stream")
        except OSError as exc:
            raise self.cls(MESSAGE) from exc


@pytest.mark.parametrize("cls", [DataError, ConfigError])
def test_user_message_unwraps_a_worker_error(cls: type) -> None:
    with pytest.raises(cls) as info:
        next(iter(DataLoader(_Broken(cls), num_workers=1)))
    assert str(info.value).startswith(
        f"Caught {cls.__name__} in DataLoader worker process 0.\nOriginal Traceback"
    )
    assert user_message(info.value) == MESSAGE


def test_user_message_keeps_other_messages() -> None:
    assert user_message(DataError(MESSAGE)) == MESSAGE
    assert user_message(DataError("two\nlines")) == "two\nlines"


@pytest.fixture(scope="module")
def broken_synth(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny synth dataset whose first training JPEG is cut in half."""
    root = tmp_path_factory.mktemp("synth")
    generate_synth(root, num_train=8, num_val=2, size=48, seed=3, progress=False)
    bad = sorted((root / "JPEGImages").glob("synth_train_*.jpg"))[0]
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    return root, bad


def test_corrupt_image_in_a_worker_is_one_error_line(broken_synth: tuple[Path, Path], tmp_path: Path) -> None:
    """Issue 17: a corrupt image inside ``wsss run`` printed torch's 35-line worker traceback."""
    root, bad = broken_synth
    run = tmp_path / "run"
    overrides = [
        f"data.root={root}",
        "stages=[train-cls]",
        "classifier.epochs=1",
        "classifier.batch_size=4",
        "classifier.num_workers=1",  # the image is read in a worker process
        "classifier.resize_long=[40, 48]",
        "classifier.crop_size=40",
    ]
    cmd = [sys.executable, "-m", "wsss", "run", "synth/bnr-nano", "--out", str(run), "--device", "cpu"]
    for item in overrides:
        cmd += ["--set", item]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 2, res.stderr
    lines = [line.strip() for line in re.split(r"[\r\n]", res.stderr)]  # progress bars redraw with \r
    errors = [line for line in lines if "error:" in line]
    assert errors == [
        f"wsss run: error: image {bad} is corrupt or truncated "
        f"(image file is truncated ({_missing_bytes(res.stderr)} bytes not processed)); re-create or re-download it"
    ]
    assert "Traceback" not in res.stderr and "in DataLoader worker process" not in res.stderr
    log = (run / "logs" / "pipeline.log").read_text()  # the full story stays in the run's log
    assert errors[0] in log and "Caught DataError in DataLoader worker process 0" in log
    assert log.count("Traceback (most recent call last)") >= 2  # the main process's and the worker's


def _missing_bytes(stderr: str) -> str:
    found = re.search(r"truncated \((\d+) bytes not processed\)", stderr)
    return found.group(1) if found else "?"
