"""compare.py with a SIGKILL at a chosen moment, for the chaos test (tests/test_chaos.py) and the soak
(benchmarks/soak_kills.py):

    MOM_KILL=<point>:<n>:<how> python -m tests.chaos <compare.py arguments>

kills the comparison the n-th time a process of it (the comparison or one of its workers) reaches <point>:

    start        a run's training starts, before its first step
    step1        right after a run's first step
    checkpoint   inside a checkpoint save: the temporary file written, not yet renamed over last.ckpt
    checkpoint_sha  between a checkpoint's rename and the writing of its SHA-256 beside it
    validation   inside a validation step
    metrics      inside a metrics.csv save: half of the rows' text written
    between      in the comparison, as a run has ended and before the next starts

how = all: SIGKILL the comparison and every process it started (a machine that dies); how = orphan: SIGKILL the
comparison only, as `kill -9 -- -<pid>` from a terminal does: its workers, in process groups of their own, notice
and stop at their next step. Without MOM_KILL it is compare.py.
"""

from __future__ import annotations

import csv
import io
import os
import signal
import sys
from pathlib import Path

MAIN = "MOM_CHAOS_MAIN"  # the comparison's pid, inherited by its workers
_counts: dict[str, int] = {}


def _descendants(pid: int) -> list[int]:
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def processes_with(variable: str, value: str) -> list[int]:
    """The live processes with `variable`=`value` in their environment (a comparison's workers inherit its own)."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            variables = environ.read_bytes().split(b"\0")
            state = (environ.parent / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if f"{variable}={value}".encode() in variables and state != "Z":
            found.append(int(environ.parent.name))
    return found


def _hit(point: str) -> bool:
    """Whether this is the moment to kill: the n-th time this process reaches the point MOM_KILL names."""
    want, n, _ = os.environ["MOM_KILL"].split(":")
    if point != want:
        return False
    _counts[point] = _counts.get(point, 0) + 1
    return _counts[point] == int(n)


def _kill() -> None:
    main = int(os.environ[MAIN])
    orphan = os.environ["MOM_KILL"].endswith(":orphan")
    for pid in [main] if orphan else [*_descendants(main), main]:
        if pid != os.getpid():
            os.kill(pid, signal.SIGKILL)
    if not orphan or os.getpid() == main:
        os.kill(os.getpid(), signal.SIGKILL)


def _reached(point: str) -> None:
    if _hit(point):
        _kill()


def install() -> None:
    """Wrap the functions at the kill points (in this process)."""
    from experiments import checkpoints, progress, run, store, workers
    from experiments.lit_module import LitMultiModalLM

    on_train_start, on_batch_end = run.RunRecorder.on_train_start, run.RunRecorder.on_train_batch_end
    validation_step, end, atomic_write = (
        LitMultiModalLM.validation_step,
        progress.MatrixProgress.end,
        checkpoints.atomic_write,
    )

    def train_start(self, trainer, lit):
        _reached("start")
        on_train_start(self, trainer, lit)

    def batch_end(self, trainer, *args):
        on_batch_end(self, trainer, *args)
        if trainer.global_step == 1:
            _reached("step1")

    def validation(self, *args, **kwargs):
        _reached("validation")
        return validation_step(self, *args, **kwargs)

    def run_ended(self, *args):
        end(self, *args)
        _reached("between")

    def checkpoint_write(path, data):
        path = Path(path)
        if path.suffix == ".ckpt" and _hit("checkpoint"):
            path.parent.mkdir(parents=True, exist_ok=True)
            data(path.with_name(f".{path.name}.chaos.tmp"))
            _kill()
        if path.suffix == ".sha256":
            _reached("checkpoint_sha")
        return atomic_write(path, data)

    def cut_append(path, fieldnames, rows, with_header):
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=fieldnames)
        if with_header:
            writer.writeheader()
        writer.writerows(rows)
        if _hit("metrics"):
            with open(path, "a", newline="") as f:
                f.write(text.getvalue()[: len(text.getvalue()) // 2])
            _kill()
        with open(path, "a", newline="") as f:
            f.write(text.getvalue())

    run.RunRecorder.on_train_start, run.RunRecorder.on_train_batch_end = train_start, batch_end
    LitMultiModalLM.validation_step, progress.MatrixProgress.end = validation, run_ended
    checkpoints.atomic_write, store._append = checkpoint_write, cut_append
    workers._worker_init = _worker_init  # the pool's initializer: the workers wrap their functions too


def _worker_init(*args) -> None:
    from experiments import workers

    original = workers._worker_init  # this worker's own, before install() replaces it
    install()
    original(*args)


def main(argv: list[str]) -> int:
    from experiments import compare

    os.environ[MAIN] = str(os.getpid())
    if os.environ.get("MOM_KILL"):
        install()
    return compare.main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
