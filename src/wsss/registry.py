"""Name → builder tables, as in timm/SMP: a recipe selects every component by name.

Each registry maps a name to a callable that builds the component from keyword arguments.
``build`` checks those arguments against the builder's signature so that a mistyped recipe
key fails with the key's path and the closest valid name instead of a ``TypeError`` deep in a
constructor.
"""

from __future__ import annotations

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
    "wsss.models.modules",
    "wsss.losses",
    "wsss.cams",
    "wsss.refine",
)


def suggest(name: str, choices: Iterable[str]) -> str:
    """Return ' (did you mean 'x'?)' for the closest choice, or '' when nothing is close.

    Closeness is what a typo looks like: the same words spelt apart or together
    (``batchsize``), a few edits (``epoch``, ``dgo``), then a shared word or a substring
    (``lr_rate`` → ``lr``, ``jitter`` → ``color_jitter``). Plain character overlap is not
    enough: it suggested ``color_jitter`` for ``lr_rate``.
    """
    scored = [(score, choice) for choice in choices if (score := _closeness(name, choice)) is not None]
    return f" (did you mean '{min(scored)[1]}'?)" if scored else ""


def _closeness(name: str, choice: str) -> tuple[int, int, int] | None:
    """(tier, -shared characters, edit distance): smaller is closer; None when unrelated."""
    a, b = _normalise(name), _normalise(choice)
    dist = _edit_distance(a, b)
    if a.replace("_", "") == b.replace("_", ""):
        return (0, 0, dist)
    if dist <= max(1, len(a) // 3):
        return (1, 0, dist)
    shared = _words(a) & _words(b)
    if shared:
        return (2, -sum(map(len, shared)), dist)
    if min(len(a), len(b)) >= 3 and (a in b or b in a):
        return (3, 0, dist)
    return None


def _normalise(text: str) -> str:
    return text.lower().replace("-", "_").replace(" ", "_").replace(".", "_")


def _words(text: str) -> set[str]:
    return {w for w in text.replace("/", "_").split("_") if len(w) >= 2}


def _edit_distance(a: str, b: str) -> int:
    """Levenshtein distance counting a swap of neighbours as one edit (``dgo`` → ``dog``)."""
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cost = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb))
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                cost = min(cost, prev2[j - 2] + 1)
            cur.append(cost)
        prev2, prev = prev, cur
    return prev[-1]


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

    def build_with_compat(self, name: str, where: str, kwargs: dict[str, Any], compat: str) -> Any:
        """``build`` where a builder with a ``compat`` keyword gets the stage's ``compat`` (the
        recipe's quirk switch) unless ``kwargs`` sets it: AMR's CPS pairing, SPU's loss form."""
        kwargs = dict(kwargs)
        if "compat" in inspect.signature(self.get(name, where)).parameters:
            kwargs.setdefault("compat", compat)
        return self.build(name, where, **kwargs)


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
# Modules a CNN backbone inserts after each block or stage (AMR's AMM); built with ``channels=C``.
BACKBONE_INSERTS = Registry("backbone insert")
CAM_MODELS = Registry("CAM model")
METHODS = Registry("method")
CAM_EXTRACTORS = Registry("CAM extractor")
LABEL_GENERATORS = Registry("label generator")
CAM_TRANSFORMS = Registry("CAM transform")
LOSSES = Registry("loss")
SEG_MODELS = Registry("segmentation model")
AFFINITY_MODELS = Registry("affinity network")
