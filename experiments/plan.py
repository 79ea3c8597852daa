"""A comparison's run matrix: which runs (setting x seed x arm, plus ablation variants), with which one recipe, where.

compare.py's command line (experiments/compare_cli.py) makes a `Comparison`; `Comparison.problems` lists the existing
folders it would mix with, and `Comparison.prepare_data` prepares (and checks) the data every run will read. Both
run before anything of the comparison is written. Its run-store queries (`status`, `damaged`, ...) read the folders.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path

from analysis.run_record import ComparisonMeta, RunRecordError, file_disagreements, read_summary
from datamodules.multimodal import MultiModalDataModule
from experiments.recipes import Recipe, RunRequest, as_stored, recipe_id
from experiments.schedule import slowest_first
from models import ARMS, get_arm


@dataclass(frozen=True)
class RunSpec:
    """One run of the matrix. `variant` is its folder name: the arm, or an ablation variant ("mom-in_proj")."""

    setting: str
    arm: str
    seed: int
    variant: str
    decouple: tuple[str, ...] | None = None  # the ablation variant's decoupled parts; None = the arm's default
    steps: int | None = None  # a shorter budget, trained with its own schedule (--budgets); None = the recipe's

    @property
    def label(self) -> str:
        return f"{self.setting}/{self.variant}/seed{self.seed}" + (f"@{self.steps}steps" if self.steps else "")


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
    settings,
    arms,
    seeds,
    ablation: str | None,
    ablation_setting: str,
    ablation_arm: str = ComparisonMeta.ablation_arm,
    budgets: tuple[int, ...] = (),
) -> list[RunSpec]:
    """Settings outermost (a stopped comparison has whole settings done), then arms, the longest runs first
    (`schedule.slowest_first`), then seeds; ablation last, then the shorter `budgets` (in steps) of every arm with
    a dense partner (sparse arms and twins) whose partner is among `arms`: the budget-matched FLOPs-to-match's runs
    (analysis/budgets.py)."""
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
    paired = [a for a in arms if ARMS[a].dense in arms]
    runs += [RunSpec(s, a, seed, a, steps=b) for b in budgets for s in settings for a in paired for seed in seeds]
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

    def recipe_of(self, spec: RunSpec) -> Recipe:
        """The run's recipe: the comparison's, at the run's own budget where it has one."""
        return self.recipe if spec.steps is None else self.recipe.at_budget(spec.steps)

    @property
    def budgets(self) -> list[int]:
        """The shorter budgets (steps) the comparison trains beside its own, shortest first."""
        return sorted({spec.steps for spec in self.runs if spec.steps is not None})

    def request(self, spec: RunSpec, own_device: bool = False) -> RunRequest:
        """One run of the matrix; `own_device`: the run's process sees one GPU of its own."""
        overrides = self.model_overrides | ({"decouple": list(spec.decouple)} if spec.decouple is not None else {})
        recipe = self.recipe_of(spec)
        return RunRequest(
            setting=spec.setting,
            arm=spec.arm,
            scale=self.scale,
            seed=spec.seed,
            root=self.root,
            variant=spec.variant,
            max_steps=recipe.max_steps,
            val_every=recipe.val_every,
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
        """The run's status; "damaged" for a finished run whose files disagree with its summary (`damaged`)."""
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

    def meta_recipe(self, steps: int | None = None) -> dict:
        """What makes two comparisons' results comparable (a results folder holds one recipe); `steps`: of the runs
        at that shorter budget."""
        data = {k: v for k, v in self.data.items() if k != "cache_dir"}
        recipe = self.recipe if steps is None else self.recipe.at_budget(steps)
        overrides = self.model_overrides
        return as_stored({"scale": self.scale, **recipe.as_dict(), "data": data, "model_overrides": overrides})

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
                for k, v in self.meta_recipe().items()
                if stored and stored.get(k) != v
            ]
        for spec in self.runs:
            folder = self.folder(spec)
            try:
                read_summary(folder)
                found += [f"{folder}: {c}" for c in self.request(spec).conflicts()]
            except RunRecordError as exc:
                found.append(str(exc))
        return found


def _finished(folder: Path) -> bool:
    try:
        summary = read_summary(folder)
    except RunRecordError:
        return False
    return summary is not None and summary.finished


def recipe_name(scale: str, recipe: Recipe, data: dict | None = None, model_overrides: dict | None = None) -> str:
    """The name of a comparison's recipe: its run folders' (experiments.run.recipe_id) with the scale in front."""
    module = recipe.module() | ({"model_overrides": model_overrides} if model_overrides else {})
    rid = recipe_id(scale, recipe.max_steps, recipe.val_every, recipe.data() | (data or {}), module, recipe.precision)
    return f"{scale}-{rid}"
