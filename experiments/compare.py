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
import os
import platform
import sys
import time
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only

from analysis.report import write_report
from analysis.run_record import ComparisonMeta
from common.cli import respell_flags
from common.files import write_json
from datamodules.errors import DATA_ERRORS
from datamodules.settings import SETTINGS
from experiments.plan import Comparison, RunSpec, plan_comparison
from experiments.sample import ReportSample, draw_report_sample, write_comparison_samples
from experiments.store import DiskFull, disk_full, is_locked, run_lock
from experiments.workers import silence_lightning, train
from models import ARMS, SCALES


class _Parser(argparse.ArgumentParser):
    """compare.py's flags are spelled with hyphens; train.py's underscore spelling names the same ones."""

    def parse_known_args(self, args=None, namespace=None):
        return super().parse_known_args(respell_flags(sys.argv[1:] if args is None else args, "-"), namespace)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="compare.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Flags may also be spelled with underscores (--max_steps), as train.py spells them.",
    )
    parser.add_argument("--settings", default="all", help=f"'all' or a comma list of {', '.join(SETTINGS)}")
    default_arms = ",".join(name for name, arm in ARMS.items() if arm.default)
    parser.add_argument("--arms", default=default_arms, help=f"comma list of {', '.join(ARMS)}")
    parser.add_argument("--scale", default="tiny", help=f"one of {', '.join(SCALES)} (sets the recipe)")
    parser.add_argument(
        "--seeds", help="a count (3 -> seeds 0,1,2) or a comma list of seeds (default: the scale's recipe; tiny: 6)"
    )
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--max-steps", type=int, help="optimiser steps per run (default: the scale's recipe)")
    budget.add_argument("--tokens", type=float, help="training tokens per run (rounded up to whole steps)")
    parser.add_argument("--val-every", type=int, help="validate every this many steps (default: the scale's recipe)")
    parser.add_argument(
        "--lr",
        type=float,
        help="peak learning rate of every run, every family (default: the scale's recipe, each family its own rate "
        "from benchmarks/lr_sweep.py)",
    )
    parser.add_argument(
        "--ablation",
        nargs="?",
        const="basic",
        choices=("basic", "full"),
        help="also train --ablation-arm with subsets of its parts decoupled: basic = each one alone and the "
        "family's groups (MoM: in_proj+out_proj, x_proj+dt_proj); full = every subset",
    )
    parser.add_argument("--ablation-setting", default="chameleon", help="the setting of the ablation")
    parser.add_argument(
        "--ablation-arm", default=ComparisonMeta.ablation_arm, help="the sparse arm whose parts the ablation varies"
    )
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
        c = plan_comparison(args)
    except ValueError as exc:
        parser.error(str(exc))
    problems = c.problems()  # everything that could refuse to run is checked before the first step
    if problems:
        print("compare.py: existing results were made with a different configuration:", file=sys.stderr)
        print("\n".join(f"  {p}" for p in problems), file=sys.stderr)
        print("Use another --root / --out, or delete those folders.", file=sys.stderr)
        return 2
    started = time.perf_counter()
    silence_lightning()  # setup's notes on what the data leave out: the runs record them, and the end prints them once
    try:  # own data that cannot serve the runs fail here, before anything is written
        c.prepare_data()
    except DATA_ERRORS as exc:
        parser.error(str(exc))

    meta = ComparisonMeta(
        scale=c.scale,
        seeds=tuple(dict.fromkeys(s.seed for s in c.runs)),
        max_steps=c.recipe.max_steps,
        settings=tuple(dict.fromkeys(s.setting for s in c.runs if s.decouple is None)),
        arms=tuple(dict.fromkeys(s.arm for s in c.runs if s.decouple is None)),
        ablation=args.ablation,
        ablation_setting=args.ablation_setting if args.ablation else None,
        ablation_arm=args.ablation_arm,
        recipe=c.meta_recipe,
        command="python experiments/compare.py " + " ".join(sys.argv[1:] if argv is None else argv),
        versions={"torch": torch.__version__, "lightning": L.__version__, "python": platform.python_version()},
        other={"parallel": c.parallel, "threads_per_run": c.threads, "root": str(c.root)},
    )
    refs = [
        {"setting": s.setting, "arm": s.arm, "variant": s.variant, "seed": s.seed, "folder": str(c.folder(s))}
        for s in c.runs
    ]
    # Under DDP every process runs this whole command (Lightning's launcher, torchrun or SLURM); one writes results.
    main_process = rank_zero_only.rank == 0 and os.environ.get("NODE_RANK", "0") == "0"
    try:
        with results_lock(c.out) if main_process else nullcontext():
            return run_comparison(c, meta, refs, main_process, started, samples=not args.no_samples)
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


def run_comparison(c: Comparison, meta: ComparisonMeta, refs: list[dict], main_process: bool, started: float,
                   samples: bool = True) -> int:  # fmt: skip
    """Train what is not finished, sample from the first seed's runs (`samples`) and write the report (its wall
    clock counted from `started`); the exit code."""
    if main_process:
        c.out.mkdir(parents=True, exist_ok=True)
        write_json(c.out / "comparison.json", {"meta": meta.as_json(), "runs": refs})

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
        meta = replace(meta, wall_clock_s=time.perf_counter() - started)
        write_json(c.out / "comparison.json", {"meta": meta.as_json(), "runs": refs})
        if samples:
            silence_lightning()  # each run's data notes were printed above, once per setting
            done = [s for s in to_draw if statuses[s.label] == "finished"]
            for spec in done:  # those no worker drew: trained here, or by another process
                if spec not in drawn:
                    drawn[spec] = draw_report_sample(c.folder(spec), spec.seed)
            write_comparison_samples(c.out, {(s.setting, s.arm): drawn[s] for s in done}, c.runs[0].seed)
        report = write_report(c.out)
        print(f"compare.py: report written to {report}" + (f"; not finished: {unfinished}" if unfinished else ""))
    return 1 if unfinished else 0


if __name__ == "__main__":
    sys.exit(main())
