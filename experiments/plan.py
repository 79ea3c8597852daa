"""A comparison's plan: which runs (setting x seed x arm, plus ablation variants), with which one recipe, where.

`resolve` turns compare.py's arguments into a `Comparison` and raises ValueError naming any bad value with the valid
choices; `Comparison.problems` lists the existing folders it would mix with; `Comparison.prepare_data` prepares (and
checks) the data every run will read. All three run before anything of the comparison is written.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import typing
from dataclasses import dataclass, replace
from pathlib import Path

from analysis.run_record import ComparisonMeta, RunRecordError, file_disagreements, read_summary
from common.cli import parse_overrides
from common.files import check_writable_folder
from datamodules.multimodal import MultiModalDataModule
from datamodules.settings import SETTINGS, get_setting
from experiments.recipes import RECIPES, Recipe, RunRequest, as_stored, recipe_id
from experiments.run import check_trainer
from models import ARMS, SCALES, ModelConfig, get_arm


@dataclass(frozen=True)
class RunSpec:
    """One run of the matrix. `variant` is its folder name: the arm, or an ablation variant ("mom-in_proj")."""

    setting: str
    arm: str
    seed: int
    variant: str
    decouple: tuple[str, ...] | None = None  # the ablation variant's decoupled parts; None = the arm's default

    @property
    def label(self) -> str:
        return f"{self.setting}/{self.variant}/seed{self.seed}"


def ablation_variants(arm: str, full: bool = False) -> list[tuple[str, ...]]:
    """The decoupled-part subsets an ablation of sparse `arm` trains beside it (its own default is the arm itself).

    basic: each part alone, then the family's groups (Mamba: in_proj+out_proj, x_proj+dt_proj); full: every proper
    non-empty subset of the arm's parts.
    """
    spec = get_arm(arm)
    if not spec.is_sparse:
        raise ValueError(f"--ablation-arm {arm!r} is dense; valid choices are {[a for a in ARMS if ARMS[a].is_sparse]}")
    parts = spec.parts
    if full:
        return [s for k in range(1, len(parts)) for s in itertools.combinations(parts, k)]
    groups = [g for g in spec.family.ablation_groups if set(g) < set(parts)]
    return [(p,) for p in parts] + groups


def plan(
    settings, arms, seeds, ablation: str | None, ablation_setting: str, ablation_arm: str = ComparisonMeta.ablation_arm
) -> list[RunSpec]:
    """Settings outermost (a stopped comparison has whole settings done), then arms, then seeds; ablation last.

    Within a setting the runs that take longest on a CPU come first (the families of the higher `cpu_step_cost`
    first, sparse before dense: benchmarks/README.md), so that parallel runs end together instead of one core waiting
    for the last long run.
    """

    def slowest_first(arm: str) -> tuple[float, bool]:
        return -get_arm(arm).family.cpu_step_cost, not get_arm(arm).is_sparse

    arms = sorted(arms, key=slowest_first)  # stable: equal arms keep the order they were given in
    runs = [RunSpec(s, a, seed, a) for s in settings for a in arms for seed in seeds]
    if ablation:
        dense = get_arm(ablation_arm).dense
        for seed in seeds:
            runs += [RunSpec(ablation_setting, arm, seed, arm) for arm in (dense, ablation_arm)]
            runs += [
                RunSpec(ablation_setting, ablation_arm, seed, f"{ablation_arm}-{'+'.join(p)}", p)
                for p in ablation_variants(ablation_arm, full=ablation == "full")
            ]
    return list(dict.fromkeys(runs))


@dataclass
class Comparison:
    """A resolved comparison: the runs and the one recipe they share."""

    runs: list[RunSpec]
    scale: str
    root: Path
    out: Path
    recipe: Recipe  # the scale's recipe with the budget and validation flags applied
    data: dict  # MultiModalDataModule arguments (the recipe's, the user's overrides, the cache)
    model_overrides: dict
    trainer: dict
    parallel: int  # runs at a time, each in its own process
    threads: int | None  # torch threads per run on the CPU (None: torch's default)

    def folder(self, spec: RunSpec) -> Path:
        return self.request(spec).folder

    def request(self, spec: RunSpec, own_device: bool = False) -> RunRequest:
        """One run of the matrix; `own_device`: the run's process sees one GPU of its own."""
        overrides = self.model_overrides | ({"decouple": list(spec.decouple)} if spec.decouple is not None else {})
        return RunRequest(
            setting=spec.setting,
            arm=spec.arm,
            scale=self.scale,
            seed=spec.seed,
            root=self.root,
            variant=spec.variant,
            max_steps=self.recipe.max_steps,
            val_every=self.recipe.val_every,
            data=self.data,
            module=self.recipe.module() | ({"model_overrides": overrides} if overrides else {}),
            trainer={k: v for k, v in self.trainer.items() if not (own_device and k == "devices")}
            | self.recipe.trainer(),
        )

    def prepare_data(self) -> None:
        """Prepare every setting's corpus once, before any run (runs side by side would race to build it). Own data
        are also assembled for every seed, so that a corpus too small for a batch fails here, naming its file, and
        not inside a run; the default corpus fills thousands of batches, and assembling it here would only hold its
        memory in this process while the runs train. Raises datamodules.errors.DATA_ERRORS."""
        for setting in dict.fromkeys(s.setting for s in self.runs):
            seeds = dict.fromkeys(s.seed for s in self.runs if s.setting == setting)
            for seed in seeds if self.data.get("own_data") else list(seeds)[:1]:
                dm = MultiModalDataModule(setting=setting, seed=seed, **self.data)
                dm.prepare_data()
                if self.data.get("own_data"):
                    dm.setup("fit")

    def other_recipes(self) -> dict[str, int]:
        """Recipes other than this one with run folders in this comparison's settings: {name: finished runs}."""
        own = {self.folder(spec).parents[1] for spec in self.runs}
        found: dict[str, int] = {}
        for setting in dict.fromkeys(spec.setting for spec in self.runs):
            for recipe in sorted((self.root / setting / self.scale).glob("*/")):
                if recipe in own or not recipe.is_dir():
                    continue
                finished = [p for p in recipe.glob("*/seed*/summary.json") if _finished(p.parent)]
                found[recipe.name] = found.get(recipe.name, 0) + len(finished)
        return found

    def data_notes(self) -> dict[str, list[str]]:
        """Per setting, what assembling its data left out, as its first seed's runs recorded it (every run records
        its own; other seeds differ by a few tokens)."""
        notes: dict[str, dict[str, None]] = {}
        for spec in (s for s in self.runs if s.seed == self.runs[0].seed):
            summary = read_summary(self.folder(spec))
            for note in summary.data_notes if summary else ():
                notes.setdefault(spec.setting, {})[note] = None
        return {setting: list(found) for setting, found in notes.items()}

    def status(self, spec: RunSpec) -> str | None:
        """The run's status; "damaged" for a finished run whose files disagree with its summary (`damage`)."""
        summary = read_summary(self.folder(spec))
        if summary is None:
            return None
        return "damaged" if file_disagreements(self.folder(spec), summary) else summary.status

    def damaged(self) -> dict[Path, list[str]]:
        """The finished runs whose files disagree with their summaries, with how."""
        found = {}
        for spec in self.runs:
            summary = read_summary(self.folder(spec))
            if summary is not None and (problems := file_disagreements(self.folder(spec), summary)):
                found[self.folder(spec)] = problems
        return found

    def steps_done(self, spec: RunSpec) -> int:
        summary = read_summary(self.folder(spec))
        return summary.steps if summary else 0

    @property
    def meta_recipe(self) -> dict:
        """What makes two comparisons' results comparable; a results folder holds one recipe."""
        data = {k: v for k, v in self.data.items() if k != "cache_dir"}
        return as_stored(
            {"scale": self.scale, **self.recipe.as_dict(), "data": data, "model_overrides": self.model_overrides}
        )

    def problems(self) -> list[str]:
        """Existing results this comparison would mix with: a results folder or run folders of another recipe, or
        run records that cannot be read."""
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
                for k, v in self.meta_recipe.items()
                if stored and stored.get(k) != v
            ]
        for spec in self.runs:
            folder = self.folder(spec)
            try:
                read_summary(folder)
                conflicts = self.request(spec).conflicts()
            except RunRecordError as exc:
                found.append(str(exc))
                continue
            found += [f"{folder}: {c}" for c in conflicts]
        return found


