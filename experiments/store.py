"""What keeps a run folder whole when processes crash, race or run out of disk (the run record's files,
analysis/run_record.py):

    MetricsLogger        Lightning's CSVLogger, keeping metrics.csv across a resume and rewriting it atomically
    resume_point         where an unfinished run continues: its last checkpoint if it is the one the run wrote, loads
                         safely, continues the run's data order and is matched by metrics.csv's rows; else step 0,
                         saying why
    run_lock, is_locked  an OS lock on a folder, released when its process ends however it ends
    DiskFull             no space left: the folder, the space free and the space a run needs
"""

from __future__ import annotations

import csv
import errno
import io
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from analysis.run_record import CHECKPOINT, METRICS, STEP, TRAIN_LOSS, parse_loss_name
from common.files import atomic_write
from datamodules.samplers import DataPosition
from experiments.checkpoints import UnsafeCheckpoint, load_checkpoint, resume_problem, sha_path, sha_problem


class _MetricsWriter(ExperimentWriter):
    """Appends to the metrics.csv `resume_point` left (Lightning's writer deletes it, with a warning), and rewrites
    it atomically when a new column appears (Lightning rewrites it in place).

    Each save starts from what the file holds, not from what this writer last did: Ctrl-C inside a save raises
    KeyboardInterrupt there, and Lightning's teardown then saves again. Lightning's own writer would by then count
    the new columns as written and append rows longer than the file's header. Here an interrupted rewrite leaves the
    old header, which the next save rewrites; the rows go out in one write and leave the writer just before it, so
    a save interrupted there loses its rows (a resume then finds them missing) and never writes them twice.
    """

    def _check_log_dir_exists(self) -> None:
        pass

    def save(self) -> None:
        if not self.metrics:
            return
        path = Path(self.metrics_file_path)
        header = _header(path)
        keys = set().union(*self.metrics)
        if header is None:
            fieldnames = sorted(keys)
        elif keys <= set(header) and _ends_whole(path):
            fieldnames = header
        else:  # new columns, or a last line cut short (a crash in an earlier process)
            fieldnames = sorted(keys.union(header))
            atomic_write(path, _csv_bytes(fieldnames, _complete_rows(path)[1]))
        rows, self.metrics = self.metrics, []
        _append(path, fieldnames, rows, with_header=header is None)


class MetricsLogger(CSVLogger):
    """Lightning's CSVLogger with `_MetricsWriter`: one metrics.csv per run folder, whole across resumes."""

    @property
    def experiment(self) -> _MetricsWriter:
        if self._experiment is None:
            self._experiment = _MetricsWriter(log_dir=self.log_dir)
        return self._experiment


def _csv_bytes(fieldnames: list[str], rows: list[dict], with_header: bool = True) -> bytes:
    """metrics.csv's lines, as bytes: csv's own line ends, never translated."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=fieldnames)
    if with_header:
        writer.writeheader()
    writer.writerows(rows)
    return text.getvalue().encode()


def _header(path: Path) -> list[str] | None:
    """metrics.csv's column names; None if there is no file."""
    try:
        with open(path, newline="") as f:
            return next(csv.reader(f), [])
    except FileNotFoundError:
        return None


def _ends_whole(path: Path) -> bool:
    """Whether the file's last line has its line end (an empty file counts as whole)."""
    with open(path, "rb") as f:
        if f.seek(0, os.SEEK_END) == 0:
            return True
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def _append(path: Path, fieldnames: list[str], rows: list[dict], with_header: bool) -> None:
    """`rows` appended to metrics.csv in one write (an interrupt lands before it or after it)."""
    data = _csv_bytes(fieldnames, rows, with_header)
    with open(path, "ab") as f:
        f.write(data)


def move_aside(path: Path, why: str) -> Path:
    """`path` renamed to `<name>.<why>-<time>` beside it, so that it is kept and its place is free."""
    moved = path.with_name(f"{path.name}.{why}-{time.strftime('%Y%m%d-%H%M%S')}")
    path.rename(moved)
    return moved


def _complete_rows(path: Path) -> tuple[list[str], list[dict]]:
    """metrics.csv's header and rows (none if it is missing), less a last line a crash cut short (no line end)."""
    text = path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    reader = csv.DictReader(text.splitlines())
    return list(reader.fieldnames or []), list(reader)


