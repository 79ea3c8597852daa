"""The run store under random kills: a miniature comparison of every setting, SIGKILLed at random moments until
`--kills` kills have landed, then finished by the same command, against the same comparison run uninterrupted.

    python benchmarks/soak_kills.py --kills 20 --seed 0 --workdir "$(mktemp -d)"

Each kill is `kill -9 -- -<pid>` of the comparison's process group (its workers, in groups of their own, notice and
stop at their next step), or, every other time at random, of every process of the comparison at once (a machine that
dies). Prints the kills that landed, the processes of killed comparisons that outlived them, and the comparison of
every run's metrics.csv (every column but the timing ones), flops_to_match.csv, flops_to_match_summary.csv and the
report's tables; exits 1 on any difference, any survivor, or fewer kills landed than asked (more than 3
comparisons ended before their kill: the runs finished). The deterministic kill points of tests/test_chaos.py run
in CI; this is the randomised soak beside them.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.chaos import _descendants, processes_with  # noqa: E402
from tests.helpers import SMALL_DATA, TINY_MODEL  # noqa: E402
from tests.test_chaos import report_tables, table  # noqa: E402


def comparison(work: Path, name: str, steps: int) -> list[str]:
    data = [f"--data={k}={v}" for k, v in SMALL_DATA.items()]
    model = [f"--model={k}={v}" for k, v in TINY_MODEL.items()]
    return [sys.executable, "experiments/compare.py", "--settings", "all", "--arms", "mamba,mom,transformer,mot",
            "--seeds", "1", "--max-steps", str(steps), "--val-every", "4", "--parallel", "2", "--no-samples",
            "--root", str(work / name / "runs"), "--out", str(work / name / "results"),
            "--data-cache", str(work / "cache"), *data, *model]  # fmt: skip


def differences(straight: Path, killed: Path) -> tuple[int, list[str]]:
    """(files compared, the ones that differ) between two comparison folders."""
    runs = sorted(p.relative_to(straight) for p in straight.glob("runs/*/*/*/*/seed*/metrics.csv"))
    files = [(run, table) for run in runs]
    files += [(Path("results") / name, table) for name in ("flops_to_match.csv", "flops_to_match_summary.csv")]
    files += [(Path("results/report.md"), report_tables)]
    differ = [str(f) for f, read in files if not (killed / f).exists() or read(killed / f) != read(straight / f)]
    return len(files), differ


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=20, help="kills that must land before the comparison finishes")
    parser.add_argument("--steps", type=int, default=48, help="steps per run")
    parser.add_argument("--seed", type=int, default=0, help="seeds the kill moments")
    parser.add_argument("--workdir", type=Path, required=True, help="an empty folder for the two comparisons")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    args.workdir.mkdir(parents=True, exist_ok=True)
    log = open(args.workdir / "soak.log", "a")  # the comparisons' output

    start = time.perf_counter()
    subprocess.run(comparison(args.workdir, "straight", args.steps), cwd=ROOT, stdout=log, stderr=log, check=True)
    print(f"uninterrupted comparison: {time.perf_counter() - start:.0f} s", flush=True)

    landed, finished_early = 0, 0
    marker = ("MOM_SOAK", str(args.workdir.resolve()))  # inherited by every process a killed comparison starts
    while landed < args.kills:
        command = comparison(args.workdir, "killed", args.steps)
        proc = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=log, start_new_session=True,
                                env=os.environ | dict([marker]))  # fmt: skip
        delay, everything = rng.uniform(2.0, 20.0), rng.random() < 0.5
        try:
            proc.wait(timeout=delay)
            finished_early += 1  # it ended before the kill: start the next one
            if finished_early > 3:
                break
            continue
        except subprocess.TimeoutExpired:
            pass
        victims = _descendants(proc.pid) if everything else []
        os.killpg(proc.pid, signal.SIGKILL)
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()
        landed += 1
        print(f"kill {landed}: after {delay:.1f} s, {'every process' if everything else 'the process group'}",
              flush=True)  # fmt: skip
    subprocess.run(comparison(args.workdir, "killed", args.steps), cwd=ROOT, stdout=log, stderr=log, check=True)
    deadline = time.monotonic() + 120  # a worker stops at its run's next step, an idle one within a second
    while (survivors := processes_with(*marker)) and time.monotonic() < deadline:
        time.sleep(1)
    print(f"processes of the killed comparisons alive after the finish (waited up to 120 s): {len(survivors)}")
    compared, differ = differences(args.workdir / "straight", args.workdir / "killed")
    print(f"{landed} kills landed ({finished_early} comparisons ended before their kill); {compared} files compared, "
          f"{len(differ)} differ{': ' + ', '.join(differ) if differ else ''}")  # fmt: skip
    return 1 if differ or survivors or landed < args.kills else 0


if __name__ == "__main__":
    sys.exit(main())
