"""Training body: known-answer per-modality losses, the schedule, and every arm x setting learning on real data."""

import csv
import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import CSVLogger

from datamodules.multimodal import MultiModalDataModule
from datamodules.sequences import next_token_targets
from datamodules.settings import SETTINGS
from datamodules.vocab import IGNORE, PAD
from experiments.lit_module import (
    LitMultiModalLM,
    NonFiniteLoss,
    decay_groups,
    warmup_cosine,
    warmup_stable_decay,
)
from experiments.losses import multimodal_losses
from models import ARMS
from tests.helpers import SMALL_DATA, TINY_MODEL


def test_per_modality_losses_known_answer():
    """Per-modality losses are the mean CE over positions whose target has that modality; totals as documented."""
    logits = torch.randn(1, 6, 10)
    targets = torch.tensor([[3, 7, IGNORE, 9, 1, IGNORE]])
    target_modality = torch.tensor([[0, 1, -1, 1, 0, -1]])
    batch = {"targets": targets, "target_modality": target_modality}
    ce = F.cross_entropy(logits[0], targets[0].clamp(min=0), reduction="none")
    out = multimodal_losses(logits, batch, n_modalities=3)
    torch.testing.assert_close(out["loss_text"], (ce[0] + ce[4]) / 2)
    torch.testing.assert_close(out["loss_image"], (ce[1] + ce[3]) / 2)
    assert out["loss_speech"].isnan()  # absent: NaN, never a fake 0
    torch.testing.assert_close(out["loss"], ce[[0, 1, 3, 4]].mean())
    # Continuous images: image loss is the noise MSE at patch positions; total = L_LM + λ·L_image, L_LM the mean CE
    # over the discrete targets (Transfusion: text; with speech: text and speech).
    mask = torch.tensor([[False, True, True, False, False, False]])
    noise = torch.randn(1, 6, 4)
    pred = torch.randn(2, 4)
    tf = multimodal_losses(logits, {**batch, "patch_mask": mask, "noise": noise}, 2, pred, diffusion_weight=5.0)
    torch.testing.assert_close(tf["loss_image"], ((pred - noise[mask]) ** 2).mean())
    torch.testing.assert_close(tf["loss"], tf["loss_text"] + 5.0 * tf["loss_image"])
    speech = {**batch, "target_modality": torch.tensor([[0, 1, -1, 2, 0, -1]]), "patch_mask": mask, "noise": noise}
    tfs = multimodal_losses(logits, speech, 3, pred, diffusion_weight=5.0)
    torch.testing.assert_close(tfs["loss_speech"], ce[3])
    torch.testing.assert_close(tfs["loss"], ce[[0, 3, 4]].mean() + 5.0 * tfs["loss_image"])


def test_warmup_cosine_schedule():
    """Linear warmup to the peak, then cosine down to min_ratio at the last step."""
    assert warmup_cosine(0, 10, 100, 0.1) == pytest.approx(0.1)
    assert warmup_cosine(9, 10, 100, 0.1) == pytest.approx(1.0)
    assert warmup_cosine(55, 10, 100, 0.1) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert warmup_cosine(100, 10, 100, 0.1) == pytest.approx(0.1)


@pytest.fixture(scope="module")
def datamodules(small_cache):
    out = {}
    for setting in SETTINGS:
        dm = MultiModalDataModule(setting=setting, cache_dir=small_cache, **SMALL_DATA)
        dm.prepare_data()
        dm.setup("fit")
        out[setting] = dm
    return out


def lit_for(dm: MultiModalDataModule, arch: str, **kwargs) -> LitMultiModalLM:
    return LitMultiModalLM(
        arch=arch,
        vocab_size=dm.vocab_size,
        n_modalities=dm.n_modalities,
        patch_dim=dm.patch_dim,
        model_overrides=TINY_MODEL,
        val_names=tuple(dm.val_sets),
        **kwargs,
    )


