"""The comparison report: a results folder written by experiments/compare.py -> report.md, CSVs and PNG plots.

    python -m analysis.report results/tiny

Input: `<out>/comparison.json` ({"meta": {...}, "runs": [{setting, arm, variant, seed, folder}, ...]}) and the run
folders it names (summary.json, config.json, metrics.csv; experiments/run.py). Output, written into `<out>`
atomically (temp file, then rename):

    report.md                     tables laid out like the papers', verdicts, plots, run statuses, setup
    flops_to_match.csv            one row per setting, loss kind, validation set, modality, sparse variant, seed
    flops_to_match_summary.csv    the same over seeds: mean and 95% interval (empty where a seed did not reach)
    plots/*.png                   see analysis/plots.py

Every number comes from `analysis.matching` (one smoothing rule, one interpolation). Step semantics of metrics.csv:
a row with `step = s` (training or validation) was logged after s + 1 optimizer steps, so its cumulative FLOPs are
(s + 1) × train_flops_per_step and its wall-clock is `time/wall_s` of the training row of the same step. Training
loss is put on the evaluation grid first: the per-step losses of the `val_every` steps ending at each evaluation
step are averaged, then the same rule as for validation loss applies.

Runs that are not finished (running, failed, crashed, interrupted, missing, unreadable) are listed with their status
and left out of every number; the report never fails because of one run.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import NamedTuple

import numpy as np

from analysis.matching import DEFAULT_WINDOW, at_flops, flops_to_match, loss_gap, mean_interval, smooth
from analysis.plots import Plot, arm_label, arm_rank, loss_label, loss_unit, modality_rank, write_plots
from models.config import DENSE_OF, PARTS

ABLATION_ARM = "mom"  # the ablation decouples subsets of MoM's four projections (DESIGN.md §4)


class PaperNumber(NamedTuple):
    """A published FLOPs-to-match number, as printed, with the model scale and a key into PAPER_SOURCES."""

    value: str
    scale: str
    source: str


# The papers' headline FLOPs-to-match, keyed by (sparse arm, setting, modality). Facts and their reliability:
# /work/shared/PAPERS.md §1.1 and §1.7 (MoM), §2.5 and §2.6 (MoT), §4 (open questions).
PAPER_NUMBERS: dict[tuple[str, str, str], PaperNumber] = {
    ("mom", "transfusion", "image"): PaperNumber("34.76%", "1.4B", "M1"),
    ("mom", "chameleon", "image"): PaperNumber("42.50%", "1.4B", "M1"),
    ("mom", "chameleon", "text"): PaperNumber("65.40%", "1.4B", "M1"),
    ("mom", "three_modality", "speech"): PaperNumber("24.80%", "1.4B", "M1"),
    ("mot", "chameleon", "text"): PaperNumber("55.8%", "7B", "T1"),
    ("mot", "chameleon", "image"): PaperNumber("34.8%", "7B", "T2"),
    ("mot", "three_modality", "speech"): PaperNumber("37.2%", "7B", "T3"),
    ("mot", "transfusion", "image"): PaperNumber("~33%", "7B", "T4"),
}
PAPER_SOURCES = {
    "M1": "Mixture-of-Mamba (Liang et al., arXiv 2501.16295), abstract: training FLOPs for MoM to match dense Mamba "
    "at 1.4B; whether on training or validation loss is not stated (PAPERS.md §1.1, §1.6).",
    "T1": "Mixture-of-Transformers (Liang et al., arXiv 2411.04996), abstract; 7B Chameleon setting, step matching on "
    "the dense final training loss, confirmed on validation at 55.8% of the steps (PAPERS.md §2.5).",
    "T2": "MoT Fig. 5d / 6r, 7B Chameleon setting, image training loss; via third-party summaries (PAPERS.md §2.6).",
    "T3": "MoT Fig. 8f, the worse of two speech validation sets (PPL30K; LL60K gives 31.3%); 7B per third-party "
    "summaries, 443M per the official README (PAPERS.md §2.6, §4).",
    "T4": "MoT abstract: a 7B MoT matches the dense image quality with one third of the FLOPs (Transfusion setting); "
    "Fig. 10c / 10e give 30.9% (training) and 37.4% (validation) per third-party summaries (PAPERS.md §2.6).",
}


class ReportError(ValueError):
    """A results folder the report cannot read at all (a missing or corrupt comparison.json)."""


# ----------------------------------------------------------------------------------------------------------------------
# Results: comparison.json and the run folders it names
# ----------------------------------------------------------------------------------------------------------------------


class LossKey(NamedTuple):
    """Which loss a curve holds: kind 'val' or 'train', the validation set ('' for training), the modality."""

    kind: str
    valset: str
    modality: str

    @property
    def order(self) -> tuple:
        """Sort key: validation before training, the primary set 'val' first, then text, image, speech."""
        return (self.kind != "val", self.valset != "val", self.valset, modality_rank(self.modality))


@dataclass(frozen=True)
class Curve:
    """One loss on the evaluation grid of a run. Arrays of one length, in training order."""

    steps: np.ndarray  # optimizer steps done (metrics.csv step + 1)
    flops: np.ndarray  # cumulative training FLOPs = steps × train_flops_per_step
    wall: np.ndarray  # seconds since training started (time/wall_s); NaN where no training row was logged
    loss: np.ndarray


@dataclass
class Run:
    """One run as comparison.json names it, with what its folder holds. Curves are loaded for finished runs only."""

    setting: str
    arm: str
    variant: str
    seed: int
    folder: Path
    status: str = "missing"
    reason: str | None = None
    summary: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    curves: dict[LossKey, Curve] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.status == "finished"

    @property
    def flops_per_step(self) -> float:
        return float(self.summary["train_flops_per_step"])


@dataclass
class Results:
    """A results folder: comparison.json's meta and every run it lists, finished or not."""

    out: Path
    meta: dict
    runs: list[Run]

    @property
    def settings(self) -> list[str]:
        """The settings in meta's order, then any other setting a run names."""
        listed = list(self.meta.get("settings") or [])
        return listed + sorted({r.setting for r in self.runs} - set(listed))

    def main_runs(self, setting: str) -> list[Run]:
        """Finished runs of `setting` whose variant is the arm itself (ablation variants left out)."""
        return [r for r in self.runs if r.finished and r.setting == setting and r.variant == r.arm]

    def ablation_variants(self) -> list[tuple[str, str]]:
        """(variant, label) of the ablation setting's MoM runs, fewest decoupled parts first, 'all four' last."""
        setting = self.meta.get("ablation_setting")
        parts = {r.variant: decoupled(r) for r in self.runs if r.setting == setting and r.arm == ABLATION_ARM}
        every = PARTS["mamba"]
        ranks = {v: [every.index(p) if p in every else len(every) for p in chosen] for v, chosen in parts.items()}
        ordered = sorted(parts, key=lambda v: (len(parts[v]), ranks[v]))
        return [(v, "all four" if set(parts[v]) == set(every) else "+".join(parts[v])) for v in ordered]


