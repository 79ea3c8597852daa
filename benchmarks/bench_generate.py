"""Generation speed and state size against generated length: recurrent state (Mamba, MoM) against a growing KV cache
(transformer, MoT).

    python benchmarks/bench_generate.py --lengths 256,1024,4096,8192 --threads 1
    python benchmarks/bench_generate.py --lengths 256,1024,4096 --device cuda

For every arm and length it builds the tiny model (three modalities, random weights: speed and memory do not depend
on training), feeds a one-token prompt, then generates `length` tokens one at a time through the cache (greedy,
each new token routed by a modality that switches every 64 tokens) and prints: tokens/s over the whole generation,
the bytes the generation state holds at the end (conv + SSM states, or keys + values: what grows with length), and
the peak memory (on the CPU the process's peak RSS; on a GPU the peak allocated there). Arms run in one process one
after the other, so tokens/s compare side by side; no timed asserts anywhere (the numbers and the date go into
benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import ModelConfig, build_model  # noqa: E402

VOCAB, MODALITIES = 2624, 3  # the three-modality setting's joint vocabulary


def used_state_bytes(cache) -> int:
    """The state a generation of this length needs: a KV cache's filled part, a Mamba state whole."""
    total = 0
    for layer in cache.layers:
        if isinstance(layer, tuple):
            total += sum(t.numel() * t.element_size() for t in layer)
        else:
            total += 2 * layer.k[:, :, : layer.length].numel() * layer.k.element_size()
    return total


@torch.no_grad()
def generate(model, length: int) -> tuple[float, int]:
    """Seconds per generated token and the state's bytes after `length` tokens."""
    device = model.embedding.weight.device
    cache = model.allocate_inference_cache(1, length + 1)
    token = torch.zeros(1, 1, dtype=torch.long, device=device)
    logits = model(token, token, cache=cache).logits
    start = time.perf_counter()
    for t in range(length):
        token = logits[:, -1].argmax(-1, keepdim=True)
        modality = torch.full_like(token, (t // 64) % MODALITIES)
        logits = model(token, modality, cache=cache).logits
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / length, used_state_bytes(cache)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arms", default="mamba,mom,transformer,mot")
    parser.add_argument("--lengths", default="256,1024,4096,8192")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--plot", help="also draw tokens/s and state size against length into this PNG")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (peak memory is then the GPU's)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lengths = [int(n) for n in args.lengths.split(",")]
    cuda = args.device == "cuda"
    where = torch.cuda.get_device_name() if cuda else f"{args.threads} thread(s)"
    print(f"torch {torch.__version__}, {where}, tiny models, {MODALITIES} modalities, batch 1")
    print(f"{'arm':<12} {'length':>7} {'tokens/s':>9} {'state MB':>9} {'peak MB':>12}")
    rows = []
    for arm in args.arms.split(","):
        torch.manual_seed(0)
        model = build_model(ModelConfig.from_scale("tiny", arch=arm, vocab_size=VOCAB, n_modalities=MODALITIES))
        model.to(args.device).eval()
        for length in lengths:
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            seconds, state = generate(model, length)
            rss = (torch.cuda.max_memory_allocated() / 2**20 if cuda
                   else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # fmt: skip
            print(f"{arm:<12} {length:>7} {1 / seconds:>9.0f} {state / 1e6:>9.3f} {rss:>12.1f}", flush=True)
            rows.append((arm, length, 1 / seconds, state / 1e6))
    if args.plot:
        plot(rows, Path(args.plot))


def plot(rows: list[tuple[str, int, float, float]], path: Path) -> None:
    """tokens/s and the generation state's MB against generated length, one line per arm (log-log)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for arm in dict.fromkeys(r[0] for r in rows):
        mine = [r for r in rows if r[0] == arm]
        for ax, column in zip(axes, (2, 3), strict=True):
            ax.plot([r[1] for r in mine], [r[column] for r in mine], marker="o", label=arm)
    lengths = sorted({r[1] for r in rows})
    for ax, label in zip(axes, ("tokens/s (batch 1, 1 thread)", "generation state (MB)"), strict=True):
        ax.set(xscale="log", yscale="log", xlabel="generated tokens", ylabel=label)
        ax.set_xticks(lengths, [str(n) for n in lengths], minor=False)
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
