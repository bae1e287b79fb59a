"""MXNet ``.params`` files (NDArray lists) read and written with numpy alone, no ``mxnet``.

ResNet-38's ImageNet weights (``ilsvrc-cls_rna-a1_cls1000_ep-0001.params``) only exist in this
format, and ``mxnet`` is dead and uninstallable on current Pythons; PSA and TransCAM convert
the file by importing it. This module reads the byte layout directly.

Layout (all integers little-endian)::

    uint64 0x112 (list magic) | uint64 0 (reserved)
    uint64 N, then N arrays
    uint64 M (0 or N), then M names: uint64 byte length + UTF-8 bytes

Each array is one of three generations, told apart by its first uint32:

* ``0xF993FAC9`` (V2, MXNet >= 1.0) or ``0xF993FACA`` (V3, numpy-shape semantics): int32
  storage type (0 = dense; sparse is refused), shape = uint32 ndim + ndim × int64, then
  context (int32 device type, int32 device id), int32 dtype flag and the raw C-order data.
  V2 uses ndim 0 for an empty ("none") array; V3 uses ndim -1 and allows 0-d scalars.
* ``0xF993FAC8`` (V1): shape = uint32 ndim + ndim × int64, then context, dtype, data.
* anything else (legacy, 2015-2016 files): that uint32 *is* ndim, followed by ndim × uint32
  dims, then context, dtype, data.

Names carry ``arg:`` (learned parameters) or ``aux:`` (BatchNorm moving statistics) prefixes.
"""

from __future__ import annotations

import logging
import math
import re
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from torch import Tensor

from wsss.errors import CheckpointError
from wsss.files import atomic_open

log = logging.getLogger(__name__)

LIST_MAGIC = 0x112
NDARRAY_V1_MAGIC = 0xF993FAC8
NDARRAY_V2_MAGIC = 0xF993FAC9
NDARRAY_V3_MAGIC = 0xF993FACA
CPU_DEVICE_TYPE = 1  # MXNet's Context::kCPU
DENSE_STORAGE = 0

# MXNet's mshadow type flags (bfloat16 = 12 has no numpy dtype and is refused).
DTYPE_FLAGS: dict[int, np.dtype] = {
    0: np.dtype("<f4"),
    1: np.dtype("<f8"),
    2: np.dtype("<f2"),
    3: np.dtype("u1"),
    4: np.dtype("<i4"),
    5: np.dtype("i1"),
    6: np.dtype("<i8"),
    7: np.dtype("?"),
    8: np.dtype("<i2"),
    9: np.dtype("<u2"),
    10: np.dtype("<u4"),
    11: np.dtype("<u8"),
}
_FLAG_OF = {dtype: flag for flag, dtype in DTYPE_FLAGS.items()}


class _Stream:
    """Sequential little-endian reads whose errors name the file and the item being read."""

    def __init__(self, fh: BinaryIO, path: Path) -> None:
        self.fh = fh
        self.path = path
        self.size = path.stat().st_size

    def exact(self, n: int, what: str) -> bytes:
        data = self.fh.read(n) if n <= self.size - self.fh.tell() else b""
        if len(data) != n:
            raise CheckpointError(
                f"MXNet params file '{self.path}' is truncated: wanted {n} bytes for {what}, got {len(data)}"
            )
        return data

    def unpack(self, fmt: str, what: str) -> tuple:
        return struct.unpack(fmt, self.exact(struct.calcsize(fmt), what))

    def u32(self, what: str) -> int:
        return self.unpack("<I", what)[0]

    def i32(self, what: str) -> int:
        return self.unpack("<i", what)[0]

    def u64(self, what: str) -> int:
        return self.unpack("<Q", what)[0]

    def array(self, dtype: np.dtype, shape: tuple[int, ...], what: str) -> np.ndarray:
        nbytes = dtype.itemsize * math.prod(shape)
        left = self.size - self.fh.tell()
        if nbytes > left:  # checked before allocating: a corrupt shape must not exhaust memory
            raise CheckpointError(
                f"MXNet params file '{self.path}' is truncated: {what} of shape {shape} needs {nbytes} "
                f"data bytes, {left} remain"
            )
        out = np.empty(shape, dtype=dtype)
        flat = out.reshape(-1).view(np.uint8)
        got = self.fh.readinto(memoryview(flat)) if flat.size else 0
        if got != flat.size:
            raise CheckpointError(
                f"MXNet params file '{self.path}' is truncated: wanted {flat.size} data bytes for {what}, got {got}"
            )
        return out