def decoupled(run: Run) -> tuple[str, ...]:
    """The Mamba projections a MoM run decouples: config.json's model.decouple, where null means all four."""
    if "model" in run.config:
        chosen = run.config["model"].get("decouple")
    else:  # no config.json (a run that never started): the variant's name says it, e.g. "mom-in_proj+x_proj"
        _, _, rest = run.variant.partition("-")
        chosen = rest.split("+") if rest else None
    return tuple(PARTS["mamba"]) if chosen is None else tuple(chosen)


def load_results(out: str | Path) -> Results:
    """Read `<out>/comparison.json` and every run folder it lists.

    Args:
        out: the results folder. Run folders in comparison.json are absolute, relative to the current directory,
            or (failing that) relative to `out`.

    Raises:
        ReportError: comparison.json is missing or is not the expected JSON; the message names the file.
    """
    out = Path(out)
    path = out / "comparison.json"
    try:
        comparison = json.loads(path.read_text())
    except FileNotFoundError:
        raise ReportError(f"{path}: not found (run experiments/compare.py, or pass the folder it wrote)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReportError(f"{path}: not readable as JSON ({exc})") from exc
    if not isinstance(comparison, dict) or not isinstance(comparison.get("runs"), list):
        raise ReportError(f"{path}: expected an object with a 'runs' list")
    meta = comparison.get("meta") or {}
    runs = []
    for i, entry in enumerate(comparison["runs"]):
        try:
            runs.append(load_run(entry, out, (meta.get("recipe") or {}).get("val_every")))
        except (KeyError, TypeError, ValueError) as exc:
            raise ReportError(f"{path}: runs[{i}] lacks setting/arm/seed/folder or has a bad value ({exc!r})") from exc
    return Results(out=out, meta=meta, runs=runs)


def load_run(entry: dict, out: Path, val_every: int | None = None) -> Run:
    """One run of comparison.json; a folder that is missing or unreadable gives a run with that status, not an error.

    Args:
        entry: {setting, arm, variant, seed, folder}; variant defaults to arm.
        out: the results folder, the second place a relative run folder is looked for.
        val_every: the validation interval if config.json does not give it (the training-loss block length).
    """
    folder = Path(entry["folder"])
    if not folder.is_absolute() and not folder.exists() and (out / folder).exists():
        folder = out / folder
    run = Run(entry["setting"], entry["arm"], entry.get("variant") or entry["arm"], int(entry["seed"]), folder)
    try:
        run.summary = json.loads((folder / "summary.json").read_text())
        config_path = folder / "config.json"
        run.config = json.loads(config_path.read_text()) if config_path.exists() else {}
    except FileNotFoundError:
        run.reason = f"no summary.json in {folder}"
        return run
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        run.status, run.reason = "unreadable", f"{folder}: {exc}"
        return run
    run.status, run.reason = str(run.summary.get("status", "unknown")), run.summary.get("reason")
    if not run.finished:
        return run
    try:
        run.curves = read_metrics(folder / "metrics.csv", run.flops_per_step, run.config.get("val_every", val_every))
    except (OSError, KeyError, TypeError, ValueError) as exc:
        run.status, run.reason = "unreadable", f"{folder / 'metrics.csv'}: {exc!r}"
        return run
    if not any(k.kind == "val" for k in run.curves):
        run.status, run.reason = "unreadable", f"{folder / 'metrics.csv'}: no validation rows"
    return run


def read_metrics(path: Path, flops_per_step: float, val_every: int | None) -> dict[LossKey, Curve]:
    """Validation and training loss curves of one metrics.csv (Lightning's CSVLogger), on the evaluation grid.

    Columns `<valset>/loss_<modality>` are validation losses (rows that hold only them are validation rows);
    `train/loss_<modality>` are per-step training losses, averaged over the `val_every` steps that end at each
    evaluation step. A step logged twice (a resumed run) keeps its last row.
    """
    if not val_every or val_every < 1:
        raise ValueError(f"val_every must be a positive int, got {val_every!r}")
    if not flops_per_step > 0:
        raise ValueError(f"train_flops_per_step must be positive, got {flops_per_step!r}")
    wall: dict[int, float] = {}
    train: dict[str, dict[int, float]] = defaultdict(dict)
    val: dict[tuple[str, str], dict[int, float]] = defaultdict(dict)
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if not row.get("step"):
                continue
            step = int(float(row["step"]))
            for column, text in row.items():
                if column is None or not text:  # None: a row longer than the header
                    continue
                name, sep, modality = column.partition("/loss_")
                if column == "time/wall_s":
                    wall[step] = float(text)
                elif sep and name == "train":
                    train[modality][step] = float(text)
                elif sep:
                    val[(name, modality)][step] = float(text)

    def curve(points: dict[int, float]) -> Curve:
        steps = np.array(sorted(s for s, v in points.items() if math.isfinite(v)), dtype=np.int64)
        return Curve(
            steps=steps + 1,
            flops=(steps + 1) * flops_per_step,
            wall=np.array([wall.get(int(s), math.nan) for s in steps], dtype=np.float64),
            loss=np.array([points[int(s)] for s in steps], dtype=np.float64),
        )

    curves = {LossKey("val", valset, modality): curve(points) for (valset, modality), points in val.items()}
    grid = sorted({s for points in val.values() for s in points})
    for modality, points in train.items():
        blocks = {}
        for s in grid:
            block = [points[t] for t in range(s - val_every + 1, s + 1) if t in points and math.isfinite(points[t])]
            if block:
                blocks[s] = float(np.mean(block))
        curves[LossKey("train", "", modality)] = curve(blocks)
    return {k: c for k, c in curves.items() if len(c.loss)}


# ----------------------------------------------------------------------------------------------------------------------
# Numbers: one sparse run against its dense run, then over seeds
# ----------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Match:
    """One sparse run against the dense run of its setting and seed, on one loss (see the module docstring)."""

    setting: str
    key: LossKey
    variant: str
    arm: str
    dense: str
    seed: int
    fraction: float | None  # FLOPs-to-match as a fraction of the dense total; None = not reached
    match_flops: float | None  # cumulative FLOPs at the matching point
    match_step: float | None  # the same in optimizer steps of the sparse run
    dense_flops: float  # the dense run's total FLOPs (its last evaluation)
    sparse_final: float  # smoothed final losses
    dense_final: float  # = the target
    loss_gap: float | None  # sparse smoothed loss at dense_flops minus the target; None if the sparse run is shorter
    wall_fraction: float | None  # sparse wall-clock at the matching point / dense wall-clock at its last evaluation

    @property
    def reached(self) -> bool:
        return self.fraction is not None


def match(sparse: Run, dense: Run, key: LossKey, window: int = DEFAULT_WINDOW) -> Match:
    """FLOPs-to-match, final losses, loss gap and wall-clock-to-match of `sparse` against `dense` on `key`."""
    s, d = sparse.curves[key], dense.curves[key]
    fraction = flops_to_match(d.flops, d.loss, s.flops, s.loss, window)
    match_flops = None if fraction is None else fraction * float(d.flops[-1])
    wall_fraction = None
    timed = np.isfinite(s.wall)
    if match_flops is not None and math.isfinite(d.wall[-1]) and d.wall[-1] > 0:
        wall = at_flops(s.flops[timed], s.wall[timed], match_flops)
        wall_fraction = None if wall is None else wall / float(d.wall[-1])
    return Match(
        setting=sparse.setting,
        key=key,
        variant=sparse.variant,
        arm=sparse.arm,
        dense=dense.arm,
        seed=sparse.seed,
        fraction=fraction,
        match_flops=match_flops,
        match_step=None if match_flops is None else match_flops / sparse.flops_per_step,
        dense_flops=float(d.flops[-1]),
        sparse_final=float(smooth(s.loss, window)[-1]),
        dense_final=float(smooth(d.loss, window)[-1]),
        loss_gap=loss_gap(d.flops, d.loss, s.flops, s.loss, window),
        wall_fraction=wall_fraction,
    )


def compare(results: Results, window: int = DEFAULT_WINDOW) -> list[Match]:
    """Every finished sparse run (main arms, control arms, ablation variants) against the finished dense run of its
    setting and seed (`models.config.DENSE_OF`), on every loss both runs have; sorted for tables."""
    dense_runs = {(r.setting, r.arm, r.seed): r for r in results.runs if r.finished and r.variant == r.arm}
    matches = []
    for run in results.runs:
        dense = dense_runs.get((run.setting, DENSE_OF.get(run.arm), run.seed))
        if run.finished and dense is not None:
            matches += [match(run, dense, key, window) for key in run.curves.keys() & dense.curves.keys()]
    settings = results.settings
    return sorted(matches, key=lambda m: (settings.index(m.setting), m.key.order, arm_rank(m.arm), m.variant, m.seed))


@dataclass(frozen=True)
class Aggregate:
    """The matches of one setting, loss and sparse variant over its seeds."""

    setting: str
    key: LossKey
    variant: str
    arm: str
    dense: str
    matches: tuple[Match, ...]

    @property
    def n(self) -> int:
        return len(self.matches)

    @property
    def n_reached(self) -> int:
        return sum(m.reached for m in self.matches)

    @property
    def fraction(self) -> tuple[float, float, float] | None:
        """(mean, low, high) over seeds, or None unless every seed reached (never an average of some)."""
        return self.interval("fraction")

    @property
    def not_reached_text(self) -> str:
        return "not reached" if self.n == 1 else f"{self.n - self.n_reached}/{self.n} not reached"

    def interval(self, name: str) -> tuple[float, float, float] | None:
        """Mean and 95% interval of a Match field over seeds; None if any seed lacks it."""
        values = [getattr(m, name) for m in self.matches]
        return None if any(v is None for v in values) else mean_interval(values)


def aggregate(matches: Iterable[Match]) -> list[Aggregate]:
    """Group matches by setting, loss and variant (keeping their order); one Aggregate per group."""
    groups: dict[tuple, list[Match]] = defaultdict(list)
    for m in matches:
        groups[(m.setting, m.key, m.variant)].append(m)
    return [Aggregate(g[0].setting, g[0].key, g[0].variant, g[0].arm, g[0].dense, tuple(g)) for g in groups.values()]


def final_losses(results: Results, window: int = DEFAULT_WINDOW) -> dict[tuple[str, LossKey, str], list[float]]:
    """Smoothed final loss of every finished run, keyed by (setting, loss, variant), one value per seed."""
    finals: dict[tuple[str, LossKey, str], list[float]] = defaultdict(list)
    for run in results.runs:
        if run.finished:
            for key, curve in run.curves.items():
                finals[(run.setting, key, run.variant)].append(float(smooth(curve.loss, window)[-1]))
    return finals


# ----------------------------------------------------------------------------------------------------------------------
# Tables (Markdown); the notebooks call these too
# ----------------------------------------------------------------------------------------------------------------------


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _with_interval(interval: tuple[float, float, float] | None, n: int, fmt: Callable[[float], str]) -> str:
    if interval is None:
        return "n/a"
    mean, low, high = interval
    return fmt(mean) if n == 1 else f"{fmt(mean)} [{fmt(low)}, {fmt(high)}]"


def _percent(v: float) -> str:
    return f"{100 * v:.1f}%"


def fraction_cell(agg: Aggregate | None) -> str:
    """'78.1%', '78.1% [70.2%, 86.0%]' over seeds, 'not reached' or 'k/n not reached'; '–' when not run."""
    if agg is None:
        return "–"
    return agg.not_reached_text if agg.fraction is None else _with_interval(agg.fraction, agg.n, _percent)


def _pair_label(variant: str) -> str:
    return f"{arm_label(variant)} vs {arm_label(DENSE_OF[variant])}"


def _main(aggregates: Iterable[Aggregate], kind: str) -> dict[tuple[str, LossKey, str], Aggregate]:
    """Aggregates of one loss kind for the main and control arms (ablation variants left out), keyed for lookup."""
    return {(a.setting, a.key, a.variant): a for a in aggregates if a.key.kind == kind and a.variant == a.arm}


def _rows(results: Results, keys: Iterable[tuple[str, LossKey]]) -> list[tuple[str, LossKey]]:
    settings = results.settings
    return sorted(set(keys), key=lambda sk: (settings.index(sk[0]), sk[1].order))


def match_table(results: Results, aggregates: list[Aggregate], kind: str = "val") -> str:
    """The headline table: FLOPs-to-match (% of the dense arm's training FLOPs) per setting and loss, one column per
    sparse arm, then the papers' numbers for the same setting and modality with their source keys."""
    found = _main(aggregates, kind)
    if not found:
        return f"No finished sparse/dense pair has a {kind} loss."
    variants = sorted({v for _, _, v in found}, key=arm_rank)
    paper_arms = [v for v in variants if any(arm == v for arm, _, _ in PAPER_NUMBERS)]
    header = ["setting", "loss", *map(_pair_label, variants), *[f"{arm_label(a)} (paper)" for a in paper_arms]]
    rows = []
    for setting, key in _rows(results, ((s, k) for s, k, _ in found)):
        primary = key.valset in ("val", "")
        papers = [PAPER_NUMBERS.get((a, setting, key.modality)) if primary else None for a in paper_arms]
        rows.append(
            [
                setting,
                loss_label(key),
                *[fraction_cell(found.get((setting, key, v))) for v in variants],
                *["" if p is None else f"{p.value} at {p.scale} [{p.source}]" for p in papers],
            ]
        )
    return markdown_table(header, rows)


def paper_sources(results: Results) -> str:
    """The sources of the papers' numbers that the tables cite, one line each."""
    arms = {r.arm for r in results.runs}
    cited = {p.source for (arm, setting, _), p in PAPER_NUMBERS.items() if arm in arms and setting in results.settings}
    return "\n".join(f"- [{key}] {text}" for key, text in PAPER_SOURCES.items() if key in cited)


def final_loss_table(results: Results, window: int = DEFAULT_WINDOW) -> str:
    """Smoothed final validation loss of every main arm per setting and loss (mean [95% interval] over seeds)."""
    finals = {k: v for k, v in final_losses(results, window).items() if k[1].kind == "val"}
    main = {r.variant for r in results.runs if r.variant == r.arm}
    variants = sorted({v for _, _, v in finals if v in main}, key=arm_rank)
    if not variants:
        return "No finished run."
    rows = []
    for setting, key in _rows(results, ((s, k) for s, k, _ in finals)):
        cells = []
        for v in variants:
            values = finals.get((setting, key, v))
            cells.append("–" if not values else _with_interval(mean_interval(values), len(values), "{:.4f}".format))
        rows.append([setting, loss_label(key), loss_unit(setting, key.modality), *cells])
    return markdown_table(["setting", "loss", "unit", *map(arm_label, variants)], rows)


def field_table(results: Results, aggregates: list[Aggregate], name: str, fmt: Callable[[float], str]) -> str:
    """A table of one Match field ('loss_gap' or 'wall_fraction') on validation loss, one column per sparse arm."""
    found = _main(aggregates, "val")
    if not found:
        return "No finished sparse/dense pair."
    variants = sorted({v for _, _, v in found}, key=arm_rank)
    rows = []
    for setting, key in _rows(results, ((s, k) for s, k, _ in found)):
        cells = []
        for v in variants:
            agg = found.get((setting, key, v))
            if agg is None:
                cells.append("–")
            elif name == "wall_fraction" and agg.fraction is None:
                cells.append(agg.not_reached_text)
            else:
                cells.append(_with_interval(agg.interval(name), agg.n, fmt))
        unit = [loss_unit(setting, key.modality)] if name == "loss_gap" else []
        rows.append([setting, loss_label(key), *unit, *cells])
    header = ["setting", "loss", *(["unit"] if name == "loss_gap" else []), *map(_pair_label, variants)]
    return markdown_table(header, rows)


def ablation_table(results: Results, aggregates: list[Aggregate], window: int = DEFAULT_WINDOW) -> str:
    """Every MoM variant of the ablation setting against dense Mamba: FLOPs-to-match and final loss per modality."""
    setting = results.meta.get("ablation_setting")
    variants = results.ablation_variants()
    if not setting or not variants:
        return "No ablation in this comparison (meta.ablation_setting is not set)."
    found = {
        (a.variant, a.key.modality): a
        for a in aggregates
        if a.setting == setting and a.key.kind == "val" and a.key.valset == "val"
    }
    finals = final_losses(results, window)
    dense = DENSE_OF[ABLATION_ARM]
    modalities = sorted(
        {k.modality for (s, k, _) in finals if s == setting and k.kind == "val" and k.valset == "val"},
        key=modality_rank,
    )

    def final(variant: str, modality: str) -> str:
        values = finals.get((setting, LossKey("val", "val", modality), variant))
        return "–" if not values else _with_interval(mean_interval(values), len(values), "{:.4f}".format)

    statuses = defaultdict(list)
    for r in results.runs:
        if r.setting == setting:
            statuses[r.variant].append(r.status)
    rows = [
        [
            f"{label} (`{variant}`)",
            *[fraction_cell(found.get((variant, m))) for m in modalities],
            *[final(variant, m) for m in modalities],
            ", ".join(sorted(set(statuses[variant]))),
        ]
        for variant, label in variants
    ]
    rows.append(
        [f"none: dense {arm_label(dense)} (`{dense}`)", *["100% (baseline)"] * len(modalities)]
        + [final(dense, m) for m in modalities]
        + [", ".join(sorted(set(statuses[dense]))) or "not run"]
    )
    header = ["decoupled", *[f"FLOPs-to-match {m}" for m in modalities], *[f"final {m} loss" for m in modalities]]
    return markdown_table([*header, "status"], rows)


def _summary_number(summary: dict, name: str, fmt: str, scale: float = 1.0) -> str:
    value = summary.get(name)
    return format(value / scale, fmt) if isinstance(value, int | float) else "–"


def runs_table(results: Results) -> str:
    """Every run of comparison.json with its status, sizes, FLOPs per token (fvcore and analytic), backend, time."""
    rows = []
    for r in results.runs:
        s = r.summary
        number = partial(_summary_number, s)
        counted, analytic = s.get("flops_per_token"), s.get("flops_per_token_analytic")
        ratio = f"{analytic / counted:.4f}" if counted and analytic else "–"
        note = "" if r.finished else f"excluded: {r.reason or 'no reason recorded'}"
        rows.append(
            [
                r.setting,
                r.variant,
                str(r.seed),
                f"**{r.status}**" if not r.finished else r.status,
                str(s.get("steps", "–")),
                number("params_total", ".3f", 1e6),
                number("params_active", ".3f", 1e6),
                number("flops_per_token", ".4g"),
                ratio,
                str(s.get("backend", "–")),
                str(s.get("device", "–")),
                number("wall_clock_s", ".0f"),
                note,
            ]
        )
    header = ["setting", "variant", "seed", "status", "steps", "params total (M)", "params active (M)"]
    header += ["train FLOPs/token (fvcore)", "analytic / fvcore", "backend", "device", "wall-clock (s)", "note"]
    return markdown_table(header, rows)


def verdicts(results: Results, aggregates: list[Aggregate]) -> list[str]:
    """One line per setting from the primary validation numbers, e.g. '**chameleon**: MoM reached Mamba's final
    loss on text at 80.1% and on image at 45.1% of Mamba's FLOPs; it did not reach it on speech (+0.050 nats).'"""
    found = _main(aggregates, "val")
    lines = []
    for setting in results.settings:
        sentences = []
        for variant in sorted({v for s, _, v in found if s == setting}, key=arm_rank):
            aggs = [a for (s, k, v), a in found.items() if (s, k.valset, v) == (setting, "val", variant)]
            sentences.append(_verdict(setting, sorted(aggs, key=lambda a: a.key.order)))
        body = "; ".join(sentences) + "." if sentences else "no finished sparse/dense pair, so no verdict."
        lines.append(f"- **{setting}**: {body}")
    return lines


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def _verdict(setting: str, aggs: list[Aggregate]) -> str:
    """One sparse arm's clause of a verdict: where it reached its dense arm's final loss, where only in some seeds,
    where not (with the loss gap at equal FLOPs)."""
    sparse, dense = arm_label(aggs[0].arm), arm_label(aggs[0].dense)
    reached, partial, missed = [], [], []
    for a in aggs:
        if a.fraction is not None:
            reached.append(f"on {a.key.modality} at {_percent(a.fraction[0])}")
        elif a.n_reached:
            partial.append(f"on {a.key.modality} in only {a.n_reached}/{a.n} seeds")
        else:
            gap, unit = a.interval("loss_gap"), loss_unit(setting, a.key.modality)
            missed.append(f"on {a.key.modality}" + ("" if gap is None else f" ({gap[0]:+.3f} {unit} at equal FLOPs)"))
    seeds = f" (means over {aggs[0].n} seeds)" if aggs[0].n > 1 else ""
    clauses = [f"reached {dense}'s final loss {_and(reached)} of {dense}'s FLOPs{seeds}"] if reached else []
    clauses += [f"reached {dense}'s final loss {_and(partial)}"] if partial else []
    clauses += [f"did not reach {dense}'s final loss {_and(missed)}"] if missed else []
    return f"{sparse} " + ", but ".join(clauses)


# ----------------------------------------------------------------------------------------------------------------------
# Writing the folder
# ----------------------------------------------------------------------------------------------------------------------

MATCH_COLUMNS = [
    *("setting", "kind", "valset", "modality", "variant", "arm", "dense_arm", "seed", "reached", "fraction"),
    *("match_flops", "match_step", "dense_total_flops", "sparse_final_loss", "dense_final_loss", "loss_gap"),
    "wall_clock_fraction",
]
# Match fields summarised over seeds in flops_to_match_summary.csv, with their column names.
SUMMARY_FIELDS = {
    "fraction": "fraction",
    "sparse_final": "sparse_final_loss",
    "dense_final": "dense_final_loss",
    "loss_gap": "loss_gap",
    "wall_fraction": "wall_clock_fraction",
}
SUMMARY_COLUMNS = [
    *MATCH_COLUMNS[:7],
    "seeds",
    "n_reached",
    *[f"{name}_{stat}" for name in SUMMARY_FIELDS.values() for stat in ("mean", "low", "high")],
]


def _csv_value(v: object) -> object:
    return "" if v is None else str(v).lower() if isinstance(v, bool) else v


def _identity(m: Match | Aggregate) -> list:
    return [m.setting, m.key.kind, m.key.valset, m.key.modality, m.variant, m.arm, m.dense]


def match_rows(matches: list[Match]) -> list[list]:
    """flops_to_match.csv rows; empty cells for 'not reached' and for numbers that do not exist."""
    return [
        [_csv_value(v) for v in _identity(m)]
        + [_csv_value(v) for v in (m.seed, m.reached, m.fraction, m.match_flops, m.match_step, m.dense_flops)]
        + [_csv_value(v) for v in (m.sparse_final, m.dense_final, m.loss_gap, m.wall_fraction)]
        for m in matches
    ]


def summary_rows(aggregates: list[Aggregate]) -> list[list]:
    """flops_to_match_summary.csv rows: mean, low, high per field; empty unless every seed has the field."""
    rows = []
    for a in aggregates:
        row = [*_identity(a), " ".join(str(m.seed) for m in a.matches), a.n_reached]
        for name in SUMMARY_FIELDS:
            row += list(a.interval(name) or ("", "", ""))
        rows.append(row)
    return rows


def _atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)
    return path


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(rows)

    return _atomic_write(path, write)


