"""Dataclass fields as documented command-line options: the plumbing train.py and pretrain.py share.

A config class declares each field with `option(help, group, ...)`; `add_options` turns the fields
into argparse flags whose help states the default, and `coerce` converts values read from a JSON/YAML
file or a sweep exactly as the same flag would be converted, so every route into a config agrees.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Callable, Sequence

from lib.core.errors import UserError


def option(help: str, group: str, *, aliases: Sequence[str] = (), choices: Sequence[str] | None = None,
           parse: Callable[[str], Any] | None = None, nargs: str | None = None, flag: bool = False,
           shown: str | None = None) -> dict:
    """Field metadata. `parse` converts the flag's text; `flag` takes no value (store_true); `shown`
    is the default as --help states it, when the value alone would not say it."""
    return {"help": help, "group": group, "aliases": tuple(aliases), "choices": choices, "parse": parse,
            "nargs": nargs, "flag": flag, "shown": shown}


def csv_strings(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def optional(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """`parse`, with 'none' or an empty string meaning None."""
    def convert(text: str) -> Any:
        return None if str(text).strip().lower() in ("", "none") else parse(text)

    convert.__name__ = getattr(parse, "__name__", "value")
    return convert


def parse_bool(text: str) -> bool:
    lowered = str(text).strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(text)


_TYPES: dict[str, Callable[[str], Any]] = {"int": int, "float": float, "bool": parse_bool}


def converter(f: dataclasses.Field) -> Callable[[str], Any]:
    return f.metadata["parse"] or _TYPES.get(f.type, str)


def add_options(parser: argparse.ArgumentParser, config_class: type) -> None:
    """One flag per field of `config_class`, grouped, with its default in the help; unset flags stay
    absent from the parsed namespace, so files and flags can be layered."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in dataclasses.fields(config_class):
        meta = f.metadata
        group = groups.setdefault(meta["group"], parser.add_argument_group(meta["group"]))
        flags = ["--" + f.name.replace("_", "-"), *meta["aliases"]]
        shown = meta["shown"] or ("off" if meta["flag"] else
                                  ",".join(f.default) if isinstance(f.default, tuple) else f.default)
        help_text = f"{meta['help']} (default: {shown})".replace("%", "%%")
        if meta["flag"]:
            group.add_argument(*flags, dest=f.name, action="store_true", default=argparse.SUPPRESS, help=help_text)
        else:
            group.add_argument(*flags, dest=f.name, default=argparse.SUPPRESS, type=_flag_type(flags[0], converter(f)),
                               nargs=meta["nargs"], choices=meta["choices"], help=help_text)


def _flag_type(flag: str, parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"expected {getattr(parse, '__name__', 'a value')}, got {text!r}")

    convert.__name__ = flag
    return convert


def coerce(config_class: type, values: dict[str, Any], source: str, help_hint: str) -> dict[str, Any]:
    """Values from a file or a sweep, converted as their flags would be; unknown keys are named."""
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    coerced = {}
    for raw_key, value in values.items():
        key = raw_key.replace("-", "_")
        if key not in fields:
            raise UserError(f"{source}: unknown option {raw_key!r} (see {help_hint})")
        if value is None or isinstance(value, bool) and fields[key].metadata["flag"]:
            coerced[key] = value
            continue
        text = ",".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)
        try:
            coerced[key] = converter(fields[key])(text)
        except (TypeError, ValueError):
            flag = "--" + key.replace("_", "-")
            raise UserError(f"{source}: {flag} expected {fields[key].type}, got {value!r}") from None
    return coerced


def to_dict(config: Any) -> dict[str, Any]:
    """A config as JSON-ready values (tuples become lists)."""
    return {f.name: list(v) if isinstance(v := getattr(config, f.name), tuple) else v
            for f in dataclasses.fields(config)}
