"""Fully connected (dense) CRF over an image: named parameter presets and two backends.

Every seed method sharpens CAM-derived labels or segmentation scores with the Krähenbühl–Koltun
dense CRF, each with its own numbers; the presets below name those numbers so recipes can say
``crf: label`` instead of repeating six floats.

Backends:

* ``exact``: ``pydensecrf2`` (imports as ``pydensecrf``), the permutohedral-lattice
  implementation every reference repository calls. Optional extra: ``pip install wsss[crf]``.
* ``torch``: the pure-torch mean-field fallback in :mod:`wsss.refine.crf_torch` (approximate
  bilateral term; see there).
* ``auto``: ``exact`` when importable, otherwise ``torch`` with one warning per process.

Unary terms follow ``pydensecrf.utils`` so that both backends see the same energies:
a hard label map gets ``-log(gt_prob)`` on its label and ``-log((1 - gt_prob) / (n - 1))``
elsewhere (``unary_from_labels`` with ``zero_unsure=False``); a score stack gets
``-log(clip(p, 1e-5, 1))`` (``unary_from_softmax``; the scores need not sum to one, PSA feeds
un-normalised ``[(1 - max)^α, CAMs]`` stacks).
"""

from __future__ import annotations

import functools
import importlib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal

import numpy as np
import torch

from wsss.errors import ConfigError
from wsss.registry import suggest

UnaryKind = Literal["labels", "softmax"]
Backend = Literal["auto", "exact", "torch"]
BACKENDS: tuple[str, ...] = ("auto", "exact", "torch")
SOFTMAX_CLIP = 1e-5  # pydensecrf.utils.unary_from_softmax's default clip

INSTALL_HINT = (
    "install the exact dense CRF with `pip install wsss[crf]` (pydensecrf2; it builds from source "
    "and needs Python <= 3.12 — on newer Pythons use conda-forge's pydensecrf)"
)


@dataclass(frozen=True)
class CRFParams:
    """Dense-CRF settings in pydensecrf's terms.

    ``unary``: ``"labels"`` (hard label map, confidence ``gt_prob``) or ``"softmax"`` (score stack).
    Gaussian (appearance-free smoothness) kernel: std ``gauss_sxy`` pixels, weight ``gauss_compat``.
    Bilateral (appearance) kernel: std ``bilat_sxy`` pixels and ``bilat_srgb`` intensity levels
    (0..255), weight ``bilat_compat``. ``iterations``: mean-field steps.
    """

    unary: UnaryKind
    gt_prob: float | None
    gauss_sxy: float
    gauss_compat: float
    bilat_sxy: float
    bilat_srgb: float
    bilat_compat: float
    iterations: int

    def __post_init__(self) -> None:
        if self.unary not in ("labels", "softmax"):
            raise ConfigError(f"crf.unary must be 'labels' or 'softmax', got {self.unary!r}")
        if self.unary == "labels" and (self.gt_prob is None or not 0.0 < self.gt_prob < 1.0):
            raise ConfigError(
                f"crf.gt_prob must lie strictly between 0 and 1 for a label unary, got {self.gt_prob}"
            )
        for key in ("gauss_sxy", "bilat_sxy", "bilat_srgb"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"crf.{key} must be > 0, got {getattr(self, key)}")
        for key in ("gauss_compat", "bilat_compat"):
            if getattr(self, key) < 0:
                raise ConfigError(f"crf.{key} must be >= 0, got {getattr(self, key)}")
        if int(self.iterations) != self.iterations or self.iterations < 0:
            raise ConfigError(f"crf.iterations must be a non-negative integer, got {self.iterations}")


CRF_PRESETS: dict[str, CRFParams] = {
    # IRN misc/imutils.py:crf_inference_label (also SPU/AMR/AMN IR labels, ToCo utils/dcrf.py) and
    # TransCAM tool/imutils.py:crf_inference_label — AffinityNet labels and the RW output.
    "label": CRFParams("labels", 0.7, 3, 3, 50, 5, 10, 10),
    # PSA / SEAM tool/imutils.py:crf_inference (PSA's α-background AffinityNet labels; PMM rough masks).
    "psa": CRFParams("softmax", None, 3, 3, 80, 13, 10, 10),
    # TransCAM deeplab/utils/DenseCRF.py:dense_crf as called from test_deeplab.py (1 iteration).
    "deeplab": CRFParams("softmax", None, 3, 3, 32, 13, 10, 1),
    # kazuto1011/deeplab-pytorch configs (iter 10, pos_w 3, pos_xy_std 1, bi_w 4, bi_xy_std 67,
    # bi_rgb_std 3); the same numbers in PMM's WSSS_MMSeg encoder_decoder.py:DenseCRF.
    "deeplab_v2": CRFParams("softmax", None, 1, 3, 67, 3, 4, 10),
    # ToCo tools/infer_seg_voc.py crf_proc (iter_max 10, pos 1/1, bi_xy 121, bi_rgb 5, bi_w 4);
    # UniA tools/voc/infer_seg.py uses the same.
    "toco": CRFParams("softmax", None, 1, 1, 121, 5, 4, 10),
    # PMM pipeline/refine_cam.py:crf_inference, the per-class binary CRF of PPG (Gaussian compat 10).
    "pmm": CRFParams("softmax", None, 3, 10, 80, 13, 10, 10),
}


