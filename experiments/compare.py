"""The suite's entry point: train every arm in every setting on identical data, then write the FLOPs-to-match report.

    python experiments/compare.py --settings all                    # the default CPU recipe, all three settings
    python experiments/compare.py --settings chameleon --arms mamba,mom,mom_hash --seeds 3
    python experiments/compare.py --settings chameleon --arms mamba,mom --ablation        # which projections matter
    python experiments/compare.py --scale 760m --accelerator gpu --devices 8 --strategy ddp

It plans the matrix (setting x seed x arm, plus ablation variants), checks every name and every existing run folder
before anything trains, skips finished runs, resumes unfinished ones and trains the rest one after the other (or
`--parallel K` at a time, one GPU each), then writes the report (analysis/report.py) into `--out`. Interrupt it and
run the same command again: it continues where it stopped. Every arm of one comparison gets the same data, seed,
token budget and optimiser: the recipe of its scale (experiments/recipes.py), which `--max-steps` / `--tokens` may
override. The plan and its checks live in experiments/plan.py; what every number of the report means is in
docs/design.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import time
import warnings
from datetime import timedelta
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text

from analysis.report import write_report
from common import write_json
from datamodules.multimodal import MultiModalDataModule
from datamodules.settings import SETTINGS
from experiments.plan import Comparison, RunSpec, resolve
from experiments.run import train_run
from models import ARMS, SCALES


class _Eta(TimeRemainingColumn):
    """A run's ETA from its own speed; the matrix's from the per-arm step times in its `eta` field."""

    def render(self, task) -> Text:
        if task.fields.get("eta") is None:
            return super().render(task)
        return Text(str(timedelta(seconds=round(task.fields["eta"]))), style="progress.remaining")


class MatrixProgress(L.Callback):
    """A rich display of the matrix: the current run (step, ETA) and the whole comparison (steps, ETA).

    The matrix ETA prices each remaining step at the seconds per step measured for that arm in this session (Mamba
    steps cost about three times a transformer's on a CPU), or at the mean over measured arms before an arm has run.
    """

    def __init__(self, runs: list[RunSpec], remaining: dict[RunSpec, int]) -> None:
        self.remaining = remaining
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
        self.run = self.progress.add_task("", total=1, visible=False, note="", eta=None)
        self.spec: RunSpec | None = None

    def start_run(self, spec: RunSpec, index: int, n: int) -> None:
        self.spec = spec
        self.progress.update(self.run, description=f"[{index}/{n}] {spec.label}", visible=True, completed=0)

    def on_train_start(self, trainer, lit) -> None:
        self.steps0 = trainer.global_step  # a resumed run starts at its checkpoint
        self.t0 = time.perf_counter()
        self.progress.reset(self.run, total=trainer.max_steps, completed=trainer.global_step)

    def on_train_batch_end(self, trainer, lit, outputs, batch, batch_idx) -> None:
        self.progress.update(self.run, completed=trainer.global_step, note=f"loss {float(outputs['loss']):.3f}")
        self.progress.advance(self.matrix)
        self.remaining[self.spec] -= 1
        done = trainer.global_step - self.steps0
        self.seconds_per_step[self.spec.arm] = (time.perf_counter() - self.t0) / max(done, 1)
        self.progress.update(self.matrix, eta=self._matrix_eta())

    def _matrix_eta(self) -> float:
        mean = sum(self.seconds_per_step.values()) / len(self.seconds_per_step)
        return sum(self.seconds_per_step.get(s.arm, mean) * n for s, n in self.remaining.items())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="compare.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--settings", default="all", help=f"'all' or a comma list of {', '.join(SETTINGS)}")
    default_arms = ",".join(name for name, arm in ARMS.items() if arm.default)
    parser.add_argument("--arms", default=default_arms, help=f"comma list of {', '.join(ARMS)}")
    parser.add_argument("--scale", default="tiny", help=f"one of {', '.join(SCALES)} (sets the recipe)")
    parser.add_argument("--seeds", default="1", help="a count (3 -> seeds 0,1,2) or a comma list of seeds (default 1)")
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
    parser.add_argument("--out", help="results folder for the report (default results/<scale>)")
    parser.add_argument("--data-cache", default=".cache/data", help="prepared-data cache")
    lightning = parser.add_argument_group("passed to lightning.Trainer")
    lightning.add_argument("--accelerator", default="cpu", help="cpu, gpu, auto, ...")
    lightning.add_argument("--devices", default=None, help="e.g. 1, 8, 'auto'")
    lightning.add_argument("--num-nodes", type=int, default=None)
    lightning.add_argument("--strategy", default=None, help="e.g. ddp, fsdp")
    lightning.add_argument("--precision", default=None, help="e.g. bf16-mixed (the GPU default)")
    parser.add_argument(
        "--parallel",
        type=int,
        default=1,
        help="runs at a time, each in its own process (on its own GPU with --accelerator gpu)",
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
    try:
        (train_parallel if c.parallel > 1 else train_serial)(c, todo)
    except KeyboardInterrupt:
        print("\ncompare.py: interrupted. Run the same command again to continue where it stopped.", file=sys.stderr)
        return 130
    statuses = {s.label: c.status(s) for s in c.runs}
    unfinished = {label: status for label, status in statuses.items() if status != "finished"}
    if main_process:
        meta["wall_clock_s"] = time.perf_counter() - started
        write_json(c.out / "comparison.json", {"meta": meta, "runs": refs})
        report = write_report(c.out)
        print(f"compare.py: report written to {report}" + (f"; not finished: {unfinished}" if unfinished else ""))
    return 1 if unfinished else 0


def train_serial(c: Comparison, todo: list[RunSpec]) -> None:
    """One run after the other in this process, under one progress display."""
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # the display replaces Lightning's chatter
    warnings.filterwarnings("ignore", message=".*exists and is not empty.*")  # a resumed run's own folder
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    display = MatrixProgress(todo, {s: c.recipe.max_steps - c.steps_done(s) for s in todo})
    with display.progress:
        for i, spec in enumerate(todo, 1):
            display.start_run(spec, i, len(todo))
            summary = train_run(
                spec.setting,
                spec.arm,
                c.scale,
                spec.seed,
                c.recipe.max_steps,
                root=c.root,
                val_every=c.recipe.val_every,
                data=c.data,
                module=c.module(spec),
                trainer=c.trainer | {"callbacks": [display]},
                variant=spec.variant,
            )
            display.remaining[spec] = 0
            final = ", ".join(f"{k.split('/')[-1]} {v:.3f}" for k, v in sorted(summary.final_val_loss.items()))
            display.progress.console.print(f"{spec.label}: {summary.status} ({final})")


def train_parallel(c: Comparison, todo: list[RunSpec]) -> None:
    """`c.parallel` runs at a time, each a train.py process that sees one GPU; its log goes to its run folder."""
    pending, active, free = list(todo), {}, list(range(c.parallel))
    while pending or active:
        while pending and free:
            spec, slot = pending.pop(0), free.pop(0)
            folder = c.folder(spec)
            folder.mkdir(parents=True, exist_ok=True)
            cmd = [
                sys.executable,
                str(Path(__file__).with_name("train.py")),
                "--setting",
                spec.setting,
                "--arm",
                spec.arm,
                "--scale",
                c.scale,
                "--seed",
                str(spec.seed),
                "--variant",
                spec.variant,
                "--max_steps",
                str(c.recipe.max_steps),
                "--root",
                str(c.root),
                "--val_every",
                str(c.recipe.val_every),
            ]
            cmd += [f"--data.{k}={_cli(v)}" for k, v in c.data.items()]
            cmd += [f"--model.{k}={_cli(v)}" for k, v in c.module(spec).items()]
            cmd += [f"--trainer.{k}={v}" for k, v in c.trainer.items() if k != "devices"]
            env = os.environ | {"CUDA_VISIBLE_DEVICES": str(slot)}
            log = open(folder / "train.log", "a")  # noqa: SIM115 - closed when its process ends
            active[subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)] = (spec, slot, log)
            print(f"started {spec.label} (slot {slot}, log {folder / 'train.log'})")
        for proc in [p for p in active if p.poll() is not None]:
            spec, slot, log = active.pop(proc)
            log.close()
            free.append(slot)
            print(f"{spec.label}: {c.status(spec)} (exit {proc.returncode})")
        time.sleep(1)


def _cli(value) -> str:
    """A value as train.py's parser reads it: text as is, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


if __name__ == "__main__":
    sys.exit(main())
