"""The comparison report: a results folder written by experiments/compare.py -> report.md, CSVs and PNG plots.

    python -m analysis.report results/tiny               # writes the report into the folder
    python -m analysis.report results/tiny --headline    # prints the headline table (the README's)

Input: `<out>/comparison.json` (analysis.run_record.ComparisonMeta and the runs it lists) and the run
folders it names (analysis/run_record.py). Output, each file written atomically into `<out>`:

    report.md                     tables laid out like the papers', verdicts, plots, run statuses, setup
    curves.csv                    every curve of every finished run, long format (analysis/results.py)
    flops_to_match.csv            one row per setting, loss kind, validation set, modality, sparse variant, seed
    flops_to_match_summary.csv    the same over seeds: mean and 95% interval (empty where a seed did not reach)
    budget_matched*.csv           with shorter budgets (compare.py --budgets): the budget-matched FLOPs-to-match
    plots/*.png                   see analysis/plots.py

The pieces: results.py reads the folder into DataFrames, pairs.py pairs sparse and dense runs and aggregates over
seeds (with matching.py's one rule), tables.py and plots.py draw; this module only assembles the text. Runs that are
not finished are listed with their status and left out of every number; the report never fails because of one run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from analysis.budgets import budget_results, budget_section, budget_summary
from analysis.labels import arm_label, dense_partner, is_twin
from analysis.matching import MIN_EVALUATIONS, SMOOTHING_POINTS
from analysis.metrics import METRICS
from analysis.pairs import FLAT_SIGMAS, STEEP, final_losses, match_runs, order_mismatches, summarise
from analysis.plots import Plot, write_plots
from analysis.results import ReportError, Results, evaluation_grid, load_results
from analysis.tables import (
    ablation_table,
    markdown_table,
    match_table,
    metric_table,
    multiplicity_text,
    paper_sources,
    params_table,
    runs_table,
    verdict_tests,
    verdicts,
)
from common.files import atomic_write
from models import PAPER_SCALES

__all__ = ["ReportError", "render_report", "write_report"]


def render_report(results: Results, summary: pd.DataFrame, finals: pd.DataFrame, plots: list[Plot],
                  points: int = SMOOTHING_POINTS, budgets: list[str] = ()) -> str:  # fmt: skip
    """report.md's text: its sections, top to bottom; `budgets`: the budget-matched section's lines, if any."""
    val_every = results.meta.val_every or "N"
    own = own_data(results)
    out = _preamble(results, own)
    out += ["", "## Verdict", "", "On training loss (the papers' measure):", "", *verdicts(results, summary, "train")]
    out += ["", "On validation loss (held-out sequences, the confirmation):", "", *verdicts(results, summary, "val")]
    out += _headline_sections(results, summary, own, val_every) + list(budgets)
    out += _null_control_section(results, summary) if _has_twins(summary) else []
    out += _parameters_and_metrics(results, summary)
    out += ["## Plots"]
    for setting in results.settings:
        if shown := [p for p in plots if p.setting == setting and p.section == "curves"]:
            out += ["", f"### {setting}", "", *[_image(results, p) for p in shown]]
    out += _ablation_section(results, summary, finals, plots) if results.meta.ablation_setting else []
    out += samples_section(results)
    out += ["", *how_to_read(results, summary, points, val_every)]
    out += ["", "## Runs", "", runs_table(results)]
    out += ["", *setup_lines(results)]
    return "\n".join(out) + "\n"


def _preamble(results: Results, own: bool) -> list[str]:
    """The title, what was run, and every note that qualifies the numbers below."""
    meta = results.meta
    seeds = meta.seeds or sorted(set(results.runs["seed"]))
    out = [
        "# Mixture-of-Mamba vs dense baselines: FLOPs-to-match report",
        "",
        f"Scale **{meta.scale}**, settings {', '.join(results.settings)}, seeds {', '.join(map(str, seeds))}, "
        f"{meta.max_steps or '?'} steps per run. Command: `{meta.command}`.",
    ]
    notes = []
    if meta.scale not in PAPER_SCALES:
        notes.append(
            f"*These are {meta.scale} models trained for {meta.max_steps or '?'} steps: the numbers show whether the "
            "trend of the papers appears at this size; they are not a reproduction of the papers' scale.*"
        )
    # evaluations per run of the recipe
    steps, every = meta.max_steps or meta.recipe.get("max_steps"), meta.val_every
    if isinstance(steps, int) and isinstance(every, int) and every > 0 and steps // every < MIN_EVALUATIONS:
        notes.append(
            f"**Warning: each curve has {steps // every} evaluations.** The matching rule is checked exact within 1.5% "
            f"from {MIN_EVALUATIONS} evaluations on (docs/design.md); with fewer, a FLOPs-to-match is coarse. "
            "Validate more often (`--val-every`) or train longer."
        )
    if own:
        notes.append("*Trained on own data: the papers' numbers are not shown beside these (their data differ).*")
    if unfinished := len(results.runs) - len(results.finished):
        notes.append(
            f"**{unfinished} of {len(results.runs)} runs are not finished** and are left out of every number (see "
            "[Runs](#runs))."
        )
    if mismatched := order_mismatches(results):
        notes.append(
            f"**{len(mismatched)} {'pair' if len(mismatched) == 1 else 'pairs'} of runs did not train the same "
            "batches** (their summaries' `batch_order` digests differ) and are left out of every number: "
            f"{'; '.join(mismatched)}. Delete those run folders and run the comparison again."
        )
    return out + [line for note in notes for line in ("", note)]


def _headline_sections(results: Results, summary: pd.DataFrame, own: bool, val_every: object) -> list[str]:
    """The loss gap and FLOPs-to-match tables: training loss beside the papers' numbers, then validation loss."""
    sources = "" if own else paper_sources(results)
    return [
        "",
        "## Loss gap at equal FLOPs and FLOPs-to-match on training loss (primary: the papers' measure)",
        "",
        "Per setting and loss, for each sparse arm: the **loss gap at equal FLOPs** (sparse minus dense, at the dense "
        "arm's total training FLOPs; negative = the sparse arm is better) with its verdict, which decides; beside it "
        "**FLOPs-to-match**, the share of the dense arm's training FLOPs to its best loss at which the sparse arm "
        "first gets there (lower is better; 100% = no saving), with its own word when its interval excludes 100%; "
        f"and the dense curves' ends where they qualify the cell. Training losses are block means of {val_every} "
        "steps placed at each block's middle. The papers match on training loss (MoT's step matching, MoM's loss "
        "figure)" + ("." if own else "; their columns are their numbers at their scales, for reference, not ours."),
        "",
        match_table(results, summary, "train", papers=not own),
        "",
        *(["Papers' sources:", "", sources, ""] if sources else []),
        "## The same on validation loss (confirmation)",
        "",
        "The same rule on the validation losses (fixed held-out sequences; per image source and, in the three-modality "
        "setting, on real recordings too).",
        "",
        match_table(results, summary, "val", papers=False),
        "",
    ]


