"""The compiled CPU kernels (models/csrc, one C++ extension) and their autograd functions.

- The "cpu" selective-scan backend (csrc/selective_scan.h): the whole scan per batch row and channel, forward and
  backward: delta's bias and softplus, the state recursion h_t = exp(d_t A) h_{t-1} + d_t u_t B_t with the N states
  vectorised, the readout C_t . h_t, the D skip and the silu gate, keeping only the states at chunk boundaries (as the
  "torch" backend) and the pre-gate output. It reads its inputs through their strides, so a Mamba mixer's time-major
  views go in without copies. Beside it, the mixer's causal depthwise conv + SiLU.
- The training loss's cross-entropy per position (csrc/cross_entropy.h), float32 or bf16 logits.

The extension is built once per machine with torch's cpp_extension (g++ and ninja; `bash setup.sh` builds it) and
cached in `build_directory()`. If the build or the load fails, `available()` is False, the scan's "auto" falls back
to the "torch" backend and the loss to torch's cross-entropy, and a warning says so once.
"""

from __future__ import annotations

import functools
import os
import sys
import warnings
from pathlib import Path

import torch
from filelock import FileLock
from torch.autograd.function import once_differentiable

NAME = "mom_cpu_kernels"
SOURCE = Path(__file__).with_name("csrc") / "cpu_kernels.cpp"  # includes the kernels' headers
# -fassociative-math (with the two flags it needs) lets the state loop vectorise fully (benchmarks/README.md).
# NaN and infinity keep their meaning (no -ffinite-math-only), and -ffast-math itself is never passed: at link time it
# would switch the whole process to flush-to-zero.
FLAGS = ["-O3", "-march=native", "-fopenmp", "-ffp-contract=fast", "-fno-math-errno", "-fno-trapping-math"]
FLAGS += ["-fno-signed-zeros", "-fassociative-math"]


def build_directory() -> Path:
    """Where the extension is built and cached: under torch's extension root (TORCH_EXTENSIONS_DIR, by default
    ~/.cache/torch_extensions), a folder per Python and torch version."""
    from torch.utils.cpp_extension import get_default_build_root

    root = os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root()  # as torch's own `load` reads it
    python = f"py{sys.version_info.major}{sys.version_info.minor}"
    return Path(root) / f"{NAME}-{python}-torch{torch.__version__}"


@functools.cache
def _load() -> tuple[object | None, str | None]:
    """Build (first time on this machine) and load the extension once; (module, None) or (None, why not)."""
    # ninja may come from the environment's own bin folder (the PyPI wheel) rather than the system PATH.
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    try:
        from torch.utils.cpp_extension import load

        folder = build_directory()
        folder.mkdir(parents=True, exist_ok=True)
        # torch marks a build in progress with a plain file, `lock`, and waits for as long as it exists, so a process
        # killed inside `load` would stop every later one. Loads take this OS lock first, which the kernel releases
        # when its holder dies: whoever holds it is the only process in `load`, and a `lock` it finds is stale.
        with FileLock(folder / "load.filelock"):
            (folder / "lock").unlink(missing_ok=True)
            module = load(NAME, [str(SOURCE)], extra_cflags=FLAGS, extra_ldflags=["-fopenmp"],
                          build_directory=str(folder))  # fmt: skip
    except Exception as exc:  # a missing compiler, a failed build or a failed load all mean: use "torch"
        reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
        warnings.warn(
            f"the compiled CPU kernels are unavailable ({reason}); the selective scan falls back to the 'torch' "
            "backend and the loss to torch's cross-entropy (bash setup.sh installs the compiler and builds them)",
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


class _Scan(torch.autograd.Function):
    """The whole selective scan in the compiled kernel; inputs in the compute dtype, in whatever strides they come."""

    @staticmethod
    def forward(ctx, u, delta, A, Bt, Ct, D, z, delta_bias, delta_softplus, chunk):
        out, ypre, states = _load()[0].forward(u, delta, A, Bt, Ct, D, z, delta_bias, delta_softplus, chunk)
        ctx.save_for_backward(u, delta, A, Bt, Ct, D, z, delta_bias, ypre, states)
        ctx.delta_softplus, ctx.chunk = delta_softplus, chunk
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, gout):
        u, delta, A, Bt, Ct, D, z, delta_bias, ypre, states = ctx.saved_tensors
        grads = _load()[0].backward(
            gout, u, delta, A, Bt, Ct, D, z, delta_bias, ctx.delta_softplus, ypre, states, ctx.chunk
        )
        gu, gdelta, gz, gA, gBt, gCt, gD, gbias = grads
        return (gu, gdelta, gA, gBt, gCt, None if D is None else gD, None if z is None else gz,
                None if delta_bias is None else gbias, None, None)  # fmt: skip


