"""compare.py end to end: plans the matrix, writes the report, never retrains what is finished, continues after an
interrupt, trains exactly what is missing, refuses bad names and results of another configuration before training."""

import csv
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from analysis.run_record import TOKENS_PER_S, WALL, read_summary
from experiments import plan as plan_module
from experiments import schedule as schedule_module
from experiments.checkpoints import load_checkpoint
from experiments.compare import build_parser, main
from experiments.compare_cli import plan_comparison, plan_comparisons
from experiments.plan import ablation_variants, plan
from experiments.progress import ProgressReporter
from experiments.schedule import schedule
from models import ARMS
from tests.helpers import SMALL_DATA, TINY_MODEL, trained_folder

STEPS = 4
ROOT = Path(__file__).resolve().parents[1]
STEPS_CTRL_C = 200


@pytest.fixture(scope="module")
def cache(small_cache):
    return small_cache


def small(tmp, cache, *args, samples=False):
    """Arguments of a comparison at test size (small data, a tiny model) in tmp/runs and tmp/results; without the
    report's samples unless asked (the full-matrix test draws them)."""
    data = [f"--data={k}={v}" for k, v in SMALL_DATA.items()]
    model = [f"--model={k}={v}" for k, v in TINY_MODEL.items()]
    return ["--root", str(tmp / "runs"), "--out", str(tmp / "results"), "--data-cache", cache, "--val-every", "2",
            "--seeds", "1", *data, *model, *args, *([] if samples else ["--no-samples"])]  # fmt: skip


def summaries(root):
    """{setting/scale/recipe/variant/seed<k>: summary.json's mtime} of every run under root."""
    return {p.parent.relative_to(root).as_posix(): p.stat().st_mtime_ns for p in root.glob("*/*/*/*/*/summary.json")}


@pytest.fixture(scope="module")
def full(tmp_path_factory, cache):
    """The whole default matrix (3 settings x 4 arms) trained once at test size, with the report's samples: (its
    arguments, its folder)."""
    tmp = tmp_path_factory.mktemp("full")
    args = small(tmp, cache, "--settings", "all", "--max-steps", str(STEPS), samples=True)
    assert main(args) == 0
    return args, tmp


def test_the_full_matrix_trains_every_run_to_its_budget(full):
    _, tmp = full
    first = summaries(tmp / "runs")
    assert len(first) == 12  # 3 settings x 4 arms
    for folder in first:
        summary = read_summary(tmp / "runs" / folder)
        assert summary.status == "finished" and summary.steps == STEPS, folder
    comparison = json.loads((tmp / "results" / "comparison.json").read_text())
    assert len(comparison["runs"]) == 12 and comparison["meta"]["max_steps"] == STEPS


def test_the_full_matrix_writes_the_report_its_plots_and_every_arms_samples(full):
    results = full[1] / "results"
    assert (results / "report.md").exists() and (results / "flops_to_match.csv").exists()
    assert list(results.rglob("*.png"))
    samples = json.loads((results / "samples" / "samples.json").read_text())["settings"]  # every arm, every setting
    assert set(samples) == {"transfusion", "chameleon", "three_modality"}
    assert all(set(entry["texts"]) == {"mamba", "mom", "transformer", "mot"} for entry in samples.values())
    assert all((results / entry["grid"]).is_file() and entry["captions"] for entry in samples.values())
    report = (results / "report.md").read_text()
    assert "## Samples" in report and all(f"({entry['grid']})" in report for entry in samples.values())