def _null_control_section(results: Results, summary: pd.DataFrame) -> list[str]:
    """The twins against their dense arms, with the false-positive rate of the report's intervals."""
    cells, positive, holm_kept = map(len, verdict_tests(summary, twins=True))
    return [
        "## Null control: each dense arm against its twin",
        "",
        "A twin is its dense arm with other initial weights (seed + 10000), trained on the same batches: nothing "
        "real differs, so every verdict here should read *no significant difference*, and about 5% of them "
        f"*better* or *worse* by chance. This run: **{positive} of {cells}** twin cells (training and validation "
        f"loss) read *better* or *worse* from their unadjusted 95% intervals ({positive / max(cells, 1):.0%}), "
        f"{holm_kept} after Holm's adjustment.",
        "",
        match_table(results, summary, "train", papers=False, twins=True),
        "",
        match_table(results, summary, "val", papers=False, twins=True),
        "",
    ]


def _parameters_and_metrics(results: Results, summary: pd.DataFrame) -> list[str]:
    """The parameters of every arm, then a section for each metric that has one (analysis/metrics.py)."""
    out = [
        "## Parameters",
        "",
        "Total parameters of each arm (and the active ones, those a token passes through, for sparse arms), per "
        "setting: a sparse arm has its dense arm's FLOPs per token but more weights.",
        "",
        params_table(results),
        "",
    ]
    for metric in (m for m in METRICS.values() if m.heading):
        out += [f"## {metric.heading}", "", metric.how_to_read, "", metric_table(results, summary, metric), ""]
    return out


