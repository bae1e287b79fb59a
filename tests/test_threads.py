"""The CPU thread policy (wsss.threads): OpenMP threads spin 10,000 iterations instead of 300,000
before they sleep, set before torch loads, the user's own choice wins, and every run records the
counts it used (issue 16)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from wsss.config import load_recipe
from wsss.data.synth import generate_synth
from wsss.threads import (
    LIBGOMP_DEFAULT,
    WAIT_VARIABLES,
    apply_wait_policy,
    describe,
    loader_workers,
    thread_settings,
    usable_cores,
    wait_policy,
)


def test_policy_sets_a_short_spin_in_a_clean_environment() -> None:
    env: dict[str, str] = {"PATH": "/bin"}
    assert apply_wait_policy(env, torch_loaded=False) is True
    assert env == {"PATH": "/bin", "GOMP_SPINCOUNT": "10000"}


@pytest.mark.parametrize(
    "given",
    [{"OMP_WAIT_POLICY": "ACTIVE"}, {"OMP_WAIT_POLICY": ""}, {"GOMP_SPINCOUNT": "10000"}],
)
def test_policy_leaves_a_users_wait_setting_alone(given: dict[str, str]) -> None:
    env = dict(given)
    assert apply_wait_policy(env, torch_loaded=False) is False
    assert env == given  # nothing added: OMP_WAIT_POLICY=ACTIVE keeps its 30-billion spin count


def test_policy_does_nothing_once_torch_is_loaded() -> None:
    """libgomp has read its environment by then: a value set now would be a false record."""
    env: dict[str, str] = {}
    assert apply_wait_policy(env, torch_loaded=True) is False
    assert env == {}


def test_wait_policy_names_what_libgomp_will_do() -> None:
    assert wait_policy({}) == LIBGOMP_DEFAULT
    assert wait_policy({"OMP_WAIT_POLICY": " passive "}) == "PASSIVE"
    assert wait_policy({"GOMP_SPINCOUNT": "1000"}) == "GOMP_SPINCOUNT=1000"
    assert (
        wait_policy({"OMP_WAIT_POLICY": "active", "GOMP_SPINCOUNT": "1000"}) == "ACTIVE, GOMP_SPINCOUNT=1000"
    )
    assert WAIT_VARIABLES == ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def test_usable_cores_follow_the_affinity_mask(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 5, 7}, raising=False)
    assert usable_cores() == 3

    def missing(pid: int) -> set[int]:
        raise AttributeError("no sched_getaffinity here")

    monkeypatch.setattr(os, "sched_getaffinity", missing, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 12)
    assert usable_cores() == 12


def test_loader_workers_lists_each_training_section_of_the_recipe() -> None:
    demo = load_recipe("synth/demo")  # classifier, affinity (default) and segmentation; no pretrain / uns
    assert loader_workers(demo) == {"classifier": 2, "affinity": 2, "segmentation": 2}
    spu = load_recipe("synth/spu-nano", ["uns.num_workers=0", "classifier.num_workers=1"])
    assert loader_workers(spu) == {"classifier": 1, "uns": 0, "affinity": 2, "segmentation": 2}


def test_describe_is_one_line_with_every_count() -> None:
    settings = {
        "usable_cores": 2,
        "torch_threads": 2,
        "torch_interop_threads": 2,
        "omp_num_threads": None,
        "omp_wait_policy": "PASSIVE",
        "loader_workers": {"classifier": 2, "segmentation": 0},
        "crf_processes": 3,
        "worker_torch_threads": 1,
    }
    assert describe(settings) == (
        "threads: torch 2 (interop 2) on 2 usable cores, OMP_NUM_THREADS=unset, OpenMP wait PASSIVE; "
        "DataLoader workers: classifier 2, segmentation 0; CRF processes: 3 "
        "(each worker and CRF process: 1 torch thread)"
    )
    process_only = {k: settings[k] for k in list(settings)[:5]}
    assert describe(process_only) == (
        "threads: torch 2 (interop 2) on 2 usable cores, OMP_NUM_THREADS=unset, OpenMP wait PASSIVE"
    )


def test_thread_settings_reads_this_process_and_the_recipe(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.setenv("OMP_WAIT_POLICY", "active")
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    got = thread_settings(load_recipe("synth/demo", ["labels.workers=4"]))
    assert got == {
        "usable_cores": usable_cores(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "omp_num_threads": "3",  # what the environment asked for, beside what torch has
        "omp_wait_policy": "ACTIVE",
        "loader_workers": {"classifier": 2, "affinity": 2, "segmentation": 2},
        "crf_processes": 4,
        "worker_torch_threads": 1,
    }


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in WAIT_VARIABLES}
    return {**env, "OMP_NUM_THREADS": "1", **extra}


_PROBE = """
import json, os, sys
from wsss.cli import main
try:
    main(["--version"])
