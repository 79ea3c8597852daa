"""Sparse runs against their dense runs: one row per pair and loss (`match_runs`), then over seeds (`summarise`).

Every finished sparse run (main arms, control arms, ablation variants) is paired with the finished dense run of its
setting and seed (the arm registry's dense partner) on every loss both have, on the evaluation grid
(analysis/results.py), unless the two trained different batches (`order_mismatches`: their summaries' batch-order
digests differ), which leaves the pair out of every number. Every number comes from analysis/matching.py: one
smoothing rule, one interpolation.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from analysis.labels import arm_rank, dense_partner, loss_rank
from analysis.matching import SMOOTHING_POINTS, at_flops, flops_to_match, loss_gap, mean_interval, smooth
from analysis.results import Curve, Results, run_curves
from analysis.run_record import LossKey
from models.arms import ARMS

IDENTITY = ["setting", *LossKey._fields, "variant", "arm", "dense_arm"]
Interval = tuple[float, float, float]
# The per-pair numbers summarised over seeds (mean and 95% interval) in flops_to_match_summary.csv.
SUMMARISED = ["fraction", "sparse_final_loss", "dense_final_loss", "loss_gap", "wall_clock_fraction"]


def match_pair(sparse: Curve, dense: Curve, sparse_flops_per_step: float, points: int = SMOOTHING_POINTS) -> dict:
    """FLOPs-to-match, final losses, loss gap and wall-clock-to-match of one sparse curve against its dense curve.

    Returns the numbers of one flops_to_match.csv row: `fraction` (of the dense total; None = not reached), the
    matching point in FLOPs and in the sparse run's steps, the dense total, both smoothed final losses (the dense one
    is the target), the loss gap at equal FLOPs and the sparse wall-clock at the matching point over the dense
    wall-clock at its last evaluation.
    """
    fraction = flops_to_match(dense.flops, dense.loss, sparse.flops, sparse.loss, points)
    match_flops = None if fraction is None else fraction * float(dense.flops[-1])
    wall_fraction = None
    timed = np.isfinite(sparse.wall)
    if match_flops is not None and math.isfinite(dense.wall[-1]) and dense.wall[-1] > 0:
        wall = at_flops(sparse.flops[timed], sparse.wall[timed], match_flops)
        wall_fraction = None if wall is None else wall / float(dense.wall[-1])
    return {
        "reached": fraction is not None,
        "fraction": fraction,
        "match_flops": match_flops,
        "match_step": None if match_flops is None else match_flops / sparse_flops_per_step,
        "dense_total_flops": float(dense.flops[-1]),
        "sparse_final_loss": float(smooth(sparse.flops, sparse.loss, points)[-1]),
        "dense_final_loss": float(smooth(dense.flops, dense.loss, points)[-1]),
        "loss_gap": loss_gap(dense.flops, dense.loss, sparse.flops, sparse.loss, points),
        "wall_clock_fraction": wall_fraction,
    }


def _pairs(results: Results) -> list[tuple]:
    """(sparse run, its dense run) of every finished sparse run whose dense partner of the same seed finished."""
    finished = results.finished
    dense_runs = {(r.setting, r.arm, r.seed): r for r in finished.itertuples() if r.variant == r.arm}
    pairs = [(run, dense_runs.get((run.setting, dense_partner(run.arm), run.seed))) for run in finished.itertuples()]
    return [(run, dense) for run, dense in pairs if dense is not None]


def _same_batches(run, dense) -> bool:
    """Whether two runs trained the same batches, as far as they recorded (runs finished before summaries held the
    digest of their batch order cannot be checked)."""
    return not (run.batch_order and dense.batch_order) or run.batch_order == dense.batch_order


def order_mismatches(results: Results) -> list[str]:
    """Each pair whose runs trained different batches, named: "chameleon mom seed 0 vs mamba"."""
    return [
        f"{run.setting} {run.variant} seed {run.seed} vs {dense.variant}"
        for run, dense in _pairs(results)
        if not _same_batches(run, dense)
    ]


def match_runs(results: Results, grid: pd.DataFrame, points: int = SMOOTHING_POINTS) -> pd.DataFrame:
    """One row per finished sparse run and loss (IDENTITY, seed, `match_pair`'s numbers), sorted for tables: by
    setting, loss, arm, variant and seed. Pairs that trained different batches (`order_mismatches`) are left out."""
    curves = run_curves(grid)
    rows = []
    for run, dense_run in _pairs(results):
        if not _same_batches(run, dense_run):
            continue
        dense = dense_run.variant
        mine, theirs = curves.get((run.setting, run.variant, run.seed), {}), curves[(run.setting, dense, run.seed)]
        for key in mine.keys() & theirs.keys():
            identity = dict(zip(IDENTITY, (run.setting, *key, run.variant, run.arm, dense), strict=True))
            rows.append(
                identity | {"seed": run.seed} | match_pair(mine[key], theirs[key], run.train_flops_per_step, points)
            )
    settings = results.settings

    def order(row: dict) -> tuple:
        key = loss_key(row)
        return settings.index(row["setting"]), loss_rank(key), arm_rank(row["arm"]), row["variant"], row["seed"]

    if not rows:  # the columns all the same, from a one-point pair
        one = Curve(*(np.ones(1),) * 4)
        return pd.DataFrame(columns=[*IDENTITY, "seed", *match_pair(one, one, 1.0)])
    return pd.DataFrame(sorted(rows, key=order))


def summarise(matches: pd.DataFrame) -> pd.DataFrame:
    """One row per setting, loss and variant over its seeds: the seeds, how many reached the target, and for every
    SUMMARISED number its mean and 95% Student-t interval (empty unless every seed has the number)."""
    rows = []
    for identity, group in matches.groupby(IDENTITY, sort=False, dropna=False):
        row = dict(zip(IDENTITY, identity, strict=True))
        row |= {"seeds": " ".join(map(str, group["seed"])), "n_reached": int(group["reached"].sum())}
        for name in SUMMARISED:
            values = group[name].to_numpy(dtype=np.float64)
            mean, low, high = mean_interval(values) if np.isfinite(values).all() else (None, None, None)
            row |= {f"{name}_mean": mean, f"{name}_low": low, f"{name}_high": high}
        rows.append(row | {"verdict": verdict(row)})
    return pd.DataFrame(rows)


MIN_SEEDS = 3  # seeds a verdict needs before it is stated with an interval


def verdict(agg: dict) -> str:
    """The verdict on one summary row. With MIN_SEEDS or more seeds, from the 95% interval of the loss gap at equal
    FLOPs (defined for every seed, reached or not): "saves" (entirely below 0), "worse" (entirely above) or
    "no significant difference". With fewer seeds there is no interval: "reached", "partly reached" (some seeds) or
    "not reached"."""
    if n_seeds(agg) < MIN_SEEDS:
        if interval(agg, "fraction") is not None:
            return "reached"
        return "partly reached" if agg["n_reached"] else "not reached"
    gap = interval(agg, "loss_gap")
    if gap is None:
        return "no interval"  # a sparse run shorter than its dense run: nothing at equal FLOPs
    return "saves" if gap[2] < 0 else "worse" if gap[1] > 0 else "no significant difference"


def final_losses(results: Results, grid: pd.DataFrame, points: int = SMOOTHING_POINTS) -> pd.DataFrame:
    """The smoothed final loss of every finished run on every loss: setting, variant, seed, kind, valset, modality,
    final_loss (runs in comparison.json's order)."""
    curves = run_curves(grid)
    rows = [
        {"setting": run.setting, "variant": run.variant, "seed": run.seed, **key._asdict()}
        | {"final_loss": float(smooth(curve.flops, curve.loss, points)[-1])}
        for run in results.finished.itertuples()
        for key, curve in curves.get((run.setting, run.variant, run.seed), {}).items()
    ]
    return pd.DataFrame(rows, columns=["setting", "variant", "seed", *LossKey._fields, "final_loss"])


# Accessors of one `summarise` row (a dict).


def loss_key(row: dict) -> LossKey:
    return LossKey(*(row[field] for field in LossKey._fields))


def n_seeds(agg: dict) -> int:
    return len(str(agg["seeds"]).split())


def interval(agg: dict, name: str) -> Interval | None:
    """(mean, low, high) of a summarised number, or None unless every seed has it."""
    mean = agg[f"{name}_mean"]
    return None if pd.isna(mean) else (mean, agg[f"{name}_low"], agg[f"{name}_high"])


def not_reached_text(agg: dict) -> str:
    n = n_seeds(agg)
    return "not reached" if n == 1 else f"{n - agg['n_reached']}/{n} not reached"


PART_COUNT = {2: "both", 3: "all three", 4: "all four", 5: "all five", 6: "all six"}


def ablation_variants(results: Results) -> list[tuple[str, str]]:
    """(variant, label) of the ablation arm's runs in the ablation setting, fewest decoupled parts first, the arm
    itself (every part) last. A variant's parts are its config's `decouple` (None: all), else its name's suffix."""
    meta = results.meta
    setting, arm = meta.get("ablation_setting"), meta.get("ablation_arm") or "mom"
    runs = results.runs[(results.runs["setting"] == setting) & (results.runs["arm"] == arm)]
    every = ARMS[arm].parts if arm in ARMS else ()
    parts = {}
    for run in runs.itertuples():
        chosen = run.decouple if isinstance(run.decouple, tuple) else None
        if chosen is None and run.variant != arm:  # no config.json yet: the name says it, e.g. "mom-in_proj+x_proj"
            chosen = tuple(run.variant.partition("-")[2].split("+"))
        parts[run.variant] = every if chosen is None else chosen
    ranks = {v: [every.index(p) if p in every else len(every) for p in chosen] for v, chosen in parts.items()}
    ordered = sorted(parts, key=lambda v: (len(parts[v]), ranks[v]))
    label = PART_COUNT.get(len(every), f"all {len(every)}")
    return [(v, label if set(parts[v]) == set(every) else "+".join(parts[v])) for v in ordered]
