"""The SSD scan of Mamba-2 (state space duality: Dao & Gu, arXiv 2405.21060): a sequential reference, the chunked
algorithm in plain torch, a recurrent step for generation, and mamba-ssm's `mamba_chunk_scan_combined` on CUDA.

For every batch b, head h, head channel p and state n the scan runs

    Δ_t = softplus(dt_t + dt_bias),   h_t = exp(Δ_t·A) · h_{t-1} + Δ_t · x_t · B_t,   y_t = C_t · h_t + D · x_t

with one scalar A, D and dt_bias per head, and B_t, C_t (N each) shared by the heads of a group (ngroups groups of
H / ngroups heads). A, D and dt_bias may also be given per token (B, L, H): a sparse arm that decouples them per
modality passes each token its own modality's values.

Backends:
    "ref"   `ssd_ref`, the recurrence one step at a time under autograd: the executable specification.
    "torch" `ssd_chunked`, the chunked algorithm: within a chunk of Q steps the output is a masked (Q × Q) product,
            like causal attention with a decay mask; between chunks only the (P × N) states pass, one recurrence
            step per chunk. Any L (padded to a multiple of Q inside). Plain torch on any device.
    "cuda"  mamba-ssm's Triton kernel `mamba_chunk_scan_combined` (CUDA tensors; A, D and dt_bias per head only).
    "auto"  "cuda" on CUDA where mamba-ssm imports and the inputs suit it, else "torch".

Shapes: B batch, L sequence, H heads, P head dimension, G groups, N state, Q chunk length.
"""

from __future__ import annotations

import importlib
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor

SSD_BACKENDS = ("auto", "torch", "ref", "cuda")


