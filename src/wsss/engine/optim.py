"""SGD with DeepLab-style parameter groups and a poly schedule, plus the authors' legacy variant.

The WSSS code bases (IRN, PSA, SEAM, TransCAM and their forks) share a ``PolyOptimizer`` that
builds ``SGD(params, lr, weight_decay)`` positionally. SGD's third argument is *momentum*, so
those papers trained with momentum = weight decay (≈ plain SGD) and no optimizer-level weight
decay. The clean default here is real momentum and real decay; ``compat="authors_code"`` builds
:class:`LegacyPolySGD` to reproduce published numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, PolynomialLR

from wsss.engine.distributed import unwrap
from wsss.errors import ConfigError

COMPAT_MODES = ("clean", "authors_code")

_NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.RMSNorm,
)


def poly_lr_lambda(max_steps: int, power: float = 0.9) -> Callable[[int], float]:
    """Multiplier ``(1 - step/max_steps) ** power`` for ``LambdaLR`` (0 from ``max_steps`` on).

    Computed in closed form each step, as the authors' ``PolyOptimizer`` does, so the legacy
    path reproduces their learning rates to the last bit.
    """
    if max_steps < 1:
        raise ConfigError(f"poly schedule needs max_steps >= 1, got {max_steps}")

    def multiplier(step: int) -> float:
        return (1.0 - min(step, max_steps) / max_steps) ** power

    return multiplier


def warmup_poly_lr_lambda(
    max_steps: int, warmup_steps: int, warmup_ratio: float = 1e-6, power: float = 0.9
) -> Callable[[int], float]:
    """Multiplier for ``LambdaLR``: linear from ``warmup_ratio`` to 1 over ``warmup_steps`` steps, then
    ``(1 - step/max_steps) ** power`` counted from step 0 (not from the warm-up's end), as ToCo's and
    UniA's ``PolyWarmupAdamW`` schedule their transformer's AdamW."""
    if max_steps < 1:
        raise ConfigError(f"poly schedule needs max_steps >= 1, got {max_steps}")
    if warmup_steps < 0 or not 0 < warmup_ratio <= 1:
        raise ConfigError(
            f"warm-up needs warmup_steps >= 0 and warmup_ratio in (0, 1], got {warmup_steps}, {warmup_ratio}"
        )
    poly = poly_lr_lambda(max_steps, power)

    def multiplier(step: int) -> float:
        if step < warmup_steps:
            return 1.0 - (1.0 - step / warmup_steps) * (1.0 - warmup_ratio)
        return poly(step)

    return multiplier


def make_poly_scheduler(optimizer: torch.optim.Optimizer, max_steps: int, power: float = 0.9) -> LRScheduler:
    """torch's ``PolynomialLR``: lr_k = lr·(1 − k/max_steps)^power, stepped once per optimizer step."""
    if max_steps < 1:
        raise ConfigError(f"poly schedule needs max_steps >= 1, got {max_steps}")
    return PolynomialLR(optimizer, total_iters=max_steps, power=power)


def _is_head(name: str, head_names: Sequence[str]) -> bool:
    return any(name == head or name.startswith(head + ".") for head in head_names)


def param_groups(
    model: nn.Module,
    head_names: Sequence[str],
    lr: float,
    weight_decay: float,
    head_lr_mult: float = 10.0,
    bias_lr_mult: float = 2.0,
    no_decay_bias_norm: bool = True,
) -> list[dict[str, Any]]:
    """DeepLab-style groups: new head layers learn faster, biases faster still and undecayed.

    ``head_names`` are module-name prefixes of the freshly initialised layers (e.g.
    ``["classifier"]``). Backbone weights get ``lr``; heads ``head_lr_mult·lr``. Every parameter
    named ``bias`` (norm biases included) gets a further ``bias_lr_mult``. With
    ``no_decay_bias_norm`` biases and normalisation-layer weights get no weight decay. Frozen
    parameters are left out; empty groups are dropped; each group carries a ``name`` for logs.
    """
    model = unwrap(model)
    all_names = [name for name, _ in model.named_parameters()]
    unknown = [head for head in head_names if not any(_is_head(n, [head]) for n in all_names)]
    if unknown:
        children = ", ".join(name for name, _ in model.named_children())
        raise ConfigError(
            f"head name(s) {unknown} match no parameter of {type(model).__name__}; top-level modules are: {children}"
        )
    buckets: dict[str, list[nn.Parameter]] = {}
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        is_norm = isinstance(module, _NORM_TYPES)
        for local_name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            full_name = f"{module_name}.{local_name}" if module_name else local_name
            part = "head" if _is_head(full_name, head_names) else "backbone"
            kind = "bias" if local_name == "bias" else ("norm" if is_norm else "weight")
            buckets.setdefault(f"{part}.{kind}", []).append(param)

    groups = []
    for part, part_mult in (("backbone", 1.0), ("head", head_lr_mult)):
        for kind in ("weight", "bias", "norm"):
            params = buckets.get(f"{part}.{kind}")
            if not params:
                continue
            decays = kind == "weight" or not no_decay_bias_norm
            mult = part_mult * (bias_lr_mult if kind == "bias" else 1.0)
            groups.append(
                {
                    "name": f"{part}.{kind}",
                    "params": params,
                    "lr": lr * mult,
                    "weight_decay": weight_decay if decays else 0.0,
                }
            )
    return groups


class LegacyPolySGD(torch.optim.SGD):
    """SGD exactly as the authors' ``PolyOptimizer`` builds it: weight decay in the momentum slot.

    Their ``SGD.__init__(params, lr, weight_decay)`` passes the decay value positionally into
    ``momentum``, so momentum = ``weight_decay`` and the optimizer-level weight decay is 0. As in
    their code, a ``weight_decay`` given inside a parameter-group dict still applies to that group.
    Their poly schedule (their ``momentum`` attribute was really the poly power) is the
    ``LambdaLR(poly_lr_lambda(...))`` that :func:`make_sgd` attaches.
    """

    def __init__(self, params: Iterable[Any], lr: float, weight_decay: float) -> None:
        super().__init__(params, lr=lr, momentum=weight_decay, weight_decay=0.0)


def make_sgd(
    params: Iterable[Any],
    *,
    lr: float,
    weight_decay: float,
    max_steps: int,
    momentum: float = 0.9,
    power: float = 0.9,
    compat: str = "clean",
) -> tuple[torch.optim.SGD, LRScheduler]:
    """SGD and its poly schedule (call ``scheduler.step()`` after every optimizer step).

    ``compat="clean"``: ``SGD(momentum=momentum, weight_decay=weight_decay)`` + ``PolynomialLR``.
    ``compat="authors_code"``: :class:`LegacyPolySGD` (momentum = ``weight_decay``, ``momentum``
    ignored) + the closed-form poly lambda the authors compute.
    """
    if compat not in COMPAT_MODES:
        raise ConfigError(f"compat {compat!r} is not one of {', '.join(COMPAT_MODES)}")
    if compat == "authors_code":
        optimizer: torch.optim.SGD = LegacyPolySGD(params, lr, weight_decay)
        return optimizer, LambdaLR(optimizer, poly_lr_lambda(max_steps, power))
    optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    return optimizer, make_poly_scheduler(optimizer, max_steps, power)