def _read_array(stream: _Stream, index: int) -> np.ndarray:
    what = f"array #{index}"
    first = stream.u32(what)
    if first in (NDARRAY_V2_MAGIC, NDARRAY_V3_MAGIC):
        stype = stream.i32(what)
        if stype != DENSE_STORAGE:
            raise CheckpointError(
                f"MXNet params file '{stream.path}': {what} uses sparse storage type {stype}; "
                "only dense arrays are supported"
            )
        ndim = stream.i32(what)
        none = ndim < 0 if first == NDARRAY_V3_MAGIC else ndim == 0
        shape = () if ndim <= 0 else stream.unpack(f"<{ndim}q", what)
    elif first == NDARRAY_V1_MAGIC:
        ndim = stream.u32(what)
        none = ndim == 0
        shape = stream.unpack(f"<{ndim}q", what) if ndim else ()
    else:  # legacy: the first word is ndim, dims are uint32
        ndim = first
        if ndim > 32:
            raise CheckpointError(
                f"MXNet params file '{stream.path}': {what} starts with 0x{first:08X}, which is neither an "
                "NDArray magic number nor a plausible dimension count; the file is corrupt"
            )
        none = ndim == 0
        shape = stream.unpack(f"<{ndim}I", what) if ndim else ()
    if none:
        raise CheckpointError(
            f"MXNet params file '{stream.path}': {what} is an uninitialised (none) array, which holds no data"
        )
    if any(d < 0 for d in shape):
        raise CheckpointError(f"MXNet params file '{stream.path}': {what} has an unknown dimension {shape}")
    stream.unpack("<ii", what)  # context (device type, id): arrays are always loaded on the CPU
    flag = stream.i32(what)
    if flag not in DTYPE_FLAGS:
        raise CheckpointError(
            f"MXNet params file '{stream.path}': {what} has dtype flag {flag}, which numpy cannot hold "
            f"(supported: {sorted(DTYPE_FLAGS)})"
        )
    return stream.array(DTYPE_FLAGS[flag], tuple(int(d) for d in shape), what)


