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
    import os, queue, sys, time, types
    comparison = os.getpid()
    if os.fork():
        os._exit(0)
    while os.getppid() == comparison:
        time.sleep(0.01)
    from experiments import workers
    slots = queue.Queue()
    slots.put(0)
    events = types.SimpleNamespace(cancel_join_thread=lambda: None)  # never written to: the worker gets no work
    workers._worker_init(slots, events, None, False, {}, {}, comparison)
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


# A worker that has sent more progress than a pipe holds to a comparison that no longer reads it (one that was
# interrupted and is shutting its pool down), then is told to exit.
UNREAD_PROGRESS = textwrap.dedent("""
    import multiprocessing, os, queue
    from experiments import workers
    events = multiprocessing.get_context("spawn").Queue()
    slots = queue.Queue()
    slots.put(0)
    workers._worker_init(slots, events, None, False, {}, {}, os.getppid())
    for step in range(20_000):
        workers._WORKER["events"].put((os.getpid(), "chameleon/mamba/seed0", step, 20_000, 1.0, 0.1))
    print("worker done", flush=True)
""")


def test_a_worker_exits_though_its_comparison_no_longer_reads_its_progress():
    """Progress events are best effort: a worker never waits at exit for them to be read (an interrupted comparison
    stops reading them while it shuts its workers down, and would wait for a worker that waits for it)."""
    done = subprocess.run([sys.executable, "-c", UNREAD_PROGRESS], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0 and "worker done" in done.stdout, done.stderr
