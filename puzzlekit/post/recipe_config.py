"""Recipe configs: a YAML file beside each example, read into a dataclass that validates it.

A recipe declares its knobs as a frozen dataclass with literal defaults;
:func:`load_recipe_config` reads the YAML beside it, refuses unknown keys and
wrong types with a message naming the file and the key, and applies
``key=value`` overrides from the command line (values parsed as YAML).
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from ..errors import ConfigError

__all__ = ["load_recipe_config", "parse_overrides", "recipe_config_from_argv"]

T = TypeVar("T")


def parse_overrides(items: Sequence[str], example: str = "max_steps=10") -> dict[str, Any]:
    """``["steps=10", "lr=1e-3"]`` → ``{"steps": 10, "lr": 0.001}`` (values parsed as YAML)."""
    import yaml

    out: dict[str, Any] = {}
    for it in items:
        if "=" not in it:
            raise ConfigError(f"override {it!r}: write key=value, e.g. {example}")
        k, v = it.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out


def _check_type(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for alt in typing.get_args(tp):
            try:
                return _check_type(value, alt, where)
            except ConfigError:
                pass
        raise ConfigError(f"{where}: {value!r} is not a {tp}")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{where}: expected null, got {value!r}")
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if tp is str and isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        inner = args[0] if args else Any
        return tuple(_check_type(v, inner, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if isinstance(tp, type):
        if isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
            return value
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def load_recipe_config(path: str | os.PathLike | None, cls: type[T], overrides: dict[str, Any] | None = None) -> T:
    """Read ``path`` (YAML mapping; None: defaults only) into dataclass ``cls``, then apply ``overrides``."""
    import yaml

    data: dict[str, Any] = {}
    src = "defaults"
    if path is not None:
        p = Path(path)
        src = str(p)
        try:
            loaded = yaml.safe_load(p.read_text())
        except OSError as e:
            raise ConfigError(f"{p}: cannot read the recipe config ({e.strerror}); check the path") from e
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML ({e}); fix the file") from e
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: the recipe config must be a mapping of key: value")
        data.update(loaded)
    data.update(overrides or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        from ..errors import did_you_mean

        raise ConfigError(f"{src}: unknown key {unknown[0]!r}; {did_you_mean(unknown[0], fields)}")
    kwargs = {k: _check_type(v, hints[k], f"{src}: {k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{src}: {e}") from e


def recipe_config_from_argv(script: str | os.PathLike, doc: str | None, cls: type[T],
                            argv: Sequence[str] | None = None) -> T:
    """A recipe script's command line: ``[--config FILE] [key=value ...]`` (default: ``config.yaml`` beside
    ``script``), logging at INFO, the config read and checked; a bad config prints the reason and exits 2."""
    import argparse
    import logging
    import sys

    ap = argparse.ArgumentParser(description=(doc or "").strip().splitlines()[0] if doc else None)
    ap.add_argument("--config", default=str(Path(script).with_name("config.yaml")))
    ap.add_argument("overrides", nargs="*", help="key=value overrides of the config")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        return load_recipe_config(a.config, cls, parse_overrides(a.overrides))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
