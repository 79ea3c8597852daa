"""The run store under hostile conditions: damaged files of finished runs, corrupt checkpoints and cut metrics of
unfinished ones, a full disk, and processes racing for one folder. Each test reproduces a way the store could report
wrong numbers or break later runs, and asserts it is caught, named and repaired."""

import csv
import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import lightning as L
import pandas as pd
import pytest
import torch

from analysis.results import load_results
from analysis.run_record import CHECKPOINT, METRICS, file_disagreements, read_summary
from datamodules.samplers import DataPosition
from experiments import checkpoints, store
from experiments.checkpoints import file_sha256, sha_path
from experiments.compare import build_parser, main
from experiments.compare_cli import plan_comparison
from experiments.recipes import RunRequest
from experiments.run import train_run
from experiments.store import DiskFull, Locked, run_lock
from tests.helpers import SMALL_DATA, TINY_MODEL, trained_folder
from tests.test_compare import small

ROOT = Path(__file__).resolve().parents[1]
STEPS = 8


@pytest.fixture(scope="module")
def data(small_cache):
    return {**SMALL_DATA, "cache_dir": small_cache}


def run(root, data, **kwargs):
    return train_run(RunRequest("chameleon", "mom", max_steps=STEPS, val_every=2, root=root, data=data,
                                module={"model_overrides": TINY_MODEL}, **kwargs))  # fmt: skip


def rows(folder):
    with open(folder / METRICS, newline="") as f:
        return list(csv.DictReader(f))


def weights(folder):
    return checkpoints.load_checkpoint(folder / CHECKPOINT, map_location="cpu")["state_dict"]


def same_run(a: Path, b: Path) -> None:
    """Two run folders hold the same training: metric rows (wall-clock aside) and final weights."""
    strip = lambda rs: [{k: v for k, v in r.items() if k not in ("time/wall_s", "speed/tokens_per_s")} for r in rs]  # noqa: E731
    assert strip(rows(a)) == strip(rows(b))
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


