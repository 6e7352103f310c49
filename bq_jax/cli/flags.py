"""Command-line flags derived from a study config dataclass, so flags and config never drift.

Every field of the config with an entry in :data:`bq_jax.vocabulary.HYPERPARAMETERS` becomes a
``--field-name`` flag whose help is that entry, whose type is read from the field's annotation
and whose default is the config's own (shown in the help, with the quick preset's value). The
config's ``__post_init__`` validates the values, so a bad value gets the same message from the
CLI and from Python.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing

from bq_jax.vocabulary import HYPERPARAMETERS

__all__ = ["add_config_flags", "config_overrides", "flag_name", "parse_value"]

#: Fields that are not ``--name VALUE`` flags: the positional data set and the two switches.
SPECIAL = ("dataset", "quick", "progress", "data_dir")


def flag_name(field: str) -> str:
    """``--field-name`` of config field ``field``."""
    return "--" + field.replace("_", "-")


def _parse_scalar(kind, text: str):
    text = text.strip()
    if kind is bool:
        if text.lower() in ("true", "yes", "1"):
            return True
        if text.lower() in ("false", "no", "0"):
            return False
        raise ValueError("expected true or false")
    if kind is int:
        return int(text)
    if kind is float:
        return float(text)
    return text


def parse_value(annotation, text: str):
    """Parse ``text`` as a value of the type ``annotation`` (see the module docstring).

    Tuples are comma-separated (``4,3``); a tuple of pairs separates the pair by ``:``
    (``1:1,3:1``); ``int | str`` tries int first.

    Example:
        >>> parse_value(tuple[int, ...], "4,3")
        (4, 3)
        >>> parse_value(tuple[tuple[float, float], ...], "1:1,10:3")
        ((1.0, 1.0), (10.0, 3.0))
    """
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is tuple:
        item = args[0]
        parts = [p for p in text.split(",") if p.strip()]
        if not parts:
            raise ValueError("expected a comma-separated list")
        if typing.get_origin(item) is tuple:
            kinds = typing.get_args(item)
            out = []
            for p in parts:
                fields = p.split(":")
                if len(fields) != len(kinds):
                    raise ValueError(f"expected {len(kinds)} values joined by ':', got {p!r}")
                out.append(tuple(_parse_scalar(k, f) for k, f in zip(kinds, fields, strict=True)))
            return tuple(out)
        return tuple(_parse_scalar(item, p) for p in parts)
    if origin in (typing.Union, types.UnionType):
        kinds = [a for a in args if a is not type(None)]
        if text.strip().lower() == "none" and type(None) in args:
            return None
        for kind in sorted(kinds, key=lambda k: k is str):  # int before str
            try:
                return _parse_scalar(kind, text)
            except ValueError:
                continue
        raise ValueError(f"expected one of {', '.join(k.__name__ for k in kinds)}")
    return _parse_scalar(annotation, text)


def _type_name(annotation) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is tuple:
        item = args[0]
        if typing.get_origin(item) is tuple:
            return "comma-separated " + ":".join(a.__name__ for a in typing.get_args(item))
        return f"comma-separated {item.__name__}s"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(a.__name__ if a is not type(None) else "none" for a in args)
    return annotation.__name__


def _show(value) -> str:
    if isinstance(value, tuple):
        return ",".join(":".join(map(str, v)) if isinstance(v, tuple) else str(v) for v in value)
    return str(value)


def add_config_flags(parser: argparse.ArgumentParser, config_type: type) -> list[str]:
    """Add a flag per hyperparameter field of ``config_type``; returns the field names."""
    hints = typing.get_type_hints(config_type)
    quick = getattr(config_type, "QUICK", {})
    names = []
    for field in dataclasses.fields(config_type):
        if field.name in SPECIAL or field.name not in HYPERPARAMETERS:
            continue
        annotation = hints[field.name]

        def convert(text, annotation=annotation, name=field.name):
            try:
                return parse_value(annotation, text)
            except ValueError as e:
                raise argparse.ArgumentTypeError(
                    f"{name} must be {_type_name(annotation)}, got {text!r} ({e})"
                ) from None

        default = field.default
        if default is dataclasses.MISSING and field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        shown = [] if default is None else [f"default: {_show(default)}"]
        if field.name in quick:
            shown.append(f"with --quick: {_show(quick[field.name])}")
        parser.add_argument(
            flag_name(field.name),
            dest=field.name,
            type=convert,
            default=argparse.SUPPRESS,
            metavar=field.name.upper(),
            help=HYPERPARAMETERS[field.name] + (f" ({'; '.join(shown)})" if shown else ""),
        )
        names.append(field.name)
    return names


def config_overrides(args: argparse.Namespace, names: list[str]) -> dict:
    """The config fields given on the command line."""
    return {n: getattr(args, n) for n in names if hasattr(args, n)}
