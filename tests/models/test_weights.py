"""Weight files: reading, unwrapping, prefix stripping, by-key loading with counts."""

from __future__ import annotations

import argparse
import pickle

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from wsss.errors import CheckpointError
from wsss.models.weights import load_checkpoint_file, load_weights, strip_prefixes


class Custom:
    """A class the weights-only unpickler must refuse."""


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def donor_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return {
        k: torch.randn_like(v) if v.is_floating_point() else v + 7 for k, v in tiny().state_dict().items()
    }


@pytest.mark.parametrize("wrapper", [None, "model", "state_dict"])
def test_load_pth_bare_and_wrapped(tmp_path, wrapper):
    state = donor_state()
    path = tmp_path / "w.pth"
    torch.save(state if wrapper is None else {wrapper: state, "epoch": 3}, path)
    loaded = load_checkpoint_file(path)
    assert list(loaded) == list(state)
    for k in state:
        assert torch.equal(loaded[k], state[k])


def test_load_safetensors(tmp_path):
    state = {k: v.contiguous() for k, v in donor_state().items()}
    path = tmp_path / "w.safetensors"
    save_file(state, str(path))
    loaded = load_checkpoint_file(path)
    assert set(loaded) == set(state) and torch.equal(loaded["0.weight"], state["0.weight"])


def test_training_checkpoint_with_argparse_args_loads_without_trust(tmp_path):
    path = tmp_path / "main.pth"
    torch.save(
        {"model": donor_state(), "args": argparse.Namespace(lr=5e-4, model="Conformer_small_patch16")}, path
    )
    assert set(load_checkpoint_file(path)) == set(donor_state())


def test_arbitrary_pickled_object_needs_trust(tmp_path):
    path = tmp_path / "odd.pth"
    torch.save({"model": donor_state(), "extra": Custom()}, path)
    with pytest.raises(CheckpointError, match=r"odd\.pth.*trust_pickle"):
        load_checkpoint_file(path)
    assert set(load_checkpoint_file(path, trust_pickle=True)) == set(donor_state())


def test_missing_and_corrupt_files_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match=r"nothere\.pth"):
        load_checkpoint_file(tmp_path / "nothere.pth")
    bad = tmp_path / "garbage.pth"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match=r"garbage\.pth"):
        load_checkpoint_file(bad)
    bad_st = tmp_path / "garbage.safetensors"
    bad_st.write_bytes(b"\x00" * 20)
    with pytest.raises(CheckpointError, match=r"garbage\.safetensors"):
        load_checkpoint_file(bad_st)


def test_non_state_dict_content_is_rejected(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(CheckpointError, match="not a state_dict"):
        load_checkpoint_file(path)
    path2 = tmp_path / "mixed.pth"
    torch.save({"a": torch.zeros(1), "b": 3}, path2)
    with pytest.raises(CheckpointError, match=r"mixed\.pth.*1 entries are not tensors"):
        load_checkpoint_file(path2)


def test_strip_prefixes_counts_and_collisions():
    t = torch.zeros(1)
    out, n = strip_prefixes({"module.a": t, "module.module.b": t, "c": t})
    assert list(out) == ["a", "b", "c"] and n == 2
    out, n = strip_prefixes({"backbone.x": t, "module.y": t}, ("module.", "backbone."))
    assert list(out) == ["x", "y"] and n == 2
    with pytest.raises(CheckpointError, match="'a'"):
        strip_prefixes({"module.a": t, "a": t})


def test_load_weights_counts_and_copies():
    model = tiny()
    state = donor_state()
    state["extra.weight"] = torch.zeros(2)
    state["2.weight"] = torch.zeros(5, 5)  # wrong shape
    del state["2.bias"]
    before = model.state_dict()["2.weight"].clone()
    report = load_weights(model, state, min_matched=7, where="donor.pth")
    assert len(report.matched) == 7 and report.model_keys == 9
    assert report.unexpected == ["extra.weight"]
    assert report.missing == ["2.bias"]
    assert report.mismatched == [("2.weight", (5, 5), (2, 4))]
    assert sorted(report.not_loaded) == ["2.bias", "2.weight"]
    assert torch.equal(model[0].weight, state["0.weight"])
    assert torch.equal(model[1].num_batches_tracked, state["1.num_batches_tracked"])
    assert torch.equal(model[2].weight, before)
    assert "7/9 model tensors matched" in report.summary()
    with pytest.raises(CheckpointError, match="at least 8"):
        load_weights(tiny(), state, min_matched=8)


def test_load_weights_skip_and_fraction():
    model = tiny()
    state = donor_state()
    report = load_weights(model, state, min_matched=0.75, skip=("2.",))  # ceil(0.75 * 9) = 7
    assert sorted(report.skipped) == ["2.bias", "2.weight"] and len(report.matched) == 7
    assert report.missing == [] and sorted(report.not_loaded) == ["2.bias", "2.weight"]
    with pytest.raises(CheckpointError, match="at least 8"):
        load_weights(tiny(), state, min_matched=0.8, skip=("2.",))


def test_load_weights_failure_names_file_counts_and_prefix_and_leaves_model_unchanged():
    model = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = {f"backbone.{k}": v for k, v in donor_state().items()}
    with pytest.raises(CheckpointError) as err:
        load_weights(model, state, min_matched=9, where="/x/ckpt.pth")
    msg = str(err.value)
    assert "/x/ckpt.pth" in msg and "0/9 model tensors matched" in msg and "9 unexpected" in msg
    assert "'backbone.'" in msg
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_load_weights_hints_model_side_prefix():
    wrapped = nn.Module()
    wrapped.net = tiny()
    with pytest.raises(CheckpointError, match=r"Model keys carry the prefix 'net\.'"):
        load_weights(wrapped, donor_state(), min_matched=1.0)


def test_min_matched_type_checked():
    with pytest.raises(TypeError):
        load_weights(tiny(), donor_state(), min_matched=True)
    with pytest.raises(ValueError):
        load_weights(tiny(), donor_state(), min_matched=1.5)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_plain_pickle_file_is_rejected_with_its_name(tmp_path):
    path = tmp_path / "raw.pkl"
    path.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointError, match=r"raw\.pkl"):
        load_checkpoint_file(path)
