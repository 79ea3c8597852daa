"""FLOPs per token: the analytic formula every plot uses, and an fvcore counter that cross-checks it.

The convention (docs/design.md, "FLOPs"), the project's contract; it never changes mid-study:

* FLOPs = 2 × multiply-accumulates (MACs). fvcore counts one MAC as one flop, so its counts are multiplied by 2.
* Training FLOPs = 3 × forward FLOPs (backward ≈ 2 × forward; activation recompute is not counted).
* Matmuls: every projection a token passes through, 2·in·out per token (mixture arms: one expert per token, so
  `mom` and `mot`, and their position-hash controls `mom_hash` and `mot_hash`, have exactly their dense baseline's
  FLOPs per token). Biases are not counted.
* Attention scores are counted for the full L×L, no causal halving (PaLM, nanoGPT, torchtitan): QK^T and AV are
  2·L·d MACs, i.e. 4·L·d FLOPs, per token per layer.
* Embedding lookups are free. The output heads are counted: the LM head at every position, the patch head (and the
  patch input projection and timestep MLP) at patch positions only.
* The selective scan's elementwise work is counted: 7 FLOPs per element of (B, E, L, N) and 6 per element of
  (B, E, L), itemised beside the scan (`models.scan.scan_flops`, the only place these numbers live). Both the
  analytic formula and the fvcore handle use it.
* Mamba-2's SSD scan counts the chunked algorithm's arithmetic (`models.ssd.ssd_flops`, the only place those numbers
  live; docs/design.md spells them out), per step, per group and per chunk; its conv counts as Mamba's.
* The depthwise causal conv is counted: 2·d_conv·E per token per Mamba block, for the L outputs that are kept (the
  padded nn.Conv1d also computes d_conv - 1 outputs per sequence that it discards; they are not counted).
* Not counted, as fvcore ignores them too: norms, activations outside the scan (SiLU after the conv, SwiGLU's
  gate), residual adds, rotary embeddings, the sinusoidal timestep embedding, softmax, and A = -exp(A_log).
  Routing (sort, gather, unsort) has no arithmetic and is free, and so is the hash arms' routing key (integer
  arithmetic on the L position indices, once per forward, not per token and layer).

Each family's per-block formula lives beside its block (`Family.block_flops`, models/mamba.py and
models/transformer.py); `analytic_flops` adds the parts every family shares (heads, patch layers).

Shapes: B batch, L sequence, D d_model, E d_inner, N d_state, R dt_rank, H heads, K head_dim, V vocab, P patch_dim.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from models.config import ModelConfig
from models.family import FLOP_PARTS, FlopOp
from models.lm import MultiModalLM

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # fvcore.nn's import calls the deprecated torch.jit.script
    from fvcore.nn import FlopCountAnalysis
    from fvcore.nn.jit_handles import get_shape


# Ops fvcore leaves unpriced that the convention does not count. Anything else unpriced is an error.
IGNORED_OPS: dict[str, str] = {
    # free by convention
    "aten::embedding": "embedding lookups are free; also the per-modality norm-scale gather",
    "aten::masked_scatter": "places patch embeddings into the sequence; data movement",
    "aten::pad": "zero padding of the timestep embedding; the positions' modalities beside a padded conv's outputs",
    # routing: no arithmetic
    "prim::PythonOp._PermuteRows": "modality routing's row permutation (index_select)",
    "aten::argsort": "modality routing's sort of the tokens",
    "aten::index_select": "modality routing's gather",
    "aten::index_copy_": "modality routing's scatter of each modality's outputs back to their positions",
    "aten::bincount": "modality routing's per-modality counts",
    "aten::aminmax": "input validation",
    "aten::numel": "shape arithmetic",
    "aten::empty_like": "allocation",
    "aten::zero_": "initialisation of a buffer",
    "aten::arange": "index construction",
    "aten::__rshift__": "position-hash routing key (hash arms): integer arithmetic on the position indices",
    # the attention mask of continuous images (Transfusion): boolean index arithmetic, no FLOPs
    "aten::cumsum": "numbering the images of a sequence for the attention mask",
    "aten::where": "image numbers at patch positions only; each position's kernel of a decoupled conv (Mamba-2)",
    "aten::tril": "the causal part of the attention mask",
    "aten::__or__": "causal or same-image",
    # elementwise work outside the scan, not counted (norms, activations, residuals, rotary, timestep embedding)
    "aten::rms_norm": "norms are not counted",
    "aten::silu": "activation outside the scan (conv output, SwiGLU gate, timestep MLP)",
    "aten::mul": "elementwise product (SwiGLU gate, rotary, norm scale; position hash of the hash arms)",
    "aten::add": "residual adds, rotary",
    "aten::neg": "rotary rotate-half; A = -exp(A_log)",
    "aten::exp": "A = -exp(A_log) (per parameter, not per token); timestep frequencies",
    "aten::div": "timestep / rotary frequencies",
    "aten::pow": "rotary inverse frequencies",
    "aten::reciprocal": "rotary inverse frequencies",
    "aten::outer": "rotary angle table: L·K/2 products of positions and frequencies, independent of the model",
    "aten::cos": "rotary / timestep tables",
    "aten::sin": "rotary / timestep tables",
}


# ----------------------------------------------------------------------------------------------------------------------
# Analytic
# ----------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FlopReport:
    """Forward FLOPs per token by part; see the module docstring for the convention."""

    matmul: int  # block projections and MLP (mixture arms: one expert per token)
    attention: int  # QK^T and AV over the full L×L; 0 for Mamba
    scan: int  # selective-scan elementwise work; 0 for transformers
    conv: int  # depthwise causal conv; 0 for transformers
    head: int  # LM head, at every position
    patch: float = 0.0  # patch projection + timestep MLP + patch head, times the fraction of patch positions

    @property
    def forward_per_token(self) -> float:
        return self.matmul + self.attention + self.scan + self.conv + self.head + self.patch

    @property
    def train_per_token(self) -> float:
        return 3 * self.forward_per_token


def analytic_flops(cfg: ModelConfig, seq_len: int, patch_fraction: float = 0.0) -> FlopReport:
    """Forward FLOPs per token of `MultiModalLM(cfg)` on sequences of `seq_len` (the attention span: Mamba's FLOPs
    per token do not depend on it), `patch_fraction` of whose positions carry an image patch (Transfusion; needs
    cfg.patch_dim > 0). A sparse arm gives exactly its dense baseline's numbers."""
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    if not 0.0 <= patch_fraction <= 1.0:
        raise ValueError(f"patch_fraction must be in [0, 1], got {patch_fraction}")
    if patch_fraction and not cfg.patch_dim:
        raise ValueError("patch_fraction > 0 needs a model with patch layers (cfg.patch_dim > 0)")
    d = cfg.d_model
    block = cfg.family.block_flops(cfg, seq_len)  # one block's forward FLOPs per token, by part (Family)
    per_part = {part: cfg.n_block * block.get(part, 0) for part in FLOP_PARTS}
    patch = 0.0
    if P := cfg.patch_dim:  # patch_in P -> D, time MLP D -> D -> D, patch_head D -> P, at patch positions only
        patch = patch_fraction * 2 * (P * d + 2 * d * d + d * P)
    return FlopReport(**per_part, head=2 * d * cfg.vocab_size, patch=patch)


