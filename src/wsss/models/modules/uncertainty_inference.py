"""UniA's uncertainty-inference head (Yang et al., TMM 2025; seed_methods.md §5.2).

On tokens T (B×N×C) laid out row-major on an h×w grid:

* U = ProjectionHead(C → hidden)(T);
* channel branch: μ_c, σ_c = two depthwise 1×1 convs of U on the grid (a per-channel affine map);
* spatial branch: P = max-pool(U) to (h/p)×(w/p) tokens; μ_a, σ_a = MHA_μ(U, P, P), MHA_σ(U, P, P);
* s = std_proj(σ_a + σ_c) (log-variance), μ = mean_proj(μ_a + μ_c), both ProjectionHead(hidden → C);
* soft ambiguity masking: R = T ⊙ (1 − sigmoid(s)), T′ = MHA(T, R, R) + T;
* reparameterised sampling: Z = mean_j (μ + ε_j ⊙ exp(s/2)), z̄ = channel-mean(Z) on the grid.

The pooling uses ``ceil_mode`` so a grid not divisible by ``pooling_size`` keeps its border tokens in
a smaller last window; on divisible grids (28×28 at 448 px) it equals the released floor pooling.

Because every ProjectionHead ends in an L2-normalised bottleneck times unit-norm rows, s and μ lie in
[−1, 1]: the uncertainty sigmoid(s) stays within [0.27, 0.73], as in the released code.

Attribute names follow the released ``get_uncertainty``/``Parameterise``/``CTCHead`` so their
checkpoints map key for key (the released unused ``conv`` and, in compat form, ``mean_proj`` keys
must be dropped). The head knows nothing about ViTs: any token grid, square or not, works.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import weight_norm

from wsss.errors import ConfigError, DataError


def _positive_int(key: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"uncertainty head {key} must be a positive integer, got {value!r}")
    return value


def _divisible(dim_key: str, dim: int, heads_key: str, heads: int) -> None:
    if dim % heads:
        raise ConfigError(
            f"uncertainty head {dim_key}={dim} must be divisible by {heads_key}={heads}; change one of them"
        )


class ProjectionHead(nn.Module):
    """MLP → L2-normalise → weight-normed Linear with gain fixed to 1 (the code's ``CTCHead``).

    The fixed unit gain makes every output row a unit vector, so each output channel is a cosine
    between the normalised bottleneck and a learned direction. The gain is a frozen parameter (not
    a buffer) so that the released ``last_layer.weight_g`` key still loads (torch converts it).
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 2048, bottleneck_dim: int = 256) -> None:
        super().__init__()
        for key, value in (
            ("in_dim", in_dim),
            ("out_dim", out_dim),
            ("hidden_dim", hidden_dim),
            ("bottleneck_dim", bottleneck_dim),
        ):
            _positive_int(key, value)
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, bottleneck_dim),
        )
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                nn.init.trunc_normal_(layer.weight, std=0.02)
                nn.init.zeros_(layer.bias)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        with torch.no_grad():
            self.gain.fill_(1.0)
        self.gain.requires_grad_(False)

    @property
    def gain(self) -> nn.Parameter:
        """The weight-norm gain g (out_dim×1), fixed to 1 and never trained."""
        return self.last_layer.parametrizations.weight.original0

    def forward(self, x: Tensor) -> Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1))


def tokens_to_map(tokens: Tensor, grid: tuple[int, int]) -> Tensor:
    """B×N×C row-major tokens → B×C×h×w."""
    b, _, c = tokens.shape
    return tokens.transpose(1, 2).reshape(b, c, grid[0], grid[1])


def _to_tokens(feature_map: Tensor) -> Tensor:
    """B×C×h×w → B×(h·w)×C."""
    return feature_map.flatten(2).transpose(1, 2)


