"""The report's Markdown tables and verdicts, built from the DataFrames of analysis/pairs.py (the notebooks call
these too).

`summary` is `pairs.summarise(matches)`: one row per setting, loss, sparse variant, over seeds. The headline of a
cell is the loss gap at equal FLOPs, "mean [low, high]" (95% interval) and its verdict; FLOPs-to-match beside it is
a geometric mean with the interval of its log, or, when some seed did not reach the target, how many did and the
lower bound the budgets give ("2/3 reach; ≥ 96.0%"), never a mean of the seeds that reached.
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from analysis.labels import (
    KIND_WORDS,
    arm_label,
    arm_rank,
    dense_partner,
    is_twin,
    loss_label,
    loss_rank,
    loss_unit,
    modality_rank,
    pair_label,
    percent,
)
from analysis.matching import mean_interval
from analysis.metrics import Metric
from analysis.pairs import MIN_SEEDS, Interval, ablation_cells, interval, loss_key, n_seeds, not_reached_text
from analysis.papers import PAPER_NUMBERS, PAPER_SOURCES
from analysis.results import Results
from analysis.run_record import LossKey


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def with_interval(value: Interval | None, n: int, fmt: Callable[[float], str]) -> str:
    if value is None:
        return "n/a"
    mean, low, high = value
    return fmt(mean) if n == 1 else f"{fmt(mean)} [{fmt(low)}, {fmt(high)}]"


def fraction_cell(agg: dict | None) -> str:
    """FLOPs-to-match: '78.1%' (one seed), '78.1% [70.2%, 86.0%]' over seeds (geometric mean, interval of the log),
    with its word ('fewer FLOPs', 'more FLOPs') when that interval excludes 100%; '2/3 reach; ≥ 96.0%' when some
    seed did not reach; '–' when not run."""
    if agg is None:
        return "–"
    fraction = interval(agg, "fraction")
    if fraction is None:
        return not_reached_text(agg)
    cell = with_interval(fraction, n_seeds(agg), percent)
    return f"{cell} {agg['fraction_verdict']}" if agg.get("fraction_verdict") else cell


def gap_cell(agg: dict | None) -> str:
    """The loss gap at equal FLOPs, sparse - dense: '-0.052 [-0.081, -0.023] better' with its verdict (MIN_SEEDS
    or more seeds); '–' when not run, 'n/a' when the sparse run is shorter than the dense one."""
    if agg is None:
        return "–"
    cell = with_interval(interval(agg, "loss_gap"), n_seeds(agg), "{:+.3f}".format)
    return f"{cell} {agg['verdict']}" if n_seeds(agg) >= MIN_SEEDS and cell != "n/a" else cell


def main_pairs(summary: pd.DataFrame, kind: str) -> dict[tuple[str, LossKey, str], dict]:
    """Summary rows of one loss kind for the main, control and twin arms (ablation variants left out), keyed for
    lookup."""
    rows = [r for r in summary.to_dict("records") if r["kind"] == kind and r["variant"] == r["arm"]]
    return {(r["setting"], loss_key(r), r["variant"]): r for r in rows}


def _by_loss(results: Results, found: dict) -> tuple[list[str], list[tuple[str, LossKey, list[dict | None]]]]:
    """The variants of `found` (`main_pairs`) in arm order, and per setting and loss, in table order, each variant's
    summary row (None where it has none)."""
    settings, variants = results.settings, sorted({v for _, _, v in found}, key=arm_rank)
    keys = sorted({(s, k) for s, k, _ in found}, key=lambda sk: (settings.index(sk[0]), loss_rank(sk[1])))
    return variants, [(s, k, [found.get((s, k, v)) for v in variants]) for s, k in keys]


def match_table(
    results: Results, summary: pd.DataFrame, kind: str = "train", papers: bool = True, twins: bool = False
) -> str:
    """The headline per setting and loss: for each sparse arm (or, with `twins`, each twin: the null control) the
    loss gap at equal FLOPs with its verdict, FLOPs-to-match (% of the dense arm's FLOPs to its best loss) with its
    own word, and the dense curves' ends where they qualify it; then (with `papers`) the papers' numbers for the same
    setting and modality with their source keys."""
    found = {k: v for k, v in main_pairs(summary, kind).items() if is_twin(k[2]) == twins}
    if not found:
        return f"No finished {'twin' if twins else 'sparse'}/dense pair has a {kind} loss."
    variants, by_loss = _by_loss(results, found)
    paper_arms = [v for v in variants if papers and any(arm == v for arm, _, _ in PAPER_NUMBERS)]
    header = ["setting", "loss", "unit"]
    for v in variants:
        pair = pair_label(v)
        header += [f"{pair}: loss gap", f"{pair}: FLOPs-to-match", f"{arm_label(dense_partner(v))} curve"]
    header += [f"{arm_label(a)} (paper)" for a in paper_arms]
    rows = []
    for setting, key, aggs in by_loss:
        primary = key.valset in ("val", "") and not key.source
        published = [PAPER_NUMBERS.get((a, setting, key.modality)) if primary else None for a in paper_arms]
        cells = [setting, loss_label(key), loss_unit(setting, key.modality)]
        for agg in aggs:
            # the dense curves' ends (pairs.curve_end): 'steep 3/3' (the baseline is still improving fast), 'flat 1/3'
            # (FLOPs-to-match is ill-conditioned there)
            end = agg["dense_end"] if agg is not None and isinstance(agg.get("dense_end"), str) else ""
            cells += [gap_cell(agg), fraction_cell(agg), end]
        cells += ["" if p is None else f"{p.value} at {p.scale} [{p.source}]" for p in published]
        rows.append(cells)
    return markdown_table(header, rows)


VERDICTS = ("better", "worse", "no significant difference")


def verdict_tests(summary: pd.DataFrame, twins: bool) -> tuple[list[dict], list[dict], list[dict]]:
    """The twins' (or the other variants') summary rows with a verdict, those of them that say "better" or "worse"
    from the unadjusted interval, and those of these that stay significant after Holm's adjustment."""
    rows = [r for r in summary.to_dict("records") if r["verdict"] in VERDICTS and is_twin(r["variant"]) == twins]
    positive = [r for r in rows if r["verdict"] != "no significant difference"]
    kept = [r for r in positive if not pd.isna(r.get("loss_gap_p_holm")) and r["loss_gap_p_holm"] < 0.05]
    return rows, positive, kept


