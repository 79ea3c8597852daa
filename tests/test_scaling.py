"""Savings versus scale: the trend fit against numpy, the sweep's report on a synthetic ladder whose slopes are known,
compare.py --scales planning (the CPU ladder and, on any machine, the GPU ladder as a dry run) and a small sweep end
to end."""

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.scaling import fit_trend, write_scaling_report
from experiments import recipes
from experiments.compare import build_parser, main
from experiments.compare_cli import plan_comparisons
from models import ModelConfig, non_embedding_params
from tests.helpers import SMALL_DATA
from tests.test_report import SLOPE, write_comparison, write_run

LADDER = ("nano", "tiny", "mini")


def test_the_fit_is_least_squares_with_a_student_t_interval():
    rng = np.random.default_rng(0)
    x = np.repeat([5.0, 5.5, 6.0], 3)
    y = 0.3 - 0.2 * x + rng.normal(0, 0.01, x.size)
    trend = fit_trend(x, y)
    slope, intercept = np.polyfit(x, y, 1)
    assert trend.slope == pytest.approx(slope, rel=1e-12) and trend.intercept == pytest.approx(intercept, rel=1e-12)
    assert trend.low < -0.2 < trend.high and trend.n == 9
    assert fit_trend(x[:2], y[:2]) is None and fit_trend(np.ones(4), y[:4]) is None


def test_a_synthetic_ladder_returns_its_known_slopes(tmp_path):
    """Chameleon at nano, tiny and mini, two seeds: MoM's text FLOPs-to-match is c * N^b exactly (speedup 1 / that),
    so the fitted exponent is b, and the loss gap at equal FLOPs, -SLOPE * ln(speedup), changes by SLOPE * b * ln 10
    per tenfold N; both seeds equal, so the intervals close on them. The image never reaches (no exponent)."""
    b, c = -0.04, 1.51  # 94% at nano, 85% at mini
    out = tmp_path / "sweep"
    for scale in LADDER:
        n = non_embedding_params(ModelConfig.from_scale(scale, arch="mamba"))
        speedup = 1 / (c * n**b)
        root = tmp_path / scale
        runs = [write_run(root, "chameleon", "mamba", seed) for seed in (0, 1)]
        runs += [write_run(root, "chameleon", "mom", seed, {"text": speedup, "image": 0.05}) for seed in (0, 1)]
        folder = write_comparison(out / scale, runs, ["chameleon"], None, [0, 1])
        comparison = json.loads((folder / "comparison.json").read_text())
        comparison["meta"]["scale"] = scale
        (folder / "comparison.json").write_text(json.dumps(comparison))
    (out / "sweep.json").write_text(json.dumps({"command": "python experiments/compare.py --scales ...",
                                                "scales": list(LADDER)}))  # fmt: skip
    report = write_scaling_report(out).read_text()
    fits = pd.read_csv(out / "scaling_fits.csv").set_index(["modality", "variant"])
    text = fits.loc[("text", "mom")]
    assert text["fraction_exponent"] == pytest.approx(b, abs=0.002)
    assert text["gap_per_decade"] == pytest.approx(SLOPE * b * math.log(10), abs=0.005)
    assert text["fraction_exponent_low"] <= text["fraction_exponent"] <= text["fraction_exponent_high"]
    assert text["params_at_paper"] == pytest.approx(10 ** ((math.log10(0.654) - math.log10(c)) / b), rel=0.01)
    assert np.isnan(fits.loc[("image", "mom"), "fraction_exponent"])
    assert "the saving grows with scale" in report and "an extrapolation" in report
    assert (out / "plots" / "scaling_chameleon.png").stat().st_size > 0
    assert len(pd.read_csv(out / "scaling.csv")) == 2 * len(LADDER)


def plan(tmp_path, *args):
    return plan_comparisons(build_parser().parse_args(["--root", str(tmp_path / "runs"), *args]))


def test_the_cpu_ladder_plans_one_comparison_per_scale_with_its_own_recipe(tmp_path):
    comparisons = plan(tmp_path, "--scales", ",".join(LADDER), "--settings", "chameleon", "--out", str(tmp_path / "s"))
    assert [c.scale for c in comparisons] == list(LADDER)
    assert [c.out for c in comparisons] == [tmp_path / "s" / scale for scale in LADDER]
    assert [c.recipe.max_steps for c in comparisons] == [recipes.RECIPES[s].max_steps for s in LADDER]
    assert {len({s.seed for s in c.runs}) for c in comparisons} == {3}  # the rungs' fewest default seeds
    folders = [c.folder(s) for c in comparisons for s in c.runs]
    assert len(set(folders)) == len(folders)