class DistributionParameters(nn.Module):
    """(μ, s) from U: channel (depthwise 1×1) plus spatial (cross-attention to pooled U) branches.

    ``separate_mean_proj=False`` is the released code's form: μ also goes through ``std_proj`` and
    no ``mean_proj`` exists (in the release it was built but never used, so it never trained).
    """

    def __init__(
        self,
        hidden_dim: int,
        out_dim: int,
        *,
        num_heads: int = 16,
        pooling_size: int = 4,
        proj_hidden: int = 2048,
        proj_bottleneck: int = 256,
        separate_mean_proj: bool = True,
    ) -> None:
        super().__init__()
        _positive_int("pooling_size", pooling_size)
        _positive_int("num_heads", num_heads)
        _divisible("hidden_dim", hidden_dim, "num_heads", num_heads)
        self.pooling = nn.MaxPool2d(pooling_size, stride=pooling_size, ceil_mode=True)
        self.mean_cross_attn = nn.MultiheadAttention(hidden_dim, num_heads, batch_first=True)
        self.std_cross_attn = nn.MultiheadAttention(hidden_dim, num_heads, batch_first=True)
        self.mean_conv = nn.Conv2d(hidden_dim, hidden_dim, kernel_size=1, groups=hidden_dim)
        self.std_conv = nn.Conv2d(hidden_dim, hidden_dim, kernel_size=1, groups=hidden_dim)
        self.std_proj = ProjectionHead(hidden_dim, out_dim, proj_hidden, proj_bottleneck)
        self.mean_proj = (
            ProjectionHead(hidden_dim, out_dim, proj_hidden, proj_bottleneck) if separate_mean_proj else None
        )

    def branches(self, u: Tensor, grid: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """(μ_a + μ_c, σ_a + σ_c), each B×N×hidden, before the projections."""
        u_map = tokens_to_map(u, grid)
        pooled = _to_tokens(self.pooling(u_map))
        mean_a = self.mean_cross_attn(u, pooled, pooled, need_weights=False)[0]
        std_a = self.std_cross_attn(u, pooled, pooled, need_weights=False)[0]
        mean_c = _to_tokens(self.mean_conv(u_map))
        std_c = _to_tokens(self.std_conv(u_map))
        return mean_a + mean_c, std_a + std_c

    def forward(self, u: Tensor, grid: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """(μ, s), each B×N×out_dim."""
        mean_pre, std_pre = self.branches(u, grid)
        mean_proj = self.mean_proj if self.mean_proj is not None else self.std_proj
        return mean_proj(mean_pre), self.std_proj(std_pre)


def sample_mean(mean: Tensor, log_var: Tensor, samples: int) -> Tensor:
    """Z = mean_j (μ + ε_j ⊙ exp(s/2)), ε_j ~ N(0, I), j = 1..samples.

    The mean of ``samples`` independent standard normals is itself N(0, 1/samples), so Z is drawn
    as μ + (ε / √samples) ⊙ exp(s/2) with one ε: exactly the distribution (and, given the draw, the
    gradient) of averaging the samples, without drawing ``samples`` noise tensors (50 at UniA's
    setting: the draws were a fifth of a CPU training step of the tiny recipe).
    """
    _positive_int("samples", samples)
    noise = torch.randn_like(mean) / math.sqrt(samples)
    return mean + noise * torch.exp(0.5 * log_var)


class UncertaintyOutput(NamedTuple):
    """What the head returns; all B×N×C except ``sampled_mean`` (B×h×w)."""

    tokens: Tensor  # T′ = MHA(T, R, R) + T after soft ambiguity masking
    mean: Tensor  # μ
    log_var: Tensor  # s
    uncertainty: Tensor  # sigmoid(s)
    sampled_mean: Tensor  # z̄ = channel-mean of the sample average, on the grid


class UncertaintyInference(nn.Module):
    """UniA's uncertainty head: (μ, s) from projected tokens, soft masking of T and sampled z̄.

    In eval mode z̄ is the channel-mean of μ (no noise): z̄ only feeds the training distribution
    loss, and inference must be deterministic. In training mode it averages ``samples`` draws.
    """

    def __init__(
        self,
        dim: int = 768,
        *,
        num_heads: int = 16,
        pooling_size: int = 4,
        hidden_dim: int = 1024,
        proj_hidden: int = 2048,
        proj_bottleneck: int = 256,
        mask_heads: int = 16,
        samples: int = 50,
        separate_mean_proj: bool = True,
    ) -> None:
        super().__init__()
        for key, value in (("dim", dim), ("hidden_dim", hidden_dim), ("mask_heads", mask_heads)):
            _positive_int(key, value)
        self.samples = _positive_int("samples", samples)
        _divisible("dim", dim, "mask_heads", mask_heads)
        if not isinstance(separate_mean_proj, bool):
            raise ConfigError(
                f"uncertainty head separate_mean_proj must be true or false, got {separate_mean_proj!r}"
            )
        self.dim = dim
        self.input_proj = ProjectionHead(dim, hidden_dim, proj_hidden, proj_bottleneck)
        self.generate_parameters = DistributionParameters(
            hidden_dim,
            dim,
            num_heads=num_heads,
            pooling_size=pooling_size,
            proj_hidden=proj_hidden,
            proj_bottleneck=proj_bottleneck,
            separate_mean_proj=separate_mean_proj,
        )
        self.cross_attn = nn.MultiheadAttention(dim, mask_heads, batch_first=True)

    def soft_mask(self, tokens: Tensor, uncertainty: Tensor) -> Tensor:
        """T′ = MHA(q=T, k=R, v=R) + T with R = T ⊙ (1 − uncertainty)."""
        residual = tokens * (1 - uncertainty)
        return self.cross_attn(tokens, residual, residual, need_weights=False)[0] + tokens

    def _check(self, tokens: Tensor, grid: tuple[int, int]) -> None:
        if tokens.ndim != 3 or tokens.shape[-1] != self.dim:
            raise DataError(
                f"uncertainty head expects B×N×{self.dim} tokens, got shape {tuple(tokens.shape)}"
            )
        if len(grid) != 2 or grid[0] * grid[1] != tokens.shape[1]:
            raise DataError(
                f"uncertainty head grid {tuple(grid)} does not hold the {tokens.shape[1]} tokens given"
            )

    def forward(self, tokens: Tensor, grid: tuple[int, int]) -> UncertaintyOutput:
        self._check(tokens, grid)
        mean, log_var = self.generate_parameters(self.input_proj(tokens), grid)
        uncertainty = torch.sigmoid(log_var)
        masked = self.soft_mask(tokens, uncertainty)
        z = sample_mean(mean, log_var, self.samples) if self.training else mean
        sampled_mean = z.mean(dim=-1).reshape(tokens.shape[0], grid[0], grid[1])
        return UncertaintyOutput(masked, mean, log_var, uncertainty, sampled_mean)
