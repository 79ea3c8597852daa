"""Train one run: one (setting, arm, scale, seed) into runs/<setting>/<scale>/<recipe>/<variant>/seed<k>/.

    python experiments/train.py --setting chameleon --arm mom --scale tiny --seed 0 --max_steps 250 --root runs
    python experiments/train.py --config experiments/configs/debug.yaml --trainer.precision bf16-mixed
    python experiments/train.py --setting chameleon --arm mom --model.d_model 256 --module.lr 3e-3
    python experiments/train.py --help   # every option: the run, --data.*, --module.*, --model.*, --trainer.*

Options are spelled with underscores, as in the YAML files; the hyphen spelling compare.py uses names the same
option (--max-steps = --max_steps, --trainer.enable-progress-bar = --trainer.enable_progress_bar).

Parsing is LightningCLI's engine (jsonargparse) over the signatures of `RunRequest`, `MultiModalDataModule` (data),
`LitMultiModalLM` (module: the optimiser), `ModelConfig` (model: the architecture, as compare.py's --model KEY=VALUE)
and `lightning.Trainer`, so every Trainer flag works (`--trainer.devices 2 --trainer.strategy ddp`,
`--trainer.precision`, ...) and YAML files compose (`--config a.yaml --config b.yaml`). The run folder, its loggers
and checkpoints are the suite's own (experiments/run.py), so those Trainer arguments are not offered. The defaults of
the step budget, validation, data and optimiser options are the recipe of the chosen `--scale`
(experiments/recipes.py), those of the model options the arm's model at that scale; YAMLs and flags override them.
Rerunning a finished run is a no-op; an unfinished one resumes.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import fields

import lightning as L
from jsonargparse import ActionConfigFile, ArgumentParser
from lightning.pytorch.callbacks import TQDMProgressBar

from analysis.run_record import TRAIN_LOSS, parse_loss_name
from common.cli import respell_flags
from datamodules.errors import DATA_ERRORS
from datamodules.multimodal import MultiModalDataModule
from experiments.lit_module import LitMultiModalLM
from experiments.recipes import RECIPES, RunRequest, as_stored
from experiments.run import check_trainer, train_run
from experiments.store import DiskFull, Locked
from models import ModelConfig

# Trainer arguments the run owns: its folder, loggers, checkpoints, step budget and validation cadence.
RUN_OWNED = {
    "callbacks",
    "logger",
    "default_root_dir",
    "enable_checkpointing",
    "max_steps",
    "val_check_interval",
    "check_val_every_n_epoch",
}
# Set per run from the run and its datamodule (stated once): not options of the module or the model.
LINKED = {"arch", "scale", "vocab_size", "n_modalities", "patch_dim", "val_names", "image_sources"}


class LossProgressBar(TQDMProgressBar):
    """Lightning's progress bar with the step's training losses, total and per modality (the module logs them to the
    run's loggers, not through `self.log`, so the bar would not show them on its own)."""

    def get_metrics(self, trainer, pl_module) -> dict:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        for name, value in getattr(pl_module, "last_step_row", {}).items():
            if name == TRAIN_LOSS or ((key := parse_loss_name(name)) and key.kind == "train" and not key.source):
                metrics[name.removeprefix("train/")] = f"{value:.3f}"
        return metrics


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="train.py", description=__doc__, default_env=False)
    parser.add_argument("--config", action=ActionConfigFile, help="YAML file(s) with any of the options below")
    parser.add_class_arguments(RunRequest, skip={"data", "module", "trainer"})
    parser.add_class_arguments(MultiModalDataModule, "data", skip={"setting", "seed"})
    parser.add_class_arguments(LitMultiModalLM, "module", skip=LINKED | {"model_overrides"})
    parser.add_class_arguments(ModelConfig, "model", skip=LINKED)
    parser.add_class_arguments(L.Trainer, "trainer", skip=RUN_OWNED)
    return parser


