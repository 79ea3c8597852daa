"""Is one single-threaded run per core faster than one run at a time on all cores? compare.py both ways, timed.

    python benchmarks/bench_schedule.py [--settings chameleon --max-steps 60 --repeats 2]

Trains the same small matrix (the four default arms, one seed, the tiny recipe cut to --max-steps, validating every
--val-every steps) with `--parallel 1` (one run after the other in one process on all of torch's threads) and with
`--parallel auto` (one single-threaded run per core at a time, the CPU default), each into a fresh temporary folder,
alternating the order over --repeats. Prints each wall time (process start to report, data already prepared) and
the speed-up of the parallel schedule. The runs of both schedules are bit-identical (tests/test_compare.py), so only
the time differs.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed_compare(parallel: str, args: argparse.Namespace, folder: Path) -> float:
    command = [sys.executable, str(ROOT / "experiments" / "compare.py"), "--settings", args.settings]
    command += ["--max-steps", str(args.max_steps), "--val-every", str(args.val_every), "--parallel", parallel]
    command += ["--root", str(folder / "runs"), "--out", str(folder / "results"), "--data-cache", args.data_cache]
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", default="chameleon")
    parser.add_argument("--max-steps", type=int, default=60)
    parser.add_argument("--val-every", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--data-cache", default=str(ROOT / ".cache" / "data"))
    args = parser.parse_args()
    walls: dict[str, list[float]] = {"1": [], "auto": []}
    for repeat in range(args.repeats):
        for parallel in ("1", "auto") if repeat % 2 == 0 else ("auto", "1"):
            with tempfile.TemporaryDirectory() as tmp:
                walls[parallel].append(timed_compare(parallel, args, Path(tmp)))
            print(f"--parallel {parallel:<4} {walls[parallel][-1]:6.1f} s", flush=True)
    serial, parallel = statistics.median(walls["1"]), statistics.median(walls["auto"])
    print(f"{args.settings}, 4 arms x {args.max_steps} steps: --parallel 1 {serial:.1f} s, --parallel auto "
          f"{parallel:.1f} s (median of {args.repeats}): auto is {serial / parallel:.2f}x faster")  # fmt: skip


if __name__ == "__main__":
    main()
