"""A versioned, content-keyed cache folder that is either complete and verified, or rebuilt.

    <root>/v<VERSION>-<key>/      key = hash of every parameter that changes the content
        manifest.json             parameters + sha256 of every file
        ...files...

A folder is built under a temporary name and renamed into place only once every file and the manifest are written,
so an interrupted build never looks finished, and a build that fails removes what it wrote. On load every file is
checked against the manifest; a folder that fails the check (partial, edited, truncated) is reported and rebuilt,
never silently used.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import warnings
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock

CACHE_VERSION = 3  # bump whenever preparation code changes what a cache holds


class CorruptCache(RuntimeError):
    """A cache folder exists but does not match its manifest."""


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def cache_path(root: str | Path, params: dict) -> Path:
    """The folder of JSON-serialisable parameters: named by a stable short hash of them."""
    key = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return Path(root) / f"v{CACHE_VERSION}-{key}"


def verify(path: Path) -> dict:
    """The manifest of a complete, intact cache folder; CorruptCache saying what is wrong otherwise."""
    manifest_file = path / "manifest.json"
    try:
        manifest = json.loads(manifest_file.read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError) as exc:
        raise CorruptCache(f"{path}: unreadable manifest ({exc})") from exc
    for name, digest in files.items():
        file = path / name
        if not file.is_file():
            raise CorruptCache(f"{path}: {name} is missing")
        if _sha256(file) != digest:
            raise CorruptCache(f"{path}: {name} does not match its checksum")
    return manifest


def build_or_load(root: str | Path, params: dict, build: Callable[[Path], None]) -> tuple[Path, dict]:
    """Return (folder, manifest) of the cache for `params`, building it with `build(tmp_folder)` when needed.

    `build` writes its files into the folder it is given. A corrupt existing folder is moved aside and rebuilt with a
    warning; if the rebuilt folder still fails its check the error says how to clear the cache. One process builds a
    folder while others asking for it wait (an OS file lock beside it), then use it.
    """
    path = cache_path(root, params)
    manifest = _intact(path)
    if manifest is not None:
        return path, manifest
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(path.with_name(f".{path.name}.lock")):
        manifest = _intact(path)  # built by the process that held the lock
        if manifest is not None:
            return path, manifest
        tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        start = time.perf_counter()
        try:
            build(tmp)
        except BaseException:  # bad data, or Ctrl-C: no half-built folder is left behind
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        files = {p.name: _sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        manifest = {"version": CACHE_VERSION, "params": params, "files": files, "build_s": time.perf_counter() - start}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1, default=str))
        os.replace(tmp, path)
    try:
        return path, verify(path)
    except CorruptCache as exc:
        raise CorruptCache(f"{exc}; delete {path} (or the whole {Path(root)}) and run again") from exc


def _intact(path: Path) -> dict | None:
    """The manifest of the cache folder `path` if it exists and passes its check; a corrupt one is removed, with a
    warning, and None returned, as for a missing one."""
    if not path.exists():
        return None
    try:
        return verify(path)
    except CorruptCache as exc:
        warnings.warn(f"rebuilding the data cache: {exc}", RuntimeWarning, stacklevel=3)
        shutil.rmtree(path, ignore_errors=True)
        return None
