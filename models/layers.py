"""Per-modality layers: the one routing primitive every sparse part of the suite uses.

A sparse (modality-aware) layer holds one copy of its weights per modality and sends each token through the
copy of its own modality. Dense is the one-modality case of the same classes, not a second code path.

Routing groups tokens instead of masking them: `ModalityRouting` sorts the batch's tokens by modality once per
forward (stable, so order within a modality is kept), every sparse layer of the model reuses that sort, each expert
runs one matmul on its contiguous rows, and the inverse permutation puts the rows back in sequence order. Nothing
computes every expert on every token, and every token is written exactly once.

Absent modalities and DDP: the experts of a layer are slices of one stacked parameter (`weight [M, out, in]`), not
M parameters. A batch without tokens of modality m skips expert m's matmul (no per-token or per-expert work is
added), yet the stacked parameter is still in the graph through the experts that did run, so autograd gives it a
gradient whose slice m is exactly zero (never None). Every parameter of a sparse layer therefore takes part in every
backward pass, whatever modalities a rank's batch holds, and DDP's reducer needs neither
`find_unused_parameters=True` nor the official MoM code's trick of forcing a token of every modality into each mask.
(The layers that only one modality's *loss* reaches, the LM and patch heads, are kept in the graph by the losses:
experiments/losses.py.)

Shapes: B batch, L sequence, T = B * L tokens, M n_modalities, D features. modality_ids: (B, L) int64 in [0, M).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models import cpu_kernels


class _PermuteRows(torch.autograd.Function):
    """rows[index] whose backward is a gather with the inverse permutation.

    autograd's own backward for index_select is a scatter-add into zeros; for a permutation the gradient is just the
    inverse gather, which is cheaper and deterministic.
    """

    @staticmethod
    def forward(ctx, rows: Tensor, index: Tensor, inverse: Tensor) -> Tensor:
        ctx.save_for_backward(inverse)
        return rows.index_select(0, index)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        (inverse,) = ctx.saved_tensors
        return grad.index_select(0, inverse), None, None


def validate_modality_ids(modality_ids: Tensor, n_modalities: int) -> None:
    """Raise ValueError unless modality_ids is a (B, L) integer tensor with every value in [0, n_modalities)."""
    if not isinstance(modality_ids, Tensor) or modality_ids.dim() != 2:
        shape = tuple(modality_ids.shape) if isinstance(modality_ids, Tensor) else type(modality_ids).__name__
        raise ValueError(f"modality_ids must be a (B, L) integer tensor, got {shape}")
    if modality_ids.dtype.is_floating_point or modality_ids.dtype == torch.bool:
        raise ValueError(f"modality_ids must hold integers, got dtype {modality_ids.dtype}")
    if modality_ids.numel():
        lo, hi = (int(v) for v in torch.aminmax(modality_ids))
        if lo < 0 or hi >= n_modalities:
            bad = lo if lo < 0 else hi
            raise ValueError(
                f"modality id {bad} is out of range: this model has n_modalities={n_modalities}, "
                f"valid ids are 0..{n_modalities - 1}"
            )


class ModalityRouting:
    """How the tokens of one batch are grouped by modality; built once per forward and shared by all layers, from
    modality_ids (B, L) with every value in [0, n_modalities) (ValueError otherwise, `validate_modality_ids`)."""

    def __init__(self, modality_ids: Tensor, n_modalities: int) -> None:
        validate_modality_ids(modality_ids, n_modalities)
        flat = modality_ids.reshape(-1).long()
        self.modality_ids = modality_ids.long()
        self.n_modalities = n_modalities
        self.counts: list[int] = torch.bincount(flat, minlength=n_modalities).tolist()
        self.order = torch.argsort(flat, stable=True)  # sorted position -> token index
        self.inverse = torch.empty_like(self.order)
        self.inverse[self.order] = torch.arange(flat.numel(), device=flat.device)

    @property
    def n_tokens(self) -> int:
        return self.modality_ids.numel()

    def sort(self, x: Tensor) -> Tensor:
        """(B, L, D) or (T, D) in sequence order -> (T, D) with rows grouped by modality."""
        rows = x.reshape(-1, x.shape[-1])
        if rows.shape[0] != self.n_tokens:
            raise ValueError(
                f"input has {rows.shape[0]} tokens but modality_ids {tuple(self.modality_ids.shape)} "
                f"has {self.n_tokens}"
            )
        return _PermuteRows.apply(rows, self.order, self.inverse)

    def unsort(self, rows: Tensor) -> Tensor:
        """(T, D) grouped by modality -> (B, L, D) in sequence order."""
        out = _PermuteRows.apply(rows, self.inverse, self.order)
        return out.view(*self.modality_ids.shape, rows.shape[-1])

    def gather(self, x: Tensor, bucket: int = 1) -> list[Tensor]:
        """(B, L, D) or (T, D) in sequence order -> one (T_m, D) block of rows per modality present; with `bucket`,
        T_m is rounded up to a multiple of it by repeating the block's first row (see `row_bucket`)."""
        rows = x.reshape(-1, x.shape[-1])
        return [rows.index_select(0, _round_up(index, bucket)) for index in self._present_indices]

    def scatter(self, blocks: list[Tensor]) -> Tensor:
        """The blocks of `gather` (after a per-row map) -> (B, L, D) in sequence order: each block written straight
        to its rows, with no concatenation and no second permutation; rows a bucket added are dropped."""
        out = blocks[0].new_empty(self.n_tokens, blocks[0].shape[-1])
        for block, index in zip(blocks, self._present_indices, strict=True):
            out.index_copy_(0, index, block[: index.numel()])
        return out.view(*self.modality_ids.shape, out.shape[-1])

    @property
    def present(self) -> list[int]:
        """The modalities with at least one token in this batch."""
        return [m for m, n in enumerate(self.counts) if n > 0]

    @functools.cached_property
    def _present_indices(self) -> list[Tensor]:
        return [index for index in self.order.split(self.counts) if index.numel() > 0]

    def split(self, rows: Tensor) -> tuple[Tensor, ...]:
        """Sorted rows -> one contiguous block per modality (empty blocks for absent modalities)."""
        return rows.split(self.counts)

    def per_token(self, table: Tensor) -> Tensor:
        """(M, D) per-modality vectors -> (B, L, D), each token's own modality's row (a gather, not M copies)."""
        return F.embedding(self.modality_ids, table)


