"""The budget-matched FLOPs-to-match over seeds: each sparse arm's final losses at several training budgets (each
budget a run with its own full schedule) against its dense partner's final loss at the dense arm's full budget.

`run_finals` reads the runs of one or more results folders (one per budget) into final losses; `budget_pairs`
applies the rule (`analysis.matching.budget_match`, stated in analysis/matching.py) to every sparse run family
(setting, variant, seed, loss) against the dense run of its seed; `summarise_budgets` gives, per setting, loss and
variant, the geometric mean of the matched fractions and the Student-t interval of their log, as the within-run rule's
summary does. The dense arm against its own budgets matches at exactly 100%, and its null control (the twin arm at
the same budgets) is paired like a sparse arm.

`compare.py --budgets` writes the runs of each shorter budget as a results folder of their own,
`<out>/budgets/<steps>steps/` (`budget_folder`); `budget_summary` reads them beside `<out>`'s own runs and
`budget_section` is the report's section on them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from analysis.labels import dense_partner, is_twin, loss_label, modality_rank, pair_label, percent
from analysis.matching import SMOOTHING_POINTS, budget_match, log_interval, smooth
from analysis.pairs import fraction_verdict, interval, n_seeds
from analysis.results import Results, evaluation_grid, load_results, run_curves
from analysis.run_record import LossKey
from analysis.tables import fraction_cell, markdown_table, with_interval
from datamodules.settings import SETTINGS

LOSS = list(LossKey._fields)
FINAL_COLUMNS = ["setting", "arm", "variant", "seed", *LOSS, "budget", "final_loss"]


def budget_folder(out: str | Path, steps: int) -> Path:
    """The results folder of a comparison's runs at a shorter budget of `steps`."""
    return Path(out) / "budgets" / f"{steps}steps"


def budget_folders(out: str | Path) -> list[Path]:
    """The results folders of `out`'s shorter budgets, shortest first; [] when it has none."""
    found = budget_folder(out, 0).parent.glob("*steps/comparison.json")
    return [p.parent for p in sorted(found, key=lambda p: int(p.parent.name.removesuffix("steps")))]


def budget_results(out: str | Path) -> list[Results]:
    """`budget_folders(out)`, read."""
    return [load_results(folder) for folder in budget_folders(out)]


def run_finals(results: Results, points: int = SMOOTHING_POINTS) -> pd.DataFrame:
    """One row per finished run and loss: its identity, `budget` (its training FLOPs: steps times FLOPs per step)
    and `final_loss` (its smoothed loss at its last evaluation, as every report number smooths)."""
    finished = {(r.setting, r.variant, r.seed): r for r in results.finished.itertuples()}
    rows = [
        {"setting": setting, "arm": finished[(setting, variant, seed)].arm, "variant": variant, "seed": seed}
        | key._asdict()
        | {
            "budget": float(
                finished[(setting, variant, seed)].steps * finished[(setting, variant, seed)].train_flops_per_step
            )
        }
        | {"final_loss": float(smooth(curve.flops, curve.loss, points)[-1])}
        for (setting, variant, seed), curves in run_curves(evaluation_grid(results)).items()
        if (setting, variant, seed) in finished
        for key, curve in curves.items()
    ]
    return pd.DataFrame(rows, columns=FINAL_COLUMNS)


def budget_pairs(finals: pd.DataFrame) -> pd.DataFrame:
    """One row per (setting, loss, sparse or twin variant, seed) with runs at two budgets or more whose dense partner
    of that seed has a run: the sparse arm's budgets and final losses against the dense run at its largest budget,
    through `budget_match`. Columns: the identity, `dense_arm`, `budgets` (the sparse budgets over the dense one),
    `fraction`, `status`, `bound`."""
    rows = []
    keys = ["setting", *LOSS, "seed"]
    for identity, group in finals.groupby(keys, sort=False, dropna=False):
        by_variant = {variant: runs for variant, runs in group.groupby("variant", sort=False)}
        for variant, runs in by_variant.items():
            dense = dense_partner(runs["arm"].iloc[0])
            if dense not in by_variant or runs["budget"].nunique() < 2:  # a baseline; or nothing to fit
                continue
            full = by_variant[dense].loc[by_variant[dense]["budget"].idxmax()]
            match = budget_match(full["budget"], full["final_loss"], runs["budget"], runs["final_loss"])
            rows.append(
                dict(zip(keys, identity, strict=True))
                | {"variant": variant, "arm": runs["arm"].iloc[0], "dense_arm": dense}
                | {"budgets": " ".join(f"{b / full['budget']:.3g}" for b in sorted(runs["budget"]))}
                | {"fraction": match.fraction, "status": match.status, "bound": match.bound}
            )
    return pd.DataFrame(rows, columns=[*keys, "variant", "arm", "dense_arm", "budgets", "fraction", "status", "bound"])


