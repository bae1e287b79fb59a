"""MCR against an independently written per-pixel rule, over every (P1, P2, P3) combination."""

from __future__ import annotations

import itertools

import pytest
import torch

from wsss.errors import DataError
from wsss.refine.fusion import LABEL_FUSIONS, mcr_fuse, mcr_fuse_acdc

IGN = 255
VALUES = (0, 1, 2, IGN)  # background, two foreground classes, ignore
COMBOS = list(itertools.product(VALUES, repeat=3))


def expected_mcr(p1: int, p2: int, p3: int, late: bool) -> int:
    """The rule as a chain of cases, one pixel at a time."""
    if late and p1 in (1, 2) and p2 == p1:
        return p1  # P1 and P2 agree on a class: that class, whatever P3 says
    elif p2 in (1, 2) and p3 == 0:
        return p2  # P2 fills P3's background
    elif p2 in (1, 2) and p3 == IGN:
        return p2  # ... and P3's ignore
    else:
        return p3  # otherwise P3 stands (a P2 ignore or background changes nothing)


def expected_acdc(p1: int, p2: int, p3: int, late: bool, very_late: bool) -> int:
    if very_late and p2 == IGN and p1 in (1, 2):
        return p1
    return expected_mcr(p1, p2, p3, late)


def as_maps() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The 64 combinations as 1×8×8 label maps, one combination per pixel."""
    cols = torch.tensor(COMBOS, dtype=torch.long)
    return tuple(cols[:, k].reshape(1, 8, 8) for k in range(3))  # type: ignore[return-value]


@pytest.mark.parametrize(("iteration", "late"), [(0, False), (6000, False), (6001, True), (20000, True)])
def test_mcr_all_combinations(iteration: int, late: bool) -> None:
    p1, p2, p3 = as_maps()
    out = mcr_fuse(p1, p2, p3, iteration, switch_iter=6000).flatten().tolist()
    want = [expected_mcr(a, b, c, late) for a, b, c in COMBOS]
    assert out == want
    assert torch.equal(p3, as_maps()[2])  # inputs untouched


@pytest.mark.parametrize(
    ("iteration", "late", "very_late"), [(100, False, False), (7000, True, False), (9001, True, True)]
)
def test_mcr_acdc_all_combinations(iteration: int, late: bool, very_late: bool) -> None:
    p1, p2, p3 = as_maps()
    out = mcr_fuse_acdc(p1, p2, p3, iteration, switch_iter=6000, acdc_iter=9000).flatten().tolist()
    assert out == [expected_acdc(a, b, c, late, very_late) for a, b, c in COMBOS]


def test_spot_cases_and_custom_ignore_index() -> None:
    # P2 ignore never overrides P3 background; late agreement overrides a conflicting P3 class
    p1, p2, p3 = torch.tensor([0, 1]), torch.tensor([9, 1]), torch.tensor([0, 2])
    assert mcr_fuse(p1, p2, p3, 10, switch_iter=5, ignore_index=9).tolist() == [0, 1]
    assert mcr_fuse(p1, p2, p3, 5, switch_iter=5, ignore_index=9).tolist() == [0, 2]
    # with ignore_index=9, the value 255 would be a (large) class id, not ignore
    assert mcr_fuse(
        torch.tensor([0]), torch.tensor([255]), torch.tensor([9]), 0, ignore_index=9
    ).tolist() == [255]


def test_name_table_and_shape_check() -> None:
    assert LABEL_FUSIONS["mcr"] is mcr_fuse and LABEL_FUSIONS["mcr_acdc"] is mcr_fuse_acdc
    assert len(LABEL_FUSIONS) == 2
    with pytest.raises(DataError):
        mcr_fuse(torch.zeros(2, 2), torch.zeros(2, 2), torch.zeros(2, 3), 0)
