"""Benchmark the fast "torch" selective scan against the reference loop (`selective_scan_ref`), forward + backward.

For each size (B, E, N, L) it times forward + backward of both in one process (float32, default thread count) and
reports the speed-up, plus the error of each float32 result against a float64 evaluation. The inputs follow the
Mamba mixer: softplus(delta + delta_bias) with dt in [1e-3, 1e-1], A = -(1..N) (S4D-real init), D skip, silu(z) gate.

Usage:
    python benchmarks/bench_scan.py                          # the three default sizes (the largest ref takes minutes)
    python benchmarks/bench_scan.py --skip-ref-above 256     # time the reference only for L <= 256
    python benchmarks/bench_scan.py --sizes 16,256,16,256    # one size, as B,E,N,L
    python benchmarks/bench_scan.py --memory                 # also peak RSS growth, each run in a fresh process

Errors are normwise: max |x - x64| / max |x64| per tensor, and for "grads" the worst over the eight inputs. The float64
evaluation is the "torch" backend in float64 (tests/test_scan.py ties it to `selective_scan_ref` to ~1e-15), since
the reference in float64 would add minutes per size.
"""

from __future__ import annotations

import argparse
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.scan import selective_scan, selective_scan_ref  # noqa: E402  (needs the repo root on sys.path)

DEFAULT_SIZES = ("4,64,16,128", "16,256,16,256", "8,512,16,1024")
NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def make_inputs(batch: int, dim: int, dstate: int, L: int, seed: int = 0) -> list[torch.Tensor]:
    """Mamba-like float64 inputs (u, delta, A, B, C, D, z, delta_bias); delta is pre-softplus, before delta_bias."""
    g = torch.Generator().manual_seed(seed)
    dt = torch.empty(dim, dtype=torch.float64).uniform_(math.log(1e-3), math.log(1e-1), generator=g).exp()
    return [
        torch.randn(batch, dim, L, generator=g, dtype=torch.float64),
        0.5 * torch.randn(batch, dim, L, generator=g, dtype=torch.float64),
        -torch.arange(1, dstate + 1, dtype=torch.float64).repeat(dim, 1),
        torch.randn(batch, dstate, L, generator=g, dtype=torch.float64),
        torch.randn(batch, dstate, L, generator=g, dtype=torch.float64),
        torch.ones(dim, dtype=torch.float64),
        torch.randn(batch, dim, L, generator=g, dtype=torch.float64),
        dt + torch.log(-torch.expm1(-dt)),  # inverse softplus, as Mamba initialises dt_proj.bias
    ]


def fast(*args: torch.Tensor) -> torch.Tensor:
    """The benchmarked fast path."""
    return selective_scan(*args, delta_softplus=True, backend="torch")


def ref(*args: torch.Tensor) -> torch.Tensor:
    """The reference loop."""
    return selective_scan_ref(*args, delta_softplus=True)


def fwd_bwd(fn, inputs: list[torch.Tensor], cotangent: torch.Tensor) -> tuple[float, torch.Tensor, list[torch.Tensor]]:
    """One forward + backward; returns (seconds, output, grads)."""
    leaves = [t.detach().requires_grad_() for t in inputs]
    start = time.perf_counter()
    out = fn(*leaves)
    out.backward(cotangent)
    seconds = time.perf_counter() - start
    return seconds, out.detach(), [t.grad for t in leaves]


def rel_err(x: torch.Tensor, x64: torch.Tensor) -> float:
    """max |x - x64| / max |x64|."""
    return ((x.double() - x64).abs().max() / x64.abs().max()).item()


def errors(out: torch.Tensor, grads: list[torch.Tensor], out64: torch.Tensor, grads64: list[torch.Tensor]):
    """(output error, worst gradient error) against the float64 evaluation."""
    return rel_err(out, out64), max(rel_err(g, g64) for g, g64 in zip(grads, grads64, strict=True))


def time_fast(inputs, cotangent, repeats: int) -> float:
    """Median seconds of `repeats` fast runs after two warm-up runs."""
    for _ in range(2):
        fwd_bwd(fast, inputs, cotangent)
    return statistics.median(fwd_bwd(fast, inputs, cotangent)[0] for _ in range(repeats))


