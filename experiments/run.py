"""One run = one (setting, arm or variant, scale, seed), trained into its own folder (the run record,
analysis/run_record.py, defines the folder's files).

A finished run is never overwritten: running it again is a no-op that says so. An interrupted run resumes from its
last checkpoint and ends where an uninterrupted run would; a folder that holds a run of a different recipe (steps,
data, optimiser, model overrides) is an error, never silently mixed. A non-finite loss marks the run failed, with the
step and the modality in the reason, and raises no further (so a sweep goes on with its other runs). Ctrl-C marks the
run interrupted and raises KeyboardInterrupt, so a sweep stops there and continues on the next call.
"""

from __future__ import annotations

import logging
import platform
import signal
import time
import warnings
from contextlib import nullcontext
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ThroughputMonitor
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from analysis.flops import analytic_flops, count_flops
from analysis.run_record import (
    CHECKPOINT,
    FLOPS,
    TENSORBOARD,
    TOKENS_PER_S,
    WALL,
    Summary,
    file_disagreements,
    file_record,
    parse_loss_name,
    read_summary,
    run_dir,
    write_config,
    write_summary,
)
from datamodules.multimodal import MultiModalDataModule
from datamodules.settings import get_setting
from datamodules.vocab import PATCH
from experiments.checkpoints import AtomicCheckpointIO, BatchOrder, RunCheckpoint
from experiments.lit_module import LitMultiModalLM, NonFiniteLoss
from experiments.recipes import recipe_conflicts, recipe_id, with_recipe
from experiments.store import MetricsLogger, disk_full, resume_point, run_lock
from models import SCALES, get_arm


class RunRecorder(L.Callback):
    """Logs cumulative FLOPs, throughput and wall-clock every step; writes summary.json at the start (`start`) and
    the end (`finish`), with the digest of the batches trained (`BatchOrder`) once finished."""

    def __init__(self, folder: Path, order: BatchOrder) -> None:
        self.folder, self.order = folder, order
        self.start_time = time.perf_counter()

    def start(self, summary: Summary) -> None:
        self.summary = summary
        write_summary(self.folder, summary)

    def on_train_start(self, trainer, lit) -> None:
        self.start_time = time.perf_counter() - self.summary.wall_clock_s  # resumed runs keep their clock
        self.step_start = time.perf_counter()

    def on_train_batch_end(self, trainer, lit, outputs, batch, batch_idx) -> None:
        tokens = batch["tokens"].numel() * trainer.world_size  # every device trains on a batch of its own
        now = time.perf_counter()
        lit.log_step(FLOPS, float(trainer.global_step * self.summary.train_flops_per_step))
        lit.log_step(TOKENS_PER_S, tokens / max(now - self.step_start, 1e-9))
        lit.log_step(WALL, now - self.start_time)
        self.step_start = now

    def on_validation_epoch_end(self, trainer, lit) -> None:
        self.summary.wall_clock_s = time.perf_counter() - self.start_time

    def finish(self, trainer, lit, status: str, reason: str | None = None) -> None:
        writer = trainer.is_global_zero  # DDP: every rank runs train_run; one of them writes the record
        s = self.summary
        s.status, s.reason, s.wall_clock_s, s.steps = (
            status,
            reason,
            time.perf_counter() - self.start_time,
            trainer.global_step,
        )
        s.final_val_loss = {
            k: float(v)
            for k, v in trainer.callback_metrics.items()
            if (key := parse_loss_name(k)) and key.kind == "val"
        }
        s.batch_order = self.order.digest if status == "finished" else ""
        if writer:
            s.files = file_record(self.folder) if status == "finished" else {}
            write_summary(self.folder, s)


