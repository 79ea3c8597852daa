"""What one line of the CPU kernels' source or one compiler flag is worth: the extension as in models/csrc, built
with models.cpu_kernels.FLAGS, against a variant with that line or that flag left out, side by side in one process,
on the selective scan, the mixer's conv + SiLU and the cross-entropy alone and on whole training steps per arm.

    python benchmarks/bench_kernel_build.py [--drop-line 'prefer-vector-width=512'] [--drop-flag=-fassociative-math]
                                            [--rounds 15 --threads 1]

`--drop-line TEXT` copies models/csrc to a temporary folder without the lines that contain TEXT; `--drop-flag=F`
builds without F of FLAGS; with neither, the variant leaves out the pragma that compiles the scan for 512-bit
vectors. Both builds are loaded under their own names (compiled once, then cached by torch like the real one). Each
round runs every (what, build) pair once, interleaved, every other round in reverse order, and a speed-up is the
median over rounds of the per-round ratio, so load that drifts between rounds cancels. The kernels run at the tiny
model's shapes: scan and conv (8, 256, 16, 256) forward + backward, their inputs time-major as a mixer hands them
over; cross-entropy over 2,048 x 2,560 bf16 logits; the steps are benchmarks/bench_step.py's. A kernel the variant
leaves as it is (the cross-entropy, for the default) is the control: its speed-up away from 1 is what this shared
machine's noise does to a few-millisecond kernel. It also prints how far apart the two builds' scan outputs and
gradients are (max |a - b| / max |b| over the output and the eight gradients): 0 means the variant changes no bit.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.cpp_extension import load

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_scan import fwd_bwd, make_inputs  # noqa: E402  (needs the repo root on sys.path)
from benchmarks.bench_step import make_batch, make_step  # noqa: E402
from models import cpu_kernels  # noqa: E402
from models.scan import selective_scan  # noqa: E402

DEFAULT_DROP = "prefer-vector-width=512"  # the pragma compiling the scan for 512-bit vectors


def variant_source(folder: Path, drop_line: str | None) -> tuple[Path, int]:
    """models/csrc copied into `folder` without the lines containing `drop_line`: (its main file, lines dropped)."""
    src = cpu_kernels.SOURCE.parent
    shutil.copytree(src, folder, dirs_exist_ok=True)
    dropped = 0
    for path in folder.iterdir():
        lines = path.read_text().splitlines(keepends=True)
        kept = [line for line in lines if drop_line is None or drop_line not in line]
        dropped += len(lines) - len(kept)
        path.write_text("".join(kept))
    return folder / cpu_kernels.SOURCE.name, dropped


def using(module, fn):
    """`fn` with the kernels' autograd functions calling `module` (they look the extension up at each call)."""

    def run():
        cpu_kernels._load = lambda: (module, None)
        return fn()

    return run


