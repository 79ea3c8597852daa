"""Power at equal cost: the same CPU budget per arm and setting split three ways between seeds and tokens, and how
wide each split's loss-gap intervals come out.

    python benchmarks/power_splits.py

Trains (or, with --no-train, only reads) three comparisons of the four default arms in every setting, each with
1.23M training tokens per arm and setting summed over its seeds:

    3x8x200   3 seeds x 200 steps of 8 x 256 tokens (validation every 20 steps)
    5x8x120   5 seeds x 120 steps of 8 x 256 tokens (validation every 12 steps)
    6x4x200   6 seeds x 200 steps of 4 x 256 tokens (validation every 20 steps): the tiny recipe, chosen by this

and prints per split, over the cells of the report (sparse arm x setting x loss, training and validation): the
median half-width of the loss gap's 95% interval, the median |gap| / half-width, the verdicts, and the share of
dense curves flagged steep or flat at their end (pairs.curve_end), and the runs' training wall-clock summed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from analysis.labels import is_twin  # noqa: E402
from analysis.run_record import read_summary  # noqa: E402

ARMS = "mamba,mom,transformer,mot"
SPLITS = {
    "3x8x200": ["--seeds", "3", "--max-steps", "200", "--val-every", "20", "--data", "batch_size=8"],
    "5x8x120": ["--seeds", "5", "--max-steps", "120", "--val-every", "12", "--data", "batch_size=8"],
    "6x4x200": ["--seeds", "6", "--max-steps", "200", "--val-every", "20", "--data", "batch_size=4"],
}


def out(name: str) -> Path:
    return ROOT / "results" / "power" / name


def training_minutes(name: str) -> float:
    """The split's runs' training wall-clock, summed (a comparison runs two at a time on 2 cores)."""
    comparison = json.loads((out(name) / "comparison.json").read_text())
    folders = [ROOT / run["folder"] for run in comparison["runs"] if not is_twin(run["variant"])]
    return sum(read_summary(folder).wall_clock_s for folder in folders) / 60


def reading(name: str) -> dict:
    summary = pd.read_csv(out(name) / "flops_to_match_summary.csv", keep_default_na=False)
    summary = summary[~summary["variant"].map(is_twin)]
    gap = pd.to_numeric(summary["loss_gap_mean"])
    half = (pd.to_numeric(summary["loss_gap_high"]) - pd.to_numeric(summary["loss_gap_low"])) / 2
    pairs = pd.read_csv(out(name) / "flops_to_match.csv", keep_default_na=False)
    ends = pairs.drop_duplicates(["setting", "kind", "valset", "modality", "source", "dense_arm", "seed"])["dense_end"]
    verdicts = summary["verdict"].value_counts()
    return {
        "split": name,
        "cells": len(summary),
        "median half-width (loss units)": round(float(half.median()), 4),
        "median |gap| / half-width": round(float((gap.abs() / half).median()), 2),
        "better": int(verdicts.get("better", 0)),
        "worse": int(verdicts.get("worse", 0)),
        "dense curves steep": f"{(ends == 'steep').mean():.0%}",
        "dense curves flat": f"{(ends == 'flat').mean():.0%}",
        "training, summed (min)": round(training_minutes(name), 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-train", action="store_true", help="only read the splits' results folders")
    args = parser.parse_args()
    for name, extra in [] if args.no_train else SPLITS.items():
        command = [sys.executable, "experiments/compare.py", "--settings", "all", "--arms", ARMS, "--no-samples",
                   "--out", str(out(name)), *extra]  # fmt: skip
        print(" ".join(command[1:]), flush=True)
        subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(pd.DataFrame([reading(name) for name in SPLITS]).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
