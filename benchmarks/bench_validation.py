"""Is validation precise enough, and what does it cost? Evaluation noise beside seed noise, from finished runs.

    python benchmarks/bench_validation.py --root runs --setting chameleon --pairs mamba:mom,transformer:mot --seeds 3

For every run of the pairs and seeds it loads the final checkpoint and scores each validation sequence alone
(the validation loop's losses, per modality). From these per-sequence losses:

* eval SE: the standard error of a run's validation loss from its finite set of sequences (token-weighted ratio
  estimator), averaged over seeds; and of the paired gap sparse - dense (both arms score the same sequences, so
  the gap's error is what a FLOPs-to-match verdict feels);
* seed SD: the standard deviation over seeds of the final validation loss, and of the final gap.

Evaluation noise below seed noise means more validation sequences would not tighten a verdict; more seeds would.
It also prints each run's share of wall-clock spent in validation (the extra time of the steps that follow an
evaluation in metrics.csv).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis.run_record import CONFIG, METRICS, STEP, TRAIN_LOSS, WALL, run_dir  # noqa: E402
from datamodules.multimodal import MultiModalDataModule  # noqa: E402
from experiments.export import load_run_module  # noqa: E402
from experiments.losses import loss_positions  # noqa: E402
from experiments.recipes import RECIPES, recipe_id  # noqa: E402


@torch.no_grad()
def per_sequence_losses(folder: Path) -> pd.DataFrame:
    """(valset, sequence, modality) -> loss and positions of one run's final model, one sequence at a time."""
    config = json.loads((folder / CONFIG).read_text())
    dm = MultiModalDataModule(**config["data"])
    dm.prepare_data()
    dm.setup("validate")
    lit = load_run_module(folder).eval()
    rows = []
    dm.batch_size = 1  # the validation loader, one sequence per batch
    for valset, loader in zip(dm.val_sets, dm.val_dataloader(), strict=True):
        for i, batch in enumerate(loader):
            losses = lit._shared_step(batch)
            for name, n in loss_positions(batch, lit.cfg.n_modalities).items():
                if n > 0:
                    rows.append((valset, i, name, float(losses[f"loss_{name}"]), float(n)))
    return pd.DataFrame(rows, columns=["valset", "sequence", "modality", "loss", "positions"])


def weighted_mean_se(loss: np.ndarray, weight: np.ndarray) -> tuple[float, float]:
    """Token-weighted mean of per-sequence mean losses and its standard error (ratio estimator)."""
    mean = float((loss * weight).sum() / weight.sum())
    resid = weight * (loss - mean) / weight.mean()
    return mean, float(resid.std(ddof=1) / np.sqrt(len(loss)))


def validation_share(folder: Path) -> float:
    """Share of the run's training wall-clock spent in validation."""
    metrics = pd.read_csv(folder / METRICS)
    wall = metrics.dropna(subset=[TRAIN_LOSS]).drop_duplicates(STEP).set_index(STEP)[WALL]
    gaps = wall.diff().dropna()
    config = json.loads((folder / CONFIG).read_text())
    after_eval = [s for s in gaps.index if s % config["val_every"] == 0]
    return float((gaps - gaps.median()).clip(lower=0).loc[after_eval].sum() / wall.iloc[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="runs")
    parser.add_argument("--setting", default="chameleon")
    parser.add_argument("--scale", default="tiny")
    parser.add_argument("--recipe", help="the runs' recipe name, as in their folders (default: the scale's own)")
    parser.add_argument("--pairs", default="mamba:mom,transformer:mot", help="dense:sparse,...")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    own = RECIPES[args.scale]
    recipe = args.recipe or recipe_id(args.scale, own.max_steps, own.val_every, own.data(), own.module(), own.precision)
    rows, shares = [], {}
    for pair in args.pairs.split(","):
        dense, sparse = pair.split(":")
        scores = {}
        for arm in (dense, sparse):
            for seed in range(args.seeds):
                folder = run_dir(args.root, args.setting, args.scale, recipe, arm, seed)
                scores[arm, seed] = per_sequence_losses(folder)
                shares[f"{arm} seed{seed}"] = validation_share(folder)
        keys = scores[dense, 0][["valset", "modality"]].drop_duplicates().itertuples(index=False)
        for valset, modality in keys:

            def pick(arm, seed, valset=valset, modality=modality, scores=scores):
                s = scores[arm, seed]
                return s[(s.valset == valset) & (s.modality == modality)].sort_values("sequence")

            finals, gaps, eval_se, gap_se = {dense: [], sparse: []}, [], [], []
            for seed in range(args.seeds):
                d, s = pick(dense, seed), pick(sparse, seed)
                for arm, table in ((dense, d), (sparse, s)):
                    mean, se = weighted_mean_se(table.loss.to_numpy(), table.positions.to_numpy())
                    finals[arm].append(mean)
                    eval_se.append(se)
                w = d.positions.to_numpy()
                gap, se = weighted_mean_se(s.loss.to_numpy() - d.loss.to_numpy(), w)
                gaps.append(gap)
                gap_se.append(se)
            seed_sd = np.mean([np.std(finals[a], ddof=1) for a in (dense, sparse)])
            rows.append({
                "pair": f"{sparse} vs {dense}", "valset": valset, "modality": modality,
                "eval SE loss": np.mean(eval_se), "seed SD loss": seed_sd,
                "eval SE gap": np.mean(gap_se), "seed SD gap": np.std(gaps, ddof=1), "mean gap": np.mean(gaps),
            })  # fmt: skip
    table = pd.DataFrame(rows)
    with pd.option_context("display.float_format", "{:.4f}".format, "display.width", 200):
        print(f"{args.setting}, {args.seeds} seeds, final checkpoints\n{table.to_string(index=False)}")
        print("\nvalidation share of training wall-clock:")
        print(pd.Series(shares).map("{:.0%}".format).to_string())


if __name__ == "__main__":
    main()
