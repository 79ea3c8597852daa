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
