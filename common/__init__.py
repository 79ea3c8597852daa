"""Helpers every layer of the suite shares: atomic file writes and a stable hash split.

atomic_write(path, text_or_bytes_or_writer)   a reader sees the old file or the new one, never part of one
stable_fraction(key)                           a number in [0, 1) fixed by the key alone, in every process
fits(value, annotation)                        whether a decoded JSON value fits a type annotation
parse_overrides(["k=v"], flag, valid)          repeatable KEY=VALUE flags -> {key: JSON value}, checked by type
check_writable_folder(flag, folder)            ValueError naming the flag unless the folder can be written
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import types
import typing
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: str | Path, data: str | bytes | Callable[[Path], None]) -> Path:
    """Write `path` atomically: into a temporary file beside it, flushed to disk, then renamed over it.

    Args:
        path: the file to write; its folder is created if needed.
        data: the text or bytes to write, or a function that writes the file it is given (e.g. a figure's savefig;
            the temporary name does not end in the target's extension, so pass the format explicitly).

    A crash or a full disk leaves the previous file (or none) and no temporary file behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")  # unique per writer
    try:
        if callable(data):
            data(tmp)
        elif isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data, encoding="utf-8")
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | Path, data: object) -> Path:
    """`data` as indented JSON, atomically (values JSON cannot hold are written as their str)."""
    return atomic_write(path, json.dumps(data, indent=1, default=str))


def stable_fraction(key: str | bytes) -> float:
    """A number in [0, 1) fixed by `key` alone (blake2b), the same in every process and Python version.

    Unlike Python's salted `hash`, it splits data the same way on every run: `stable_fraction(text) < 0.1` puts a
    fixed ~10% of the texts in validation.
    """
    data = key.encode("utf-8") if isinstance(key, str) else key
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big") / 2**64


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


def check_writable_folder(flag: str, folder: Path) -> None:
    """ValueError naming the flag unless `folder` is a folder this process can write, or can be created as one."""
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{flag} {folder}: is a file, not a folder")
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {folder}: cannot write in {existing}")
