"""The numbers a report gives for every sparse/dense pair beside FLOPs-to-match, defined once.

A `Metric` is one column of flops_to_match.csv (one row per pair of runs and loss), summarised over seeds in
flops_to_match_summary.csv as `<name>_mean`, `_low` and `_high` (the mean and its Student-t 95% interval), and, when
it has a `heading`, a section of report.md of its own: its text, then a table on validation loss with one column per
sparse arm. Adding a number to the report is one `register` call. FLOPs-to-match itself, with its reach, lower bound
and geometric summary, is the headline's and is defined in analysis/pairs.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from analysis.labels import percent
from analysis.matching import Match, at_flops
from analysis.results import Curve


@dataclass(frozen=True)
class Pair:
    """What a metric is computed from: a sparse curve, its dense curve, and the one against the other (smoothed,
    analysis.matching.compare_curves)."""

    sparse: Curve
    dense: Curve
    match: Match


@dataclass(frozen=True)
class Metric:
    """One per-pair number of the report."""

    name: str  # its column in flops_to_match.csv (and `<name>_mean`, `_low`, `_high` in the summary)
    value: Callable[[Pair], float | None]  # its value for one pair; None where the pair has none
    fmt: Callable[[float], str]  # how a value prints in report.md
    heading: str = ""  # the title of its report section; "" when it has none (it is part of another table)
    how_to_read: str = ""  # the section's text, above its table
    in_loss_unit: bool = False  # its values are in the loss's unit (nats, MSE): the section's table names that unit
    # it exists only where the sparse arm reached the target: a cell without it says how many seeds did
    needs_reach: bool = False


METRICS: dict[str, Metric] = {}


def register(metric: Metric) -> Metric:
    """Add a metric to every report written from now on (after those registered before it)."""
    if metric.name in METRICS:
        raise ValueError(f"a metric named {metric.name!r} is registered already")
    METRICS[metric.name] = metric
    return metric


def _wall_clock_fraction(pair: Pair) -> float | None:
    """The sparse run's wall-clock at its matching point over the dense run's at its reach of the target."""
    m = pair.match
    sparse, dense = pair.sparse, pair.dense
    timed, dense_timed = np.isfinite(sparse.wall), np.isfinite(dense.wall)
    dense_wall = at_flops(dense.flops[dense_timed], dense.wall[dense_timed], m.dense_reach)
    if m.sparse_reach is None or not dense_wall:
        return None
    wall = at_flops(sparse.flops[timed], sparse.wall[timed], m.sparse_reach)
    return None if wall is None else wall / dense_wall


register(Metric("sparse_final_loss", lambda p: p.match.sparse_final, "{:.4f}".format, in_loss_unit=True))
register(Metric("dense_final_loss", lambda p: p.match.dense_final, "{:.4f}".format, in_loss_unit=True))
register(Metric("loss_gap", lambda p: p.match.loss_gap, "{:+.3f}".format, in_loss_unit=True))
register(
    Metric(
        "wall_clock_fraction",
        _wall_clock_fraction,
        percent,
        heading="Wall-clock to match",
        how_to_read="The sparse run's wall-clock at its matching point divided by the dense run's wall-clock at its "
        "best loss. Comparable only between runs on the same device and backend (see [Runs](#runs)).",
        needs_reach=True,
    )
)
