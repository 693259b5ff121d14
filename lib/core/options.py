"""Dataclass fields as documented, checked options: the one option system of every entry script.

A config class declares each field with `option(help, group, ...)`, its checks included: choices,
a range with open or closed ends, or a parser of its own. Every value, whatever its source (a flag's
text, an experiment file, a sweep, a resumed run's saved config), goes through `convert`, which
parses it as the flag would and checks it, so no route into a config skips a check. The forms a W&B
agent writes read the same as ours: `True`/`False` (a bool flag alone means true), `None`, a list
as `[0.1, 0.2]`. A refusal is one line that names the option as its flag, the source when it is
a file, the value and what was expected. Rules that tie several fields together stay in each
config's `__post_init__`.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml

from lib.core.errors import UserError


@dataclass(frozen=True)
class Range:
    """Allowed numbers: each end closed (at least / at most), open (above / below) or absent."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def admits(self, x: float) -> bool:
        """Written as what passes, so NaN, which fails every comparison, is refused."""
        above_low = self.low is None or (x > self.low if self.low_open else x >= self.low)
        below_high = self.high is None or (x < self.high if self.high_open else x <= self.high)
        return above_low and below_high

    def describe(self, noun: str) -> str:
        """'a number in [0, 1)', 'a whole number >= 1', 'a positive number'."""
        if self.low is not None and self.high is not None:
            return (f"{noun} in {'(' if self.low_open else '['}{self.low:g}, "
                    f"{self.high:g}{')' if self.high_open else ']'}")
        if self.low is not None:
            if self.low == 0 and self.low_open:
                return noun.replace("a ", "a positive ", 1)
            return f"{noun} {'>' if self.low_open else '>='} {self.low:g}"
        if self.high is not None:
            return f"{noun} {'<' if self.high_open else '<='} {self.high:g}"
        return noun


def option(help: str, group: str, *, aliases: Sequence[str] = (), choices: Sequence[str] | None = None,
           at_least: float | None = None, above: float | None = None, at_most: float | None = None,
           below: float | None = None, parse: Callable[[str], Any] | None = None, expects: str | None = None,
           nargs: str | None = None, flag: bool = False, shown: str | None = None) -> dict:
    """Field metadata. The type comes from the annotation (`int | None` takes 'none'); `choices` and the
    range (`at_least`/`above` and `at_most`/`below`) apply to each element of a tuple; `parse` replaces
    the annotation's parser (raising ValueError), and `expects` then says in words what it accepts;
    `flag` marks a switch, whose default --help shows as 'off'; `shown` is the default as --help states it."""
    return {"help": help, "group": group, "aliases": tuple(aliases), "choices": tuple(choices) if choices else None,
            "range": _range(at_least, above, at_most, below), "parse": parse, "expects": expects, "nargs": nargs,
            "flag": flag, "shown": shown}


def _range(at_least: float | None, above: float | None, at_most: float | None, below: float | None) -> Range | None:
    if at_least is not None and above is not None or at_most is not None and below is not None:
        raise ValueError("give at most one lower and one upper bound")
    low, high = at_least if above is None else above, at_most if below is None else below
    return Range(low, high, above is not None, below is not None) if (low, high) != (None, None) else None