def test_a_rerun_trains_nothing_and_a_deleted_run_alone_is_trained_again(full, capsys):
    args, tmp = full
    runs = tmp / "runs"
    first = summaries(runs)
    capsys.readouterr()
    assert main(args) == 0  # nothing new to train
    assert "0 to train" in capsys.readouterr().out
    assert summaries(runs) == first
    gone = trained_folder(runs, "chameleon", "mom").relative_to(runs).as_posix()
    for path in sorted((runs / gone).rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    assert main(args) == 0
    again = summaries(runs)
    assert {k for k in again if again[k] != first.get(k)} == {gone}  # exactly the deleted run was trained


@pytest.mark.parametrize(
    "changed, field", [(["--max-steps", "3"], "max_steps"), (["--precision", "32-true"], "precision")]
)
def test_another_recipe_trains_beside_and_never_into_a_results_folder_of_another(
    tmp_path, cache, capsys, changed, field
):
    """Another budget, or another precision (a float32 run is not a bf16 run), is another recipe: its runs get
    folders of their own and the first recipe's finished runs are listed; only a results folder of the first recipe
    is refused, before anything trains."""
    args = small(tmp_path, cache, "--settings", "chameleon", "--arms", "mamba", "--max-steps", "2")
    assert main(args) == 0
    before = summaries(tmp_path / "runs")
    capsys.readouterr()
    assert main([*args, *changed]) == 2  # into the same --out
    err = capsys.readouterr().err
    assert field in err and "comparison.json" in err
    assert summaries(tmp_path / "runs") == before

    other = [*args, *changed, "--out", str(tmp_path / "other")]
    assert main(other) == 0
    out = capsys.readouterr().out
    (first,) = {Path(k).parts[2] for k in before}
    assert f"other recipes, not part of this comparison: {first} (1 finished)" in out
    after = summaries(tmp_path / "runs")
    assert {k: after[k] for k in before} == before and len(after) == 2  # the first run untouched, one new beside it
    assert "2steps" in first and {Path(k).parts[2] for k in after} - {first}


def test_shorter_budgets_train_beside_and_the_report_matches_on_them(tmp_path, cache, capsys):
    """--budgets 0.5: MoM also trains 3 of the 6 steps with its own schedule (validated as often per run), in its own
    recipe folder and results folder; the main results list only the full-budget runs, the report gains the
    budget-matched section, and a rerun trains nothing."""
    args = small(tmp_path, cache, "--settings", "chameleon", "--arms", "mamba,mom", "--max-steps", "6",
                 "--budgets", "0.5")  # fmt: skip
    assert main(args) == 0
    assert "the sparse arms also at 3 steps" in capsys.readouterr().out
    runs = {k: read_summary(tmp_path / "runs" / k) for k in summaries(tmp_path / "runs")}
    assert sorted((Path(k).parts[3], s.steps) for k, s in runs.items()) == [("mamba", 6), ("mom", 3), ("mom", 6)]
    short = next(k for k, s in runs.items() if s.steps == 3)
    config = json.loads((tmp_path / "runs" / short / "config.json").read_text())
    assert config["val_every"] == 1 and Path(short).parts[2].startswith("3steps")
    results = tmp_path / "results"
    listed = json.loads((results / "comparison.json").read_text())["runs"]
    assert sorted(r["variant"] for r in listed) == ["mamba", "mom"]
    budget = json.loads((results / "budgets" / "3steps" / "comparison.json").read_text())
    assert [r["folder"] for r in budget["runs"]] == [str(tmp_path / "runs" / short)]
    assert budget["meta"]["max_steps"] == 3 and budget["meta"]["recipe"]["val_every"] == 1
    assert "## Budget-matched FLOPs-to-match" in (results / "report.md").read_text()
    assert (results / "budget_matched_summary.csv").is_file()
    before = summaries(tmp_path / "runs")
    assert main(args) == 0
    assert "0 to train" in capsys.readouterr().out and summaries(tmp_path / "runs") == before


def readme_comparisons() -> list[list[str]]:
    """The compare.py commands of the README, in order, as argument lists."""
    lines = (ROOT / "README.md").read_text().splitlines()
    found = [line.split("#")[0].split() for line in lines if line.startswith("python experiments/compare.py ")]
    return [words[2:] for words in found]


def test_the_readme_comparisons_never_refuse_each_other(tmp_path, cache):
    """Run in the README's order on one machine, no command may be refused by an earlier one's results: commands
    writing one results folder share one recipe, and different recipes never share a run folder."""
    commands = readme_comparisons()
    assert len(commands) >= 7
    by_out: dict[Path, set[str]] = {}
    by_folder: dict[Path, set[str]] = {}
    for words in commands:
        args = build_parser().parse_args([*words, "--root", str(tmp_path / "runs"), "--data-cache", cache])
        for c in plan_comparisons(args):
            name = plan_module.recipe_name(c.scale, c.recipe, c.data, c.model_overrides)
            by_out.setdefault(c.out, set()).add(name)
            for spec in c.runs:
                by_folder.setdefault(c.folder(spec), set()).add(name)
    assert all(len(names) == 1 for names in by_out.values()), by_out
    assert all(len(names) == 1 for names in by_folder.values())
    assert len({n for names in by_out.values() for n in names}) == 5  # default, 1M tokens, wider, nano, mini


def test_the_default_results_folder_is_the_recipes_own(tmp_path, cache):
    """Without --out, the scale's own recipe reports to results/<scale>, any other to results/<scale>-<recipe>."""
    base = ["--settings", "chameleon", "--arms", "mamba", "--data-cache", cache, "--root", str(tmp_path / "runs")]
    own, longer = (
        plan_comparison(build_parser().parse_args(base)),
        plan_comparison(build_parser().parse_args([*base, "--tokens", "1e6"])),
    )
    assert own.out == Path("results/tiny")
    recipe = own.folder(own.runs[0]).parents[1].name
    assert recipe == "200steps-efcc3e"  # the README names the default recipe's folder
    assert longer.out.name.startswith("tiny-977steps-")
    assert longer.folder(longer.runs[0]).parents[1].name == longer.out.name.removeprefix("tiny-")


def test_interrupted_comparison_continues_where_it_stopped(tmp_path, cache, monkeypatch):
    args = small(tmp_path, cache, "--settings", "chameleon", "--arms", "mamba,mom", "--max-steps", "6")
    args += ["--parallel", "1"]  # in this process, so that the patched callback runs
    original = ProgressReporter.on_train_batch_end

    def ctrl_c_in_mamba(self, trainer, *rest):  # the second run: mom, the slower arm, trains first
        original(self, trainer, *rest)
        if self.spec.arm == "mamba" and trainer.global_step == 5:
            raise KeyboardInterrupt

    monkeypatch.setattr(ProgressReporter, "on_train_batch_end", ctrl_c_in_mamba)
    assert main(args) == 130
    mom, mamba = (trained_folder(tmp_path / "runs", "chameleon", arm) for arm in ("mom", "mamba"))
    assert read_summary(mamba).status == "interrupted"
    mom_done = (mom / "summary.json").stat().st_mtime_ns
    monkeypatch.setattr(ProgressReporter, "on_train_batch_end", original)

    assert main(args) == 0
    assert (mom / "summary.json").stat().st_mtime_ns == mom_done
    assert read_summary(mamba).status == "finished"
    with open(mamba / "metrics.csv", newline="") as f:
        steps = [int(r["step"]) for r in csv.DictReader(f) if r["train/loss"]]
    assert steps == list(range(6))  # resumed from the step-4 checkpoint: every step logged exactly once


@pytest.mark.parametrize(
    "flag, value, valid",
    [
        ("--settings", "imagenet", "transfusion"),
        ("--arms", "mamba,gpt", "mot"),
        ("--scale", "huge", "1.4b"),
        ("--seeds", "three", "count"),
        ("--data", "colour=1", "seq_len"),
        ("--model", "width=3", "d_model"),
        ("--ablation-setting", "speech", "chameleon"),
        ("--ablation-arm", "mamba", "mot"),
    ],
)
def test_bad_names_are_refused_before_anything_runs(tmp_path, capsys, flag, value, valid):
    with pytest.raises(SystemExit) as exc:
        main(["--root", str(tmp_path / "runs"), "--out", str(tmp_path / "results"), flag, value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert value.split(",")[-1].split("=")[0] in err and valid in err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "results").exists()


@pytest.mark.parametrize(
    "args, words",
    [
        (["--max-steps", "0"], ["--max-steps", "0", ">= 1"]),
        (["--max-steps", "-3"], ["--max-steps", "-3", ">= 1"]),
        (["--tokens", "0"], ["--tokens", "0", "positive"]),
        (["--tokens", "inf"], ["--tokens", "inf", "finite"]),
        (["--tokens", "nan"], ["--tokens", "nan", "finite"]),
        (["--tokens", "1e15"], ["--tokens", "1e+15", "steps"]),
        (["--val-every", "300"], ["--val-every", "300", "200", "never validate"]),
        (["--max-steps", "10", "--val-every", "20"], ["--val-every", "20", "10", "never validate"]),
        (["--data", "seq_len=-1"], ["--data", "seq_len >= 2", "-1"]),
        (["--data", "seq_len=abc"], ["--data", "seq_len takes int", "'abc'"]),
        (["--data", "batch_size=0"], ["--data", "batch_size >= 1", "0"]),
        (["--model", "d_model=-1"], ["--model", "d_model must be >= 1", "-1"]),
        (["--model", "d_model=abc"], ["--model", "d_model takes int", "'abc'"]),
        (["--accelerator", "gpu"], ["--accelerator gpu", "gpu"]),
        (["--precision", "garbage"], ["--precision garbage", "Allowed precision values"]),
        (["--devices", "abc"], ["--devices abc", "devices"]),
        (["--strategy", "garbage"], ["--strategy garbage", "invalid strategy"]),
        (["--seeds", "0,-1"], ["--seeds", "0,-1", ">= 0"]),
        (["--lr", "0"], ["--lr", "between 0 and 1", "got 0"]),
        (["--lr", "inf"], ["--lr", "between 0 and 1", "got inf"]),
        (["--budgets", "0.4,1"], ["--budgets 0.4,1", "strictly between 0 and 1"]),
        (["--budgets", "0.5,0.501"], ["--budgets 0.5,0.501", "distinct", "[100, 100]"]),
        (["--budgets", "half"], ["--budgets", "fractions", "'half'"]),
        (["--arms", "mamba,transformer", "--budgets", "0.5"], ["--budgets needs a sparse arm", "mamba,transformer"]),
    ],
)
def test_bad_budgets_are_refused_before_anything_runs(tmp_path, capsys, args, words):
    """A budget that would train something else than asked (0 steps meant 200, a run that never validates, an
    overflowing or absurd token count), a data or model value its class refuses, Trainer flags this machine or
    Lightning refuses, a negative seed: each fails with the flag, the value and what is valid, writing nothing."""
    with pytest.raises(SystemExit) as exc:
        main(["--root", str(tmp_path / "runs"), "--out", str(tmp_path / "results"), *args])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert all(w in err for w in words), err
    assert "Traceback" not in err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "results").exists()


def test_an_out_that_is_a_file_or_under_one_is_refused(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for out, words in ((blocker, "is a file"), (blocker / "results", "cannot write in")):
        with pytest.raises(SystemExit) as exc:
            main(["--root", str(tmp_path / "runs"), "--out", str(out)])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert f"--out {out}" in err and words in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("name", ["summary.json", "config.json"])
def test_a_corrupt_record_is_named_before_anything_runs(tmp_path, cache, capsys, name):
    args = small(tmp_path, cache, "--settings", "chameleon", "--arms", "mamba", "--max-steps", "2")
    assert main(args) == 0
    path = trained_folder(tmp_path / "runs", "chameleon", "mamba") / name
    path.write_text('{"setting": "chameleon", "arm"')
    before = path.read_text()
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "JSON" in err and "Traceback" not in err
    assert path.read_text() == before


def test_ablation_plans_the_projection_subsets_beside_mamba_and_mom():
    runs = plan(["chameleon"], ["mamba", "mom"], [0], "basic", "chameleon")
    names = [r.variant for r in runs]
    assert names[:2] == ["mom", "mamba"] and len(names) == 2 + len(ablation_variants("mom")) == 2 + 6
    assert "mom-in_proj+out_proj" in names and "mom-x_proj+dt_proj" in names and "mom-dt_proj" in names
    full = plan(["transfusion"], ["mamba"], [0, 1], "full", "chameleon")
    assert len(ablation_variants("mom", full=True)) == 14 and len({r.decouple for r in full if r.decouple}) == 14
    assert len(full) == 2 + 2 * (2 + 14)  # transfusion mamba x 2 seeds; chameleon mamba, mom, 14 variants x 2
    mot = plan(["chameleon"], [], [0], "basic", "chameleon", ablation_arm="mot")
    assert [r.variant for r in mot][:2] == ["transformer", "mot"] and "mot-mlp+norm" in [r.variant for r in mot]


def test_plan_puts_the_longest_runs_of_a_setting_first():
    """Mamba-family before transformer-family, sparse before dense, seeds innermost, settings outermost."""
    runs = plan(["transfusion", "chameleon"], ["transformer", "mamba", "mot", "mom"], [0, 1], None, "chameleon")
    order = [(r.setting, r.arm, r.seed) for r in runs]
    arms = ["mom", "mamba", "mot", "transformer"]
    assert order == [(s, a, seed) for s in ("transfusion", "chameleon") for a in arms for seed in (0, 1)]


def test_the_plan_orders_families_by_their_cpu_step_cost_not_their_names(monkeypatch):
    monkeypatch.setattr(type(ARMS["transformer"].family), "cpu_step_cost", 2.0)
    runs = plan(["chameleon"], ["mamba", "mom", "transformer", "mot"], [0], None, "chameleon")
    assert [r.arm for r in runs] == ["mot", "transformer", "mom", "mamba"]


def test_ablation_runs_train_their_subset(tmp_path, cache):
    args = small(tmp_path, cache, "--settings", "chameleon", "--arms", "mamba", "--max-steps", "2", "--ablation")
    assert main(args) == 0
    variant = trained_folder(tmp_path / "runs", "chameleon", "mom-in_proj+out_proj")
    config = json.loads((variant / "config.json").read_text())
    assert config["arm"] == "mom" and config["model"]["decouple"] == ["in_proj", "out_proj"]
    assert (trained_folder(tmp_path / "runs", "chameleon", "mom") / "summary.json").exists()
    assert variant.parents[1] == trained_folder(tmp_path / "runs", "chameleon", "mom").parents[1]  # one recipe
    assert "blation" in (tmp_path / "results" / "report.md").read_text()


def trained_state(folder):
    """A finished run's metrics (every logged number but the clock and the speed) and its final weights."""
    with open(folder / "metrics.csv", newline="") as f:
        rows = [{k: v for k, v in r.items() if k not in (WALL, TOKENS_PER_S)}
                for r in csv.DictReader(f)]  # fmt: skip
    weights = load_checkpoint(folder / "checkpoints" / "last.ckpt", map_location="cpu")["state_dict"]
    return rows, weights


def test_parallel_runs_are_bit_identical_to_runs_trained_alone(tmp_path, cache):
    """Two single-threaded runs side by side (the CPU default) give exactly the runs trained one after the other in
    this process on all its threads: same metrics, same weights; each worker's output goes to its run's train.log."""
    args = ["--settings", "chameleon", "--arms", "mamba,mot", "--max-steps", "4"]
    assert main([*small(tmp_path / "side", cache, *args), "--parallel", "2"]) == 0
    assert main([*small(tmp_path / "alone", cache, *args), "--parallel", "1"]) == 0
    for arm in ("mamba", "mot"):
        side, alone = (trained_folder(tmp_path / k / "runs", "chameleon", arm) for k in ("side", "alone"))
        assert read_summary(side).threads == 1 and read_summary(alone).threads == torch.get_num_threads()
        (side_rows, side_weights), (alone_rows, alone_weights) = trained_state(side), trained_state(alone)
        assert side_rows == alone_rows and len(side_rows) > 4
        assert side_weights.keys() == alone_weights.keys()
        assert all(torch.equal(side_weights[k], alone_weights[k]) for k in side_weights), arm
        assert (side / "train.log").exists()
    meta = json.loads((tmp_path / "side" / "results" / "comparison.json").read_text())["meta"]
    assert meta["parallel"] == 2 and meta["threads_per_run"] == max(1, schedule_module.cpu_cores() // 2)


def test_underscores_name_the_same_flags_as_hyphens():
    """train.py's spelling works in compare.py: --max_steps is --max-steps, --no_samples is --no-samples."""
    hyphens = build_parser().parse_args(["--max-steps", "7", "--val-every", "7", "--no-samples", "--lr", "0.01"])
    underscores = build_parser().parse_args(["--max_steps", "7", "--val_every", "7", "--no_samples", "--lr", "0.01"])
    assert vars(hyphens) == vars(underscores) and hyphens.max_steps == 7 and hyphens.no_samples is True


def test_the_default_comparison_is_six_seeds_of_every_arm_in_every_setting():
    c = plan_comparison(build_parser().parse_args([]))
    assert len(c.runs) == 3 * 4 * 6 and {s.seed for s in c.runs} == set(range(6))
    assert c.recipe.max_steps * c.data["batch_size"] * c.data["seq_len"] == 204_800  # tokens per run
    assert len(plan_comparison(build_parser().parse_args(["--seeds", "1"])).runs) == 12


def test_auto_schedule_is_one_single_threaded_run_per_core(monkeypatch):
    monkeypatch.setattr(schedule_module, "cpu_cores", lambda: 2)
    assert schedule("auto", "cpu", None, None) == (2, 1)
    assert schedule("1", "cpu", None, None) == (1, 2)
    assert schedule("auto", "gpu", None, None) == (1, None)
    assert schedule("4", "gpu", None, None) == (4, None)
    assert schedule("auto", "cpu", 2, "ddp") == (1, None)
    monkeypatch.setattr(schedule_module, "cpu_cores", lambda: 8)
    assert schedule("auto", "cpu", None, None) == (8, 1) and schedule("2", "cpu", None, None) == (2, 4)


@pytest.mark.parametrize("value", ["0", "two", "-1"])
def test_bad_parallel_is_refused_before_anything_runs(tmp_path, capsys, value):
    with pytest.raises(SystemExit) as exc:
        main(["--root", str(tmp_path / "runs"), "--out", str(tmp_path / "results"), "--parallel", value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--parallel" in err and repr(value) in err and "auto" in err
    assert not (tmp_path / "runs").exists()


def test_ctrl_c_stops_parallel_runs_resumably(tmp_path, cache):
    """SIGINT to a comparison training two runs side by side: it forwards the interrupt to the workers, which record
    their runs as interrupted; it exits 130 and the same command then finishes both, every step logged once."""
    # A budget no run can finish while the other worker is still starting (spawning a worker takes seconds on CI).
    args = small(tmp_path, cache, "--settings", "chameleon", "--arms", "mamba,mom", "--max-steps", str(STEPS_CTRL_C),
                 "--parallel", "2")  # fmt: skip
    command = [sys.executable, "experiments/compare.py", *args]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    c = plan_comparison(build_parser().parse_args(args))
    folders = {spec.arm: c.folder(spec) for spec in c.runs}
    deadline = time.monotonic() + 300
    while not all((folders[arm] / "checkpoints" / "last.ckpt").exists() for arm in ("mamba", "mom")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 130, output
    assert {read_summary(folders[arm]).status for arm in ("mamba", "mom")} == {"interrupted"}, output
    assert main(args) == 0
    for arm in ("mamba", "mom"):
        assert read_summary(folders[arm]).status == "finished"
        with open(folders[arm] / "metrics.csv", newline="") as f:
            steps = [int(r["step"]) for r in csv.DictReader(f) if r["train/loss"]]
        assert steps == list(range(STEPS_CTRL_C))


def test_the_twin_arm_is_its_dense_arm_with_other_initial_weights_reported_as_a_null_control(tmp_path, cache):
    """mamba_twin trains the dense Mamba of its seed's batches from other initial weights, is paired with Mamba like
    a sparse arm, and the report gives it the null-control section with its count of false positives."""
    args = small(tmp_path, cache, "--settings", "chameleon", "--arms", "mamba,mamba_twin", "--seeds", "3",
                 "--max-steps", "4")  # fmt: skip
    assert main(args) == 0
    for seed in range(3):
        dense, twin = (trained_folder(tmp_path / "runs", "chameleon", v, seed) for v in ("mamba", "mamba_twin"))
        assert read_summary(twin).batch_order == read_summary(dense).batch_order
        assert json.loads((twin / "config.json").read_text())["model"]["init_seed_offset"] == 10_000
        with open(dense / "metrics.csv", newline="") as f, open(twin / "metrics.csv", newline="") as g:
            first = [next(r for r in csv.DictReader(h) if r["train/loss"])["train/loss"] for h in (f, g)]
        assert first[0] != first[1]  # other initial weights, the same first batch
    text = (tmp_path / "results" / "report.md").read_text()
    null = text.split("## Null control: each dense arm against its twin", 1)[1].split("\n## ", 1)[0]
    assert "Mamba vs Mamba (null): loss gap" in null and re.search(r"This run: \*\*\d+ of \d+\*\* twin cells", null)
    assert "Mamba twin" not in text.split("## Verdict", 1)[1].split("\n## ", 1)[0]
