"""Training one run: a `RunRequest` (experiments/recipes.py) trained into its own folder (the run record,
analysis/run_record.py, defines the folder's files), in stages: the Trainer (which refuses bad flags before anything
is written), the folder's record (`_previous`), then the data and model, the resume point, training and the record.

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
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
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
    read_summary,
    write_config,
    write_summary,
)
from datamodules.multimodal import MultiModalDataModule
from datamodules.vocab import PATCH
from experiments.checkpoints import AtomicCheckpointIO, BatchOrder, RunCheckpoint
from experiments.lit_module import LitMultiModalLM, NonFiniteLoss
from experiments.recipes import RunRequest
from experiments.store import MetricsLogger, disk_full, is_val_loss, move_aside, resume_point, run_lock


class RunRecorder(L.Callback):
    """Logs cumulative FLOPs, throughput and wall-clock every step; writes summary.json at the start (`start`) and
    the end (`finish`), with the digest of the batches trained (`BatchOrder`) once finished."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.order = folder, BatchOrder()
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
        s = self.summary
        s.status, s.reason, s.steps = status, reason, trainer.global_step
        s.wall_clock_s = time.perf_counter() - self.start_time
        s.final_val_loss = {k: float(v) for k, v in trainer.callback_metrics.items() if is_val_loss(k)}
        s.batch_order = self.order.digest if status == "finished" else ""
        if trainer.is_global_zero:  # DDP: every rank runs train_run; one of them writes the record
            s.files = file_record(self.folder) if status == "finished" else {}
            write_summary(self.folder, s)


_HARDWARE = ("accelerator", "devices", "num_nodes", "strategy", "precision")


def check_trainer(flags: dict) -> None:
    """ValueError naming the flag when Lightning would refuse these Trainer flags on this machine (an accelerator it
    does not have, more devices than it has, an unknown precision or strategy), before anything is written."""
    given = {k: v for k, v in flags.items() if k in _HARDWARE}
    with _named_flags(given):
        L.Trainer(**given, logger=False, enable_checkpointing=False, enable_progress_bar=False)


@contextmanager
def _named_flags(flags: dict) -> Iterator[None]:
    """Lightning's refusal of Trainer flags as a ValueError that names them; its notes on the hardware it found are
    not shown."""
    logging.disable(logging.INFO)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    except (MisconfigurationException, ValueError, TypeError, RuntimeError) as exc:
        named = ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in flags.items() if k in _HARDWARE)
        raise ValueError(f"{named}: {exc}") from None
    finally:
        logging.disable(logging.NOTSET)


def train_run(request: RunRequest) -> Summary:
    """Train one run to its max_steps (resuming if interrupted); returns its summary. The module docstring says what
    happens to a folder that holds a run already."""
    if conflicts := request.conflicts():
        raise ValueError(
            f"{request.folder} holds a run of a different recipe ({'; '.join(conflicts)}); "
            "choose another root or delete the folder"
        )
    settings = _trainer_settings(request)
    recorder = RunRecorder(request.folder)
    # Lightning refuses bad flags here, before anything is written
    pl_trainer = _trainer(request, settings, recorder)
    writer = rank_zero_only.rank == 0  # DDP: every rank runs this function; one of them owns the folder
    try:
        with run_lock(request.folder) if writer else nullcontext():
            previous = _previous(request.folder)
            if previous is not None and previous.finished:
                return previous
            return _fit(request, settings, pl_trainer, recorder, previous, writer)
    except OSError as exc:
        last = request.folder / CHECKPOINT  # the space a checkpoint needs: the last one's, or a guess before the first
        full = disk_full(exc, request.folder, last.stat().st_size if last.exists() else 64 * 2**20)
        if full is None:
            raise
        raise full from None


def _previous(folder: Path) -> Summary | None:
    """The folder's record: a finished run whose files agree with it, or an unfinished one to resume; None when
    there is none, or a finished run's files disagree with it (that folder is moved aside and trained again)."""
    previous = read_summary(folder)
    if not (previous and previous.finished):
        return previous
    problems = file_disagreements(folder, previous)
    if not problems:
        print(f"{folder}: finished already, nothing to do (delete the folder to train it again)")
        return previous
    aside = move_aside(folder, "damaged")
    print(f"{folder}: files disagree with the summary ({'; '.join(problems)}); moved to {aside}; training again")
    return None