def multiplicity_text(summary: pd.DataFrame) -> str:
    """How many tests the report's verdicts make and what Holm's adjustment leaves of them."""
    rows, positive, kept = verdict_tests(summary, twins=False)
    named = "; ".join(
        f"{r['setting']} {loss_label(loss_key(r))}, {KIND_WORDS[r['kind']]} loss, {pair_label(r['variant'])} "
        f"({r['verdict']})"
        for r in kept
    )
    return (
        f"{len(rows)} verdicts are tests at the 5% level (one per sparse arm, setting and loss; the twins' aside); "
        f"{len(positive)} say *better* or *worse* from the unadjusted 95% intervals shown, {len(kept)} of them remain "
        f"significant after Holm's adjustment over all of them (`loss_gap_p_holm` in flops_to_match_summary.csv)"
        + (f": {named}." if kept else ".")
    )


def params_table(results: Results) -> str:
    """Total and active parameters of every arm per setting (a sparse arm holds one copy of its decoupled parts per
    modality; each token passes through one)."""
    runs = results.runs[results.runs["variant"] == results.runs["arm"]]
    if "params_total" not in runs or runs["params_total"].isna().all():
        return "No run recorded its parameters."
    variants = sorted(set(runs["variant"]), key=arm_rank)
    rows = []
    for setting in results.settings:
        mine = runs[runs["setting"] == setting]
        cells = []
        for v in variants:
            counts = mine.loc[mine["variant"] == v, ["params_total", "params_active"]].dropna()
            if counts.empty:
                cells.append("–")
                continue
            total, active = counts.iloc[0] / 1e6
            cells.append(f"{total:.2f}M" if total == active else f"{total:.2f}M ({active:.2f}M active)")
        rows.append([setting, *cells])
    return markdown_table(["setting", *map(arm_label, variants)], rows)


