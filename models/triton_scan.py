"""The selective scan as two fused Triton kernels: the "triton" backend of models/scan.py.

The forward kernel fuses softplus(delta + delta_bias), the recurrence, the C readout, the D skip and the silu(z) gate;
the backward kernel recomputes the states inside each chunk from the state kept at the chunk's start and runs the
adjoint recurrence in reverse, so memory is O(B·E·N·L / CHUNK) beside the inputs. Each program owns one batch row
and a block of channels, so no two programs write the same gradient element: the parts that sum over channels (dB,
dC) or over the batch (dA, dD, d delta_bias) are written per program and summed afterwards by torch in a fixed
order, which makes the gradients deterministic.

Within a chunk the recurrence h_t = a_t h_{t-1} + b_t runs as `tl.associative_scan` over time on a
(channels, states, time) tile; the chunk's end state carries into the next chunk. The backward's adjoint
lambda_t = C_t g_t + a_{t+1} lambda_{t+1} is the same scan run in reverse. The gradients use
a_t h_{t-1} = h_t - b_t, so the shifted state is never materialised.

Importing this module needs Triton (it ships with the CUDA builds of torch); models/scan.py imports it only when the
"triton" backend is used. On a CPU, the kernels run under Triton's interpreter (`TRITON_INTERPRET=1`, set before
this module is imported), which is how the tests check them against `selective_scan_ref`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

# Time steps per chunk: a tile of (BLOCK_E, N, CHUNK) states lives in registers while a chunk is scanned.
CHUNK = 16
BLOCK_E = 8


@triton.jit
def _combine(a_left, b_left, a_right, b_right):
    """Compose two steps of h -> a h + b (left first)."""
    return a_left * a_right, a_right * b_left + b_right


@triton.jit
def _chunk_inputs(
    u_ptr, delta_ptr, A_ptr, B_ptr, bias_ptr,
    row, e, n, t, e_ok, n_ok, t_ok,
    E, N, L,
    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, DTYPE: tl.constexpr,
):  # fmt: skip
    """Load one chunk and discretise it: u, delta after bias and softplus, A, B, a = exp(delta A), b = delta u B."""
    ch = (row * E + e)[:, None] * L + t[None, :]
    m = e_ok[:, None] & t_ok[None, :]
    u = tl.load(u_ptr + ch, mask=m, other=0.0).to(DTYPE)
    dt_raw = tl.load(delta_ptr + ch, mask=m, other=0.0).to(DTYPE)
    if HAS_BIAS:
        dt_raw += tl.load(bias_ptr + e, mask=e_ok, other=0.0).to(DTYPE)[:, None]
    dt = dt_raw
    if SOFTPLUS:
        dt = tl.where(dt_raw <= 20.0, tl.log(1.0 + tl.exp(dt_raw)), dt_raw)
    dt = tl.where(m, dt, 0.0)  # a padded step leaves the state unchanged (a = 1, b = 0)
    A = tl.load(A_ptr + e[:, None] * N + n[None, :], mask=e_ok[:, None] & n_ok[None, :], other=0.0).to(DTYPE)
    Bt = tl.load(B_ptr + (row * N + n)[:, None] * L + t[None, :], mask=n_ok[:, None] & t_ok[None, :], other=0.0)
    Bt = Bt.to(DTYPE)
    a = tl.exp(dt[:, None, :] * A[:, :, None])
    b = (dt * u)[:, None, :] * Bt[None, :, :]
    return u, dt_raw, dt, A, Bt, a, b


@triton.jit
def _scan_fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, out_ptr, states_ptr,
    E, N, L, n_chunks,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    DTYPE: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0)
    e = tl.program_id(1) * BLOCK_E + tl.arange(0, BLOCK_E)
    n = tl.arange(0, BLOCK_N)
    e_ok, n_ok = e < E, n < N
    last = (tl.arange(0, CHUNK) == CHUNK - 1)[None, None, :]
    h_carry = tl.zeros((BLOCK_E, BLOCK_N), dtype=DTYPE)
    for c in range(n_chunks):
        t = c * CHUNK + tl.arange(0, CHUNK)
        t_ok = t < L
        u, _, _, _, _, a, b = _chunk_inputs(
            u_ptr, delta_ptr, A_ptr, B_ptr, bias_ptr, row, e, n, t, e_ok, n_ok, t_ok, E, N, L,
            HAS_BIAS, SOFTPLUS, DTYPE,
        )  # fmt: skip
        a_run, h = tl.associative_scan((a, b), 2, _combine)
        h += a_run * h_carry[:, :, None]
        Ct = tl.load(C_ptr + (row * N + n)[:, None] * L + t[None, :], mask=n_ok[:, None] & t_ok[None, :], other=0.0)
        y = tl.sum(h * Ct.to(DTYPE)[None, :, :], axis=1)
        if HAS_D:
            y += tl.load(D_ptr + e, mask=e_ok, other=0.0).to(DTYPE)[:, None] * u
        ch = (row * E + e)[:, None] * L + t[None, :]
        m = e_ok[:, None] & t_ok[None, :]
        if HAS_Z:
            z = tl.load(z_ptr + ch, mask=m, other=0.0).to(DTYPE)
            y *= z * tl.sigmoid(z)
        tl.store(out_ptr + ch, y.to(out_ptr.dtype.element_ty), mask=m)
        h_carry = tl.sum(tl.where(last, h, 0.0), axis=2)  # padded steps kept it: the state after step L - 1
        st = ((row * E + e)[:, None] * N + n[None, :]) * n_chunks + c
        tl.store(states_ptr + st, h_carry, mask=e_ok[:, None] & n_ok[None, :])


@triton.jit
def _scan_bwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, states_ptr, grad_ptr,
    du_ptr, ddelta_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr,
    E, N, L, n_chunks, n_eblocks,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    DTYPE: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0)
    eblock = tl.program_id(1)
    e = eblock * BLOCK_E + tl.arange(0, BLOCK_E)
    n = tl.arange(0, BLOCK_N)
    e_ok, n_ok = e < E, n < N
    en_ok = e_ok[:, None] & n_ok[None, :]
    first = (tl.arange(0, CHUNK) == 0)[None, None, :]
    lam_carry = tl.zeros((BLOCK_E, BLOCK_N), dtype=DTYPE)  # the adjoint of the state at the next chunk's first step
    dA_acc = tl.zeros((BLOCK_E, BLOCK_N), dtype=DTYPE)
    dD_acc = tl.zeros((BLOCK_E,), dtype=DTYPE)
    dbias_acc = tl.zeros((BLOCK_E,), dtype=DTYPE)
    D = tl.load(D_ptr + e, mask=e_ok, other=0.0).to(DTYPE) if HAS_D else tl.zeros((BLOCK_E,), dtype=DTYPE)
    for step in range(n_chunks):
        c = n_chunks - 1 - step
        t = c * CHUNK + tl.arange(0, CHUNK)
        t_ok = t < L
        ch = (row * E + e)[:, None] * L + t[None, :]
        m = e_ok[:, None] & t_ok[None, :]
        nt = (row * N + n)[:, None] * L + t[None, :]
        nt_ok = n_ok[:, None] & t_ok[None, :]
        u, dt_raw, dt, A, Bt, a, b = _chunk_inputs(
            u_ptr, delta_ptr, A_ptr, B_ptr, bias_ptr, row, e, n, t, e_ok, n_ok, t_ok, E, N, L,
            HAS_BIAS, SOFTPLUS, DTYPE,
        )  # fmt: skip
        # the states of this chunk, recomputed from the state kept at its start
        st = ((row * E + e)[:, None] * N + n[None, :]) * n_chunks + (c - 1)
        h_start = tl.load(states_ptr + st, mask=en_ok & (c > 0), other=0.0)
        a_run, h = tl.associative_scan((a, b), 2, _combine)
        h += a_run * h_start[:, :, None]
        Ct = tl.load(C_ptr + nt, mask=nt_ok, other=0.0).to(DTYPE)
        g = tl.load(grad_ptr + ch, mask=m, other=0.0).to(DTYPE)
        if HAS_Z:
            z = tl.load(z_ptr + ch, mask=m, other=0.0).to(DTYPE)
            y = tl.sum(h * Ct[None, :, :], axis=1) + D[:, None] * u
            sig = tl.sigmoid(z)
            tl.store(dz_ptr + ch, (g * y * sig * (1.0 + z * (1.0 - sig))).to(dz_ptr.dtype.element_ty), mask=m)
            g *= z * sig
        # the adjoint, lambda_t = C_t g_t + a_{t+1} lambda_{t+1}, with a_{t+1} from the next step's delta
        t1 = t + 1
        ch1 = (row * E + e)[:, None] * L + t1[None, :]
        m1 = e_ok[:, None] & (t1 < L)[None, :]
        dt1 = tl.load(delta_ptr + ch1, mask=m1, other=0.0).to(DTYPE)
        if HAS_BIAS:
            dt1 += tl.load(bias_ptr + e, mask=e_ok, other=0.0).to(DTYPE)[:, None]
        if SOFTPLUS:
            dt1 = tl.where(dt1 <= 20.0, tl.log(1.0 + tl.exp(dt1)), dt1)
        a1 = tl.exp(tl.where(m1, dt1, 0.0)[:, None, :] * A[:, :, None])
        a_back, lam = tl.associative_scan((a1, g[:, None, :] * Ct[None, :, :]), 2, _combine, reverse=True)
        lam += a_back * lam_carry[:, :, None]
        lam_carry = tl.sum(tl.where(first, lam, 0.0), axis=2)
        # gradients; a_t h_{t-1} = h_t - b_t
        ah = h - b
        ddt = tl.sum(lam * (A[:, :, None] * ah + (Bt[None, :, :] * u[:, None, :])), axis=1)
        du = tl.sum(lam * Bt[None, :, :], axis=1) * dt + D[:, None] * g
        dA_acc += tl.sum(lam * dt[:, None, :] * ah, axis=2)
        dD_acc += tl.sum(g * u, axis=1)
        if SOFTPLUS:
            ddt *= tl.sigmoid(dt_raw)
        ddt = tl.where(m, ddt, 0.0)
        dbias_acc += tl.sum(ddt, axis=1)
        tl.store(du_ptr + ch, du.to(du_ptr.dtype.element_ty), mask=m)
        tl.store(ddelta_ptr + ch, ddt.to(ddelta_ptr.dtype.element_ty), mask=m)
        part = ((row * n_eblocks + eblock) * N + n)[:, None] * L + t[None, :]
        tl.store(dB_ptr + part, tl.sum(lam * (dt * u)[:, None, :], axis=0), mask=nt_ok)
        tl.store(dC_ptr + part, tl.sum(h * g[:, None, :], axis=0), mask=nt_ok)
    tl.store(dA_ptr + (row * E + e)[:, None] * N + n[None, :], dA_acc, mask=en_ok)
    tl.store(dD_ptr + row * E + e, dD_acc, mask=e_ok)
    tl.store(dbias_ptr + row * E + e, dbias_acc, mask=e_ok)


_INPUTS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
_TL_DTYPES = {torch.float32: tl.float32, torch.float64: tl.float64}


def _launch_shape(u: torch.Tensor, A: torch.Tensor) -> tuple[tuple[int, int], int, int]:
    batch, E, L = u.shape
    return (batch, triton.cdiv(E, BLOCK_E)), triton.next_power_of_2(A.shape[1]), triton.cdiv(L, CHUNK)


class SelectiveScanTriton(torch.autograd.Function):
    """`selective_scan` on the Triton kernels; computes in `compute_dtype` (float32, or float64), returns u's dtype."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, compute_dtype):
        u, delta, A, B, C = (t.contiguous() for t in (u, delta, A, B, C))
        D, z, delta_bias = (None if t is None else t.contiguous() for t in (D, z, delta_bias))
        grid, block_n, n_chunks = _launch_shape(u, A)
        batch, E, L = u.shape
        out = torch.empty_like(u)
        states = torch.empty(batch, E, A.shape[1], n_chunks, device=u.device, dtype=compute_dtype)
        flags = dict(HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None)
        flags |= dict(SOFTPLUS=bool(delta_softplus), DTYPE=_TL_DTYPES[compute_dtype], BLOCK_E=BLOCK_E)
        flags |= dict(BLOCK_N=block_n, CHUNK=CHUNK)
        _scan_fwd_kernel[grid](
            u, delta, A, B, C, D, z, delta_bias, out, states, E, A.shape[1], L, n_chunks, **flags
        )  # fmt: skip
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, states)
        ctx.flags, ctx.compute_dtype = flags, compute_dtype
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        u, delta, A, B, C, D, z, delta_bias, states = ctx.saved_tensors
        grid, _, n_chunks = _launch_shape(u, A)
        batch, E, L = u.shape
        N, ct = A.shape[1], ctx.compute_dtype

        def new(*shape):
            return torch.empty(*shape, device=u.device, dtype=ct)

        du, ddelta = new(batch, E, L), new(batch, E, L)
        dz = new(batch, E, L) if z is not None else None
        dA, dD, dbias = new(batch, E, N), new(batch, E), new(batch, E)
        dB, dC = new(batch, grid[1], N, L), new(batch, grid[1], N, L)
        _scan_bwd_kernel[grid](
            u, delta, A, B, C, D, z, delta_bias, states, grad.contiguous(),
            du, ddelta, dz, dA, dB, dC, dD, dbias,
            E, N, L, n_chunks, grid[1], **ctx.flags,
        )  # fmt: skip

        # the partial sums are reduced here, in a fixed order
        grads = {
            "u": du, "delta": ddelta, "A": dA.sum(0), "B": dB.sum(1), "C": dC.sum(1),
            "D": dD.sum(0), "z": dz, "delta_bias": dbias.sum(0),
        }  # fmt: skip
        inputs = dict(zip(_INPUTS, (u, delta, A, B, C, D, z, delta_bias), strict=True))
        out = [
            None if inputs[k] is None or not ctx.needs_input_grad[i] else grads[k].to(inputs[k].dtype)
            for i, k in enumerate(_INPUTS)
        ]
        return (*out, None, None)
