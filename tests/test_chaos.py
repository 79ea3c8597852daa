"""A comparison killed with SIGKILL at a fixed, varied set of moments (tests/chaos.py), then finished by the same
command, gives the uninterrupted comparison's numbers: every run's metrics.csv in every column but the timing ones,
flops_to_match.csv and the report's tables."""

import csv
import os
import subprocess
import sys
import time
from pathlib import Path

from tests.chaos import MAIN, processes_with
from tests.test_compare import small

ROOT = Path(__file__).resolve().parents[1]
TIMING = {"time/wall_s", "speed/tokens_per_s", "wall_clock_fraction", "wall_clock_fraction_mean",
          "wall_clock_fraction_low", "wall_clock_fraction_high"}  # fmt: skip
# Each kill lands in the next invocation, on the runs the ones before left: together they resume runs stopped at
# every stage. "orphan" kills the comparison only: its workers stop themselves at their next step.
KILLS = [
    "start:1:all",  # before the first step
    "step1:1:orphan",  # right after step 1, before any checkpoint
    "checkpoint:1:all",  # inside a checkpoint save
    "validation:2:orphan",  # inside validation
    "checkpoint_sha:1:all",  # between a checkpoint and its SHA-256
    "metrics:3:all",  # inside a metrics save: a cut line
    "between:1:all",  # between runs
]


def compare(tmp: Path, cache: str, kill: str | None) -> int:
    """The comparison's exit status, once no process it started is left."""
    args = small(tmp, cache, "--settings", "chameleon", "--arms", "mamba,mom", "--seeds", "2", "--max-steps", "12",
                 "--val-every", "3", "--parallel", "2")  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "MOM_KILL"} | ({"MOM_KILL": kill} if kill else {})
    # Output to a file, not a pipe: workers left orphaned by a kill would hold a pipe open after the comparison died.
    with open(tmp / "log.txt", "a") as log:
        print(f"--- MOM_KILL={kill}", file=log, flush=True)
        proc = subprocess.Popen([sys.executable, "-m", "tests.chaos", *args], cwd=ROOT, env=env, stdout=log,
                                stderr=log)  # fmt: skip
        code = proc.wait()
    deadline = time.monotonic() + 120  # an orphaned worker stops at its run's next step, an idle one within a second
    while left := processes_with(MAIN, str(proc.pid)):
        assert time.monotonic() < deadline, f"{kill}: processes {left} outlived their comparison"
        time.sleep(0.5)
    return code


def table(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(f)]


def report_tables(path: Path) -> list[str]:
    """report.md's table rows, but those of wall-clock (wall-clock to match, the runs table)."""
    sections = path.read_text().split("\n## ")
    kept = [s for s in sections if not s.startswith(("Wall-clock to match", "Runs", "Setup"))]
    return [line for s in kept for line in s.splitlines() if line.startswith("|")]


def test_a_comparison_killed_anywhere_ends_in_the_uninterrupted_numbers(tmp_path, small_cache):
    (tmp_path / "straight").mkdir()
    (tmp_path / "killed").mkdir()
    assert compare(tmp_path / "straight", small_cache, None) == 0
    for kill in KILLS:
        assert compare(tmp_path / "killed", small_cache, kill) == -9, f"{kill} was never reached"
    assert compare(tmp_path / "killed", small_cache, None) == 0

    straight, killed = tmp_path / "straight", tmp_path / "killed"
    runs = sorted(p.relative_to(straight) for p in straight.glob("runs/*/*/*/*/seed*/metrics.csv"))
    assert len(runs) == 4
    assert sorted(p.relative_to(killed) for p in killed.glob("runs/*/*/*/*/seed*/metrics.csv")) == runs
    for run in runs:
        assert table(killed / run) == table(straight / run), run
    for name in ("flops_to_match.csv", "flops_to_match_summary.csv"):
        assert table(killed / "results" / name) == table(straight / "results" / name), name
    assert report_tables(killed / "results/report.md") == report_tables(straight / "results/report.md")
