"""Loading a run never runs code from its checkpoint: a checkpoint re-saved with a pickled payload is refused by the
resume, sample.py and export.py, naming the file and the type, and the payload never runs; a checkpoint changed
after it was written is refused by its SHA-256; a run's own checkpoints (paths in its hyperparameters included)
load with weights_only=True."""

import json
import os
from pathlib import Path

import lightning as L
import pytest
import torch

from analysis.run_record import CHECKPOINT, SUMMARY, file_record, read_summary
from experiments import export, sample
from experiments.checkpoints import AtomicCheckpointIO, UnsafeCheckpoint, load_checkpoint, sha_path
from experiments.recipes import RunRequest
from experiments.run import train_run
from tests.helpers import SMALL_DATA, TINY_MODEL, trained_folder


class Payload:
    """Unpickling it runs a shell command that leaves a file behind."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _StopAt(L.Callback):
    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == 3:
            trainer.should_stop = True


def run(root, cache, **kwargs):
    data = {**SMALL_DATA, "cache_dir": Path(cache)}  # a Path, as a Python caller may pass it
    return train_run(RunRequest("chameleon", "mamba", max_steps=4, val_every=2, root=root, data=data,
                                module={"model_overrides": TINY_MODEL}, **kwargs))  # fmt: skip


@pytest.fixture(scope="module")
def finished(tmp_path_factory, small_cache):
    root = tmp_path_factory.mktemp("finished")
    run(root, small_cache)
    return trained_folder(root, "chameleon", "mamba")


def poison(folder: Path, marker: Path, record: bool) -> None:
    """Re-save the folder's checkpoint with a payload; with `record`, also its SHA-256 and the summary's record of
    it, as someone able to edit the folder would."""
    checkpoint = load_checkpoint(folder / CHECKPOINT)
    checkpoint["note"] = Payload(marker)
    if record:
        AtomicCheckpointIO().save_checkpoint(checkpoint, folder / CHECKPOINT)
        summary = json.loads((folder / SUMMARY).read_text())
        summary["files"] = file_record(folder)
        (folder / SUMMARY).write_text(json.dumps(summary))
    else:
        torch.save(checkpoint, folder / CHECKPOINT)


def copy_run(src: Path, dst: Path) -> Path:
    for path in src.rglob("*"):
        if path.is_file():
            (dst / path.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
            (dst / path.relative_to(src)).write_bytes(path.read_bytes())
    return dst


def test_a_runs_own_checkpoint_loads_without_unpickling_code(finished):
    checkpoint = load_checkpoint(finished / CHECKPOINT)
    assert isinstance(checkpoint["datamodule_hyper_parameters"]["cache_dir"], Path)
    assert read_summary(finished).files[CHECKPOINT]["sha256"] == sha_path(finished / CHECKPOINT).read_text().strip()


@pytest.mark.parametrize("cli", [sample.main, export.main])
def test_sample_and_export_refuse_a_checkpoint_with_a_payload_and_never_run_it(finished, tmp_path, capsys, cli):
    marker = tmp_path / "payload-ran"
    folder = copy_run(finished, tmp_path / "shared-run")
    poison(folder, marker, record=True)
    args = [str(folder), "--out", str(tmp_path / "out")] + (["--max-new-tokens", "2"] if cli is sample.main else [])
    with pytest.raises(SystemExit) as exit_:
        cli(args)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and f"{folder / CHECKPOINT}: holds pickled posix.system" in err
    assert "Traceback" not in err and not marker.exists() and not (tmp_path / "out").exists()
    with pytest.raises(UnsafeCheckpoint):
        load_checkpoint(folder / CHECKPOINT)
    assert not marker.exists()


@pytest.mark.parametrize("cli", [sample.main, export.main])
def test_sample_and_export_refuse_a_checkpoint_changed_after_it_was_written(finished, tmp_path, capsys, cli):
    marker = tmp_path / "payload-ran"
    folder = copy_run(finished, tmp_path / "shared-run")
    poison(folder, marker, record=False)
    with pytest.raises(SystemExit):
        cli([str(folder), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert f"{folder / CHECKPOINT}: sha256" in err and f"{folder / CHECKPOINT}: SHA-256" in err
    assert not marker.exists()


def test_a_resume_refuses_a_checkpoint_with_a_payload_and_restarts(tmp_path, small_cache, finished, capsys):
    marker = tmp_path / "payload-ran"
    assert run(tmp_path, small_cache, trainer={"callbacks": [_StopAt()]}).status == "interrupted"
    folder = trained_folder(tmp_path, "chameleon", "mamba")
    poison(folder, marker, record=True)
    capsys.readouterr()
    assert run(tmp_path, small_cache).status == "finished"
    out = capsys.readouterr().out
    assert f"{folder / CHECKPOINT}: holds pickled posix.system" in out and "restarting at step 0" in out
    assert not marker.exists()
    assert (folder / "metrics.csv").read_text() != ""
    assert read_summary(folder).batch_order == read_summary(finished).batch_order
