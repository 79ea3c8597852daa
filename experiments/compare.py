"""The suite's entry point: train every arm in every setting on identical data, then write the FLOPs-to-match report.

    python experiments/compare.py --settings all                    # the default CPU profile, all three settings
    python experiments/compare.py --settings chameleon --arms mamba,mom,mom_hash --seeds 3
    python experiments/compare.py --settings chameleon --arms mamba,mom --ablation        # which projections matter
    python experiments/compare.py --scale 760m --accelerator gpu --devices 8 --strategy ddp

It plans the matrix (setting x seed x arm, plus ablation variants), checks every name and every existing run folder
before anything trains, skips finished runs, resumes unfinished ones and trains the rest one after the other (or
`--parallel K` at a time, one GPU each), then writes the report (analysis/report.py) into `--out`. Interrupt it and
run the same command again: it continues where it stopped. Every arm of one comparison gets the same data, seed,
token budget and optimiser: the profile of its scale (PROFILES), which `--max-steps` / `--tokens` may override.
"""

from __future__ import annotations

import argparse
import inspect
import itertools
import json
import logging
import math
import os
import platform
import subprocess
import sys
import time
import warnings
from dataclasses import asdict, dataclass, fields, replace
from datetime import timedelta
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text

from analysis.report import write_report
from datamodules.multimodal import SETTINGS, MultiModalDataModule
from experiments.run import read_summary, recipe_conflicts, run_dir, train_run, write_json
from models import ARCHS, SCALES, ModelConfig
from models.mamba import MAMBA_PARTS

DEFAULT_ARMS = ("mamba", "mom", "transformer", "mot")


@dataclass(frozen=True)
class Profile:
    """The training recipe every arm of a comparison at one scale shares."""

    max_steps: int
    seq_len: int
    batch_size: int
    val_every: int
    val_sequences: int
    lr: float
    warmup_steps: int
    min_lr_ratio: float = 0.1

    def data(self) -> dict:
        return {"seq_len": self.seq_len, "batch_size": self.batch_size, "val_sequences": self.val_sequences}

    def module(self) -> dict:
        return {"lr": self.lr, "warmup_steps": self.warmup_steps, "min_lr_ratio": self.min_lr_ratio}


# tiny: the default CPU profile, sized so that 3 settings x 4 arms finish in 15 minutes on 2 cores (README) while the
# dense curves still fall and 20 evaluations place the crossing. PERF.md's calibration (d_model 128, AdamW 2e-3,
# warmup + cosine) showed the sparse arms' gain once the cosine flattens the dense curve; batch 8 x 256 gives twice the
# optimiser steps per token of 16 x 256 and speech utterances (~110 units) still fit one sequence.
# Paper scales: Transfusion's published optimiser (PAPERS.md §3.1) and sequences of 4096; batch per device.
PROFILES = {
    "tiny": Profile(max_steps=200, seq_len=256, batch_size=8, val_every=10, val_sequences=32, lr=2e-3, warmup_steps=20),
    "small": Profile(
        max_steps=1000, seq_len=512, batch_size=16, val_every=25, val_sequences=64, lr=1e-3, warmup_steps=100
    ),
    **{
        scale: Profile(
            max_steps=250_000,
            seq_len=4096,
            batch_size=8,
            val_every=1000,
            val_sequences=64,
            lr=3e-4,
            warmup_steps=4000,
            min_lr_ratio=0.05,
        )
        for scale in ("163m", "760m", "1.4b")
    },
}

# Ablation variants of MoM: which projections are decoupled. All four is the main `mom` arm itself.
ABLATION_BASIC = (
    *((part,) for part in MAMBA_PARTS),
    ("in_proj", "out_proj"),
    ("x_proj", "dt_proj"),
)
ABLATION_FULL = tuple(
    parts for k in range(1, len(MAMBA_PARTS)) for parts in itertools.combinations(MAMBA_PARTS, k)
)  # the 14 proper non-empty subsets; with `mom` all 15


@dataclass(frozen=True)
class RunSpec:
    """One run of the matrix: `name` is its folder (the arm, or an ablation variant of `mom`)."""

    setting: str
    arm: str
    seed: int
    name: str
    decouple: tuple[str, ...] | None = None

    @property
    def label(self) -> str:
        return f"{self.setting}/{self.name}/seed{self.seed}"


def parse_list(text: str, valid: tuple[str, ...], what: str, all_means: tuple[str, ...] | None = None) -> list[str]:
    """'a,b' -> ['a', 'b'], checked against `valid`; 'all' -> all_means."""
    if all_means is not None and text.strip() == "all":
        return list(all_means)
    items = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in items if t not in valid]
    if unknown or not items:
        raise ValueError(f"unknown {what} {unknown or text!r}; valid choices are {list(valid)}")
    return list(dict.fromkeys(items))


