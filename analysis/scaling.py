"""Savings versus scale: the comparisons of a `compare.py --scales` sweep (one results folder per scale,
`<out>/<scale>/`, and `<out>/sweep.json`) set side by side, with a fitted trend.

    python -m analysis.scaling results/scales-nano-tiny-mini     # writes report.md, scaling*.csv and the figure

Per setting, loss and sparse arm, at every scale: the dense arm's non-embedding parameters N (the scaling-law size,
models.config.non_embedding_params) and training FLOPs, the loss gap at equal FLOPs and FLOPs-to-match with their
95% intervals over seeds, from the headline estimator (analysis/pairs.py). FLOPs-to-match is the budget-matched one
(analysis/budgets.py) where every scale trained its shorter budgets (`--budgets`), otherwise the within-run one; the
report names which. The trend is an ordinary least-squares line through every seed's value against log10 N: the loss
gap's change per tenfold N, and the exponent of FLOPs-to-match (log10 fraction against log10 N; withheld unless every
seed at every scale has a fraction), each with its Student-t 95% interval (n - 2 degrees of freedom). Where the
exponent is negative, the line is extended to the papers' FLOPs-to-match: the size at which it would meet them, an
extrapolation, said as one.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy import stats

from analysis.budgets import budget_folders, budget_results, budget_summary
from analysis.labels import arm_label, is_twin, modality_rank, pair_label, percent
from analysis.matching import SMOOTHING_POINTS, log_interval, mean_interval
from analysis.pairs import match_runs
from analysis.papers import PAPER_NUMBERS
from analysis.results import ReportError, Results, evaluation_grid, load_results
from analysis.tables import markdown_table, with_interval
from common.files import atomic_write
from models import ModelConfig, non_embedding_params

CELL = ["setting", "modality", "variant", "arm", "dense_arm"]
PAPER_SIZES = {"1.4B": 1.4e9, "7B": 7e9}  # the papers' nominal sizes, where their points are drawn


class Trend(NamedTuple):
    """A least-squares slope with its 95% interval, the intercept and the points it was fitted to."""

    slope: float
    low: float
    high: float
    intercept: float
    n: int


def fit_trend(x: np.ndarray, y: np.ndarray) -> Trend | None:
    """y = intercept + slope * x by least squares, the slope's Student-t 95% interval on n - 2 degrees of freedom;
    None with fewer than 3 points or a single x."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 3 or np.ptp(x) == 0:
        return None
    fit = stats.linregress(x, y)
    half = stats.t.ppf(0.975, len(x) - 2) * fit.stderr
    return Trend(fit.slope, fit.slope - half, fit.slope + half, fit.intercept, len(x))


