"""DDP on two CPU processes (gloo) trains the run that one process trains with the same global batch.

How the equivalence is built, and why it is exact up to float rounding:

* Data: `batch_size` is per device. Under DDP the datamodule's `GlobalBatchShard` gives rank r, at every step, the
  `batch_size` items at offset r * batch_size of the single-process order, so the two ranks of a step (batch 2 each)
  read exactly the sequences one process with batch 4 reads at that step.
* Loss: every loss is a per-modality mean, and the mean of per-rank means is *not* the global mean when ranks hold
  different numbers of positions of a modality (they do: interleaved documents). Under DDP the LightningModule
  all-reduces the per-modality position counts first and each rank optimises its share (its sum divided by the
  global count, times the world size); DDP's gradient average is then the gradient of the global batch's loss, and
  the logged training losses (the ranks' shares, averaged) are the global batch's losses. Validation losses are
  torchmetrics means weighted by positions, synced across ranks.
* What differs: the order of float sums (a batch-4 matmul vs two batch-2 matmuls plus an all-reduce) and the
  thread count (one thread per rank vs two). Both runs train in float64 ("64-true"), so that difference stays at
  float64 rounding: weights within 1e-12 absolute after 8 AdamW steps at lr 2e-3 (measured: 2e-16); the logged
  losses and gradient norms within 1e-6 relative (they are averaged and logged in float32, as torchmetrics keeps
  them). In float32 the embedding weights end 2e-5 apart (measured; every other
  parameter within 5e-7); under the recipe's bf16 autocast each rank's weight gradient is rounded to bf16 before the
  all-reduce (4e-3 relative). Neither says anything about the construction.

The run is the sparse arm (`mom`) in the Transfusion setting, where a rank without image positions is the hard
case: its image experts get no token and its patch head, patch projection and timestep MLP no position, yet every
parameter must take part in its backward pass or DDP errors or hangs (no `find_unused_parameters`). At seed 0 rank 0
of step 0 and rank 1 of step 1 hold no image token (asserted below, so the test keeps proving it).
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from analysis.run_record import read_summary
from datamodules.multimodal import MultiModalDataModule
from datamodules.samplers import EpochSampler, GlobalBatchShard
from datamodules.vocab import PATCH
from experiments.checkpoints import load_checkpoint
from experiments.losses import multimodal_losses
from experiments.recipes import RunRequest
from experiments.run import train_run
from models import ModelConfig, build_model
from models.layers import ModalityLinear
from tests.helpers import SMALL_DATA, TINY_MODEL, trained_folder

ROOT = Path(__file__).resolve().parents[1]
SETTING, ARM, STEPS, VAL_EVERY, SEED = "transfusion", "mom", 8, 4, 0
GLOBAL_BATCH, WORLD = SMALL_DATA["batch_size"], 2
DDP_TIMEOUT_S = 150  # a hang shows as this timeout, not as a stuck test session


def test_global_batch_shard_gives_each_step_the_single_process_batch():
    """The ranks' batches of a step, concatenated, are the single-process batch of that step, epochs and resume too."""
    b = 3
    for epoch, skip in ((0, 0), (1, 0), (0, 2 * WORLD * b)):  # a resumed epoch skips whole global batches
        single = list(EpochSampler(40, seed=7, shuffle=True, epoch=epoch, skip=skip))
        shards = [list(GlobalBatchShard(EpochSampler(40, 7, True, epoch, skip), b, r, WORLD)) for r in range(WORLD)]
        steps = len(single) // (WORLD * b)
        assert all(len(s) == steps * b for s in shards)
        for step in range(steps):
            together = [item for s in shards for item in s[step * b : (step + 1) * b]]
            assert together == single[step * WORLD * b : (step + 1) * WORLD * b]
    shard = GlobalBatchShard(EpochSampler(40, 7, True), b, 1, WORLD)
    shard.set_epoch(3)  # Lightning calls this at every epoch start; it must reach the order's seed
    assert shard.epoch == 3 and list(shard)[0][0] == 3


