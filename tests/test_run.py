"""Run folders: records, a finished run is never redone, resume equals an uninterrupted run, NaN marks failure."""

import csv
import json

import lightning as L
import pytest
import torch

from analysis.run_record import Summary, read_summary
from experiments.checkpoints import load_checkpoint
from experiments.recipes import RunRequest
from experiments.run import train_run
from tests.helpers import SMALL_DATA, TINY_MODEL, trained_folder

MODULE = dict(model_overrides=TINY_MODEL)


@pytest.fixture(scope="module")
def data(small_cache):
    return {**SMALL_DATA, "cache_dir": small_cache}


def run(root, data, arm="mom", **kwargs):
    return train_run(
        RunRequest("chameleon", arm, max_steps=8, val_every=2, root=root, data=data, module=MODULE, **kwargs)
    )


def rows(folder):
    with open(folder / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


class _Crash(L.Callback):
    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == 4:
            raise RuntimeError("simulated crash")


class _PoisonAt(L.Callback):
    def on_train_batch_start(self, trainer, lit, *args):
        if trainer.global_step == 3:
            with torch.no_grad():
                lit.model.lm_head.weight[0, 0] = float("nan")


def test_run_folder_records_everything_and_is_never_redone(tmp_path, data):
    """config, metrics, TensorBoard, checkpoint and summary exist; FLOPs agree; a rerun is a no-op."""
    summary = run(tmp_path, data)
    folder = trained_folder(tmp_path, "chameleon", "mom")
    for name in ("config.json", "metrics.csv", "summary.json", "checkpoints/last.ckpt"):
        assert (folder / name).exists(), name
    assert list((folder / "tb").glob("events.out.tfevents.*"))
    assert isinstance(summary, Summary) and summary == read_summary(folder)  # the record on disk is the returned one
    assert (summary.arm, summary.variant, summary.setting, summary.scale, summary.seed) == (
        "mom",
        "mom",
        "chameleon",
        "tiny",
        0,
    )
    assert summary.status == "finished" and summary.backend == "cpu" and summary.steps == 8
    assert summary.params_total > summary.params_active > 0 and summary.wall_clock_s > 0 and summary.data_sources
    assert abs(summary.flops_per_token / summary.flops_per_token_analytic - 1) < 0.02
    assert set(summary.final_val_loss) == {
        "val/loss_text", "val/loss_image", "val/loss_image/fashion_mnist", "val/loss_image/emoji"
    }  # fmt: skip
    assert set(summary.image_mix) == {"train", "val"} and sum(summary.image_mix["val"].values()) == pytest.approx(1)
    trained = [r for r in rows(folder) if r["train/loss"]]
    assert [int(r["step"]) for r in trained] == list(range(8))
    assert [float(r["tokens"]) for r in trained] == [(i + 1) * 4 * 128 for i in range(8)]
    assert float(trained[-1]["flops"]) == 8 * summary.train_flops_per_step
    before = (folder / "summary.json").read_text()
    assert run(tmp_path, data) == Summary.from_dict(json.loads(before))
    assert (folder / "summary.json").read_text() == before


def test_resume_ends_where_an_uninterrupted_run_ends(tmp_path, data):
    """Crash at step 4, run again: same final weights, validation losses and training-loss rows as straight."""
    straight = run(tmp_path / "a", data)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(tmp_path / "b", data, trainer={"callbacks": [_Crash()]})
    b_folder = trained_folder(tmp_path / "b", "chameleon", "mom")
    assert read_summary(b_folder).status == "crashed"
    resumed = run(tmp_path / "b", data)
    assert resumed.status == "finished" and resumed.final_val_loss == straight.final_val_loss
    a_folder = trained_folder(tmp_path / "a", "chameleon", "mom")
    load = lambda f: load_checkpoint(f / "checkpoints/last.ckpt")["state_dict"]  # noqa: E731
    sa, sb = load(a_folder), load(b_folder)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    losses = lambda f: [(r["step"], r["train/loss"]) for r in rows(f) if r["train/loss"]]  # noqa: E731
    assert losses(a_folder) == losses(b_folder)


def test_non_finite_loss_fails_that_run_only(tmp_path, data):
    """A NaN marks its run failed with the step and modality; a finished sibling run is untouched."""
    run(tmp_path, data, arm="mamba")
    sibling = trained_folder(tmp_path, "chameleon", "mamba") / "summary.json"
    before = sibling.read_text()
    summary = run(tmp_path, data, arm="mom", trainer={"callbacks": [_PoisonAt()]})
    assert summary.status == "failed"
    assert "step 3" in summary.reason and "loss_" in summary.reason
    assert sibling.read_text() == before
