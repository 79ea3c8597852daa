"""Selective scan (the S6 recurrence of Mamba): reference, pure-PyTorch, compiled CPU, Triton and CUDA backends.

For every batch b, channel e and state n the scan runs the discretised linear recurrence

    h_t = exp(delta_t * A) * h_{t-1} + delta_t * u_t * B_t,        y_t = sum_n h_t * C_t (+ D * u_t) (* silu(z_t))

Backends:
    "ref"   `selective_scan_ref`, a sequential loop under autograd with mamba-ssm's reference semantics. It is the
            executable specification and the slow baseline of benchmarks/bench_scan.py.
    "torch" a time-chunked `torch.autograd.Function` with a hand-written backward; plain PyTorch, any device.
    "cpu"   the recurrence as a compiled C++ kernel, states vectorised (models/cpu_kernels.py); CPU tensors.
    "triton" two fused Triton kernels, forward and backward (models/triton_scan.py); CUDA tensors, or CPU tensors
            under Triton's interpreter (TRITON_INTERPRET=1). Triton comes with the CUDA builds of torch.
    "cuda"  mamba-ssm's fused `selective_scan_fn` kernel (CUDA tensors only; needs mamba-ssm built with its
            `selective_scan_cuda` extension, docs/gpu.md).
    "auto"  on CUDA: "cuda" when mamba-ssm's extension is there, else "triton" when Triton imports, else "torch";
            on the CPU: "cpu" when the kernel builds and loads, else "torch".
"""

# Shapes: B batch, E d_inner (channels), N d_state, L sequence length

from __future__ import annotations

import contextlib
import functools
import importlib.util
import math
import os
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from models import cpu_kernels

BACKENDS = ("auto", "torch", "ref", "cpu", "triton", "cuda")
# Steps between the boundary states the "cpu" kernel keeps for its backward: shorter chunks recompute less in the
# backward and keep more states; the length is the fastest measured at the tiny recipe's shapes
# (benchmarks/bench_scan.py --chunks, benchmarks/README.md "Chunk length").
CPU_CHUNK = 16

# dtypes mamba-ssm's kernel accepts for u, delta, B, C and z (A, D and delta_bias must be float32 there).
_CUDA_INPUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

_GPU_INSTALL_HINT = "MAMBA_KEEP_CUDA_BUILD=TRUE pip install -r requirements-gpu.txt (docs/gpu.md)"

_LOG2E = math.log2(math.e)

# The scan's elementwise FLOPs under the suite's convention (analysis/flops.py), counted per call with u (B, E, L) and
# A (E, N). Per element of (B, E, L, N): Δ·A 1, exp 1 (a = exp(Δ·A)), (Δu)·B 1, h = a·h + b 2 (one MAC), y += C·h 2.
# Per element of (B, E, L): softplus(Δ) 1, Δ·u 1, D skip y + D·u 2 (one MAC), gate y·silu(z) 2 (silu 1, product 1).
# They describe the scan as MambaMixer calls it (D, z and delta_softplus always on).
SCAN_FLOPS_PER_STATE = 7
SCAN_FLOPS_PER_CHANNEL = 6


def scan_flops(batch: int, d_inner: int, seq_len: int, d_state: int) -> int:
    """FLOPs of one selective scan over u (batch, d_inner, seq_len) with A (d_inner, d_state)."""
    return batch * d_inner * seq_len * (SCAN_FLOPS_PER_STATE * d_state + SCAN_FLOPS_PER_CHANNEL)


# ----------------------------------------------------------------------------------------------------------------------
# Reference
# ----------------------------------------------------------------------------------------------------------------------


def _compute_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """float64 if any input is float64 (so gradcheck is meaningful), else float32 (bf16/fp16 are upcast)."""
    if any(t is not None and t.dtype == torch.float64 for t in tensors):
        return torch.float64
    return torch.float32


