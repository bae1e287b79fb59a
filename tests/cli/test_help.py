"""``wsss --help`` is instant (no torch, no numpy) and says what each command and option is for."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from wsss.cli import build_parser, main
from wsss.cli.pipeline import SHARDED_STAGES, STAGE_HELP, STAGE_NAMES

SHARDED = {"make-cams", "make-labels", "make-uns-cams", "random-walk", "predict"}  # map stages

HEAVY = ("torch", "torchvision", "numpy", "PIL", "matplotlib", "scipy", "tqdm")

# Runs the CLI in a fresh interpreter, then reports which heavy modules that imported.
PROBE = """
import sys
from wsss.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print("heavy:", sorted(m for m in {heavy!r} if m in sys.modules))
"""


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "80", "OMP_NUM_THREADS": "1"}
    code = PROBE.format(heavy=HEAVY)
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env)


@pytest.mark.parametrize(
    "args", [("--help",), ("run", "--help"), ("make-cams", "--help"), ("data", "--help")]
)
def test_help_imports_no_heavy_module(args: tuple[str, ...]) -> None:
    """Issue 17: ``wsss --help`` imported torch (through cli.evaluate), close to a minute on a busy machine."""
    res = _cli(*args)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(f"usage: wsss {' '.join(args[:-1])}".rstrip() + " ")
    assert res.stdout.rstrip().endswith("heavy: []")


def test_building_the_parser_imports_no_heavy_module() -> None:
    code = f"import sys; from wsss.cli import build_parser; build_parser(); print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert (res.returncode, res.stdout) == (0, "[]\n"), res.stderr


def _command_lines(help_text: str) -> list[str]:
    section = help_text.split("  COMMAND\n", 1)[1].split("\n\n", 1)[0]
    return section.splitlines()


def test_every_command_has_a_one_line_description() -> None:
    """Issue 17: long descriptions wrapped, and train-affinity's went onto the next line."""
    res = _cli("--help")
    lines = _command_lines(res.stdout)
    commands = list(build_parser()._subparsers._group_actions[0].choices)
    assert [line.split()[0] for line in lines] == commands  # one line per command, no continuation
    assert all(re.fullmatch(r"    \S+ {2,}\S.*", line) and len(line) <= 78 for line in lines), lines
    for stage, (text, _) in STAGE_HELP.items():
        assert f" {stage} " in f" {lines[commands.index(stage)]} " and lines[commands.index(stage)].endswith(
            text
        )


def test_stage_commands_show_their_description(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["make-labels", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert (
        "Turn CAM files into pseudo-labels (threshold / confident / PSA alpha, + CRF) and score them." in out
    )


def test_stage_names_match_the_pipeline() -> None:
    from wsss.pipeline import STAGES

    assert tuple(STAGES) == STAGE_NAMES
    assert set(STAGE_HELP) == set(STAGES) - {"eval-cams"}  # eval-cams is the scoring command's name


def test_choices_repeated_for_a_light_parser_match_the_library() -> None:
    from wsss.cams.importers import FORMATS
    from wsss.cli.evaluate import CAM_DUMP_FORMATS, MEAN_CHOICES
    from wsss.eval.metrics import MEAN_CONVENTIONS

    assert CAM_DUMP_FORMATS == FORMATS and tuple(MEAN_CONVENTIONS) == MEAN_CHOICES


def test_stages_help_lists_the_valid_names(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert f"valid: {', '.join(STAGE_NAMES)}" in out


def test_unknown_stage_is_one_line_listing_the_valid_ones(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "synth/bnr-nano", "--stages", "train-cls,make-cam"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "wsss run: error: --stages: unknown stage 'make-cam' (did you mean 'make-cams'?); "
        f"valid stages: {', '.join(STAGE_NAMES)}\n"
    )


@pytest.mark.parametrize("stage", STAGE_HELP)
def test_shard_only_on_sharded_stages(stage: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 17: every stage command offered --shard; only the map stages split their images."""
    argv = [stage, "synth/bnr-nano", "--out", "x", "--shard", "0/2"]
    if stage in SHARDED:
        assert build_parser().parse_args(argv).shard == "0/2"
    else:
        with pytest.raises(SystemExit) as info:
            build_parser().parse_args(argv)
        assert info.value.code == 2
        assert "unrecognized arguments: --shard 0/2" in capsys.readouterr().err
    assert set(SHARDED_STAGES) == SHARDED


def test_run_keeps_shard() -> None:
    assert build_parser().parse_args(["run", "synth/bnr-nano", "--shard", "1/2"]).shard == "1/2"