def paper_sources(results: Results) -> str:
    """The sources of the papers' numbers that the tables cite, one line each."""
    arms, settings = set(results.runs["arm"]), results.settings
    cited = {p.source for (arm, setting, _), p in PAPER_NUMBERS.items() if arm in arms and setting in settings}
    return "\n".join(f"- [{key}] {text}" for key, text in PAPER_SOURCES.items() if key in cited)


def metric_table(results: Results, summary: pd.DataFrame, metric: Metric) -> str:
    """A table of one metric (analysis/metrics.py) on validation loss, one column per sparse arm."""
    found = main_pairs(summary, "val")
    if not found:
        return "No finished sparse/dense pair."
    variants, by_loss = _by_loss(results, found)
    unit = metric.in_loss_unit
    rows = []
    for setting, key, aggs in by_loss:
        cells = []
        for agg in aggs:
            if agg is None:
                cells.append("–")
            elif metric.needs_reach and interval(agg, "fraction") is None:
                cells.append(not_reached_text(agg))
            else:
                cells.append(with_interval(interval(agg, metric.name), n_seeds(agg), metric.fmt))
        rows.append([setting, loss_label(key), *([loss_unit(setting, key.modality)] if unit else []), *cells])
    header = ["setting", "loss", *(["unit"] if unit else []), *map(pair_label, variants)]
    return markdown_table(header, rows)


def ablation_table(results: Results, summary: pd.DataFrame, finals: pd.DataFrame) -> str:
    """Every variant of the ablation arm against its dense arm: FLOPs-to-match and final loss per modality."""
    setting = results.meta.ablation_setting
    variants, found = ablation_cells(results, summary)
    if not setting or not variants:
        return "No ablation in this comparison (meta.ablation_setting is not set)."
    primary = finals.query("setting == @setting and kind == 'val' and valset == 'val' and source == ''")
    final_values = primary.groupby(["variant", "modality"])["final_loss"].agg(list).to_dict()
    dense = dense_partner(results.meta.ablation_arm)
    modalities = sorted({m for _, m in final_values}, key=modality_rank)

    def final(variant: str, modality: str) -> str:
        values = final_values.get((variant, modality))
        return "–" if not values else with_interval(mean_interval(values), len(values), "{:.4f}".format)

    runs = results.runs[results.runs["setting"] == setting]
    statuses = {variant: ", ".join(sorted(set(group["status"]))) for variant, group in runs.groupby("variant")}
    table = [
        [
            f"{label} (`{variant}`)",
            *[fraction_cell(found.get((variant, m))) for m in modalities],
            *[final(variant, m) for m in modalities],
            statuses.get(variant, ""),
        ]
        for variant, label in variants
    ]
    table.append(
        [f"none: dense {arm_label(dense)} (`{dense}`)", *["100% (baseline)"] * len(modalities)]
        + [final(dense, m) for m in modalities]
        + [statuses.get(dense) or "not run"]
    )
    header = ["decoupled", *[f"FLOPs-to-match {m}" for m in modalities], *[f"final {m} loss" for m in modalities]]
    return markdown_table([*header, "status"], table)


def _field(run, name: str, fmt: str = "", scale: float = 1.0) -> str:
    """A run's field in a table, '–' where it has none; with `fmt`, a number formatted after dividing by `scale`."""
    value = getattr(run, name, None)
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "–"
    return format(value / scale, fmt) if fmt else str(value)