def render_report(
    results: Results, matches: list[Match], aggregates: list[Aggregate], plots: list[Plot], window: int = DEFAULT_WINDOW
) -> str:
    """report.md's text."""
    meta = results.meta
    profile = meta.get("recipe") or {}
    seeds = meta.get("seeds") or sorted({r.seed for r in results.runs})
    val_every = profile.get("val_every", "N")
    scale = meta.get("scale", "?")
    out = [
        "# Mixture-of-Mamba vs dense baselines: FLOPs-to-match report",
        "",
        f"Scale **{scale}**, settings {', '.join(results.settings)}, seeds {', '.join(map(str, seeds))}, "
        f"{meta.get('max_steps', '?')} steps per run. Command: `{meta.get('command', '?')}`.",
    ]
    if scale in ("tiny", "small"):
        out += [
            "",
            f"*These are {scale} models trained for {meta.get('max_steps', '?')} steps: the numbers show whether the "
            "trend of the papers appears at this size; they are not a reproduction of the papers' scale.*",
        ]
    finished = sum(r.finished for r in results.runs)
    if finished < len(results.runs):
        out += [
            "",
            f"**{len(results.runs) - finished} of {len(results.runs)} runs are not finished** and are left "
            "out of every number (see [Runs](#runs)).",
        ]
    out += ["", "## Verdict", "", *verdicts(results, aggregates)]
    out += [
        "",
        "## FLOPs-to-match on validation loss (primary)",
        "",
        "Percent of the dense arm's training FLOPs at which the sparse arm first reaches the dense arm's final "
        "validation loss (lower is better; 100% = no saving). The papers' columns are the papers' numbers at their "
        "scales, for reference, not ours.",
        "",
        match_table(results, aggregates, "val"),
        "",
        *(["Papers' sources:", "", paper_sources(results), ""] if paper_sources(results) else []),
        "## Final validation loss per arm",
        "",
        f"Smoothed (trailing mean of the last {window} evaluations), mean over seeds [95% interval].",
        "",
        final_loss_table(results, window),
        "",
        "## Loss gap at equal FLOPs",
        "",
        "The sparse arm's smoothed validation loss at the dense arm's total FLOPs minus the dense arm's final smoothed "
        "loss; negative = the sparse arm is better.",
        "",
        field_table(results, aggregates, "loss_gap", "{:+.4f}".format),
        "",
        "## Wall-clock to match",
        "",
        "The sparse run's wall-clock at its matching point divided by the dense run's wall-clock at its last "
        "evaluation. Comparable only between runs on the same device and backend (see [Runs](#runs)).",
        "",
        field_table(results, aggregates, "wall_fraction", _percent),
        "",
        "## FLOPs-to-match on training loss",
        "",
        f"Per-step training losses averaged over each block of {val_every} steps ending at an evaluation step, then "
        "the same rule. The MoT paper's headline numbers are on training loss.",
        "",
        match_table(results, aggregates, "train"),
        "",
        "## Plots",
    ]
    for setting in results.settings:
        shown = [p for p in plots if p.setting == setting and p.section == "curves"]
        if shown:
            out += ["", f"### {setting}", "", *[_image(results, p) for p in shown]]
    if meta.get("ablation_setting"):
        out += [
            "",
            f"## Ablation: which MoM projections to decouple ({meta['ablation_setting']})",
            "",
            f"Each variant decouples only the listed projections per modality (the rest shared) and is compared with "
            f"dense {arm_label(DENSE_OF[ABLATION_ARM])} of the same seed, on validation loss.",
            "",
            ablation_table(results, aggregates, window),
            "",
            *[_image(results, p) for p in plots if p.section == "ablation"],
        ]
    out += ["", *how_to_read(results, window, val_every)]
    out += ["", "## Runs", "", runs_table(results)]
    out += ["", *setup_lines(results)]
    return "\n".join(out) + "\n"