def parse_overrides(items: list[str], flag: str, valid: set[str]) -> dict:
    """['d_model=256', 'decouple=["in_proj"]'] -> {'d_model': 256, 'decouple': ['in_proj']} (JSON values, else text)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{flag} takes KEY=VALUE; got {item!r}")
        if key not in valid:
            raise ValueError(f"{flag}: unknown key {key!r}; valid keys are {sorted(valid)}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def parse_seeds(text: str) -> list[int]:
    """'3' -> [0, 1, 2] (a count); '0,4' -> [0, 4] (explicit seeds)."""
    try:
        values = [int(t) for t in text.split(",")]
    except ValueError:
        raise ValueError(f"--seeds takes a count (3) or a comma list of seeds (0,4); got {text!r}") from None
    if "," not in text:
        if values[0] < 1:
            raise ValueError(f"--seeds count must be >= 1; got {text!r}")
        return list(range(values[0]))
    return list(dict.fromkeys(values))


def plan(settings, arms, seeds, ablation: str | None, ablation_setting: str) -> list[RunSpec]:
    """Settings outermost (a stopped comparison has whole settings done), then seeds, then arms; ablation last."""
    runs = [RunSpec(s, a, seed, a) for s in settings for seed in seeds for a in arms]
    if ablation:
        variants = ABLATION_FULL if ablation == "full" else ABLATION_BASIC
        for seed in seeds:
            runs += [RunSpec(ablation_setting, arm, seed, arm) for arm in ("mamba", "mom")]
            runs += [RunSpec(ablation_setting, "mom", seed, "mom-" + "+".join(p), p) for p in variants]
    return list(dict.fromkeys(runs))


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


@dataclass
class Comparison:
    """A resolved comparison: the runs and the one recipe they share."""

    runs: list[RunSpec]
    scale: str
    root: Path
    out: Path
    max_steps: int
    profile: Profile
    data: dict  # MultiModalDataModule arguments (the profile's, the user's overrides, the cache)
    model_overrides: dict
    trainer: dict
    parallel: int

    def folder(self, spec: RunSpec) -> Path:
        return run_dir(self.root, spec.setting, self.scale, spec.name, spec.seed)

    def module(self, spec: RunSpec) -> dict:
        overrides = self.model_overrides | ({"decouple": list(spec.decouple)} if spec.decouple is not None else {})
        return self.profile.module() | ({"model_overrides": overrides} if overrides else {})

    def status(self, spec: RunSpec) -> str | None:
        return (read_summary(self.folder(spec)) or {}).get("status")

    @property
    def recipe(self) -> dict:
        """What makes two comparisons' results comparable; a results folder holds one recipe."""
        data = {k: v for k, v in self.data.items() if k != "cache_dir"}
        return {
            "scale": self.scale,
            **asdict(self.profile),
            "max_steps": self.max_steps,
            "data": data,
            "model_overrides": self.model_overrides,
        }

    def problems(self) -> list[str]:
        """Existing results this comparison would mix with: a results folder or run folders of another recipe."""
        found = []
        path = self.out / "comparison.json"
        if path.exists():
            try:
                stored = json.loads(path.read_text())["meta"]["recipe"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                stored = {}
                found.append(f"{path}: unreadable ({exc})")
            found += [
                f"{path}: {k} was {stored.get(k)!r}, now {v!r}"
                for k, v in self.recipe.items()
                if stored and stored.get(k) != v
            ]
        for spec in self.runs:
            conflicts = recipe_conflicts(
                self.folder(spec), self.max_steps, self.profile.val_every, self.data, self.module(spec)
            )
            found += [f"{self.folder(spec)}: {c}" for c in conflicts]
        return found


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="compare.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--settings", default="all", help=f"'all' or a comma list of {', '.join(SETTINGS)}")
    parser.add_argument("--arms", default=",".join(DEFAULT_ARMS), help=f"comma list of {', '.join(ARCHS)}")
    parser.add_argument("--scale", default="tiny", help=f"one of {', '.join(SCALES)} (sets the profile)")
    parser.add_argument("--seeds", default="1", help="a count (3 -> seeds 0,1,2) or a comma list of seeds (default 1)")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--max-steps", type=int, help="optimiser steps per run (default: the scale's profile)")
    budget.add_argument("--tokens", type=float, help="training tokens per run (rounded up to whole steps)")
    parser.add_argument("--val-every", type=int, help="validate every this many steps (default: the scale's profile)")
    parser.add_argument(
        "--ablation",
        nargs="?",
        const="basic",
        choices=("basic", "full"),
        help="also train MoM with subsets of its projections decoupled: basic = each one alone, "
        "in_proj+out_proj, x_proj+dt_proj; full = all 15 subsets",
    )
    parser.add_argument("--ablation-setting", default="chameleon", help="the setting of the ablation")
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


def resolve(args: argparse.Namespace) -> Comparison:
    """Arguments -> Comparison; a ValueError names any bad value and the valid choices."""
    settings = parse_list(args.settings, SETTINGS, "setting", all_means=SETTINGS)
    arms = parse_list(args.arms, ARCHS, "arm")
    if args.scale not in SCALES:
        raise ValueError(f"unknown scale {args.scale!r}; valid choices are {list(SCALES)}")
    if args.ablation_setting not in SETTINGS:
        raise ValueError(f"unknown ablation setting {args.ablation_setting!r}; valid choices are {list(SETTINGS)}")
    if args.parallel < 1:
        raise ValueError(f"--parallel must be >= 1; got {args.parallel}")
    data_overrides = parse_overrides(args.data, "--data", valid=_arguments(MultiModalDataModule) - {"setting", "seed"})
    model_overrides = parse_overrides(args.model, "--model", valid={f.name for f in fields(ModelConfig)} - {"arch"})
    profile = PROFILES[args.scale]
    if args.val_every is not None:
        if args.val_every < 1:
            raise ValueError(f"--val-every must be >= 1; got {args.val_every}")
        profile = replace(profile, val_every=args.val_every)
    data = profile.data() | data_overrides | {"cache_dir": args.data_cache}
    # batch_size is per device: a step of a run on N devices x K nodes trains N x K batches.
    devices = _devices(args.devices)
    replicas = (devices if isinstance(devices, int) else 1) * (args.num_nodes or 1)
    tokens_per_step = data["seq_len"] * data["batch_size"] * replicas
    max_steps = args.max_steps or (math.ceil(args.tokens / tokens_per_step) if args.tokens else profile.max_steps)
    if max_steps < 1:
        raise ValueError(f"the step budget must be >= 1; got {max_steps}")
    trainer = {
        k: v
        for k, v in (
            ("accelerator", args.accelerator),
            ("devices", _devices(args.devices)),
            ("num_nodes", args.num_nodes),
            ("strategy", args.strategy),
            ("precision", args.precision),
        )
        if v is not None
    }
    return Comparison(
        runs=plan(settings, arms, parse_seeds(args.seeds), args.ablation, args.ablation_setting),
        scale=args.scale,
        root=Path(args.root),
        out=Path(args.out or f"results/{args.scale}"),
        max_steps=max_steps,
        profile=profile,
        data=data,
        model_overrides=model_overrides,
        trainer=trainer,
        parallel=args.parallel,
    )


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
        "max_steps": c.max_steps,
        "settings": list(dict.fromkeys(s.setting for s in c.runs if s.decouple is None)),
        "arms": list(dict.fromkeys(s.arm for s in c.runs if s.decouple is None)),
        "ablation": args.ablation,
        "ablation_setting": args.ablation_setting if args.ablation else None,
        "recipe": c.recipe,
        "command": "python experiments/compare.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "root": str(c.root),
        "versions": {"torch": torch.__version__, "lightning": L.__version__, "python": platform.python_version()},
    }
    refs = [
        {"setting": s.setting, "arm": s.arm, "variant": s.name, "seed": s.seed, "folder": str(c.folder(s))}
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
        f"train ({c.max_steps} steps of {c.data['batch_size']}x{c.data['seq_len']} tokens each) -> {c.out}"
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
    display = MatrixProgress(todo, {s: c.max_steps - (read_summary(c.folder(s)) or {}).get("steps", 0) for s in todo})
    with display.progress:
        for i, spec in enumerate(todo, 1):
            display.start_run(spec, i, len(todo))
            summary = train_run(
                spec.setting,
                spec.arm,
                c.scale,
                spec.seed,
                c.max_steps,
                root=c.root,
                val_every=c.profile.val_every,
                data=c.data,
                module=c.module(spec),
                trainer=c.trainer | {"callbacks": [display]},
                name=spec.name,
            )
            display.remaining[spec] = 0
            final = ", ".join(f"{k.split('/')[-1]} {v:.3f}" for k, v in sorted(summary["final_val_loss"].items()))
            display.progress.console.print(f"{spec.label}: {summary['status']} ({final})")


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
                "--name",
                spec.name,
                "--max_steps",
                str(c.max_steps),
                "--root",
                str(c.root),
                "--val_every",
                str(c.profile.val_every),
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


def _arguments(cls) -> set[str]:
    return set(inspect.signature(cls).parameters) - {"self"}


def _cli(value) -> str:
    """A value as train.py's parser reads it: text as is, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def _devices(text: str | None):
    return int(text) if text is not None and text.isdigit() else text


if __name__ == "__main__":
    sys.exit(main())
