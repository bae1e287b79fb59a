"""UniA's uncertainty head: shapes, fixed gains, sampling law, compat projection, soft masking."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from wsss.errors import ConfigError, DataError
from wsss.models.modules import uncertainty_inference as ui
from wsss.models.modules.uncertainty_inference import (
    ProjectionHead,
    UncertaintyInference,
    UncertaintyOutput,
    sample_mean,
)

GRID = (6, 5)  # not divisible by the pooling size 4


def _head(**overrides: object) -> UncertaintyInference:
    kwargs = dict(
        num_heads=4,
        pooling_size=4,
        hidden_dim=48,
        proj_hidden=40,
        proj_bottleneck=16,
        mask_heads=4,
        samples=5,
    )
    kwargs.update(overrides)
    return UncertaintyInference(32, **kwargs)


def _gains(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [m.gain for m in module.modules() if isinstance(m, ProjectionHead)]


def test_shapes_on_a_grid_not_divisible_by_the_pool() -> None:
    torch.manual_seed(0)
    head = _head()
    out = head(torch.randn(2, 30, 32), GRID)
    assert isinstance(out, UncertaintyOutput)
    for name in ("tokens", "mean", "log_var", "uncertainty"):
        assert getattr(out, name).shape == (2, 30, 32), name
    assert out.sampled_mean.shape == (2, 6, 5)
    assert torch.equal(out.uncertainty, torch.sigmoid(out.log_var))
    # ceil-mode 4×4 pooling of 6×5 keeps the border: 2×2 pooled tokens.
    u = head.input_proj(torch.randn(1, 30, 32)).transpose(1, 2).reshape(1, 48, 6, 5)
    assert head.generate_parameters.pooling(u).shape == (1, 48, 2, 2)


def test_gradients_reach_every_parameter_but_the_fixed_gains() -> None:
    torch.manual_seed(0)
    head = _head()
    gains = _gains(head)
    assert len(gains) == 3  # input_proj, std_proj, mean_proj
    gain_ids = {id(g) for g in gains}
    opt = torch.optim.AdamW(head.parameters(), lr=0.1, weight_decay=0.5)
    out = head(torch.randn(2, 30, 32), GRID)
    (out.tokens.pow(2).sum() + out.sampled_mean.sum() + out.mean.sum()).backward()
    for name, param in head.named_parameters():
        if id(param) in gain_ids:
            assert not param.requires_grad and param.grad is None, name
        else:
            assert param.grad is not None and param.grad.abs().sum() > 0, name
    opt.step()
    for gain in gains:
        assert torch.equal(gain, torch.ones_like(gain))
    # After the step, every projection's effective weight still has unit rows.
    for m in head.modules():
        if isinstance(m, ProjectionHead):
            norms = m.last_layer.weight.norm(dim=1)
            assert torch.allclose(norms, torch.ones_like(norms), atol=1e-6)


def test_projection_head_maps_a_unit_bottleneck_to_the_normalised_weight_column() -> None:
    torch.manual_seed(0)
    proj = ProjectionHead(6, 5, hidden_dim=8, bottleneck_dim=4)
    v = proj.last_layer.parametrizations.weight.original1.detach()
    normalised = v / v.norm(dim=1, keepdim=True)
    # Make the MLP emit 5·e_2 whatever the input: the L2 step must remove the factor 5.
    last = proj.mlp[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor([0.0, 0.0, 5.0, 0.0]))
    out = proj(torch.randn(3, 6))
    assert torch.allclose(out, normalised[:, 2].expand(3, 5), atol=1e-6)
    # Rows of the effective weight are the v rows normalised (gain exactly 1).
    assert torch.allclose(proj.last_layer.weight, normalised, atol=1e-6)
    assert torch.equal(proj.gain, torch.ones(5, 1))


def test_projection_head_loads_the_released_weight_g_weight_v_keys() -> None:
    torch.manual_seed(0)
    proj = ProjectionHead(6, 5, hidden_dim=8, bottleneck_dim=4)
    state = {k: v for k, v in proj.state_dict().items() if k.startswith("mlp.")}
    weight_v = torch.randn(5, 4)
    state["last_layer.weight_g"] = torch.ones(5, 1)
    state["last_layer.weight_v"] = weight_v
    proj.load_state_dict(state)
    assert torch.allclose(proj.last_layer.weight, weight_v / weight_v.norm(dim=1, keepdim=True))


def test_sampling_uses_exp_half_log_var_as_std(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    monkeypatch.setattr(ui.torch, "randn_like", lambda x, **kw: torch.ones_like(x, **kw))
    for samples in (1, 3):
        head = _head(samples=samples).train()
        out = head(torch.randn(2, 30, 32), GRID)
        # one standard draw scaled to the std of the mean of `samples` draws: 1/sqrt(samples)
        expected = (out.mean + torch.exp(out.log_var / 2) / samples**0.5).mean(-1).reshape(2, 6, 5)
        assert torch.allclose(out.sampled_mean, expected, atol=1e-6)
        # Not exp(s) nor sqrt(sigmoid(s)): the check is sharp enough to tell.
        wrong = (out.mean + torch.exp(out.log_var) / samples**0.5).mean(-1).reshape(2, 6, 5)
        assert not torch.allclose(out.sampled_mean, wrong, atol=1e-4)


def test_sample_mean_statistics() -> None:
    torch.manual_seed(0)
    n = 40_000
    mean = torch.full((2, n), 0.7)
    log_var = torch.tensor([[-1.0], [1.5]]).expand(2, n)
    std = torch.exp(log_var[:, 0] / 2)
    single = sample_mean(mean, log_var, 1)
    assert torch.allclose((single - mean).std(dim=1), std, rtol=0.05)
    assert torch.allclose(single.mean(dim=1), mean[:, 0], atol=0.05)
    # The mean of 16 draws has a quarter of the std; so does its one-draw form, and both are Gaussian
    # (a mean of normals is normal): compare the 16-draw average drawn by hand with sample_mean.
    averaged = sample_mean(mean, log_var, 16)
    assert torch.allclose((averaged - mean).std(dim=1), std / 4, rtol=0.05)
    by_hand = mean + torch.randn(16, 2, n).mean(0) * torch.exp(log_var / 2)
    assert torch.allclose((by_hand - mean).std(dim=1), (averaged - mean).std(dim=1), rtol=0.05)
    kurtosis = (((averaged - mean) / (averaged - mean).std(dim=1, keepdim=True)) ** 4).mean(dim=1)
    assert torch.allclose(kurtosis, torch.full((2,), 3.0), atol=0.15)


def test_eval_mode_is_deterministic_and_uses_the_mean() -> None:
    torch.manual_seed(0)
    head = _head().eval()
    tokens = torch.randn(2, 30, 32)
    a, b = head(tokens, GRID), head(tokens, GRID)
    assert torch.equal(a.sampled_mean, b.sampled_mean)
    assert torch.allclose(a.sampled_mean, a.mean.mean(-1).reshape(2, 6, 5))


def test_compat_form_sends_the_mean_through_std_proj() -> None:
    torch.manual_seed(0)
    head = _head(separate_mean_proj=False)
    params = head.generate_parameters
    assert params.mean_proj is None
    assert not any(k.startswith("generate_parameters.mean_proj") for k in head.state_dict())
    u = head.input_proj(torch.randn(2, 30, 32))
    mean_pre, std_pre = params.branches(u, GRID)
    mean, log_var = params(u, GRID)
    assert torch.allclose(mean, params.std_proj(mean_pre))
    assert torch.allclose(log_var, params.std_proj(std_pre))
    # The clean form uses its own projection, so the same input gives another μ.
    clean = _head()
    clean.load_state_dict(head.state_dict(), strict=False)
    clean_mean, _ = clean.generate_parameters(u, GRID)
    assert not torch.allclose(clean_mean, mean, atol=1e-4)


def test_full_uncertainty_zeroes_the_keys_and_values(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    head = _head()
    attn = head.cross_attn
    with torch.no_grad():  # non-zero biases so the expected output is not just T
        attn.in_proj_bias.normal_()
        attn.out_proj.bias.normal_()
    tokens = torch.randn(2, 30, 32)
    mean = torch.zeros(2, 30, 32)
    huge = torch.full((2, 30, 32), 100.0)  # sigmoid(100) == 1 in float32
    monkeypatch.setattr(head.generate_parameters, "forward", lambda u, grid: (mean, huge))
    out = head(tokens, GRID)
    assert torch.equal(out.uncertainty, torch.ones_like(huge))
    # R = 0: every key is b_k and every value b_v, so attention returns W_o·b_v + b_o for all queries.
    value_bias = attn.in_proj_bias[64:]
    shift = F.linear(value_bias, attn.out_proj.weight, attn.out_proj.bias)
    assert torch.allclose(out.tokens, tokens + shift, atol=1e-5)
    # With zero uncertainty the masking is not a constant shift.
    partial = head.soft_mask(tokens, torch.zeros_like(tokens))
    assert not torch.allclose(partial, tokens + shift, atol=1e-3)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"mask_heads": 5}, "mask_heads"),
        ({"num_heads": 5}, "num_heads"),
        ({"samples": 0}, "samples"),
        ({"pooling_size": 0}, "pooling_size"),
        ({"separate_mean_proj": "yes"}, "separate_mean_proj"),
    ],
)
def test_bad_arguments_raise_config_error(overrides: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        _head(**overrides)


def test_bad_tokens_raise_data_error() -> None:
    head = _head()
    with pytest.raises(DataError, match="grid"):
        head(torch.randn(2, 30, 32), (5, 5))
    with pytest.raises(DataError, match="tokens"):
        head(torch.randn(2, 30, 16), GRID)