@pytest.mark.parametrize("arch", ["mom", "mom2"])
def test_every_parameter_gets_a_gradient_when_a_modality_is_absent(arch):
    """A text-only Transfusion batch gives every parameter of the sparse model a gradient (zero where unused, never
    None): the image experts, the patch projection, timestep MLP and patch head included, so DDP needs no
    find_unused_parameters. MoM-2 with every part decoupled: its per-modality conv and per-head parameters too."""
    P, V = 12, 64
    decouple = {"mom2": ("in_proj", "conv1d", "dt_bias", "A_log", "D", "norm", "out_proj")}.get(arch)
    cfg = ModelConfig(arch=arch, vocab_size=V, n_modalities=2, patch_dim=P, decouple=decouple, **TINY_MODEL)
    model = build_model(cfg)
    B, L = 2, 16
    tokens = torch.randint(0, V, (B, L))
    batch = dict(
        tokens=tokens,
        modality_ids=torch.zeros(B, L, dtype=torch.long),
        targets=torch.roll(tokens, -1, dims=1),
        target_modality=torch.zeros(B, L, dtype=torch.long),
        patches=torch.zeros(B, L, P),
        noise=torch.zeros(B, L, P),
        patch_mask=torch.zeros(B, L, dtype=torch.bool),
        timesteps=torch.zeros(B, L, dtype=torch.long),
    )
    out = model(**{k: batch[k] for k in ("tokens", "modality_ids", "patches", "patch_mask", "timesteps")})
    losses = multimodal_losses(out.logits, batch, 2, out.patch_pred)
    assert losses["loss_image"].isnan() and torch.isfinite(losses["loss"])
    losses["loss"].backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None]
    assert not missing
    for name in ("patch_in", "time_mlp", "patch_head"):  # no patch position: exact zeros
        assert all(torch.count_nonzero(p.grad) == 0 for p in getattr(model, name).parameters()), name
    experts = [m for m in model.modules() if isinstance(m, ModalityLinear) and m.n_modalities == 2]
    assert experts
    for layer in experts:  # the image expert: no token, exact zero; the text expert: a real gradient
        assert torch.count_nonzero(layer.weight.grad[1]) == 0 and torch.count_nonzero(layer.weight.grad[0]) > 0


def _ddp_command(root: Path, data: dict) -> list[str]:
    cmd = [sys.executable, "-m", "experiments.train", "--setting", SETTING, "--arm", ARM, "--seed", str(SEED)]
    cmd += ["--max_steps", str(STEPS), "--val_every", str(VAL_EVERY), "--root", str(root)]
    for key, value in data.items():
        cmd += [f"--data.{key}", str(value)]
    for key, value in TINY_MODEL.items():
        cmd += [f"--model.{key}", str(value)]
    cmd += ["--trainer.accelerator", "cpu", "--trainer.devices", str(WORLD), "--trainer.strategy", "ddp"]
    cmd += ["--trainer.precision", "64-true"]
    return cmd


def _run_isolated(cmd: list[str], log: Path, timeout: float) -> int:
    """Run cmd in its own process group; on timeout, or when it leaves a rank behind, end that group."""
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "LOCAL_RANK")}
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            rc = None
        deadline = time.monotonic() + (0 if rc is None else 10)
        while True:  # the launcher's other rank is in the same group: give it a moment to exit, then end it
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                break
            if time.monotonic() > deadline:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                break
            time.sleep(0.2)
    return rc


