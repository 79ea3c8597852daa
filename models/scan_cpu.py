"""The "cpu" selective-scan backend: the recurrence as a compiled C++ kernel (models/csrc/selective_scan_cpu.cpp).

The kernel runs, per batch row and channel, the state recursion h_t = exp(d_t A) h_{t-1} + d_t u_t B_t and the
readout y_t = C_t . h_t with the N states vectorised, forward and backward, keeping only the states at chunk
boundaries (as the "torch" backend). Everything elementwise around it (delta's bias and softplus, the D skip, the
silu gate) stays in PyTorch, whose kernels are already vectorised and threaded, and autograd composes the two.

The extension is built once per machine with torch's cpp_extension (g++ and ninja; `bash setup.sh` builds it) and
cached by torch. If the build or the load fails, `available()` is False, "auto" falls back to the "torch" backend,
and a warning says so once.
"""

from __future__ import annotations

import functools
import os
import sys
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

SOURCE = Path(__file__).with_name("csrc") / "selective_scan_cpu.cpp"
# -fassociative-math (with the two flags it needs) lets the state loop vectorise fully: 3-6x faster than without it.
# NaN and infinity keep their meaning (no -ffinite-math-only), and -ffast-math itself is never passed: at link time it
# would switch the whole process to flush-to-zero.
FLAGS = ["-O3", "-march=native", "-fopenmp", "-ffp-contract=fast", "-fno-math-errno", "-fno-trapping-math"]
FLAGS += ["-fno-signed-zeros", "-fassociative-math"]


@functools.cache
def _load() -> tuple[object | None, str | None]:
    """Build (first time on this machine) and load the extension once; (module, None) or (None, why not)."""
    # ninja may come from the environment's own bin folder (the PyPI wheel) rather than the system PATH.
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    try:
        from torch.utils.cpp_extension import load

        module = load("mom_selective_scan_cpu", [str(SOURCE)], extra_cflags=FLAGS, extra_ldflags=["-fopenmp"])
    except Exception as exc:  # a missing compiler, a failed build or a failed load all mean: use "torch"
        reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
        warnings.warn(
            f"the compiled CPU selective scan is unavailable ({reason}); falling back to the 'torch' backend "
            "(bash setup.sh installs the compiler and builds it)",
            RuntimeWarning,
            stacklevel=3,
        )
        return None, reason
    return module, None


def available() -> bool:
    """Whether the compiled kernel builds and loads here (attempted once, then cached)."""
    return _load()[0] is not None


def load_error() -> str | None:
    """Why the kernel is unavailable, or None."""
    return _load()[1]


class _Recurrence(torch.autograd.Function):
    """y = readout of the state recursion, from u, d (delta after bias and softplus), A, B_t and C_t [B, L, N]."""

    @staticmethod
    def forward(ctx, u, d, A, Bt, Ct, chunk):
        y, states = _load()[0].forward(u, d, A, Bt, Ct, chunk)
        ctx.save_for_backward(u, d, A, Bt, Ct, states)
        ctx.chunk = chunk
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, gy):
        u, d, A, Bt, Ct, states = ctx.saved_tensors
        gu, gd, gA, gBt, gCt = _load()[0].backward(gy.contiguous(), u, d, A, Bt, Ct, states, ctx.chunk)
        return gu, gd, gA, gBt, gCt, None


def selective_scan_cpu(u, delta, A, B, C, D, z, delta_bias, delta_softplus, ct: torch.dtype, chunk: int = 64):
    """`selective_scan` on the compiled kernel, in compute dtype `ct` (float32, or float64 if an input is)."""
    u_c = u.to(ct).contiguous()
    d = delta.to(ct)
    if delta_bias is not None:
        d = d + delta_bias.to(ct)[:, None]
    if delta_softplus:
        d = F.softplus(d)
    Bt, Ct = (x.to(ct).transpose(1, 2).contiguous() for x in (B, C))  # [B, L, N]: each step's N values contiguous
    y = _Recurrence.apply(u_c, d.contiguous(), A.to(ct).contiguous(), Bt, Ct, chunk)
    if D is not None:
        y = y + u_c * D.to(ct)[:, None]
    if z is not None:
        y = y * F.silu(z.to(ct))
    return y.to(u.dtype)