def _ablation_section(results: Results, summary: pd.DataFrame, finals: pd.DataFrame, plots: list[Plot]) -> list[str]:
    meta, arm = results.meta, results.meta.ablation_arm
    return [
        "",
        f"## Ablation: which {arm_label(arm)} parts to decouple ({meta.ablation_setting})",
        "",
        f"Each variant decouples only the listed parts per modality (the rest shared) and is compared with "
        f"dense {arm_label(dense_partner(arm))} of the same seed, on validation loss.",
        "",
        ablation_table(results, summary, finals),
        "",
        *[_image(results, p) for p in plots if p.section == "ablation"],
    ]


def _has_twins(summary: pd.DataFrame) -> bool:
    return "variant" in summary and any(map(is_twin, summary["variant"]))


def samples_section(results: Results) -> list[str]:
    """The samples compare.py drew from each arm (experiments/sample.py), if it did: one grid per setting."""
    path = results.out / "samples" / "samples.json"
    if not path.is_file():
        return []
    record = json.loads(path.read_text())
    out = [
        "",
        "## Samples",
        "",
        f"Every arm of a setting continues the same prompt and draws the same captions (the first validation image of "
        f"each image source), seed {record['seed']}, temperature {record['temperature']}, top-k {record['top_k']}, "
        f"{record['diffusion_steps']} DDIM steps for continuous images. At tiny scale they are rough: they show the "
        "pieces fit, not what the papers' models draw. `python experiments/sample.py <run folder>` draws more.",
    ]
    for setting, entry in record["settings"].items():
        out += ["", f"### {setting}", "", f"Prompt: *{entry['prompt']}*", ""]
        rows = [[arm_label(arm), text.replace("\n", " ").replace("|", "/")] for arm, text in entry["texts"].items()]
        out += [markdown_table(["arm", "continuation"], rows)]
        if entry["grid"]:
            out += ["", f"![{setting}: {' / '.join(entry['captions'])}]({entry['grid']})"]
    return out


def _image(results: Results, plot: Plot) -> str:
    return f"![{plot.caption}]({plot.path.relative_to(results.out).as_posix()})"