def _finished(folder: Path) -> bool:
    try:
        summary = read_summary(folder)
    except RunRecordError:
        return False
    return summary is not None and summary.finished


def parse_list(text: str, valid, what: str, all_means=None) -> list[str]:
    """'a,b' -> ['a', 'b'], checked against `valid`; 'all' -> all_means."""
    if all_means is not None and text.strip() == "all":
        return list(all_means)
    items = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in items if t not in valid]
    if unknown or not items:
        raise ValueError(f"unknown {what} {unknown or text!r}; valid choices are {list(valid)}")
    return list(dict.fromkeys(items))


def parse_seeds(text: str) -> list[int]:
    """'3' -> [0, 1, 2] (a count); '0,4' -> [0, 4] (explicit seeds, each >= 0)."""
    try:
        values = [int(t) for t in text.split(",")]
    except ValueError:
        raise ValueError(f"--seeds takes a count (3) or a comma list of seeds (0,4); got {text!r}") from None
    if "," not in text:
        if values[0] < 1:
            raise ValueError(f"--seeds count must be >= 1; got {text!r}")
        return list(range(values[0]))
    if min(values) < 0:
        raise ValueError(f"--seeds: seeds must be >= 0; got {text!r}")
    return list(dict.fromkeys(values))


def plan_comparison(args: argparse.Namespace) -> Comparison:
    """compare.py's arguments -> Comparison; a ValueError names any bad value and the valid choices."""
    settings = parse_list(args.settings, SETTINGS, "setting", all_means=SETTINGS)
    arms = parse_list(args.arms, ARMS, "arm")
    if args.scale not in SCALES:
        raise ValueError(f"unknown scale {args.scale!r}; valid choices are {list(SCALES)}")
    get_setting(args.ablation_setting)  # checked even without --ablation: a typo never passes silently
    ablation_variants(args.ablation_arm)
    data_args = typing.get_type_hints(MultiModalDataModule.__init__)
    data_args = {k: v for k, v in data_args.items() if k not in ("return", "setting", "seed")}
    model_args = {k: v for k, v in typing.get_type_hints(ModelConfig).items() if k != "arch"}
    data_overrides = parse_overrides(args.data, "--data", valid=data_args)
    model_overrides = parse_overrides(args.model, "--model", valid=model_args)
    recipe = RECIPES[args.scale]
    if args.val_every is not None:
        if args.val_every < 1:
            raise ValueError(f"--val-every must be >= 1; got {args.val_every}")
        recipe = replace(recipe, val_every=args.val_every)
    if args.precision is not None:
        recipe = replace(recipe, precision=args.precision)
    if args.lr is not None:
        if not (math.isfinite(args.lr) and 0 < args.lr < 1):
            raise ValueError(f"--lr must be a peak learning rate between 0 and 1; got {args.lr:g}")
        recipe = replace(recipe, lr=args.lr, family_lr=())
    data = recipe.data() | data_overrides | {"cache_dir": args.data_cache}
    # batch_size is per device: a step of a run on N devices x K nodes trains N x K batches.
    devices = _devices(args.devices)
    replicas = (devices if isinstance(devices, int) else 1) * (args.num_nodes or 1)
    tokens_per_step = data["seq_len"] * data["batch_size"] * replicas
    max_steps = step_budget(args.max_steps, args.tokens, tokens_per_step, recipe.max_steps)
    if recipe.val_every > max_steps:
        raise ValueError(
            f"--val-every {recipe.val_every} is more than the step budget ({max_steps} steps): the runs would never "
            f"validate; choose --val-every <= {max_steps}"
        )
    seeds = parse_seeds(str(recipe.seeds) if args.seeds is None else args.seeds)
    parallel, threads = schedule(args.parallel, args.accelerator, devices, args.strategy)
    trainer = {
        k: v
        for k, v in (
            ("accelerator", args.accelerator),
            ("devices", devices),
            ("num_nodes", args.num_nodes),
            ("strategy", args.strategy),
        )
        if v is not None
    }
    check_trainer(trainer | recipe.trainer())
    for setting in settings:  # the classes' own checks, on the values every run will get
        try:
            MultiModalDataModule(setting=setting, **data)
        except ValueError as exc:
            raise ValueError(f"--data: {exc}") from None
    for arm in dict.fromkeys([*arms, args.ablation_arm] if args.ablation else arms):
        try:
            ModelConfig.from_scale(args.scale, arch=arm, **model_overrides)
        except ValueError as exc:
            raise ValueError(f"--model: {exc} (arm {arm})") from None
    for flag, folder in (("--root", args.root), ("--out", args.out), ("--data-cache", args.data_cache)):
        if folder is not None:
            check_writable_folder(flag, Path(folder))
    recipe = replace(recipe, max_steps=max_steps)
    name = recipe_name(args.scale, recipe, data, model_overrides)
    default_out = f"results/{args.scale}" if name == recipe_name(args.scale, RECIPES[args.scale]) else f"results/{name}"
    return Comparison(
        runs=plan(settings, arms, seeds, args.ablation, args.ablation_setting, args.ablation_arm),
        scale=args.scale,
        root=Path(args.root),
        out=Path(args.out or default_out),
        recipe=recipe,
        data=data,
        model_overrides=model_overrides,
        trainer=trainer,
        parallel=parallel,
        threads=threads,
    )


