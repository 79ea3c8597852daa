"""Names on screen and the report's figures: loss curves per setting (one panel per loss) and the ablation bars.

Figures are built on matplotlib's object API with the Agg canvas (no pyplot, no global backend), so the report
writes PNGs from any process and a notebook shows the same `Figure` objects inline. Every figure function returns
a Figure, or None when there is nothing to draw; `write_plots` saves them under predictable names:

    plots/<setting>_val_vs_flops.png     validation loss vs cumulative training FLOPs, matching points marked
    plots/<setting>_val_vs_steps.png     the same vs optimizer steps
    plots/<setting>_train_vs_flops.png   training loss (block means, see report.py) vs FLOPs, matching points marked
    plots/ablation_<setting>.png         FLOPs-to-match per modality of every MoM ablation variant
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatterSciNotation, LogLocator, NullFormatter

from analysis.matching import smooth

if TYPE_CHECKING:
    from analysis.report import Aggregate, LossKey, Match, Results, Run

ARM_LABELS = {"mamba": "Mamba", "mom": "MoM", "transformer": "Transformer", "mot": "MoT"}
ARM_ORDER = ("mamba", "mom", "transformer", "mot")
ARM_COLOURS = {
    "mamba": "tab:blue",
    "mom": "tab:orange",
    "transformer": "tab:green",
    "mot": "tab:red",
    "mom_hash": "tab:purple",
    "mot_hash": "tab:brown",
}
MODALITY_ORDER = ("text", "image", "speech")
# Extra validation sets get their own rows and panels, named by what they hold.
VALSET_LABELS = {"val": "", "val_real_speech": "real recordings"}


class Plot(NamedTuple):
    """One written figure: its setting, 'curves' or 'ablation', a caption for the report, and its file."""

    setting: str
    section: str
    caption: str
    path: Path


def arm_label(arm: str) -> str:
    """'mom' -> 'MoM', 'mom_hash' -> 'MoM-hash': a control arm is named after the arm it mimics."""
    base, _, rest = arm.partition("_")
    label = ARM_LABELS.get(base, base)
    return f"{label}-{rest}" if rest else label


def arm_rank(arm: str) -> tuple[int, str]:
    """Sort key: the four main arms in their usual order, then control arms by name."""
    return (ARM_ORDER.index(arm) if arm in ARM_ORDER else len(ARM_ORDER), arm)


def arm_colour(arm: str) -> str:
    """A fixed colour per arm, so one arm looks the same in every figure."""
    return ARM_COLOURS.get(arm, f"C{sum(map(ord, arm)) % 10}")


def modality_rank(modality: str) -> tuple[int, str]:
    """Sort key: text, image, speech, then any other modality by name."""
    return (MODALITY_ORDER.index(modality) if modality in MODALITY_ORDER else len(MODALITY_ORDER), modality)


def loss_label(key: LossKey) -> str:
    """'image', or 'speech (real recordings)' for a loss on an extra validation set."""
    extra = VALSET_LABELS.get(key.valset, key.valset)
    return f"{key.modality} ({extra})" if extra else key.modality


def loss_unit(setting: str, modality: str) -> str:
    """Transfusion's image loss is the diffusion ε-prediction MSE; every other loss is cross-entropy in nats."""
    return "diffusion MSE" if (setting, modality) == ("transfusion", "image") else "nats"


def axis_label(setting: str, key: LossKey) -> str:
    """Y-axis label with the unit, e.g. 'validation loss (nats)' or 'training diffusion MSE'."""
    stage = "validation" if key.kind == "val" else "training"
    unit = loss_unit(setting, key.modality)
    return f"{stage} diffusion MSE" if unit == "diffusion MSE" else f"{stage} loss ({unit})"