def get_preset(name: str) -> CRFParams:
    """The named preset; an unknown name raises ConfigError listing the presets."""
    try:
        return CRF_PRESETS[name]
    except KeyError:
        raise ConfigError(
            f"unknown CRF preset {name!r}{suggest(name, CRF_PRESETS)}; presets: {', '.join(CRF_PRESETS)}"
        ) from None


def resolve_params(crf: str | CRFParams) -> CRFParams:
    """Accept a preset name or ready parameters."""
    return get_preset(crf) if isinstance(crf, str) else crf


def label_unary(labels: np.ndarray, n_labels: int, gt_prob: float) -> np.ndarray:
    """(n, H, W) float32 energies of a hard label map (pydensecrf ``unary_from_labels``, zero_unsure False)."""
    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"a label unary needs an HxW integer label map, got {labels.dtype} {labels.shape}")
    if n_labels < 2:
        raise ValueError(f"a label unary needs n_labels >= 2, got {n_labels}")
    if labels.size and (labels.min() < 0 or labels.max() >= n_labels):
        raise ValueError(f"labels span {labels.min()}..{labels.max()} but n_labels is {n_labels}")
    off = -np.log((1.0 - gt_prob) / (n_labels - 1))
    on = -np.log(gt_prob)
    unary = np.full((n_labels, *labels.shape), off, dtype=np.float32)
    np.put_along_axis(unary, labels[None].astype(np.intp), np.float32(on), axis=0)
    return unary


def softmax_unary(probs: np.ndarray) -> np.ndarray:
    """(n, H, W) float32 energies ``-log(clip(p, 1e-5, 1))`` (pydensecrf ``unary_from_softmax``)."""
    probs = np.asarray(probs)
    if probs.ndim != 3 or not np.issubdtype(probs.dtype, np.floating):
        raise ValueError(
            f"a softmax unary needs an (n, H, W) float score array, got {probs.dtype} {probs.shape}"
        )
    return -np.log(np.clip(probs, SOFTMAX_CLIP, 1.0)).astype(np.float32)


def build_unary(unary_input: np.ndarray, params: CRFParams, n_labels: int | None) -> np.ndarray:
    """Energies for ``params.unary`` from a label map (``labels``) or a score stack (``softmax``)."""
    arr = np.asarray(unary_input)
    if params.unary == "labels":
        if arr.ndim != 2:
            raise ValueError(
                f"this CRF preset uses a label unary and expects an HxW label map, got shape {arr.shape} "
                "(pass scores with a 'softmax' preset)"
            )
        if n_labels is None:
            raise ValueError("a label unary needs n_labels (the label map may not show every label)")
        assert params.gt_prob is not None  # guaranteed by CRFParams validation
        return label_unary(arr, n_labels, params.gt_prob)
    if arr.ndim != 3:
        raise ValueError(
            f"this CRF preset uses a softmax unary and expects (n, H, W) scores, got shape {arr.shape} "
            "(pass a label map with a 'labels' preset)"
        )
    if n_labels is not None and n_labels != arr.shape[0]:
        raise ValueError(f"n_labels {n_labels} disagrees with the {arr.shape[0]} score planes")
    return softmax_unary(arr)


