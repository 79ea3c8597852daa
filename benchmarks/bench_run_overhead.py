"""What a comparison pays outside the training steps: a process's imports, a run's data setup and its FLOP count.

    python benchmarks/bench_run_overhead.py [--rounds 5 --settings transfusion,chameleon]

Each is timed side by side with the way it was paid before, in one run, rounds interleaved, medians:
- **imports:** `import experiments.compare` in a fresh interpreter (every comparison, and each of its workers, pays
  it) with the bytecode cache setup.sh leaves against none at all (`PYTHONPYCACHEPREFIX` pointed at an empty folder
  with `PYTHONDONTWRITEBYTECODE` set, as when nothing was ever compiled: every process compiles again);
- **data setup:** `MultiModalDataModule.setup` of a run, the first in a process (loads the corpus; Transfusion
  encodes its training patches) against a later one with another seed (a comparison's worker trains runs after runs);
- **FLOP count:** `analysis.flops.count_flops` of each arm's tiny model on a training batch, whose scan the tracer
  records as one op, against the same count with the scan's chunk loop traced op by op (as before).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from analysis.flops import count_flops  # noqa: E402  (needs the repo root on sys.path)
from datamodules.multimodal import MultiModalDataModule  # noqa: E402
from experiments.lit_module import LitMultiModalLM  # noqa: E402
from models import scan  # noqa: E402


def import_seconds(env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import experiments.compare"], cwd=ROOT, env=env, check=True)
    return time.perf_counter() - start


def bench_imports(rounds: int) -> None:
    cached = {k: v for k, v in os.environ.items() if k not in ("PYTHONPYCACHEPREFIX", "PYTHONDONTWRITEBYTECODE")}
    times: dict[str, list[float]] = {"bytecode cache": [], "no cache": []}
    for _ in range(rounds):
        with tempfile.TemporaryDirectory() as empty:
            uncached = {**cached, "PYTHONPYCACHEPREFIX": empty, "PYTHONDONTWRITEBYTECODE": "1"}
            times["no cache"].append(import_seconds(uncached))
        times["bytecode cache"].append(import_seconds(cached))
    with_cache, without = (statistics.median(times[k]) for k in ("bytecode cache", "no cache"))
    print(f"import experiments.compare: {with_cache:.1f} s with the bytecode cache, {without:.1f} s without "
          f"({without / with_cache:.1f}x)")  # fmt: skip


def setup_seconds(setting: str, seed: int) -> float:
    start = time.perf_counter()
    MultiModalDataModule(setting=setting, seed=seed).setup("fit")
    return time.perf_counter() - start


def bench_data_setup(settings: list[str], rounds: int) -> None:
    for setting in settings:
        first = setup_seconds(setting, 0)  # in this process, the first of the setting (the corpus comes from disk)
        later = statistics.median(setup_seconds(setting, seed) for seed in range(1, rounds + 1))
        print(f"{setting} data setup: first in the process {first:.2f} s, later runs {later:.2f} s")


def traced_chunk_loop():
    """The scan's forward with its chunk loop visible to the tracer, as before `_untraced`."""
    return mock.patch.object(scan, "_untraced", contextlib.nullcontext)


def bench_flop_count(rounds: int) -> None:
    dm = MultiModalDataModule(setting="transfusion", seed=0)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    print(f"{'arm':<12} {'count s':>8} {'traced loop s':>14}  same count")
    for arm in ("mamba", "mom", "transformer", "mot"):
        sizes = dict(vocab_size=dm.vocab_size, n_modalities=dm.n_modalities, patch_dim=dm.patch_dim)
        lit = LitMultiModalLM(arch=arm, val_names=tuple(dm.val_sets), image_sources=dm.image_sources, **sizes)
        times: dict[str, list[float]] = {"now": [], "traced": []}
        totals = {}
        for _ in range(rounds):
            for name, context in (("now", contextlib.nullcontext()), ("traced", traced_chunk_loop())):
                with context:
                    start = time.perf_counter()
                    # The traced loop's own ops are not in IGNORED_OPS any more: unpriced, they are let through.
                    totals[name] = count_flops(lit.model, batch, strict=name == "now").total
                    times[name].append(time.perf_counter() - start)
        now, traced = (statistics.median(times[k]) for k in ("now", "traced"))
        print(f"{arm:<12} {now:>8.2f} {traced:>14.2f}  {totals['now'] == totals['traced']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--settings", default="transfusion,chameleon")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as a comparison's worker
    bench_imports(args.rounds)
    bench_data_setup(args.settings.split(","), args.rounds)
    bench_flop_count(args.rounds)


if __name__ == "__main__":
    main()
