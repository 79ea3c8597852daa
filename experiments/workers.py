"""Training a comparison's runs: one after the other in this process, or side by side in worker processes.

On the CPU one single-threaded run per core trains at a time in its own worker (on GPUs one GPU each), under one
progress display; a run's own output goes to train.log in its folder. Ctrl-C reaches the comparison alone (the
workers have process groups of their own); it forwards it once to every worker that is training, waits for them to
record their runs as interrupted, and stops. A worker whose comparison has died (killed, not interrupted) stops the
run it trains at its next step, resumable from its last checkpoint, then exits; an idle one exits at once.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import signal
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import torch

from analysis.run_record import Summary
from datamodules.settings import SETTINGS
from experiments.plan import Comparison, RunSpec
from experiments.progress import MatrixProgress, ProgressReporter
from experiments.recipes import RunRequest
from experiments.run import train_run
from experiments.sample import ReportSample, draw_report_sample
from models import ARMS


def train(c: Comparison, todo: list[RunSpec], to_draw: list[RunSpec], drawn: dict[RunSpec, ReportSample]) -> None:
    """Train `todo`: with workers (`train_parallel`), which also draw the report samples of the runs in `to_draw` once
    those are finished (into `drawn`); else one run after the other in this process (on torch's threads), under one
    progress display."""
    if c.parallel > 1 and len(todo) > 1:
        train_parallel(c, todo, to_draw, drawn)
    elif todo:
        silence_lightning()
        display = MatrixProgress(todo, steps_left(c, todo))
        with display.progress:
            for spec in todo:
                request = c.request(spec).with_trainer(callbacks=[ProgressReporter(spec, display.update)])
                display.end(spec, outcome(train_run(request)))


def train_parallel(c: Comparison, todo: list[RunSpec], to_draw: list[RunSpec], drawn: dict[RunSpec, ReportSample]):
    """`c.parallel` runs at a time, each in a worker process, as the module docstring says. A run of `to_draw` is
    sampled for the report by a worker as soon as it is finished (those finished before: at once)."""
    context = multiprocessing.get_context("spawn")
    events, slots = context.Queue(), context.Queue()
    for slot in range(c.parallel):
        slots.put(slot)
    gpu = c.trainer.get("accelerator", "cpu") != "cpu"
    n_workers = min(c.parallel, len(todo))
    display = MatrixProgress(todo, steps_left(c, todo), n_workers)
    workers: dict[RunSpec, int] = {}  # runs in training -> their worker's pid
    initargs = (slots, events, c.threads, gpu, dict(ARMS), dict(SETTINGS), os.getpid())
    with display.progress, ProcessPoolExecutor(n_workers, context, initializer=_worker_init, initargs=initargs) as pool:
        futures = {pool.submit(_train_in_worker, c.request(spec, gpu), spec): spec for spec in todo}
        draws = {pool.submit(_draw_in_worker, c.folder(spec), spec.seed): spec
                 for spec in to_draw if spec not in todo and c.status(spec) == "finished"}  # fmt: skip
        try:
            while futures or draws:
                _drain(events, display, workers)
                for future in [f for f in futures if f.done()]:
                    spec = futures.pop(future)
                    workers.pop(spec, None)
                    error = future.exception()
                    display.end(spec, outcome(future.result()) if error is None else f"{type(error).__name__}: "
                                f"{error} (log: {c.folder(spec) / 'train.log'})")  # fmt: skip
                    if error is None and future.result().finished and spec in to_draw:
                        draws[pool.submit(_draw_in_worker, c.folder(spec), spec.seed)] = spec
                for future in [f for f in draws if f.done()]:
                    drawn[draws.pop(future)] = future.result()
        except KeyboardInterrupt:
            for pid in workers.values():
                os.kill(pid, signal.SIGINT)
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def outcome(summary: Summary) -> str:
    final = ", ".join(f"{k.split('/')[-1]} {v:.3f}" for k, v in sorted(summary.final_val_loss.items()))
    return f"{summary.status} ({final})"


def silence_lightning() -> None:
    """The display replaces Lightning's chatter; a resumed run's own folder is not news."""
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*exists and is not empty.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")


def steps_left(c: Comparison, todo: list[RunSpec]) -> dict[RunSpec, int]:
    return {spec: c.recipe_of(spec).max_steps - c.steps_done(spec) for spec in todo}


def _drain(events, display: MatrixProgress, workers: dict[RunSpec, int]) -> None:
    """Apply the workers' progress events to the display (waiting up to 0.2 s for the first)."""
    try:
        pid, *event = events.get(timeout=0.2)
        while True:
            workers[event[0]] = pid
            display.update(*event)
            pid, *event = events.get_nowait()
    except queue.Empty:
        pass


_WORKER: dict = {}  # the worker process's event queue, its parent, and whether it is at work


def _worker_init(slots, events, threads: int | None, gpu: bool, arms: dict, settings: dict, parent: int) -> None:
    """`parent`: the comparison's pid, passed rather than read here, since the comparison may die before a worker
    has started (its parent is then init already)."""
    os.setpgrp()  # Ctrl-C in the terminal reaches the parent only, which forwards it to the workers in training
    for name, arm in arms.items():  # arms and settings registered at run time in the parent exist here too
        ARMS.setdefault(name, arm)
    for name, setting in settings.items():
        SETTINGS.setdefault(name, setting)
    slot = slots.get()
    if gpu:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(slot)  # before anything touches CUDA in this process
    if threads is not None:
        torch.set_num_threads(threads)
    silence_lightning()
    # Progress events are best effort: at exit the worker does not wait for its unsent ones to be read (an
    # interrupted comparison stops reading while it waits for its workers to exit).
    events.cancel_join_thread()
    _WORKER.update(events=events, parent=parent, busy=False)
    threading.Thread(target=_exit_when_orphaned, daemon=True).start()


def _orphaned() -> bool:
    return os.getppid() != _WORKER["parent"]


def _exit_when_orphaned() -> None:
    """An idle worker whose comparison has died would wait for work forever (it holds its task queue's writing end
    itself, so the queue never closes): it exits. A busy one exits once its task has returned (`_task`)."""
    while not (_orphaned() and not _WORKER["busy"]):
        time.sleep(1)
    os._exit(0)


class _StopIfOrphaned(L.Callback):
    """Stops the run (resumable, recorded as interrupted) once the comparison that started it has died."""

    def on_train_batch_end(self, trainer, lit, outputs, batch, batch_idx) -> None:
        if _orphaned():
            trainer.should_stop = True


@contextmanager
def _task(log: Path) -> Iterator[None]:
    """A worker's task: its output, Python's and the libraries' (file descriptors 1 and 2), appended to `log`; if the
    comparison died meanwhile, the worker exits once the task has returned (its run recorded, its lock released)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    _WORKER["busy"] = True
    try:
        with open(log, "a") as output:
            for fd in saved:
                os.dup2(output.fileno(), fd)
            yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, copy in saved.items():
            os.dup2(copy, fd)
            os.close(copy)
        _WORKER["busy"] = False
        if _orphaned():
            os._exit(0)


def _train_in_worker(request: RunRequest, spec: RunSpec) -> Summary:
    """train_run in a worker, its output appended to the run folder's train.log."""
    request.folder.mkdir(parents=True, exist_ok=True)

    def send(*event) -> None:
        _WORKER["events"].put((os.getpid(), *event))

    with _task(request.folder / "train.log"):
        return train_run(request.with_trainer(callbacks=[ProgressReporter(spec, send), _StopIfOrphaned()]))


def _draw_in_worker(folder: Path, seed: int) -> ReportSample:
    """A finished run's report samples, drawn in a worker (its output appended to the run's train.log)."""
    with _task(folder / "train.log"):
        return draw_report_sample(folder, seed)
