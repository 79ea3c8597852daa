"""FLOPs-to-match: at what fraction of the dense arm's training FLOPs does the sparse arm reach its final loss.

The rule, stated once (docs/design.md, "FLOPs-to-match"):

* Smoothing: each evaluation's loss is replaced by the value, at its own FLOPs, of a quadratic in log-FLOPs fitted
  by weighted least squares (tricube weights) to the `points` evaluations around it (9 by default; at the ends of
  a curve the window is one-sided, not shorter). A loss curve is close to a quadratic in log-FLOPs over such a
  window, so the smoothing has no lag, at the ends included: on noise-free shifted power laws the rule returns the
  true answer within 1.5% (a trailing mean lags by about one evaluation and returned 0.56 for a true 0.5).
* Target: the dense arm's smoothed loss at its last evaluation.
* Matching point: the first evaluation at which the sparse arm's smoothed loss is at or below the target,
  interpolated linearly in log-FLOPs between that evaluation and the one before it. If the very first evaluation
  already matches, its FLOPs are the matching point (no extrapolation before the first evaluation).
* Result: matching FLOPs / the dense arm's total FLOPs (its last evaluation). Never reached: `None`, a distinct
  result, never a number.
* Loss gap at equal FLOPs (`loss_gap`): the sparse arm's smoothed loss at the dense arm's total FLOPs, interpolated
  in log-FLOPs like the matching point, minus the target. Negative means the sparse arm ends lower.

On noisy curves (noise sd 0.01 on every evaluation) the mean answer stays within 0.5% of the truth at 10 and 20
evaluations (tests/test_matching.py measures it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

SMOOTHING_POINTS = 9
# Evaluations per curve at or above which the rule is checked to be exact within 1.5% (tests/test_matching.py); a
# match resting on fewer is flagged in the report.
MIN_EVALUATIONS = 10


def smooth(flops: Sequence[float], loss: Sequence[float], points: int = SMOOTHING_POINTS) -> np.ndarray:
    """Each loss replaced by a local quadratic fit in log-FLOPs over `points` evaluations (see the module docstring).

    A curve of fewer evaluations is fitted whole, with a degree below the number of points; `points=1` returns the
    curve unchanged.
    """
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


def _smoothed(dense_flops, dense_loss, sparse_flops, sparse_loss, points: int):
    """The one rule, in one place: checked arrays, the dense arm's target and the sparse arm's smoothed curve."""
    if points < 1:
        raise ValueError(f"points must be >= 1, got {points}")
    df, dl = _check(dense_flops, dense_loss, "dense")
    sf, sl = _check(sparse_flops, sparse_loss, "sparse")
    return df, smooth(df, dl, points)[-1], sf, smooth(sf, sl, points)


def flops_to_match(
    dense_flops: Sequence[float],
    dense_loss: Sequence[float],
    sparse_flops: Sequence[float],
    sparse_loss: Sequence[float],
    points: int = SMOOTHING_POINTS,
) -> float | None:
    """The sparse arm's FLOPs to reach the dense arm's final (smoothed) loss, as a fraction of the dense total.

    Args:
        dense_flops, dense_loss: the dense arm's evaluations (cumulative training FLOPs, loss), one run.
        sparse_flops, sparse_loss: the sparse arm's, same loss and same FLOPs convention.
        points: evaluations in each local fit of the smoothing (1 = no smoothing).

    Returns:
        The fraction (e.g. 0.35 for 35%), or None when the sparse arm never reaches the target.
    """
    df, target, sf, s = _smoothed(dense_flops, dense_loss, sparse_flops, sparse_loss, points)
    hits = np.flatnonzero(s <= target)
    if len(hits) == 0:
        return None
    i = int(hits[0])
    if i == 0:
        return float(sf[0] / df[-1])
    # s[i-1] > target >= s[i]: linear in log-FLOPs between the two evaluations.
    t = (s[i - 1] - target) / (s[i - 1] - s[i])
    log_f = math.log(sf[i - 1]) + t * (math.log(sf[i]) - math.log(sf[i - 1]))
    return float(math.exp(log_f) / df[-1])


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


def at_flops(flops: Sequence[float], values: Sequence[float], at: float) -> float | None:
    """`values` at `at` FLOPs, interpolated linearly in log-FLOPs as the matching point is; None outside the grid.

    A point within a relative 1e-9 of either end counts as inside, so a run's own total FLOPs, recomputed
    elsewhere as steps × FLOPs per step, is not lost to rounding.
    """
    f, v = np.asarray(flops, dtype=np.float64), np.asarray(values, dtype=np.float64)
    if len(f) == 0 or not f[0] * (1 - 1e-9) <= at <= f[-1] * (1 + 1e-9):
        return None
    return float(np.interp(math.log(at), np.log(f), v))


def loss_gap(
    dense_flops: Sequence[float],
    dense_loss: Sequence[float],
    sparse_flops: Sequence[float],
    sparse_loss: Sequence[float],
    points: int = SMOOTHING_POINTS,
) -> float | None:
    """Loss gap at equal FLOPs: the sparse arm's smoothed loss at the dense arm's total FLOPs minus the target.

    Same smoothing and target as `flops_to_match`; negative means the sparse arm is better. None when the sparse
    run did not train as far as the dense one (its loss there would be an extrapolation).
    """
    df, target, sf, s = _smoothed(dense_flops, dense_loss, sparse_flops, sparse_loss, points)
    sparse_at = at_flops(sf, s, df[-1])
    return None if sparse_at is None else sparse_at - float(target)
