"""Typed configs from YAML: dataclasses that a YAML file maps onto 1:1, with ``key.sub=value`` overrides.

The machinery of every command's config (``liger finetune`` / ``linearize``: :class:`liger.train.config.TrainConfig`;
``liger bench``: :class:`liger.bench.config.BenchConfig`): precedence defaults < YAML file < settings (from
command-line flags) < ``key.sub=value`` overrides; unknown keys and values of the wrong type are errors naming
the key; a field's docstring (the string under it) is its documentation (:func:`reference_table`).
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A bad run configuration (unknown key, wrong type, invalid value); the message names the key."""



def need(ok: bool, key: str, message: str, value) -> None:
    """A value check beyond the types: ``ConfigError("KEY MESSAGE, got VALUE")`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"{key} {message}, got {value!r}")


def from_dict(cls, data: dict, prefix: str = ""):
    """Build dataclass ``cls`` from a (YAML) mapping, checking every key and value type."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown config key '{prefix}{unknown[0]}' (valid keys under "
                          f"'{prefix.rstrip('.') or 'the top level'}': {', '.join(sorted(names))})")
    kwargs = {}
    for name, value in data.items():
        key, hint = prefix + name, hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = from_dict(hint, value if value is not None else {}, key + ".")
        else:
            kwargs[name] = _coerce(value, hint, key)
    if prefix:
        return cls(**kwargs)
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ConfigError(str(err)) from err


def _coerce(value, hint, key: str):
    """``value`` checked against the annotation ``hint`` (ints are accepted where floats are expected)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as err:
                errors.append(err)
        raise errors[0]
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key} must be one of {', '.join(map(str, args))}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return dict(value)
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        # YAML 1.1 reads 1e-3 as a string (no dot); accept plain numbers written that way
        try:
            return float(value)
        except ValueError:
            pass
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ConfigError(f"{key} must be of type {hint.__name__}, got {value!r}")
    return value


class _Loader(yaml.SafeLoader):
    """PyYAML follows YAML 1.1, which reads ``1e-3`` (an exponent without a dot) as a string; this loader reads
    such numbers as floats, as YAML 1.2 does — also inside untyped sections such as ``model.liger``."""


_Loader.add_implicit_resolver("tag:yaml.org,2002:float",
                              re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


def parse_yaml(text: str):
    """YAML text (a config file, an override's value) as Python values; ``1e-3`` is a float."""
    return yaml.load(text, Loader=_Loader)


def apply_override(data: dict, override: str) -> None:
    """Apply one ``key.sub=value`` override (the value is parsed as YAML: ``3``, ``1e-4``, ``[q_proj]``,
    ``null``) to the nested mapping ``data``."""
    key, sep, text = override.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override '{override}' is not of the form key.sub=value")
    try:
        value = parse_yaml(text) if text.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override '{override}': cannot parse the value ({str(err).splitlines()[0]})") from err
    set_key(data, key, value)


def set_key(data: dict, key: str, value) -> None:
    """``data["a"]["b"] = value`` for ``key = "a.b"``, creating sections as needed."""
    *parents, leaf = key.split(".")
    node = data
    for i, part in enumerate(parents):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"'{'.'.join(parents[:i + 1])}' is not a config section (setting {key})")
        node = child
    node[leaf] = value


def read_yaml(file: Path) -> dict:
    """The mapping in the YAML file ``file`` (empty for an empty file).

    Raises:
        ConfigError: invalid YAML, or a top level that is not a mapping of sections.
    """
    try:
        data = parse_yaml(file.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{file}: invalid YAML ({str(err).splitlines()[0]})") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{file}: the top level must be a mapping of sections")
    return data


def build(cls, data: dict | None = None, settings: dict[str, Any] | None = None,
          overrides: list[str] | tuple[str, ...] = ()):
    """An instance of dataclass ``cls``: its defaults, then ``data`` (e.g. from :func:`read_yaml`), then
    ``settings`` (``{"train.max_steps": 10}``, from command-line flags), then the ``key.sub=value`` overrides in
    order.

    Raises:
        ConfigError: unknown key, wrong type or invalid value (the message names the key).
    """
    data = dict(data or {})
    for key, value in (settings or {}).items():
        set_key(data, key, value)
    for override in overrides:
        apply_override(data, override)
    return from_dict(cls, data)


def to_yaml(obj) -> str:
    """A dataclass instance as YAML that :func:`read_yaml` and :func:`build` read back."""
    return yaml.safe_dump(dataclasses.asdict(obj), sort_keys=False)


def reference_table(cls) -> str:
    """A Markdown table of every key of dataclass ``cls``, its type, default and docstring (for the docs)."""
    from .utils import attribute_docstrings

    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    defaults = cls()

    def walk(klass, obj, prefix):
        docs = attribute_docstrings(klass)
        hints = typing.get_type_hints(klass)
        for f in dataclasses.fields(klass):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(hints[f.name]):
                walk(hints[f.name], value, f"{prefix}{f.name}.")
                continue
            type_name = str(hints[f.name]).replace("typing.", "")
            for short in ("str", "int", "float", "bool"):
                type_name = type_name.replace(f"<class '{short}'>", short)
            doc = docs.get(f.name, "").replace("|", "\\|")
            rows.append(f"| `{prefix}{f.name}` | `{type_name}` | `{value!r}` | {doc} |")

    walk(cls, defaults, "")
    return "\n".join(rows)
