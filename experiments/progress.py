"""compare.py's progress display: one row per run in training and one for the whole matrix, fed by a callback in
each run (in this process or, through a queue, in a worker)."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta

import lightning as L
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from experiments.plan import RunSpec


class _Eta(TimeRemainingColumn):
    """A run's ETA from its own speed; the matrix's from the per-arm step times in its `eta` field."""

    def render(self, task) -> Text:
        if task.fields.get("eta") is None:
            return super().render(task)
        return Text(str(timedelta(seconds=round(task.fields["eta"]))), style="progress.remaining")


class MatrixProgress:
    """A rich display of the matrix: one row per run in training (step, loss, ETA) and one for the whole comparison.

    The matrix ETA prices each remaining step at the seconds per step measured for that arm in this session (a Mamba
    step and a transformer step differ), or at the mean over measured arms before an arm has run, shared among the
    runs that train at once.
    """

    def __init__(self, runs: list[RunSpec], remaining: dict[RunSpec, int], parallel: int = 1) -> None:
        self.remaining, self.parallel = remaining, parallel
        self.index = {spec: i for i, spec in enumerate(runs, 1)}
        self.seconds_per_step: dict[str, float] = {}
        self.progress = Progress(
            TextColumn("{task.description:<42}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            _Eta(),
            TextColumn("{task.fields[note]}"),
        )
        self.matrix = self.progress.add_task(
            f"all {len(runs)} runs (steps)", total=sum(remaining.values()), note="", eta=None
        )
        self.rows: dict[RunSpec, TaskID] = {}

    def update(self, spec: RunSpec, step: int, total: int, loss: float | None, seconds_per_step: float | None):
        """A run's progress: its step of `total` (a resumed run starts at its checkpoint's step)."""
        if spec not in self.rows:
            label = f"[{self.index[spec]}/{len(self.index)}] {spec.label}"
            self.rows[spec] = self.progress.add_task(label, total=total, completed=step, note="", eta=None)
        self.progress.update(self.rows[spec], completed=step, note="" if loss is None else f"loss {loss:.3f}")
        self.progress.advance(self.matrix, self.remaining[spec] - (total - step))
        self.remaining[spec] = total - step
        if seconds_per_step is not None:
            self.seconds_per_step[spec.arm] = seconds_per_step
            mean = sum(self.seconds_per_step.values()) / len(self.seconds_per_step)
            eta = sum(self.seconds_per_step.get(s.arm, mean) * n for s, n in self.remaining.items())
            self.progress.update(self.matrix, eta=eta / self.parallel)

    def end(self, spec: RunSpec, outcome: str) -> None:
        """A run has stopped: its row goes, one line with its outcome stays."""
        if spec in self.rows:
            self.progress.remove_task(self.rows.pop(spec))
        self.progress.advance(self.matrix, self.remaining[spec])
        self.remaining[spec] = 0
        self.progress.console.print(f"{spec.label}: {outcome}")


class ProgressReporter(L.Callback):
    """Sends a run's progress, (spec, step, total, loss, seconds per step), to `send`: the display's `update` when
    the run trains in this process, a queue to it from a worker process."""

    def __init__(self, spec: RunSpec, send: Callable[..., None]) -> None:
        self.spec, self.send = spec, send

    def on_train_start(self, trainer, lit) -> None:
        self.step0, self.t0 = trainer.global_step, time.perf_counter()
        self.send(self.spec, trainer.global_step, trainer.max_steps, None, None)

    def on_train_batch_end(self, trainer, lit, outputs, batch, batch_idx) -> None:
        seconds_per_step = (time.perf_counter() - self.t0) / max(trainer.global_step - self.step0, 1)
        self.send(self.spec, trainer.global_step, trainer.max_steps, float(outputs["loss"]), seconds_per_step)
