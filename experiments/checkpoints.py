"""A run's checkpoint: written whole with its SHA-256 beside it, saved only where the run can resume to the
uninterrupted numbers, holding where the run stands in its data, and loaded without running code.

    AtomicCheckpointIO   Lightning's checkpoint plugin: each checkpoint whole or not at all, then its SHA-256
    RunCheckpoint        after every `val_every`-th step's validation and at the run's end, never at a stop
    BatchOrder           the digest of the batches trained, and the data position, in every checkpoint
    load_checkpoint      torch.load(weights_only=True) with the suite's allowlist; UnsafeCheckpoint for anything else
    resume_problem       why a checkpoint cannot be resumed from (altered, another data position), or None
"""

from __future__ import annotations

import errno
import hashlib
import os
import pathlib
import shutil
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from common.files import atomic_write
from datamodules.samplers import DataPosition, order_digest

# What a run's checkpoint may hold besides tensors, numbers, strings and containers (torch's weights_only set): the
# paths a Python caller may pass as data or cache folders, which the datamodule's hyperparameters keep.
SAFE_GLOBALS = (pathlib.PosixPath, pathlib.WindowsPath)
DATA_POSITION, BATCH_ORDER = "data_position", "batch_order"  # this suite's keys in a checkpoint
FULL_BELOW = 2**20  # bytes free under which a failed write is taken for a full disk


class UnsafeCheckpoint(ValueError):
    """A checkpoint holding pickled objects a run's checkpoint never holds; it was not loaded."""


def sha_path(checkpoint: Path) -> Path:
    """The file beside a checkpoint that holds its SHA-256 (`last.ckpt.sha256`)."""
    return checkpoint.with_name(checkpoint.name + ".sha256")


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written into a temporary file beside the target, flushed to disk, then renamed over it: a crash
    or a full disk leaves the previous checkpoint, never a truncated one. Its SHA-256 is then written beside it, so
    that a resume, a sample or an export can tell the file is the one this run wrote."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        def write(tmp: Path) -> None:
            try:
                torch.save(checkpoint, tmp)
            except RuntimeError as exc:
                # torch's zip writer reports a full disk as a RuntimeError ("unexpected pos"); the filesystem says.
                if shutil.disk_usage(tmp.parent).free < FULL_BELOW:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from exc
                raise

        path = Path(path)
        atomic_write(path, write)
        atomic_write(sha_path(path), file_sha256(path) + "\n")


def sha_problem(checkpoint: Path) -> str | None:
    """How a checkpoint differs from the SHA-256 written beside it, or None when it matches."""
    try:
        recorded = sha_path(checkpoint).read_text().strip()
    except FileNotFoundError:
        return f"{checkpoint}: no {sha_path(checkpoint).name} beside it (not written by this suite, or cut off)"
    found = file_sha256(checkpoint)
    return None if found == recorded else f"{checkpoint}: SHA-256 {found[:12]}..., written as {recorded[:12]}..."


class RunCheckpoint(L.Callback):
    """`last.ckpt` after every `every`-th step's validation and at the run's last step, never when training stops
    before it; metrics.csv is written out first, so a checkpoint never exists without the rows of the steps before it.

    After the validation, not before it (where Lightning's own step-count checkpoints save): a resume from a checkpoint
    saved between a step and its validation skips that validation, so a kill inside it lost its rows for good.
    Never at a stop: a stop requested mid-epoch (a worker whose comparison died, any callback's `should_stop`) makes
    Lightning end the epoch early and count it complete, so a checkpoint saved then says the next epoch at a mid-epoch
    step, and a run resumed from it would train another order of the data. A stopped run resumes from its last
    checkpoint instead and trains the steps after it again, to the same numbers.
    """

    def __init__(self, path: Path, every: int) -> None:
        self.path, self.every, self.saved_step = path, every, -1

    def on_validation_end(self, trainer, lit) -> None:
        if not trainer.sanity_checking and trainer.global_step % self.every == 0:
            self._save(trainer)

    def on_train_end(self, trainer, lit) -> None:
        if trainer.global_step >= trainer.max_steps and self.saved_step != trainer.global_step:
            self._save(trainer)

    def _save(self, trainer) -> None:
        for logger in trainer.loggers:
            logger.save()
        trainer.save_checkpoint(self.path)
        self.saved_step = trainer.global_step


class BatchOrder(L.Callback):
    """The batches a run trained, as one digest chained step by step over their sequence keys (`order_digest`; on
    rank 0 under DDP), and in every checkpoint the position of the data the run continues from. A resumed run
    continues the chain from its checkpoint, so a finished run's digest says which batches it trained, in order."""

    def __init__(self) -> None:
        self.digest = ""

    def on_train_batch_end(self, trainer, lit, outputs, batch, batch_idx) -> None:
        self.digest = order_digest(batch["sequence"], self.digest)

    def on_save_checkpoint(self, trainer, lit, checkpoint: dict) -> None:
        checkpoint[BATCH_ORDER] = self.digest
        position = trainer.datamodule.train_position(trainer.global_step, trainer.world_size)
        checkpoint[DATA_POSITION] = position._asdict()

    def on_load_checkpoint(self, trainer, lit, checkpoint: dict) -> None:
        self.digest = checkpoint[BATCH_ORDER]


def check_safe(path: Path) -> None:
    """UnsafeCheckpoint naming the file and the types it found unless it holds only what a run's checkpoint holds.
    Reads the pickle's opcodes; nothing in the file is run."""
    allowed = {f"{t.__module__}.{t.__qualname__}" for t in SAFE_GLOBALS}
    found = sorted(set(torch.serialization.get_unsafe_globals_in_checkpoint(path)) - allowed)
    if found:
        raise UnsafeCheckpoint(
            f"{path}: holds pickled {', '.join(found)}, which a run's checkpoint never holds; loading it could run "
            "code, so it was not loaded (pass --trust-checkpoint only for a file whose origin you trust)"
        )


def load_checkpoint(path: str | Path, **kwargs) -> dict:
    """torch.load of a checkpoint that holds only tensors, numbers, strings, containers and SAFE_GLOBALS; anything
    else raises UnsafeCheckpoint before it is unpickled."""
    check_safe(Path(path))
    with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
        return torch.load(path, weights_only=True, **kwargs)


def resume_problem(path: Path, checkpoint: dict, expected: DataPosition) -> str | None:
    """Why the run cannot continue from `checkpoint` (loaded from `path`) on data whose position after its step is
    `expected`, or None: it must record that very position, and Lightning's epoch in it must be the data's (the epoch
    before it when the checkpoint ends an epoch: Lightning then finishes that epoch at once)."""
    step, epoch = checkpoint["global_step"], checkpoint["epoch"]
    recorded = checkpoint.get(DATA_POSITION)
    if recorded is None or BATCH_ORDER not in checkpoint:
        return f"{path} records no data position (an earlier version of the suite wrote it)"
    if DataPosition(**recorded) != expected:
        return f"{path} continues at {DataPosition(**recorded)}, but the run's data after step {step} is at {expected}"
    if epoch != expected.epoch and not (expected.position == 0 and epoch == expected.epoch - 1):
        return f"{path} says epoch {epoch} at step {step}, but the data is in epoch {expected.epoch} there"
    return None