def row_bucket(x: Tensor) -> int:
    """The multiple an expert's row count is rounded up to for a matmul on `x`: 64 for CPU bf16 (or CPU tensors under
    bf16 autocast), else 1.

    oneDNN, which runs CPU bf16 matmuls, builds a kernel for every new shape (about 0.3 ms) and keeps a bounded cache of
    them; a modality's token count changes with every batch, so without buckets most expert matmuls paid for a new
    kernel. With buckets of 64 a few dozen shapes recur: a MoT step went from 1.21x to 1.15x the transformer's on
    batches that change every step (benchmarks/README.md, "Training step per arm"). The padding (a repeated row, whose
    output is dropped and whose gradient is zero) adds 32 rows per expert on average, 3% of a tiny expert's rows.
    """
    autocast_bf16 = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    return 64 if x.device.type == "cpu" and (x.dtype == torch.bfloat16 or autocast_bf16) else 1


def _round_up(index: Tensor, bucket: int) -> Tensor:
    """index (n,) -> its first entry repeated at the end until the length is a multiple of `bucket`."""
    extra = -index.numel() % bucket
    return torch.cat([index, index[:1].expand(extra)]) if extra else index


def pad_rows(block: Tensor, bucket: int) -> Tensor:
    """(n, D) -> (n rounded up to a multiple of `bucket`, D), zero rows appended."""
    extra = -block.shape[0] % bucket
    return F.pad(block, (0, 0, 0, extra)) if extra else block