def flops_per_token(cfg: ModelConfig, seq_len: int, patch_fraction: float = 0.0) -> int:
    """Training FLOPs per token (3 × forward) under the convention: the number every plot and MFU uses."""
    return round(analytic_flops(cfg, seq_len, patch_fraction).train_per_token)


# ----------------------------------------------------------------------------------------------------------------------
# fvcore counter
# ----------------------------------------------------------------------------------------------------------------------


def fvcore_handle(op: FlopOp) -> Callable[[list[Any], list[Any]], Counter]:
    """An fvcore op handle pricing `op` (a family's `FlopOp`) from the traced inputs' shapes, under its label."""

    def handle(inputs: list[Any], outputs: list[Any]) -> Counter:
        return Counter({op.label: op.macs([get_shape(x) for x in inputs])})

    return handle


@dataclass(frozen=True)
class CountedFlops:
    """Forward FLOPs counted by fvcore on one batch (already × 2, i.e. in FLOPs, not MACs)."""

    total: int
    per_token: float  # total / (B · L)
    by_operator: dict[str, int]
    unsupported: dict[str, int]  # ops fvcore left unpriced, with their number of calls; all are in IGNORED_OPS


class _TraceAdapter(nn.Module):
    """Positional tensors in, a tuple of tensors out: what torch.jit.trace (and so fvcore) needs."""

    def __init__(self, model: MultiModalLM, names: tuple[str, ...]) -> None:
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *tensors: Tensor) -> tuple[Tensor, ...]:
        out = self.model(**dict(zip(self.names, tensors, strict=True)))
        return (out.logits,) if out.patch_pred is None else (out.logits, out.patch_pred)


BATCH_KEYS = ("tokens", "modality_ids", "patches", "patch_mask", "timesteps")


def count_flops(model: MultiModalLM, batch: dict[str, Tensor], strict: bool = True) -> CountedFlops:
    """Forward FLOPs of `model` on `batch` (tokens (B, L) and optionally BATCH_KEYS' others; other keys are ignored),
    counted by fvcore with the handles of its family's `flop_ops` (the scan and the causal conv of Mamba, attention of
    the transformer), traced under the family's `traceable` (Mamba: the "torch" scan, whatever it is set to). With
    `strict`, an op fvcore leaves unpriced that IGNORED_OPS does not list is an error: nothing silently counts zero."""
    names = tuple(k for k in BATCH_KEYS if batch.get(k) is not None)
    inputs = tuple(batch[k] for k in names)
    tokens = batch["tokens"]
    family = model.cfg.family
    analysis = FlopCountAnalysis(_TraceAdapter(model, names), inputs)
    for name, op in family.flop_ops.items():
        analysis.set_op_handle(name, fvcore_handle(op))
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
    with family.traceable(model), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shapes turned into constants: fine for one batch
        by_operator = {op: round(2 * n) for op, n in analysis.by_operator().items()}
        unsupported = dict(analysis.unsupported_ops())
    unknown = sorted(set(unsupported) - set(IGNORED_OPS))
    if strict and unknown:
        raise ValueError(f"fvcore left ops unpriced that the FLOPs convention does not cover: {unknown}")
    total = sum(by_operator.values())
    return CountedFlops(total=total, per_token=total / tokens.numel(), by_operator=by_operator, unsupported=unsupported)