def _image(results: Results, plot: Plot) -> str:
    return f"![{plot.caption}]({plot.path.relative_to(results.out).as_posix()})"


def how_to_read(results: Results, window: int, val_every: object) -> list[str]:
    """The definitions, stated once: FLOPs-to-match and its smoothing, the FLOPs convention, the files."""
    ratios = [
        r.summary["flops_per_token_analytic"] / r.summary["flops_per_token"]
        for r in results.runs
        if r.summary.get("flops_per_token") and r.summary.get("flops_per_token_analytic")
    ]
    check = f"analytic / fvcore is {min(ratios):.4f}-{max(ratios):.4f} over the runs" if ratios else "no run to check"
    return [
        "## How to read this report",
        "",
        "- **FLOPs-to-match**: the cumulative training FLOPs at which the sparse arm first reaches the dense arm's "
        "final loss, divided by the dense arm's total training FLOPs. *Not reached* means the sparse arm never got "
        "there within its budget; it is never turned into a number.",
        f"- **Smoothing (one rule for every number here)**: a trailing mean over the last {window} evaluations "
        f"(validation every {val_every} steps), on both arms. Target: the dense arm's smoothed loss at its last "
        "evaluation (its *final loss*). Matching point: the first evaluation at or below the target, interpolated "
        "linearly in log-FLOPs from the one before. Implemented once, in `analysis/matching.py`.",
        f"- **Training loss**: the per-step losses of the {val_every} steps ending at each evaluation step are "
        "averaged first, so training and validation loss live on the same grid; then the same rule.",
        "- **Seeds**: sparse seed k is paired with dense seed k of the same setting. With 2 or more seeds a cell is "
        "the mean [95% Student-t interval]; if some seeds did not reach the target it says *k/n not reached* "
        "instead of averaging.",
        "- **FLOPs convention**: FLOPs = 2 × multiply-accumulates; training FLOPs = 3 × forward FLOPs; attention "
        "scores counted for the full L×L (no causal halving); embedding lookups free; output heads counted; the "
        "selective scan's elementwise work counted. Counted per token by fvcore (with handles for attention and the "
        f"scan) and cross-checked with the analytic formula in `analysis/flops.py`: {check}. A sparse arm has its "
        "dense arm's FLOPs per token (each token passes through one expert), so FLOPs-to-match equals "
        "steps-to-match.",
        "- **Units**: text, image-code and speech-unit losses are cross-entropy in nats; Transfusion's image loss is "
        "the diffusion ε-prediction MSE.",
        "- **Files**: `flops_to_match.csv` has one row per setting, loss kind (val/train), validation set, modality, "
        "sparse variant and seed (`fraction` empty when not reached); `flops_to_match_summary.csv` aggregates it "
        "over seeds (mean, 95% low/high; empty where a seed lacks the number); `plots/` holds the figures.",
    ]