def as_routing(modality_ids: Tensor | ModalityRouting | None, n_modalities: int) -> ModalityRouting | None:
    """Accept raw ids or a prebuilt routing. Dense models (M = 1) need neither; sparse ones require one."""
    if isinstance(modality_ids, ModalityRouting):
        if modality_ids.n_modalities != n_modalities:
            raise ValueError(
                f"routing was built for {modality_ids.n_modalities} modalities, this layer has {n_modalities}"
            )
        return modality_ids
    if modality_ids is None:
        if n_modalities > 1:
            raise ValueError(f"modality_ids (B, L) are required: this layer has n_modalities={n_modalities}")
        return None
    return ModalityRouting(modality_ids, n_modalities)


def upcast(t: Tensor) -> Tensor:
    """t in at least float32: bf16 and fp16 are raised to float32, float32 and float64 are kept as they are."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def autocast_input(x: Tensor) -> Tensor:
    """x in the dtype a matmul under autocast would cast it to (unchanged outside autocast). Casting before routing
    moves half the bytes through the gathers and sorts, and gives the matmuls the same inputs."""
    if x.dtype == torch.float32 and torch.is_autocast_enabled(x.device.type):
        return x.to(torch.get_autocast_dtype(x.device.type))
    return x


def image_attention_mask(patch_mask: Tensor) -> Tensor:
    """(B, L) bool patch positions -> (B, 1, L, L) bool, True where query i may attend to key j: causal (j <= i) or
    both in the same image (Transfusion: bidirectional within each image). An image is a run of patch positions."""
    starts = patch_mask & ~F.pad(patch_mask[:, :-1], (1, 0))  # first patch of each image
    image = torch.where(patch_mask, torch.cumsum(starts, dim=1), 0)  # (B, L): image number, 0 off images
    seqlen = patch_mask.shape[1]
    causal = torch.ones(seqlen, seqlen, dtype=torch.bool, device=patch_mask.device).tril()
    same_image = (image[:, :, None] == image[:, None, :]) & (image[:, :, None] > 0)
    return (causal | same_image)[:, None]


def init_experts(weight: Tensor, bias: Tensor | None, n_modalities: int, fan_in: int) -> None:
    """torch's default initialisation of nn.Linear / nn.Conv1d (kaiming-uniform weights, biases uniform within
    1/sqrt(fan_in)), applied to each expert of a stacked weight ([M, ...], or one expert without the axis)."""
    weights = weight.unsqueeze(0) if n_modalities == 1 else weight
    for m, w in enumerate(weights):
        nn.init.kaiming_uniform_(w, a=math.sqrt(5))
        if bias is not None:
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
            nn.init.uniform_(bias if n_modalities == 1 else bias[m], -bound, bound)


class ModalityLinear(nn.Module):
    """A linear layer with one weight copy per modality; token t uses the copy of modality_ids[t].

    With n_modalities == 1 it is exactly `nn.Linear(in_features, out_features, bias)`: same parameter names, shapes,
    initialisation and output. With M > 1 it holds `weight [M, out, in]` and `bias [M, out]`, each expert initialised
    like its own `nn.Linear`.
    """

    def __init__(self, in_features: int, out_features: int, n_modalities: int = 1, bias: bool = True) -> None:
        super().__init__()
        if n_modalities < 1:
            raise ValueError(f"n_modalities must be >= 1, got {n_modalities}")
        self.in_features, self.out_features, self.n_modalities = in_features, out_features, n_modalities
        lead = (n_modalities,) if n_modalities > 1 else ()
        self.weight = nn.Parameter(torch.empty(*lead, out_features, in_features))
        self.bias = nn.Parameter(torch.empty(*lead, out_features)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.Linear's own initialisation, applied to each expert as if it were a separate layer.
        init_experts(self.weight, self.bias, self.n_modalities, self.in_features)

    def forward(self, x: Tensor, routing: ModalityRouting | None = None) -> Tensor:
        """x (..., in) in sequence order -> (..., out). `routing` is required when n_modalities > 1."""
        if self.n_modalities == 1:
            return F.linear(x, self.weight, self.bias)
        if routing is None:
            raise ValueError(f"this layer has {self.n_modalities} modality experts: pass the batch's routing")
        if x.shape[:-1].numel() != routing.n_tokens:
            raise ValueError(f"input has {x.shape[:-1].numel()} tokens but the routing has {routing.n_tokens}")
        if routing.n_tokens == 0:
            return x.new_zeros(*x.shape[:-1], self.out_features)
        biases = self.bias.unbind(0) if self.bias is not None else (None,) * self.n_modalities
        x = autocast_input(x)
        outs = [
            F.linear(block, self.weight[m], biases[m])
            for m, block in zip(routing.present, routing.gather(x, row_bucket(x)), strict=True)
        ]
        return routing.scatter(outs).view(*x.shape[:-1], self.out_features)

    def forward_sorted(self, rows: Tensor, routing: ModalityRouting | None) -> Tensor:
        """(T, in) rows already grouped by modality -> (T, out) in the same order. Lets a chain of per-token layers
        pay for one sort and one unsort instead of one pair per layer."""
        if self.n_modalities == 1:
            return F.linear(rows, self.weight, self.bias)
        biases = self.bias.unbind(0) if self.bias is not None else (None,) * self.n_modalities
        bucket = row_bucket(rows)
        outs = [
            F.linear(pad_rows(block, bucket), w, b)[: block.shape[0]]
            for block, w, b in zip(routing.split(rows), self.weight.unbind(0), biases, strict=True)
            if block.shape[0] > 0  # one matmul per modality present
        ]
        if not outs:  # an empty batch
            return rows.new_zeros(0, self.out_features)
        return torch.cat(outs) if len(outs) > 1 else outs[0]

    def expert_parameters(self) -> dict[str, int]:
        """Its parameters with a leading modality axis (models.experts.expert_parameters)."""
        names = ("weight", "bias") if self.bias is not None else ("weight",)
        return dict.fromkeys(names, self.n_modalities) if self.n_modalities > 1 else {}

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"n_modalities={self.n_modalities}, bias={self.bias is not None}"
        )


class ModalityRMSNorm(nn.Module):
    """RMSNorm with one scale vector per modality (`weight [M, D]`); with one modality a plain RMSNorm (`weight [D]`).

    The per-token scale is a gather of each token's own modality's row, so no token is normalised M times.
    """

    def __init__(self, d: int, n_modalities: int = 1, eps: float = 1e-5) -> None:
        super().__init__()
        self.d, self.n_modalities, self.eps = d, n_modalities, eps
        self.weight = nn.Parameter(torch.ones(*((n_modalities,) if n_modalities > 1 else ()), d))

    def forward(self, x: Tensor, routing: ModalityRouting | None = None) -> Tensor:
        """x (B, L, ..., d) -> the same shape, each token scaled by its modality's weights."""
        # Normalise in at least float32: the mean of squares loses precision in bf16. The result keeps x's dtype.
        normed = F.rms_norm(upcast(x), (self.d,), eps=self.eps)
        if self.n_modalities == 1:
            scale = self.weight
        elif routing is None:
            raise ValueError(f"this norm has {self.n_modalities} modality copies: pass the batch's routing")
        else:
            scale = routing.per_token(self.weight)  # (B, L, d)
            scale = scale.view(*scale.shape[:2], *[1] * (x.dim() - 3), self.d)  # broadcast over heads (B, L, H, d)
        return (normed * scale).to(x.dtype)

    def expert_parameters(self) -> dict[str, int]:
        """Its parameters with a leading modality axis (models.experts.expert_parameters)."""
        return {"weight": self.n_modalities} if self.n_modalities > 1 else {}

    def extra_repr(self) -> str:
        return f"{self.d}, n_modalities={self.n_modalities}, eps={self.eps}"


