"""eval-cams with ``evaluate.threshold: auto``: Otsu's threshold of the CAM values, no ground truth."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.report.conftest import make_run_dir
from tests.stage_context import cpu_context
from wsss.config import load_recipe
from wsss.errors import ConfigError
from wsss.stages import eval_cams


def test_auto_threshold_is_chosen_from_the_cams_and_scored(tmp_path: Path) -> None:
    run = make_run_dir(tmp_path)  # four 32×32 CAMs: 1.0 on the 16×16 object square, 0 elsewhere
    recipe = load_recipe(str(run / "recipe.yaml"), ["evaluate.threshold=auto"])
    summary = eval_cams.run(cpu_context(recipe, run))
    # two spikes (0 and 1): the first edge splits them; the square is then exactly the object
    assert summary["chosen_threshold"] == pytest.approx(0.01)
    assert summary["chosen_from"] == "auto: Otsu on val's CAM values, no ground truth"
    assert summary["splits"]["val"]["miou_at_chosen"] == pytest.approx(1.0)
    values = summary["cam_values"]
    assert values["foreground_share"] == pytest.approx(0.25) and summary["warnings"] == []
    # 16×16 objects of 31×32 valid pixels (the first row is 255)
    assert values["gt_foreground_share"] == pytest.approx(256 / (31 * 32))


def test_auto_and_a_fixed_threshold_together_are_refused(tmp_path: Path) -> None:
    run = make_run_dir(tmp_path)
    recipe = load_recipe(
        str(run / "recipe.yaml"), ["evaluate.threshold=auto", "evaluate.fixed_threshold=0.2"]
    )
    with pytest.raises(ConfigError, match=r"remove evaluate.fixed_threshold \(0.2\)"):
        eval_cams.run(cpu_context(recipe, run))


def test_a_mistyped_mode_names_the_key(tmp_path: Path) -> None:
    run = make_run_dir(tmp_path)
    with pytest.raises(ConfigError, match=r"evaluate\.threshold"):
        load_recipe(str(run / "recipe.yaml"), ["evaluate.threshold=otsu"])


def test_an_oracle_threshold_on_the_edge_of_the_sweep_is_flagged() -> None:
    import numpy as np

    from wsss.stages.eval_cams import edge_warning

    sweep = [float(t) for t in np.round(np.arange(0.0, 0.96 - 1e-9, 0.01), 6)]  # 0.00 … 0.95

    def curve(peak: float) -> list[float]:  # a single-peaked mIoU curve with its maximum at ``peak``
        return [1.0 - abs(t - peak) for t in sweep]

    assert edge_warning("train", sweep, curve(0.40)) is None
    assert edge_warning("train", sweep, curve(0.01)) is None
    at_zero = edge_warning("train", sweep, curve(0.0))
    assert at_zero is not None and "0.00, the lowest" in at_zero and "do not separate objects" in at_zero
    at_top = edge_warning("val", sweep, curve(0.95))
    assert at_top is not None and "0.95, at the end" in at_top and "0.00–0.95" in at_top
    assert "widen evaluate.thresholds" in at_top
    # perfect maps score the same at every threshold: the first one is best, but not on an edge
    assert edge_warning("train", sweep, [1.0] * len(sweep)) is None
    # unscorable thresholds (None) are left out; the edge is the last one that scored
    partial = [*curve(0.5)[:50], *([None] * (len(sweep) - 50))]
    partial[49] = 2.0
    low = edge_warning("train", sweep, partial)
    assert low is not None and "0.49, at the end of the sweep (0.00–0.49)" in low
