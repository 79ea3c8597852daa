"""The training order: every epoch a fixed permutation of the sequences per (seed, epoch), resumable mid-epoch, and
under DDP each rank's share of every global batch (the batches one process would train). A sequence's key is
(epoch, index); `order_digest` condenses keys, and `DataPosition` says where in the order a run stands."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import DistributedSampler, Sampler


def order_digest(keys: torch.Tensor | np.ndarray | list, previous: str = "") -> str:
    """SHA-256 of sequence keys (epoch, index) in order, chained onto a previous digest: the digest of a run's
    batches, step after step, says which sequences it trained and in which order."""
    if isinstance(keys, torch.Tensor):
        keys = keys.cpu().numpy()
    data = np.ascontiguousarray(np.asarray(keys, dtype=np.int64).reshape(-1, 2))
    return hashlib.sha256(previous.encode() + data.tobytes()).hexdigest()


class DataPosition(NamedTuple):
    """Where a run stands in its training order after some steps: the epoch, the sequences of that epoch's order
    already trained, and the digest of the next global batch's keys."""

    epoch: int
    position: int
    next_batch: str

    def __str__(self) -> str:
        return f"epoch {self.epoch}, sequence {self.position} of its order, next batch {self.next_batch[:12]}..."


class EpochSampler(Sampler):
    """Yields (epoch, index) pairs: a permutation drawn from (seed, epoch), or the fixed order when not shuffling.

    Lightning calls `set_epoch` at every epoch start, so an epoch's order and noise do not depend on how the run got
    there. `skip` drops the first items of the epoch: a run resumed mid-epoch continues exactly where it stopped. The
    length is the whole epoch's, skipped items included: Lightning counts an epoch's batches from it, and continues
    that count in a resumed epoch, which therefore ends where the uninterrupted epoch ends.
    """

    def __init__(self, n: int, seed: int, shuffle: bool, epoch: int = 0, skip: int = 0) -> None:
        self.n, self.seed, self.shuffle, self.epoch, self.skip = n, seed, shuffle, epoch, skip

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.skip = 0  # a resumed epoch skips what it had done; the next one starts at its beginning
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = np.random.default_rng((self.seed, self.epoch)).permutation(self.n) if self.shuffle else range(self.n)
        return ((self.epoch, int(i)) for i in list(order)[self.skip :])


class GlobalBatchShard(DistributedSampler):
    """One rank's share of an EpochSampler under DDP: of every global batch (world_size x batch_size consecutive
    items of the epoch's order), the batch_size items at offset rank x batch_size.

    The ranks of one step therefore read exactly the batch that one process with batch_size x world_size reads at
    that step, so a DDP run sees the single-process run's data and a resumed DDP run continues where it stopped. It
    is a DistributedSampler only so that Lightning uses it as it is: Lightning wraps any other sampler in a
    DistributedSamplerWrapper, which shuffles the order again (with its own seed) and deals items round-robin.
    A trailing partial global batch is dropped, as the single-process loader's drop_last does.
    """

    def __init__(self, epochs: EpochSampler, batch_size: int, rank: int, world_size: int) -> None:
        # DistributedSampler.__init__ is not called: it wants a dataset and a process group; this needs neither.
        self.epochs, self.batch_size, self.rank, self.num_replicas = epochs, batch_size, rank, world_size
        self.shuffle, self.seed, self.drop_last = epochs.shuffle, epochs.seed, True

    @property
    def epoch(self) -> int:
        return self.epochs.epoch

    @epoch.setter
    def epoch(self, epoch: int) -> None:  # DistributedSampler.set_epoch assigns it: Lightning's call reaches the order
        self.epochs.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.epochs) // (self.batch_size * self.num_replicas) * self.batch_size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        items, step, b = list(self.epochs), self.batch_size * self.num_replicas, self.batch_size
        for start in range(0, len(items) - step + 1, step):
            yield from items[start + self.rank * b : start + (self.rank + 1) * b]