class ModalityConv1d(nn.Module):
    """A causal depthwise conv over time with one kernel per modality; position t's output uses the kernel of
    modality_ids[t] (over a window that may hold other modalities' positions).

    With n_modalities == 1 it is `nn.Conv1d(C, C, K, groups=C, padding=K - 1)` cut to its first L outputs: same
    parameter names, shapes (weight (C, 1, K), bias (C,)) and initialisation. With M > 1 it holds `weight [M, C, 1, K]`
    and `bias [M, C]`. A window mixes modalities, so no sort of the tokens helps: every kernel runs over the whole
    sequence and each position keeps its own modality's output (M times the dense conv's work).
    """

    def __init__(self, channels: int, kernel_size: int, n_modalities: int = 1, bias: bool = True) -> None:
        super().__init__()
        self.channels, self.kernel_size, self.n_modalities = channels, kernel_size, n_modalities
        lead = (n_modalities,) if n_modalities > 1 else ()
        self.weight = nn.Parameter(torch.empty(*lead, channels, 1, kernel_size))
        self.bias = nn.Parameter(torch.empty(*lead, channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.Conv1d's own initialisation (fan_in = K for a depthwise conv), for each expert as its own layer.
        init_experts(self.weight, self.bias, self.n_modalities, self.kernel_size)

    def forward(self, x: Tensor, routing: ModalityRouting | None = None, silu: bool = False) -> Tensor:
        """x (B, C, L) -> (B, C, L), causal: output t reads inputs t - K + 1 .. t. With `silu`, SiLU of it: on the CPU
        in the compiled kernel of the Mamba mixer's conv (models/cpu_kernels.py, float32) where it is built, except
        while the FLOP counter traces (it prices the conv op)."""
        K, L = self.kernel_size, x.shape[-1]
        compiled = silu and x.device.type == "cpu" and cpu_kernels.available() and not torch.jit.is_tracing()

        def conv(w: Tensor, b: Tensor | None) -> Tensor:  # (B, C, L) from the kernel, else (B, C, L + K - 1)
            if compiled:
                return cpu_kernels.causal_conv1d_silu_cpu(upcast(x), w[:, 0], b)
            y = F.conv1d(x, w, b, padding=K - 1, groups=self.channels)
            return F.silu(y) if silu else y

        if self.n_modalities == 1:
            return conv(self.weight, self.bias)[..., :L]
        if routing is None:
            raise ValueError(f"this conv has {self.n_modalities} modality experts: pass the batch's routing")
        biases = self.bias.unbind(0) if self.bias is not None else (None,) * self.n_modalities
        out = None
        for m, (w, b) in enumerate(zip(self.weight.unbind(0), biases, strict=True)):
            y = conv(w, b)
            # Selected on the full outputs and cut where the dense conv is cut: the same memory layout as the dense
            # output, so the same results in everything after it.
            ids = F.pad(routing.modality_ids, (0, 0 if compiled else K - 1))[:, None]  # beside y's positions
            out = y if out is None else torch.where(ids == m, y, out)
        return out[..., :L]

    def step(self, window: Tensor, routing: ModalityRouting | None = None) -> Tensor:
        """The conv's output for the newest position of `window` (B, C, K), the last K inputs: (B, C)."""
        if self.n_modalities == 1:
            weight, bias = self.weight[:, 0], self.bias
        else:  # each sequence's newest token's kernel
            weight = routing.per_token(self.weight.flatten(1))[:, -1].view(-1, self.channels, self.kernel_size)
            bias = None if self.bias is None else routing.per_token(self.bias)[:, -1]
        out = (window * weight).sum(-1)
        return out if bias is None else out + bias

    def expert_parameters(self) -> dict[str, int]:
        """Its parameters with a leading modality axis (models.experts.expert_parameters)."""
        names = ("weight", "bias") if self.bias is not None else ("weight",)
        return dict.fromkeys(names, self.n_modalities) if self.n_modalities > 1 else {}

    def extra_repr(self) -> str:
        return f"{self.channels}, kernel_size={self.kernel_size}, n_modalities={self.n_modalities}"


def validate_parts(decouple: Iterable[str], valid: tuple[str, ...], family: str) -> tuple[str, ...]:
    """Check a `decouple` selection against the part names a mixer knows; returns it as a tuple in canonical order."""
    chosen = (decouple,) if isinstance(decouple, str) else tuple(decouple)
    unknown = [p for p in chosen if p not in valid]
    if unknown:
        raise ValueError(f"unknown {family} part(s) to decouple: {unknown}; valid choices are {list(valid)}")
    return tuple(p for p in valid if p in chosen)