def read_params(path: str | Path) -> dict[str, np.ndarray]:
    """Every array of an MXNet NDArray-list file by its stored name (``arg:``/``aux:`` kept).

    A list saved without names gets the keys ``"0"``, ``"1"``, …. Arrays come back as native
    numpy arrays with their stored shape and dtype. Raises ``CheckpointError`` naming the file
    for a wrong magic number, truncation, sparse storage, unknown dtypes or duplicate names.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"MXNet params file '{path}' does not exist or is not a file")
    with open(path, "rb") as fh:
        stream = _Stream(fh, path)
        magic, _reserved = stream.unpack("<QQ", "the header")
        if magic != LIST_MAGIC:
            raise CheckpointError(
                f"'{path}' is not an MXNet NDArray list file: header magic 0x{magic:X}, expected 0x{LIST_MAGIC:X}"
            )
        count = stream.u64("the array count")
        arrays = [_read_array(stream, i) for i in range(count)]
        num_names = stream.u64("the name count")
        if num_names not in (0, count):
            raise CheckpointError(f"MXNet params file '{path}' has {count} arrays but {num_names} names")
        try:
            names = [
                stream.exact(stream.u64(f"name #{i}"), f"name #{i}").decode("utf-8") for i in range(num_names)
            ] or [str(i) for i in range(count)]
        except UnicodeDecodeError as exc:
            raise CheckpointError(f"MXNet params file '{path}' has a name that is not UTF-8 ({exc})") from exc
        if fh.read(1):
            raise CheckpointError(f"MXNet params file '{path}' has unexpected bytes after its name list")
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise CheckpointError(f"MXNet params file '{path}' repeats the names {dupes[:5]}")
    return dict(zip(names, arrays))


def _dtype_flag(array: np.ndarray, name: str) -> int:
    dtype = array.dtype.newbyteorder("<")
    if dtype not in _FLAG_OF:
        raise ValueError(f"array '{name}' has dtype {array.dtype}, which MXNet files cannot store")
    return _FLAG_OF[dtype]


def write_params(path: str | Path, arrays: Mapping[str, np.ndarray], *, version: int = 2) -> None:
    """Write ``arrays`` as an MXNet NDArray-list file (atomically), in the given array ``version``.

    ``version`` 2 is what MXNet >= 1.0 writes; 1 and 0 (legacy, uint32 dims) exist so the
    reader's older branches can be exercised. Arrays are stored as CPU, dense, C-order,
    little-endian; 0-d arrays are refused because V2 uses ndim 0 for "no array".
    """
    if version not in (0, 1, 2):
        raise ValueError(f"version must be 0 (legacy), 1 or 2, got {version}")
    with atomic_open(path, "wb") as fh:
        fh.write(struct.pack("<QQQ", LIST_MAGIC, 0, len(arrays)))
        for name, value in arrays.items():
            array = np.asarray(value)
            if array.ndim == 0:
                raise ValueError(f"array '{name}' is 0-d; reshape it to (1,) before saving")
            flag = _dtype_flag(array, name)
            if version == 2:
                fh.write(
                    struct.pack(
                        f"<IiI{array.ndim}q", NDARRAY_V2_MAGIC, DENSE_STORAGE, array.ndim, *array.shape
                    )
                )
            elif version == 1:
                fh.write(struct.pack(f"<II{array.ndim}q", NDARRAY_V1_MAGIC, array.ndim, *array.shape))
            else:
                fh.write(struct.pack(f"<I{array.ndim}I", array.ndim, *array.shape))
            fh.write(struct.pack("<iii", CPU_DEVICE_TYPE, 0, flag))
            little = array.astype(DTYPE_FLAGS[flag], copy=False)
            fh.write(np.ascontiguousarray(little).tobytes(order="C"))
        fh.write(struct.pack("<Q", len(arrays)))
        for name in arrays:
            encoded = name.encode("utf-8")
            fh.write(struct.pack("<Q", len(encoded)))
            fh.write(encoded)


# --- ResNet-38 ("model A1") names: MXNet ↔ PSA's PyTorch keys -------------------------------------

# res4b5_branch2b1_weight, bn5a_branch2a_gamma, bn6a_branch2b2_moving_var, …
_BLOCK_NAME = re.compile(
    r"^(?P<kind>res|bn)(?P<stage>\d)(?P<letter>[ab])(?P<index>\d*)_branch(?P<branch>1|2a|2b1|2b2)_"
    r"(?P<param>weight|gamma|beta|moving_mean|moving_var)$"
)
_BN7_NAME = re.compile(r"^bn7_(?P<param>gamma|beta|moving_mean|moving_var)$")
_CLASSIFIER_PREFIX = "linear1000_"  # the ImageNet 1000-way head, never transferred
_BN_PARAM = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_var": "running_var"}
_BN_PARAM_BACK = {v: k for k, v in _BN_PARAM.items()}


def _strip_scope(name: str) -> str:
    return name.split(":", 1)[1] if name.startswith(("arg:", "aux:")) else name


def _torch_key(mx_name: str) -> str | None:
    """PSA's PyTorch key for one MXNet ResNet-38 name; None for the ImageNet classifier."""
    name = _strip_scope(mx_name)
    if name == "conv1a_weight":
        return "conv1a.weight"
    if name.startswith(_CLASSIFIER_PREFIX):
        return None
    if found := _BN7_NAME.match(name):
        return f"bn7.{_BN_PARAM[found['param']]}"
    found = _BLOCK_NAME.match(name)
    if found is None:
        raise KeyError(name)
    if found["letter"] == "a" and not found["index"]:
        block = f"b{found['stage']}"
    elif found["letter"] == "b" and found["index"]:
        block = f"b{found['stage']}_{found['index']}"
    else:
        raise KeyError(name)
    if found["kind"] == "res":
        if found["param"] != "weight":
            raise KeyError(name)
        return f"{block}.conv_branch{found['branch']}.weight"
    if found["param"] == "weight":
        raise KeyError(name)
    return f"{block}.bn_branch{found['branch']}.{_BN_PARAM[found['param']]}"


