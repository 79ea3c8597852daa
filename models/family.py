"""`Family`: what one architecture family (Mamba, Mamba-2, transformer) owns, side by side (torchtitan style).

A family knows its residual block and that block's initialisation, the parts a sparse arm may decouple per
modality, its named sizes, its parameter count and its FLOPs formula. Everything above it (the config, the model, the
FLOPs accounting, the comparison) asks the family instead of branching on its name, so a new family is one new
subclass in one file beside its block, with the arms its module registers (`models/mamba2.py` is one).

The FLOPs convention every `block_flops` follows is stated once, in `analysis/flops.py`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Generic, NamedTuple, TypeVar

import torch
from torch import nn

# The config a family reads (models.config.ModelConfig, which looks its arm's family up: the family module names it,
# `MambaFamily(Family[ModelConfig])`, so that this module needs no import of it).
Config = TypeVar("Config")

# Named sizes every family provides, from the CPU default to the papers' scales. nano, tiny and mini are the CPU
# scale ladder (compare.py --scales): the tiny depth at d_model 64, 128 and 256.
SCALES = ("nano", "tiny", "mini", "small", "163m", "760m", "1.4b")
PAPER_SCALES = ("163m", "760m", "1.4b")  # the GPU ladder, the papers' sizes


def check_scale(scale: str) -> str:
    """`scale` when it is one of SCALES; ValueError listing them otherwise."""
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; valid choices are {list(SCALES)}")
    return scale


# The parts of FlopReport (analysis/flops.py) a block's forward FLOPs are split into.
FLOP_PARTS = ("matmul", "attention", "scan", "conv")


class FlopOp(NamedTuple):
    """How the FLOP counter (analysis/flops.py) prices one traced op of a family's blocks that fvcore does not price
    as the convention says: its name in the counter's breakdown, and its forward multiply-accumulates (fvcore's
    unit) from the shapes of the op's inputs (None for an input that is not a tensor)."""

    label: str
    macs: Callable[[list[tuple[int, ...] | None]], float]


class Family(ABC, Generic[Config]):
    """One architecture family over the config it reads. Subclasses set the class attributes and implement the
    methods.

    Attributes:
        name: the family's name ("mamba", "mamba2", "transformer").
        parts: the names a sparse arm may decouple per modality (`ModelConfig.decouple`), in canonical order.
        blocks_per_layer: residual blocks per transformer-layer equivalent (`ModelConfig.n_layer`).
        ablation_groups: the multi-part subsets an ablation tries beside each part alone.
        scales: {scale: ModelConfig fields} for every name in SCALES.
        image_attention: the blocks attend bidirectionally within a continuous image when given its mask
            (transformers, as Transfusion); False for causal-by-construction mixers (Mamba).
        recurrent: generation carries a fixed-size state, so a model samples past its training length; otherwise
            positions beyond the training sequence length are refused.
        cpu_step_cost: a training step's CPU time relative to the other families' at equal size: a comparison starts
            the costlier families' runs first so that parallel runs end together (benchmarks/README.md).
        hf_class: the Hugging Face class a dense model of the family exports to (experiments/export.py), or None.
        flop_ops: {torch.jit's name of a traced op: FlopOp} for the ops of its blocks the FLOP counter must price
            itself (a custom autograd function, attention); `traceable` makes the blocks run them while it traces.
    """

    name: str
    parts: tuple[str, ...]
    blocks_per_layer: int
    ablation_groups: tuple[tuple[str, ...], ...]
    scales: dict[str, dict[str, int]]
    image_attention: bool = False  # its blocks take an attention mask (bidirectional within an image)
    recurrent: bool = False
    cpu_step_cost: float = 1.0
    hf_class: str | None = None
    flop_ops: dict[str, FlopOp] = {}

    def check(self, cfg: Config) -> None:
        """Raise ValueError if `cfg` is not a valid model of this family (beyond the generic checks)."""

    @abstractmethod
    def block(self, cfg: Config) -> nn.Module:
        """One residual block: `forward(x (B, L, D), routing: ModalityRouting | None, attn_mask=None) -> (B, L, D)`;
        a block of a family without image_attention never receives a mask."""

    @abstractmethod
    def init_block(self, block: nn.Module, cfg: Config) -> None:
        """The family's initialisation of one block, applied after each layer's own (biases are zeroed before)."""

    @abstractmethod
    def block_params(self, cfg: Config) -> tuple[dict[str, int], int]:
        """Parameters of one block: ({part: parameters of one copy}, parameters of everything never decoupled)."""

    @abstractmethod
    def block_flops(self, cfg: Config, seq_len: int) -> dict[str, int]:
        """Forward FLOPs per token of one block, by FLOP_PARTS name (missing names are 0)."""

    def traceable(self, model: nn.Module) -> AbstractContextManager:
        """While the FLOP counter traces `model`, its blocks run the ops `flop_ops` prices (e.g. a kernel that fvcore
        cannot see into, swapped for its one-op torch form)."""
        return nullcontext()

    def backend(self, cfg: Config, device: torch.device, dtype: torch.dtype) -> str:
        """The kernel a forward on `device` runs, recorded in every run's summary."""
        return "torch"
