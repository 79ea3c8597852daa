"""The comparison's worker processes never outlive it: one whose comparison dies exits by itself, even when the
comparison died before the worker had started."""

import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# A stand-in comparison forks a worker and dies at once; the worker starts as the pool's initializer would start it,
# after its comparison is gone (its parent is then init, or a subreaper), then waits for work that never comes.
ORPHANED_AT_START = textwrap.dedent("""
    import os, queue, sys, time
    comparison = os.getpid()
    if os.fork():
        os._exit(0)
    while os.getppid() == comparison:
        time.sleep(0.01)
    from experiments import workers
    slots = queue.Queue()
    slots.put(0)
    workers._worker_init(slots, None, None, False, {}, {}, comparison)
    time.sleep(60)
    print("worker still alive", flush=True)
""")


def test_a_worker_whose_comparison_died_before_it_started_exits():
    start = time.monotonic()
    # The worker holds the pipe until it exits: the run ends when the worker has.
    done = subprocess.run([sys.executable, "-c", ORPHANED_AT_START], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.stderr == "" and "worker still alive" not in done.stdout, done.stderr
    assert time.monotonic() - start < 50
