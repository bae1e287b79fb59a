"""Load recipes from YAML, apply ``--set a.b=c`` overrides, validate, and save them.

Validation walks the dataclass schema: every key must be a field (else the error names the
key's dotted path and the closest valid name) and every value must have the field's type.
Recipes may inherit with ``base: other.yaml`` (deep merge, child wins).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import posixpath
import types
import typing
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

from wsss.config.schema import Recipe, value_problems
from wsss.errors import ConfigError
from wsss.files import write_text
from wsss.registry import suggest

T = TypeVar("T")

RECIPE_PACKAGE = "wsss.config.recipes"


# --------------------------------------------------------------------------- recipe files
def recipe_names() -> list[str]:
    """Names of the recipes shipped in the package, e.g. ``synth/bnr-nano``."""
    root = resources.files(RECIPE_PACKAGE)
    names = []
    for group in root.iterdir():
        if group.is_dir():
            names += [f"{group.name}/{f.name[:-5]}" for f in group.iterdir() if f.name.endswith(".yaml")]
    return sorted(names)


def _find_recipe(ref: str | Path, relative_to: Path | None = None) -> tuple[str, str, str]:
    """Find a recipe by file path or shipped name; return (text, name for messages, identity).

    The identity is the resolved path, or ``pkg:NAME`` for a shipped recipe.
    """
    ref_s = str(ref)
    cand = relative_to / ref_s if relative_to is not None else Path(ref_s)
    if cand.is_file():
        try:
            text = cand.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"recipe {cand} is not UTF-8 text (byte {exc.start}: {exc.reason}); save it as UTF-8"
            ) from exc
        return text, str(cand), str(cand.resolve())
    name = ref_s[:-5] if ref_s.endswith(".yaml") else ref_s
    shipped = resources.files(RECIPE_PACKAGE).joinpath(f"{name}.yaml")
    if shipped.is_file():
        return shipped.read_text(), f"recipe '{name}'", f"pkg:{name}"
    raise ConfigError(
        f"recipe '{ref_s}' is neither a file nor a shipped recipe{suggest(name, recipe_names())}; "
        f"run 'wsss recipes' to list the shipped ones"
    )


def _parse(text: str, where: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: invalid YAML: {exc}; fix the syntax at the line it names") from exc
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:  # e.g. a date 2024-13-45
        raise ConfigError(f"{where}: a value cannot be read ({type(exc).__name__}: {exc}); quote it") from exc
    if not isinstance(data, dict):
        raise ConfigError(
            f"{where}: a recipe must be a mapping (key: value lines), got {type(data).__name__}; "
            "see 'wsss recipes --show synth/demo' for the layout"
        )
    return data


def _key_lines(text: str, label: str) -> dict[str, str]:
    """Dotted key path → "LABEL, line N" for every mapping key of a (valid) recipe text,
    so that a misspelled key's error can point at the line to fix."""
    lines: dict[str, str] = {}

    def walk(node: yaml.Node, prefix: str) -> None:
        if not isinstance(node, yaml.MappingNode):
            return
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode):
                path = f"{prefix}{key.value}"
                lines[path] = f"{label}, line {key.start_mark.line + 1}"
                walk(value, f"{path}.")

    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if root is not None:
        walk(root, "")
    return lines


def _load_tree(
    ref: str | Path, relative_to: Path | None = None, seen: tuple[str, ...] = ()
) -> tuple[dict, dict[str, str]]:
    """The recipe with its bases merged, and where each key was written (see ``_key_lines``)."""
    text, label, where = _find_recipe(ref, relative_to)
    data, lines = _parse(text, label), _key_lines(text, label)
    if where in seen:
        raise ConfigError(f"recipe inheritance loops: {' -> '.join((*seen, where))}")
    base = data.pop("base", None)
    if base is None:
        return data, lines
    if where.startswith("pkg:"):  # a shipped recipe's base is relative to its group folder
        name = posixpath.normpath(posixpath.join(posixpath.dirname(where[4:]), str(base)))
        parent, parent_lines = _load_tree(name, None, (*seen, where))
    else:
        parent, parent_lines = _load_tree(base, Path(where).parent, (*seen, where))
    return deep_merge(parent, data), {**parent_lines, **lines}


def deep_merge(base: dict, top: dict) -> dict:
    """Merge ``top`` into a copy of ``base``; nested mappings merge, everything else replaces."""
    out = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key not in _OPAQUE_DICTS:
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


# Builder-argument mappings replace rather than merge: a child recipe that changes the component
# (e.g. ``method: transcam``) must not inherit keywords meant for the parent's component.
_OPAQUE_DICTS: frozenset[str] = frozenset(
    {
        "method_args",
        "model_args",
        "args",
        "loss_args",
        "cycle_loss_args",
        "mode_args",
        "cam_transform_args",
        "extractor_args",
    }
)


