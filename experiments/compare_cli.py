"""compare.py's command line: its parser, and the reading of its flags into a `Comparison` (experiments/plan.py).

`plan_comparison` raises ValueError naming any bad value with the valid choices, before anything is written.
"""

from __future__ import annotations

import argparse
import math
import sys
import typing
from dataclasses import replace
from pathlib import Path

from analysis.run_record import ComparisonMeta
from common.cli import parse_overrides, respell_flags
from common.files import check_writable_folder
from datamodules.multimodal import MultiModalDataModule
from datamodules.settings import SETTINGS, get_setting
from experiments.plan import Comparison, ablation_variants, plan, recipe_name
from experiments.recipes import RECIPES
from experiments.run import check_trainer
from experiments.schedule import schedule
from models import ARMS, SCALES, ModelConfig, check_scale


class _Parser(argparse.ArgumentParser):
    """compare.py's flags are spelled with hyphens; train.py's underscore spelling names the same ones."""

    def parse_known_args(self, args=None, namespace=None):
        return super().parse_known_args(respell_flags(sys.argv[1:] if args is None else args, "-"), namespace)


def build_parser(description: str | None = None) -> argparse.ArgumentParser:
    """compare.py's parser; `description`: what --help prints above the flags (compare.py's docstring)."""
    parser = _Parser(
        prog="compare.py",
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Flags may also be spelled with underscores (--max_steps), as train.py spells them.",
    )
    parser.add_argument("--settings", default="all", help=f"'all' or a comma list of {', '.join(SETTINGS)}")
    default_arms = ",".join(name for name, arm in ARMS.items() if arm.default)
    parser.add_argument("--arms", default=default_arms, help=f"comma list of {', '.join(ARMS)}")
    parser.add_argument("--scale", help=f"one of {', '.join(SCALES)} (sets the recipe; default tiny)")
    parser.add_argument(
        "--scales",
        help="a comma list of scales: the comparison at each (each its own recipe), then the report's savings versus "
        "scale (docs/scaling.md); e.g. nano,tiny,mini on the CPU, 163m,760m,1.4b on GPUs",
    )
    parser.add_argument(
        "--seeds", help="a count (3 -> seeds 0,1,2) or a comma list of seeds (default: the scale's recipe; tiny: 6)"
    )
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--max-steps", type=int, help="optimiser steps per run (default: the scale's recipe)")
    budget.add_argument("--tokens", type=float, help="training tokens per run (rounded up to whole steps)")
    parser.add_argument("--val-every", type=int, help="validate every this many steps (default: the scale's recipe)")
    parser.add_argument(
        "--lr",
        type=float,
        help="peak learning rate of every run, every family (default: the scale's recipe, each family its own rate "
        "from benchmarks/lr_sweep.py)",
    )
    parser.add_argument(
        "--schedule",
        choices=("cosine", "wsd"),
        default="cosine",
        help="the learning-rate schedule of every run: cosine decay (the papers', the default) or warmup-stable-decay "
        "(the peak held, then a cooldown over the last 20%% of the steps; docs/comparison.md)",
    )
    parser.add_argument(
        "--budgets",
        help="also train every sparse arm (and twin) at these fractions of the step budget, e.g. 0.4,0.6, each run "
        "with its own full schedule: the report then gives the budget-matched FLOPs-to-match beside the within-run one "
        "(docs/comparison.md); these runs add the fractions' sum times the sparse arms' training time",
    )
    parser.add_argument(
        "--ablation",
        nargs="?",
        const="basic",
        choices=("basic", "full"),
        help="also train --ablation-arm with subsets of its parts decoupled: basic = each one alone and the "
        "family's groups (MoM: in_proj+out_proj, x_proj+dt_proj); full = every subset",
    )
    parser.add_argument("--ablation-setting", default="chameleon", help="the setting of the ablation")
    parser.add_argument(
        "--ablation-arm", default=ComparisonMeta.ablation_arm, help="the sparse arm whose parts the ablation varies"
    )
    for flag, help_text in (
        ("--data", "override a MultiModalDataModule argument for every run (repeatable)"),
        ("--model", "override a ModelConfig field for every run, e.g. d_model=256 (repeatable)"),
    ):
        parser.add_argument(flag, action="append", default=[], metavar="KEY=VALUE", help=help_text)
    parser.add_argument("--root", default="runs", help="where run folders live (default runs/)")
    parser.add_argument(
        "--out",
        help="results folder for the report (default results/<scale> for the scale's own recipe, "
        "results/<scale>-<recipe> for any other budget, data or model)",
    )
    parser.add_argument("--data-cache", default=".cache/data", help="prepared-data cache")
    parser.add_argument(
        "--no-samples", action="store_true", help="skip the report's samples (text and images from every arm)"
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan (runs, steps, tokens and training FLOPs per scale) and stop; nothing is written, and the "
        "Trainer flags are not checked against this machine",
    )
    lightning = parser.add_argument_group("passed to lightning.Trainer")
    lightning.add_argument("--accelerator", default="cpu", help="cpu, gpu, auto, ...")
    lightning.add_argument("--devices", help="e.g. 1, 8, 'auto'")
    lightning.add_argument("--num-nodes", type=int)
    lightning.add_argument("--strategy", help="e.g. ddp, fsdp")
    lightning.add_argument(
        "--precision", help="the recipe's is bf16-mixed (bf16 matmuls, float32 weights); 32-true: float32"
    )
    parser.add_argument(
        "--parallel",
        default="auto",
        help="runs at a time, each in its own process. 'auto' (default): on the CPU one single-threaded run per core "
        "(faster than one run on all cores; the results are bit-identical either way), elsewhere 1; K > 1 with "
        "--accelerator gpu gives each run its own GPU",
    )
    return parser


def parse_list(text: str, valid, what: str, all_means=None) -> list[str]:
    """'a,b' -> ['a', 'b'], checked against `valid`; 'all' -> all_means."""
    if all_means is not None and text.strip() == "all":
        return list(all_means)
    items = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in items if t not in valid]
    if unknown or not items:
        raise ValueError(f"unknown {what} {unknown or text!r}; valid choices are {list(valid)}")
    return list(dict.fromkeys(items))