class _CrashAt(L.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == self.step:
            raise RuntimeError("simulated crash")


@pytest.fixture(scope="module")
def straight(tmp_path_factory, data):
    """An uninterrupted run: what every repaired run must equal."""
    root = tmp_path_factory.mktemp("straight")
    run(root, data)
    return trained_folder(root, "chameleon", "mom")


@pytest.mark.parametrize("harm", ["truncate", "delete"])
def test_a_finished_run_with_damaged_metrics_is_named_and_trained_again(tmp_path, data, straight, capsys, harm):
    run(tmp_path, data)
    folder = trained_folder(tmp_path, "chameleon", "mom")
    metrics = folder / METRICS
    if harm == "truncate":  # half the file, as a crash of a copy or a full disk would leave it
        metrics.write_bytes(metrics.read_bytes()[: metrics.stat().st_size // 2])
    else:
        metrics.unlink()
    problems = file_disagreements(folder, read_summary(folder))
    assert problems and all(str(metrics) in p for p in problems), problems

    capsys.readouterr()
    summary = run(tmp_path, data)
    out = capsys.readouterr().out
    assert "files disagree with the summary" in out and str(metrics) in out and "training again" in out
    assert summary.status == "finished" and not file_disagreements(folder, summary)
    assert len(list(folder.parent.glob("seed0.damaged-*"))) == 1  # kept aside, never silently used
    same_run(folder, straight)


def test_a_comparison_reports_the_same_numbers_after_a_half_written_metrics_file(tmp_path, small_cache, capsys):
    """The probe: truncating a finished run's metrics.csv used to flip a verdict silently; now the run is named,
    retrained, and the report's numbers come back exactly."""
    args = small(tmp_path, small_cache, "--settings", "chameleon", "--arms", "mamba,mom", "--max-steps", "6")
    assert main(args) == 0
    table = pd.read_csv(tmp_path / "results" / "flops_to_match.csv").drop(columns="wall_clock_fraction")
    metrics = trained_folder(tmp_path / "runs", "chameleon", "mom") / METRICS
    metrics.write_bytes(metrics.read_bytes()[: metrics.stat().st_size // 2])

    results = load_results(tmp_path / "results")  # a report rendered now lists the run as damaged, no curve
    row = results.runs[results.runs["variant"] == "mom"].iloc[0]
    assert row["status"] == "damaged" and str(metrics) in row["reason"]
    assert not (results.curves["variant"] == "mom").any()

    capsys.readouterr()
    assert main(args) == 0
    err = capsys.readouterr().err
    assert f"{metrics.parent} is damaged" in err and "it will be trained again" in err
    again = pd.read_csv(tmp_path / "results" / "flops_to_match.csv").drop(columns="wall_clock_fraction")
    pd.testing.assert_frame_equal(again, table)  # every number but the wall-clock one, exactly


@pytest.mark.parametrize("harm", ["truncate", "garbage", "garbage with its SHA-256"])
def test_a_corrupt_checkpoint_of_an_unfinished_run_restarts_it_saying_so(tmp_path, data, straight, capsys, harm):
    """A checkpoint cut short or overwritten disagrees with the SHA-256 written beside it; one whose SHA-256 was
    written with it but does not load is unreadable. Either restarts the run at step 0, naming the file."""
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(tmp_path, data, trainer={"callbacks": [_CrashAt(5)]})
    folder = trained_folder(tmp_path, "chameleon", "mom")
    last = folder / CHECKPOINT
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2] if harm == "truncate" else b"not a checkpoint")
    if harm == "garbage with its SHA-256":
        sha_path(last).write_text(file_sha256(last))
    capsys.readouterr()
    summary = run(tmp_path, data)
    out = capsys.readouterr().out
    assert (f"{last} is unreadable" if harm.endswith("SHA-256") else f"{last}: SHA-256") in out
    assert "restarting at step 0" in out
    assert summary.status == "finished" and summary.steps == STEPS
    assert [int(r["step"]) for r in rows(folder) if r["train/loss"]] == list(range(STEPS))
    same_run(folder, straight)


def test_resume_drops_a_cut_last_line_and_never_warns_of_deleted_logs(tmp_path, data, straight, recwarn):
    """A crash in the middle of appending a row leaves a line without its end; the resumed run drops it (its step
    is trained again), and Lightning's "previous log files will be deleted" warning no longer appears."""
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(tmp_path, data, trainer={"callbacks": [_CrashAt(5)]})
    folder = trained_folder(tmp_path, "chameleon", "mom")
    with open(folder / METRICS, "a") as f:
        f.write("0.1,0.2,4")  # a row cut short
    run(tmp_path, data)
    same_run(folder, straight)
    assert not [w for w in recwarn if "will be deleted" in str(w.message)]


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize("where", ["atomic_write", "_append"])
def test_ctrl_c_inside_a_metrics_save_leaves_a_file_the_next_save_continues(tmp_path, monkeypatch, where):
    """Ctrl-C while metrics.csv is being saved (`where`: in the atomic rewrite a new column needs, the first
    validation row's; or in the append), then the save Lightning's teardown makes: metrics.csv is still one header
    and rows that parse under it, and resume_point reads it. Each save's rows are written once or not at all."""
    w = store._MetricsWriter(str(tmp_path))
    w.log_metrics({"train/loss": 1.0}, step=0)
    w.save()
    w.log_metrics({"val/loss": 2.0}, step=0)
    with monkeypatch.context() as m:
        m.setattr(store, where, _interrupt)
        with pytest.raises(KeyboardInterrupt):
            w.save()
    w.log_metrics({"train/loss": 3.0}, step=1)
    w.save()
    with open(tmp_path / METRICS, newline="") as f:
        header, *body = list(csv.reader(f))
    assert all(len(row) == len(header) for row in body), (header, body)
    assert sorted(header) == ["step", "train/loss", "val/loss"]
    got = [(r["step"], r["train/loss"], r["val/loss"]) for r in rows(tmp_path)]
    val = [("0", "", "2.0")] if where == "atomic_write" else []  # the interrupted save's row: kept, or never written
    assert got == [("0", "1.0", ""), *val, ("1", "3.0", "")], got
    (tmp_path / CHECKPOINT).parent.mkdir()
    position = DataPosition(0, 8, "next")
    checkpoint = {"global_step": 2, "epoch": 0, "data_position": position._asdict(), "batch_order": "trained"}
    checkpoints.AtomicCheckpointIO().save_checkpoint(checkpoint, tmp_path / CHECKPOINT)
    assert store.resume_point(tmp_path, lambda step: position, val_every=3) == (tmp_path / CHECKPOINT, None)


def test_missing_rows_before_the_checkpoint_restart_the_run(tmp_path, data, straight, capsys):
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(tmp_path, data, trainer={"callbacks": [_CrashAt(5)]})
    folder = trained_folder(tmp_path, "chameleon", "mom")
    kept = [r for r in rows(folder) if r["step"] not in ("1", "2")]
    with open(folder / METRICS, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(kept[0]))
        writer.writeheader()
        writer.writerows(kept)
    capsys.readouterr()
    run(tmp_path, data)
    out = capsys.readouterr().out
    assert "holds 2 of the 4 training rows before the checkpoint of step 4" in out and "restarting at step 0" in out
    same_run(folder, straight)


def test_a_full_disk_leaves_nothing_half_written_and_the_same_call_continues(
    tmp_path, data, straight, monkeypatch, capsys
):
    """ENOSPC while a checkpoint is written (the probe left last.ckpt truncated, a stale .tmp and a run no later
    call could resume): a message naming the folder and the space, the previous checkpoint intact, no temporary
    file, and after space is freed the same call finishes the run exactly as an uninterrupted one."""
    real_save, calls = torch.save, []

    def save_until_full(obj, path):
        calls.append(path)
        if len(calls) < 3:
            return real_save(obj, path)
        Path(path).write_bytes(b"x" * 1000)  # part of the file, then the device is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoints.torch, "save", save_until_full)
    with pytest.raises(DiskFull) as caught:
        run(tmp_path, data)
    folder = trained_folder(tmp_path, "chameleon", "mom")
    message = caught.value.strerror
    assert str(folder) in message and "MB free" in message and "run the same command again" in message
    assert checkpoints.load_checkpoint(folder / CHECKPOINT)["global_step"] == 4  # the step-4 checkpoint, whole
    assert not [p for p in folder.rglob("*") if p.name.endswith(".tmp")]
    assert read_summary(folder).status == "crashed"

    monkeypatch.setattr(checkpoints.torch, "save", real_save)
    summary = run(tmp_path, data)
    assert summary.status == "finished"
    same_run(folder, straight)


HOLD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from experiments.store import run_lock
    with run_lock(Path(sys.argv[1])):
        print("held", flush=True)
        time.sleep(600)
    """
)


def test_a_run_lock_excludes_other_processes_and_dies_with_its_holder(tmp_path):
    folder = tmp_path / "chameleon" / "tiny" / "r" / "mom" / "seed0"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(Locked, match="in use by another process"), run_lock(folder):
            pass
        assert store.is_locked(folder)
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # no cleanup runs: the OS releases the lock
        holder.wait()
    with run_lock(folder):
        assert not store.is_locked(folder.with_name("seed1"))


def test_two_comparisons_on_one_folder_never_write_one_run_twice(tmp_path, small_cache):
    """The probe: two compare.py on the same --root/--out, started together, used to train the same runs into the
    same folders (duplicated, out-of-order metric rows, a stray last-v1.ckpt, two TensorBoard files)."""
    args = small(tmp_path, small_cache, "--settings", "chameleon", "--arms", "mamba,mom", "--max-steps", "6",
                 "--parallel", "1")  # fmt: skip
    command = [sys.executable, "experiments/compare.py", *args]
    procs = [subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]  # fmt: skip
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert any("waiting for it to end" in out for out in outputs), outputs
    assert any("0 to train" in out for out in outputs), outputs  # the second found the first one's runs finished
    for arm in ("mamba", "mom"):
        folder = trained_folder(tmp_path / "runs", "chameleon", arm)
        assert [int(r["step"]) for r in rows(folder) if r["train/loss"]] == list(range(6))
        assert sorted(p.name for p in (folder / "checkpoints").iterdir()) == ["last.ckpt", "last.ckpt.sha256"]
        assert len(list((folder / "tb").glob("events.out.tfevents.*"))) == 1
    report = json.loads((tmp_path / "results" / "comparison.json").read_text())
    assert len(report["runs"]) == 2 and "wall_clock_s" in report["meta"]
    assert len(pd.read_csv(tmp_path / "results" / "flops_to_match.csv"))


def test_a_second_process_skips_a_run_another_is_training_then_waits_for_it(tmp_path, small_cache):
    """Shared runs: a compare finding a run locked by another process trains the rest, waits for it, and trains it
    if the other process died without finishing it."""
    args = small(tmp_path, small_cache, "--settings", "chameleon", "--arms", "mamba", "--max-steps", "2")
    c = plan_comparison(build_parser().parse_args(args))
    folder = c.folder(c.runs[0])
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        command = [sys.executable, "experiments/compare.py", *args]
        second = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and second.poll() is None:
            time.sleep(0.5)
            if (tmp_path / "results" / "comparison.json").exists():
                break
        time.sleep(3)
        assert second.poll() is None  # waiting for the run the holder has
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    output = second.communicate(timeout=300)[0]
    assert "another process is training chameleon/mamba/seed0" in output, output
    assert second.returncode == 0, output  # the holder died with the run unfinished: the waiting process trained it
    assert read_summary(folder).status == "finished"


def test_a_real_full_filesystem_stops_cleanly_and_the_same_command_continues(tmp_path, small_cache, capsys):
    """The probe on a real filesystem (a tmpfs that holds one checkpoint and a half; skipped where mounting is not
    permitted): compare.py stops with the message, and once the filesystem grows the same command finishes."""
    args = ["--settings", "chameleon", "--arms", "mom", "--max-steps", "8", "--parallel", "1"]
    assert main(small(tmp_path / "sized", small_cache, *args)) == 0
    size = (trained_folder(tmp_path / "sized" / "runs", "chameleon", "mom") / CHECKPOINT).stat().st_size
    disk = tmp_path / "disk"
    disk.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", f"size={int(1.5 * size) + 200_000}", "tmpfs", str(disk)]
    if subprocess.run(mount, capture_output=True).returncode != 0:
        pytest.skip("no permission to mount a small filesystem here")
    try:
        capsys.readouterr()
        assert main(small(disk, small_cache, *args)) == 1
        err = capsys.readouterr().err
        assert "no space left on the device of" in err and "MB free" in err and "Traceback" not in err, err
        assert not [p for p in disk.rglob("*") if p.name.endswith(".tmp")]
        folder = trained_folder(disk / "runs", "chameleon", "mom")
        assert read_summary(folder).status in ("running", "crashed")
        subprocess.run(["mount", "-o", "remount,size=200m", str(disk)], check=True)
        assert main(small(disk, small_cache, *args)) == 0
        assert read_summary(folder).status == "finished"
        assert [int(r["step"]) for r in rows(folder) if r["train/loss"]] == list(range(8))
    finally:
        subprocess.run(["umount", str(disk)], check=False)
