"""A resumed run trains the batches the uninterrupted run trains, however it was stopped: a crash after a checkpoint,
a stop requested mid-epoch (what a comparison's orphaned worker does), a checkpoint at an epoch's last batch, across
several epochs. A checkpoint whose data position disagrees with the run's data is refused (the run restarts at step
0, saying why), and a finished run records the digest of the batches it trained."""

import csv
import dataclasses

import lightning as L
import pytest
import torch

from analysis.run_record import CHECKPOINT, METRICS, read_summary
from datamodules.multimodal import MultiModalDataModule
from experiments import run as run_module
from experiments.checkpoints import AtomicCheckpointIO
from experiments.lit_module import warmup_stable_decay
from experiments.recipes import RunRequest
from experiments.run import train_run
from tests.helpers import SMALL_DATA, TINY_MODEL, trained_folder

SEQUENCES = 18  # 4 batches of 4 per epoch (the last 2 sequences are dropped), so 14 steps cross 3 epoch ends
STEPS, VAL_EVERY = 14, 3
TIMING = ("time/wall_s", "speed/tokens_per_s")


def few_sequences(n: int) -> type[MultiModalDataModule]:
    """The real datamodule with a training set of `n` sequences: short enough for a test to cross epochs."""

    class FewSequences(MultiModalDataModule):
        def setup(self, stage=None) -> None:
            super().setup(stage)
            packed = self.train_set.packed  # chameleon's: ids and image sources per sequence
            self.train_set.packed = dataclasses.replace(packed, ids=packed.ids[:n], sources=packed.sources[:n])

    return FewSequences


