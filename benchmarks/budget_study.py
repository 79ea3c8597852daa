"""The schedule's confound in FLOPs-to-match, measured: the within-run rule (the report's, the papers') beside the
budget-matched one (analysis/budgets.py), per setting, loss and sparse arm, with the twins as the null control.

    python benchmarks/budget_study.py --budgets 0.4,0.6 --seeds 3
    python benchmarks/budget_study.py --no-train --wsd results/wsd      # and the dense arms under WSD vs cosine

It runs the comparison of every default arm and both twins with `compare.py --budgets` into
results/budget-study/ (the sparse arms and twins also at each shorter budget, each run with its own full
warmup-and-cosine schedule) and prints the report's section that sets the two measures side by side. With --wsd
FOLDER (a comparison of the dense arms trained with `compare.py --schedule wsd`), it also sets each dense arm's final
loss under WSD beside its cosine one (paired by seed: the mean difference and its 95% interval). docs/statistics.md
has the measurement.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from analysis.budgets import run_finals  # noqa: E402
from analysis.matching import mean_interval  # noqa: E402
from analysis.results import load_results  # noqa: E402

OUT = ROOT / "results" / "budget-study"
ARM_LIST = ("mamba", "mom", "transformer", "mot", "mamba_twin", "transformer_twin")
CELL = ["setting", "kind", "modality", "variant"]


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
    parser.add_argument("--budgets", default="0.4,0.6", help="compare.py --budgets: the shorter budgets' fractions")
    parser.add_argument("--seeds", default="3", help="compare.py --seeds")
    parser.add_argument("--no-train", action="store_true", help="only read the study's results folder")
    parser.add_argument("--wsd", type=Path, help="a results folder of the dense arms trained with --schedule wsd")
    args = parser.parse_args()
    if not args.no_train:
        command = [sys.executable, "experiments/compare.py", "--settings", "all", "--arms", ",".join(ARM_LIST),
                   "--seeds", args.seeds, "--budgets", args.budgets, "--no-samples", "--out", str(OUT)]  # fmt: skip
        print(" ".join(command[1:]), flush=True)
        subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    report = (OUT / "report.md").read_text()
    print("## Budget-matched" + report.split("## Budget-matched")[1].split("\n## ")[0])
    if args.wsd:
        with pd.option_context("display.width", 250, "display.max_rows", 200):
            print("\ndense arms' final loss, WSD vs cosine (the recipe's budget)")
            print(schedules(OUT, args.wsd).round(4).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