def load_sweep(out: str | Path) -> tuple[list[Results], str]:
    """The sweep's comparisons, smallest scale first (sweep.json's order), and its command. ReportError when it is
    not a sweep."""
    path = Path(out) / "sweep.json"
    try:
        record = json.loads(path.read_text())
        scales, command = record["scales"], record["command"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ReportError(f"{path}: not a readable sweep record (run experiments/compare.py --scales) ({exc})") from exc
    return [load_results(Path(out) / scale) for scale in scales], command


def seed_points(results: Results, budgets: bool, points: int = SMOOTHING_POINTS) -> pd.DataFrame:
    """One row per setting, modality, sparse variant and seed of one scale, on the training loss (the papers'
    measure): `loss_gap`, `fraction` (budget-matched with `budgets`, else within-run; NaN where not matched), and
    the scale's `params` (the dense arm's N) and `train_flops` (the dense run's)."""
    matches = match_runs(results, evaluation_grid(results), points)
    rows = matches[(matches["kind"] == "train") & ~matches["variant"].map(is_twin)][[*CELL, "seed", "loss_gap",
                                                                                     "fraction"]]  # fmt: skip
    if budgets:
        pairs, _ = budget_summary(results, budget_results(results.out), points)
        pairs = pairs[(pairs["kind"] == "train")][["setting", "modality", "variant", "seed", "fraction"]]
        rows = rows.drop(columns="fraction").merge(pairs, on=["setting", "modality", "variant", "seed"], how="left")
    overrides = results.meta.recipe.get("model_overrides") or {}
    sizes = {arm: non_embedding_params(ModelConfig.from_scale(results.meta.scale, arch=arm, **overrides))
             for arm in set(rows["dense_arm"])}  # fmt: skip
    finished = results.finished
    dense_flops = {(r.setting, r.variant, r.seed): r.steps * r.train_flops_per_step for r in finished.itertuples()}
    return rows.assign(
        scale=results.meta.scale,
        params=rows["dense_arm"].map(sizes),
        train_flops=[dense_flops.get((r.setting, r.dense_arm, r.seed), np.nan) for r in rows.itertuples()],
    )


def sweep_points(sweep: list[Results], points: int = SMOOTHING_POINTS) -> tuple[pd.DataFrame, str]:
    """Every scale's `seed_points`, and the FLOPs-to-match measure they carry ("budget-matched" when every scale
    trained shorter budgets, else "within-run")."""
    budgets = all(budget_folders(r.out) for r in sweep)
    frame = pd.concat([seed_points(r, budgets, points) for r in sweep], ignore_index=True)
    return frame, "budget-matched" if budgets else "within-run"


def summarise_scales(frame: pd.DataFrame) -> pd.DataFrame:
    """Per cell and scale: N, training FLOPs, seeds, and the loss gap's and FLOPs-to-match's mean and 95% interval
    (FLOPs-to-match geometric, empty unless every seed has one)."""
    rows = []
    for (*cell, scale), group in frame.groupby([*CELL, "scale"], sort=False):
        gap = group["loss_gap"].to_numpy(dtype=np.float64)
        fraction = group["fraction"].to_numpy(dtype=np.float64)
        row = dict(zip(CELL, cell, strict=True)) | {"scale": scale, "params": group["params"].iloc[0]}
        row |= {"train_flops": group["train_flops"].mean(), "seeds": len(group)}
        row |= dict(zip(("loss_gap_mean", "loss_gap_low", "loss_gap_high"), mean_interval(gap), strict=True))
        geometric = log_interval(fraction) if np.isfinite(fraction).all() else (np.nan,) * 3
        row |= dict(zip(("fraction_mean", "fraction_low", "fraction_high"), geometric, strict=True))
        rows.append(row)
    return pd.DataFrame(rows)


def fit_cells(frame: pd.DataFrame) -> pd.DataFrame:
    """Per cell: the loss gap's slope per tenfold N and FLOPs-to-match's exponent, each with its interval, and the
    size at which the exponent's line meets the paper's FLOPs-to-match (where it is negative)."""
    rows = []
    for cell, group in frame.groupby(CELL, sort=False):
        x = np.log10(group["params"].to_numpy(dtype=np.float64))
        gap = fit_trend(x, group["loss_gap"].to_numpy(dtype=np.float64))
        fraction = group["fraction"].to_numpy(dtype=np.float64)
        exponent = fit_trend(x, np.log10(fraction)) if np.isfinite(fraction).all() else None
        row = dict(zip(CELL, cell, strict=True)) | {"scales": group["scale"].nunique(), "points": len(group)}
        for name, trend in (("gap_per_decade", gap), ("fraction_exponent", exponent)):
            row |= dict(zip([name, f"{name}_low", f"{name}_high"], trend[:3] if trend else (np.nan,) * 3, strict=True))
        row["fraction_exponent_intercept"] = exponent.intercept if exponent else np.nan
        paper = PAPER_NUMBERS.get((cell[3], cell[0], cell[1]))
        target = float(paper.value.strip("~%")) / 100 if paper else np.nan
        meets = exponent is not None and exponent.slope < 0 and np.isfinite(target)
        row |= {"paper": paper.value if paper else "", "paper_scale": paper.scale if paper else "",
                "params_at_paper": 10 ** ((math.log10(target) - exponent.intercept) / exponent.slope) if meets
                else np.nan}  # fmt: skip
        rows.append(row)
    return pd.DataFrame(rows)


def reading(fit: dict, largest: float) -> str:
    """The fitted trend of one cell in words: detectable or not, which way, and where the line meets the paper."""
    gap = f"loss gap {fit['gap_per_decade']:+.3f} [{fit['gap_per_decade_low']:+.3f}, {fit['gap_per_decade_high']:+.3f}]"
    if np.isnan(fit["fraction_exponent"]):
        words = f"{gap} per tenfold N; FLOPs-to-match has no trend (some seed at some scale did not match)"
    else:
        exponent = (f"FLOPs-to-match exponent {fit['fraction_exponent']:+.3f} [{fit['fraction_exponent_low']:+.3f}, "
                    f"{fit['fraction_exponent_high']:+.3f}]")  # fmt: skip
        words = f"{gap} per tenfold N; {exponent}"
    low, high = fit["gap_per_decade_low"], fit["gap_per_decade_high"]
    if np.isnan(low):
        return words + ": no interval (fewer than three points, or values that do not vary)."
    if low > 0 or high < 0:
        words += f": the saving {'grows' if high < 0 else 'shrinks'} with scale (the loss gap's interval excludes 0)"
    else:
        words += ": no trend is detectable at this range (the loss gap's interval includes 0)"
    at_paper = fit["params_at_paper"]
    if not np.isnan(at_paper) and at_paper <= largest:
        words += f". The measured FLOPs-to-match is already below the paper's {fit['paper']} (at {fit['paper_scale']})"
    elif not np.isnan(at_paper):
        words += (f". Extrapolated, the exponent's line would reach the paper's {fit['paper']} (at "
                  f"{fit['paper_scale']}) at N ≈ {at_paper:.2g}, {math.log10(at_paper / largest):.1f} decades beyond "
                  "the largest scale measured: an extrapolation, not a prediction")  # fmt: skip
    elif fit["paper"] and not np.isnan(fit["fraction_exponent"]):
        words += f". The line does not approach the paper's {fit['paper']} (at {fit['paper_scale']}): it rises"
    return words + "."


def plot_scaling(summary: pd.DataFrame, fits: pd.DataFrame, setting: str, measure: str) -> Figure:
    """FLOPs-to-match (top) and the loss gap (bottom) against N (left, with the papers' points and the fitted lines
    extended to them) and against the dense arm's training FLOPs (right), log axes, 95% intervals as bars."""
    fig = Figure(figsize=(11, 7.5))
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 2, sharey="row")
    mine = summary[summary["setting"] == setting]
    for i, (cell, group) in enumerate(mine.groupby(["modality", "variant"], sort=False)):
        label, color = f"{cell[0]}, {pair_label(cell[1])}", f"C{i}"
        for col, x in enumerate(("params", "train_flops")):
            for row, name in enumerate(("fraction", "loss_gap")):
                mean = group[f"{name}_mean"]
                err = [mean - group[f"{name}_low"], group[f"{name}_high"] - mean]
                axes[row, col].errorbar(group[x], mean, yerr=err, marker="o", color=color, capsize=3,
                                        label=label if row == col == 0 else None)  # fmt: skip
        fit = fits[(fits["setting"] == setting) & (fits["modality"] == cell[0]) & (fits["variant"] == cell[1])]
        paper = PAPER_NUMBERS.get((group["arm"].iloc[0], setting, cell[0]))
        if paper and paper.scale in PAPER_SIZES:
            axes[0, 0].plot(PAPER_SIZES[paper.scale], float(paper.value.strip("~%")) / 100, marker="*", ms=14,
                            color=color, linestyle="none", label=f"{label}: paper, {paper.scale}")  # fmt: skip
        if len(fit) and np.isfinite(fit["fraction_exponent"].iloc[0]):
            f = fit.iloc[0]
            edge = max(PAPER_SIZES.get(paper.scale, 0) if paper else 0, group["params"].max())
            xs = np.logspace(math.log10(group["params"].min()), math.log10(edge), 50)
            axes[0, 0].plot(xs, 10 ** (f["fraction_exponent_intercept"] + f["fraction_exponent"] * np.log10(xs)),
                            linestyle="--", color=color, alpha=0.6)  # fmt: skip
    for ax in axes.flat:
        ax.set_xscale("log")
        ax.grid(alpha=0.3, which="both")
    axes[0, 0].set_yscale("log")
    axes[0, 0].set_ylabel(f"FLOPs-to-match ({measure}; 1 = no saving)")
    axes[1, 0].set_ylabel("loss gap at equal FLOPs (sparse - dense)")
    axes[1, 0].set_xlabel("non-embedding parameters N of the dense arm (papers: nominal size)")
    axes[1, 1].set_xlabel("training FLOPs of the dense arm")
    for ax in axes[0]:
        ax.axhline(1.0, color="grey", linewidth=0.8)
    for ax in axes[1]:
        ax.axhline(0.0, color="grey", linewidth=0.8)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(f"{setting}: savings versus scale (training loss; dashed: fitted exponent, extended to the papers)")
    fig.tight_layout()
    return fig


