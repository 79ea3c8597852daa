"""Sparse runs against their dense runs: one row per pair and loss (`match_runs`), then over seeds (`summarise`).

Every finished sparse run (main arms, control arms, ablation variants) is paired with the finished dense run of its
setting and seed (the arm registry's dense partner) on every loss both have, on the evaluation grid
(analysis/results.py), unless the two trained different batches (`order_mismatches`: their summaries' batch-order
digests differ), which leaves the pair out of every number. Every number comes from analysis/matching.py: one
smoothing rule, one interpolation, one statistic per verdict.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from analysis.labels import arm_rank, dense_partner, is_twin, loss_rank
from analysis.matching import SMOOTHING_POINTS, compare_curves, holm, log_interval, mean_interval, smooth, t_test
from analysis.metrics import METRICS, Pair
from analysis.results import Curve, Results, run_curves
from analysis.run_record import LossKey
from models.arms import ARMS

IDENTITY = ["setting", *LossKey._fields, "variant", "arm", "dense_arm"]
Interval = tuple[float, float, float]
# A dense curve whose loss falls by more than this share of its final smoothed value over its last doubling of FLOPs
# is still steep: the baseline is far from converged at this budget.
STEEP = 0.05
# One whose fall over that doubling is less than FLAT_SIGMAS standard errors (a line fitted in log-FLOPs to its
# evaluations there), or whose smoothed loss was lower before its end, is flat: along it, FLOPs-to-match is
# ill-conditioned (any FLOPs of the flat part match).
FLAT_SIGMAS = 2.0


def match_pair(sparse: Curve, dense: Curve, sparse_flops_per_step: float, points: int = SMOOTHING_POINTS) -> dict:
    """The numbers of one flops_to_match.csv row: FLOPs-to-match of one sparse curve against its dense curve
    (`fraction`, None = not reached; `at_least`, its lower bound), every registered metric (analysis/metrics.py) and
    the dense curve's end (`curve_end`)."""
    m = compare_curves(dense.flops, dense.loss, sparse.flops, sparse.loss, points)
    pair = Pair(sparse, dense, m)
    return {
        "reached": m.fraction is not None,
        "fraction": m.fraction,
        "at_least": m.at_least,
        "match_flops": m.sparse_reach,
        "match_step": None if m.sparse_reach is None else m.sparse_reach / sparse_flops_per_step,
        "dense_reach_flops": m.dense_reach,
        "dense_total_flops": float(dense.flops[-1]),
        "target_loss": m.target,
        **{name: metric.value(pair) for name, metric in METRICS.items()},
        "dense_end": curve_end(dense, points),
    }


def curve_end(curve: Curve, points: int = SMOOTHING_POINTS) -> str:
    """ "steep" (STEEP), "flat" (FLAT_SIGMAS) or "" for a curve's last doubling of FLOPs; "" when fewer than three
    evaluations lie in it."""
    last = curve.flops >= curve.flops[-1] / 2
    if last.sum() < 3:
        return ""
    fit = stats.linregress(np.log2(curve.flops[last]), curve.loss[last])  # slope: loss per doubling
    smoothed = smooth(curve.flops, curve.loss, points)
    if fit.slope + FLAT_SIGMAS * fit.stderr >= 0 or smoothed.min() < smoothed[-1]:
        return "flat"
    return "steep" if -fit.slope > STEEP * abs(smoothed[-1]) else ""


def _pairs(results: Results, same_batches: bool = True) -> list[tuple]:
    """(sparse run, its dense run) of every finished sparse run whose dense partner of the same seed finished and
    trained the same batches (with `same_batches` False: other batches), as far as they recorded (runs finished
    before summaries held the digest of their batch order cannot be checked)."""
    finished = results.finished
    dense_runs = {(r.setting, r.arm, r.seed): r for r in finished.itertuples() if r.variant == r.arm}
    pairs = [(run, dense_runs.get((run.setting, dense_partner(run.arm), run.seed))) for run in finished.itertuples()]

    def same(run, dense) -> bool:
        return not (run.batch_order and dense.batch_order) or run.batch_order == dense.batch_order

    return [(run, dense) for run, dense in pairs if dense is not None and same(run, dense) == same_batches]


def order_mismatches(results: Results) -> list[str]:
    """Each pair whose runs trained different batches, named: "chameleon mom seed 0 vs mamba"."""
    return [f"{r.setting} {r.variant} seed {r.seed} vs {d.variant}" for r, d in _pairs(results, same_batches=False)]


