"""What the command-line entry points share: one spelling of flags, and repeatable KEY=VALUE overrides, each value
checked against its field's type annotation."""

from __future__ import annotations

import json
import types
import typing


def fits(value: object, hint: object) -> bool:
    """Whether a decoded JSON value fits a type annotation: unions, None, bool, int, float (which takes ints too),
    str, and containers by their kind (a JSON list fits a tuple or a list)."""
    if typing.get_origin(hint) in (types.UnionType, typing.Union):
        return any(fits(value, option) for option in typing.get_args(hint))
    if hint is type(None) or value is None:
        return value is None and hint is type(None)
    if isinstance(value, bool) != (hint is bool):
        return False
    kind = typing.get_origin(hint) or hint
    if kind in (tuple, list):
        return isinstance(value, tuple | list)
    return isinstance(value, int | float if kind is float else kind) if isinstance(kind, type) else True


def parse_overrides(items: list[str], flag: str, valid: dict[str, object]) -> dict:
    """['d_model=256', 'decouple=["in_proj"]'] -> {'d_model': 256, 'decouple': ['in_proj']} (JSON values, else text),
    each key one of `valid` ({name: type annotation}) and each value of its type."""
    out = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{flag} takes KEY=VALUE; got {item!r}")
        if key not in valid:
            raise ValueError(f"{flag}: unknown key {key!r}; valid keys are {sorted(valid)}")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        if not fits(value, valid[key]):
            raise ValueError(f"{flag} {item}: {key} takes {_type_name(valid[key])}; got {value!r}")
        out[key] = value
    return out


def _type_name(hint: object) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def respell_flags(argv: list[str], joiner: str) -> list[str]:
    """Every option name in `argv` with its word separators ("-" or "_") made `joiner`: `--max-steps` and
    `--max_steps` name one option in every entry point, whichever spelling its parser uses. Values (after a space
    or "=") and everything after a bare "--" are left as they are."""
    other = "_" if joiner == "-" else "-"
    out = list(argv)
    for i, token in enumerate(out):
        if token == "--":
            break
        if token.startswith("--"):
            name, eq, value = token[2:].partition("=")
            out[i] = f"--{name.replace(other, joiner)}{eq}{value}"
    return out