def _trainer(request: RunRequest, settings: dict, recorder: RunRecorder) -> L.Trainer:
    """The run's Trainer: `settings`, the request's callbacks and plugins, the run's own loggers and checkpoints."""
    if settings["deterministic"] is True:
        # Deterministic algorithms also fill every new tensor with NaN (torch's fill_uninitialized_memory), a check
        # that no op reads memory it did not write, at a cost measured in benchmarks/README.md. The tests that
        # compare bits (a resumed run, 1 and 2 threads, runs side by side against runs alone) guard determinism
        # instead. The setting is the process's, as torch has it.
        torch.utils.deterministic.fill_uninitialized_memory = False
    callbacks = [recorder, recorder.order, RunCheckpoint(request.folder / CHECKPOINT, request.val_every)]
    callbacks += request.trainer.get("callbacks", [])
    plugins = [*(request.trainer.get("plugins") or []), AtomicCheckpointIO()]
    if torch.cuda.is_available() and settings["accelerator"] in ("gpu", "cuda", "auto"):
        # Lightning's ThroughputMonitor reports tokens/s and MFU from the same analytic FLOPs the plots use
        # (lit.flops_per_batch, set in `_fit`).
        callbacks.append(
            ThroughputMonitor(batch_size_fn=lambda b: b["tokens"].shape[0], length_fn=lambda b: b["tokens"].numel())
        )
    folder = request.folder
    loggers = [MetricsLogger(folder, name="", version=""), TensorBoardLogger(folder, name="", version=TENSORBOARD)]
    with _named_flags(settings):
        return L.Trainer(default_root_dir=folder, callbacks=callbacks, logger=loggers, plugins=plugins, **settings)


def _trainer_settings(request: RunRequest) -> dict:
    """The Trainer's arguments but its callbacks, plugins and loggers (what config.json records): the suite's
    defaults (CPU, deterministic, no sanity check, ...) under the request's."""
    defaults = dict(
        max_steps=request.max_steps,
        val_check_interval=request.val_every,
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
    return {k: v for k, v in (defaults | request.trainer).items() if k not in ("callbacks", "plugins")}


def _build(request: RunRequest) -> tuple[MultiModalDataModule, LitMultiModalLM]:
    """The run's data (set up for training) and model, seeded with the run's seed."""
    L.seed_everything(request.seed, workers=True, verbose=False)
    dm = MultiModalDataModule(setting=request.setting, seed=request.seed, **request.data)
    dm.prepare_data()
    dm.setup("fit")
    lit = LitMultiModalLM(
        arch=request.arm,
        scale=request.scale,
        vocab_size=dm.vocab_size,
        n_modalities=dm.n_modalities,
        patch_dim=dm.patch_dim,
        val_names=tuple(dm.val_sets),
        image_sources=dm.image_sources,
        **request.module,
    )
    if lit.cfg.routing == "token_hash":  # a fixed expert per token id, balanced on this training set
        lit.model.balance_token_experts(dm.token_counts())
    return dm, lit


def _fit(request: RunRequest, settings: dict, pl_trainer: L.Trainer, recorder: RunRecorder,
         previous: Summary | None, writer: bool) -> Summary:  # fmt: skip
    """Build, resume (from the folder's last checkpoint), record the start, train and record the end."""
    folder = request.folder
    folder.mkdir(parents=True, exist_ok=True)
    dm, lit = _build(request)
    world = pl_trainer.world_size
    if writer:
        last, why = resume_point(folder, lambda step: dm.train_position(step, world), request.val_every)
        if why:
            print(f"{folder}: {why}")
            previous = None
    else:
        last = folder / CHECKPOINT if (folder / CHECKPOINT).exists() else None
    identity = {k: getattr(request, k) for k in ("setting", "arm", "variant", "scale", "seed")}
    identity["recipe"] = request.recipe_id
    summary = _summary_start(lit, dm, Summary(**identity), previous)
    # DDP / FSDP: batch_size is per device, so a step trains on world_size batches (ThroughputMonitor's
    # flops_per_batch stays per device as Lightning wants it).
    lit.flops_per_batch = summary.train_flops_per_step
    summary.world_size = world
    summary.tokens_per_step *= world
    summary.train_flops_per_step *= world
    recorder.start(summary)
    # config.json: the run's identity and every resolved argument of its model, data, module and Trainer
    resolved = {"model": lit.cfg.to_dict(), "data": dict(dm.hparams), "module": dict(lit.hparams), "trainer": settings}
    write_config(folder, identity | {"max_steps": request.max_steps, "val_every": request.val_every} | resolved)
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
    if pl_trainer.global_step < request.max_steps:  # stopped early (a callback asked to stop): resumable
        reason = f"stopped at step {pl_trainer.global_step}; run again to resume"
        recorder.finish(pl_trainer, lit, "interrupted", reason)
    else:
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
    summary.versions = versions()
    summary.device = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu"
    if previous is not None:  # a resumed run keeps its clock, steps and last losses
        summary.wall_clock_s, summary.steps = previous.wall_clock_s, previous.steps
        summary.final_val_loss = previous.final_val_loss
    return summary


def versions() -> dict[str, str]:
    """The versions a run or a comparison records: torch, Lightning and Python."""
    return {"torch": torch.__version__, "lightning": L.__version__, "python": platform.python_version()}
