"""Files written whole or not at all, and folders checked before anything is written."""

from __future__ import annotations

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


def check_writable_folder(flag: str, folder: Path) -> None:
    """ValueError naming the flag unless `folder` is a folder this process can write, or can be created as one."""
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{flag} {folder}: is a file, not a folder")
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {folder}: cannot write in {existing}")