except SystemExit:
    pass
print(json.dumps([os.environ.get("OMP_WAIT_POLICY"), os.environ.get("GOMP_SPINCOUNT"), "torch" in sys.modules]))
"""


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({}, [None, "10000"]),
        ({"OMP_WAIT_POLICY": "ACTIVE"}, ["ACTIVE", None]),
        ({"GOMP_SPINCOUNT": "5"}, [None, "5"]),
    ],
)
def test_cli_entry_sets_the_policy_before_torch_is_imported(
    extra: dict[str, str], expected: list[str | None]
) -> None:
    res = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, env=_clean_env(**extra), timeout=120
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[0].startswith("wsss ")  # --version ran
    # torch not loaded yet when the variable was set: libgomp reads it when torch loads
    assert json.loads(res.stdout.splitlines()[-1]) == [*expected, False]


def test_console_script_is_the_hooked_main() -> None:
    """``wsss`` (pyproject [project.scripts]) and ``python -m wsss`` both start in wsss.cli.main."""
    (script,) = entry_points(group="console_scripts", name="wsss")
    assert script.value == "wsss.cli:main"
    main_module = Path(__file__).parents[1] / "src" / "wsss" / "__main__.py"
    assert "from wsss.cli import main" in main_module.read_text()


def test_a_run_records_and_logs_its_thread_counts(tmp_path: Path) -> None:
    """A real ``python -m wsss run`` in a fresh process: run.json's machine record and pipeline.log."""
    root = tmp_path / "synth"
    generate_synth(root, seed=0, num_train=8, num_val=4, progress=False)
    run = tmp_path / "run"
    overrides = [
        f"data.root={root}",
        "stages=[train-cls]",
        "classifier.epochs=1",
        "classifier.batch_size=4",
        "classifier.num_workers=1",
        "classifier.resize_long=[40, 48]",
        "classifier.crop_size=40",
        "labels.workers=3",
    ]
    cmd = [sys.executable, "-m", "wsss", "run", "synth/bnr-nano", "--out", str(run), "--device", "cpu"]
    for item in overrides:
        cmd += ["--set", item]
    res = subprocess.run(cmd, capture_output=True, text=True, env=_clean_env(), timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    threads = json.loads((run / "run.json").read_text())["machine"]["threads"]
    interop = threads.pop("torch_interop_threads")
    assert isinstance(interop, int) and interop >= 1
    assert threads == {
        "usable_cores": usable_cores(),
        "torch_threads": 1,
        "omp_num_threads": "1",
        "omp_wait_policy": "GOMP_SPINCOUNT=10000",
        "loader_workers": {"classifier": 1, "affinity": 2, "segmentation": 2},
        "crf_processes": 3,
        "worker_torch_threads": 1,
    }
    log = (run / "logs" / "pipeline.log").read_text()
    assert (
        f"threads: torch 1 (interop {interop}) on {usable_cores()} usable cores, OMP_NUM_THREADS=1, "
        "OpenMP wait GOMP_SPINCOUNT=10000; DataLoader workers: classifier 1, affinity 2, segmentation 2; "
        "CRF processes: 3 (each worker and CRF process: 1 torch thread)"
    ) in log