def kernel_jobs() -> dict:
    """The kernels alone at the tiny model's shapes: name -> closure (the scan's returns its output and grads)."""
    inputs = [t.float() for t in make_inputs(8, 256, 16, 256)]
    for k in (0, 1, 6):  # u, delta and z time-major ([B, L, E] memory), as a Mamba mixer hands them over
        inputs[k] = inputs[k].transpose(1, 2).contiguous().transpose(1, 2)
    g = torch.Generator().manual_seed(1)
    cotangent = torch.randn(8, 256, 256, generator=g)
    conv_inputs = [inputs[0], torch.randn(256, 4, generator=g), torch.randn(256, generator=g)]
    logits, targets = torch.randn(2048, 2560, generator=g).bfloat16(), torch.randint(0, 2560, (2048,), generator=g)

    def cross_entropy():
        leaf = logits.detach().requires_grad_()
        cpu_kernels.cross_entropy(leaf, targets, -100).sum().backward()

    return {
        "scan fwd+bwd": lambda: fwd_bwd(
            lambda *x: selective_scan(*x, delta_softplus=True, backend="cpu"), inputs, cotangent
        ),
        "conv fwd+bwd": lambda: fwd_bwd(cpu_kernels.causal_conv1d_silu_cpu, conv_inputs, cotangent),
        "cross-entropy": cross_entropy,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--drop-line", help=f"leave out source lines with this text (default {DEFAULT_DROP!r})")
    parser.add_argument("--drop-flag", default=None, help="leave out this flag of models.cpu_kernels.FLAGS")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.drop_line is None and args.drop_flag is None:
        args.drop_line = DEFAULT_DROP
    if args.drop_flag is not None and args.drop_flag not in cpu_kernels.FLAGS:
        parser.error(f"--drop-flag {args.drop_flag!r} is not one of models.cpu_kernels.FLAGS: {cpu_kernels.FLAGS}")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        source, dropped = variant_source(Path(tmp), args.drop_line)
        if args.drop_line is not None and dropped == 0:
            parser.error(f"--drop-line {args.drop_line!r} matches no line of {cpu_kernels.SOURCE.parent.name}/")
        flags = [f for f in cpu_kernels.FLAGS if f != args.drop_flag]
        builds = {
            "as is": load(
                "mom_cpu_kernels_bench_as_is",
                [str(cpu_kernels.SOURCE)],
                extra_cflags=cpu_kernels.FLAGS,
                extra_ldflags=["-fopenmp"],
            ),
            "variant": load(
                "mom_cpu_kernels_bench_variant", [str(source)], extra_cflags=flags, extra_ldflags=["-fopenmp"]
            ),
        }
    kernels = kernel_jobs()
    jobs = {(what, b): using(m, fn) for what, fn in kernels.items() for b, m in builds.items()}
    batches = [make_batch(0)]
    for arch in ("transformer", "mamba", "mom"):
        backend = "auto" if arch == "transformer" else "cpu"
        jobs |= {(f"{arch} step", b): using(m, make_step(arch, backend, batches)) for b, m in builds.items()}

    (out_a, grads_a), (out_b, grads_b) = (jobs[("scan fwd+bwd", b)]()[1:] for b in builds)
    pairs = zip([out_a, *grads_a], [out_b, *grads_b], strict=True)
    diff = max(((a - b).abs().max() / b.abs().max()).item() for a, b in pairs)

    times = {key: [] for key in jobs}
    for round_ in range(args.rounds + 2):
        # Every other round runs the two builds in the other order: what ran just before shifts a kernel's time.
        for key, job in jobs.items() if round_ % 2 == 0 else reversed(jobs.items()):
            start = time.perf_counter()
            job()
            if round_ >= 2:  # two warm-up rounds
                times[key].append(time.perf_counter() - start)
    left_out = [f"lines with {args.drop_line!r} ({dropped})"] if args.drop_line else []
    left_out += [f"flag {args.drop_flag}"] if args.drop_flag else []
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.rounds} rounds; variant: without "
          f"{' and '.join(left_out)}")  # fmt: skip
    print(f"{'what':<18}{'as is ms':>10}{'variant ms':>12}{'speed-up':>10}")
    for what in dict.fromkeys(w for w, _ in jobs):
        as_is, variant = times[(what, "as is")], times[(what, "variant")]
        gain = statistics.median(v / a for a, v in zip(as_is, variant, strict=True))
        print(f"{what:<18}{statistics.median(as_is) * 1e3:>10.1f}{statistics.median(variant) * 1e3:>12.1f}"
              f"{gain:>9.3f}x")  # fmt: skip
    for b in builds:
        mamba, mom, transformer = (times[(f"{arch} step", b)] for arch in ("mamba", "mom", "transformer"))
        ratio = statistics.median(m / t for m, t in zip(mamba, transformer, strict=True))
        overhead = statistics.median(m / t for m, t in zip(mom, mamba, strict=True))
        print(f"{b}: mamba / transformer {ratio:.2f}x, mom / mamba {overhead:.2f}x")
    print(f"scan output and gradients, as is vs variant: max relative difference {diff:.1e}")


if __name__ == "__main__":
    main()
