"""What modality routing costs: MoM mixer vs the dense mixer, forward + backward, measured side by side.

    python benchmarks/bench_routing.py [--batch 16 --seqlen 256 --d-model 128 --modalities 3 --rounds 15]

Rows (all at the same shape, same weights per token, M modalities, all four projections decoupled, modality ids in
random interleaved runs):
  dense           the dense Mamba mixer (n_modalities = 1)
  mom grouped     our routing: tokens sorted by modality once, one matmul per modality, inverse permutation
  mom masks       the official MoM code's routing: per projection and modality, x[mask] -> expert -> out[mask] = y
  mom all-experts every expert on every token, then the token's own output selected (M x the matmul FLOPs)
Timings interleave the variants round by round (the machine is shared and noisy). The ratio column is the median
over rounds of (variant time / dense time in the same round), which cancels load that drifts between rounds.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from models.experts import upcycle_state_dict
from models.layers import ModalityLinear, ModalityRouting
from models.mamba import MambaMixer


def interleaved_ids(batch: int, seqlen: int, n_modalities: int, mean_run: int, seed: int = 0) -> torch.Tensor:
    """(B, L) modality ids in runs of random length (documents of several modalities packed together)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.empty(batch, seqlen, dtype=torch.long)
    for b in range(batch):
        pos = 0
        while pos < seqlen:
            run = int(torch.randint(1, 2 * mean_run, (1,), generator=g))
            ids[b, pos : pos + run] = int(torch.randint(0, n_modalities, (1,), generator=g))
            pos += run
    return ids


def _masked_forward_sorted(self: ModalityLinear, rows: torch.Tensor, routing: ModalityRouting) -> torch.Tensor:
    """Official-style routing: one boolean mask per modality, gather, expert, scatter into a buffer."""
    flat = routing.modality_ids.reshape(-1)
    out = rows.new_zeros(rows.shape[0], self.out_features)
    for m in range(self.n_modalities):
        mask = flat == m
        out[mask] = F.linear(rows[mask], self.weight[m], None if self.bias is None else self.bias[m])
    return out


def _all_experts_forward_sorted(self: ModalityLinear, rows: torch.Tensor, routing: ModalityRouting) -> torch.Tensor:
    """Every expert on every token, then each token's own expert's output."""
    every = torch.einsum("ti,moi->tmo", rows, self.weight)  # (T, M, out)
    if self.bias is not None:
        every = every + self.bias
    flat = routing.modality_ids.reshape(-1)
    return every.gather(1, flat.view(-1, 1, 1).expand(-1, 1, self.out_features)).squeeze(1)


class _SequenceOrderRouting(ModalityRouting):
    """Routing that leaves tokens in sequence order, for the mask and all-experts baselines."""

    def sort(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(-1, x.shape[-1])

    def unsort(self, rows: torch.Tensor) -> torch.Tensor:
        return rows.view(*self.modality_ids.shape, rows.shape[-1])


@contextmanager
def _patched(forward_sorted: Callable):
    original = ModalityLinear.forward_sorted
    ModalityLinear.forward_sorted = forward_sorted
    try:
        yield
    finally:
        ModalityLinear.forward_sorted = original


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--modalities", type=int, default=3)
    parser.add_argument("--mean-run", type=int, default=24, help="mean length of a run of one modality")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()

    torch.manual_seed(0)
    M = args.modalities
    dense = MambaMixer(args.d_model, scan_backend="torch")
    sparse = MambaMixer(args.d_model, n_modalities=M, scan_backend="torch")
    sparse.load_state_dict(upcycle_state_dict(sparse, dense.state_dict()))  # same function, so outputs comparable
    x = torch.randn(args.batch, args.seqlen, args.d_model)
    ids = interleaved_ids(args.batch, args.seqlen, M, args.mean_run)
    grad = torch.randn_like(x)

    def step(model: MambaMixer, make_routing: Callable | None) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            model.zero_grad(set_to_none=True)
            xi = x.detach().requires_grad_()
            # The routing is built inside the timed region: a model builds it once per forward.
            out = model(xi, make_routing(ids, M) if make_routing else None)
            out.backward(grad)
            return out.detach()

        return run

    grouped = step(sparse, ModalityRouting)
    seq_order = step(sparse, _SequenceOrderRouting)

    def patched(fn: Callable, forward_sorted: Callable) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            with _patched(forward_sorted):
                return fn()

        return run

    variants = {
        "dense": step(dense, None),
        "mom grouped": grouped,
        "mom masks": patched(seq_order, _masked_forward_sorted),
        "mom all-experts": patched(seq_order, _all_experts_forward_sorted),
    }
    reference = variants["dense"]()
    for name, fn in variants.items():  # warm-up, and a check that every variant computes the same function
        torch.testing.assert_close(fn(), reference, msg=name)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)

    counts = torch.bincount(ids.reshape(-1), minlength=M).tolist()
    print(
        f"MambaMixer fwd+bwd, B={args.batch} L={args.seqlen} d_model={args.d_model} M={M} (tokens per modality "
        f"{counts}), torch {torch.__version__}, {torch.get_num_threads()} threads, {args.rounds} rounds"
    )
    print(f"{'variant':<16} {'median ms':>10} {'vs dense':>9}")
    for name, ts in times.items():
        ratio = statistics.median(t / d for t, d in zip(ts, times["dense"], strict=True))
        print(f"{name:<16} {statistics.median(ts) * 1e3:>10.1f} {ratio:>8.3f}x")


if __name__ == "__main__":
    main()