def parse_seeds(text: str) -> list[int]:
    """'3' -> [0, 1, 2] (a count); '0,4' -> [0, 4] (explicit seeds, each >= 0)."""
    try:
        values = [int(t) for t in text.split(",")]
    except ValueError:
        raise ValueError(f"--seeds takes a count (3) or a comma list of seeds (0,4); got {text!r}") from None
    if "," not in text:
        if values[0] < 1:
            raise ValueError(f"--seeds count must be >= 1; got {text!r}")
        return list(range(values[0]))
    if min(values) < 0:
        raise ValueError(f"--seeds: seeds must be >= 0; got {text!r}")
    return list(dict.fromkeys(values))


def plan_comparisons(args: argparse.Namespace) -> list[Comparison]:
    """compare.py's arguments -> the comparison, or with --scales one per scale (each into `<out>/<scale>`, with
    its own recipe and the seeds all of them share); a ValueError names any bad value and the valid choices."""
    if args.scales is None:
        return [plan_comparison(args)]
    if args.scale is not None:
        raise ValueError(f"--scale {args.scale} and --scales {args.scales}: give one of them")
    scales = parse_list(args.scales, SCALES, "scale")
    if len(scales) < 2:
        raise ValueError(f"--scales needs two scales or more; got {args.scales!r}")
    for flag in ("max_steps", "tokens", "val_every", "lr", "model"):
        if getattr(args, flag):
            raise ValueError(
                f"--{flag.replace('_', '-')} cannot be combined with --scales: each scale trains its own recipe and "
                "model (experiments/recipes.py); run one scale with --scale to change them"
            )
    seeds = args.seeds or str(min(RECIPES[scale].seeds for scale in scales))
    out = Path(args.out or f"results/scales-{'-'.join(scales)}")
    return [
        plan_comparison(argparse.Namespace(**vars(args) | {"scale": scale, "seeds": seeds, "out": str(out / scale)}))
        for scale in scales
    ]


def sweep_folder(comparisons: list[Comparison]) -> Path | None:
    """The results folder of a --scales sweep (its comparisons' parent); None for one comparison."""
    return comparisons[0].out.parent if len(comparisons) > 1 else None


