"""One source for recipes: the scale recipes are the defaults of every entry point, and the shipped YAMLs equal them
(litgpt's config-hub test: each YAML goes through the real CLI parser)."""

import inspect
from pathlib import Path

import lightning as L
import pytest

from analysis.run_record import write_config
from datamodules.multimodal import MultiModalDataModule
from experiments import train
from experiments.compare import build_parser
from experiments.compare_cli import plan_comparison
from experiments.lit_module import LitMultiModalLM
from experiments.recipes import RECIPE_FIELDS, RECIPES, RunRequest
from models import ARMS, SCALES, ModelConfig, non_embedding_params

CONFIGS = Path(__file__).parents[1] / "experiments" / "configs"
SMOKE_TESTS = {"debug.yaml"}  # deliberately not a recipe; trained end to end in tests/test_train_cli.py


def resolved(args: list[str]) -> dict:
    """The recipe fields train.py resolves from `args`."""
    _, cfg = train.parse(args)
    merged = {"max_steps": cfg.max_steps, "val_every": cfg.val_every, **cfg.data.as_dict(), **cfg.module.as_dict()}
    merged["precision"] = cfg.trainer.precision
    return {name: tuple(v) if isinstance(v := merged[name], list) else v for name in RECIPE_FIELDS}


def test_every_scale_has_a_recipe():
    assert tuple(RECIPES) == SCALES


def test_class_defaults_are_the_tiny_recipe():
    """The datamodule's and the module's own defaults are the tiny recipe's: no third opinion on batch or lr."""
    tiny = RECIPES["tiny"]
    for cls, names in ((MultiModalDataModule, tiny.DATA), (LitMultiModalLM, tiny.MODULE)):
        params = inspect.signature(cls).parameters
        assert {n: params[n].default for n in names} == {n: getattr(tiny, n) for n in names}, cls.__name__


@pytest.mark.parametrize("scale", SCALES)
def test_cli_defaults_are_the_scales_recipe(scale):
    """With no YAML, train.py's budget, data and optimiser defaults are the chosen scale's recipe."""
    got = resolved(["--setting", "chameleon", "--arm", "mom", "--scale", scale])
    assert got == {name: getattr(RECIPES[scale], name) for name in RECIPE_FIELDS}


@pytest.mark.parametrize(
    "path", sorted(p for p in CONFIGS.glob("*.yaml") if p.name not in SMOKE_TESTS), ids=lambda p: p.name
)
def test_shipped_config_equals_its_recipe(path):
    """Every recipe YAML, parsed by the CLI, resolves to exactly its scale's recipe."""
    _, cfg = train.parse(["--config", str(path)])
    assert resolved(["--config", str(path)]) == {name: getattr(RECIPES[cfg.scale], name) for name in RECIPE_FIELDS}


def test_a_flag_overrides_one_field_of_the_recipe():
    got = resolved(["--setting", "chameleon", "--arm", "mom", "--scale", "small", "--data.batch_size", "3"])
    assert got == {name: getattr(RECIPES["small"], name) for name in RECIPE_FIELDS} | {"batch_size": 3}


def test_each_family_trains_at_its_own_peak_lr_and_a_sparse_arm_at_its_dense_partners():
    """The tiny recipe's rates are per family (each dense arm's best of benchmarks/lr_sweep.py): every arm's optimiser
    starts from its family's, a sparse arm's and a twin's equal to their dense partner's; --lr sets one for all."""
    tiny = RECIPES["tiny"]
    rates = dict(tiny.family_lr)
    for name, arm in ARMS.items():
        lit = LitMultiModalLM(arch=name, **tiny.module())
        lit.trainer = L.Trainer(max_steps=10, logger=False, enable_checkpointing=False, enable_progress_bar=False)
        optimizer = lit.configure_optimizers()["optimizer"]
        assert {g["initial_lr"] if "initial_lr" in g else g["lr"] for g in optimizer.param_groups} == {lit.peak_lr}
        assert lit.peak_lr == rates.get(arm.family.name, tiny.lr)
        if arm.dense is not None:
            assert lit.peak_lr == LitMultiModalLM(arch=arm.dense, **tiny.module()).peak_lr
    assert LitMultiModalLM(arch="mamba").peak_lr != LitMultiModalLM(arch="transformer").peak_lr
    one = plan_comparison(build_parser().parse_args(["--lr", "0.003"])).recipe
    assert LitMultiModalLM(arch="transformer", **one.module()).peak_lr == 0.003