def _check_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """C-contiguous HxWx3 uint8 of the unary's size (pydensecrf reads the buffer directly)."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"the CRF image must be HxWx3 uint8, got {image.dtype} {image.shape}")
    if image.shape[:2] != size:
        raise ValueError(f"image is {image.shape[0]}x{image.shape[1]} but the unary is {size[0]}x{size[1]}")
    return np.require(image, dtype=np.uint8, requirements=["C", "W"])  # pydensecrf needs a writable buffer


def _exact_module() -> ModuleType:
    """``pydensecrf.densecrf``; ImportError when the optional package is missing."""
    return importlib.import_module("pydensecrf.densecrf")


def exact_available() -> bool:
    """True when pydensecrf(2) imports."""
    try:
        _exact_module()
    except ImportError:
        return False
    return True


@functools.lru_cache(maxsize=1)
def _warn_fallback_once() -> None:
    """Warn (once per process) that the approximate torch CRF stands in for pydensecrf."""
    warnings.warn(
        f"pydensecrf is not installed; using the approximate pure-torch dense CRF. To reproduce "
        f"published numbers, {INSTALL_HINT}.",
        RuntimeWarning,
        stacklevel=4,
    )


def resolve_backend(backend: str) -> str:
    """``exact`` or ``torch`` for a requested backend (``auto`` picks, warning once on fallback)."""
    if backend not in BACKENDS:
        raise ConfigError(
            f"unknown CRF backend {backend!r}{suggest(backend, BACKENDS)}; choose from {BACKENDS}"
        )
    if backend == "torch":
        return "torch"
    if exact_available():
        return "exact"
    if backend == "exact":
        raise ConfigError(f"CRF backend 'exact' needs pydensecrf, which is not installed: {INSTALL_HINT}")
    _warn_fallback_once()
    return "torch"


def _run_exact(image: np.ndarray, unary: np.ndarray, params: CRFParams) -> np.ndarray:
    """pydensecrf inference; returns (n, H, W) float32 marginals."""
    dcrf: Any = _exact_module()
    n, h, w = unary.shape
    crf = dcrf.DenseCRF2D(w, h, n)
    crf.setUnaryEnergy(np.ascontiguousarray(unary.reshape(n, h * w), dtype=np.float32))
    crf.addPairwiseGaussian(sxy=params.gauss_sxy, compat=params.gauss_compat)
    crf.addPairwiseBilateral(
        sxy=params.bilat_sxy, srgb=params.bilat_srgb, rgbim=image, compat=params.bilat_compat
    )
    q = crf.inference(int(params.iterations))
    return np.asarray(q, dtype=np.float32).reshape(n, h, w)


def _run_torch(
    image: np.ndarray, unary: np.ndarray, params: CRFParams, device: torch.device | str | None
) -> np.ndarray:
    """The pure-torch mean field on ``device`` (CPU by default); returns numpy marginals."""
    from wsss.refine.crf_torch import mean_field_crf

    dev = torch.device(device) if device is not None else torch.device("cpu")
    q = mean_field_crf(torch.from_numpy(image).to(dev), torch.from_numpy(unary).to(dev), params)
    return q.cpu().numpy()


def dense_crf(
    image: np.ndarray,
    unary_input: np.ndarray,
    params: str | CRFParams,
    *,
    n_labels: int | None = None,
    backend: str = "auto",
    device: torch.device | str | None = None,
) -> np.ndarray:
    """Posterior (n, H, W) float32 marginals of a dense CRF on an HxWx3 uint8 ``image``.

    ``unary_input``: an (n, H, W) score stack for ``softmax`` presets, or an HxW integer label map
    with ``n_labels`` for ``labels`` presets. ``device`` only affects the torch backend.
    """
    p = resolve_params(params)
    unary = build_unary(unary_input, p, n_labels)
    img = _check_image(image, tuple(unary.shape[1:]))
    if resolve_backend(backend) == "exact":
        return _run_exact(img, unary, p)
    return _run_torch(img, unary, p, device)


def label_space_crf(
    image: np.ndarray,
    labels: np.ndarray,
    present: Sequence[int],
    params: str | CRFParams,
    *,
    label_space: int | None = None,
    backend: str = "auto",
) -> np.ndarray:
    """Label-unary CRF of a map of label-space ids (0 background, class ids), in those ids.

    Which labels the CRF chooses among decides how easily it flips a pixel: with ``n`` labels a
    non-chosen one costs ``-log((1 − gt_prob)/(n − 1))``, 1.20 for 2 labels and 4.20 for 21
    (gt_prob 0.7). ``label_space=None`` (IRN's ``cam_to_ir_label``): background and the
    ``present`` classes, in compact indices; an int (TransCAM/PSA ``crf_inference_label``,
    ``n_labels=21`` on VOC): every label ``0..label_space−1``, so absent classes spread the
    remaining probability too. Returns HxW int64 label-space ids.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if label_space is not None:
        if labels.size and labels.max() >= label_space:
            raise ValueError(f"label id {labels.max()} outside the label space of {label_space} labels")
        return crf_labels(image, labels, params, n_labels=label_space, backend=backend)
    lut = np.unique(np.concatenate([[0], np.asarray(present, dtype=np.int64).ravel(), labels.ravel()]))
    if len(lut) < 2:  # background only: nothing to choose between
        return labels
    compact = np.searchsorted(lut, labels)
    return lut[crf_labels(image, compact, params, n_labels=len(lut), backend=backend)]


def crf_labels(
    image: np.ndarray,
    unary_input: np.ndarray,
    params: str | CRFParams,
    *,
    n_labels: int | None = None,
    backend: str = "auto",
    device: torch.device | str | None = None,
) -> np.ndarray:
    """HxW int64 argmax of :func:`dense_crf` (ties go to the lower label, as ``np.argmax``)."""
    q = dense_crf(image, unary_input, params, n_labels=n_labels, backend=backend, device=device)
    return np.argmax(q, axis=0)
