"""Importing IRN and PSA/SEAM/TransCAM pickled CAM dumps, and refusing them without trust."""

from __future__ import annotations

import argparse
import os

import numpy as np
import pytest
import torch

from wsss.cams.files import load_cam
from wsss.cams.importers import import_dir, import_irn, import_psa
from wsss.cli.evaluate import register
from wsss.errors import DataError


class _PlantsAFile:
    """Unpickling this object creates a folder: proof of whether a file was unpickled."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _irn_dump(path, keys, high_res):
    np.save(
        path,
        {
            "keys": torch.tensor(keys),  # IRN pickles torch tensors inside the .npy
            "cam": torch.from_numpy(high_res[:, ::4, ::4].copy()),
            "high_res": high_res,
        },
        allow_pickle=True,
    )


def test_import_irn_shifts_keys_and_keeps_full_resolution(tmp_path):
    rng = np.random.default_rng(0)
    high_res = rng.random((2, 9, 11)).astype(np.float32)
    _irn_dump(tmp_path / "a.npy", [2, 14], high_res)
    rec = import_irn(tmp_path / "a.npy", trust=True)
    assert rec.keys.tolist() == [3, 15]  # 0-based foreground → label space
    assert (rec.size, rec.stride, rec.norm) == ((9, 11), 1, "max")
    np.testing.assert_array_equal(rec.cams, high_res)
    # numpy keys and a single 2-D map work as well
    np.save(tmp_path / "b.npy", {"keys": np.array([0]), "high_res": high_res[0]}, allow_pickle=True)
    rec = import_irn(tmp_path / "b.npy", trust=True)
    assert rec.keys.tolist() == [1] and rec.cams.shape == (1, 9, 11)


def test_import_psa_sorts_and_shifts_keys(tmp_path):
    a = np.full((4, 6), 0.25, np.float32)
    b = np.linspace(0, 1, 24, dtype=np.float32).reshape(4, 6)
    np.save(tmp_path / "p.npy", {np.int64(14): b, 0: a}, allow_pickle=True)
    rec = import_psa(tmp_path / "p.npy", num_classes=21, trust=True)
    assert rec.keys.tolist() == [1, 15]
    np.testing.assert_array_equal(rec.cams[0], a)
    np.testing.assert_array_equal(rec.cams[1], b)
    assert (rec.size, rec.stride, rec.norm) == ((4, 6), 1, "minmax")


def test_untrusted_dumps_are_refused_before_unpickling(tmp_path):
    marker = tmp_path / "planted"
    np.save(tmp_path / "evil.npy", {"keys": _PlantsAFile(str(marker))}, allow_pickle=True)
    for load in (lambda p: import_irn(p), lambda p: import_psa(p, 21)):
        with pytest.raises(DataError, match=r"evil\.npy .*execute arbitrary code.*--trust-pickle"):
            load(tmp_path / "evil.npy")
    assert not marker.exists()
    with pytest.raises(DataError, match="--trust-pickle"):
        import_dir("psa", tmp_path, tmp_path / "out", progress=False)
    assert not marker.exists() and not (tmp_path / "out").exists()
    # The fixture is live: with trust it is unpickled and its payload runs.
    with pytest.raises(DataError, match="lacks 'high_res'"):
        import_irn(tmp_path / "evil.npy", trust=True)
    assert marker.is_dir()


def test_malformed_dumps_name_the_file(tmp_path):
    np.save(tmp_path / "nokeys.npy", {"cam": np.zeros((1, 2, 2))}, allow_pickle=True)
    with pytest.raises(DataError, match=r"nokeys\.npy lacks 'keys', 'high_res'"):
        import_irn(tmp_path / "nokeys.npy", trust=True)
    np.save(tmp_path / "range.npy", {20: np.zeros((2, 2), np.float32)}, allow_pickle=True)
    with pytest.raises(DataError, match=r"range\.npy: class index 20 is outside 0\.\.19"):
        import_psa(tmp_path / "range.npy", 21, trust=True)
    np.save(tmp_path / "sizes.npy", {0: np.zeros((2, 2)), 1: np.zeros((3, 2))}, allow_pickle=True)
    with pytest.raises(DataError, match=r"sizes\.npy: class maps have different sizes"):
        import_psa(tmp_path / "sizes.npy", 21, trust=True)
    np.save(tmp_path / "strkey.npy", {"cat": np.zeros((2, 2))}, allow_pickle=True)
    with pytest.raises(DataError, match=r"strkey\.npy: key 'cat' is not a class index"):
        import_psa(tmp_path / "strkey.npy", 21, trust=True)
    np.save(tmp_path / "array.npy", np.zeros((2, 2)))
    with pytest.raises(DataError, match=r"array\.npy holds a ndarray"):
        import_psa(tmp_path / "array.npy", 21, trust=True)
    np.save(tmp_path / "empty.npy", {}, allow_pickle=True)
    with pytest.raises(DataError, match=r"empty\.npy holds no class maps"):
        import_psa(tmp_path / "empty.npy", 21, trust=True)
    np.save(
        tmp_path / "dup.npy", {"keys": np.array([1, 1]), "high_res": np.zeros((2, 2, 2))}, allow_pickle=True
    )
    with pytest.raises(DataError, match=r"dup\.npy: .*duplicates"):
        import_irn(tmp_path / "dup.npy", trust=True)


def _cli(argv):
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_import_cams_converts_a_folder_and_resumes(tmp_path, capsys):
    src, out = tmp_path / "out_cam", tmp_path / "cams"
    src.mkdir()
    maps = {}
    for i, name in enumerate(["2007_000032", "2007_000039"]):
        maps[name] = np.random.default_rng(i).random((5, 7)).astype(np.float32)
        np.save(src / f"{name}.npy", {i: maps[name]}, allow_pickle=True)
    argv = ["import-cams", "--format", "psa", "--src", str(src), "--out", str(out), "--no-progress"]
    with pytest.raises(DataError, match="--trust-pickle"):
        _cli(argv)
    assert _cli([*argv, "--trust-pickle"]) == 0
    assert "converted 2 files, kept 0" in capsys.readouterr().out
    for i, name in enumerate(maps):
        rec = load_cam(out / f"{name}.npz")
        assert rec.keys.tolist() == [i + 1] and rec.cams.dtype == np.float16
        np.testing.assert_allclose(rec.full_resolution()[0].numpy(), maps[name], atol=5e-4)
    assert _cli([*argv, "--trust-pickle"]) == 0
    assert "converted 0 files, kept 2" in capsys.readouterr().out
    assert import_dir("psa", src, out, trust=True, overwrite=True, progress=False) == {
        "converted": 2,
        "skipped": 0,
    }