def parse(argv: list[str] | None = None):
    """Parse twice: once to learn the scale, then with that scale's recipe as the defaults under YAMLs and flags. The
    model options that differ from the arm's model become `cfg.module.model_overrides` (None when none do)."""
    parser = build_parser()
    argv = respell_flags(sys.argv[1:] if argv is None else argv, "_")  # --max-steps as compare.py spells it
    cfg = parser.parse_args(argv)
    try:
        RunRequest(cfg.setting, cfg.arm, cfg.scale)  # its names
    except ValueError as exc:
        parser.error(str(exc))
    recipe = RECIPES[cfg.scale]
    defaults = {k: v for k, v in ModelConfig.from_scale(cfg.scale, arch=cfg.arm).to_dict().items() if k not in LINKED}
    sections = {"data": recipe.data(), "module": recipe.module(), "trainer": recipe.trainer(), "model": defaults}
    options = {f"{section}.{k}": v for section, values in sections.items() for k, v in values.items()}
    parser.set_defaults({"max_steps": recipe.max_steps, "val_every": recipe.val_every} | options)
    cfg = parser.parse_args(argv)
    if cfg.max_steps is not None and cfg.max_steps < 1:
        parser.error(f"--max_steps must be >= 1; got {cfg.max_steps}")
    if cfg.val_every is not None and not 1 <= cfg.val_every <= cfg.max_steps:
        parser.error(
            f"--val_every must be >= 1 and at most --max_steps ({cfg.max_steps}), or the run never validates; "
            f"got {cfg.val_every}"
        )
    overrides = {k: v for k, v in cfg.model.as_dict().items() if as_stored(v) != as_stored(defaults[k])}
    cfg.module.model_overrides = overrides or None
    try:  # the classes' own checks, before anything is written
        MultiModalDataModule(setting=cfg.setting, **cfg.data.as_dict())
        ModelConfig.from_scale(cfg.scale, arch=cfg.arm, **overrides)
    except ValueError as exc:
        parser.error(str(exc))
    return parser, cfg


def check_own_data(parser: ArgumentParser, cfg) -> None:
    """Prepare and assemble the run's own data, so that data which cannot serve it fail before its folder is made,
    as one line naming their file (the default corpus fills thousands of batches: the run itself prepares it)."""
    logging.disable(logging.INFO)  # setup's notes on what the data leave out: the run's own setup says them
    try:
        dm = MultiModalDataModule(setting=cfg.setting, seed=cfg.seed, **cfg.data.as_dict())
        dm.prepare_data()
        dm.setup("fit")
    except DATA_ERRORS as exc:
        parser.error(str(exc))
    finally:
        logging.disable(logging.NOTSET)


def main(argv: list[str] | None = None):
    parser, cfg = parse(argv)
    defaults = parser.get_defaults()
    # Only the Trainer flags the user set: train_run has its own defaults for the rest (CPU, deterministic, ...).
    trainer = {k: v for k, v in cfg.trainer.as_dict().items() if v != defaults.trainer.as_dict()[k]}
    try:  # Lightning's checks of the Trainer flags against this machine
        check_trainer({"precision": cfg.trainer.precision} | trainer)
    except ValueError as exc:
        parser.error(str(exc))
    if cfg.data.own_data:
        check_own_data(parser, cfg)
    if cfg.trainer.enable_progress_bar is not False:  # on unless --trainer.enable_progress_bar false
        trainer |= {"enable_progress_bar": True, "callbacks": [LossProgressBar()]}
    try:
        run = {f.name: cfg[f.name] for f in fields(RunRequest) if f.name not in ("data", "module", "trainer")}
        summary = train_run(RunRequest(**run, data=cfg.data.as_dict(), module=cfg.module.as_dict(), trainer=trainer))
    except (DiskFull, Locked) as exc:  # nothing half-written: the same command continues once the cause is gone
        parser.exit(1, f"train.py: {exc.strerror if isinstance(exc, DiskFull) else exc}\n")
    print(f"{summary.status}: {summary.final_val_loss}")
    return summary


if __name__ == "__main__":
    sys.exit(0 if main().finished else 1)
