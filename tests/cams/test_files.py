"""The wsss CAM file: round trips, stride geometry, validation and resumability checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import wsss.cams.files as cam_files
from wsss.cams.files import CamRecord, cam_path, is_complete, load_cam, save_cam, strided_size
from wsss.errors import DataError


def test_round_trip_keeps_fields_and_uses_float16(tmp_path):
    rng = np.random.default_rng(0)
    cams = rng.random((2, 3, 4)).astype(np.float32)
    path = cam_path(tmp_path / "cams", "2007_000032")
    assert path == tmp_path / "cams" / "2007_000032.npz"
    save_cam(path, cams, [3, 15], size=(10, 13), stride=4, norm="minmax")
    rec = load_cam(path)
    assert rec.keys.dtype == np.int16 and rec.keys.tolist() == [3, 15]
    assert rec.cams.dtype == np.float16 and rec.cams.shape == (2, 3, 4)
    np.testing.assert_allclose(rec.cams, cams, atol=1e-3)
    assert (rec.size, rec.stride, rec.norm) == ((10, 13), 4, "minmax")
    with np.load(path, allow_pickle=False) as raw:  # pickle-free and self-describing
        assert sorted(raw.files) == sorted(cam_files.FIELDS)
        assert int(raw["format_version"]) == 1
    # torch tensors are accepted too
    save_cam(path, torch.from_numpy(cams), torch.tensor([3, 15]), (10, 13), stride=4)
    assert load_cam(path).norm == "raw"


def test_strided_size_and_full_resolution_geometry():
    assert strided_size((10, 13), 4) == (3, 4)
    assert strided_size((8, 8), 4) == (2, 2)
    # A map linear in x: bilinear (align_corners=False) upsampling by s samples source x at
    # (i + 0.5) / s - 0.5, clamped to the edge at the borders.
    a, b, s = 0.5, 0.25, 4
    h, w = 3, 5
    ramp = (a * np.arange(w) + b).astype(np.float16)[None, None].repeat(h, axis=1)
    rec = CamRecord(keys=np.array([2], np.int16), cams=ramp, size=(10, 18), stride=s, norm="raw")
    full = rec.full_resolution()
    assert full.dtype == torch.float32 and tuple(full.shape) == (1, 10, 18)
    src_x = np.clip((np.arange(18) + 0.5) / s - 0.5, 0, w - 1)
    expected = a * src_x + b
    np.testing.assert_allclose(full[0].numpy(), np.broadcast_to(expected, (10, 18)), atol=1e-6)
    # Stride 1 is the stored map itself; no keys gives an empty stack of the image's size.
    one = CamRecord(keys=np.array([1], np.int16), cams=ramp[:, :, :4], size=(3, 4), stride=1)
    assert torch.equal(one.full_resolution(), torch.from_numpy(ramp[:, :, :4].astype(np.float32)))
    none = CamRecord(
        keys=np.zeros(0, np.int16), cams=np.zeros((0, 3, 5), np.float16), size=(10, 18), stride=4
    )
    assert tuple(none.full_resolution().shape) == (0, 10, 18)


def test_save_rejects_inconsistent_fields(tmp_path):
    path = tmp_path / "x.npz"
    cams = np.zeros((1, 3, 4), np.float32)
    with pytest.raises(ValueError, match=r"needs 3x3 \(ceil"):
        save_cam(path, cams, [1], (10, 12), stride=4)
    with pytest.raises(ValueError, match="label space"):
        save_cam(path, cams, [0], (3, 4))
    with pytest.raises(ValueError, match="duplicates"):
        save_cam(path, np.zeros((2, 3, 4)), [2, 2], (3, 4))
    with pytest.raises(ValueError, match="2 keys but 1"):
        save_cam(path, cams, [1, 2], (3, 4))
    with pytest.raises(ValueError, match="norm must be one of"):
        save_cam(path, cams, [1], (3, 4), norm="softmax")
    with pytest.raises(ValueError, match="float16 range"):
        save_cam(path, cams + 1e6, [1], (3, 4))
    with pytest.raises(ValueError, match="NaN"):
        save_cam(path, cams * np.nan, [1], (3, 4))
    assert not path.exists()


def _write_raw(path, **fields):
    np.savez(path, **fields)


def _good_fields():
    return {
        "keys": np.array([1], np.int16),
        "cams": np.zeros((1, 2, 2), np.float16),
        "size": np.array([4, 4], np.int32),
        "stride": np.int32(2),
        "norm": np.asarray("max"),
        "format_version": np.int32(1),
    }


def test_load_reports_problems_naming_the_file(tmp_path):
    with pytest.raises(DataError, match=r"CAM file not found: .*nope\.npz"):
        load_cam(tmp_path / "nope.npz")

    fields = _good_fields()
    del fields["norm"]
    _write_raw(tmp_path / "missing.npz", **fields)
    with pytest.raises(DataError, match=r"missing\.npz lacks norm"):
        load_cam(tmp_path / "missing.npz")

    _write_raw(tmp_path / "v2.npz", **{**_good_fields(), "format_version": np.int32(2)})
    with pytest.raises(DataError, match=r"v2\.npz has format_version 2"):
        load_cam(tmp_path / "v2.npz")

    _write_raw(tmp_path / "shape.npz", **{**_good_fields(), "cams": np.zeros((1, 3, 2), np.float16)})
    with pytest.raises(DataError, match=r"shape\.npz is inconsistent: .*needs 2x2"):
        load_cam(tmp_path / "shape.npz")

    _write_raw(tmp_path / "types.npz", **{**_good_fields(), "keys": np.array([1.5])})
    with pytest.raises(DataError, match=r"types\.npz has wrong field types"):
        load_cam(tmp_path / "types.npz")

    np.save(tmp_path / "legacy.npy", {0: np.zeros((2, 2))}, allow_pickle=True)
    with pytest.raises(DataError, match=r"legacy\.npy holds pickled objects.*import-cams"):
        load_cam(tmp_path / "legacy.npy")

    np.save(tmp_path / "bare.npy", np.zeros((2, 2)))
    with pytest.raises(DataError, match=r"bare\.npy is a bare \.npy array"):
        load_cam(tmp_path / "bare.npy")

    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DataError, match=r"junk\.npz is corrupt"):
        load_cam(tmp_path / "junk.npz")


def test_is_complete_for_resumable_stages(tmp_path):
    path = tmp_path / "a.npz"
    assert not is_complete(path)
    save_cam(path, np.ones((1, 2, 2)), [1], (2, 2))
    assert is_complete(path)
    data = path.read_bytes()
    (tmp_path / "trunc.npz").write_bytes(data[: len(data) // 2])
    assert not is_complete(tmp_path / "trunc.npz")
    _write_raw(tmp_path / "v2.npz", **{**_good_fields(), "format_version": np.int32(2)})
    assert not is_complete(tmp_path / "v2.npz")
    np.save(tmp_path / "legacy.npy", {0: np.zeros((2, 2))}, allow_pickle=True)
    assert not is_complete(tmp_path / "legacy.npy")


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "a.npz"
    save_cam(path, np.full((1, 2, 2), 0.5), [4], (2, 2))

    def broken_savez(fh, **arrays):
        fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(cam_files.np, "savez_compressed", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        save_cam(path, np.zeros((1, 2, 2)), [1], (2, 2))
    monkeypatch.undo()
    rec = load_cam(path)
    assert rec.keys.tolist() == [4] and float(rec.cams.max()) == 0.5
    assert [p.name for p in tmp_path.iterdir()] == ["a.npz"]
