"""One run = one (setting, arm or variant, scale, seed), trained into its own folder (the run record,
analysis/run_record.py, defines the folder's files).

A finished run is never overwritten: running it again is a no-op that says so. An interrupted run resumes from its
last checkpoint and ends where an uninterrupted run would; a folder that holds a run of a different recipe (steps,
data, optimiser, model overrides) is an error, never silently mixed. A non-finite loss marks the run failed, with the
step and the modality in the reason, and raises no further (so a sweep goes on with its other runs). Ctrl-C marks the
run interrupted and raises KeyboardInterrupt, so a sweep stops there and continues on the next call.
"""

from __future__ import annotations

import csv
import json
import platform
import signal
import time
import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, ThroughputMonitor
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from analysis.flops import analytic_flops, count_flops
from analysis.run_record import (
    CHECKPOINT,
    FLOPS,
    METRICS,
    STEP,
    TENSORBOARD,
    TOKENS_PER_S,
    WALL,
    Summary,
    parse_loss_name,
    read_config,
    read_summary,
    run_dir,
    write_config,
    write_summary,
)
from common import atomic_write
from datamodules.multimodal import MultiModalDataModule
from datamodules.settings import get_setting
from datamodules.vocab import PATCH
from experiments.lit_module import LitMultiModalLM, NonFiniteLoss
from experiments.recipes import RECIPES
from models import SCALES, get_arm


class RunRecorder(L.Callback):
    """Logs cumulative FLOPs, throughput and wall-clock every step; writes summary.json at the start and the end."""

    def __init__(self, folder: Path, summary: Summary) -> None:
        self.folder, self.summary = folder, summary
        self.start = time.perf_counter()
        self.earlier: list[dict] = []  # metrics.csv rows of earlier attempts, kept across a resume

    def on_train_start(self, trainer, lit) -> None:
        self.start = time.perf_counter() - self.summary.wall_clock_s  # resumed runs keep their clock
        self.step_start = time.perf_counter()

    def on_train_batch_end(self, trainer, lit, outputs, batch, batch_idx) -> None:
        tokens = batch["tokens"].numel() * trainer.world_size  # every device trains on a batch of its own
        now = time.perf_counter()
        lit.log_step(FLOPS, float(trainer.global_step * self.summary.train_flops_per_step))
        lit.log_step(TOKENS_PER_S, tokens / max(now - self.step_start, 1e-9))
        lit.log_step(WALL, now - self.start)
        self.step_start = now

    def on_validation_epoch_end(self, trainer, lit) -> None:
        self.summary.wall_clock_s = time.perf_counter() - self.start

    def finish(self, trainer, lit, status: str, reason: str | None = None) -> None:
        writer = trainer.is_global_zero  # DDP: every rank runs train_run; one of them writes the record
        if writer:
            _merge_metrics(self.folder, self.earlier)
        s = self.summary
        s.status, s.reason, s.wall_clock_s, s.steps = (
            status,
            reason,
            time.perf_counter() - self.start,
            trainer.global_step,
        )
        s.final_val_loss = {
            k: float(v)
            for k, v in trainer.callback_metrics.items()
            if (key := parse_loss_name(k)) and key.kind == "val"
        }
        if writer:
            write_summary(self.folder, s)


def recipe_conflicts(
    folder: Path,
    max_steps: int,
    val_every: int,
    data: dict | None = None,
    module: dict | None = None,
    precision: str | None = None,
) -> list[str]:
    """How the run recorded in `folder` differs from the requested recipe ([] when it matches or nothing is there).

    Only what the caller asked for is compared (every `data` and `module` key given, the step budget and validation
    cadence, the precision); the other Trainer settings are not part of a recipe, so a run may resume on other
    hardware.
    """
    stored = read_config(folder)
    if stored is None:
        return []
    wanted = {"max_steps": max_steps, "val_every": val_every}
    wanted |= {f"data.{k}": v for k, v in (data or {}).items() if k != "cache_dir"}  # where, not what
    wanted |= {f"module.{k}": v for k, v in (module or {}).items()}
    wanted |= {"trainer.precision": precision} if precision is not None else {}
    conflicts = []
    for key, value in wanted.items():
        section, _, name = key.rpartition(".")
        have = (stored.get(section, {}) if section else stored).get(name)
        if plain(have) != plain(value):
            conflicts.append(f"{key}: recorded {have!r}, requested {value!r}")
    return conflicts


def plain(value):
    """JSON round trip: tuples and lists, ints and floats compare as they are stored."""
    return json.loads(json.dumps(value, default=str))