class _StopAt(L.Callback):
    """Asks the trainer to stop after the given steps, as a worker whose comparison died does."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            trainer.should_stop = True


class _CrashAt(_StopAt):
    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError("simulated crash")


class _CrashInValidation(_StopAt):
    def on_validation_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError("simulated crash")


@pytest.fixture(scope="module")
def data(small_cache):
    return {**SMALL_DATA, "cache_dir": small_cache}


def run(root, data, arm="mom", callbacks=(), sequences=SEQUENCES, seed=0, module=None):
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(run_module, "MultiModalDataModule", few_sequences(sequences))
        request = RunRequest("chameleon", arm, seed=seed, max_steps=STEPS, val_every=VAL_EVERY, root=root,
                             data=data, module={"model_overrides": TINY_MODEL, **(module or {})},
                             trainer={"callbacks": list(callbacks)})  # fmt: skip
        return train_run(request)


def rows(folder) -> list[dict]:
    with open(folder / METRICS, newline="") as f:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(f)]


def weights(folder) -> dict:
    return torch.load(folder / CHECKPOINT, map_location="cpu", weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory, data):
    root = tmp_path_factory.mktemp("straight")
    run(root, data)
    return trained_folder(root, "chameleon", "mom")


def assert_same_run(folder, straight) -> None:
    assert rows(folder) == rows(straight)  # every column but wall-clock and speed: losses, epoch, lr, grad norms
    a, b = weights(folder), weights(straight)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert read_summary(folder).batch_order == read_summary(straight).batch_order != ""


@pytest.mark.parametrize(
    "stops",
    [
        [("stop", 1)],  # before the first regular checkpoint: the step-1 checkpoint of epoch 1
        [("stop", 1), ("stop", 2)],  # stopped again before any checkpoint
        [("stop", 7)],  # mid-epoch, after a checkpoint
        [("crash", 5)],  # a crash in the first epoch
        [("crash", 9), ("stop", 11)],  # the second epoch, then the third
        [("crash", 13)],  # resumes from the step-12 checkpoint, saved at the last batch of the third epoch
        [("validation", 6)],  # inside the validation of a checkpoint's step: its rows must still be written
    ],
)
def test_a_run_stopped_anywhere_resumes_to_the_uninterrupted_run(tmp_path, data, straight, stops, capsys):
    for how, step in stops:
        if how in ("crash", "validation"):
            crash = _CrashAt(step) if how == "crash" else _CrashInValidation(step)
            with pytest.raises(RuntimeError, match="simulated crash"):
                run(tmp_path, data, callbacks=[crash])
        else:
            assert run(tmp_path, data, callbacks=[_StopAt(step)]).status == "interrupted"
    assert run(tmp_path, data).status == "finished"
    assert "restarting" not in capsys.readouterr().out  # every resume continued from its checkpoint
    assert_same_run(trained_folder(tmp_path, "chameleon", "mom"), straight)


def test_a_checkpoint_of_another_data_position_is_refused_and_the_run_restarts(tmp_path, data, straight, capsys):
    """A checkpoint changed after it was written, one whose epoch disagrees with its step (what a stop used to
    save), and one whose next batch differs from the data's (the training set changed) each restart the run at step
    0, naming the file and the difference; the run then ends as the uninterrupted run."""
    run(tmp_path, data, callbacks=[_StopAt(7)])
    folder = trained_folder(tmp_path, "chameleon", "mom")
    checkpoint = torch.load(folder / CHECKPOINT, weights_only=True)
    checkpoint["epoch"] += 1
    torch.save(checkpoint, folder / CHECKPOINT)
    capsys.readouterr()
    assert run(tmp_path, data, callbacks=[_StopAt(7)]).status == "interrupted"
    out = capsys.readouterr().out
    assert f"{folder / CHECKPOINT}: SHA-256" in out and "restarting at step 0" in out

    checkpoint = torch.load(folder / CHECKPOINT, weights_only=True)
    checkpoint["epoch"] += 1
    AtomicCheckpointIO().save_checkpoint(checkpoint, folder / CHECKPOINT)  # with its SHA-256: the suite wrote it
    assert run(tmp_path, data, callbacks=[_StopAt(7)]).status == "interrupted"
    out = capsys.readouterr().out
    assert f"{folder / CHECKPOINT} says epoch 2 at step 6, but the data is in epoch 1" in out
    assert "restarting at step 0" in out

    assert run(tmp_path, data, sequences=SEQUENCES + 4).status == "finished"  # 5 batches an epoch: another order
    out = capsys.readouterr().out
    assert "but the run's data after step 6 is at epoch 1, sequence 4" in out and "restarting at step 0" in out
    assert rows(folder) != rows(straight)
    trained_folder(tmp_path, "chameleon", "mom").rename(tmp_path / "other")
    assert run(tmp_path, data).status == "finished"
    assert_same_run(trained_folder(tmp_path, "chameleon", "mom"), straight)


def test_the_batch_order_digest_is_the_seeds_whatever_the_arm(tmp_path, data, straight):
    run(tmp_path, data, arm="mamba")
    run(tmp_path, data, arm="mamba", seed=1)
    order = {s: read_summary(trained_folder(tmp_path, "chameleon", "mamba", seed=s)).batch_order for s in (0, 1)}
    assert order[0] == read_summary(straight).batch_order != order[1]


def test_a_warmup_stable_decay_run_resumes_to_the_uninterrupted_run(tmp_path, data):
    """The WSD schedule (2 warmup steps, its cooldown the last 3 of 14) resumes like the cosine one: stopped in the
    stable phase and again inside the cooldown, the run ends with the uninterrupted run's rows (learning rate
    included) and weights, and its learning rates are the schedule's."""
    wsd = {"schedule": "wsd", "decay_fraction": 0.2, "warmup_steps": 2}
    run(tmp_path / "straight", data, module=wsd)
    for step in (7, 12):
        assert run(tmp_path / "stopped", data, callbacks=[_StopAt(step)], module=wsd).status == "interrupted"
    assert run(tmp_path / "stopped", data, module=wsd).status == "finished"
    straight, resumed = (trained_folder(tmp_path / name, "chameleon", "mom") for name in ("straight", "stopped"))
    assert_same_run(resumed, straight)
    logged = {int(r["step"]): float(r["optim/lr"]) for r in rows(straight) if r.get("optim/lr")}
    assert len(logged) == STEPS
    for step, lr in logged.items():
        assert lr == pytest.approx(8e-3 * warmup_stable_decay(step, 2, STEPS, 0.1, 3)), step