@pytest.fixture(scope="module")
def runs(tmp_path_factory, small_cache):
    """The single-process run (batch 4, in this process) and the DDP run (2 processes x batch 2, the real CLI)."""
    tmp = tmp_path_factory.mktemp("ddp")
    data = {**SMALL_DATA, "cache_dir": small_cache}
    start = time.perf_counter()
    request = RunRequest(SETTING, ARM, seed=SEED, max_steps=STEPS, val_every=VAL_EVERY, root=tmp / "single", data=data,
                         module={"model_overrides": TINY_MODEL}, trainer={"precision": "64-true"})  # fmt: skip
    single = train_run(request)
    single_s = time.perf_counter() - start
    log = tmp / "ddp.log"
    start = time.perf_counter()
    rc = _run_isolated(_ddp_command(tmp / "ddp", {**data, "batch_size": GLOBAL_BATCH // WORLD}), log, DDP_TIMEOUT_S)
    ddp_s = time.perf_counter() - start
    folders = {name: trained_folder(tmp / name, SETTING, ARM, SEED) for name in ("single", "ddp")}
    return dict(single=single, rc=rc, log=log, folders=folders, data=data, seconds=(single_s, ddp_s))


def _rows(folder: Path) -> list[dict]:
    with open(folder / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_ddp_rank_without_image_tokens_neither_hangs_nor_errors(runs):
    """A step where one rank's batch holds no image token (asserted from the data) trains to the end under DDP."""
    dm = MultiModalDataModule(setting=SETTING, seed=SEED, **runs["data"])
    dm.setup("fit")
    ids = dm.train_set.packed.ids
    b = GLOBAL_BATCH // WORLD
    no_image = []
    for rank in range(WORLD):
        shard = list(GlobalBatchShard(EpochSampler(len(ids), SEED, shuffle=True), b, rank, WORLD))
        for step in range(STEPS):
            if not any((ids[i][:-1] == PATCH).any() for _, i in shard[step * b : (step + 1) * b]):
                no_image.append((step, rank))
    assert no_image, "the data no longer give a rank an image-free batch: pick another seed"
    log = runs["log"].read_text()
    assert runs["rc"] is not None, f"DDP run hung (no exit in {DDP_TIMEOUT_S} s)\n{log[-3000:]}"
    assert runs["rc"] == 0, f"DDP run failed (rc {runs['rc']}); image-free (step, rank): {no_image}\n{log[-3000:]}"
    summary = read_summary(runs["folders"]["ddp"])
    assert summary.status == "finished" and summary.steps == STEPS and summary.world_size == WORLD


def test_ddp_matches_single_process(runs):
    """Per-step training losses, tokens and FLOPs, validation losses and final weights of the DDP run equal the
    single-process run's within float tolerance (see the module docstring for the construction)."""
    assert runs["rc"] == 0, runs["log"].read_text()[-3000:]
    single_dir, ddp_dir = runs["folders"]["single"], runs["folders"]["ddp"]
    ddp, single = read_summary(ddp_dir), runs["single"]
    for key in ("tokens_per_step", "params_total", "params_active"):
        assert getattr(ddp, key) == getattr(single, key), key
    # FLOPs per token are estimated from the share of patch positions in the run's first batch, which is a device's
    # batch (half the global one) under DDP: equal within the spread of that share, and the step count is exact.
    assert ddp.train_flops_per_step == pytest.approx(single.train_flops_per_step, rel=0.05)
    assert set(ddp.final_val_loss) == set(single.final_val_loss) >= {"val/loss_text", "val/loss_image"}
    for key, value in single.final_val_loss.items():
        assert ddp.final_val_loss[key] == pytest.approx(value, rel=1e-6), key

    def by_step(folder: Path, columns: tuple[str, ...]) -> dict[int, dict[str, float]]:
        out: dict[int, dict[str, float]] = {}
        for row in _rows(folder):
            for c in columns:
                if row.get(c):
                    out.setdefault(int(row["step"]), {})[c] = float(row[c])
        return out

    columns = ("train/loss", "train/loss_text", "train/loss_image", "tokens", "tokens/image", "optim/grad_norm",
               "val/loss_text", "val/loss_image")  # fmt: skip
    a, b = by_step(single_dir, columns), by_step(ddp_dir, columns)
    flops = by_step(ddp_dir, ("flops",))
    assert all(row["flops"] == (step + 1) * ddp.train_flops_per_step for step, row in flops.items())
    assert a.keys() == b.keys() and len([s for s in a if "train/loss" in a[s]]) == STEPS
    for step in a:
        assert a[step].keys() == b[step].keys(), step
        for c, value in a[step].items():
            assert b[step][c] == pytest.approx(value, rel=1e-6), (step, c)

    load = lambda f: load_checkpoint(f / "checkpoints/last.ckpt", map_location="cpu")  # noqa: E731
    sa, sb = load(single_dir), load(ddp_dir)
    assert sa["global_step"] == sb["global_step"] == STEPS
    worst = max(float((sa["state_dict"][k] - sb["state_dict"][k]).abs().max()) for k in sa["state_dict"])
    assert worst < 1e-12, worst