def check_trainer(flags: dict) -> None:
    """ValueError naming the flag when Lightning would refuse these Trainer flags on this machine (an accelerator it
    does not have, more devices than it has, an unknown precision or strategy), before anything is written."""
    given = {k: v for k, v in flags.items() if k in ("accelerator", "devices", "num_nodes", "strategy", "precision")}
    logging.disable(logging.INFO)  # the Trainer's notes on the hardware it found
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            L.Trainer(**given, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    except (MisconfigurationException, ValueError, TypeError, RuntimeError) as exc:
        named = ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in given.items())
        raise ValueError(f"{named}: {exc}") from None
    finally:
        logging.disable(logging.NOTSET)


def check_run(setting: str, arm: str, scale: str) -> None:
    """Fail before anything is prepared or trained when a name is unknown, listing the valid ones."""
    get_setting(setting)
    get_arm(arm)
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; valid choices are {list(SCALES)}")


def run_folder(
    setting: str,
    arm: str,
    scale: str = "tiny",
    seed: int = 0,
    max_steps: int | None = None,
    root: str | Path = "runs",
    val_every: int | None = None,
    data: dict | None = None,
    module: dict | None = None,
    trainer: dict | None = None,
    variant: str | None = None,
) -> Path:
    """The folder `train_run` with these arguments trains into."""
    return _locate(setting, arm, scale, seed, max_steps, root, val_every, data, module, trainer, variant)[0]


def _locate(setting, arm, scale, seed, max_steps, root, val_every, data, module, trainer, variant):
    """(folder, recipe name, the arguments with the scale's recipe under them) of a run."""
    resolved = with_recipe(scale, max_steps, val_every, data, module, trainer, variant or arm)
    max_steps, val_every, data, module, trainer, variant = resolved
    recipe = recipe_id(scale, max_steps, val_every, data, module, trainer["precision"])
    return run_dir(root, setting, scale, recipe, variant, seed), recipe, resolved


def train_run(
    setting: str,
    arm: str,
    scale: str = "tiny",
    seed: int = 0,
    max_steps: int | None = None,
    root: str | Path = "runs",
    val_every: int | None = None,
    data: dict | None = None,
    module: dict | None = None,
    trainer: dict | None = None,
    variant: str | None = None,
) -> Summary:
    """Train one run to max_steps (resuming if interrupted); returns its summary.

    Args:
        setting, arm, scale, seed: what the run is.
        variant: the run's folder name when it is a variant of its arm (default: the arm).
        max_steps: optimiser steps (the schedule decays to its floor at max_steps); default: the scale's recipe.
        root: where run folders live.
        val_every: validate every this many steps; default: the scale's recipe.
        data: MultiModalDataModule arguments on top of the recipe's (identical for every arm of a comparison).
        module: LitMultiModalLM arguments on top of the recipe's (lr, warmup_steps, model_overrides, ...).
        trainer: lightning.Trainer arguments (accelerator, devices, precision, strategy, ...); precision defaults to
            the recipe's.
    """
    check_run(setting, arm, scale)
    folder, recipe, resolved = _locate(setting, arm, scale, seed, max_steps, root, val_every, data, module, trainer,
                                       variant)  # fmt: skip
    max_steps, val_every, data, module, trainer, variant = resolved
    check_trainer(trainer)
    conflicts = recipe_conflicts(folder, max_steps, val_every, data, module, trainer["precision"])
    if conflicts:
        raise ValueError(
            f"{folder} holds a run of a different recipe ({'; '.join(conflicts)}); "
            "choose another root or delete the folder"
        )
    writer = rank_zero_only.rank == 0  # DDP: every rank runs this function; one of them owns the folder
    try:
        with run_lock(folder) if writer else nullcontext():
            return _train(folder, recipe, writer, setting, arm, scale, seed, max_steps, val_every, data, module,
                          trainer, variant)  # fmt: skip
    except OSError as exc:
        full = disk_full(exc, folder, _checkpoint_bytes(folder))
        if full is None:
            raise
        raise full from None


def _checkpoint_bytes(folder: Path) -> int:
    """A checkpoint's size: the last one's, or a guess for a run that has none yet."""
    last = folder / CHECKPOINT
    return last.stat().st_size if last.exists() else 64 * 2**20


