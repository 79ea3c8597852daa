"""Helpers every layer of the suite shares: atomic file writes and a stable hash split.

atomic_write(path, text_or_bytes_or_writer)   a reader sees the old file or the new one, never part of one
stable_fraction(key)                           a number in [0, 1) fixed by the key alone, in every process
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
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
