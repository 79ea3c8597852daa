"""The schedule's confound in FLOPs-to-match, measured: the within-run rule (the report's, the papers') beside the
budget-matched one (analysis/budgets.py), per setting, loss and sparse arm, with the twins as the null control.

    python benchmarks/budget_study.py --budgets 80,120 --seeds 3
    python benchmarks/budget_study.py --no-train --wsd results/wsd      # and the dense arms under WSD vs cosine

It runs compare.py at the recipe's budget (every arm given) and at each shorter budget (the sparse and twin arms
only, each run with its own full warmup-and-cosine schedule, validated ten times: --max-steps N --val-every N/10),
into results/budget-study/steps<N>/, then reads the final losses of every budget (`analysis.budgets`) and prints,
for the training loss (the papers' measure) and the primary validation loss, each cell's within-run FLOPs-to-match
(the full-budget report's) and its budget-matched FLOPs-to-match, and writes both to
results/budget-study/budget_study.csv. With --wsd FOLDER (a comparison of the dense arms trained with
`compare.py --schedule wsd`), it also sets each dense arm's final loss under WSD beside its cosine one (paired by
seed: the mean difference and its 95% interval). docs/statistics.md has the measurement.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from analysis.budgets import budget_pairs, run_finals, summarise_budgets  # noqa: E402
from analysis.matching import mean_interval  # noqa: E402
from analysis.results import load_results  # noqa: E402
from experiments.recipes import RECIPES  # noqa: E402
from models import ARMS  # noqa: E402

OUT = ROOT / "results" / "budget-study"
ARM_LIST = ("mamba", "mom", "transformer", "mot", "mamba_twin", "transformer_twin")
CELL = ["setting", "kind", "modality", "variant"]


def interval_text(mean, low, high) -> str:
    return "" if pd.isna(mean) else f"{100 * mean:.1f}% [{100 * low:.1f}%, {100 * high:.1f}%]"


def within_run(folder: Path) -> pd.DataFrame:
    """The full-budget report's FLOPs-to-match per cell, as its tables write it."""
    summary = pd.read_csv(folder / "flops_to_match_summary.csv")
    summary[["source", "valset"]] = summary[["source", "valset"]].fillna("")
    summary = summary[(summary["source"] == "") & summary["valset"].isin(["", "val"])]
    seeds = summary["seeds"].astype(str).str.split().str.len()
    text = [
        interval_text(r.fraction_mean, r.fraction_low, r.fraction_high)
        or f"{r.n_reached}/{n} reach; ≥ {100 * r.fraction_at_least:.1f}%"
        for r, n in zip(summary.itertuples(), seeds, strict=True)
    ]
    return summary.assign(within_run=text)[[*CELL, "within_run"]]


def schedules(cosine: Path, wsd: Path) -> pd.DataFrame:
    """Each dense arm's final loss per setting and loss under both schedules, paired by seed: means and the mean
    difference (WSD minus cosine) with its 95% interval."""
    finals = [run_finals(load_results(folder)).assign(schedule=name) for name, folder in (("cosine", cosine),
                                                                                          ("wsd", wsd))]  # fmt: skip
    frame = pd.concat(finals, ignore_index=True)
    frame = frame[frame["variant"].isin(["mamba", "transformer"]) & (frame["source"].fillna("") == "")]
    frame = frame[frame["valset"].fillna("").isin(["", "val"])]
    wide = frame.pivot_table(index=[*CELL, "seed"], columns="schedule", values="final_loss").dropna().reset_index()
    rows = []
    for cell, group in wide.groupby(CELL, sort=False):
        mean, low, high = mean_interval(group["wsd"] - group["cosine"])
        rows.append(dict(zip(CELL, cell, strict=True)) | {"cosine": group["cosine"].mean(), "wsd": group["wsd"].mean(),
                                                          "wsd_minus_cosine": f"{mean:+.4f} [{low:+.4f}, {high:+.4f}]",
                                                          "seeds": len(group)})  # fmt: skip
    return pd.DataFrame(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budgets", default="80,120", help="the shorter budgets, in steps (comma list)")
    parser.add_argument("--seeds", default="3", help="compare.py --seeds")
    parser.add_argument("--no-train", action="store_true", help="only read the study's results folders")
    parser.add_argument("--wsd", type=Path, help="a results folder of the dense arms trained with --schedule wsd")
    args = parser.parse_args()
    full = RECIPES["tiny"].max_steps
    budgets = sorted({int(b) for b in args.budgets.split(",")} | {full})
    sparse = [a for a in ARM_LIST if ARMS[a].dense is not None]
    folders = {steps: OUT / f"steps{steps}" for steps in budgets}
    for steps in [] if args.no_train else budgets:
        arms = ARM_LIST if steps == full else sparse
        command = [sys.executable, "experiments/compare.py", "--settings", "all", "--arms", ",".join(arms),
                   "--seeds", args.seeds, "--no-samples", "--out", str(folders[steps])]  # fmt: skip
        if steps != full:
            command += ["--max-steps", str(steps), "--val-every", str(max(1, steps // 10))]
        print(" ".join(command[1:]), flush=True)
        subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    finals = pd.concat([run_finals(load_results(folder)) for folder in folders.values()], ignore_index=True)
    pairs = budget_pairs(finals)
    pairs = pairs[(pairs["source"].fillna("") == "") & pairs["valset"].fillna("").isin(["", "val"])]
    summary = summarise_budgets(pairs)
    summary["budget_matched"] = [
        interval_text(r.fraction_mean, r.fraction_low, r.fraction_high) or r.statuses for r in summary.itertuples()
    ]
    table = within_run(folders[full]).merge(summary[[*CELL, "budget_matched", "statuses"]], on=CELL, how="right")
    OUT.mkdir(parents=True, exist_ok=True)
    table.to_csv(OUT / "budget_study.csv", index=False)
    pairs.to_csv(OUT / "budget_pairs.csv", index=False)
    with pd.option_context("display.width", 250, "display.max_colwidth", 60, "display.max_rows", 200):
        print(f"budgets {budgets} steps; within-run (the report's) vs budget-matched FLOPs-to-match")
        print(table.to_string(index=False))
        if args.wsd:
            print("\ndense arms' final loss, WSD vs cosine (the recipe's budget)")
            print(schedules(folders[full], args.wsd).round(4).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
