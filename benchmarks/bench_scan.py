"""Benchmark the CPU selective scans, forward + backward: the compiled kernel ("cpu"), the pure-PyTorch chunked scan
("torch") and the reference loop (`selective_scan_ref`).

For each size (B, E, N, L) it times forward + backward of all three in one process (float32, default thread count;
"cpu" and "torch" interleaved run by run, medians) and reports the kernel's speed-up over each, plus the error of
each float32 result against a float64 evaluation. The inputs follow the Mamba mixer: softplus(delta + delta_bias)
with dt in [1e-3, 1e-1], A = -(1..N) (S4D-real init), D skip, silu(z) gate.

Usage:
    python benchmarks/bench_scan.py                          # the three default sizes (the largest ref takes minutes)
    python benchmarks/bench_scan.py --skip-ref-above 256     # time the reference only for L <= 256
    python benchmarks/bench_scan.py --sizes 16,256,16,256    # one size, as B,E,N,L
    python benchmarks/bench_scan.py --memory                 # also peak RSS growth, each run in a fresh process
    python benchmarks/bench_scan.py --threads 1              # one thread (torch.set_num_threads)

Errors are normwise: max |x - x64| / max |x64| per tensor, and for "grads" the worst over the eight inputs. The float64
evaluation is the "torch" backend in float64 (tests/test_scan.py ties it to `selective_scan_ref` to ~1e-15), since
the reference in float64 would add minutes per size.
"""

from __future__ import annotations

import argparse
import functools
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import scan as scan_module  # noqa: E402  (needs the repo root on sys.path)
from models.scan import selective_scan, selective_scan_ref  # noqa: E402

DEFAULT_SIZES = ("4,64,16,128", "8,256,16,256", "8,512,16,1024")
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


def torch_scan(*args: torch.Tensor) -> torch.Tensor:
    """The pure-PyTorch chunked scan."""
    return selective_scan(*args, delta_softplus=True, backend="torch")


def cpu_scan(*args: torch.Tensor) -> torch.Tensor:
    """The compiled kernel."""
    return selective_scan(*args, delta_softplus=True, backend="cpu")


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


def time_interleaved(fns, inputs, cotangent, repeats: int) -> list[float]:
    """Median seconds of each of `fns` over `repeats` rounds (one run of each per round) after two warm-up rounds."""
    times = [[] for _ in fns]
    for round_ in range(repeats + 2):
        for fn, record in zip(fns, times, strict=True):
            seconds = fwd_bwd(fn, inputs, cotangent)[0]
            if round_ >= 2:
                record.append(seconds)
    return [statistics.median(t) for t in times]


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
    fn = {"torch": torch_scan, "cpu": cpu_scan, "ref": ref}[impl]
    fwd_bwd(fn, [t.float() for t in make_inputs(1, 2, 2, 3)], torch.randn(1, 2, 3))  # one-time library set-up
    inputs = [t.float() for t in make_inputs(*map(int, size.split(",")))]
    cotangent = torch.randn(inputs[0].shape)
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_kib("VmRSS")
    fwd_bwd(fn, inputs, cotangent)
    print((_status_kib("VmHWM") - before) / 1024)


def compare_chunks(chunks: list[int], sizes: list[str], repeats: int) -> None:
    """The kernel's forward + backward with each chunk length (the steps between the boundary states its backward
    recomputes from), interleaved, and each one's gap to the first in its output and gradients."""
    print("| B | E | N | L | " + " | ".join(f"chunk {c} ms" for c in chunks) + " | max rel. difference to the first |")
    print("|" + "---|" * (5 + len(chunks)))
    for size in sizes:
        inputs = [t.float() for t in make_inputs(*map(int, size.split(",")))]
        cotangent = torch.randn(inputs[0].shape, generator=torch.Generator().manual_seed(1))
        fns = [functools.partial(_chunked_scan, chunk) for chunk in chunks]
        times = time_interleaved(fns, inputs, cotangent, repeats)
        first = fwd_bwd(fns[0], inputs, cotangent)
        gaps = [errors(*fwd_bwd(fn, inputs, cotangent)[1:], first[1].double(), [g.double() for g in first[2]])
                for fn in fns[1:]]  # fmt: skip
        gap = max((max(g) for g in gaps), default=0.0)
        print(f"| {' | '.join(size.split(','))} | " + " | ".join(f"{t * 1e3:.1f}" for t in times) + f" | {gap:.1e} |")


def _chunked_scan(chunk: int, *args: torch.Tensor) -> torch.Tensor:
    with mock.patch.object(scan_module, "CPU_CHUNK", chunk):
        return cpu_scan(*args)


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
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds per size (median reported)")
    parser.add_argument("--skip-ref-above", type=int, default=None, metavar="L", help="skip the reference for L > this")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--memory", action="store_true", help="also report peak RSS growth (fresh process per run)")
    parser.add_argument("--chunks", help="instead: the kernel with these chunk lengths side by side, e.g. 16,32,64")
    parser.add_argument("--_rss-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args._rss_child:
        rss_child(*args._rss_child)
        return

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {cpu_name()}")
    if args.chunks:
        compare_chunks([int(c) for c in args.chunks.split(",")], args.sizes, args.repeats)
        return
    header = "| B | E | N | L | ref ms | torch ms | cpu ms | cpu vs torch | cpu vs ref | err out cpu / torch / ref |"
    header += " err grads cpu / torch / ref |"
    if args.memory:
        header += " peak MB ref / torch / cpu |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for size in args.sizes:
        batch, dim, dstate, L = map(int, size.split(","))
        inputs64 = make_inputs(batch, dim, dstate, L)
        inputs = [t.float() for t in inputs64]
        cotangent64 = torch.randn(batch, dim, L, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        cotangent = cotangent64.float()
        _, out64, grads64 = fwd_bwd(torch_scan, inputs64, cotangent64)

        torch_s, cpu_s = time_interleaved([torch_scan, cpu_scan], inputs, cotangent, args.repeats)
        err = {name: errors(*fwd_bwd(fn, inputs, cotangent)[1:], out64, grads64)
               for name, fn in (("cpu", cpu_scan), ("torch", torch_scan))}  # fmt: skip
        run_ref = args.skip_ref_above is None or L <= args.skip_ref_above
        ref_s = None
        if run_ref:
            ref_s, ref_out, ref_grads = time_ref(inputs, cotangent, max(1, args.repeats // 2))
            err["ref"] = errors(ref_out, ref_grads, out64, grads64)
        row = [str(batch), str(dim), str(dstate), str(L), f"{ref_s * 1e3:.0f}" if run_ref else "skipped"]
        row += [f"{torch_s * 1e3:.1f}", f"{cpu_s * 1e3:.1f}", f"{torch_s / cpu_s:.1f}x"]
        row += [f"{ref_s / cpu_s:.0f}x" if run_ref else "-"]
        for i in (0, 1):
            row.append(" / ".join(f"{err[k][i]:.1e}" if k in err else "-" for k in ("cpu", "torch", "ref")))
        if args.memory:
            row.append(" / ".join(f"{peak_rss_growth_mb(k, size):.0f}" if k != "ref" or run_ref else "-"
                                  for k in ("ref", "torch", "cpu")))  # fmt: skip
        print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