@pytest.mark.parametrize(
    "args, words",
    [
        (["--scales", "tiny"], ["--scales needs two scales"]),
        (["--scales", "nano,huge"], ["unknown scale", "huge"]),
        (["--scales", "nano,tiny", "--scale", "tiny"], ["--scale tiny and --scales nano,tiny"]),
        (["--scales", "nano,tiny", "--max-steps", "10"], ["--max-steps cannot be combined with --scales"]),
        (["--scales", "nano,tiny", "--lr", "0.01"], ["--lr cannot be combined with --scales"]),
        (["--scales", "nano,tiny", "--model", "d_model=32"], ["--model cannot be combined with --scales"]),
    ],
)
def test_a_bad_sweep_is_refused_before_anything_is_written(tmp_path, capsys, args, words):
    with pytest.raises(SystemExit) as exc:
        main(["--root", str(tmp_path / "runs"), "--out", str(tmp_path / "out"), *args])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and all(w in err for w in words), err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "out").exists()


def test_the_gpu_ladder_is_planned_on_any_machine_as_a_dry_run(tmp_path, capsys):
    """The papers' ladder: 250k steps of 8 x 4096 tokens per run at each size, on GPUs, printed with its training
    FLOPs; nothing is trained or written, and this CPU machine's lack of a GPU is not held against the plan."""
    out = tmp_path / "gpu"
    args = ["--scales", "163m,760m,1.4b", "--accelerator", "gpu", "--devices", "1", "--settings", "chameleon",
            "--arms", "mamba,mom,transformer,mot", "--dry-run", "--root", str(tmp_path / "runs"),
            "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out.splitlines()
    lines = {line.split(":")[1].strip(): line for line in printed if line.startswith("compare.py: ")}
    assert list(lines) == ["163m", "760m", "1.4b"]
    for scale, line in lines.items():
        assert "4 runs at 250000 steps, of 32768 tokens a step" in line and f"-> {out / scale}" in line
    flops = [float(line.split(" training FLOPs")[0].rsplit(" ", 1)[1]) for line in lines.values()]
    assert flops[0] < flops[1] < flops[2]
    assert not out.exists() and not (tmp_path / "runs").exists()


def test_a_small_sweep_trains_each_scale_and_writes_the_savings_report(tmp_path, small_cache, monkeypatch):
    """nano and tiny at four steps each (the recipes shortened for the test), MoM against Mamba, one seed: each scale
    its own results folder and report, the sweep's report beside them, and a rerun that trains nothing."""
    for scale in ("nano", "tiny"):
        monkeypatch.setitem(recipes.RECIPES, scale, replace(recipes.RECIPES[scale], max_steps=4, val_every=2,
                                                            warmup_steps=1))  # fmt: skip
    data = [f"--data={k}={v}" for k, v in SMALL_DATA.items()]
    args = ["--scales", "nano,tiny", "--settings", "chameleon", "--arms", "mamba,mom", "--seeds", "1", "--no-samples",
            "--root", str(tmp_path / "runs"), "--out", str(tmp_path / "sweep"), "--data-cache", small_cache,
            *data]  # fmt: skip
    assert main(args) == 0
    sweep = tmp_path / "sweep"
    assert json.loads((sweep / "sweep.json").read_text())["scales"] == ["nano", "tiny"]
    for scale in ("nano", "tiny"):
        assert json.loads((sweep / scale / "comparison.json").read_text())["meta"]["scale"] == scale
        assert (sweep / scale / "report.md").is_file()
    report = (sweep / "report.md").read_text()
    assert "# Savings versus scale" in report and "## chameleon" in report
    assert set(pd.read_csv(sweep / "scaling.csv")["scale"]) == {"nano", "tiny"}
    trained = sorted(p.stat().st_mtime_ns for p in Path(tmp_path / "runs").rglob("summary.json"))
    assert len(trained) == 4
    assert main(args) == 0
    assert sorted(p.stat().st_mtime_ns for p in Path(tmp_path / "runs").rglob("summary.json")) == trained