def selective_scan_ref(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
) -> torch.Tensor:
    """Reference selective scan: a sequential loop under autograd, as mamba-ssm's ``selective_scan_ref``; arguments
    and output as `selective_scan`'s, computed in float32 (float64 if any input is float64).

    This is the executable specification the other backends are tested against. It is deliberately written the
    way mamba-ssm writes it (materialise exp(delta * A) and delta * u * B for all steps, then slice one step per
    loop iteration), which also makes it the slow baseline the benchmark compares with; do not optimise it.
    """
    dtype_in = u.dtype
    ct = _compute_dtype(u, delta, A, B, C, D, z, delta_bias)
    u = u.to(ct)
    delta = delta.to(ct)
    if delta_bias is not None:
        delta = delta + delta_bias[:, None].to(ct)
    if delta_softplus:
        delta = F.softplus(delta)
    batch, dim, dstate = u.shape[0], A.shape[0], A.shape[1]
    A, B, C = A.to(ct), B.to(ct), C.to(ct)
    deltaA = torch.exp(torch.einsum("bel,en->beln", delta, A))
    deltaB_u = torch.einsum("bel,bnl,bel->beln", delta, B, u)
    x = A.new_zeros((batch, dim, dstate))
    ys = []
    for i in range(u.shape[2]):
        x = deltaA[:, :, i] * x + deltaB_u[:, :, i]
        ys.append(torch.einsum("ben,bn->be", x, C[:, :, i]))
    y = torch.stack(ys, dim=2)
    out = y if D is None else y + u * D[:, None].to(ct)
    if z is not None:
        out = out * F.silu(z.to(ct))
    return out.to(dtype_in)


def selective_state_update(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
) -> torch.Tensor:
    """One step of the recurrence for generation, with mamba-ssm's name and semantics: the state advances in place.

    Args:
        state: [B, E, N], float32 (or float64), updated to exp(Δ·A)·state + Δ·B·x.
        x, dt: [B, E]; z: optional gate [B, E]; B, C: [B, N]; A: [E, N]; D, dt_bias: optional [E].
        dt_softplus: apply softplus to dt (after the bias).

    Returns:
        y = C·state (+ D·x) (· silu(z)), [B, E], in x's dtype; computed in the state's dtype.
    """
    ct = state.dtype
    dt = dt.to(ct) if dt_bias is None else dt.to(ct) + dt_bias.to(ct)
    if dt_softplus:
        dt = F.softplus(dt)
    xf = x.to(ct)
    state.mul_(torch.exp(dt[..., None] * A.to(ct))).add_(dt[..., None] * B.to(ct)[:, None, :] * xf[..., None])
    y = (state * C.to(ct)[:, None, :]).sum(-1)
    if D is not None:
        y = y + xf * D.to(ct)
    if z is not None:
        y = y * F.silu(z.to(ct))
    return y.to(x.dtype)


# ----------------------------------------------------------------------------------------------------------------------
# Fast pure-PyTorch backend
# ----------------------------------------------------------------------------------------------------------------------


