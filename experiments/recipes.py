"""Training recipes and run requests: the one place the step budget, batch, validation and optimiser of a run are
defined, and the one place a run's folder is named.

Every arm of a comparison at one scale trains with its scale's recipe (`RECIPES`). A `RunRequest` is one run: what
it is, where its folder lives, and that recipe under the caller's overrides, resolved once; `train.py`, `train_run`
and `compare.py` all make one. A run's recipe has a name (`recipe_id`), the folder its runs live in, and a run
folder that disagrees with a request says how (`RunRequest.conflicts`). The class defaults of `MultiModalDataModule`
and `LitMultiModalLM` and the shipped YAMLs under experiments/configs/ are tested equal to these recipes.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import re
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from analysis.run_record import read_config, run_dir
from datamodules.multimodal import MultiModalDataModule
from datamodules.settings import get_setting
from experiments.lit_module import LitMultiModalLM
from models import check_scale, get_arm


@dataclass(frozen=True)
class Recipe:
    """The training recipe every arm of a comparison at one scale shares."""

    max_steps: int
    val_every: int  # validate (and checkpoint) every this many steps
    seq_len: int
    batch_size: int  # sequences per device and step
    val_sequences: int  # fixed validation sequences per validation set
    lr: float  # peak; linear warmup, then `schedule`'s decay to the peak * min_lr_ratio at max_steps
    warmup_steps: int
    # (family, peak lr) pairs replacing `lr` for the families they name: the dense arms' own, their sparse arms' too
    family_lr: tuple[tuple[str, float], ...] = ()
    min_lr_ratio: float = 0.1
    # "cosine" (the papers') or "wsd" (warmup-stable-decay, its cooldown the last `decay_fraction` of the steps;
    # LitMultiModalLM). Only a non-cosine schedule reaches the module and the recipe's name, so that adding the
    # option left every cosine recipe's run folders where they were.
    schedule: str = "cosine"
    decay_fraction: float = 0.2
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    # Lightning's precision: float32 weights and optimiser, bf16 matmuls (autocast). On GPUs the papers' choice; on a
    # CPU with AVX512-BF16 or AMX bf16 matmuls are faster than float32 ones (benchmarks/README.md, "Precision").
    precision: str = "bf16-mixed"
    seeds: int = 1  # seeds a comparison trains by default (compare.py --seeds): a property of the study, not a run

    DATA = ("seq_len", "batch_size", "val_sequences")  # MultiModalDataModule arguments
    MODULE = ("lr", "family_lr", "warmup_steps", "min_lr_ratio", "weight_decay", "betas")  # LitMultiModalLM arguments
    TRAINER = ("precision",)  # lightning.Trainer arguments

    def data(self) -> dict:
        return {name: getattr(self, name) for name in self.DATA}

    def module(self) -> dict:
        module = {name: getattr(self, name) for name in self.MODULE}
        if self.schedule != "cosine":
            module |= {"schedule": self.schedule, "decay_fraction": self.decay_fraction}
        return module

    def trainer(self) -> dict:
        return {name: getattr(self, name) for name in self.TRAINER}

    def as_dict(self) -> dict:
        return {"max_steps": self.max_steps, "val_every": self.val_every} | self.data() | self.module() | self.trainer()

    def at_budget(self, steps: int) -> Recipe:
        """This recipe trained for `steps`: its schedule stretched over them, validated as many times per run."""
        return replace(self, max_steps=steps, val_every=max(1, steps * self.val_every // self.max_steps))


# tiny: the default CPU recipe, a budget the whole matrix trains on two cores. Its split between seeds and tokens is
# the one that gave the narrowest loss-gap intervals with the dense curves still falling at the end
# (benchmarks/power_splits.py, docs/statistics.md); 10 evaluations place the crossing (tests/test_matching.py), and
# 32 validation sequences put the evaluation noise of a loss gap below the seed noise (benchmarks/README.md,
# "Validation"). The peak learning rates are each family's best on its dense arm alone at this batch
# (benchmarks/lr_sweep.py), which its sparse arms share; Mamba-2's sweep tied `lr` with twice it, and it keeps `lr`
# (docs/statistics.md). Speech utterances (~110 units) fit one sequence.
_TINY = Recipe(
    max_steps=200,
    val_every=20,
    seq_len=256,
    batch_size=4,
    val_sequences=32,
    lr=8e-3,
    family_lr=(("transformer", 1.28e-1),),
    warmup_steps=20,
    seeds=6,
)

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


def _rung(max_steps: int, mamba_lr: float, transformer_lr: float) -> Recipe:
    """A rung of the CPU scale ladder (compare.py --scales nano,tiny,mini): tiny's batch, sequences and validation,
    10 evaluations and a 10% warmup; `max_steps` keeps tiny's tokens per non-embedding parameter of dense Mamba
    (0.44), so the budget grows with the model; the peak rates are each dense arm's best at that scale
    (benchmarks/lr_sweep.py --scale, docs/scaling.md)."""
    return replace(_TINY, max_steps=max_steps, val_every=max_steps // 10, warmup_steps=max_steps // 10, lr=mamba_lr,
                   family_lr=(("transformer", transformer_lr),), seeds=3)  # fmt: skip


RECIPES = {
    "nano": _rung(60, 1.6e-2, 2.56e-1),
    "tiny": _TINY,
    "mini": _rung(750, 4e-3, 3.2e-2),
    "small": Recipe(
        max_steps=1000, val_every=25, seq_len=512, batch_size=16, val_sequences=64, lr=1e-3, warmup_steps=100
    ),
    **dict.fromkeys(("163m", "760m", "1.4b"), _PAPER),
}

RECIPE_FIELDS = tuple(f.name for f in fields(Recipe) if f.name != "seeds")  # what a run's config resolves


@dataclass(frozen=True)
class RunRequest:
    """One run: what it is, where its folder lives, and the recipe it trains with.

    Args:
        setting: a registered setting (datamodules.settings.SETTINGS).
        arm: a registered arm (models.ARMS), or the arm a variant varies.
        scale: a named scale (models.SCALES): the model's size and the recipe under the overrides below.
        seed: the data order's and the initial weights' seed.
        root: where run folders live.
        variant: the run's folder name when it is a variant of its arm (default: the arm).
        max_steps: optimiser steps (the schedule decays to its floor at max_steps); default: the scale's recipe.
        val_every: validate (and checkpoint) every this many steps; default: the scale's recipe.
        data: MultiModalDataModule arguments on top of the recipe's (identical for every arm of a comparison).
        module: LitMultiModalLM arguments on top of the recipe's (lr, warmup_steps, model_overrides, ...).
        trainer: lightning.Trainer arguments (accelerator, devices, precision, strategy, ...); precision defaults to
            the recipe's.

    Made, it holds the scale's recipe under those overrides (every field resolved), and an unknown setting, arm or
    scale has raised ValueError listing the valid ones.
    """

    setting: str
    arm: str
    scale: str = "tiny"
    seed: int = 0
    root: str | Path = "runs"
    variant: str | None = None
    max_steps: int | None = None
    val_every: int | None = None
    data: dict = field(default_factory=dict)
    module: dict = field(default_factory=dict)
    trainer: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        get_setting(self.setting)
        get_arm(self.arm)
        recipe = RECIPES[check_scale(self.scale)]
        resolved = {
            "root": Path(self.root),
            "variant": self.variant or self.arm,
            "max_steps": recipe.max_steps if self.max_steps is None else self.max_steps,
            "val_every": recipe.val_every if self.val_every is None else self.val_every,
            "data": recipe.data() | self.data,
            "module": recipe.module() | self.module,
            "trainer": recipe.trainer() | self.trainer,
        }
        for name, value in resolved.items():
            object.__setattr__(self, name, value)

    @property
    def recipe_id(self) -> str:
        return recipe_id(self.scale, self.max_steps, self.val_every, self.data, self.module, self.trainer["precision"])

    @property
    def folder(self) -> Path:
        return run_dir(self.root, self.setting, self.scale, self.recipe_id, self.variant, self.seed)

    def with_trainer(self, **flags) -> RunRequest:
        """The same run with these Trainer arguments added (callbacks, a progress bar: not part of the recipe)."""
        return replace(self, trainer=self.trainer | flags)

    def conflicts(self) -> list[str]:
        """How the run recorded in its folder differs from this request ([] when it matches or nothing is there).

        The step budget and validation cadence, every data and module argument and the precision are compared; the
        other Trainer settings are not part of a recipe, so a run may resume on other hardware.
        """
        stored = read_config(self.folder)
        if stored is None:
            return []
        wanted = {"max_steps": self.max_steps, "val_every": self.val_every}
        wanted |= {f"data.{k}": v for k, v in self.data.items() if k != "cache_dir"}  # where, not what
        wanted |= {f"module.{k}": v for k, v in self.module.items()}
        wanted |= {"trainer.precision": self.trainer["precision"]}
        conflicts = []
        for key, value in wanted.items():
            section, _, name = key.rpartition(".")
            have = (stored.get(section, {}) if section else stored).get(name)
            if as_stored(have) != as_stored(value):
                conflicts.append(f"{key}: recorded {have!r}, requested {value!r}")
        return conflicts


def as_stored(value):
    """JSON round trip: tuples and lists, ints and floats compare as they are stored."""
    return json.loads(json.dumps(value, default=str))


def _defaults(cls: type) -> dict:
    return {n: p.default for n, p in inspect.signature(cls.__init__).parameters.items() if p.default is not p.empty}


def recipe_id(scale: str, max_steps: int, val_every: int, data: dict, module: dict, precision: str) -> str:
    """The run folder's recipe name: readable, and equal exactly for equal recipes.

    It reads "<max_steps>steps", then every value that differs from the scale's recipe and the classes' defaults,
    then a hash of all of it: "200steps-efcc3e" is the default tiny recipe, "200steps-d_model256-seq_len512-583327"
    one with a wider model on longer sequences. Where the data comes from (`cache_dir`) is not part of it, and
    neither is `decouple` in the model overrides: an ablation variant's folder name says which parts it decouples.
    """
    base = RECIPES[scale]
    recipe = base.as_dict() | {"max_steps": max_steps, "val_every": val_every, "precision": precision}
    extra = {}  # the other data and module arguments that differ from their class defaults
    for values, defaults in ((data, _defaults(MultiModalDataModule)), (module, _defaults(LitMultiModalLM))):
        for key, value in values.items():
            if key in recipe:
                recipe[key] = value
            elif key not in ("cache_dir", "model_overrides") and as_stored(value) != as_stored(defaults.get(key)):
                extra[key] = value
    overrides = {k: v for k, v in (module.get("model_overrides") or {}).items() if k != "decouple"}
    recipe, extra, overrides = as_stored(recipe), as_stored(extra), as_stored(overrides)
    base_values = as_stored(base.as_dict())
    changed = {k: v for k, v in recipe.items() if k != "max_steps" and v != base_values[k]} | extra | overrides
    digest = hashlib.blake2b(json.dumps([recipe, extra, overrides], sort_keys=True).encode(), digest_size=3)
    readable = re.sub(r"[^A-Za-z0-9._+=-]+", "_", "".join(f"-{k}{v}" for k, v in sorted(changed.items())))[:80]
    return f"{max_steps}steps{readable}-{digest.hexdigest()}"