def convert_resnet38_params(arrays: Mapping[str, np.ndarray]) -> dict[str, Tensor]:
    """Rename MXNet ResNet-38 arrays to PSA's PyTorch keys (as ``convert_mxnet_to_torch`` does).

    ``res{s}a_branch{x}_weight`` → ``b{s}.conv_branch{x}.weight``, ``res{s}b{i}_…`` → ``b{s}_{i}.…``,
    ``bn…_{gamma,beta,moving_mean,moving_var}`` → ``bn_branch{x}.{weight,bias,running_mean,running_var}``,
    ``bn7_*`` → ``bn7.*``, ``conv1a_weight`` → ``conv1a.weight``; the ``linear1000`` ImageNet
    classifier is dropped. Any other name is a ``CheckpointError`` (PSA's converter silently
    files unknown names under ``bn7``). Values become float32 tensors.
    """
    state: dict[str, Tensor] = {}
    unknown: list[str] = []
    dropped = 0
    for name, value in arrays.items():
        try:
            key = _torch_key(name)
        except KeyError:
            unknown.append(name)
            continue
        if key is None:
            dropped += 1
            continue
        if key in state:
            raise CheckpointError(f"two MXNet arrays map onto the ResNet-38 key '{key}' (second: '{name}')")
        state[key] = torch.from_numpy(np.array(value, dtype=np.float32))
    if unknown:
        raise CheckpointError(
            f"{len(unknown)} MXNet array names are not ResNet-38 (model A1) names, e.g. "
            f"{', '.join(repr(n) for n in unknown[:4])}; is this the ilsvrc-cls_rna-a1 file?"
        )
    if dropped:
        log.info("dropped %d ImageNet classifier arrays (linear1000_*)", dropped)
    return state


def _mxnet_name(key: str) -> str:
    """Inverse of ``_torch_key`` for one PyTorch key, with its ``arg:``/``aux:`` scope."""
    module, _, param = key.rpartition(".")
    if module == "conv1a" and param == "weight":
        return "arg:conv1a_weight"
    if module == "bn7" and param in _BN_PARAM_BACK:
        mx_param = _BN_PARAM_BACK[param]
        return f"{'aux' if mx_param.startswith('moving') else 'arg'}:bn7_{mx_param}"
    found = re.match(r"^b(\d)(?:_(\d+))?\.(conv|bn)_branch(1|2a|2b1|2b2)$", module)
    if found is None:
        raise KeyError(key)
    stage, index, kind, branch = found.groups()
    block = f"{stage}b{index}" if index else f"{stage}a"
    if kind == "conv" and param == "weight":
        return f"arg:res{block}_branch{branch}_weight"
    if kind == "bn" and param in _BN_PARAM_BACK:
        mx_param = _BN_PARAM_BACK[param]
        return f"{'aux' if mx_param.startswith('moving') else 'arg'}:bn{block}_branch{branch}_{mx_param}"
    raise KeyError(key)


def resnet38_state_to_mxnet(state: Mapping[str, Tensor]) -> dict[str, np.ndarray]:
    """A ResNet-38 state_dict under the original MXNet names (float32), e.g. to publish weights.

    ``num_batches_tracked`` counters have no MXNet counterpart and are left out; any other key
    outside the backbone (a head) is a ``KeyError``.
    """
    out: dict[str, np.ndarray] = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        out[_mxnet_name(key)] = value.detach().cpu().to(torch.float32).numpy()
    return out