def _compute_dtype(*tensors: Tensor | None) -> torch.dtype:
    """float64 if any input is float64, else float32 (bf16 and fp16 inputs are computed in float32)."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def _per_token(v: Tensor, ct: torch.dtype) -> Tensor:
    """A per-head value (H,) or per-token one (B, L, H), as (1, 1, H) or (B, L, H) in the compute dtype."""
    return v.to(ct) if v.dim() == 3 else v.to(ct)[None, None]


def _heads(t: Tensor, n_heads: int) -> Tensor:
    """(..., G, N) per group -> (..., H, N) per head: head h reads group h // (H / G)."""
    return t.repeat_interleave(n_heads // t.shape[-2], dim=-2)


def _discretise(x, dt, A, D, dt_bias, dt_softplus, ct):
    """Δ (B, L, H), Δ·A (B, L, H) and the D skip's per-token weights, in the compute dtype."""
    dt = dt.to(ct)
    if dt_bias is not None:
        dt = dt + _per_token(dt_bias, ct)
    if dt_softplus:
        dt = F.softplus(dt)
    return dt, dt * _per_token(A, ct), None if D is None else _per_token(D, ct)


def ssd_ref(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    dt_bias: Tensor | None = None,
    dt_softplus: bool = False,
) -> Tensor:
    """The recurrence one step at a time (the module docstring's equations): x (B, L, H, P), dt (B, L, H), A (H,) or
    (B, L, H), B and C (B, L, G, N), D and dt_bias (H,) or (B, L, H) -> y (B, L, H, P) in x's dtype, computed in
    float32 (float64 if any input is float64). Written for clarity, not speed; do not optimise it."""
    ct = _compute_dtype(x, dt, A, B, C, D, dt_bias)
    delta, dA, D = _discretise(x, dt, A, D, dt_bias, dt_softplus, ct)
    xs, n_heads = x.to(ct), x.shape[2]
    Bh, Ch = _heads(B.to(ct), n_heads), _heads(C.to(ct), n_heads)  # (B, L, H, N)
    state = xs.new_zeros(x.shape[0], n_heads, x.shape[3], B.shape[-1])  # (B, H, P, N)
    ys = []
    for t in range(x.shape[1]):
        inflow = (delta[:, t, :, None] * xs[:, t])[..., None] * Bh[:, t, :, None, :]
        state = torch.exp(dA[:, t])[..., None, None] * state + inflow
        ys.append(torch.einsum("bhpn,bhn->bhp", state, Ch[:, t]))
    y = torch.stack(ys, dim=1)
    if D is not None:
        y = y + D[..., None] * xs
    return y.to(x.dtype)


def _segsum(a: Tensor) -> Tensor:
    """a (..., Q) -> (..., Q, Q): [i, j] = a_{j+1} + ... + a_i for j <= i (0 on the diagonal), -inf above it. Summed
    along the masked rows rather than as cumsum_i - cumsum_j, which cancels catastrophically in float32 once the
    cumulative decay is large."""
    Q = a.shape[-1]
    strict = torch.ones(Q, Q, dtype=torch.bool, device=a.device).tril(-1)
    s = torch.cumsum(a[..., None].expand(*a.shape, Q).masked_fill(~strict, 0), dim=-2)
    return s.masked_fill(~torch.ones(Q, Q, dtype=torch.bool, device=a.device).tril(), float("-inf"))


def ssd_chunked(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    chunk_size: int,
    D: Tensor | None = None,
    dt_bias: Tensor | None = None,
    dt_softplus: bool = False,
) -> Tensor:
    """The chunked SSD algorithm; arguments and result as `ssd_ref`'s, `chunk_size` the chunk length Q."""
    ct = _compute_dtype(x, dt, A, B, C, D, dt_bias)
    batch, L, H, P = x.shape
    Q = chunk_size
    delta, dA, D = _discretise(x, dt, A, D, dt_bias, dt_softplus, ct)
    xs = x.to(ct)
    xdt = xs * delta[..., None]  # (B, L, H, P)

    def chunks(t: Tensor) -> Tensor:  # (B, L, ...) -> (B, c, Q, ...), zero-padded: a padded step neither decays
        pad = -L % Q  # (Δ·A = 0) nor writes (x = 0), and its outputs are cut off
        t = F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad)) if pad else t
        return t.view(batch, -1, Q, *t.shape[2:])

    G = B.shape[2]
    # Heads grouped as (G, R = H / G): the heads of a group read its B and C as they are, never copied per head.
    xc = chunks(xdt).view(batch, -1, Q, G, H // G, P)  # (B, c, Q, G, R, P)
    Bc, Cc = chunks(B.to(ct)), chunks(C.to(ct))  # (B, c, Q, G, N)
    a = chunks(dA).transpose(2, 3)  # (B, c, H, Q)
    decay = torch.exp(_segsum(a)).view(batch, -1, G, H // G, Q, Q)  # from step j to step i within a chunk

    # Within a chunk: y_i = sum_{j <= i} (C_i · B_j) decay_ij Δ_j x_j, the C·B scores once per group.
    scores = torch.einsum("bcign,bcjgn->bcgij", Cc, Bc)
    y = torch.einsum("bcgrij,bcjgrp->bcigrp", scores[:, :, :, None] * decay, xc)

    # Each chunk's own contribution to the state at its end, then the recurrence from chunk to chunk.
    to_end = decay[..., -1, :].permute(0, 1, 4, 2, 3)[..., None]  # (B, c, Q, G, R, 1): from step j to the chunk's end
    written = torch.einsum("bcjgn,bcjgrp->bcgrpn", Bc, xc * to_end)
    chunk_decay = torch.exp(a.sum(-1)).view(batch, -1, G, H // G)  # (B, c, G, R)
    state, entering = written.new_zeros(written[:, 0].shape), []
    for c in range(written.shape[1]):
        entering.append(state)
        state = chunk_decay[:, c, ..., None, None] * state + written[:, c]
    entering = torch.stack(entering, dim=1)  # (B, c, G, R, P, N): the state each chunk starts from

    # The state a chunk starts from, decayed to step i and read out by C_i.
    from_start = torch.exp(torch.cumsum(a, dim=-1)).view(batch, -1, G, H // G, Q).permute(0, 1, 4, 2, 3)
    y = y + torch.einsum("bcign,bcgrpn->bcigrp", Cc, entering) * from_start[..., None]
    y = y.reshape(batch, -1, H, P)[:, :L]
    if D is not None:
        y = y + D[..., None] * xs
    return y.to(x.dtype)


class _SSDChunkedFn(torch.autograd.Function):
    """`ssd_chunked` as one op, so that the FLOP counter's trace sees the scan whole (and prices it with `ssd_flops`)
    instead of its dozens of einsums and elementwise ops. The backward recomputes the forward under autograd."""

    @staticmethod
    def forward(ctx, x, dt, A, B, C, D, dt_bias, chunk_size, dt_softplus):
        ctx.save_for_backward(x, dt, A, B, C, D, dt_bias)
        ctx.chunk_size, ctx.dt_softplus = chunk_size, dt_softplus
        return ssd_chunked(x, dt, A, B, C, chunk_size, D, dt_bias, dt_softplus)

    @staticmethod
    def backward(ctx, grad):
        inputs = [t.detach().requires_grad_(t.requires_grad) if t is not None else None for t in ctx.saved_tensors]
        with torch.enable_grad():
            x, dt, A, B, C, D, dt_bias = inputs
            out = ssd_chunked(x, dt, A, B, C, ctx.chunk_size, D, dt_bias, ctx.dt_softplus)
            wanted = [t for t in inputs if t is not None and t.requires_grad]
            grads = iter(torch.autograd.grad(out, wanted, grad) if wanted else ())
        return (*(next(grads) if t is not None and t.requires_grad else None for t in inputs), None, None)


def ssd_step(
    state: Tensor,
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    dt_bias: Tensor | None = None,
    dt_softplus: bool = False,
) -> Tensor:
    """One step of the recurrence for generation; `state` (B, H, P, N), float32 or float64, advances in place.
    x (B, H, P), dt (B, H), B and C (B, G, N), A, D and dt_bias (H,) or (B, H) -> y (B, H, P) in x's dtype."""
    ct = state.dtype
    per_head = [None if v is None else (v[:, None] if v.dim() == 2 else v) for v in (A, D, dt_bias)]
    delta, dA, D = _discretise(x, dt[:, None], per_head[0], per_head[1], per_head[2], dt_softplus, ct)
    delta, dA = delta[:, 0], dA[:, 0]  # (B, H)
    xs, n_heads = x.to(ct), x.shape[1]
    Bh, Ch = _heads(B.to(ct), n_heads), _heads(C.to(ct), n_heads)  # (B, H, N)
    state.copy_(torch.exp(dA)[..., None, None] * state + (delta[..., None] * xs)[..., None] * Bh[:, :, None, :])
    y = torch.einsum("bhpn,bhn->bhp", state, Ch)
    if D is not None:
        y = y + D[:, 0, :, None] * xs
    return y.to(x.dtype)


# ----------------------------------------------------------------------------------------------------------------------
# FLOPs (the convention: analysis/flops.py and docs/design.md)
# ----------------------------------------------------------------------------------------------------------------------

# The chunked algorithm's arithmetic as `ssd_chunked` does it, in FLOPs, for L real steps (a padded step is not
# counted, as the conv's discarded outputs are not). Per (step, head): dt + dt_bias, softplus and Δ·A 3; the segment
# sums and their exp 2Q; scores × decay Q; the within-chunk product 2QP; x·Δ P; the written state 2NP + P (decay × B,
# then the sum over steps); the entering state read out 2NP, its decay P and exp 1; the two outputs' sum P; the D skip
# 2P. Per (step, group): the C·B scores 2QN. Per (chunk, head): the chunk's decay 1 and the state recurrence 2PN.


def ssd_flops(batch: int, seq_len: int, n_heads: int, headdim: int, d_state: int, ngroups: int, chunk: int) -> int:
    """FLOPs of one SSD scan over x (batch, seq_len, n_heads, headdim) with chunks of `chunk` steps."""
    Q, P, N = chunk, headdim, d_state
    per_step = n_heads * (4 + 3 * Q + 2 * Q * P + 4 * N * P + 6 * P) + ngroups * 2 * Q * N
    per_chunk = n_heads * (1 + 2 * P * N)
    return batch * (seq_len * per_step + -(-seq_len // Q) * per_chunk)


# ----------------------------------------------------------------------------------------------------------------------
# Backends
# ----------------------------------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _import_chunk_scan() -> tuple[object | None, str | None]:
    """(mamba-ssm's `mamba_chunk_scan_combined`, None), or (None, why it does not import)."""
    try:
        module = importlib.import_module("mamba_ssm.ops.triton.ssd_combined")
    except Exception as exc:  # noqa: BLE001 - a broken install fails in many ways; each means "not available"
        return None, f"{type(exc).__name__}: {exc}"
    return module.mamba_chunk_scan_combined, None


def resolve_ssd_backend(backend: str, device: torch.device | str, dtype: torch.dtype | None = None) -> str:
    """The concrete backend ("torch", "ref" or "cuda") `ssd_scan` runs for `backend` (one of SSD_BACKENDS) on
    `device` for inputs of `dtype`. ValueError for an unknown name; RuntimeError for "cuda" where it cannot run."""
    if backend not in SSD_BACKENDS:
        raise ValueError(f"unknown SSD backend {backend!r}; valid choices are {list(SSD_BACKENDS)}")
    device = torch.device(device)
    kernel_dtype = dtype is None or dtype in (torch.float32, torch.float16, torch.bfloat16)
    if backend == "auto":
        cuda = device.type == "cuda" and kernel_dtype and _import_chunk_scan()[0] is not None
        return "cuda" if cuda else "torch"
    if backend == "cuda":
        fn, error = _import_chunk_scan()
        if fn is None:
            raise RuntimeError(f"SSD backend 'cuda' needs mamba-ssm ({error}); pip install -r requirements-gpu.txt "
                               "on a CUDA machine (docs/gpu.md), or use 'torch'")  # fmt: skip
        if device.type != "cuda" or not kernel_dtype:
            raise RuntimeError(f"SSD backend 'cuda' needs CUDA tensors in fp32/fp16/bf16, got {device} {dtype}")
    return backend


def ssd_scan(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    chunk_size: int,
    D: Tensor | None = None,
    dt_bias: Tensor | None = None,
    dt_softplus: bool = False,
    backend: str = "auto",
) -> Tensor:
    """The SSD scan (arguments as `ssd_ref`'s) on `backend` (`resolve_ssd_backend`). The "cuda" kernel takes A, D
    and dt_bias per head only: with per-token ones (a sparse arm that decouples them) it runs the torch path."""
    if x.dim() != 4 or B.shape[:2] != x.shape[:2] or x.shape[2] % B.shape[2]:
        raise ValueError(f"ssd_scan: x must be (B, L, H, P) and B, C (B, L, G, N) with G dividing H, got x "
                         f"{tuple(x.shape)}, B {tuple(B.shape)}")  # fmt: skip
    backend = resolve_ssd_backend(backend, x.device, x.dtype)
    per_head = all(v is None or v.dim() == 1 for v in (A, D, dt_bias))
    if backend == "cuda" and per_head:
        fn, _ = _import_chunk_scan()
        D, dt_bias = (None if v is None else v.float() for v in (D, dt_bias))
        return fn(x, dt, A.float(), B.to(x.dtype), C.to(x.dtype), chunk_size, D=D, dt_bias=dt_bias,
                  dt_softplus=dt_softplus)  # fmt: skip
    if backend == "ref":
        return ssd_ref(x, dt, A, B, C, D, dt_bias, dt_softplus)
    if torch.jit.is_tracing():  # the FLOP counter: the scan as one op
        return _SSDChunkedFn.apply(x, dt, A, B, C, D, dt_bias, int(chunk_size), dt_softplus)
    return ssd_chunked(x, dt, A, B, C, chunk_size, D, dt_bias, dt_softplus)