def match_runs(results: Results, grid: pd.DataFrame, points: int = SMOOTHING_POINTS) -> pd.DataFrame:
    """One row per finished sparse run and loss (IDENTITY, seed, `match_pair`'s numbers), sorted for tables: by
    setting, loss, arm, variant and seed. Pairs that trained different batches (`order_mismatches`) are left out."""
    curves = run_curves(grid)
    rows = []
    for run, dense_run in _pairs(results):
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
    """One row per setting, loss and variant over its seeds, and the verdicts (`verdict`, `fraction_verdict`).

    Columns: the seeds; `n_reached`; for every metric (METRICS) its mean and 95% Student-t interval (empty unless
    every seed has the number); `loss_gap_p`, the paired t-test's p-value, and `loss_gap_p_holm`, the same adjusted
    by Holm's method over every row of the summary but the twins' (a report's family of tests; the twins' rows are
    one of their own, so the null control never dilutes the real verdicts); `fraction_mean`, `_low`, `_high`:
    the geometric mean of FLOPs-to-match and the interval of its log (empty unless every seed reached);
    `fraction_at_least`, the geometric mean of each seed's `at_least` (a lower bound when some seed did not reach);
    `dense_end`, the dense curves' ends ("steep 3/3", "flat 1/3", comma-separated, or empty).
    """
    rows = []
    for identity, group in matches.groupby(IDENTITY, sort=False, dropna=False):
        row = dict(zip(IDENTITY, identity, strict=True))
        row |= {"seeds": " ".join(map(str, group["seed"])), "n_reached": int(group["reached"].sum())}
        for name in METRICS:
            values = group[name].to_numpy(dtype=np.float64)
            mean, low, high = mean_interval(values) if np.isfinite(values).all() else (None, None, None)
            row |= {f"{name}_mean": mean, f"{name}_low": low, f"{name}_high": high}
        gaps = group["loss_gap"].to_numpy(dtype=np.float64)
        row["loss_gap_p"] = t_test(gaps) if np.isfinite(gaps).all() else None
        fractions = group["fraction"].to_numpy(dtype=np.float64)
        mean, low, high = log_interval(fractions) if np.isfinite(fractions).all() else (None, None, None)
        row |= {"fraction_mean": mean, "fraction_low": low, "fraction_high": high}
        row["fraction_at_least"] = log_interval(group["at_least"].to_numpy(dtype=np.float64))[0]
        ends = group["dense_end"].value_counts()
        row["dense_end"] = ", ".join(f"{e} {ends[e]}/{len(group)}" for e in ("steep", "flat") if e in ends)
        rows.append(row)
    adjusted = {}
    for twins in (False, True):  # the null control is a family of its own: it never dilutes the real verdicts
        tested = [i for i, r in enumerate(rows) if r["loss_gap_p"] is not None and is_twin(r["variant"]) == twins]
        adjusted |= dict(zip(tested, holm([rows[i]["loss_gap_p"] for i in tested]), strict=True))
    for i, row in enumerate(rows):
        row |= {"loss_gap_p_holm": adjusted.get(i), "verdict": verdict(row), "fraction_verdict": fraction_verdict(row)}
    return pd.DataFrame(rows)


MIN_SEEDS = 3  # seeds a verdict needs before it is stated with an interval


def verdict(agg: dict) -> str:
    """The verdict on one summary row, from the one statistic that decides it: with MIN_SEEDS or more seeds, the 95%
    interval of the loss gap at equal FLOPs (every seed has one): "better" (entirely below 0), "worse" (entirely
    above) or "no significant difference". With fewer seeds there is no interval: "reached", "partly reached"
    (some seeds) or "not reached"."""
    if n_seeds(agg) < MIN_SEEDS:
        if agg["n_reached"] == n_seeds(agg):
            return "reached"
        return "partly reached" if agg["n_reached"] else "not reached"
    gap = interval(agg, "loss_gap")
    if gap is None:
        return "no interval"  # a sparse run shorter than its dense run: nothing at equal FLOPs
    return "better" if gap[2] < 0 else "worse" if gap[1] > 0 else "no significant difference"


def fraction_verdict(agg: dict) -> str:
    """FLOPs-to-match's own word, from the 95% interval of its log (MIN_SEEDS or more seeds, every one reached):
    "fewer FLOPs" (entirely below 100%), "more FLOPs" (entirely above) or ""."""
    fraction = interval(agg, "fraction")
    if n_seeds(agg) < MIN_SEEDS or fraction is None:
        return ""
    return "fewer FLOPs" if fraction[2] < 1 else "more FLOPs" if fraction[1] > 1 else ""


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
    """A FLOPs-to-match that some seed did not reach: how many did, and the lower bound the budgets give
    ("2/3 reach; ≥ 96.0%", "not reached; ≥ 104.0%"): a seed that never reached counts at its whole budget."""
    n, bound = n_seeds(agg), f"≥ {100 * agg['fraction_at_least']:.1f}%"
    return f"not reached; {bound}" if n == 1 else f"{agg['n_reached']}/{n} reach; {bound}"


PART_COUNT = {2: "both", 3: "all three", 4: "all four", 5: "all five", 6: "all six"}


def ablation_variants(results: Results) -> list[tuple[str, str]]:
    """(variant, label) of the ablation arm's runs in the ablation setting, fewest decoupled parts first, the arm
    itself (every part) last. A variant's parts are its config's `decouple` (None: all), else its name's suffix."""
    meta = results.meta
    setting, arm = meta.ablation_setting, meta.ablation_arm
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


def ablation_cells(results: Results, summary: pd.DataFrame) -> tuple[list[tuple[str, str]], dict[tuple, dict]]:
    """`ablation_variants`, and their `summarise` rows on the primary validation set keyed by (variant, modality)."""
    variants, setting = ablation_variants(results), results.meta.ablation_setting
    names = {v for v, _ in variants}
    cells = {
        (r["variant"], r["modality"]): r
        for r in summary.to_dict("records")
        if (r["setting"], r["kind"], r["valset"], r["source"]) == (setting, "val", "val", "") and r["variant"] in names
    }
    return variants, cells
