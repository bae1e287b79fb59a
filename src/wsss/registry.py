"""Name → builder tables, as in timm/SMP: a recipe selects every component by name.

Each registry maps a name to a callable that builds the component from keyword arguments.
``build`` checks those arguments against the builder's signature so that a mistyped recipe
key fails with the key's path and the closest valid name instead of a ``TypeError`` deep in a
constructor.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from wsss.errors import ConfigError

T = TypeVar("T", bound=Callable[..., Any])

# Modules whose import fills the registries. Imported lazily on first lookup so that
# ``import wsss`` stays cheap and registries never depend on import order.
_PROVIDERS = (
    "wsss.data",
    "wsss.models",
    "wsss.losses",
    "wsss.cams",
    "wsss.refine",
)


def suggest(name: str, choices: Iterable[str]) -> str:
    """Return ' (did you mean 'x'?)' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


class Registry:
    """A named table of builders."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._builders: dict[str, Callable[..., Any]] = {}

    def register(self, name: str | None = None) -> Callable[[T], T]:
        """Decorator: ``@MODELS.register("transcam")``."""

        def deco(fn: T) -> T:
            key = name or fn.__name__
            if key in self._builders and self._builders[key] is not fn:
                raise ValueError(f"{self.kind} '{key}' is registered twice")
            self._builders[key] = fn
            return fn

        return deco

    def names(self) -> list[str]:
        _load_providers()
        return sorted(self._builders)

    def __contains__(self, name: str) -> bool:
        _load_providers()
        return name in self._builders

    def get(self, name: str, where: str = "") -> Callable[..., Any]:
        _load_providers()
        if name not in self._builders:
            at = f" at '{where}'" if where else ""
            raise ConfigError(
                f"unknown {self.kind} '{name}'{at}{suggest(name, self._builders)}; "
                f"available: {', '.join(sorted(self._builders)) or '(none)'}"
            )
        return self._builders[name]

    def build(self, name: str, where: str = "", **kwargs: Any) -> Any:
        """Build ``name`` with ``kwargs``; unknown keyword names are a ConfigError."""
        fn = self.get(name, where)
        check_kwargs(fn, kwargs, where or f"{self.kind} '{name}'")
        return fn(**kwargs)


def check_kwargs(fn: Callable[..., Any], kwargs: dict[str, Any], where: str) -> None:
    """Raise ConfigError naming the first keyword ``fn`` does not accept."""
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    valid = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    for key in kwargs:
        if key not in valid:
            raise ConfigError(
                f"unknown key '{where}.{key}'{suggest(key, valid)}; valid keys: {', '.join(valid)}"
            )


_loaded = False


def _load_providers() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for mod in _PROVIDERS:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:  # a provider package not written yet
            if exc.name != mod:
                raise


DATASETS = Registry("dataset")
BACKBONES = Registry("backbone")
CAM_MODELS = Registry("CAM model")
METHODS = Registry("method")
CAM_EXTRACTORS = Registry("CAM extractor")
LABEL_GENERATORS = Registry("label generator")
CAM_TRANSFORMS = Registry("CAM transform")
LOSSES = Registry("loss")
SEG_MODELS = Registry("segmentation model")
AFFINITY_MODELS = Registry("affinity network")
