"""What a comparison (or a --scales sweep) will cost, said before it starts: its runs, steps, tokens and training
FLOPs per scale (`plan_lines`, also `compare.py --dry-run`) and, on the CPU, the wall clock it will take
(`estimate_seconds`).

The wall clock is measured, not assumed: one training step of every (scale, arm) still to train is timed here, at
the recipe's batch and precision on the threads each run of the comparison gets, and every run's
remaining steps are priced at it, times RUN_OVERHEAD for validation, checkpoints and a worker's start, shared among
the runs that train at once. Model sizes and FLOPs are at the scale's own vocabulary (the settings' differ a little).
"""

from __future__ import annotations

import statistics
import time

import torch

from analysis.flops import flops_per_token
from experiments.losses import multimodal_losses
from experiments.plan import Comparison
from models import ModelConfig, build_model, non_embedding_params

# A run's wall clock over its training steps' (10 validations of 32 sequences per set, checkpoints, a worker's
# start): measured on the CPU scale ladder, benchmarks/README.md ("The sweep's estimate").
RUN_OVERHEAD = 1.2
TIMED_STEPS = 3


def plan_lines(comparisons: list[Comparison]) -> list[str]:
    """Per scale: runs, steps and tokens per run, dense Mamba's non-embedding parameters, and training FLOPs."""
    lines = []
    for c in comparisons:
        tokens = c.data["seq_len"] * c.data["batch_size"]
        per_token = {arm: _flops_per_token(c, arm) for arm in dict.fromkeys(s.arm for s in c.runs)}
        flops = sum(c.recipe_of(s).max_steps * tokens * per_token[s.arm] for s in c.runs)
        size = non_embedding_params(ModelConfig.from_scale(c.scale, arch="mamba", **c.model_overrides))
        short = [s for s in c.runs if s.steps is not None]
        shorter = f", {len(short)} at {' and '.join(map(str, c.budgets))}" if short else ""
        lines.append(
            f"{c.scale}: {len(c.runs) - len(short)} runs at {c.recipe.max_steps} steps{shorter}, of {tokens} tokens "
            f"a step ({c.recipe.max_steps * tokens:.3g} tokens per full run; dense Mamba {size / 1e6:.4g}M "
            f"non-embedding parameters), {flops:.3g} training FLOPs in all -> {c.out}"
        )
    return lines


def _flops_per_token(c: Comparison, arm: str) -> int:
    return flops_per_token(ModelConfig.from_scale(c.scale, arch=arm, **c.model_overrides), c.data["seq_len"])


def step_seconds(c: Comparison, arm: str) -> float:
    """One training step of `arm` at the comparison's scale, batch and precision on a run's threads (the median of
    TIMED_STEPS after a first), on random tokens of two modalities in runs of 32."""
    batch_size, seq_len = c.data["batch_size"], c.data["seq_len"]
    cfg = ModelConfig.from_scale(c.scale, arch=arm, n_modalities=2, **c.model_overrides)
    threads = torch.get_num_threads()
    torch.set_num_threads(c.threads or threads)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = build_model(cfg)
            tokens = torch.randint(0, cfg.vocab_size, (batch_size, seq_len + 1))
            modality = (torch.arange(seq_len + 1) // 32 % 2).expand(batch_size, -1)
        batch = {"tokens": tokens[:, :-1], "modality_ids": modality[:, :-1], "targets": tokens[:, 1:],
                 "target_modality": modality[:, 1:]}  # fmt: skip
        optimizer = torch.optim.AdamW(model.parameters())
        times = []
        for _ in range(TIMED_STEPS + 1):
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=c.recipe.precision == "bf16-mixed"):
                loss = multimodal_losses(model(batch["tokens"], batch["modality_ids"]).logits, batch, 2)["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            times.append(time.perf_counter() - start)
        return statistics.median(times[1:])
    finally:
        torch.set_num_threads(threads)


def estimate_seconds(comparisons: list[Comparison]) -> float:
    """The wall clock the runs still to train will take on this machine's CPU (the module docstring says how)."""
    total = 0.0
    for c in comparisons:
        todo = [s for s in c.runs if c.status(s) != "finished"]
        seconds = {arm: step_seconds(c, arm) for arm in dict.fromkeys(s.arm for s in todo)}
        work = sum((c.recipe_of(s).max_steps - c.steps_done(s)) * seconds[s.arm] for s in todo)
        total += RUN_OVERHEAD * work / min(c.parallel, max(len(todo), 1))
    return total
