"""The report's figures: loss curves per setting (one panel per loss) and the ablation bars.

Figures are built on matplotlib's object API with the Agg canvas (no pyplot, no global backend), so the report
writes PNGs from any process and a notebook shows the same `Figure` objects inline. Every figure function returns
a Figure, or None when there is nothing to draw; `write_plots` saves them under predictable names:

    plots/<setting>_val_vs_flops.png     validation loss vs cumulative training FLOPs, matching points marked
    plots/<setting>_val_vs_steps.png     the same vs optimizer steps
    plots/<setting>_train_vs_flops.png   training loss (block means on the evaluation grid) vs FLOPs, matches marked
    plots/ablation_<setting>.png         FLOPs-to-match per modality of every ablation variant
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatterSciNotation, LogLocator, NullFormatter

from analysis.labels import (
    KIND_WORDS,
    arm_colour,
    arm_label,
    arm_rank,
    axis_label,
    dense_partner,
    loss_label,
    loss_rank,
    modality_rank,
)
from analysis.matching import smooth
from analysis.pairs import ablation_cells, interval, n_seeds, not_reached_text
from analysis.results import Curve, Results, run_curves
from analysis.run_record import LossKey
from common.files import atomic_write

X_AXES = {"flops": "cumulative training FLOPs", "steps": "optimizer steps"}  # a curve figure's `x`, in words


class Plot(NamedTuple):
    """One written figure: its setting, 'curves' or 'ablation', a caption for the report, and its file."""

    setting: str
    section: str
    caption: str
    path: Path


def curve_figure(
    results: Results, grid: pd.DataFrame, matches: pd.DataFrame, setting: str, kind: str = "val", x: str = "flops"
) -> Figure | None:
    """Loss curves of every main arm of `setting` against `x` ('flops', log scale, or 'steps'), one panel per loss of
    `kind` ('val', or 'train': block means on the evaluation grid); `grid` and `matches` are from `evaluation_grid`
    and `pairs.match_runs`. Each run is a faint raw curve and a solid smoothed one (the matching rule's smoothing);
    seeds share their arm's colour. Each dense arm's best smoothed loss (the target) is a dashed line, and each sparse
    run's matching point is a circle on it."""
    finished = results.finished
    main = finished[(finished["setting"] == setting) & (finished["variant"] == finished["arm"])]
    curves = run_curves(grid)
    runs = sorted(
        ((r.arm, r.seed, curves.get((setting, r.variant, r.seed), {})) for r in main.itertuples()),
        key=lambda run: (arm_rank(run[0]), run[1]),
    )
    keys = sorted({k for _, _, c in runs for k in c if k.kind == kind}, key=loss_rank)
    if not keys:
        return None
    ncols = min(len(keys), 3)
    nrows = math.ceil(len(keys) / ncols)
    fig = Figure(figsize=(4.8 * ncols, 4.2 * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).flatten()
    mine = matches[(matches["setting"] == setting) & (matches["variant"] == matches["arm"])]
    for ax, key in zip(axes, keys, strict=False):
        shown = mine[(mine[list(LossKey._fields)] == pd.Series(key._asdict())).all(axis=1)]
        _curve_panel(ax, [(arm, seed, c[key]) for arm, seed, c in runs if key in c], shown, setting, key, x)
    for ax in axes[len(keys) :]:
        ax.set_visible(False)
    fig.suptitle(f"{setting}: {KIND_WORDS[kind]} loss vs {X_AXES[x]} ({results.meta.scale} scale)")
    return fig


def _curve_panel(
    ax: Axes, runs: list[tuple[str, int, Curve]], matches: pd.DataFrame, setting: str, key: LossKey, x: str
) -> None:
    """One panel of `curve_figure`: the runs' curves on one loss, the dense targets and the matching points."""
    several_seeds = len({seed for _, seed, _ in runs}) > 1
    labelled: set[str] = set()
    tops, lefts = [], []
    for arm, _, curve in runs:
        xs = curve.flops if x == "flops" else curve.steps
        colour = arm_colour(arm)
        ax.plot(xs, curve.loss, color=colour, alpha=0.25, lw=0.8)
        label = None if arm in labelled else arm_label(arm)
        ax.plot(xs, smooth(curve.flops, curve.loss), color=colour, lw=1.0 if several_seeds else 1.8, label=label)
        labelled.add(arm)
        # The first tenth of training falls steeply from ~ln(vocab); leaving it out shows the region that decides
        # the match at a readable scale.
        tops.append(curve.loss[len(curve.loss) // 10 :].max())
        lefts.append(xs[len(xs) // 10])
    rows = list(matches.itertuples())
    for dense in sorted({m.dense_arm for m in rows}, key=arm_rank):
        for i, target in enumerate(sorted({m.target_loss for m in rows if m.dense_arm == dense})):
            label = f"{arm_label(dense)} best (smoothed)" if i == 0 else None
            ax.axhline(target, color=arm_colour(dense), ls="--", lw=1.0, label=label)
    for arm in sorted({m.arm for m in rows}, key=arm_rank):
        mine = sorted((m for m in rows if m.arm == arm), key=lambda m: m.seed)
        # a count and a range, not one entry per seed: a legend that grows with the seeds squeezes the axes away
        found = sorted(100 * m.fraction for m in mine if m.reached)
        where = f" at {found[0]:.0f}-{found[-1]:.0f}%" if len(found) > 1 else f" at {found[0]:.1f}%" if found else ""
        label = f"{arm_label(arm)} reaches it: {len(found)}/{len(mine)} seeds{where}"
        for m in (m for m in mine if m.reached):
            mx = m.match_flops if x == "flops" else m.match_step
            ax.plot(mx, m.target_loss, "o", ms=8, mfc=arm_colour(arm), mec="black", label=label)
            label = None
    if x == "flops":
        ax.set_xscale("log")
        # The panel spans one decade (from a tenth of the run, below): label 1-2-5 ticks, not the minor ones.
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(LogFormatterSciNotation(labelOnlyBase=False, minor_thresholds=(math.inf, 0)))
        ax.xaxis.set_minor_formatter(NullFormatter())
    low, top = min(np.min(curve.loss) for _, _, curve in runs), max(tops)
    ax.set_ylim(low - 0.05 * (top - low), top + 0.05 * (top - low) + 1e-9)
    ax.set_xlim(left=min(lefts))
    ax.set_xlabel(X_AXES[x])
    ax.set_ylabel(axis_label(setting, key))
    ax.set_title(loss_label(key))
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)


def ablation_figure(results: Results, summary: pd.DataFrame) -> Figure | None:
    """Grouped bars: FLOPs-to-match (% of the dense arm's FLOPs) per modality for every ablation variant, geometric
    means over seeds with the 95% interval of the log as an error bar; a variant that did not reach the target in
    every seed is an empty hatched bar labelled with how many did and the budgets' lower bound, never a mean."""
    setting, arm = results.meta.ablation_setting, results.meta.ablation_arm
    variants, found = ablation_cells(results, summary)
    if not found:
        return None
    dense = arm_label(dense_partner(arm))
    modalities = sorted({m for _, m in found}, key=modality_rank)
    fig = Figure(figsize=(2.2 + 1.2 * len(variants) * len(modalities), 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    width = 0.8 / len(variants)
    colours = colormaps["viridis"](np.linspace(0.1, 0.85, len(variants)))
    top = 100.0
    for i, ((variant, label), colour) in enumerate(zip(variants, colours, strict=True)):
        for j, modality in enumerate(modalities):
            agg = found.get((variant, modality))
            if agg is None:
                continue
            x = j - 0.4 + (i + 0.5) * width
            fraction = interval(agg, "fraction")
            if fraction is None:  # not reached in every seed: no number, an explicit mark
                ax.bar(x, 100, width, fill=False, hatch="//", edgecolor=colour, label=label)
                ax.text(x, 50, not_reached_text(agg), rotation=90, ha="center", va="center", fontsize=8)
            else:
                mean, low, high = (100 * v for v in fraction)
                err = [[mean - low], [high - mean]] if n_seeds(agg) > 1 else None
                ax.bar(x, mean, width, color=colour, yerr=err, capsize=3, label=label)
                ax.text(x, high + 1, f"{mean:.0f}%", ha="center", va="bottom", fontsize=8)
                top = max(top, high)
            label = None  # one legend entry per variant
    ax.axhline(100, color="black", ls="--", lw=1, label=f"{dense}'s FLOPs to its best loss")
    ax.set_xticks(range(len(modalities)), modalities)
    ax.set_ylim(0, 1.15 * top)
    ax.set_ylabel(f"FLOPs to reach {dense}'s best val loss (%)")
    ax.set_title(f"{setting}: {arm_label(arm)} ablation, which parts are decoupled (lower is better)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


def save_png(fig: Figure, path: Path) -> Path:
    """Write the figure atomically: a reader never sees half a PNG."""
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))


def write_plots(results: Results, grid: pd.DataFrame, matches: pd.DataFrame, summary: pd.DataFrame) -> list[Plot]:
    """Every figure of the report, saved under `<out>/plots` with the names in the module docstring; figures an
    earlier render left there and this one does not draw are removed."""
    folder, plots = results.out / "plots", []
    for setting in results.settings:
        for kind, x in (("val", "flops"), ("val", "steps"), ("train", "flops")):
            fig = curve_figure(results, grid, matches, setting, kind=kind, x=x)
            if fig is not None:
                path = save_png(fig, folder / f"{setting}_{kind}_vs_{x}.png")
                what = f"{KIND_WORDS[kind]} loss{' (block means)' if kind == 'train' else ''} vs {X_AXES[x]}"
                plots.append(Plot(setting, "curves", f"{setting}: {what}", path))
    fig = ablation_figure(results, summary)
    if fig is not None:
        setting, arm = results.meta.ablation_setting, results.meta.ablation_arm
        path = save_png(fig, folder / f"ablation_{setting}.png")
        caption = f"{setting}: FLOPs-to-match of the {arm_label(arm)} ablation variants"
        plots.append(Plot(setting, "ablation", caption, path))
    for stale in set(folder.glob("*.png")) - {plot.path for plot in plots}:  # figures of an earlier render
        stale.unlink()
    return plots