def setup_lines(results: Results) -> list[str]:
    """Data sources, profile, versions, devices and total wall-clock."""
    meta = results.meta
    lines = ["## Setup", ""]
    for setting in results.settings:
        sources = sorted({s for r in results.runs if r.setting == setting for s in r.summary.get("data_sources", [])})
        lines.append(f"- Data, {setting}: {'; '.join(sources) or 'not recorded (no summary.json)'}")
    profile = meta.get("recipe") or {}
    lines.append(f"- Recipe (every run): {', '.join(f'{k} {v}' for k, v in profile.items()) or 'not recorded'}")
    versions = meta.get("versions") or {}
    lines.append(f"- Versions: {', '.join(f'{k} {v}' for k, v in versions.items()) or 'not recorded'}")
    run_versions = {json.dumps(r.summary["versions"], sort_keys=True) for r in results.runs if "versions" in r.summary}
    if len(run_versions) > 1:
        lines.append(f"- Runs recorded {len(run_versions)} different version sets: {'; '.join(sorted(run_versions))}")
    for what in ("device", "backend"):
        values = sorted({str(r.summary[what]) for r in results.runs if what in r.summary})
        lines.append(f"- {what.capitalize()}s: {', '.join(values) or 'not recorded'}")
    total = meta.get("wall_clock_s")
    runs_total = sum(r.summary.get("wall_clock_s") or 0 for r in results.runs)
    lines.append(
        f"- Wall-clock: {'not recorded' if total is None else f'{total:.0f} s'} for the comparison, "
        f"{runs_total:.0f} s summed over runs"
    )
    return lines


def write_report(out: str | Path, window: int = DEFAULT_WINDOW) -> Path:
    """Read `<out>/comparison.json` and its runs; write report.md, the CSVs and the plots into `<out>`.

    Returns:
        The path of report.md.

    Raises:
        ReportError: comparison.json is missing or corrupt (runs that are missing or unfinished are reported).
    """
    results = load_results(out)
    matches = compare(results, window)
    aggregates = aggregate(matches)
    plots = write_plots(results, matches, aggregates, results.out / "plots")
    write_csv(results.out / "flops_to_match.csv", MATCH_COLUMNS, match_rows(matches))
    write_csv(results.out / "flops_to_match_summary.csv", SUMMARY_COLUMNS, summary_rows(aggregates))
    text = render_report(results, matches, aggregates, plots, window)
    return _atomic_write(results.out / "report.md", lambda tmp: tmp.write_text(text))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="results folder holding comparison.json")
    args = parser.parse_args(argv)
    try:
        path = write_report(args.out)
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
