"""What bf16 buys on this CPU, op by op, at the tiny recipe's shapes (batch 8 x 256 tokens, d_model 128, vocabulary
2,560), forward + backward, and what the compiled cross-entropy buys over torch's.

    python benchmarks/bench_precision.py [--rounds 15 --threads 1]

- matmuls: the LM head ([2048, 128] x [128, 2560]) and a block's projection ([2048, 128] x [128, 512]), float32 vs bf16
  (what bf16 autocast runs them in);
- attention: torch's scaled_dot_product_attention (causal, 4 heads of 32), float32 vs bf16 inputs;
- the loss: torch's cross-entropy of the upcast logits (what the loss did before the kernel) vs the compiled kernel
  (models/cpu_kernels.py), on float32 and on bf16 logits.
Each pair runs round by round, interleaved; a speed-up is the median over rounds of the per-round ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datamodules.vocab import IGNORE  # noqa: E402  (needs the repo root on sys.path)
from models import cpu_kernels  # noqa: E402

TOKENS, D_MODEL, VOCAB, HEADS = 2048, 128, 2560, 4


def fwd_bwd(fn, *leaves):
    """A closure: fn(*leaves) forward, then backward of its sum, gradients reset."""

    def run() -> None:
        for leaf in leaves:
            leaf.grad = None
        fn(*leaves).float().sum().backward()

    return run


def leaves(dtype: torch.dtype, *shapes) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(*shape, generator=g).to(dtype).requires_grad_() for shape in shapes]


def pairs() -> dict[str, tuple]:
    targets = torch.randint(0, VOCAB, (TOKENS,), generator=torch.Generator().manual_seed(1))

    def torch_ce(logits):
        return F.cross_entropy(logits.float(), targets, ignore_index=IGNORE, reduction="none")

    def kernel_ce(logits):
        return cpu_kernels.cross_entropy(logits, targets, IGNORE)

    def attention(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    heads = (8, HEADS, 256, D_MODEL // HEADS)
    out = {}
    for name, shapes in (("LM head matmul", ((TOKENS, D_MODEL), (D_MODEL, VOCAB))),
                         ("block matmul", ((TOKENS, D_MODEL), (D_MODEL, 512)))):  # fmt: skip
        out[name] = ("float32", fwd_bwd(torch.mm, *leaves(torch.float32, *shapes)),
                     "bf16", fwd_bwd(torch.mm, *leaves(torch.bfloat16, *shapes)))  # fmt: skip
    out["attention"] = ("float32", fwd_bwd(attention, *leaves(torch.float32, heads, heads, heads)),
                        "bf16", fwd_bwd(attention, *leaves(torch.bfloat16, heads, heads, heads)))  # fmt: skip
    for dtype, label in ((torch.float32, "float32"), (torch.bfloat16, "bf16")):
        logits = leaves(dtype, (TOKENS, VOCAB))
        out[f"cross-entropy, {label} logits"] = ("torch", fwd_bwd(torch_ce, *logits),
                                                 "kernel", fwd_bwd(kernel_ce, *logits))  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not cpu_kernels.available():
        sys.exit(f"the compiled CPU kernels are unavailable: {cpu_kernels.load_error()}")
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.rounds} rounds, fwd+bwd")
    print(f"{'op':<28}{'a':>9}{'ms':>8}{'b':>9}{'ms':>8}{'b vs a':>9}")
    for op, (a_name, a, b_name, b) in pairs().items():
        times = {a_name: [], b_name: []}
        for round_ in range(args.rounds + 2):
            for name, run in ((a_name, a), (b_name, b)):
                start = time.perf_counter()
                run()
                if round_ >= 2:
                    times[name].append(time.perf_counter() - start)
        speedup = statistics.median(x / y for x, y in zip(times[a_name], times[b_name], strict=True))
        ms = {name: statistics.median(t) * 1e3 for name, t in times.items()}
        print(f"{op:<28}{a_name:>9}{ms[a_name]:>8.2f}{b_name:>9}{ms[b_name]:>8.2f}{speedup:>8.2f}x")


if __name__ == "__main__":
    main()
