"""The learning-rate sweep the default recipe's peak lr is taken from: the dense arms alone (Mamba, transformer,
Mamba-2), each family on its own, every setting, the recipe's other values unchanged (or its batch size set by
--batch-size).

    python benchmarks/lr_sweep.py --lrs 1e-3,2e-3,4e-3,8e-3 --seeds 2
    python benchmarks/lr_sweep.py --scale mini --settings chameleon --families mamba --lrs 2e-3,4e-3,8e-3

For each lr it runs `compare.py --scale <scale> --settings <settings> --arms <families> --lr <lr>` (runs under
runs/, reports under results/lr-sweep/<scale>-batch<B>/<families>/), then prints, per family and lr, every setting
and validation loss's final smoothed value (mean over seeds) and their mean excess over the best lr of that loss (in
percent of it): the lr with the lowest mean excess is the family's. The sparse arms never enter it; they train with
their dense partner's recipe.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from analysis.pairs import final_losses  # noqa: E402
from analysis.results import evaluation_grid, load_results  # noqa: E402
from experiments.recipes import RECIPES  # noqa: E402

FAMILIES = {"mamba": "Mamba", "transformer": "transformer", "mamba2": "Mamba-2"}


def sweep_out(scale: str, batch_size: int, families: str, lr: float) -> Path:
    """One lr's results folder; the families swept together share it (two sweeps of other families never do)."""
    return ROOT / "results" / "lr-sweep" / f"{scale}-batch{batch_size}" / families.replace(",", "+") / f"lr{lr:g}"


def finals(scale: str, batch_size: int, families: str, lr: float) -> pd.DataFrame:
    """The final smoothed validation losses (whole validation set, per modality) of one lr's runs."""
    results = load_results(sweep_out(scale, batch_size, families, lr))
    frame = final_losses(results, evaluation_grid(results))
    frame = frame[(frame["kind"] == "val") & (frame["valset"] == "val") & (frame["source"] == "")]
    return frame.assign(lr=lr)


def table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per family and lr: the mean over seeds of every (setting, modality) loss, and the mean excess over the best
    lr of each loss."""
    means = frame.groupby(["variant", "setting", "modality", "lr"])["final_loss"].mean().unstack("lr")
    excess = 100 * (means.div(means.min(axis=1), axis=0) - 1)
    rows = []
    trained = [f for f in FAMILIES if f in means.index.get_level_values("variant")]
    for family in trained:  # lrs a family was not trained at are NaN, left out of its mean
        mine = excess.loc[family]
        rows.append(mine.mean().rename(f"{family}: mean excess over the best lr (%)"))
        for (setting, modality), values in means.loc[family].iterrows():
            rows.append(values.rename(f"{family}: {setting} {modality}"))
    return pd.DataFrame(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lrs", default="1e-3,2e-3,4e-3,8e-3", help="comma list of peak learning rates")
    parser.add_argument("--seeds", default="2", help="compare.py --seeds")
    parser.add_argument("--scale", default="tiny", choices=RECIPES, help="the scale and recipe swept")
    parser.add_argument("--settings", default="all", help="compare.py --settings")
    parser.add_argument("--batch-size", type=int, help="sequences per step (default: the scale's recipe's)")
    parser.add_argument("--families", default=",".join(FAMILIES), help="the dense arms to train (every family is read)")
    parser.add_argument("--no-train", action="store_true", help="only read the sweep's results folders")
    args = parser.parse_args()
    lrs = [float(v) for v in args.lrs.split(",")]
    batch = args.batch_size or RECIPES[args.scale].batch_size
    for lr in [] if args.no_train else lrs:
        command = [sys.executable, "experiments/compare.py", "--scale", args.scale, "--settings", args.settings,
                   "--arms", args.families, "--seeds", args.seeds, "--lr", f"{lr:g}", "--data", f"batch_size={batch}",
                   "--no-samples", "--out", str(sweep_out(args.scale, batch, args.families, lr))]  # fmt: skip
        print(" ".join(command[1:]), flush=True)
        subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    result = table(pd.concat([finals(args.scale, batch, args.families, lr) for lr in lrs]))
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(result.round(4).to_string())
    for family, name in FAMILIES.items():
        if f"{family}: mean excess over the best lr (%)" in result.index:
            print(f"{name}: best peak lr {result.loc[f'{family}: mean excess over the best lr (%)'].idxmin():g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