def runs_table(results: Results) -> str:
    """Every run of comparison.json with its status, sizes, FLOPs per token (fvcore and analytic), backend, time."""
    rows = []
    for r in results.runs.itertuples():
        counted, analytic = getattr(r, "flops_per_token", None), getattr(r, "flops_per_token_analytic", None)
        ratio = f"{analytic / counted:.4f}" if counted and analytic and not pd.isna(counted) else "–"
        finished = r.status == "finished"
        rows.append(
            [
                r.setting,
                r.variant,
                str(r.seed),
                r.status if finished else f"**{r.status}**",
                _field(r, "steps", ".0f"),
                _field(r, "params_total", ".3f", 1e6),
                _field(r, "params_active", ".3f", 1e6),
                _field(r, "flops_per_token", ".4g"),
                ratio,
                _field(r, "backend"),
                _field(r, "device"),
                _field(r, "wall_clock_s", ".0f"),
                "" if finished else f"excluded: {r.reason or 'no reason recorded'}",
            ]
        )
    header = ["setting", "variant", "seed", "status", "steps", "params total (M)", "params active (M)"]
    header += ["train FLOPs/token (fvcore)", "analytic / fvcore", "backend", "device", "wall-clock (s)", "note"]
    return markdown_table(header, rows)


def verdicts(results: Results, summary: pd.DataFrame, kind: str = "train") -> list[str]:
    """One line per setting on one loss kind (training loss: the papers' measure), e.g. '**chameleon**: MoM better
    on text (-0.052 [-0.081, -0.023] nats at equal FLOPs; FLOPs-to-match 81.0% [70.1%, 93.5%], fewer FLOPs), no
    significant difference on image (...)'. The word comes from the loss gap's interval alone. With fewer than 3
    seeds it says where each arm reached its dense arm's best loss, and that so few seeds give no verdict."""
    found = {k: v for k, v in main_pairs(summary, kind).items() if not is_twin(k[2])}
    lines = []
    for setting in results.settings:
        sentences = []
        for variant in sorted({v for s, _, v in found if s == setting}, key=arm_rank):
            aggs = [a for (s, k, v), a in found.items() if (s, v) == (setting, variant) and k.valset in ("val", "")]
            aggs = [a for a in aggs if not a["source"]]
            sentences.append(_verdict(setting, sorted(aggs, key=lambda a: loss_rank(loss_key(a)))))
        body = "; ".join(sentences) + "." if sentences else "no finished sparse/dense pair, so no verdict."
        lines.append(f"- **{setting}**: {body}")
    return lines


def _joined(items: list[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def _loss_gap_text(agg: dict, setting: str) -> str:
    gap = interval(agg, "loss_gap")
    if gap is None:
        return "no loss at equal FLOPs (the sparse run is shorter)"
    return f"{with_interval(gap, n_seeds(agg), '{:+.3f}'.format)} {loss_unit(setting, agg['modality'])} at equal FLOPs"


def _verdict(setting: str, aggs: list[dict]) -> str:
    """One sparse arm's clause: with intervals, its verdict per modality with the loss gap and FLOPs-to-match
    beside it; without, where it reached its dense arm's best loss and where not."""
    sparse, dense = arm_label(aggs[0]["arm"]), arm_label(aggs[0]["dense_arm"])
    n = n_seeds(aggs[0])
    if n >= MIN_SEEDS:
        parts = [
            f"{a['verdict']} on {a['modality']} ({_loss_gap_text(a, setting)}; FLOPs-to-match {fraction_cell(a)})"
            for a in aggs
        ]
        return f"{sparse} " + ", ".join(parts) + f" ({n} seeds, 95% intervals)"
    reached, partial, missed = [], [], []
    for a in aggs:
        fraction = interval(a, "fraction")
        if fraction is not None:
            reached.append(f"on {a['modality']} at {percent(fraction[0])}")
        elif a["n_reached"]:
            partial.append(f"on {a['modality']} in only {a['n_reached']}/{n} seeds")
        else:
            missed.append(f"on {a['modality']} ({_loss_gap_text(a, setting)})")
    seeds = f" (geometric means over {n} seeds, too few for a verdict)" if n > 1 else " (one seed: no verdict)"
    clauses = [f"reached {dense}'s best loss {_joined(reached)} of {dense}'s FLOPs{seeds}"] if reached else []
    clauses += [f"reached {dense}'s best loss {_joined(partial)}"] if partial else []
    clauses += [f"did not reach {dense}'s best loss {_joined(missed)}"] if missed else []
    return f"{sparse} " + ", but ".join(clauses)