def _chunk_len(L: int, state_bytes: int) -> int:
    """Time steps per chunk of the "torch" backend, for a [B, E, N] state of ``state_bytes`` bytes.

    Aim for [T, B, E, N] chunk buffers of ~4 MiB: small enough to stay in this CPU's caches (32 MiB L3 shared by
    the three buffers and the per-step traffic), large enough that the ~20 batched ops per chunk are amortised.
    Measured fwd+bwd (ms) over T = 4, 8, 16, 32, 64, 128 on the 2-vCPU dev box, float32:
    state 8 KiB (2, 64, 16, 1024): 117, 68, 46, 31, 23, 20; 16 KiB (4, 64, 16, 128): 16, 11, 7, 5.5, 4.6, 5.6;
    256 KiB (16, 256, 16, 256): 103, 78, 62, 74, 102, 134; 1 MiB (16, 1024, 16, 128): 134, 136, 153, 175, 225, 334;
    2 MiB (32, 1024, 16, 64), T = 2, 4, 8: 157, 160, 176.
    """
    return min(L, max(4, min(128, (4 << 20) // state_bytes)))


def _time_major(x: torch.Tensor, t0: int, t1: int, dtype: torch.dtype) -> torch.Tensor:
    """Steps t0:t1 of ``x`` ([B, X, L], any strides) as a contiguous time-major [t1 - t0, B, X] tensor of ``dtype``."""
    part = x[:, :, t0:t1]
    if part.stride(2) == 1:
        # [B, X, L] memory: gather the chunk's short contiguous runs first, then transpose in cache. Transposing
        # straight from the full tensor would read with a stride of L elements, which the cache serves badly.
        part = part.contiguous()
    steps = part.permute(2, 0, 1)
    return torch.empty(steps.shape, dtype=dtype, device=x.device).copy_(steps)


def _chunk_delta(
    delta: torch.Tensor, delta_bias: torch.Tensor | None, softplus: bool, t0: int, t1: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Time-major delta of steps t0:t1 after bias and softplus, and its pre-softplus value (for the backward)."""
    pre = _time_major(delta, t0, t1, dtype)
    if delta_bias is not None:
        pre += delta_bias
    return (F.softplus(pre) if softplus else pre), pre


def _chunk_states(
    delta: torch.Tensor,
    du: torch.Tensor,
    A2: torch.Tensor,
    B: torch.Tensor,
    h0: torch.Tensor,
    a: torch.Tensor,
    H: torch.Tensor,
) -> None:
    """Fill ``a`` with the decays and ``H`` with the states of one chunk of T steps, starting from state ``h0``.

    delta, du (delta * u): [T, B, E]; A2 (A * log2(e)): [E, N]; B: [T, B, N]; h0: [B, E, N], the state before the
    chunk's first step; a, H: [T, B, E, N] output buffers for a_t = exp(delta_t * A) (in (0, 1] for A <= 0) and h_t.
    """
    # exp2 of a pre-scaled A instead of exp: same value, cheaper than exp (and no slow path for very
    # negative arguments), at the cost of one extra rounding (relative error <= 1e-6 for |delta * A| <= 20).
    torch.mul(delta[..., None], A2, out=a).exp2_()
    # H starts as the input term delta * u * B and becomes the states in place: h_t = a_t * h_{t-1} + H_t.
    # One fused addcmul per step, in linear (not log) space: the decays are in (0, 1], so nothing can overflow.
    torch.mul(du[..., None], B[:, :, None, :], out=H)
    H[0].addcmul_(a[0], h0)
    steps = H.unbind(0)  # one call for all per-step views, cheaper than indexing H[t] in the loop
    for a_t, h_prev, h_t in zip(a.unbind(0)[1:], steps[:-1], steps[1:], strict=True):
        h_t.addcmul_(a_t, h_prev)


def _dot_n(V: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """sum_n H[t, b, e, n] V[t, b, n] for V [T, B, N], H [T, B, E, N] -> [T, B, E], as one batched V_t @ H_t^T.

    Used for the readout y = C . h and, in the backward, for d(delta u) = B . dL/dh. (The V_t @ H_t^T orientation
    was several times faster than H_t @ V_t with MKL here.)
    """
    return torch.matmul(V[:, :, None, :], H.transpose(-1, -2)).squeeze(2)


@contextlib.contextmanager
def _untraced() -> Iterator[None]:
    """Stop torch.jit's tracer (fvcore's FLOP count) recording ops: it records the scan as one op, priced by its
    shapes, and tracing the chunk loop inside it (hundreds of ops per call) cost ~1 s per count and counted nothing."""
    state = torch._C._get_tracing_state()
    torch._C._set_tracing_state(None)
    try:
        yield
    finally:
        torch._C._set_tracing_state(state)


class _SelectiveScanFn(torch.autograd.Function):
    """The whole selective scan, processed in chunks of T time steps with a hand-written backward.

    Takes the arguments of `selective_scan` in their own layouts and dtypes. Each chunk is transposed to time-major
    ([T, B, E], [T, B, N]) and upcast to the compute dtype on load, so each per-step slice is one contiguous block,
    and the elementwise work around the scan (bias, softplus, D skip, silu gate and their gradients) is done here
    on cache-resident chunks instead of by autograd on full-length tensors. That keeps autograd from saving
    ~6 full [L, B, E] intermediates: peak RSS growth of fwd+bwd at (8, 512, 16, 1024) fell from 305 MB to 104 MB,
    at the same speed.

    Memory: the full [B, E, N, L] state sequence is never materialised. Forward keeps only ceil(L / T) chunk
    boundary states; backward recomputes a chunk's states from its boundary state, then runs the reverse recursion
    for the state gradients over that chunk, from the last chunk to the first.
    """

    @staticmethod
    @_untraced()
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk, ct):
        batch, _, L = u.shape
        A_ct, D_ct, bias_ct = (None if t is None else t.to(ct) for t in (A, D, delta_bias))
        A2 = A_ct * _LOG2E
        out = u.new_empty(u.shape)
        # Row c is the state entering chunk c (row 0: the zero initial state).
        states = A_ct.new_empty(math.ceil(L / chunk), batch, *A.shape)
        states[0].zero_()
        # One pair of [T, B, E, N] buffers reused by every chunk: allocating multi-MB tensors per chunk costs a fresh
        # mmap and page faults each time with glibc's allocator.
        a = A_ct.new_empty(chunk, batch, *A.shape)
        H = torch.empty_like(a)
        for c, t0 in enumerate(range(0, L, chunk)):
            t1 = min(t0 + chunk, L)
            n = t1 - t0
            if c > 0:
                states[c].copy_(H[chunk - 1])
            u_c = _time_major(u, t0, t1, ct)
            delta_c, _ = _chunk_delta(delta, bias_ct, delta_softplus, t0, t1, ct)
            _chunk_states(delta_c, delta_c * u_c, A2, _time_major(B, t0, t1, ct), states[c], a[:n], H[:n])
            y = _dot_n(_time_major(C, t0, t1, ct), H[:n])
            if D is not None:
                y.addcmul_(u_c, D_ct)
            if z is not None:
                y.mul_(F.silu(_time_major(z, t0, t1, ct)))
            out[:, :, t0:t1] = y.permute(1, 2, 0)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, states)
        ctx.delta_softplus = delta_softplus
        ctx.chunk = chunk
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, gout):
        u, delta, A, B, C, D, z, delta_bias, states = ctx.saved_tensors
        ct = states.dtype
        chunk = ctx.chunk
        L = u.shape[2]
        A_ct, D_ct, bias_ct = (None if t is None else t.to(ct) for t in (A, D, delta_bias))
        A2 = A_ct * _LOG2E
        # Per-step gradients are written chunk by chunk into tensors of each input's own dtype; the parameter
        # gradients (dA, dD, d delta_bias) are sums over (t, b) accumulated in the compute dtype.
        g_u, g_delta, g_B, g_C = (t.new_empty(t.shape) for t in (u, delta, B, C))
        g_z = None if z is None else z.new_empty(z.shape)
        g_A = torch.zeros_like(A_ct)
        g_D = None if D is None else torch.zeros_like(D_ct)
        g_bias = None if delta_bias is None else torch.zeros_like(bias_ct)
        a = A_ct.new_empty(chunk, *states.shape[1:])
        H = torch.empty_like(a)
        gH = torch.empty_like(a)
        # a_{t+1} * dL/dh_{t+1} flowing into a chunk's last step from the first step of the chunk after it.
        carry = torch.zeros_like(states[0])
        for c in reversed(range(states.shape[0])):
            t0 = c * chunk
            t1 = min(t0 + chunk, L)
            n = t1 - t0
            a_c, H_c, gH_c = a[:n], H[:n], gH[:n]
            u_c = _time_major(u, t0, t1, ct)
            B_c = _time_major(B, t0, t1, ct)
            C_c = _time_major(C, t0, t1, ct)
            gy = _time_major(gout, t0, t1, ct)
            delta_c, pre_c = _chunk_delta(delta, bias_ct, ctx.delta_softplus, t0, t1, ct)
            du_c = delta_c * u_c
            _chunk_states(delta_c, du_c, A2, B_c, states[c], a_c, H_c)

            # Output side: out = (y + D u) * silu(z). gy becomes the gradient w.r.t. y + D u, then w.r.t. y.
            if z is not None:
                z_c = _time_major(z, t0, t1, ct)
                sig = torch.sigmoid(z_c)
                y = _dot_n(C_c, H_c)
                if D is not None:
                    y.addcmul_(u_c, D_ct)
                # d silu(z) / dz = sigmoid(z) * (1 + z * (1 - sigmoid(z)))
                g_z_c = gy * y * sig * (1 + z_c * (1 - sig))
                g_z[:, :, t0:t1] = g_z_c.permute(1, 2, 0)
                gy = gy * z_c * sig
            if D is not None:
                g_D.add_((gy * u_c).sum((0, 1)))

            # dC_t = sum_e gy_t h_t
            g_C[:, :, t0:t1] = torch.matmul(gy[:, :, None, :], H_c).squeeze(2).permute(1, 2, 0)
            # gh_t = dL/dh_t = gy_t (x) C_t + a_{t+1} * gh_{t+1}: backwards in time, one addcmul per step.
            torch.mul(gy[..., None], C_c[:, :, None, :], out=gH_c)
            gH_c[n - 1].add_(carry)
            g_steps = gH_c.unbind(0)
            for a_next, g_next, g_t in zip(a_c.unbind(0)[:0:-1], g_steps[:0:-1], g_steps[-2::-1], strict=True):
                g_t.addcmul_(a_next, g_next)
            # From h_t = a_t h_{t-1} + (delta u)_t B_t: d(delta u)_t = sum_n gh_t B_t, dB_t = sum_e gh_t (delta u)_t.
            g_du = _dot_n(B_c, gH_c)
            g_B[:, :, t0:t1] = torch.matmul(du_c[:, :, None, :], gH_c).squeeze(2).permute(1, 2, 0)
            # P_t = gh_t * a_t * h_{t-1} is dL/d(delta_t A); built in a's buffer (a is no longer needed), with
            # a * gh at the chunk's first step kept as the next (earlier) chunk's carry.
            P = a_c.mul_(gH_c)
            carry.copy_(P[0])
            P[0].mul_(states[c])
            P[1:].mul_(H_c[: n - 1])
            # dA = sum_{t,b} P delta and d(delta) = sum_n P A + d(delta u) u, using the free gH and H buffers.
            g_A.add_(torch.mul(P, delta_c[..., None], out=gH_c).sum((0, 1)))
            g_delta_c = torch.mul(P, A_ct, out=H_c).sum(-1).addcmul_(g_du, u_c)
            g_u_c = g_du.mul_(delta_c)
            if D is not None:
                g_u_c.addcmul_(gy, D_ct)
            g_u[:, :, t0:t1] = g_u_c.permute(1, 2, 0)

            # Input side: delta = softplus(delta + delta_bias), and softplus' = sigmoid.
            if ctx.delta_softplus:
                g_delta_c.mul_(torch.sigmoid(pre_c))
            if delta_bias is not None:
                g_bias.add_(g_delta_c.sum((0, 1)))
            g_delta[:, :, t0:t1] = g_delta_c.permute(1, 2, 0)

        g_A, g_D, g_bias = (None if g is None else g.to(t.dtype) for g, t in ((g_A, A), (g_D, D), (g_bias, delta_bias)))
        return g_u, g_delta, g_A, g_B, g_C, g_D, g_z, g_bias, None, None, None


# ----------------------------------------------------------------------------------------------------------------------
# CUDA backend (mamba-ssm)
# ----------------------------------------------------------------------------------------------------------------------


@functools.cache
def _import_mamba_ssm() -> tuple[object | None, str | None]:
    """mamba-ssm's ``selective_scan_fn`` when its CUDA extension is there, else (None, why not); tried once.

    mamba-ssm's releases fail to import without the extension; its main branch imports with
    ``selective_scan_cuda = None`` and raises at the first call, so the extension itself is what is checked.
    """
    try:
        from mamba_ssm.ops import selective_scan_interface as interface
    except Exception as exc:  # a broken CUDA build fails with ImportError, OSError or RuntimeError alike
        return None, f"{type(exc).__name__}: {exc}"
    if getattr(interface, "selective_scan_cuda", None) is None:
        return None, "mamba-ssm is installed without its selective_scan_cuda extension"
    return interface.selective_scan_fn, None


def mamba_ssm_available() -> bool:
    """Whether mamba-ssm's CUDA selective scan is installed, extension included (checked once and cached)."""
    return _import_mamba_ssm()[0] is not None


def mamba_ssm_import_error() -> str | None:
    """Why mamba-ssm's CUDA selective scan cannot be used, or None when it can."""
    return _import_mamba_ssm()[1]


def triton_available() -> bool:
    """Whether Triton is installed (the CUDA builds of torch bring it)."""
    return importlib.util.find_spec("triton") is not None


def _scan_cuda(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    """The "cuda" backend: cast to the dtypes mamba-ssm's kernel requires and call ``selective_scan_fn``.

    The kernel wants u, delta, B, C and z in one input dtype (u's) and A, D, delta_bias in float32; the casts are
    differentiable, so gradients still come back in each argument's own dtype.
    """
    fn, _ = _import_mamba_ssm()
    it = u.dtype
    D, delta_bias = (None if t is None else t.float() for t in (D, delta_bias))
    z = None if z is None else z.to(it)
    return fn(
        u, delta.to(it), A.float(), B.to(it), C.to(it), D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus
    )


# ----------------------------------------------------------------------------------------------------------------------
# Public entry points
# ----------------------------------------------------------------------------------------------------------------------


def resolve_backend(backend: str, device: torch.device | str, dtype: torch.dtype | None = None) -> str:
    """The concrete backend ("torch", "ref", "cpu", "triton" or "cuda") `selective_scan` runs for ``backend`` (one of
    `BACKENDS`, "auto" resolved as the module docstring says) on ``device``. ``dtype`` is ``u``'s when given:
    mamba-ssm's kernel has no float64, so "auto" passes it over for float64.

    Raises ValueError for an unknown ``backend``, and RuntimeError when the one asked for cannot run here: "cuda"
    without mamba-ssm's extension, CUDA tensors or a supported ``dtype``; "triton" without Triton, or on CPU tensors
    outside Triton's interpreter; "cpu" without the compiled kernel or CPU tensors.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown selective-scan backend {backend!r}; valid choices are {', '.join(BACKENDS)}")
    device = torch.device(device)
    dtype_ok = dtype is None or dtype in _CUDA_INPUT_DTYPES
    if backend == "auto":
        if device.type == "cuda":
            if dtype_ok and mamba_ssm_available():
                return "cuda"
            return "triton" if triton_available() else "torch"
        return "cpu" if device.type == "cpu" and cpu_kernels.available() else "torch"
    if backend == "cpu":
        if device.type != "cpu":
            raise RuntimeError(f"selective-scan backend 'cpu' needs CPU tensors, but the tensors are on {device}")
        if not cpu_kernels.available():
            raise RuntimeError(
                f"selective-scan backend 'cpu' is unavailable ({cpu_kernels.load_error()}); run `bash setup.sh` to "
                "install the compiler and build it, or use backend='torch'"
            )
    if backend == "triton":
        if not triton_available():
            raise RuntimeError("selective-scan backend 'triton' needs Triton (`pip install triton`), which is missing")
        # Triton runs kernels on CPU tensors under its interpreter, which is switched on before the kernels load.
        if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            raise RuntimeError(
                f"selective-scan backend 'triton' needs CUDA tensors, or TRITON_INTERPRET=1 for {device} tensors"
            )
    if backend == "cuda":
        if not mamba_ssm_available():
            raise RuntimeError(
                f"selective-scan backend 'cuda' needs mamba-ssm's CUDA extension ({mamba_ssm_import_error()}); "
                f"install it with `{_GPU_INSTALL_HINT}` on a CUDA machine, or use backend='triton' or 'torch'"
            )
        if device.type != "cuda":
            raise RuntimeError(f"selective-scan backend 'cuda' needs CUDA tensors, but the tensors are on {device}")
        if not dtype_ok:
            raise RuntimeError(f"mamba-ssm's selective scan supports inputs in {_CUDA_INPUT_DTYPES}, got {dtype}")
    return backend


def _check_shape(name: str, t: torch.Tensor | None, expected: tuple[int, ...], legend: str) -> None:
    """Raise a ValueError naming ``name``, the expected shape (in B, E, N, L terms) and the actual one."""
    if t is not None and tuple(t.shape) != expected:
        raise ValueError(f"selective_scan: {name} must have shape {legend} = {expected}, got {tuple(t.shape)}")


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    backend: str = "auto",
) -> torch.Tensor:
    """Selective scan with the semantics of `selective_scan_ref`, on the chosen backend.

    Args:
        u: Input, [B, E, L], L >= 1.
        delta: Step sizes, [B, E, L].
        A: State matrix (real, normally negative), [E, N].
        B: Input-dependent input matrix, [B, N, L].
        C: Input-dependent output matrix, [B, N, L].
        D: Optional skip weight, [E]; adds ``u * D``.
        z: Optional gate, [B, E, L]; multiplies the output by ``silu(z)``.
        delta_bias: Optional bias added to ``delta`` before the softplus, [E].
        delta_softplus: Apply softplus to ``delta`` (after the bias).
        backend: One of `BACKENDS`; see `resolve_backend`.

    Returns:
        The output, [B, E, L], in ``u``'s dtype. The "torch", "cpu", "triton" and "ref" backends compute in float32
        (float64 if any input is float64); gradients come back in each input's own dtype.

    Raises:
        ValueError: A tensor has the wrong shape, or ``backend`` is unknown.
        RuntimeError: the backend asked for cannot be used here (see `resolve_backend`).
    """
    if u.dim() != 3 or u.shape[2] < 1:
        raise ValueError(f"selective_scan: u must have shape (B, E, L) with L >= 1, got {tuple(u.shape)}")
    if A.dim() != 2 or A.shape[0] != u.shape[1] or A.is_complex():
        raise ValueError(f"selective_scan: A must be real with shape (E, N) = ({u.shape[1]}, N), got {tuple(A.shape)}")
    batch, dim, L = u.shape
    dstate = A.shape[1]
    _check_shape("delta", delta, (batch, dim, L), "(B, E, L)")
    _check_shape("B", B, (batch, dstate, L), "(B, N, L)")
    _check_shape("C", C, (batch, dstate, L), "(B, N, L)")
    _check_shape("D", D, (dim,), "(E,)")
    _check_shape("z", z, (batch, dim, L), "(B, E, L)")
    _check_shape("delta_bias", delta_bias, (dim,), "(E,)")

    backend = resolve_backend(backend, u.device, u.dtype)
    if backend == "cuda":
        return _scan_cuda(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    if backend == "ref":
        return selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    ct = _compute_dtype(u, delta, A, B, C, D, z, delta_bias)
    if backend == "cpu":
        return cpu_kernels.selective_scan_cpu(u, delta, A, B, C, D, z, delta_bias, delta_softplus, ct, CPU_CHUNK)
    if backend == "triton":
        from models.triton_scan import SelectiveScanTriton  # Triton is needed only here

        return SelectiveScanTriton.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus, ct)
    # int(): under torch.jit tracing (fvcore's FLOP count) sizes are traced values, which apply() cannot take.
    chunk = int(_chunk_len(int(L), int(batch * A.numel() * ct.itemsize)))
    return _SelectiveScanFn.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk, ct)
