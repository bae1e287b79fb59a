"""MXNet NDArray-list files without mxnet: byte layout, round trips, errors, ResNet-38 name conversion."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch

from wsss.errors import CheckpointError
from wsss.models.backbones.mxnet_params import (
    NDARRAY_V2_MAGIC,
    convert_resnet38_params,
    read_params,
    resnet38_state_to_mxnet,
    write_params,
)
from wsss.models.backbones.resnet38 import ResNet38, build_resnet38
from wsss.models.weights import load_weights


def test_header_and_first_array_bytes_follow_the_format(tmp_path):
    path = tmp_path / "one.params"
    write_params(path, {"arg:w": np.array([[1.5, -2.0, 0.25]], dtype=np.float32)})
    raw = path.read_bytes()
    assert struct.unpack_from("<QQQ", raw, 0) == (0x112, 0, 1)
    magic, stype, ndim, d0, d1 = struct.unpack_from("<IiIqq", raw, 24)
    assert (magic, stype, ndim, d0, d1) == (NDARRAY_V2_MAGIC, 0, 2, 1, 3)
    dev_type, dev_id, flag = struct.unpack_from("<iii", raw, 24 + 28)
    assert (dev_type, dev_id, flag) == (1, 0, 0)  # cpu(0), float32
    data_at = 24 + 28 + 12
    assert struct.unpack_from("<3f", raw, data_at) == (1.5, -2.0, 0.25)
    names_at = data_at + 12
    assert struct.unpack_from("<QQ", raw, names_at) == (1, 5)
    assert raw[names_at + 16 :] == b"arg:w"


@pytest.mark.parametrize("version", [0, 1, 2])
def test_round_trip_is_bit_exact_for_every_version_and_dtype(tmp_path, version):
    rng = np.random.default_rng(0)
    arrays = {
        "arg:conv_weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "arg:fc_bias": rng.standard_normal(5).astype(np.float64),
        "aux:half": rng.standard_normal((2, 2)).astype(np.float16),
        "arg:ids": rng.integers(-(2**40), 2**40, size=(3,), dtype=np.int64),
        "arg:bytes": rng.integers(0, 255, size=(2, 1, 2), dtype=np.uint8),
        "arg:bigendian": np.arange(6, dtype=">f4").reshape(2, 3),
        "arg:nan": np.array([np.nan, -0.0, np.inf], dtype=np.float32),
    }
    path = tmp_path / f"v{version}.params"
    write_params(path, arrays, version=version)
    back = read_params(path)
    assert list(back) == list(arrays)
    for name, value in arrays.items():
        got = back[name]
        assert got.shape == value.shape
        assert got.dtype == value.dtype.newbyteorder("<")
        assert got.tobytes() == value.astype(value.dtype.newbyteorder("<")).tobytes(), name


def test_unnamed_list_gets_index_keys(tmp_path):
    path = tmp_path / "unnamed.params"
    a = np.ones((2,), np.float32)
    body = struct.pack("<QQQ", 0x112, 0, 1)
    body += struct.pack("<IiIq", NDARRAY_V2_MAGIC, 0, 1, 2) + struct.pack("<iii", 1, 0, 0) + a.tobytes()
    body += struct.pack("<Q", 0)
    path.write_bytes(body)
    assert list(read_params(path)) == ["0"]


def test_bad_files_fail_loudly_with_the_file_name(tmp_path):
    good = tmp_path / "good.params"
    write_params(good, {"arg:a": np.zeros((2, 2), np.float32), "arg:b": np.zeros(3, np.float32)})
    raw = good.read_bytes()

    wrong_magic = tmp_path / "magic.params"
    wrong_magic.write_bytes(struct.pack("<Q", 0x113) + raw[8:])
    with pytest.raises(CheckpointError, match=r"magic\.params.*not an MXNet NDArray list"):
        read_params(wrong_magic)

    truncated = tmp_path / "short.params"
    truncated.write_bytes(raw[:60])
    with pytest.raises(CheckpointError, match=r"short\.params.*truncated"):
        read_params(truncated)

    sparse = tmp_path / "sparse.params"
    sparse.write_bytes(raw[:28] + struct.pack("<i", 1) + raw[32:])
    with pytest.raises(CheckpointError, match="sparse storage"):
        read_params(sparse)

    trailing = tmp_path / "trailing.params"
    trailing.write_bytes(raw + b"\0")
    with pytest.raises(CheckpointError, match="unexpected bytes"):
        read_params(trailing)

    with pytest.raises(CheckpointError, match="does not exist"):
        read_params(tmp_path / "missing.params")


def test_writer_refuses_scalars_and_unknown_dtypes(tmp_path):
    with pytest.raises(ValueError, match="0-d"):
        write_params(tmp_path / "x.params", {"s": np.float32(1.0)})
    with pytest.raises(ValueError, match="complex"):
        write_params(tmp_path / "x.params", {"c": np.zeros(2, np.complex64)})
    assert not (tmp_path / "x.params").exists()


# Hand-written pairs, from the MXNet symbol names and PSA's convert_mxnet_to_torch.
NAME_PAIRS = {
    "arg:conv1a_weight": "conv1a.weight",
    "arg:res2a_branch1_weight": "b2.conv_branch1.weight",
    "arg:res2a_branch2a_weight": "b2.conv_branch2a.weight",
    "arg:bn2a_branch2a_gamma": "b2.bn_branch2a.weight",
    "arg:bn2a_branch2a_beta": "b2.bn_branch2a.bias",
    "aux:bn2a_branch2a_moving_mean": "b2.bn_branch2a.running_mean",
    "aux:bn2a_branch2a_moving_var": "b2.bn_branch2a.running_var",
    "arg:res2b1_branch2b1_weight": "b2_1.conv_branch2b1.weight",
    "aux:bn4b5_branch2b1_moving_var": "b4_5.bn_branch2b1.running_var",
    "arg:res5b2_branch2a_weight": "b5_2.conv_branch2a.weight",
    "arg:res6a_branch2b2_weight": "b6.conv_branch2b2.weight",
    "arg:bn7a_branch2b2_gamma": "b7.bn_branch2b2.weight",
    "arg:bn7_beta": "bn7.bias",
    "aux:bn7_moving_mean": "bn7.running_mean",
}


def test_name_conversion_matches_psa_for_hand_picked_names():
    arrays = {name: np.full((1,), i, np.float32) for i, name in enumerate(NAME_PAIRS)}
    arrays["arg:linear1000_weight"] = np.zeros((1000, 4096), np.float32)
    arrays["arg:linear1000_bias"] = np.zeros((1000,), np.float32)
    state = convert_resnet38_params(arrays)
    assert set(state) == set(NAME_PAIRS.values())  # classifier dropped
    for i, (mx_name, key) in enumerate(NAME_PAIRS.items()):
        assert float(state[key]) == i, mx_name
    back = resnet38_state_to_mxnet({k: torch.zeros(1) for k in NAME_PAIRS.values()})
    assert set(back) == set(NAME_PAIRS)


@pytest.mark.parametrize("bad", ["arg:res2c_branch2a_weight", "arg:fc8_weight", "arg:res2a_branch2a_gamma"])
def test_conversion_rejects_names_outside_resnet38(bad):
    with pytest.raises(CheckpointError, match="not ResNet-38"):
        convert_resnet38_params({bad: np.zeros(1, np.float32)})


def test_few_real_layers_write_read_convert_and_load_into_resnet38(tmp_path):
    """Real names and full-size shapes for conv1a, block b2 and bn7, as in the ImageNet file."""
    model = ResNet38()
    rng = np.random.default_rng(1)

    def rand(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape).astype(np.float32)

    arrays = {"arg:conv1a_weight": rand(64, 3, 3, 3)}
    for branch, ch in (("2a", 64), ("2b1", 128)):
        arrays[f"arg:bn2a_branch{branch}_gamma"] = rand(ch)
        arrays[f"arg:bn2a_branch{branch}_beta"] = rand(ch)
        arrays[f"aux:bn2a_branch{branch}_moving_mean"] = rand(ch)
        arrays[f"aux:bn2a_branch{branch}_moving_var"] = np.abs(rand(ch))
    arrays["arg:res2a_branch1_weight"] = rand(128, 64, 1, 1)
    arrays["arg:res2a_branch2a_weight"] = rand(128, 64, 3, 3)
    arrays["arg:res2a_branch2b1_weight"] = rand(128, 128, 3, 3)
    for param in ("gamma", "beta"):
        arrays[f"arg:bn7_{param}"] = rand(4096)
    for param in ("moving_mean", "moving_var"):
        arrays[f"aux:bn7_{param}"] = rand(4096)
    arrays["arg:linear1000_weight"] = rand(1000, 4096)
    path = tmp_path / "ilsvrc-cls_rna-a1_cls1000_ep-0001.params"
    write_params(path, arrays)

    back = read_params(path)
    assert all(back[k].tobytes() == v.tobytes() for k, v in arrays.items())
    state = convert_resnet38_params(back)
    assert len(state) == len(arrays) - 1 == 16  # conv1a 1, b2 2×4 BN + 3 convs, bn7 4; linear1000 dropped
    report = load_weights(model, state, min_matched=len(state), where=str(path))
    assert len(report.matched) == 16 and not report.unexpected and not report.mismatched
    torch.testing.assert_close(
        model.b2.conv_branch2b1.weight, torch.from_numpy(arrays["arg:res2a_branch2b1_weight"])
    )
    torch.testing.assert_close(model.bn7.running_var, torch.from_numpy(arrays["aux:bn7_moving_var"]))
    # the loader for real use demands every backbone tensor, so this partial file is refused
    with pytest.raises(CheckpointError, match="does not fit"):
        build_resnet38(pretrained=str(path))


def test_whole_network_round_trip_through_mxnet_names(tmp_path):
    """Every ResNet-38 key has an MXNet name and comes back: the mapping is complete and invertible."""
    source = ResNet38(width_divisor=16)
    for buf in source.buffers():
        if buf.dtype.is_floating_point:
            buf.uniform_(0.5, 1.5)
    arrays = resnet38_state_to_mxnet(source.state_dict())
    n_keys = sum(not k.endswith("num_batches_tracked") for k in source.state_dict())
    # 15 two-conv blocks × (2 BN × 4 + 2 convs) + 4 shortcut convs + 2 bottlenecks × (3 BN × 4 + 4 convs)
    # + conv1a + bn7 × 4
    assert len(arrays) == n_keys == 15 * 10 + 4 + 2 * 16 + 1 + 4 == 191
    assert sum(k.startswith("aux:") for k in arrays) == 2 * sum(
        isinstance(m, torch.nn.BatchNorm2d) for m in source.modules()
    )
    path = tmp_path / "tiny.params"
    write_params(path, arrays)
    target = build_resnet38(pretrained=str(path), width_divisor=16)
    for key, value in source.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(target.state_dict()[key], value), key


def test_corrupt_sizes_are_reported_before_allocating(tmp_path):
    huge_shape = tmp_path / "huge.params"
    body = struct.pack("<QQQ", 0x112, 0, 1) + struct.pack("<IiIqq", NDARRAY_V2_MAGIC, 0, 2, 2**40, 2**20)
    huge_shape.write_bytes(body + struct.pack("<iii", 1, 0, 0) + b"\0" * 16)
    with pytest.raises(CheckpointError, match=r"truncated.*remain"):
        read_params(huge_shape)
    huge_name = tmp_path / "name.params"
    body = struct.pack("<QQQ", 0x112, 0, 1) + struct.pack("<IiIq", NDARRAY_V2_MAGIC, 0, 1, 1)
    huge_name.write_bytes(body + struct.pack("<iii", 1, 0, 0) + b"\0" * 4 + struct.pack("<QQ", 1, 2**60))
    with pytest.raises(CheckpointError, match=r"truncated.*name #0"):
        read_params(huge_name)