def write_scaling_report(out: str | Path, points: int = SMOOTHING_POINTS) -> Path:
    """Read the sweep in `out`; write scaling.csv (per cell and scale), scaling_points.csv (per seed),
    scaling_fits.csv, plots/scaling_<setting>.png and report.md; return report.md's path."""
    out = Path(out)
    sweep, command = load_sweep(out)
    frame, measure = sweep_points(sweep, points)
    summary, fits = summarise_scales(frame), fit_cells(frame)
    atomic_write(out / "scaling_points.csv", frame.to_csv(index=False))
    atomic_write(out / "scaling.csv", summary.to_csv(index=False))
    lines = ["# Savings versus scale", "", f"Scales {', '.join(r.meta.scale for r in sweep)} (each its own recipe and "
             f"report: {', '.join(f'[{r.meta.scale}]({r.meta.scale}/report.md)' for r in sweep)}); training loss, the "
             f"papers' measure; FLOPs-to-match is **{measure}** (`docs/scaling.md`). Command: "
             f"`{command}`."]  # fmt: skip
    atomic_write(out / "scaling_fits.csv", fits.to_csv(index=False))
    (out / "plots").mkdir(exist_ok=True)
    for setting in dict.fromkeys(summary["setting"]):
        path = out / "plots" / f"scaling_{setting}.png"
        fig = plot_scaling(summary, fits, setting, measure)
        atomic_write(path, lambda tmp, fig=fig: fig.savefig(tmp, format="png", dpi=110))
        mine = sorted(summary[summary["setting"] == setting].itertuples(),
                      key=lambda r: (modality_rank(r.modality), arm_label(r.variant), r.params))  # fmt: skip
        rows = [[r.modality, pair_label(r.variant), r.scale, f"{r.params / 1e6:.3g}M", f"{r.train_flops:.3g}",
                 _cell(r, "loss_gap", r.seeds, "{:+.3f}".format), _cell(r, "fraction", r.seeds, percent)]
                for r in mine]  # fmt: skip
        header = ["modality", "pair", "scale", "N", "training FLOPs", "loss gap", f"FLOPs-to-match ({measure})"]
        largest = summary["params"].max()
        trends = [f"- **{r['modality']}, {pair_label(r['variant'])}**: {reading(r, largest)}"
                  for r in fits[fits["setting"] == setting].to_dict("records")]  # fmt: skip
        lines += ["", f"## {setting}", "", markdown_table(header, rows), "", "Fitted over every seed at every scale "
                  "against log10 N (95% intervals):", "", *trends, "", f"![{setting}](plots/{path.name})"]  # fmt: skip
    return atomic_write(out / "report.md", "\n".join(lines) + "\n")


def _cell(row, name: str, seeds: int, fmt) -> str:
    """A table cell: the mean and its interval (tables.with_interval), '–' where some seed has no value."""
    mean, low, high = (getattr(row, f"{name}_{part}") for part in ("mean", "low", "high"))
    return "–" if pd.isna(mean) else with_interval((mean, low, high), seeds, fmt)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="the sweep's results folder (holding sweep.json)")
    args = parser.parse_args(argv)
    try:
        print(f"wrote {write_scaling_report(args.out)}")
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
