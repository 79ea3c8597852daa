"""What one compiler flag of the CPU kernels is worth: the extension built with models.cpu_kernels.FLAGS and with
one flag left out, side by side in one process, on the selective scan alone and on whole training steps per arm.

    python benchmarks/bench_kernel_flags.py [--without -mprefer-vector-width=512 --rounds 12 --threads 1]

Both builds are loaded under their own names (each compiled once, then cached by torch like the real one); each round
runs every (arm, build) pair once, interleaved, and a ratio is the median over rounds of the per-round ratio, so load
that drifts between rounds cancels. The scan and the mixer's conv + SiLU run at the tiny model's shape (8, 256, 16,
256), forward + backward, their inputs time-major as a mixer hands them over; the steps are benchmarks/bench_step.py's.
It also prints how far apart the two builds' scan outputs and gradients are (max |a - b| / max |b| over the output and
the eight gradients): 0 means the flag changes no bit.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.cpp_extension import load

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_scan import fwd_bwd, make_inputs  # noqa: E402  (needs the repo root on sys.path)
from benchmarks.bench_step import make_batch, make_step  # noqa: E402
from models import cpu_kernels  # noqa: E402
from models.scan import selective_scan  # noqa: E402


def build(name: str, flags: list[str]):
    """The kernels' extension compiled with `flags`, loaded as module `name`."""
    return load(name, [str(cpu_kernels.SOURCE)], extra_cflags=flags, extra_ldflags=["-fopenmp"])


def using(module, fn):
    """`fn` with the kernels' autograd functions calling `module` (they look the extension up at each call)."""

    def run():
        cpu_kernels._load = lambda: (module, None)
        return fn()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--without", default="-mprefer-vector-width=512", help="the flag of FLAGS to leave out")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.without not in cpu_kernels.FLAGS:
        parser.error(f"--without {args.without!r} is not one of models.cpu_kernels.FLAGS: {cpu_kernels.FLAGS}")
    torch.set_num_threads(args.threads)
    builds = {
        "with": build("mom_cpu_kernels_bench_with", cpu_kernels.FLAGS),
        "without": build("mom_cpu_kernels_bench_without", [f for f in cpu_kernels.FLAGS if f != args.without]),
    }
    # u, delta and z time-major ([B, L, E] memory), as a Mamba mixer hands them to the scan.
    inputs = [t.float() for t in make_inputs(8, 256, 16, 256)]
    for k in (0, 1, 6):
        inputs[k] = inputs[k].transpose(1, 2).contiguous().transpose(1, 2)
    cotangent = torch.randn(8, 256, 256, generator=torch.Generator().manual_seed(1))
    conv_inputs = [inputs[0], torch.randn(256, 4), torch.randn(256)]

    def scan():
        return fwd_bwd(lambda *x: selective_scan(*x, delta_softplus=True, backend="cpu"), inputs, cotangent)

    def conv():
        return fwd_bwd(cpu_kernels.causal_conv1d_silu_cpu, conv_inputs, cotangent)

    batches = [make_batch(0)]
    jobs = {("scan fwd+bwd", b): using(m, scan) for b, m in builds.items()}
    jobs |= {("conv fwd+bwd", b): using(m, conv) for b, m in builds.items()}
    for arch in ("transformer", "mamba", "mom"):
        backend = "auto" if arch == "transformer" else "cpu"
        jobs |= {(f"{arch} step", b): using(m, make_step(arch, backend, batches)) for b, m in builds.items()}

    results = {b: using(m, scan)()[1:] for b, m in builds.items()}
    (out_a, grads_a), (out_b, grads_b) = results["with"], results["without"]
    pairs = zip([out_a, *grads_a], [out_b, *grads_b], strict=True)
    diff = max(((a - b).abs().max() / b.abs().max()).item() for a, b in pairs)

    times = {key: [] for key in jobs}
    for round_ in range(args.rounds + 2):
        for key, job in jobs.items():
            start = time.perf_counter()
            job()
            if round_ >= 2:  # two warm-up rounds
                times[key].append(time.perf_counter() - start)
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.rounds} rounds, without = FLAGS less "
          f"{args.without}")  # fmt: skip
    print(f"{'what':<18}{'with ms':>10}{'without ms':>12}{'speed-up':>10}")
    for what in dict.fromkeys(w for w, _ in jobs):
        with_, without = times[(what, "with")], times[(what, "without")]
        gain = statistics.median(b / a for a, b in zip(with_, without, strict=True))
        print(f"{what:<18}{statistics.median(with_) * 1e3:>10.1f}{statistics.median(without) * 1e3:>12.1f}"
              f"{gain:>9.3f}x")  # fmt: skip
    for b in builds:
        mamba, mom, transformer = (times[(f"{arch} step", b)] for arch in ("mamba", "mom", "transformer"))
        ratio = statistics.median(m / t for m, t in zip(mamba, transformer, strict=True))
        overhead = statistics.median(m / t for m, t in zip(mom, mamba, strict=True))
        print(f"{b}: mamba / transformer {ratio:.2f}x, mom / mamba {overhead:.2f}x")
    print(f"scan output and gradients, with vs without: max relative difference {diff:.1e}")


if __name__ == "__main__":
    main()