def resume_point(
    folder: Path, position: Callable[[int], DataPosition], val_every: int
) -> tuple[Path | None, str | None]:
    """Where the unfinished run in `folder` continues: (its last checkpoint, None), or (None, why it restarts).

    The checkpoint is used when its SHA-256 is the one written beside it, it loads without unpickling anything a
    run's checkpoint never holds (nothing in it runs), it continues at `position(step)`, the run's data position
    after its step (`experiments.checkpoints.resume_problem`), and metrics.csv holds a training row for every step
    before it and the validation rows of every evaluation (each `val_every`-th step) before it; metrics.csv is then
    cut to those rows (the steps after the checkpoint are trained again). Otherwise the checkpoint is moved aside
    (named in the message), metrics.csv removed, and the run restarts from step 0.
    (None, None): nothing to resume from.
    """
    last, metrics = folder / CHECKPOINT, folder / METRICS
    if not last.exists():
        metrics.unlink(missing_ok=True)
        return None, None

    def restart(why: str, problem: str) -> tuple[None, str]:
        moved = move_aside(last, why)
        sha_path(last).unlink(missing_ok=True)
        metrics.unlink(missing_ok=True)
        return None, f"{problem}; checkpoint moved to {moved.name}, restarting at step 0"

    try:
        if problem := sha_problem(last):
            return restart("altered", problem)
        checkpoint = load_checkpoint(last, map_location="cpu", mmap=True)
    except UnsafeCheckpoint as exc:
        return restart("unsafe", str(exc))
    except Exception as exc:  # noqa: BLE001 - any failure to read it means it cannot be resumed from
        return restart("unreadable", f"{last} is unreadable ({type(exc).__name__}: {exc})")
    step = int(checkpoint["global_step"])
    if problem := resume_problem(last, checkpoint, position(step)):
        return restart("unmatched", problem)
    header, rows = _complete_rows(metrics)
    rows = [r for r in rows if r.get(STEP) and int(float(r[STEP])) < step]
    trained = {int(float(r[STEP])) for r in rows if r.get(TRAIN_LOSS)}
    if trained != set(range(step)):
        return restart("unmatched", f"{metrics} holds {len(trained)} of the {step} training rows before the "
                                    f"checkpoint of step {step}")  # fmt: skip
    evaluations = {s for s in range(step) if (s + 1) % val_every == 0}
    evaluated = {int(float(r[STEP])) for r in rows if any(v and is_val_loss(k) for k, v in r.items())}
    if not evaluations <= evaluated:
        return restart("unmatched", f"{metrics} holds the validation rows of {len(evaluations & evaluated)} of the "
                                    f"{len(evaluations)} evaluations before the checkpoint of step {step}")  # fmt: skip
    atomic_write(metrics, _csv_bytes(header, rows))
    return last, None


def is_val_loss(column: str) -> bool:
    """Whether a metrics column (or logged metric) holds a validation loss."""
    key = parse_loss_name(column)
    return key is not None and key.kind == "val"


def _lock_file(folder: Path) -> Path:
    return folder.parent / f".{folder.name}.lock"  # beside the folder, so that the folder can be moved aside


@contextmanager
def run_lock(folder: Path, wait: bool = False, waiting: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold an OS lock on `folder` (the file `.<name>.lock` beside it) while the block runs; the OS releases it when
    the process ends, however it ends. If another process holds it: with `wait`, call `waiting` (to say so) and
    wait for it; without, raise `Locked`."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(_lock_file(folder))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if not wait:
            raise Locked(f"{folder} is in use by another process") from None
        if waiting is not None:
            waiting()
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def is_locked(folder: Path) -> bool:
    """Whether another process holds `folder`'s lock now."""
    if not _lock_file(folder).exists():
        return False
    try:
        with run_lock(folder):
            return False
    except Locked:
        return True


class Locked(RuntimeError):
    """Another process holds the folder's lock."""


class DiskFull(OSError):
    """No space left on the device of a run folder; the message says how much is free and needed."""


def disk_full(exc: BaseException, folder: Path, needed_bytes: int) -> DiskFull | None:
    """A DiskFull naming the folder, the free and the needed space if `exc` (or its cause) is ENOSPC, else None."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            free = shutil.disk_usage(folder).free
            return DiskFull(
                errno.ENOSPC,
                f"no space left on the device of {folder}: {free / 1e6:.0f} MB free, a run of this size needs about "
                f"{needed_bytes / 1e6:.0f} MB more (a checkpoint is written beside the previous one before it "
                "replaces it). Nothing was left half-written; free some space and run the same command again to "
                "continue",
            )
        exc = exc.__cause__ or exc.__context__
    return None