@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize("arch", list(ARMS))
def test_loss_decreases_on_a_fixed_batch(datamodules, setting, arch):
    """Every arm learns a fixed real batch of every setting: the total loss falls by a quarter in 40 steps."""
    dm = datamodules[setting]
    lit = lit_for(dm, arch, lr=1e-2, warmup_steps=1)
    batch = next(iter(dm.train_dataloader()))
    opt = torch.optim.AdamW(lit.parameters(), lr=1e-2)
    first = None
    for _ in range(40):
        loss = lit._shared_step(batch)["loss"]
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.75 * first, (first, loss.item())


@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize("arch", list(ARMS))
def test_tiny_scale_trains_and_validates(datamodules, setting, arch, tmp_path):
    """Every arm at the tiny scale runs Trainer steps and validation; per-modality validation losses are logged."""
    dm = datamodules[setting]
    lit = LitMultiModalLM(arch=arch, scale="tiny", vocab_size=dm.vocab_size, n_modalities=dm.n_modalities,
                          patch_dim=dm.patch_dim, val_names=tuple(dm.val_sets))  # fmt: skip
    trainer = L.Trainer(
        max_steps=3,
        val_check_interval=3,
        limit_val_batches=2,
        accelerator="cpu",
        logger=CSVLogger(tmp_path, name="", version=""),
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(lit, datamodule=dm)
    logged = trainer.callback_metrics
    for name, ds in dm.val_sets.items():  # each validation set logs exactly the modalities its targets hold
        present = set(dm.vocab.modality_of(next_token_targets(ds.packed.ids)[ds.packed.ids[:, 1:] != PAD]).tolist())
        if setting == "transfusion":
            present.add(1)  # the image loss is the noise MSE at patch positions
        expected = {f"{name}/loss_{lit.modalities[m]}" for m in present}
        assert expected == {k for k in logged if k.startswith(f"{name}/")}
        assert all(torch.isfinite(logged[k]) for k in expected)
    with open(tmp_path / "metrics.csv", newline="") as f:  # the training scalars: one row per step, finite
        rows = [r for r in csv.DictReader(f) if r["train/loss"]]
    assert [int(r["step"]) for r in rows] == [0, 1, 2]
    assert all(math.isfinite(float(r[k])) for r in rows for k in ("train/loss", "optim/grad_norm", "optim/lr"))
    assert int(lit.tokens_seen.sum()) == 3 * SMALL_DATA["batch_size"] * SMALL_DATA["seq_len"]
    assert float(rows[-1]["tokens"]) == int(lit.tokens_seen.sum())


def test_non_finite_loss_names_the_step_and_modality(datamodules):
    """A NaN in the model makes the training step fail with the step and the modality's loss named."""
    dm = datamodules["chameleon"]
    lit = lit_for(dm, "mamba")
    with torch.no_grad():
        lit.model.lm_head.weight[0, 0] = float("nan")
    lit.log = lambda *a, **k: None  # outside a Trainer
    with pytest.raises(NonFiniteLoss, match=r"step 0: loss_(text|image) = nan"):
        lit.training_step(next(iter(dm.train_dataloader())), 0)


@pytest.mark.parametrize("sparse", [name for name, arm in ARMS.items() if arm.is_sparse])
def test_weight_decay_by_role_is_the_same_for_every_sparse_arm_and_its_dense_partner(sparse):
    """A parameter decays by its role (the weight of a projection, the embedding or the conv), never by its rank: a
    decoupled bias ([M, E]) is as exempt as the dense one ([E]), so both arms train under one regularisation."""

    def decayed(arch: str) -> tuple[set[str], set[str]]:
        lit = LitMultiModalLM(arch=arch, vocab_size=64, n_modalities=3, patch_dim=12, model_overrides=TINY_MODEL)
        names = {id(p): n for n, p in lit.named_parameters()}
        decay, exempt = decay_groups(lit)
        return {names[id(p)] for p in decay}, {names[id(p)] for p in exempt}

    sparse_decay, sparse_exempt = decayed(sparse)
    dense_decay, dense_exempt = decayed(ARMS[sparse].dense)
    assert sparse_decay == dense_decay and sparse_exempt == dense_exempt
    assert any(n.endswith("dt_proj.bias") for n in dense_exempt) or ARMS[sparse].family.name != "mamba"
    assert all(n.endswith(("weight",)) for n in dense_decay)
    assert not any(n.endswith(("A_log", ".D", "bias")) or "norm" in n for n in dense_decay)


def test_image_loss_per_source_known_answer():
    """The image loss of each source averages its own positions only, and the sources' weighted means recombine into
    the whole image loss (discrete codes: the targets' sources; continuous patches: the patches' sources)."""
    logits = torch.randn(1, 6, 10)
    targets = torch.tensor([[3, 7, 8, 9, 1, IGNORE]])
    batch = {
        "targets": targets,
        "target_modality": torch.tensor([[0, 1, 1, 1, 0, -1]]),
        "target_image_source": torch.tensor([[-1, 0, 1, 1, -1, -1]]),
    }
    ce = F.cross_entropy(logits[0], targets[0].clamp(min=0), reduction="none")
    out = multimodal_losses(logits, batch, n_modalities=2, image_sources=2)
    torch.testing.assert_close(out["loss_image/0"], ce[1])
    torch.testing.assert_close(out["loss_image/1"], (ce[2] + ce[3]) / 2)
    torch.testing.assert_close(out["loss_image"], (out["loss_image/0"] + 2 * out["loss_image/1"]) / 3)
    mask = torch.tensor([[False, True, True, True, False, False]])
    noise, pred = torch.randn(1, 6, 4), torch.randn(3, 4)
    patches = {**batch, "patch_mask": mask, "noise": noise, "image_source": torch.tensor([[-1, 1, 0, 1, -1, -1]])}
    tf = multimodal_losses(logits, patches, 2, pred, image_sources=2)
    error = ((pred - noise[mask]) ** 2).mean(-1)
    torch.testing.assert_close(tf["loss_image/0"], error[1])
    torch.testing.assert_close(tf["loss_image/1"], (error[0] + error[2]) / 2)


def test_warmup_stable_decay_schedule():
    """Linear warmup, the peak held, then the (1 - sqrt) cooldown over the last `decay` steps to min_ratio; every step
    before the cooldown is the same for any total (a cooldown can branch from a longer run)."""
    assert warmup_stable_decay(0, 10, 100, 0.1, 20) == pytest.approx(0.1)
    assert warmup_stable_decay(9, 10, 100, 0.1, 20) == pytest.approx(1.0)
    assert warmup_stable_decay(79, 10, 100, 0.1, 20) == 1.0
    assert warmup_stable_decay(85, 10, 100, 0.1, 20) == pytest.approx(0.1 + 0.9 * (1 - math.sqrt(0.25)))
    assert warmup_stable_decay(100, 10, 100, 0.1, 20) == pytest.approx(0.1)
    for step in range(80):
        assert warmup_stable_decay(step, 10, 100, 0.1, 20) == warmup_stable_decay(step, 10, 1000, 0.1, 20)


def test_the_module_runs_the_schedule_it_is_given():
    """The optimiser's learning rate per step follows `schedule`; an unknown name is refused, saying what is valid."""
    with pytest.raises(ValueError, match=r"unknown schedule 'linear'; valid choices are \['cosine', 'wsd'\]"):
        LitMultiModalLM(schedule="linear", model_overrides=TINY_MODEL)
    for name, expected in (("cosine", lambda s: warmup_cosine(s, 5, 50, 0.1)),
                           ("wsd", lambda s: warmup_stable_decay(s, 5, 50, 0.1, 10))):  # fmt: skip
        lit = LitMultiModalLM(schedule=name, warmup_steps=5, lr=1e-3, family_lr=(), model_overrides=TINY_MODEL)
        lit.trainer = type("T", (), {"max_steps": 50})()
        config = lit.configure_optimizers()
        optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
        for step in range(50):
            assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * expected(step)), (name, step)
            optimizer.step()
            scheduler.step()