def selective_scan_cpu(u, delta, A, B, C, D, z, delta_bias, delta_softplus, ct: torch.dtype, chunk: int):
    """`selective_scan` on the compiled kernel, in compute dtype `ct` (float32, or float64 if an input is), keeping a
    boundary state every `chunk` steps for the backward (`models.scan.CPU_CHUNK`).

    The output is laid out time-major ([B, L, E] memory, seen as [B, E, L]), as a Mamba mixer's out_proj reads it.
    """

    def cast(x):
        return None if x is None else x.to(ct)

    Bt, Ct = (x.to(ct).transpose(1, 2) for x in (B, C))  # [B, L, N]: each step's N values
    Bt, Ct = (x if x.stride(2) == 1 else x.contiguous() for x in (Bt, Ct))
    out = _Scan.apply(cast(u), cast(delta), A.to(ct).contiguous(), Bt, Ct, cast(D), cast(z), cast(delta_bias),
                      delta_softplus, chunk)  # fmt: skip
    return out.to(u.dtype)


class _ConvSilu(torch.autograd.Function):
    """silu(causal depthwise conv1d(x)) in the compiled kernel; x [B, E, L] in any strides, output time-major."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight, bias)
        return _load()[0].conv_forward(x, weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, gout):
        x, weight, bias = ctx.saved_tensors
        gx, gw, gbias = _load()[0].conv_backward(gout, x, weight, bias)
        return gx, gw, None if bias is None else gbias


def causal_conv1d_silu_cpu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """F.silu(F.conv1d(x, weight[:, None], bias, padding=K - 1, groups=E)[..., :L]) for float32/float64 CPU tensors.

    x: [B, E, L] (a Mamba mixer's time-major view goes in without a copy); weight: [E, K]; bias: [E] or None. The
    output is [B, E, L] laid out time-major ([B, L, E] memory), as the mixer's x_proj and scan read it.
    """
    return _ConvSilu.apply(x, weight.contiguous(), bias)


class _CrossEntropy(torch.autograd.Function):
    """Cross-entropy per row of [N, V] logits in the compiled kernel; only the logsumexp is kept for the backward."""

    @staticmethod
    def forward(ctx, logits, targets, ignore_index):
        ce, lse = _load()[0].ce_forward(logits, targets, ignore_index)
        ctx.save_for_backward(logits, targets, lse)
        ctx.ignore_index = ignore_index
        return ce

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        logits, targets, lse = ctx.saved_tensors
        return _load()[0].ce_backward(grad, logits, targets, lse, ctx.ignore_index), None, None


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """F.cross_entropy(upcast(logits), targets, ignore_index=ignore_index, reduction="none") on CPU tensors.

    logits: [..., V] float32, float64 or bfloat16; targets: [...] int64. Returns [...] in float32 (float64 for float64
    logits); 0 at ignored positions. The gradient reaches the logits in their own dtype.
    """
    flat = logits.reshape(-1, logits.shape[-1]).contiguous()
    return _CrossEntropy.apply(flat, targets.reshape(-1), ignore_index).view(targets.shape)
