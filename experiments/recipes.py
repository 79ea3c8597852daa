"""Training recipes: the one place the step budget, batch, validation and optimiser of a run are defined.

Every arm of a comparison at one scale trains with its scale's recipe (`RECIPES`); `train.py`, `train_run` and
`compare.py` all start from it, and flags override single fields. The class defaults of `MultiModalDataModule` and
`LitMultiModalLM` and the shipped YAMLs under experiments/configs/ are tested equal to these recipes.
"""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class Recipe:
    """The training recipe every arm of a comparison at one scale shares."""

    max_steps: int
    val_every: int  # validate (and checkpoint) every this many steps
    seq_len: int
    batch_size: int  # sequences per device and step
    val_sequences: int  # fixed validation sequences per validation set
    lr: float  # peak; linear warmup, then cosine decay to lr * min_lr_ratio at max_steps
    warmup_steps: int
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    # Lightning's precision: float32 weights and optimiser, bf16 matmuls (autocast). On GPUs the papers' choice; on a
    # CPU with AVX512-BF16 or AMX a bf16 matmul is 2-2.4x a float32 one (benchmarks/README.md, "Precision").
    precision: str = "bf16-mixed"
    seeds: int = 1  # seeds a comparison trains by default (compare.py --seeds): a property of the study, not a run

    DATA = ("seq_len", "batch_size", "val_sequences")  # MultiModalDataModule arguments
    MODULE = ("lr", "warmup_steps", "min_lr_ratio", "weight_decay", "betas")  # LitMultiModalLM arguments
    TRAINER = ("precision",)  # lightning.Trainer arguments

    def data(self) -> dict:
        return {name: getattr(self, name) for name in self.DATA}

    def module(self) -> dict:
        return {name: getattr(self, name) for name in self.MODULE}

    def trainer(self) -> dict:
        return {name: getattr(self, name) for name in self.TRAINER}

    def as_dict(self) -> dict:
        return {
            "max_steps": self.max_steps,
            "val_every": self.val_every,
            **self.data(),
            **self.module(),
            **self.trainer(),
        }


# tiny: the default CPU recipe, sized so that 3 settings x 4 arms x 3 seeds (the seeds give every verdict its
# interval) train on 2 cores in about a quarter of an hour while the dense curves still fall. 10 evaluations place
# the crossing (the rule is exact within 1.5% at 10, tests/test_matching.py), and 32 validation sequences put the
# evaluation noise of a loss gap below the seed noise (benchmarks/README.md, "Validation"); validating every 10
# steps cost 11-21% of a run. AdamW 2e-3 with warmup and cosine decay at d_model 128 showed the sparse arms' gain
# once the cosine flattens the dense curve; batch 8 x 256 gives twice the optimiser steps per token of 16 x 256, and
# speech utterances (~110 units) still fit one sequence.
# Paper scales: Transfusion's published optimiser and sequences of 4096 (docs/papers.md); batch per device.
_PAPER = Recipe(
    max_steps=250_000,
    val_every=1000,
    seq_len=4096,
    batch_size=8,
    val_sequences=64,
    lr=3e-4,
    warmup_steps=4000,
    min_lr_ratio=0.05,
)
RECIPES = {
    "tiny": Recipe(
        max_steps=200, val_every=20, seq_len=256, batch_size=8, val_sequences=32, lr=2e-3, warmup_steps=20, seeds=3
    ),
    "small": Recipe(
        max_steps=1000, val_every=25, seq_len=512, batch_size=16, val_sequences=64, lr=1e-3, warmup_steps=100
    ),
    **dict.fromkeys(("163m", "760m", "1.4b"), _PAPER),
}

RECIPE_FIELDS = tuple(f.name for f in fields(Recipe) if f.name != "seeds")  # what a run's config resolves