def curve_figure(
    results: Results, matches: list[Match], setting: str, kind: str = "val", x: str = "flops"
) -> Figure | None:
    """Loss curves of every main arm of `setting`, one panel per loss of `kind` ('val' or 'train').

    Each run is a faint raw curve and a solid smoothed one (the matching rule's trailing mean); seeds share their
    arm's colour. Each dense arm's final smoothed loss (the target) is a dashed line, and each sparse run's
    matching point is a circle on it.

    Args:
        results, matches: from `load_results` and `compare`.
        setting: which setting to draw.
        kind: 'val' (validation loss) or 'train' (training loss, block means on the evaluation grid).
        x: 'flops' (cumulative training FLOPs, log scale) or 'steps' (optimizer steps).
    """
    runs = sorted(results.main_runs(setting), key=lambda r: (arm_rank(r.arm), r.seed))
    keys = sorted({k for r in runs for k in r.curves if k.kind == kind}, key=lambda k: k.order)
    if not keys:
        return None
    ncols = min(len(keys), 3)
    nrows = math.ceil(len(keys) / ncols)
    fig = Figure(figsize=(4.8 * ncols, 4.2 * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).flatten()
    for ax, key in zip(axes, keys, strict=False):
        shown = [m for m in matches if m.setting == setting and m.key == key and m.variant == m.arm]
        _curve_panel(ax, runs, shown, setting, key, x)
    for ax in axes[len(keys) :]:
        ax.set_visible(False)
    stage = "validation" if kind == "val" else "training"
    versus = "cumulative training FLOPs" if x == "flops" else "optimizer steps"
    fig.suptitle(f"{setting}: {stage} loss vs {versus} ({results.meta.get('scale', '?')} scale)")
    return fig


def _curve_panel(ax: Axes, runs: list[Run], matches: list[Match], setting: str, key: LossKey, x: str) -> None:
    """One panel of `curve_figure`: the runs' curves on one loss, the dense targets and the matching points."""
    several_seeds = len({r.seed for r in runs}) > 1
    labelled: set[str] = set()
    tops, lefts = [], []
    for run in (r for r in runs if key in r.curves):
        curve = run.curves[key]
        xs = curve.flops if x == "flops" else curve.steps
        colour = arm_colour(run.arm)
        ax.plot(xs, curve.loss, color=colour, alpha=0.25, lw=0.8)
        label = None if run.arm in labelled else arm_label(run.arm)
        ax.plot(xs, smooth(curve.loss), color=colour, lw=1.0 if several_seeds else 1.8, label=label)
        labelled.add(run.arm)
        # The first tenth of training falls steeply from ~ln(vocab); leaving it out shows the region that decides
        # the match at a readable scale.
        tops.append(curve.loss[len(curve.loss) // 10 :].max())
        lefts.append(xs[len(xs) // 10])
    for dense in sorted({m.dense for m in matches}, key=arm_rank):
        for i, target in enumerate(sorted({m.dense_final for m in matches if m.dense == dense})):
            label = f"{arm_label(dense)} final (smoothed)" if i == 0 else None
            ax.axhline(target, color=arm_colour(dense), ls="--", lw=1.0, label=label)
    for arm in sorted({m.arm for m in matches}, key=arm_rank):
        mine = sorted((m for m in matches if m.arm == arm), key=lambda m: m.seed)
        seeds = "" if len(mine) == 1 else f" (seeds {', '.join(str(m.seed) for m in mine)})"
        found = ", ".join("not reached" if m.fraction is None else f"{100 * m.fraction:.1f}%" for m in mine)
        label = f"{arm_label(arm)} reaches it: {found}{seeds}"
        for m in (m for m in mine if m.fraction is not None):
            mx = m.match_flops if x == "flops" else m.match_step
            ax.plot(mx, m.dense_final, "o", ms=8, mfc=arm_colour(arm), mec="black", label=label)
            label = None
    if x == "flops":
        ax.set_xscale("log")
        # The panel spans one decade (from a tenth of the run, below): label 1-2-5 ticks, not the minor ones.
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(LogFormatterSciNotation(labelOnlyBase=False, minor_thresholds=(math.inf, 0)))
        ax.xaxis.set_minor_formatter(NullFormatter())
    low, top = min(np.min(r.curves[key].loss) for r in runs if key in r.curves), max(tops)
    ax.set_ylim(low - 0.05 * (top - low), top + 0.05 * (top - low) + 1e-9)
    ax.set_xlim(left=min(lefts))
    ax.set_xlabel("cumulative training FLOPs" if x == "flops" else "optimizer steps")
    ax.set_ylabel(axis_label(setting, key))
    ax.set_title(loss_label(key))
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)


def ablation_figure(results: Results, aggregates: list[Aggregate]) -> Figure | None:
    """Grouped bars: FLOPs-to-match (% of dense Mamba's FLOPs) per modality for every MoM ablation variant.

    Bars are seed means with the 95% interval as an error bar; a variant that did not reach the target in every
    seed is an empty hatched bar labelled 'not reached' (or 'k/n not reached'), never a number.
    """
    setting = results.meta.get("ablation_setting")
    variants = results.ablation_variants()
    names = {v for v, _ in variants}
    found = {
        (a.variant, a.key.modality): a
        for a in aggregates
        if a.setting == setting and a.key.kind == "val" and a.key.valset == "val" and a.variant in names
    }
    if not found:
        return None
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
            if agg.fraction is None:  # not reached in every seed: no number, an explicit mark
                ax.bar(x, 100, width, fill=False, hatch="//", edgecolor=colour, label=label)
                ax.text(x, 50, agg.not_reached_text, rotation=90, ha="center", va="center", fontsize=8)
            else:
                mean, low, high = (100 * v for v in agg.fraction)
                err = [[mean - low], [high - mean]] if agg.n > 1 else None
                ax.bar(x, mean, width, color=colour, yerr=err, capsize=3, label=label)
                ax.text(x, high + 1, f"{mean:.0f}%", ha="center", va="bottom", fontsize=8)
                top = max(top, high)
            label = None  # one legend entry per variant
    ax.axhline(100, color="black", ls="--", lw=1, label="Mamba's total FLOPs")
    ax.set_xticks(range(len(modalities)), modalities)
    ax.set_ylim(0, 1.15 * top)
    ax.set_ylabel("FLOPs to reach Mamba's final val loss (%)")
    ax.set_title(f"{setting}: MoM ablation, which projections are decoupled (lower is better)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


def save_png(fig: Figure, path: Path) -> Path:
    """Write the figure atomically: a reader never sees half a PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", dpi=110)
    os.replace(tmp, path)
    return path


def write_plots(results: Results, matches: list[Match], aggregates: list[Aggregate], folder: Path) -> list[Plot]:
    """Every figure of the report, saved under `folder` with the names in the module docstring."""
    plots = []
    for setting in results.settings:
        for kind, x, what in (
            ("val", "flops", "validation loss vs cumulative training FLOPs"),
            ("val", "steps", "validation loss vs optimizer steps"),
            ("train", "flops", "training loss (block means) vs cumulative training FLOPs"),
        ):
            fig = curve_figure(results, matches, setting, kind=kind, x=x)
            if fig is not None:
                path = save_png(fig, folder / f"{setting}_{kind}_vs_{x}.png")
                plots.append(Plot(setting, "curves", f"{setting}: {what}", path))
    fig = ablation_figure(results, aggregates)
    if fig is not None:
        setting = results.meta["ablation_setting"]
        path = save_png(fig, folder / f"ablation_{setting}.png")
        plots.append(Plot(setting, "ablation", f"{setting}: FLOPs-to-match of the MoM ablation variants", path))
    return plots