# --------------------------------------------------------------------------- overrides
def apply_overrides(tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=c`` strings (values parsed as YAML) to a raw recipe mapping."""
    tree = copy.deepcopy(tree)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key.path=value")
        path, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except (yaml.YAMLError, ValueError, TypeError, OverflowError, RecursionError) as exc:
            raise ConfigError(f"override '{item}': value is not valid YAML ({exc}); quote it") from exc
        node = tree
        keys = path.strip().split(".")
        for key in keys[:-1]:
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override '{item}': '{key}' is not a section")
            node = child
        node[keys[-1]] = value
    return tree


# --------------------------------------------------------------------------- validation
def from_dict(cls: type[T], data: Any, path: str = "", key_lines: Mapping[str, str] | None = None) -> T:
    """Build dataclass ``cls`` from a mapping, checking keys and value types.

    ``key_lines`` (dotted key → "FILE, line N") lets an unknown key's error name its line.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"'{path or '<root>'}' must be a mapping, got {type(data).__name__}{_fix(path)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        full = f"{path}.{key}" if path else str(key)
        if key not in fields:
            at = f" in {key_lines[full]}" if key_lines and full in key_lines else ""
            raise ConfigError(
                f"unknown key '{full}'{at}{suggest(str(key), fields)}; valid keys here: {', '.join(fields)}"
            )
        kwargs[key] = _coerce(hints[key], value, full, key_lines)
    return cls(**kwargs)


def _fix(path: str) -> str:
    """What to do about a bad value of the recipe key ``path``."""
    key = path.split("[", 1)[0]  # the list a bad item is in: --set sets the whole list
    return f"; fix it in the recipe or with --set {key}=..." if key else ""


def _coerce(tp: Any, value: Any, path: str, key_lines: Mapping[str, str] | None = None) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path, key_lines)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, path, key_lines)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(
            errors[0] if len(errors) == 1 else f"'{path}': {value!r} fits none of {tp}{_fix(path)}"
        )
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(
                f"'{path}' must be one of {', '.join(map(repr, choices))}, got {value!r}"
                f"{suggest(str(value), [str(c) for c in choices])}{_fix(path)}"
            )
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"'{path}' must be a list, got {value!r}{_fix(path)}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"'{path}' must have {len(args)} items, got {len(value)}{_fix(path)}")
            return tuple(
                _coerce(a, v, f"{path}[{i}]", key_lines) for i, (a, v) in enumerate(zip(args, value))
            )
        item = args[0] if args else Any
        out = [_coerce(item, v, f"{path}[{i}]", key_lines) for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"'{path}' must be a mapping, got {value!r}{_fix(path)}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"'{path}' must be true or false, got {value!r}{_fix(path)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"'{path}' must be an integer, got {value!r}{_fix(path)}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"'{path}' must be a number, got {value!r}{_fix(path)}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"'{path}' must be a number, got {value!r}{_fix(path)}")
        try:
            number = float(value)
        except OverflowError:  # an int too large for a float
            number = math.inf
        if not math.isfinite(number):
            raise ConfigError(f"'{path}' must be a finite number, got {value!r}{_fix(path)}")
        return number
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"'{path}' must be a string, got {value!r}{_fix(path)}")
        return value
    raise TypeError(f"schema type {tp!r} at '{path}' is not supported by the loader")


# --------------------------------------------------------------------------- public API
def load_recipe(ref: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Load a recipe file or shipped name, apply overrides, and validate it."""
    tree, key_lines = _load_tree(ref)
    return check_values(from_dict(Recipe, apply_overrides(tree, overrides or []), key_lines=key_lines))


def recipe_from_dict(tree: dict[str, Any], overrides: list[str] | None = None) -> Recipe:
    """Validate an in-memory recipe mapping (tests, programmatic use)."""
    return check_values(from_dict(Recipe, apply_overrides(tree, overrides or [])))


def check_values(recipe: Recipe) -> Recipe:
    """``recipe`` unchanged, or a ConfigError listing every value no run can use (see
    :func:`wsss.config.schema.value_problems`)."""
    problems = value_problems(recipe)
    if problems:
        raise ConfigError(problems[0] if len(problems) == 1 else "; ".join(problems))
    return recipe


def to_dict(recipe: Any) -> dict[str, Any]:
    """Plain-YAML-able mapping of a (validated) recipe; tuples become lists."""

    def plain(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(recipe))


class _RecipeDumper(yaml.SafeDumper):
    """Block style for sections, ``[a, b]`` for lists of plain values (scales, thresholds …)."""


def _represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    flat = all(not isinstance(v, (list, dict)) for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flat)


_RecipeDumper.add_representer(list, _represent_list)


def recipe_yaml(recipe: Recipe) -> str:
    """The fully resolved recipe as YAML text (what ``recipe.yaml`` and ``wsss recipes --show`` hold)."""
    return yaml.dump(to_dict(recipe), Dumper=_RecipeDumper, sort_keys=False, allow_unicode=True)


def save_recipe(recipe: Recipe, path: str | Path) -> None:
    """Write the fully resolved recipe (atomically) so a run can be reproduced exactly."""
    write_text(path, recipe_yaml(recipe))
