"""The real-curve fixture of tests/test_real_curves.py: every dense curve of a default comparison on the
evaluation grid (training and validation, every setting, loss and seed), written to tests/data/real_curves.csv.

    python -m tests.real_curves results/tiny

Written once from a clean-clone default run; kept small (a few thousand rows) so the null tests of the matching rule
run on real curves in CI without training anything.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from analysis.results import evaluation_grid, load_results
from models import ARMS

FIXTURE = Path(__file__).parent / "data" / "real_curves.csv"
COLUMNS = ["setting", "arm", "seed", "kind", "valset", "modality", "source", "step", "flops", "loss"]


def dense_curves(out: Path) -> pd.DataFrame:
    results = load_results(out)
    grid = evaluation_grid(results)
    baselines = [name for name, arm in ARMS.items() if arm.dense is None and not arm.is_sparse]
    dense = grid[grid["variant"].isin(baselines) & (grid["variant"] == grid["arm"])]
    return dense[COLUMNS].sort_values(COLUMNS[:8]).reset_index(drop=True)


def main(argv: list[str]) -> int:
    frame = dense_curves(Path(argv[0]))
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(FIXTURE, index=False, float_format="%.10g")
    print(f"wrote {FIXTURE}: {len(frame)} rows, {frame.groupby(COLUMNS[:7]).ngroups} curves")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