def summarise_budgets(pairs: pd.DataFrame) -> pd.DataFrame:
    """Per setting, loss and variant over seeds: `seeds`, `n_matched`, `fraction_mean` / `_low` / `_high` (the
    geometric mean and the 95% interval of the log, when every seed matched) and `statuses` ("3 matched", "2 matched,
    1 not reached (≥ 100%)" ...)."""
    rows = []
    identity = ["setting", *LOSS, "variant", "arm", "dense_arm"]
    for values, group in pairs.groupby(identity, sort=False, dropna=False):
        fractions = group["fraction"].to_numpy(dtype=np.float64)
        mean, low, high = log_interval(fractions) if np.isfinite(fractions).all() else (None, None, None)
        counts = []
        for status, runs in group.groupby("status", sort=False):
            bound = "" if runs["bound"].isna().all() else f" ({'≥' if status == 'not reached' else '≤'} "
            bound += f"{100 * runs['bound'].max():.0f}%)" if bound else ""
            counts.append(f"{len(runs)} {status}{bound}")
        rows.append(
            dict(zip(identity, values, strict=True))
            | {"seeds": " ".join(map(str, group["seed"])), "n_matched": int((group["status"] == "matched").sum())}
            | {"fraction_mean": mean, "fraction_low": low, "fraction_high": high, "statuses": ", ".join(counts)}
        )
    return pd.DataFrame(rows)


def budget_summary(
    results: Results, shorter: list[Results], points: int = SMOOTHING_POINTS
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`results` (the comparison at its own budget) with its `shorter` budgets' results: the per-seed pairs
    (`budget_pairs`) and their summary over seeds (`summarise_budgets`), on every training and validation loss."""
    finals = pd.concat([run_finals(r, points) for r in [*shorter, results]], ignore_index=True)
    pairs = budget_pairs(finals)
    return pairs, summarise_budgets(pairs) if len(pairs) else pd.DataFrame()


def budget_section(summary: pd.DataFrame, budgets: pd.DataFrame, steps: list[int], full: int) -> list[str]:
    """The report's section: per setting, loss and sparse arm (and twin), the within-run FLOPs-to-match of the
    tables above (`summary`, analysis.pairs.summarise) beside the budget-matched one (`budgets`), on the training
    loss and the primary validation set."""
    head = [
        "## Budget-matched FLOPs-to-match (the learning-rate schedule's confound)",
        "",
        f"Each sparse arm (and twin) was also trained for {', '.join(map(str, steps))} steps, each run with its own "
        f"full warmup-and-decay schedule, beside its {full}-step run. **Budget-matched**: the training FLOPs at which "
        "its *final* loss, as a function of its budget (made non-increasing, interpolated in log-budget, never "
        "extrapolated), equals the dense arm's final loss, over the dense arm's FLOPs; over seeds the geometric mean "
        "and the 95% interval of its log, or how many seeds matched and the bound of the others. **Within-run**: the "
        "tables above, read inside one run as the papers read it, where part-way through a decaying schedule a curve "
        "lies above what a run of that budget reaches. The twins' rows should read 100%. The rule: `docs/design.md`; "
        "the two measured side by side on the default recipe: `docs/statistics.md`.",
        "",
    ]
    if budgets.empty:
        return head + ["No sparse arm has runs at two budgets or more with its dense partner's run beside them.", ""]
    keys = ["setting", *LOSS, "variant"]
    primary = budgets[(budgets["source"].fillna("") == "") & budgets["valset"].fillna("").isin(["", "val"])]
    within = {tuple(r[k] for k in keys): r for r in summary.to_dict("records")} if len(summary) else {}
    rows = []
    records = primary.to_dict("records")  # training loss first, then by setting and modality, each twin last
    settings = list(dict.fromkeys([*SETTINGS, *primary["setting"]]))
    records.sort(key=lambda r: (r["kind"] != "train", settings.index(r["setting"]), modality_rank(r["modality"]),
                                is_twin(r["arm"])))  # fmt: skip
    for r in records:
        fraction = interval(r, "fraction")  # None unless every seed matched
        matched = "–" if fraction is None else f"{with_interval(fraction, n_seeds(r), percent)} {fraction_verdict(r)}"
        other = within.get(tuple(r[k] for k in keys))
        rows.append([r["setting"], f"{r['kind']} {loss_label(LossKey(*(r[k] for k in LOSS)))}",
                     pair_label(r["variant"]), "–" if other is None else fraction_cell(other), matched.strip(),
                     r["statuses"]])  # fmt: skip
    header = ["setting", "loss", "pair", "within-run", "budget-matched", "seeds (budget-matched)"]
    return [*head, markdown_table(header, rows), ""]