def _train(folder: Path, recipe: str, writer: bool, setting, arm, scale, seed, max_steps, val_every, data, module,
           trainer, variant) -> Summary:  # fmt: skip
    """train_run's work in its folder, under the folder's lock."""
    previous = read_summary(folder)
    if previous and previous.finished:
        problems = file_disagreements(folder, previous)
        if not problems:
            print(f"{folder}: finished already, nothing to do (delete the folder to train it again)")
            return previous
        aside = folder.with_name(f"{folder.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
        folder.rename(aside)
        print(f"{folder}: files disagree with the summary ({'; '.join(problems)}); moved to {aside}; training again")
        previous = None
    folder.mkdir(parents=True, exist_ok=True)
    L.seed_everything(seed, workers=True, verbose=False)
    dm = MultiModalDataModule(setting=setting, seed=seed, **data)
    dm.prepare_data()
    dm.setup("fit")
    lit = LitMultiModalLM(
        arch=arm,
        scale=scale,
        vocab_size=dm.vocab_size,
        n_modalities=dm.n_modalities,
        patch_dim=dm.patch_dim,
        val_names=tuple(dm.val_sets),
        image_sources=dm.image_sources,
        **module,
    )
    if lit.cfg.routing == "token_hash":  # a fixed expert per token id, balanced on this training set
        lit.model.balance_token_experts(dm.token_counts())
    settings = dict(
        max_steps=max_steps,
        val_check_interval=val_every,
        check_val_every_n_epoch=None,
        gradient_clip_val=1.0,
        accelerator="cpu",
        deterministic=True,
        enable_progress_bar=False,
        enable_checkpointing=False,  # RunCheckpoint saves the run's checkpoints; Lightning would add its own
        enable_model_summary=False,
        log_every_n_steps=1,
        num_sanity_val_steps=0,
    )
    settings.update(trainer)
    if settings["deterministic"] is True:
        # Deterministic algorithms also fill every new tensor with NaN (torch's fill_uninitialized_memory), a check
        # that no op reads memory it did not write, at a cost measured in benchmarks/README.md. The tests that
        # compare bits (a resumed run, 1 and 2 threads, runs side by side against runs alone) guard determinism
        # instead. The setting is the process's, as torch has it.
        torch.utils.deterministic.fill_uninitialized_memory = False
    extra_callbacks = list(settings.pop("callbacks", []))
    plugins = [*(settings.pop("plugins", None) or []), AtomicCheckpointIO()]
    if torch.cuda.is_available() and settings["accelerator"] in ("gpu", "cuda", "auto"):
        # Lightning's ThroughputMonitor reports tokens/s and MFU from the same analytic FLOPs the plots use
        # (lit.flops_per_batch, set below).
        extra_callbacks.append(
            ThroughputMonitor(batch_size_fn=lambda b: b["tokens"].shape[0], length_fn=lambda b: b["tokens"].numel())
        )
    order = BatchOrder()
    recorder = RunRecorder(folder, order)
    pl_trainer = L.Trainer(
        default_root_dir=folder,
        callbacks=[recorder, order, RunCheckpoint(folder / CHECKPOINT, val_every), *extra_callbacks],
        logger=[MetricsLogger(folder, name="", version=""), TensorBoardLogger(folder, name="", version=TENSORBOARD)],
        plugins=plugins,
        **settings,
    )
    world = pl_trainer.world_size
    if writer:
        last, why = resume_point(folder, lambda step: dm.train_position(step, world), val_every)
        if why:
            print(f"{folder}: {why}")
            previous = None
    else:
        last = folder / CHECKPOINT if (folder / CHECKPOINT).exists() else None
    summary = _summary_start(lit, dm, Summary(setting, arm, variant, scale, seed, recipe), previous)
    # DDP / FSDP: batch_size is per device, so a step trains on world_size batches (ThroughputMonitor's
    # flops_per_batch stays per device as Lightning wants it).
    lit.flops_per_batch = summary.train_flops_per_step
    summary.world_size = world
    summary.tokens_per_step *= world
    summary.train_flops_per_step *= world
    recorder.start(summary)
    write_config(
        folder,
        {
            "setting": setting,
            "arm": arm,
            "variant": variant,
            "scale": scale,
            "seed": seed,
            "recipe": recipe,
            "max_steps": max_steps,
            "val_every": val_every,
            "model": lit.cfg.to_dict(),
            "data": dict(dm.hparams),
            "module": dict(lit.hparams),
            "trainer": settings,
        },
    )
    try:
        with warnings.catch_warnings():
            # The datamodule's sampler resumes mid-epoch itself (EpochSampler.skip); Lightning cannot know that.
            warnings.filterwarnings("ignore", message=".*dataloader is not resumable.*")
            pl_trainer.fit(lit, datamodule=dm, ckpt_path=str(last) if last else None)
    except SystemExit:
        if not pl_trainer.interrupted:
            raise
        # Lightning turned Ctrl-C into a graceful shutdown and sys.exit(1), leaving SIGINT ignored.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        recorder.finish(pl_trainer, lit, "interrupted", f"interrupted at step {pl_trainer.global_step}")
        raise KeyboardInterrupt(f"{folder}: interrupted at step {pl_trainer.global_step}") from None
    except NonFiniteLoss as exc:
        recorder.finish(pl_trainer, lit, "failed", str(exc))
        print(f"{folder}: failed - {exc}")
        return recorder.summary
    except Exception as exc:  # a crash: recorded, and the next call resumes from the last checkpoint
        try:
            recorder.finish(pl_trainer, lit, "crashed", f"{type(exc).__name__}: {exc}")
        except OSError:  # a full disk: summary.json keeps its last state, which resumes the same way
            pass
        raise
    if pl_trainer.global_step < max_steps:  # stopped early (a callback asked to stop): resumable
        reason = f"stopped at step {pl_trainer.global_step}; run again to resume"
        recorder.finish(pl_trainer, lit, "interrupted", reason)
        return recorder.summary
    recorder.finish(pl_trainer, lit, "finished")
    return recorder.summary


def image_mix(dm: MultiModalDataModule) -> dict[str, dict[str, float]]:
    """Each image source's share of the image tokens, in training and in every validation set."""
    mix = {}
    for split, stats in dm.stats().items():
        total = sum(stats["image_sources"].values())
        mix[split] = {source: n / total for source, n in stats["image_sources"].items()} if total else {}
    return mix


def _summary_start(lit: LitMultiModalLM, dm: MultiModalDataModule, summary: Summary, previous: Summary | None):
    """The summary fields known before training: sizes, FLOPs (analytic and counted), backend, versions."""
    batch = next(iter(dm.train_dataloader()))
    patch_fraction = float((batch["tokens"] == PATCH).float().mean())
    analytic = analytic_flops(lit.cfg, dm.seq_len, patch_fraction=patch_fraction)
    counted = count_flops(lit.model, batch)
    summary.params_total, summary.params_active = lit.model.param_count()
    summary.flops_per_token = 3 * counted.per_token
    summary.flops_per_token_analytic = analytic.train_per_token
    summary.tokens_per_step = dm.batch_size * dm.seq_len
    summary.train_flops_per_step = analytic.train_per_token * summary.tokens_per_step
    summary.backend = lit.model.backend
    summary.threads = torch.get_num_threads()
    summary.data_sources = list(dm.sources)
    summary.data_notes = list(dm.notes)
    summary.image_mix = image_mix(dm)
    summary.versions = {"torch": torch.__version__, "lightning": L.__version__, "python": platform.python_version()}
    summary.device = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu"
    if previous is not None:  # a resumed run keeps its clock, steps and last losses
        summary.wall_clock_s, summary.steps, summary.final_val_loss = (
            previous.wall_clock_s,
            previous.steps,
            previous.final_val_loss,
        )
    return summary
