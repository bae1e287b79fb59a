"""CAM extractors on TransCAM: A*-reading ones run the explicit attention path, ``conv`` runs SDPA."""

from __future__ import annotations

import pytest
import torch

from wsss.cams.extractors import get_extractor
from wsss.errors import ConfigError
from wsss.models.cam.transcam import a_star, class_token_attention, refine
from wsss.registry import CAM_MODELS


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return CAM_MODELS.build("transcam", backbone="conformer_nano", num_classes=5, drop_path_rate=0.0).eval()


@pytest.fixture(scope="module")
def batch():
    return torch.randn(2, 3, 48, 64, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def reference(model, batch):
    """One explicit-path forward, taken before any monkeypatching."""
    with torch.no_grad():
        return model(batch, with_attention=True)


def _forbid_sdpa(monkeypatch):
    def forbidden(*_args, **_kwargs):
        raise AssertionError("scaled_dot_product_attention called by an A*-reading extractor")

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", forbidden)


def test_transcam_extractor_is_a_star_times_m_on_the_explicit_path(model, batch, reference, monkeypatch):
    _forbid_sdpa(monkeypatch)
    with torch.no_grad():
        cams = get_extractor("transcam")(model, batch)
    assert cams.shape == (2, 5, 3, 4)
    # same forward, so bit-for-bit the refinement of this pass's M by this pass's A*
    assert torch.equal(cams, refine(reference.cam, a_star(reference.attn_sum)))


def test_clsattn_extractor_runs_on_the_explicit_path(model, batch, reference, monkeypatch):
    _forbid_sdpa(monkeypatch)
    with torch.no_grad():
        cams = get_extractor("clsattn")(model, batch)
    assert torch.equal(cams, class_token_attention(reference.attn_sum, reference.grid) * reference.cam)


def test_conv_extractor_uses_sdpa_once_per_block(model, batch, reference, monkeypatch):
    calls = []
    real = torch.nn.functional.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting)
    with torch.no_grad():
        cams = get_extractor("conv")(model, batch)
    assert len(calls) == 12
    assert all(shape == (2, 3, 13, 16) for shape in calls)  # B × heads × (1 + 3·4) tokens × head dim
    torch.testing.assert_close(cams, reference.cam, atol=1e-4 * float(reference.cam.abs().max()), rtol=0)


def test_unknown_extractor_suggests_a_name():
    with pytest.raises(ConfigError, match="transcam"):
        get_extractor("transcm")