def plan_comparison(args: argparse.Namespace) -> Comparison:
    """compare.py's arguments (one scale) -> Comparison; a ValueError names any bad value and the valid choices."""
    args = argparse.Namespace(**vars(args) | {"scale": args.scale or "tiny"})
    settings = parse_list(args.settings, SETTINGS, "setting", all_means=SETTINGS)
    arms = parse_list(args.arms, ARMS, "arm")
    check_scale(args.scale)
    get_setting(args.ablation_setting)  # checked even without --ablation: a typo never passes silently
    ablation_variants(args.ablation_arm)
    data_args = typing.get_type_hints(MultiModalDataModule.__init__)
    data_args = {k: v for k, v in data_args.items() if k not in ("return", "setting", "seed")}
    model_args = {k: v for k, v in typing.get_type_hints(ModelConfig).items() if k != "arch"}
    data_overrides = parse_overrides(args.data, "--data", valid=data_args)
    model_overrides = parse_overrides(args.model, "--model", valid=model_args)
    recipe = RECIPES[args.scale]
    if args.val_every is not None:
        if args.val_every < 1:
            raise ValueError(f"--val-every must be >= 1; got {args.val_every}")
        recipe = replace(recipe, val_every=args.val_every)
    if args.precision is not None:
        recipe = replace(recipe, precision=args.precision)
    if args.schedule != "cosine":
        recipe = replace(recipe, schedule=args.schedule)
    if args.lr is not None:
        if not (math.isfinite(args.lr) and 0 < args.lr < 1):
            raise ValueError(f"--lr must be a peak learning rate between 0 and 1; got {args.lr:g}")
        recipe = replace(recipe, lr=args.lr, family_lr=())
    data = recipe.data() | data_overrides | {"cache_dir": args.data_cache}
    # batch_size is per device: a step of a run on N devices x K nodes trains N x K batches.
    devices = int(args.devices) if args.devices is not None and args.devices.isdigit() else args.devices
    replicas = (devices if isinstance(devices, int) else 1) * (args.num_nodes or 1)
    tokens_per_step = data["seq_len"] * data["batch_size"] * replicas
    max_steps = step_budget(args.max_steps, args.tokens, tokens_per_step, recipe.max_steps)
    if recipe.val_every > max_steps:
        raise ValueError(
            f"--val-every {recipe.val_every} is more than the step budget ({max_steps} steps): the runs would never "
            f"validate; choose --val-every <= {max_steps}"
        )
    seeds = parse_seeds(str(recipe.seeds) if args.seeds is None else args.seeds)
    parallel, threads = schedule(args.parallel, args.accelerator, devices, args.strategy)
    given = dict(accelerator=args.accelerator, devices=devices, num_nodes=args.num_nodes, strategy=args.strategy)
    trainer = {k: v for k, v in given.items() if v is not None}
    if not args.dry_run:  # a plan for other hardware (GPUs) is printed on any machine
        check_trainer(trainer | recipe.trainer())
    for setting in settings:  # the classes' own checks, on the values every run will get
        try:
            MultiModalDataModule(setting=setting, **data)
        except ValueError as exc:
            raise ValueError(f"--data: {exc}") from None
    for arm in dict.fromkeys([*arms, args.ablation_arm] if args.ablation else arms):
        try:
            ModelConfig.from_scale(args.scale, arch=arm, **model_overrides)
        except ValueError as exc:
            raise ValueError(f"--model: {exc} (arm {arm})") from None
    for flag, folder in (("--root", args.root), ("--out", args.out), ("--data-cache", args.data_cache)):
        if folder is not None:
            check_writable_folder(flag, Path(folder))
    recipe = replace(recipe, max_steps=max_steps)
    budgets = parse_budgets(args.budgets, max_steps, arms) if args.budgets is not None else ()
    name = recipe_name(args.scale, recipe, data, model_overrides)
    default_out = f"results/{args.scale}" if name == recipe_name(args.scale, RECIPES[args.scale]) else f"results/{name}"
    return Comparison(
        runs=plan(settings, arms, seeds, args.ablation, args.ablation_setting, args.ablation_arm, budgets),
        scale=args.scale,
        root=Path(args.root),
        out=Path(args.out or default_out),
        recipe=recipe,
        data=data,
        model_overrides=model_overrides,
        trainer=trainer,
        parallel=parallel,
        threads=threads,
    )


def parse_budgets(text: str, max_steps: int, arms: list[str]) -> tuple[int, ...]:
    """--budgets '0.4,0.6' -> the shorter step budgets (80, 120 of 200); ValueError naming the flag, the value and
    what is valid when a fraction is not in (0, 1), two round to one budget, or no arm of `arms` has its dense
    partner there to be matched against."""
    try:
        fractions = [float(t) for t in text.split(",")]
    except ValueError:
        raise ValueError(
            f"--budgets takes a comma list of fractions of the step budget (0.4,0.6); got {text!r}"
        ) from None
    steps = [round(f * max_steps) for f in fractions if 0 < f < 1]
    if len(steps) < len(fractions) or not all(1 <= s < max_steps for s in steps) or len(set(steps)) < len(steps):
        raise ValueError(
            f"--budgets {text}: each must be a fraction strictly between 0 and 1 giving a distinct step budget of "
            f"at least 1 step below the {max_steps} of the recipe; got {steps} steps"
        )
    if not any(ARMS[a].dense in arms for a in arms):
        raise ValueError(f"--budgets needs a sparse arm (or twin) and its dense arm in --arms; got {','.join(arms)}")
    return tuple(sorted(steps))


MAX_STEPS = 10**9  # no recipe comes near it (the papers' is 250k): a budget above it is a typo


def step_budget(max_steps: int | None, tokens: float | None, tokens_per_step: int, default: int) -> int:
    """--max-steps / --tokens -> optimiser steps per run (the recipe's when neither is given); ValueError naming the
    flag, the value and what is valid otherwise."""
    if max_steps is not None:
        if not 1 <= max_steps <= MAX_STEPS:
            raise ValueError(f"--max-steps must be >= 1 and at most {MAX_STEPS:.0e}; got {max_steps}")
        return max_steps
    if tokens is None:
        return default
    if not math.isfinite(tokens) or tokens <= 0:
        raise ValueError(f"--tokens must be a finite, positive number of tokens per run; got {tokens:g}")
    steps = math.ceil(tokens / tokens_per_step)
    if steps > MAX_STEPS:
        raise ValueError(
            f"--tokens {tokens:g} is {steps:.2e} steps of {tokens_per_step} tokens, more than {MAX_STEPS:.0e} steps"
        )
    return steps
