"""FLOPs-to-match and the loss gap at equal FLOPs of one sparse curve against its dense curve, and the statistics
over seeds.

The rule, stated once (docs/design.md, "FLOPs-to-match"):

* Smoothing: each evaluation's loss is replaced by the value, at its own FLOPs, of a quadratic in log-FLOPs fitted
  by weighted least squares (tricube weights) to the `points` evaluations around it (9 by default; at the ends of
  a curve the window is one-sided, not shorter). A loss curve is close to a quadratic in log-FLOPs over such a
  window, so the smoothing has no lag, at the ends included; and it reads log-FLOPs only through differences, so a
  curve moved along the FLOPs axis is smoothed to the same values.
* Target: the dense arm's best smoothed loss (the minimum of its smoothed curve): its last one on a curve still
  falling, the best it got to on a curve that flattens or turns up at the end. (A target taken at the last
  evaluation lies above earlier points of such a curve, and the dense arm would "match itself" early.)
* Reach: the first FLOPs at which a smoothed curve is at or below the target, within a relative `TOLERANCE` (the
  same curve on a scaled FLOPs axis is smoothed to the same values but for the last bits), interpolated linearly in
  log-FLOPs from the evaluation before; an evaluation at the target is its own FLOPs. A curve at or below the
  target at its first evaluation reaches it there (no extrapolation before the first evaluation).
* FLOPs-to-match: the sparse arm's reach divided by the dense arm's own (where it first got to its best). The dense
  arm against itself is exactly 1, and against a copy of itself on a FLOPs axis scaled by k, k. A sparse arm that
  never reaches the target has no number (None); `Match.at_least` bounds it from below: the sparse arm's total
  FLOPs over the dense arm's reach.
* Loss gap at equal FLOPs: the sparse arm's smoothed loss at the dense arm's total FLOPs (interpolated in
  log-FLOPs) minus the dense arm's smoothed loss there; negative means the sparse arm ends lower. The headline
  statistic: every pair has one, and it stays well-conditioned where FLOPs-to-match does not (on a flat dense
  curve any FLOPs along the flat part match it).

The budget-matched FLOPs-to-match (`budget_match`) reads no curve: it asks at what training budget a sparse run,
with a schedule of its own run to the end, reaches the dense run's final loss. Within one run, a loss part-way
through a cosine schedule is not what a run of that budget reaches (its learning rate has not decayed), so the
within-run rule above carries the schedule's effect; this one does not. Its inputs are final losses (each run's
smoothed loss at its last evaluation) of the sparse arm at several budgets and of the dense arm at its own:

* Fit: the sparse final losses against log-budget, made non-increasing by the pool-adjacent-violators algorithm
  (isotonic regression): a longer budget never counts as worse, and noise that says otherwise is averaged away.
* Match: the budget at which the fit, linear in log-budget between adjacent budgets, comes down to the dense final
  loss, over the dense budget. Never extrapolated: a target below the fit at the largest budget is *not reached*
  (at least the largest budget), one above the fit at the smallest budget is *below* (at most the smallest).
* Withheld (*flat*): when either budget beside the crossing was pooled (the raw finals turned up there), the
  budget at which they cross is not determined.

Over seeds (sparse seed k against dense seed k): the loss gap's mean, Student-t 95% interval and p-value
(`mean_interval`, `t_test`); FLOPs-to-match's geometric mean with the Student-t interval of its log
(`log_interval`); Holm's adjustment of a report's p-values (`holm`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from scipy import stats

SMOOTHING_POINTS = 9
# Evaluations per curve at or above which the rule is checked to be exact within 1.5% (tests/test_matching.py); a
# match resting on fewer is flagged in the report.
MIN_EVALUATIONS = 10
TOLERANCE = 1e-9  # relative, on losses: rounding, not noise


def smooth(flops: Sequence[float], loss: Sequence[float], points: int = SMOOTHING_POINTS) -> np.ndarray:
    """Each loss replaced by a local quadratic fit in log-FLOPs over `points` evaluations (module docstring); a curve
    of fewer evaluations is fitted whole, with a degree below the number of points; `points=1` returns it unchanged."""
    x, v = np.log(np.asarray(flops, dtype=np.float64)), np.asarray(loss, dtype=np.float64)
    n, width = len(v), min(points, len(v))
    out = np.empty(n)
    for i in range(n):
        lo = min(max(0, i - width // 2), n - width)  # `width` evaluations around i, shifted inwards at the ends
        xs, ys = x[lo : lo + width] - x[i], v[lo : lo + width]
        reach = np.abs(xs).max() * 1.0001
        weights = (1 - (np.abs(xs) / reach) ** 3) ** 3 if reach > 0 else np.ones(width)
        degree = min(2, width - 1)
        out[i] = np.polynomial.polynomial.polyfit(xs, ys, degree, w=np.sqrt(weights))[0] if degree else ys[0]
    return out


def _check(flops: Sequence[float], loss: Sequence[float], name: str) -> tuple[np.ndarray, np.ndarray]:
    f, v = np.asarray(flops, dtype=np.float64), np.asarray(loss, dtype=np.float64)
    if f.ndim != 1 or f.shape != v.shape or len(f) == 0:
        raise ValueError(f"{name}: flops and loss must be 1-D of one non-zero length, got {f.shape} and {v.shape}")
    if not (np.isfinite(f).all() and np.isfinite(v).all()):
        raise ValueError(f"{name}: flops and loss must be finite")
    if (f <= 0).any() or (np.diff(f) <= 0).any():
        raise ValueError(f"{name}: flops must be positive and strictly increasing")
    return f, v


class Match(NamedTuple):
    """One sparse curve against its dense curve (FLOPs in the runs' convention, losses smoothed)."""

    fraction: float | None  # FLOPs-to-match; None: never reached
    at_least: float  # `fraction`, or when never reached a lower bound of it: the sparse total over the dense reach
    sparse_reach: float | None  # FLOPs at which the sparse arm first reached the target
    dense_reach: float  # FLOPs at which the dense arm first got to its best loss (the target)
    target: float  # the dense arm's best smoothed loss
    dense_final: float  # each arm's smoothed loss at its last evaluation
    sparse_final: float
    loss_gap: float | None  # at the dense arm's total FLOPs; None when the sparse run is shorter


def compare_curves(
    dense_flops: Sequence[float],
    dense_loss: Sequence[float],
    sparse_flops: Sequence[float],
    sparse_loss: Sequence[float],
    points: int = SMOOTHING_POINTS,
) -> Match:
    """The rule (module docstring) on one pair of curves: each arm's evaluations of one run (cumulative training FLOPs
    in one convention, the same loss); `points` evaluations in each local fit of the smoothing (1 = no smoothing)."""
    if points < 1:
        raise ValueError(f"points must be >= 1, got {points}")
    df, dl = _check(dense_flops, dense_loss, "dense")
    sf, sl = _check(sparse_flops, sparse_loss, "sparse")
    d, s = smooth(df, dl, points), smooth(sf, sl, points)
    target = float(d.min())
    dense_reach = reach(df, d, target)
    sparse_reach = reach(sf, s, target)
    sparse_at = at_flops(sf, s, df[-1])
    return Match(
        fraction=None if sparse_reach is None else sparse_reach / dense_reach,
        at_least=(float(sf[-1]) if sparse_reach is None else sparse_reach) / dense_reach,
        sparse_reach=sparse_reach,
        dense_reach=dense_reach,
        target=target,
        dense_final=float(d[-1]),
        sparse_final=float(s[-1]),
        loss_gap=None if sparse_at is None else sparse_at - float(d[-1]),
    )


def reach(flops: np.ndarray, smoothed: np.ndarray, target: float) -> float | None:
    """The first FLOPs at which `smoothed` is at or below `target` (within TOLERANCE), interpolated linearly in
    log-FLOPs from the evaluation before; None if it never is."""
    hits = np.flatnonzero(smoothed <= target + TOLERANCE * abs(target))
    if len(hits) == 0:
        return None
    i = int(hits[0])
    if i == 0 or smoothed[i] >= target:  # the first evaluation, or one at the target within TOLERANCE
        return float(flops[i])
    # smoothed[i-1] > target > smoothed[i]: linear in log-FLOPs between the two evaluations.
    t = (smoothed[i - 1] - target) / (smoothed[i - 1] - smoothed[i])
    return float(math.exp(math.log(flops[i - 1]) + t * (math.log(flops[i]) - math.log(flops[i - 1]))))


def flops_to_match(
    dense_flops: Sequence[float],
    dense_loss: Sequence[float],
    sparse_flops: Sequence[float],
    sparse_loss: Sequence[float],
    points: int = SMOOTHING_POINTS,
) -> float | None:
    """The sparse arm's FLOPs to reach the dense arm's best smoothed loss over the dense arm's FLOPs to reach it
    (e.g. 0.35 for 35%); None when the sparse arm never reaches it. Arguments as `compare_curves`."""
    return compare_curves(dense_flops, dense_loss, sparse_flops, sparse_loss, points).fraction


def loss_gap(
    dense_flops: Sequence[float],
    dense_loss: Sequence[float],
    sparse_flops: Sequence[float],
    sparse_loss: Sequence[float],
    points: int = SMOOTHING_POINTS,
) -> float | None:
    """The sparse arm's smoothed loss at the dense arm's total FLOPs minus the dense arm's smoothed loss there
    (negative: the sparse arm is better); None when the sparse run did not train as far as the dense one (its loss
    there would be an extrapolation). Arguments as `compare_curves`."""
    return compare_curves(dense_flops, dense_loss, sparse_flops, sparse_loss, points).loss_gap


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean and a Student-t confidence interval over seeds: (mean, low, high); one value gives (v, v, v)."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) == 0:
        raise ValueError("mean_interval needs at least one value")
    mean = float(v.mean())
    if len(v) == 1:
        return mean, mean, mean
    half = float(stats.t.ppf(0.5 + confidence / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    return mean, mean - half, mean + half


def log_interval(ratios: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Geometric mean of positive ratios and the Student-t interval of their log, back on the ratio scale: a ratio
    and its inverse are equally far from 1, and the interval never crosses 0."""
    r = np.asarray(ratios, dtype=np.float64)
    if len(r) == 0 or not (r > 0).all():
        raise ValueError(f"log_interval needs positive ratios, got {r.tolist()}")
    mean, low, high = mean_interval(np.log(r), confidence)
    return math.exp(mean), math.exp(low), math.exp(high)


def t_test(values: Sequence[float]) -> float | None:
    """Two-sided p-value of the one-sample t-test that the values' mean is 0 (the paired test of a loss gap over
    seeds; its 95% interval excludes 0 exactly when p < 0.05); None with fewer than 2 values or none spread."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) < 2 or v.std() == 0:
        return None
    return float(stats.ttest_1samp(v, 0.0).pvalue)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment: each p-value adjusted for the family of all of them (an adjusted p below 0.05
    keeps the chance of any false positive in the family at 5% at most). Same order as given."""
    p = np.asarray(p_values, dtype=np.float64)
    order = np.argsort(p, kind="stable")
    adjusted = np.minimum(1.0, np.maximum.accumulate(p[order] * (len(p) - np.arange(len(p)))))
    out = np.empty(len(p))
    out[order] = adjusted
    return out.tolist()


def at_flops(flops: Sequence[float], values: Sequence[float], at: float) -> float | None:
    """`values` at `at` FLOPs, interpolated linearly in log-FLOPs as the matching point is; None outside the grid.
    A point within a relative 1e-9 of either end counts as inside, so a run's own total FLOPs, recomputed elsewhere
    as steps × FLOPs per step, is not lost to rounding."""
    f, v = np.asarray(flops, dtype=np.float64), np.asarray(values, dtype=np.float64)
    if len(f) == 0 or not f[0] * (1 - 1e-9) <= at <= f[-1] * (1 + 1e-9):
        return None
    return float(np.interp(math.log(at), np.log(f), v))


class BudgetMatch(NamedTuple):
    """The budget-matched FLOPs-to-match of one sparse arm's runs at several budgets against one dense run."""

    fraction: float | None  # the matching budget over the dense budget; None unless status is "matched"
    status: str  # "matched", "not reached" (beyond the largest budget), "below" (the smallest is enough), "flat"
    bound: float | None  # "not reached": the largest budget over the dense one (a lower bound); "below": the smallest
    # (an upper bound); else None
    fit: tuple[float, ...]  # the non-increasing fit of the sparse final losses, in budget order


def pool_adjacent_violators(values: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """The non-increasing least-squares fit of `values` (equal weights), and each value's block id (values pooled
    into one block share it)."""
    blocks: list[list[float]] = []  # [sum, count, first index]
    for i, v in enumerate(values):
        blocks.append([float(v), 1.0, i])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] < blocks[-1][0] / blocks[-1][1]:
            total, count, _ = blocks.pop()
            blocks[-1][0] += total
            blocks[-1][1] += count
    fit, ids = np.empty(len(values)), np.empty(len(values), dtype=int)
    for b, (total, count, first) in enumerate(blocks):
        fit[first : first + int(count)] = total / count
        ids[first : first + int(count)] = b
    return fit, ids


def budget_match(
    dense_budget: float, dense_final: float, sparse_budgets: Sequence[float], sparse_finals: Sequence[float]
) -> BudgetMatch:
    """The budget-matched FLOPs-to-match (module docstring): budgets in FLOPs (or any unit both share), final losses
    in one loss's unit; the sparse budgets need not be sorted."""
    budgets, finals = np.asarray(sparse_budgets, dtype=np.float64), np.asarray(sparse_finals, dtype=np.float64)
    if budgets.shape != finals.shape or budgets.ndim != 1 or len(budgets) < 2:
        raise ValueError(f"sparse budgets and final losses must be 1-D of one length >= 2, got {budgets.shape} and "
                         f"{finals.shape}")  # fmt: skip
    order = np.argsort(budgets)
    b, v = _check(budgets[order], finals[order], "sparse budgets")
    if not (dense_budget > 0 and math.isfinite(dense_budget) and math.isfinite(dense_final)):
        raise ValueError(f"dense budget and final loss must be finite (the budget positive): {dense_budget}, "
                         f"{dense_final}")  # fmt: skip
    fit, blocks = pool_adjacent_violators(v)
    target, tolerance = dense_final, TOLERANCE * abs(dense_final)
    if fit[-1] > target + tolerance:
        return BudgetMatch(None, "not reached", float(b[-1] / dense_budget), tuple(map(float, fit)))
    i = int(np.flatnonzero(fit <= target + tolerance)[0])  # fit[i - 1] > target >= fit[i]
    if i == 0:  # at the smallest budget already: matched there if at the target, else only bounded
        at = fit[0] >= target - tolerance
        return BudgetMatch(b[0] / dense_budget if at else None, "matched" if at else "below",
                           None if at else float(b[0] / dense_budget), tuple(map(float, fit)))  # fmt: skip
    if (blocks == blocks[i - 1]).sum() > 1 or (blocks == blocks[i]).sum() > 1:  # pooled at the crossing
        return BudgetMatch(None, "flat", None, tuple(map(float, fit)))
    t = (fit[i - 1] - target) / (fit[i - 1] - fit[i])
    log_budget = math.log(b[i - 1]) + t * (math.log(b[i]) - math.log(b[i - 1]))
    return BudgetMatch(math.exp(log_budget) / dense_budget, "matched", None, tuple(map(float, fit)))