def check_run(setting: str, arm: str, scale: str) -> None:
    """Fail before anything is prepared or trained when a name is unknown, listing the valid ones."""
    get_setting(setting)
    get_arm(arm)
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; valid choices are {list(SCALES)}")


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
    recipe = RECIPES[scale]
    max_steps = recipe.max_steps if max_steps is None else max_steps
    val_every = recipe.val_every if val_every is None else val_every
    data, module, variant = recipe.data() | (data or {}), recipe.module() | (module or {}), variant or arm
    trainer = recipe.trainer() | (trainer or {})
    folder = run_dir(root, setting, scale, variant, seed)
    conflicts = recipe_conflicts(folder, max_steps, val_every, data, module, trainer["precision"])
    if conflicts:
        raise ValueError(
            f"{folder} holds a run of a different recipe ({'; '.join(conflicts)}); "
            "choose another root or delete the folder"
        )
    previous = read_summary(folder)
    if previous and previous.finished:
        print(f"{folder}: finished already, nothing to do (delete the folder to train it again)")
        return previous
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
    summary = _summary_start(lit, dm, Summary(setting, arm, variant, scale, seed), previous)
    write_summary(folder, summary)
    recorder = RunRecorder(folder, summary)
    checkpoints = (folder / CHECKPOINT).parent
    ckpt = ModelCheckpoint(dirpath=checkpoints, save_last=True, every_n_train_steps=val_every, save_top_k=0)
    settings = dict(
        max_steps=max_steps,
        val_check_interval=val_every,
        check_val_every_n_epoch=None,
        gradient_clip_val=1.0,
        accelerator="cpu",
        deterministic=True,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        num_sanity_val_steps=0,
    )
    settings.update(trainer)
    extra_callbacks = list(settings.pop("callbacks", []))
    if torch.cuda.is_available() and settings["accelerator"] in ("gpu", "cuda", "auto"):
        # Lightning's ThroughputMonitor reports tokens/s and MFU from the same analytic FLOPs the plots use.
        lit.flops_per_batch = summary.train_flops_per_step
        extra_callbacks.append(
            ThroughputMonitor(batch_size_fn=lambda b: b["tokens"].shape[0], length_fn=lambda b: b["tokens"].numel())
        )
    pl_trainer = L.Trainer(
        default_root_dir=folder,
        callbacks=[recorder, ckpt, *extra_callbacks],
        logger=[CSVLogger(folder, name="", version=""), TensorBoardLogger(folder, name="", version=TENSORBOARD)],
        **settings,
    )
    # DDP / FSDP: batch_size is per device, so a step trains on world_size batches (ThroughputMonitor's
    # flops_per_batch, set above, stays per device as Lightning wants it).
    world = pl_trainer.world_size
    summary.world_size = world
    summary.tokens_per_step *= world
    summary.train_flops_per_step *= world
    write_config(
        folder,
        {
            "setting": setting,
            "arm": arm,
            "variant": variant,
            "scale": scale,
            "seed": seed,
            "max_steps": max_steps,
            "val_every": val_every,
            "model": lit.cfg.to_dict(),
            "data": dict(dm.hparams),
            "module": dict(lit.hparams),
            "trainer": settings,
        },
    )
    last = folder / CHECKPOINT
    recorder.earlier = _metrics_before(folder, last)
    try:
        with warnings.catch_warnings():
            # The datamodule's sampler resumes mid-epoch itself (EpochSampler.skip); Lightning cannot know that.
            warnings.filterwarnings("ignore", message=".*dataloader is not resumable.*")
            pl_trainer.fit(lit, datamodule=dm, ckpt_path=str(last) if last.exists() else None)
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
        recorder.finish(pl_trainer, lit, "crashed", f"{type(exc).__name__}: {exc}")
        raise
    if pl_trainer.global_step < max_steps:  # stopped early (a callback asked to stop): resumable
        reason = f"stopped at step {pl_trainer.global_step}; run again to resume"
        recorder.finish(pl_trainer, lit, "interrupted", reason)
        return recorder.summary
    recorder.finish(pl_trainer, lit, "finished")
    return recorder.summary


def _metrics_before(folder: Path, last: Path) -> list[dict]:
    """Rows of metrics.csv logged before the checkpoint a resumed run restarts from (the logger rewrites the file)."""
    path = folder / METRICS
    if not (last.exists() and path.exists()):
        return []
    resume_step = torch.load(last, map_location="cpu", weights_only=False)["global_step"]
    with open(path, newline="") as f:
        return [row for row in csv.DictReader(f) if row.get(STEP) and int(row[STEP]) < resume_step]


def _merge_metrics(folder: Path, earlier: list[dict]) -> None:
    """metrics.csv = the rows from before the resume point + the rows of this attempt (rows kept as written)."""
    path = folder / METRICS
    if not earlier or not path.exists():
        return
    with open(path, newline="") as f:
        rows = earlier + list(csv.DictReader(f))
    columns = list(dict.fromkeys(k for row in rows for k in row))

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)

    atomic_write(path, write)


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