def how_to_read(results: Results, summary: pd.DataFrame, points: int, val_every: object) -> list[str]:
    """The definitions, stated once: verdict, FLOPs-to-match, smoothing, tests, FLOPs convention, files."""
    runs = results.runs
    ratios = []
    if "flops_per_token" in runs:
        counted, analytic = runs["flops_per_token"], runs["flops_per_token_analytic"]
        ratios = list((analytic / counted)[(counted > 0) & (analytic > 0)])
    check = f"analytic / fvcore is {min(ratios):.4f}-{max(ratios):.4f} over the runs" if ratios else "no run to check"
    return [
        "## How to read this report",
        "",
        "- **Verdict: the loss gap at equal FLOPs.** Sparse seed k is paired with dense seed k (the same batches). "
        "Per pair, the sparse arm's smoothed loss at the dense arm's total training FLOPs minus the dense arm's "
        "smoothed loss there; over seeds, the mean and its Student-t 95% interval. With 3 or more seeds that interval "
        "alone gives the word: *better* (entirely below 0), *worse* (entirely above) or *no significant difference* "
        "(which is not evidence of no difference). One or two seeds give no verdict.",
        "- **FLOPs-to-match**, beside it: the training FLOPs at which the sparse arm first reaches the dense arm's "
        "*best* smoothed loss, divided by the FLOPs at which the dense arm first got there (on a curve still falling, "
        "its last evaluation). The dense arm against itself is exactly 100%. Over seeds: the geometric mean and the "
        "Student-t 95% interval of its log, with *fewer FLOPs* or *more FLOPs* when that interval excludes 100%. A "
        "seed that never reaches the target is counted, not dropped: the cell then reads *k/n reach; ≥ x%*, x the "
        "geometric mean with each such seed at its whole budget (a lower bound). It is read inside each run, as the "
        "papers read it: part-way through a decaying learning-rate schedule a curve lies above what a run of that "
        "budget reaches with its own schedule, so where a sparse arm reaches the target early this rule overstates "
        "its saving. `compare.py --budgets 0.4,0.6` adds the budget-matched measure, which reads only final losses, "
        "to this report; on the default recipe, where the sparse arms reach their targets late in their schedules, "
        'the two agreed within their intervals wherever both were defined (`docs/statistics.md`, "Within-run '
        'against budget-matched").',
        f"- **Smoothing (one rule for every number here)**: each evaluation's loss is the value of a quadratic in "
        f"log-FLOPs fitted (tricube weights) to the {points} evaluations around it (one-sided at the ends; "
        f"validation every {val_every} steps), on both arms: no lag. Implemented once, in `analysis/matching.py`; "
        "`docs/design.md` states the rule and its checks.",
        f"- **Training loss**: the per-step losses of the {val_every} steps ending at each evaluation step are "
        "averaged and placed at the block's middle step (a block's mean estimates the loss there), so training and "
        "validation loss live on one grid; then the same rule.",
        f"- **Dense curve** column: *steep k/n* when a dense curve's smoothed loss fell by more than {STEEP:.0%} of "
        "its final value over its last doubling of FLOPs (the baseline is far from converged: a saving may shrink "
        f"with a longer budget); *flat k/n* when it fell by less than {FLAT_SIGMAS:g} times its evaluations' noise, "
        "or turned up (FLOPs-to-match is ill-conditioned there: the loss gap is the number to read).",
        f"- **Tests**: {multiplicity_text(summary)}",
        "- **Null control**: "
        + (
            "the twins' section above measures how often this report's intervals call a difference where there is none."
            if _has_twins(summary)
            else "not run here; add `mamba_twin,transformer_twin` to `--arms` to measure, in this run, how often "
            "the intervals call a difference where there is none (`docs/statistics.md` has the measurement on the "
            "default recipe)."
        ),
        "- **Causality**: the Mamba arms are causal everywhere, by construction. The transformer arms attend causally "
        "across the sequence and, in the Transfusion setting, bidirectionally within each image, as Transfusion and "
        "MoT do; how the Mixture-of-Mamba paper treated images there is not known (docs/papers.md).",
        "- **FLOPs convention**: FLOPs = 2 × multiply-accumulates; training FLOPs = 3 × forward FLOPs; attention "
        "scores counted for the full L×L (no causal halving); embedding lookups free; output heads counted; the "
        "selective scan's elementwise work counted. Counted per token by fvcore (with handles for attention and the "
        f"scan) and cross-checked with the analytic formula in `analysis/flops.py`: {check}. A sparse arm has its "
        "dense arm's FLOPs per token (each token passes through one expert), so FLOPs-to-match equals "
        "steps-to-match.",
        "- **Units**: text, image-code and speech-unit losses are cross-entropy in nats; Transfusion's image loss is "
        "the diffusion ε-prediction MSE.",
        "- **Files**: `flops_to_match.csv` has one row per setting, loss kind (val/train), validation set, modality, "
        "sparse variant and seed (`fraction` empty when not reached, `at_least` its lower bound); "
        "`flops_to_match_summary.csv` aggregates it over seeds (means and 95% low/high, FLOPs-to-match geometric; "
        "empty where a seed lacks the number; the loss gap's p-value, unadjusted and Holm-adjusted); `curves.csv` "
        "holds every curve of every finished run (long format); `plots/` holds the figures.",
    ]


def _listed(runs: pd.DataFrame, column: str) -> list:
    """The entries of a list-valued summary field (data sources, data notes) over `runs`, in order; [] where no run
    recorded it (no summary.json)."""
    return [item for value in runs.get(column, []) if isinstance(value, list) for item in value]


def own_data(results: Results) -> bool:
    """Whether any run trained on a researcher's own corpus (its data sources name it)."""
    return any(str(s).startswith("own data") for s in _listed(results.runs, "data_sources"))


