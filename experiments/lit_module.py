"""`LitMultiModalLM`: one LightningModule body for every arm (mamba, mom, transformer, mot and the hash controls).

One `_shared_step` computes the per-modality losses (experiments/losses.py) for training and validation. The
optimiser (AdamW, linear warmup then cosine decay, weight decay by role: `decay_groups`) and the schedule
depend only on hyperparameters shared by every arm of a comparison.
"""

from __future__ import annotations

import math

import lightning as L
import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric

from analysis.run_record import GRAD_NORM, LR, TOKENS, TRAIN_LOSS, LossKey, loss_name, tokens_name
from datamodules.vocab import MODALITY_NAMES
from experiments.losses import loss_positions, multimodal_losses
from models import ModelConfig, build_model
from models.layers import ModalityConv1d, ModalityLinear

# The learning-rate schedules `LitMultiModalLM(schedule=...)` knows (`warmup_cosine`, `warmup_stable_decay`).
SCHEDULES = ("cosine", "wsd")


class NonFiniteLoss(RuntimeError):
    """A training loss became NaN or infinite; the message names the step and the modality."""


class LitMultiModalLM(L.LightningModule):
    """Training and validation of one arm.

    Args:
        arch: a registered arm (models.ARMS: "mamba", "mom", "transformer", "mot", the controls "mom_hash", "mot_hash").
        scale: a named scale of ModelConfig ("nano", "tiny", "mini", "small", "163m", ...).
        vocab_size, n_modalities, patch_dim: from the datamodule (state them once: LightningCLI links them).
        lr: peak learning rate; min_lr_ratio: the schedule ends at the peak * min_lr_ratio at the trainer's max_steps.
        schedule: "cosine" (warmup, then cosine decay over the rest of the run: the papers' and the recipes') or
            "wsd" (warmup, then the peak held, then a cooldown over the last `decay_fraction` of the steps:
            Hägele et al. 2024; `warmup_stable_decay`).
        family_lr: (family, peak learning rate) pairs that replace `lr` for the model families they name: each dense
            arm's tuned rate, which its sparse arms share (`peak_lr`).
        warmup_steps: linear warmup from 0.
        weight_decay, betas: AdamW.
        diffusion_weight: λ in the Transfusion total L_text + λ·L_image.
        model_overrides: any ModelConfig field to override (e.g. {"d_model": 64}).
        val_names: names of the validation dataloaders, in order (the datamodule's `val_sets`).
        image_sources: names of the image sources, in the order of the batches' `image_source` ids (the
            datamodule's `image_sources`); validation reports the image loss of each.
    The optimiser defaults are the tiny recipe's (experiments/recipes.py).
    """

    def __init__(
        self,
        arch: str = "mamba",
        scale: str = "tiny",
        vocab_size: int = 4096,
        n_modalities: int = 2,
        patch_dim: int = 0,
        lr: float = 8e-3,
        family_lr: tuple[tuple[str, float], ...] = (("transformer", 1.28e-1),),
        min_lr_ratio: float = 0.1,
        warmup_steps: int = 20,
        schedule: str = "cosine",
        decay_fraction: float = 0.2,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.95),
        diffusion_weight: float = 5.0,
        model_overrides: dict | None = None,
        val_names: tuple[str, ...] = ("val",),
        image_sources: tuple[str, ...] = (),
    ) -> None:
        super().__init__()
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {schedule!r}; valid choices are {list(SCHEDULES)}")
        if not 0 < decay_fraction <= 1:
            raise ValueError(f"decay_fraction must be in (0, 1], got {decay_fraction}")
        self.save_hyperparameters()
        dims = dict(vocab_size=vocab_size, n_modalities=n_modalities, patch_dim=patch_dim)
        self.cfg = ModelConfig.from_scale(scale, arch=arch, **dims, **(model_overrides or {}))
        self.model = build_model(self.cfg)
        self.modalities = MODALITY_NAMES[:n_modalities]
        # One running mean per validation set and modality (and image source), logged under its run-record name:
        # {metric key: (the loss, its name in multimodal_losses)}.
        self.val_keys = {f"{v}_{m}": (LossKey("val", v, m), m) for v in val_names for m in self.modalities}
        self.val_keys |= {
            f"{v}_image_source{k}": (LossKey("val", v, "image", source), f"image/{k}")
            for v in val_names
            for k, source in enumerate(image_sources)
        }
        self.val_metrics = nn.ModuleDict({key: MeanMetric(nan_strategy="ignore") for key in self.val_keys})
        self.register_buffer("tokens_seen", torch.zeros(n_modalities, dtype=torch.long), persistent=True)

    @property
    def peak_lr(self) -> float:
        """This model's peak learning rate: its family's in `family_lr`, else `lr`."""
        return dict(map(tuple, self.hparams.family_lr)).get(self.cfg.family.name, self.hparams.lr)

    def forward(self, batch: dict[str, Tensor]):
        extras = (batch.get(k) for k in ("patches", "patch_mask", "timesteps"))
        return self.model(batch["tokens"], batch["modality_ids"], *extras)

    def _shared_step(
        self, batch: dict[str, Tensor], positions: dict[str, Tensor] | None = None, image_sources: int = 0
    ) -> dict[str, Tensor]:
        out = self(batch)
        weight = self.hparams.diffusion_weight
        return multimodal_losses(
            out.logits, batch, self.cfg.n_modalities, out.patch_pred, weight, positions, image_sources
        )

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        positions = loss_positions(batch, self.cfg.n_modalities)
        tokens = torch.bincount(batch["modality_ids"].flatten(), minlength=self.cfg.n_modalities)
        world = self._trainer.world_size if self._trainer is not None else 1
        if world > 1:
            # DDP: the global batch's counts (one all-reduce of a few integers). Each rank optimises its share of the
            # global-batch loss (experiments/losses.py), and every rank logs the same modalities.
            local = torch.cat([torch.stack(list(positions.values())), tokens])
            counts = self.trainer.strategy.reduce(local, reduce_op="sum")
            n = len(positions)
            positions, tokens = dict(zip(positions, counts[:n] / world, strict=True)), counts[n:]
        losses = self._shared_step(batch, positions)
        present = {f"loss_{name}" for name, n in positions.items() if n > 0} | {"loss"}
        # Modalities first (name the culprit), in one fixed order: under DDP the ranks reduce these values by position.
        names = sorted(present, key=lambda k: (k == "loss", k))
        logged = torch.stack([losses[name].detach() for name in names])
        if world > 1:  # the ranks' shares average to the global batch's losses; a NaN on any rank reaches them all
            logged = self.trainer.strategy.reduce(logged, reduce_op="mean")
        for name, value in zip(names, logged, strict=True):
            if not torch.isfinite(value):  # the step's row is never written: the run fails here
                raise NonFiniteLoss(f"non-finite training loss at step {self.global_step}: {name} = {value.item()}")
            metric = TRAIN_LOSS if name == "loss" else loss_name(LossKey("train", "", name.removeprefix("loss_")))
            self.log_step(metric, value)
        self.tokens_seen += tokens
        for m, name in enumerate(self.modalities):
            self.log_step(tokens_name(name), self.tokens_seen[m])
        self.log_step(TOKENS, self.tokens_seen.sum())
        self.log_step(LR, self.optimizers().param_groups[0]["lr"])
        return losses["loss"]

    def log_step(self, name: str, value: Tensor | float) -> None:
        """Log a training-step scalar: the step's values go to the loggers in one row at the end of the batch.

        Lightning's `self.log` moves every logged value to the device, call by call, which is slow on the CPU for a
        dozen scalars a step. Callbacks add theirs in their own on_train_batch_end, which runs before this module's.
        """
        self._step_row[name] = value

    def on_train_batch_start(self, batch, batch_idx) -> None:
        self._step_row: dict[str, Tensor | float] = {}

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        # The row Lightning would write: the step that just ran (global_step is already past it) and the epoch.
        values = torch.stack([torch.as_tensor(v, dtype=torch.float64) for v in self._step_row.values()]).tolist()
        row = dict(zip(self._step_row, values, strict=True)) | {"epoch": self.current_epoch}  # one sync for all
        self.last_step_row = row  # what a progress bar shows
        for logger in self.loggers:
            logger.log_metrics(row, step=self.global_step - 1)
            logger.save()

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        n_sources = len(self.hparams.image_sources)
        losses = self._shared_step(batch, image_sources=n_sources)
        positions = loss_positions(batch, self.cfg.n_modalities, n_sources)
        val_name = self.hparams.val_names[dataloader_idx]
        for key, (loss, name) in self.val_keys.items():
            if loss.valset == val_name and positions[name] > 0:
                self.val_metrics[key].update(losses[f"loss_{name}"], positions[name])

    def on_validation_epoch_end(self) -> None:
        # A loss is logged when any rank saw its positions. compute() synchronises its metric across DDP ranks, so
        # every rank must call it for the same metrics: decide on the global update counts (one small all-reduce).
        counts = torch.tensor([m.update_count for m in self.val_metrics.values()], device=self.device)
        if self._trainer is not None and self.trainer.world_size > 1:
            counts = self.trainer.strategy.reduce(counts, reduce_op="sum")
        for (key, metric), count in zip(self.val_metrics.items(), counts.tolist(), strict=True):
            if count:
                self.log(loss_name(self.val_keys[key][0]), metric.compute())
            metric.reset()

    def on_before_optimizer_step(self, optimizer) -> None:
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        self.log_step(GRAD_NORM, torch.nn.utils.get_total_norm(grads, norm_type=2.0))

    def configure_optimizers(self):
        decay, no_decay = decay_groups(self)
        hp = self.hparams
        groups = [{"params": decay, "weight_decay": hp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        optimizer = torch.optim.AdamW(groups, lr=self.peak_lr, betas=tuple(hp.betas))
        total = self.trainer.max_steps if self.trainer and self.trainer.max_steps > 0 else 1000
        if hp.schedule == "wsd":
            decay = max(1, round(hp.decay_fraction * total))

            def multiplier(step: int) -> float:
                return warmup_stable_decay(step, hp.warmup_steps, total, hp.min_lr_ratio, decay)
        else:

            def multiplier(step: int) -> float:
                return warmup_cosine(step, hp.warmup_steps, total, hp.min_lr_ratio)

        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


# Modules whose `weight` is a projection: the parameters weight decay applies to.
DECAYED_WEIGHTS = (nn.Linear, nn.Embedding, nn.Conv1d, ModalityLinear, ModalityConv1d)


def decay_groups(module: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(decayed, exempt) parameters by role, in `module.parameters()` order: the weights of projections, embeddings
    and convolutions decay; biases, norm scales, A_log and D never do, whatever their shape. (Deciding by rank would
    decay a decoupled bias, [M, E], and not the dense one, [E]: two arms under two regularisations.)"""
    weights = {id(m.weight) for m in module.modules() if isinstance(m, DECAYED_WEIGHTS)}
    params = list(module.parameters())
    return [p for p in params if id(p) in weights], [p for p in params if id(p) not in weights]


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Learning-rate multiplier: linear from 0 to 1 over `warmup` steps, then cosine to `min_ratio` at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def warmup_stable_decay(step: int, warmup: int, total: int, min_ratio: float, decay: int) -> float:
    """Learning-rate multiplier of a warmup-stable-decay schedule (Hägele et al. 2024, "Scaling Laws and
    Compute-Optimal Training Beyond Fixed Training Durations"): linear from 0 to 1 over `warmup` steps, 1 until the
    last `decay` steps, then down to `min_ratio` at `total` along their (1 - sqrt) cooldown. Every step before the
    cooldown is independent of `total`: a longer run's first steps are a shorter run's, and a cooldown may branch
    from any of them."""
    if step < warmup:
        return (step + 1) / warmup
    start = total - decay
    if step < start:
        return 1.0
    progress = min(1.0, (step - start) / decay)
    return min_ratio + (1 - min_ratio) * (1 - math.sqrt(progress))