def recipe_name(scale: str, recipe: Recipe, data: dict | None = None, model_overrides: dict | None = None) -> str:
    """The name of a comparison's recipe: its run folders' (experiments.run.recipe_id) with the scale in front."""
    module = recipe.module() | ({"model_overrides": model_overrides} if model_overrides else {})
    rid = recipe_id(scale, recipe.max_steps, recipe.val_every, recipe.data() | (data or {}), module, recipe.precision)
    return f"{scale}-{rid}"


MAX_STEPS = 10**9  # no recipe comes near it (the papers' is 250k): a budget above it is a typo


def step_budget(max_steps: int | None, tokens: float | None, tokens_per_step: int, default: int) -> int:
    """--max-steps / --tokens -> optimiser steps per run (the recipe's when neither is given); ValueError naming the
    flag, the value and what is valid otherwise."""
    if max_steps is not None:
        if not 1 <= max_steps <= MAX_STEPS:
            raise ValueError(f"--max-steps must be >= 1 and at most {MAX_STEPS:.0e}; got {max_steps}")
        return max_steps
    if tokens is None:
        return default
    if not math.isfinite(tokens) or tokens <= 0:
        raise ValueError(f"--tokens must be a finite, positive number of tokens per run; got {tokens:g}")
    steps = math.ceil(tokens / tokens_per_step)
    if steps > MAX_STEPS:
        raise ValueError(
            f"--tokens {tokens:g} is {steps:.2e} steps of {tokens_per_step} tokens, more than {MAX_STEPS:.0e} steps"
        )
    return steps


def cpu_cores() -> int:
    """The cores this process may run on (its affinity mask, which containers and `taskset` narrow)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def schedule(parallel: str, accelerator: str, devices, strategy: str | None) -> tuple[int, int | None]:
    """--parallel -> (runs at a time, torch threads per run on the CPU).

    "auto" on the CPU (one device, no strategy) is one single-threaded run per core: a tiny run gains little from a
    second thread, so runs side by side finish the matrix sooner (benchmarks/README.md measures it). The
    training is bit-identical on any number of threads (tests/test_compare.py), so the schedule never changes a
    result. "auto" anywhere else is one run at a time; K > 1 on GPUs gives each run its own GPU.
    """
    on_cpu = accelerator == "cpu" and devices in (None, 1) and strategy is None
    if parallel == "auto":
        count = cpu_cores() if on_cpu else 1
    elif parallel.isdigit() and int(parallel) >= 1:
        count = int(parallel)
    else:
        raise ValueError(f"--parallel must be 'auto' or a count >= 1; got {parallel!r}")
    return count, max(1, cpu_cores() // count) if on_cpu else None


def _devices(text: str | None):
    return int(text) if text is not None and text.isdigit() else text