def test_a_run_request_resolves_its_recipe_names_its_folder_and_says_how_a_folder_differs(tmp_path):
    """A request holds its scale's recipe under its overrides; its folder is root/setting/scale/recipe/variant/seedK,
    the recipe's name equal for equal recipes and readable for others; a folder holding a run of another recipe is
    described field by field; an unknown name fails as the request is made."""
    tiny = RECIPES["tiny"]
    plain = RunRequest("chameleon", "mom", root=str(tmp_path))
    assert (plain.max_steps, plain.val_every) == (tiny.max_steps, tiny.val_every)
    assert (plain.data, plain.module, plain.trainer) == (tiny.data(), tiny.module(), tiny.trainer())
    assert plain.folder == tmp_path / "chameleon" / "tiny" / "200steps-efcc3e" / "mom" / "seed0"
    assert RunRequest("chameleon", "mom", root=tmp_path, data={"batch_size": tiny.batch_size}).folder == plain.folder
    other = RunRequest("chameleon", "mom", root=tmp_path, seed=3, variant="mom-in_proj", max_steps=50,
                       module={"model_overrides": {"d_model": 256}})  # fmt: skip
    assert other.folder.parent.parent.name.startswith("50steps-d_model256-")
    assert other.folder.parts[-2:] == ("mom-in_proj", "seed3")
    assert plain.conflicts() == []
    write_config(plain.folder, {**plain.__dict__, "root": None, "module": tiny.module() | {"lr": 1.0}})
    assert plain.conflicts() == [f"module.lr: recorded 1.0, requested {tiny.lr!r}"]
    for bad, match in (("setting", "unknown setting 'dalle'"), ("arm", "unknown arm 'dalle'"), ("scale", "'dalle'")):
        with pytest.raises(ValueError, match=match):
            RunRequest(**{"setting": "chameleon", "arm": "mom", bad: "dalle"})


def test_a_wsd_recipe_reaches_the_module_and_names_its_own_folders(tmp_path):
    """`--schedule wsd` sets the recipe's schedule: the module gets it with its cooldown share, and its runs get a
    recipe name of their own; the cosine recipe's module arguments and name are what they were before the option."""
    args = build_parser().parse_args(["--settings", "chameleon", "--arms", "mamba,mom", "--schedule", "wsd",
                                      "--root", str(tmp_path)])  # fmt: skip
    comparison = plan_comparison(args)
    request = comparison.request(comparison.runs[0])
    assert (request.module["schedule"], request.module["decay_fraction"]) == ("wsd", 0.2)
    assert "schedulewsd" in request.recipe_id and request.recipe_id != RunRequest("chameleon", "mom").recipe_id
    assert "schedule" not in RECIPES["tiny"].module()
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--schedule", "linear"])


LADDER = ("nano", "tiny", "mini")


def test_the_cpu_ladder_grows_its_budget_with_the_model_at_one_tokens_per_parameter_ratio():
    """The ladder spans at least 8x in dense Mamba's non-embedding parameters; every rung trains tiny's tokens per
    non-embedding parameter (within 10%: whole steps of 10), with tiny's batch, sequences and validation size, ten
    evaluations and a 10% warmup."""
    sizes = {s: non_embedding_params(ModelConfig.from_scale(s, arch="mamba")) for s in LADDER}
    assert sizes["mini"] / sizes["nano"] >= 8 and sizes["nano"] < sizes["tiny"] < sizes["mini"]
    tokens = {s: RECIPES[s].max_steps * RECIPES[s].batch_size * RECIPES[s].seq_len for s in LADDER}
    ratio = tokens["tiny"] / sizes["tiny"]
    for scale in LADDER:
        recipe = RECIPES[scale]
        assert tokens[scale] / sizes[scale] == pytest.approx(ratio, rel=0.1), scale
        assert recipe.data() == RECIPES["tiny"].data() and recipe.max_steps // recipe.val_every == 10
        assert recipe.warmup_steps == recipe.max_steps // 10


def test_each_rung_resolves_to_a_folder_of_its_own():
    requests = [RunRequest("chameleon", arm, scale) for scale in LADDER for arm in ("mamba", "mom")]
    assert len({r.folder for r in requests}) == len(requests)
    assert len({r.recipe_id for r in requests}) == len(LADDER)
    for r in requests:
        assert r.max_steps == RECIPES[r.scale].max_steps and r.module["lr"] == RECIPES[r.scale].lr