def csv_strings(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def optional(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """`parse`, with 'none' or an empty string meaning None."""
    def parse_or_none(text: str) -> Any:
        return None if str(text).strip().lower() in ("", "none") else parse(text)

    return parse_or_none


def parse_bool(text: str) -> bool:
    lowered = str(text).strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(text)


# Parser and description of each annotation the configs use.
_TYPES: dict[str, tuple[Callable[[str], Any], str]] = {
    "int": (int, "a whole number"), "float": (float, "a number"), "bool": (parse_bool, "true or false"),
    "str": (str, "text"), "tuple[str, ...]": (csv_strings, "comma-separated names"),
}
# What a built config must hold in a numeric or boolean field (a config made in code skips the parsers).
_VALUE_TYPES: dict[str, type] = {"int": numbers.Integral, "float": numbers.Real, "bool": bool}


def _annotation(f: dataclasses.Field) -> tuple[str, bool]:
    """(the annotation without None, whether None is allowed); annotations are strings here."""
    parts = [part.strip() for part in str(f.type).split("|")]
    return next((part for part in parts if part != "None"), "str"), "None" in parts


def _parser(f: dataclasses.Field) -> Callable[[str], Any]:
    base, nullable = _annotation(f)
    parse = f.metadata["parse"] or _TYPES.get(base, _TYPES["str"])[0]
    return optional(parse) if nullable else parse


def _flag_names(f: dataclasses.Field) -> str:
    """The option as a user types it: '--num-train-epochs/--epochs'."""
    return "/".join(["--" + f.name.replace("_", "-"), *f.metadata["aliases"]])


def _expected(f: dataclasses.Field) -> str:
    """What the option accepts, in words, for error messages."""
    meta = f.metadata
    if meta["expects"]:
        return meta["expects"]
    base, nullable = _annotation(f)
    if meta["choices"]:
        text = ("names among {" if base.startswith("tuple") else "one of {") + ", ".join(meta["choices"]) + "}"
    else:
        noun = _TYPES.get(base, _TYPES["str"])[1]
        text = meta["range"].describe(noun) if meta["range"] else noun
    return text + " or none" if nullable else text


def _refusal(f: dataclasses.Field, value: Any, source: str | None) -> UserError:
    where = f"{source}: " if source else ""
    return UserError(f"{where}{_flag_names(f)}: expected {_expected(f)}, got {value!r}")


def _check(f: dataclasses.Field, value: Any, source: str | None = None, given: Any = None) -> None:
    """Refuse a converted value of the wrong type or outside the field's choices or range (`given` is
    what the user wrote)."""
    shown = value if given is None else given
    base, nullable = _annotation(f)
    if value is None:
        if not nullable:
            raise _refusal(f, shown, source)
        return
    kind = _VALUE_TYPES.get(base)
    if kind is not None and (not isinstance(value, kind) or kind is not bool and isinstance(value, bool)):
        raise _refusal(f, shown, source)
    meta = f.metadata
    if meta["parse"] and isinstance(value, str):
        try:
            meta["parse"](value)
        except ValueError:
            raise _refusal(f, shown, source) from None
    for item in value if isinstance(value, tuple) else (value,):
        if meta["choices"] and item not in meta["choices"]:
            raise _refusal(f, shown, source)
        number = isinstance(item, numbers.Real) and not isinstance(item, bool)
        if meta["range"] and number and not meta["range"].admits(item):
            raise _refusal(f, shown, source)


def _takes_list(f: dataclasses.Field) -> bool:
    return bool(f.metadata["nargs"]) or "tuple[" in str(f.type)  # any part of a union: --alpha is str | tuple


def _bracketed_list(value: Any) -> Any:
    """A list written as text, as a W&B agent passes one (Python's repr: `[0.11, 0.45]`, `['a', 'b']`;
    a JSON list of numbers or strings reads the same), as that list; any other value as it is. A
    multi-value flag given `--texts=[...]` holds that text as its only item, and is read the same way."""
    text = value[0] if isinstance(value, (list, tuple)) and len(value) == 1 else value
    if not (isinstance(text, str) and text.strip().startswith("[") and text.strip().endswith("]")):
        return value
    try:
        items = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        raise ValueError(text) from None
    if not isinstance(items, list):
        raise ValueError(text)
    return items


def convert(f: dataclasses.Field, value: Any, source: str | None = None) -> Any:
    """A value from any source as the field's type, checked: text as its flag would parse it, a file's
    number, list or bool through the same parser; `source` (a file, a sweep) is named in a refusal."""
    given = value
    try:
        if _takes_list(f):
            value = _bracketed_list(value)
        if value is None:
            converted = None
        elif f.metadata["nargs"]:
            converted = tuple(str(v) for v in (value if isinstance(value, (list, tuple)) else [value]))
        else:
            text = ",".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)
            converted = _parser(f)(text)
    except ValueError:
        raise _refusal(f, given, source) from None
    _check(f, converted, source, given=given)
    return converted


def check_fields(config: Any) -> None:
    """Every field of a built config of its type and within its choices and range: `__post_init__`
    calls it, so a config made in code or with `dataclasses.replace` is held to the same checks."""
    for f in dataclasses.fields(config):
        _check(f, getattr(config, f.name))


def field_of(config_class: type, key: str) -> dataclasses.Field | None:
    """The field a file key or flag names: its field name or an alias, dashes or underscores."""
    name = key.replace("-", "_").lstrip("_")
    for f in dataclasses.fields(config_class):
        if name == f.name or name in (alias.lstrip("-").replace("-", "_") for alias in f.metadata["aliases"]):
            return f
    return None


def coerce(config_class: type, values: dict[str, Any], source: str | None, help_hint: str) -> dict[str, Any]:
    """Values from a file or a sweep, converted and checked; unknown keys are named."""
    coerced: dict[str, Any] = {}
    for key, value in values.items():
        f = field_of(config_class, str(key))
        if f is None:
            raise UserError(f"{source}: unknown option {key!r} (see {help_hint})")
        if f.name in coerced:
            raise UserError(f"{source}: {_flag_names(f)} is given twice")
        coerced[f.name] = convert(f, value, source)
    return coerced


def checked_number(kind: type, *, at_least: float | None = None, above: float | None = None,
                   at_most: float | None = None, below: float | None = None) -> Callable[[str], Any]:
    """An argparse `type=` for an entry script's own numeric flag, with the same range and wording."""
    bounds = _range(at_least, above, at_most, below) or Range()
    noun = "a whole number" if kind is int else "a number"

    def convert_text(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not bounds.admits(value):
            raise argparse.ArgumentTypeError(f"expected {bounds.describe(noun)}, got {text!r}")
        return value

    return convert_text


def add_options(parser: argparse.ArgumentParser, config_class: type) -> None:
    """One flag per field of `config_class`, grouped, with its default in the help; unset flags stay
    absent from the parsed namespace, so files and flags can be layered. Flag text goes through
    `convert`, so a bad value is refused exactly as in a file."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in dataclasses.fields(config_class):
        meta = f.metadata
        group = groups.setdefault(meta["group"], parser.add_argument_group(meta["group"]))
        flags = ["--" + f.name.replace("_", "-"), *meta["aliases"]]
        shown = meta["shown"] or ("off" if meta["flag"] else
                                  ",".join(f.default) if isinstance(f.default, tuple) else f.default)
        help_text = f"{meta['help']} (default: {shown})".replace("%", "%%")
        if _annotation(f)[0] == "bool":
            # alone it means true; a value is read as in a file (`--compile=False`, as a W&B agent writes it)
            group.add_argument(*flags, dest=f.name, default=argparse.SUPPRESS, nargs="?", const=True,
                               metavar="true|false", help=help_text, type=lambda text, f=f: convert(f, text))
        elif meta["nargs"]:
            group.add_argument(*flags, dest=f.name, default=argparse.SUPPRESS, nargs=meta["nargs"], help=help_text)
        else:
            one_of = meta["choices"] and not _annotation(f)[0].startswith("tuple")
            metavar = "{" + ",".join(meta["choices"]) + "}" if one_of else None
            # argparse passes a UserError from `type` through (it only rewraps ValueError and
            # ArgumentTypeError), so a flag's refusal is the very line a file's would be.
            group.add_argument(*flags, dest=f.name, default=argparse.SUPPRESS, metavar=metavar, help=help_text,
                               type=lambda text, f=f: convert(f, text))


def read_config_file(path: Path) -> dict[str, Any]:
    """Read an experiment file (JSON, or YAML by its suffix) into a flat dict."""
    if not path.is_file():
        raise UserError(f"--config: file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)
    except (ValueError, yaml.YAMLError) as error:
        one_line = " ".join(line.strip() for line in str(error).splitlines())
        raise UserError(f"--config {path}: not valid {path.suffix.lstrip('.').upper()}: {one_line}") from None
    if not isinstance(data, dict):
        raise UserError(f"--config {path}: expected a mapping of option names to values")
    return data


def to_dict(config: Any) -> dict[str, Any]:
    """A config as JSON-ready values (tuples become lists)."""
    return {f.name: list(v) if isinstance(v := getattr(config, f.name), tuple) else v
            for f in dataclasses.fields(config)}
