"""What a training step costs per arm on the CPU: the six arms' tiny models side by side (the papers' four and the
Mamba-2 pair, mamba2 and mom2), 1 and 2 threads.

    python benchmarks/bench_step.py [--rounds 15 --threads 1,2 --backends cpu,torch --precisions bf16-mixed,32-true
                                     --batches 1 --nan-fill]

One step = forward, the multimodal loss, backward and an AdamW step (what the Lightning module does per batch, less
logging), at the tiny scale's shapes: batch 8 x 256 tokens, vocabulary 2,560, two modalities in interleaved runs
(mean run 32 tokens). The arms run round by round, interleaved (the machine is shared and noisy); each ratio is the
median over rounds of the per-round ratio, so load that drifts between rounds cancels. `--backends` adds the Mamba
arms on other scan backends ("torch": the pure-PyTorch scan, the backend before the compiled kernel).
`--precisions` runs every arm in each of Lightning's precisions (the first is the recipe's: bf16-mixed, bf16 autocast
over float32 weights; 32-true: float32), and prints each arm's speed-up of the first over the others. `--batches K`
cycles through K batches of different modality runs, so each modality's token count changes from step to step as in
training (1: the same batch every step). `--nan-fill` runs every arm under deterministic algorithms, as the runs'
Trainer does, with and without torch filling each new tensor with NaN.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_routing import interleaved_ids  # noqa: E402  (needs the repo root on sys.path)
from experiments.losses import multimodal_losses  # noqa: E402
from models import ModelConfig, build_model  # noqa: E402

BATCH, SEQLEN, VOCAB = 8, 256, 2560


def make_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    """Tokens whose modality follows interleaved runs; targets are the next tokens."""
    g = torch.Generator().manual_seed(seed)
    modality = interleaved_ids(BATCH, SEQLEN + 1, 2, mean_run=32, seed=seed)
    text = torch.randint(0, 2048, (BATCH, SEQLEN + 1), generator=g)
    image = torch.randint(2048, VOCAB, (BATCH, SEQLEN + 1), generator=g)
    tokens = torch.where(modality == 0, text, image)
    return {
        "tokens": tokens[:, :-1],
        "modality_ids": modality[:, :-1],
        "targets": tokens[:, 1:],
        "target_modality": modality[:, 1:],
    }


def make_step(arch: str, backend: str, batches: list[dict[str, torch.Tensor]], precision: str = "bf16-mixed"):
    """A closure running one training step of a fresh tiny model of `arch` in Lightning's `precision`, on the next of
    `batches` at each call."""
    torch.manual_seed(0)
    cfg = ModelConfig.from_scale("tiny", arch=arch, vocab_size=VOCAB, n_modalities=2, scan_backend=backend)
    model = build_model(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    autocast = precision == "bf16-mixed"
    calls = iter(range(10**9))

    def step() -> None:
        batch = batches[next(calls) % len(batches)]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = model(batch["tokens"], batch["modality_ids"])
            loss = multimodal_losses(out.logits, batch, 2)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def with_nan_fill(step, fill: bool):
    """The step with torch's fill_uninitialized_memory set as given (under deterministic algorithms it fills every
    new tensor with NaN; runs turn it off, experiments/run.py)."""

    def run() -> None:
        torch.utils.deterministic.fill_uninitialized_memory = fill
        step()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", default="1,2", help="comma list of thread counts")
    parser.add_argument("--backends", default="cpu", help="scan backends for the Mamba arms (first = the default)")
    parser.add_argument("--precisions", default="bf16-mixed", help="bf16-mixed, 32-true (first = the default)")
    parser.add_argument("--batches", type=int, default=1, help="batches cycled through (1: the same every step)")
    parser.add_argument(
        "--nan-fill",
        action="store_true",
        help="under deterministic algorithms (the runs' Trainer), also each arm filling new tensors with NaN",
    )
    args = parser.parse_args()
    backends, precisions = args.backends.split(","), args.precisions.split(",")
    batches = [make_batch(seed) for seed in range(args.batches)]
    arms = [("transformer", "auto"), ("mot", "auto")]
    arms += [(arch, backend) for backend in backends for arch in ("mamba", "mom")]
    arms += [("mamba2", "auto"), ("mom2", "auto")]  # the SSD scan: torch on the CPU
    steps = {}
    for precision in precisions:
        for arch, b in arms:
            tags = [b] if b not in ("auto", backends[0]) else []
            tags += [precision] if precision != precisions[0] else []
            steps[arch + "".join(f" ({t})" for t in tags)] = make_step(arch, b, batches, precision)
    if args.nan_fill:
        torch.use_deterministic_algorithms(True)
        steps = {f"{name}{tag}": with_nan_fill(step, fill) for name, step in steps.items()
                 for tag, fill in (("", False), (" (NaN fill)", True))}  # fmt: skip
    print(f"torch {torch.__version__}, batch {BATCH}x{SEQLEN}, tiny models, {args.rounds} rounds, scan {backends}, "
          f"precision {precisions}, {args.batches} batch(es)")  # fmt: skip
    for threads in map(int, args.threads.split(",")):
        torch.set_num_threads(threads)
        times = {name: [] for name in steps}
        for round_ in range(args.rounds + 2):
            for name, step in steps.items():
                start = time.perf_counter()
                step()
                if round_ >= 2:  # two warm-up rounds
                    times[name].append(time.perf_counter() - start)

        def ratio(a: str, b: str, times=times) -> float:
            return statistics.median(x / y for x, y in zip(times[a], times[b], strict=True))

        print(f"\n{threads} thread(s)")
        print(f"{'arm':<26}{'median ms':>10}{'vs transformer':>16}")
        for name in steps:
            print(f"{name:<26}{statistics.median(times[name]) * 1e3:>10.0f}{ratio(name, 'transformer'):>15.2f}x")
        print(f"mom / mamba {ratio('mom', 'mamba'):.2f}x, mot / transformer {ratio('mot', 'transformer'):.2f}x, "
              f"mom2 / mamba2 {ratio('mom2', 'mamba2'):.2f}x, mamba2 / mamba {ratio('mamba2', 'mamba'):.2f}x")
        if args.nan_fill:
            gains = ", ".join(f"{a} {ratio(f'{a} (NaN fill)', a):.2f}x" for a in ("transformer", "mot", "mamba", "mom"))
            print(f"without the NaN fill: {gains} faster")
        for other in precisions[1:]:
            arches = ("transformer", "mot", "mamba", "mom", "mamba2", "mom2")
            gains = ", ".join(f"{a} {ratio(f'{a} ({other})', a):.2f}x" for a in arches)
            print(f"{precisions[0]} vs {other}: {gains} faster")


if __name__ == "__main__":
    main()