def time_ref(inputs, cotangent, repeats: int):
    """Seconds of the reference (median of `repeats` if one run is under 2 s, else that one run), output, grads."""
    seconds, out, grads = fwd_bwd(ref, inputs, cotangent)
    if seconds < 2.0:
        seconds = statistics.median(fwd_bwd(ref, inputs, cotangent)[0] for _ in range(repeats))
    return seconds, out, grads


def peak_rss_growth_mb(impl: str, size: str) -> float:
    """Peak RSS growth (MB) of one forward + backward of ``impl`` at ``size``, measured in a fresh process."""
    cmd = [sys.executable, __file__, "--_rss-child", impl, size]
    return float(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip())


def _status_kib(field: str) -> int:
    """A memory field (VmRSS, VmHWM) of /proc/self/status, in KiB."""
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(field + ":"))
    return int(line.split()[1])


def rss_child(impl: str, size: str) -> None:
    """Child process of `peak_rss_growth_mb`: print peak RSS over one fwd+bwd minus RSS before it, in MB (Linux).

    torch's CPU allocator returns memory to the OS, so RSS tracks live tensors; writing 5 to clear_refs resets the
    peak (VmHWM) left over from importing torch and building the inputs.
    """
    fn = fast if impl == "fast" else ref
    fwd_bwd(fn, [t.float() for t in make_inputs(1, 2, 2, 3)], torch.randn(1, 2, 3))  # one-time library set-up
    inputs = [t.float() for t in make_inputs(*map(int, size.split(",")))]
    cotangent = torch.randn(inputs[0].shape)
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_kib("VmRSS")
    fwd_bwd(fn, inputs, cotangent)
    print((_status_kib("VmHWM") - before) / 1024)


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo where there is one."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return "unknown CPU"
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "unknown CPU")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=list(DEFAULT_SIZES), help="sizes as B,E,N,L")
    parser.add_argument("--repeats", type=int, default=7, help="timed fast runs per size (median reported)")
    parser.add_argument("--skip-ref-above", type=int, default=None, metavar="L", help="skip the reference for L > this")
    parser.add_argument("--memory", action="store_true", help="also report peak RSS growth (fresh process per run)")
    parser.add_argument("--_rss-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._rss_child:
        rss_child(*args._rss_child)
        return

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {cpu_name()}")
    header = (
        "| B | E | N | L | ref ms | fast ms | speed-up | fast err out | fast err grads | ref err out | ref err grads |"
    )
    if args.memory:
        header += " ref peak MB | fast peak MB |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for size in args.sizes:
        batch, dim, dstate, L = map(int, size.split(","))
        inputs64 = make_inputs(batch, dim, dstate, L)
        inputs = [t.float() for t in inputs64]
        cotangent64 = torch.randn(batch, dim, L, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        cotangent = cotangent64.float()
        _, out64, grads64 = fwd_bwd(fast, inputs64, cotangent64)

        fast_s = time_fast(inputs, cotangent, args.repeats)
        fast_err = errors(*fwd_bwd(fast, inputs, cotangent)[1:], out64, grads64)
        run_ref = args.skip_ref_above is None or L <= args.skip_ref_above
        if run_ref:
            ref_s, ref_out, ref_grads = time_ref(inputs, cotangent, max(1, args.repeats // 2))
            ref_err = errors(ref_out, ref_grads, out64, grads64)
            ref_cols = [f"{ref_s * 1e3:.0f}", f"{fast_s * 1e3:.1f}", f"{ref_s / fast_s:.0f}x"]
            ref_cols += [f"{fast_err[0]:.1e}", f"{fast_err[1]:.1e}", f"{ref_err[0]:.1e}", f"{ref_err[1]:.1e}"]
        else:
            ref_cols = ["skipped", f"{fast_s * 1e3:.1f}", "-", f"{fast_err[0]:.1e}", f"{fast_err[1]:.1e}", "-", "-"]
        row = [str(batch), str(dim), str(dstate), str(L), *ref_cols]
        if args.memory:
            ref_mb = f"{peak_rss_growth_mb('ref', size):.0f}" if run_ref else "-"
            row += [ref_mb, f"{peak_rss_growth_mb('fast', size):.0f}"]
        print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
