"""The suite's entry point: train every arm in every setting on identical data, then write the FLOPs-to-match report.

    python experiments/compare.py --settings all                    # the default CPU recipe, all three settings
    python experiments/compare.py --settings chameleon --arms mamba,mom,mom_hash --seeds 3
    python experiments/compare.py --settings chameleon --arms mamba,mom --ablation        # which projections matter
    python experiments/compare.py --scale 760m --accelerator gpu --devices 8 --strategy ddp

It plans the matrix (setting x seed x arm, plus ablation variants), checks every name and every existing run folder
before anything trains, skips finished runs, resumes unfinished ones and trains the rest: on the CPU one
single-threaded run per core at a time, on GPUs one run after the other (`--parallel K`: K at a time, one GPU each),
then writes the report (analysis/report.py) into `--out`. Interrupt it and
run the same command again: it continues where it stopped. Every arm of one comparison gets the same data, seed,
token budget and optimiser: the recipe of its scale (experiments/recipes.py), which `--max-steps` / `--tokens` may
override. The plan and its checks live in experiments/plan.py; what every number of the report means is in
docs/design.md.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import platform
import queue
import signal
import sys
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager, nullcontext
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only

from analysis.report import write_report
from analysis.run_record import Summary
from common import write_json
from datamodules.multimodal import MultiModalDataModule
from datamodules.settings import SETTINGS
from experiments.plan import Comparison, RunSpec, resolve
from experiments.progress import MatrixProgress, ProgressReporter
from experiments.run import train_run
from experiments.sample import ReportSample, draw_report_sample, write_comparison_samples
from experiments.store import DiskFull, disk_full, is_locked, run_lock
from models import ARMS, SCALES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="compare.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--settings", default="all", help=f"'all' or a comma list of {', '.join(SETTINGS)}")
    default_arms = ",".join(name for name, arm in ARMS.items() if arm.default)
    parser.add_argument("--arms", default=default_arms, help=f"comma list of {', '.join(ARMS)}")
    parser.add_argument("--scale", default="tiny", help=f"one of {', '.join(SCALES)} (sets the recipe)")
    parser.add_argument(
        "--seeds", help="a count (3 -> seeds 0,1,2) or a comma list of seeds (default: the scale's recipe; tiny: 3)"
    )
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--max-steps", type=int, help="optimiser steps per run (default: the scale's recipe)")
    budget.add_argument("--tokens", type=float, help="training tokens per run (rounded up to whole steps)")
    parser.add_argument("--val-every", type=int, help="validate every this many steps (default: the scale's recipe)")
    parser.add_argument(
        "--ablation",
        nargs="?",
        const="basic",
        choices=("basic", "full"),
        help="also train --ablation-arm with subsets of its parts decoupled: basic = each one alone and the "
        "family's groups (MoM: in_proj+out_proj, x_proj+dt_proj); full = every subset",
    )
    parser.add_argument("--ablation-setting", default="chameleon", help="the setting of the ablation")
    parser.add_argument("--ablation-arm", default="mom", help="the sparse arm whose parts the ablation varies")
    parser.add_argument(
        "--data",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a MultiModalDataModule argument for every run (repeatable)",
    )
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a ModelConfig field for every run, e.g. d_model=256 (repeatable)",
    )
    parser.add_argument("--root", default="runs", help="where run folders live (default runs/)")
    parser.add_argument(
        "--out",
        help="results folder for the report (default results/<scale> for the scale's own recipe, "
        "results/<scale>-<recipe> for any other budget, data or model)",
    )
    parser.add_argument("--data-cache", default=".cache/data", help="prepared-data cache")
    parser.add_argument(
        "--no-samples", action="store_true", help="skip the report's samples (text and images from every arm)"
    )
    lightning = parser.add_argument_group("passed to lightning.Trainer")
    lightning.add_argument("--accelerator", default="cpu", help="cpu, gpu, auto, ...")
    lightning.add_argument("--devices", default=None, help="e.g. 1, 8, 'auto'")
    lightning.add_argument("--num-nodes", type=int, default=None)
    lightning.add_argument("--strategy", default=None, help="e.g. ddp, fsdp")
    lightning.add_argument(
        "--precision", default=None, help="the recipe's is bf16-mixed (bf16 matmuls, float32 weights); 32-true: float32"
    )
    parser.add_argument(
        "--parallel",
        default="auto",
        help="runs at a time, each in its own process. 'auto' (default): on the CPU one single-threaded run per core "
        "(faster than one run on all cores; the results are bit-identical either way), elsewhere 1; K > 1 with "
        "--accelerator gpu gives each run its own GPU",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        c = resolve(args)
    except ValueError as exc:
        parser.error(str(exc))
    problems = c.problems()  # everything that could refuse to run is checked before the first step
    if problems:
        print("compare.py: existing results were made with a different configuration:", file=sys.stderr)
        print("\n".join(f"  {p}" for p in problems), file=sys.stderr)
        print("Use another --root / --out, or delete those folders.", file=sys.stderr)
        return 2

    seeds = list(dict.fromkeys(s.seed for s in c.runs))
    meta = {
        "scale": c.scale,
        "seeds": seeds,
        "max_steps": c.recipe.max_steps,
        "settings": list(dict.fromkeys(s.setting for s in c.runs if s.decouple is None)),
        "arms": list(dict.fromkeys(s.arm for s in c.runs if s.decouple is None)),
        "ablation": args.ablation,
        "ablation_setting": args.ablation_setting if args.ablation else None,
        "ablation_arm": args.ablation_arm if args.ablation else None,
        "recipe": c.meta_recipe,
        "parallel": c.parallel,
        "threads_per_run": c.threads,
        "command": "python experiments/compare.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "root": str(c.root),
        "versions": {"torch": torch.__version__, "lightning": L.__version__, "python": platform.python_version()},
    }
    refs = [
        {"setting": s.setting, "arm": s.arm, "variant": s.variant, "seed": s.seed, "folder": str(c.folder(s))}
        for s in c.runs
    ]
    # Under DDP every process runs this whole command (Lightning's launcher, torchrun or SLURM); one writes results.
    main_process = rank_zero_only.rank == 0 and os.environ.get("NODE_RANK", "0") == "0"
    try:
        with results_lock(c.out) if main_process else nullcontext():
            return run_comparison(c, meta, refs, main_process, samples=not args.no_samples)
    except OSError as exc:
        full = disk_full(exc, c.out, 16 * 2**20) if not isinstance(exc, DiskFull) else exc
        if full is None:
            raise
        print(f"compare.py: {full.strerror}", file=sys.stderr)
        return 1


def results_lock(out: Path):
    """The results folder's lock, held for the whole command: a second compare.py on the same folder waits, then
    finds the runs the first one finished."""

    def waiting() -> None:
        print(f"compare.py: another process is writing {out}; waiting for it to end", flush=True)

    return run_lock(out, wait=True, waiting=waiting)


def run_comparison(c: Comparison, meta: dict, refs: list[dict], main_process: bool, samples: bool = True) -> int:
    """Train what is not finished, sample from the first seed's runs (`samples`) and write the report; the exit
    code."""
    if main_process:
        c.out.mkdir(parents=True, exist_ok=True)
        write_json(c.out / "comparison.json", {"meta": meta, "runs": refs})

    started = time.perf_counter()
    for setting in dict.fromkeys(s.setting for s in c.runs):  # once, before any run (parallel runs would race)
        MultiModalDataModule(setting=setting, **c.data).prepare_data()
    todo = [s for s in c.runs if c.status(s) != "finished"]
    print(
        f"compare.py: {len(c.runs)} runs planned, {len(c.runs) - len(todo)} finished already, {len(todo)} to "
        f"train ({c.recipe.max_steps} steps of {c.data['batch_size']}x{c.data['seq_len']} tokens each) -> {c.out}"
    )
    for folder, problems in c.damaged().items():
        print(f"compare.py: {folder} is damaged ({'; '.join(problems)}); it will be trained again", file=sys.stderr)
    others = c.other_recipes()
    if others:
        listed = ", ".join(f"{name} ({n} finished)" for name, n in others.items())
        print(f"compare.py: {c.root} also holds runs of other recipes, not part of this comparison: {listed}")
    elsewhere = [s for s in todo if is_locked(c.folder(s))]
    if elsewhere:
        print(f"compare.py: another process is training {', '.join(s.label for s in elsewhere)}; this one trains the "
              "rest, then waits for those (and trains any the other left unfinished)")  # fmt: skip
    # The report's samples come from each arm's first-seed run; a worker draws them once the run is finished, beside
    # the training of the others.
    to_draw = [s for s in c.runs if s.decouple is None and s.seed == c.runs[0].seed] if samples and main_process else []
    drawn: dict[RunSpec, ReportSample] = {}
    try:
        train(c, [s for s in todo if s not in elsewhere], to_draw, drawn)
        for spec in elsewhere:
            with run_lock(c.folder(spec), wait=True):
                pass
        train(c, [s for s in elsewhere if c.status(s) != "finished"], to_draw, drawn)
    except KeyboardInterrupt:
        print("\ncompare.py: interrupted. Run the same command again to continue where it stopped.", file=sys.stderr)
        return 130
    for setting, notes in c.data_notes().items():
        print("\n".join(f"compare.py: {setting}: left out of the data: {note}" for note in notes))
    statuses = {s.label: c.status(s) for s in c.runs}
    unfinished = {label: status for label, status in statuses.items() if status != "finished"}
    if main_process:
        meta["wall_clock_s"] = time.perf_counter() - started
        write_json(c.out / "comparison.json", {"meta": meta, "runs": refs})
        if samples:
            quiet()  # each run's data notes were printed above, once per setting
            done = [s for s in to_draw if statuses[s.label] == "finished"]
            for spec in done:  # those no worker drew: trained here, or by another process
                if spec not in drawn:
                    drawn[spec] = draw_report_sample(c.folder(spec), spec.seed)
            write_comparison_samples(c.out, {(s.setting, s.arm): drawn[s] for s in done}, c.runs[0].seed)
        report = write_report(c.out)
        print(f"compare.py: report written to {report}" + (f"; not finished: {unfinished}" if unfinished else ""))
    return 1 if unfinished else 0


def outcome(summary: Summary) -> str:
    final = ", ".join(f"{k.split('/')[-1]} {v:.3f}" for k, v in sorted(summary.final_val_loss.items()))
    return f"{summary.status} ({final})"


def quiet() -> None:
    """The display replaces Lightning's chatter; a resumed run's own folder is not news."""
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*exists and is not empty.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")


def steps_left(c: Comparison, todo: list[RunSpec]) -> dict[RunSpec, int]:
    return {spec: c.recipe.max_steps - c.steps_done(spec) for spec in todo}


def train(c: Comparison, todo: list[RunSpec], to_draw: list[RunSpec], drawn: dict[RunSpec, ReportSample]) -> None:
    """Train `todo`; with workers, they also draw the report samples of the runs in `to_draw` once those are finished
    (into `drawn`)."""
    if c.parallel > 1 and len(todo) > 1:
        train_parallel(c, todo, to_draw, drawn)
    elif todo:
        train_serial(c, todo)


def train_serial(c: Comparison, todo: list[RunSpec]) -> None:
    """One run after the other in this process (on torch's threads), under one progress display."""
    quiet()
    display = MatrixProgress(todo, steps_left(c, todo))
    with display.progress:
        for spec in todo:
            kwargs = c.run_kwargs(spec)
            kwargs["trainer"] = kwargs["trainer"] | {"callbacks": [ProgressReporter(spec, display.update)]}
            display.end(spec, outcome(train_run(**kwargs)))


def train_parallel(c: Comparison, todo: list[RunSpec], to_draw: list[RunSpec], drawn: dict[RunSpec, ReportSample]):
    """`c.parallel` runs at a time, each in a worker process (single-threaded on the CPU, one GPU each on GPUs),
    under one progress display; a run's own output goes to train.log in its folder. A run of `to_draw` is sampled
    for the report by a worker as soon as it is finished (those finished before: at once).

    Ctrl-C reaches this process alone (the workers have a process group of their own); it forwards it once to every
    worker that is training, waits for them to record their runs as interrupted, and stops. A worker whose parent
    has died stops at its next step, resumable.
    """
    context = multiprocessing.get_context("spawn")
    events, slots = context.Queue(), context.Queue()
    for slot in range(c.parallel):
        slots.put(slot)
    gpu = c.trainer.get("accelerator", "cpu") != "cpu"
    n_workers = min(c.parallel, len(todo))
    display = MatrixProgress(todo, steps_left(c, todo), n_workers)
    workers: dict[RunSpec, int] = {}  # runs in training -> their worker's pid
    with (
        display.progress,
        ProcessPoolExecutor(
            n_workers,
            context,
            initializer=_worker_init,
            initargs=(slots, events, c.threads, gpu, dict(ARMS), dict(SETTINGS)),
        ) as pool,
    ):
        futures = {pool.submit(_train_in_worker, c.run_kwargs(spec, gpu), spec, c.folder(spec)): spec for spec in todo}
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


_WORKER: dict = {}  # the worker process's event queue and parent


def _worker_init(slots, events, threads: int | None, gpu: bool, arms: dict, settings: dict) -> None:
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
    quiet()
    _WORKER.update(events=events, parent=os.getppid())


class _StopIfOrphaned(L.Callback):
    """Stops the run (resumable, recorded as interrupted) once the comparison that started it has died."""

    def on_train_batch_end(self, trainer, lit, outputs, batch, batch_idx) -> None:
        if os.getppid() != _WORKER["parent"]:
            trainer.should_stop = True


def _train_in_worker(kwargs: dict, spec: RunSpec, folder: Path) -> Summary:
    """train_run in a worker, its output (Python's and the libraries') appended to the run folder's train.log."""
    folder.mkdir(parents=True, exist_ok=True)

    def send(*event) -> None:
        _WORKER["events"].put((os.getpid(), *event))

    kwargs["trainer"] = kwargs["trainer"] | {"callbacks": [ProgressReporter(spec, send), _StopIfOrphaned()]}
    with _output_to(folder / "train.log"):
        return train_run(**kwargs)


def _draw_in_worker(folder: Path, seed: int) -> ReportSample:
    """A finished run's report samples, drawn in a worker (its output appended to the run's train.log)."""
    with _output_to(folder / "train.log"):
        return draw_report_sample(folder, seed)


@contextmanager
def _output_to(path: Path) -> Iterator[None]:
    """This process's output, Python's and the libraries' (file descriptors 1 and 2), appended to `path`."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "a") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


if __name__ == "__main__":
    sys.exit(main())