def setup_lines(results: Results) -> list[str]:
    """Data sources, recipe, versions, devices and total wall-clock."""
    meta, runs = results.meta, results.runs
    lines = ["## Setup", ""]
    for setting in results.settings:
        mine = runs[runs["setting"] == setting]
        sources = sorted(set(_listed(mine, "data_sources")))
        lines.append(f"- Data, {setting}: {'; '.join(sources) or 'not recorded (no summary.json)'}")
        # the first seed's runs: other seeds differ by a few tokens
        for note in dict.fromkeys(_listed(mine[mine["seed"] == runs["seed"].min()], "data_notes")):
            lines.append(f"  - left out of the data: {note}")
        mix = next((m for m in mine.get("image_mix", []) if isinstance(m, dict) and m), None)
        if mix:
            shares = "; ".join(
                f"{split} " + ", ".join(f"{source} {share:.0%}" for source, share in by_source.items())
                for split, by_source in mix.items()
                if by_source
            )
            lines.append(f"- Image tokens by source, {setting}: {shares}")
    for what, entries in (("Recipe (every run)", meta.recipe), ("Versions", meta.versions)):
        lines.append(f"- {what}: {', '.join(f'{k} {v}' for k, v in entries.items()) or 'not recorded'}")
    run_versions = sorted({json.dumps(v, sort_keys=True) for v in runs.get("versions", []) if isinstance(v, dict)})
    if len(run_versions) > 1:
        lines.append(f"- Runs recorded {len(run_versions)} different version sets: {'; '.join(run_versions)}")
    for what in ("device", "backend"):
        values = sorted({str(v) for v in runs[what] if isinstance(v, str)}) if what in runs else []
        lines.append(f"- {what.capitalize()}s: {', '.join(values) or 'not recorded'}")
    total = meta.wall_clock_s
    runs_total = runs["wall_clock_s"].fillna(0).sum() if "wall_clock_s" in runs else 0
    lines.append(
        f"- Wall-clock: {'not recorded' if total is None else f'{total:.0f} s'} for the comparison, "
        f"{runs_total:.0f} s summed over runs"
    )
    return lines


def _csv(frame: pd.DataFrame) -> str:
    """CSV text: booleans as true/false, missing numbers as empty cells."""
    words = {column: frame[column].map({True: "true", False: "false"}) for column in frame.select_dtypes(bool)}
    return frame.assign(**words).to_csv(index=False)


def write_report(out: str | Path, points: int = SMOOTHING_POINTS) -> Path:
    """Read `<out>/comparison.json` and its runs; write report.md, the CSVs and the plots into `<out>`; return
    report.md's path. ReportError when comparison.json is missing or corrupt (missing or unfinished runs are reported).
    """
    results = load_results(out)
    grid = evaluation_grid(results)
    matches = match_runs(results, grid, points)
    summary = summarise(matches)
    finals = final_losses(results, grid, points)
    plots = write_plots(results, grid, matches, summary)
    atomic_write(results.out / "curves.csv", _csv(results.curves))
    atomic_write(results.out / "flops_to_match.csv", _csv(matches))
    atomic_write(results.out / "flops_to_match_summary.csv", _csv(summary))
    budgets = []
    if shorter := budget_results(results.out):
        pairs, by_seeds = budget_summary(results, shorter, points)
        atomic_write(results.out / "budget_matched.csv", _csv(pairs))
        atomic_write(results.out / "budget_matched_summary.csv", _csv(by_seeds))
        steps = [r.meta.max_steps for r in shorter]
        budgets = budget_section(summary, by_seeds, steps, results.meta.max_steps)
    return atomic_write(results.out / "report.md", render_report(results, summary, finals, plots, points, budgets))


def headline(out: str | Path, points: int = SMOOTHING_POINTS) -> str:
    """The training-loss headline table of `<out>` and its verdicts, as Markdown: what the README shows of a run,
    rendered from the folder's runs so that it cannot drift from them."""
    results = load_results(out)
    summary = summarise(match_runs(results, evaluation_grid(results), points))
    lines = [match_table(results, summary, "train", papers=not own_data(results)), "", *verdicts(results, summary)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="results folder holding comparison.json")
    parser.add_argument("--headline", action="store_true",
                        help="print the training-loss headline table and its verdicts (the README's) instead of "
                        "writing the report")  # fmt: skip
    args = parser.parse_args(argv)
    try:
        if args.headline:
            print(headline(args.out), end="")
            return 0
        path = write_report(args.out)
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
