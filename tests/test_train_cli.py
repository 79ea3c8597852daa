"""experiments/train.py: shipped YAMLs parse, Trainer flags pass through, bad names fail, debug runs end to end."""

import json
import re
from pathlib import Path

import pytest
import yaml

from analysis.run_record import Summary
from experiments import train
from experiments.compare_cli import build_parser, plan_comparison
from experiments.recipes import RunRequest


def as_stored(value):
    """A value as YAML writes it: tuples as lists."""
    return json.loads(json.dumps(value))


CONFIGS = sorted((Path(__file__).parents[1] / "experiments" / "configs").glob("*.yaml"))


@pytest.fixture
def captured(monkeypatch):
    calls = []
    finished = Summary("chameleon", "mom", "mom", "tiny", 0, status="finished")
    monkeypatch.setattr(train, "train_run", lambda request: calls.append(vars(request)) or finished)
    return calls


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_reaches_the_run_with_its_values(path, captured, monkeypatch):
    """Each YAML under experiments/configs is accepted by the CLI, and the run it starts trains with every value the
    YAML sets (the GPU configs too: the check of the Trainer flags against this machine, tested below, is left out
    here)."""
    monkeypatch.setattr(train, "check_trainer", lambda flags: None)
    train.main(["--config", str(path)])
    (kw,) = captured
    config = yaml.safe_load(path.read_text())
    for key in ("setting", "arm", "scale", "seed", "max_steps", "val_every"):
        assert kw[key] == config[key], key
    assert str(kw["root"]) == config["root"]
    resolved = {"data": kw["data"], "module": kw["module"], "model": kw["module"]["model_overrides"] or {},
                "trainer": kw["trainer"]}  # fmt: skip
    for section, values in resolved.items():
        for key, value in config.get(section, {}).items():
            assert as_stored(values[key]) == value, f"{section}.{key}"


def test_hyphens_and_underscores_name_the_same_options(captured):
    """compare.py's spelling works in train.py: --max-steps is --max_steps, --data.val-sequences is
    --data.val_sequences."""
    train.main(
        ["--setting", "chameleon", "--arm", "mom", "--max-steps", "7", "--val-every", "7", "--data.val-sequences", "5"]
    )
    train.main(
        ["--setting", "chameleon", "--arm", "mom", "--max_steps", "7", "--val_every", "7", "--data.val_sequences", "5"]
    )
    hyphens, underscores = ({k: v for k, v in kw.items() if k != "trainer"} for kw in captured)  # a progress bar each
    assert hyphens == underscores and hyphens["max_steps"] == 7 and hyphens["data"]["val_sequences"] == 5


def test_trainer_flags_pass_through_and_only_when_set(captured):
    """--trainer.* flags reach the Trainer; unset ones are left to the run's own defaults."""
    train.main(
        [
            "--setting",
            "chameleon",
            "--arm",
            "mot",
            "--trainer.devices",
            "2",
            "--trainer.strategy",
            "ddp",
            "--trainer.precision",
            "32-true",
            "--module.lr",
            "0.001",
        ]
    )
    (kw,) = captured
    bar = kw["trainer"].pop("callbacks")
    assert kw["trainer"] == {"devices": "2", "strategy": "ddp", "precision": "32-true", "enable_progress_bar": True}
    assert [type(b) for b in bar] == [train.LossProgressBar]  # Lightning reads "2" as 2
    assert kw["module"]["lr"] == 0.001 and kw["arm"] == "mot"


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--setting", "dalle", "--arm", "mom"], "unknown setting 'dalle'"),
        (["--setting", "chameleon", "--arm", "rwkv"], "unknown arm 'rwkv'"),
        (["--setting", "chameleon", "--arm", "mom", "--max_steps", "0"], "--max_steps must be >= 1; got 0"),
        (["--setting", "chameleon", "--arm", "mom", "--val_every", "300"], r"at most --max_steps \(200\).*got 300"),
        (["--setting", "chameleon", "--arm", "mom", "--val_every", "0"], "--val_every must be >= 1"),
        (
            ["--setting", "chameleon", "--arm", "mom", "--trainer.precision", "garbage"],
            "(?s)precision.*Given value: garbage",
        ),
        (
            ["--setting", "chameleon", "--arm", "mom", "--trainer.accelerator", "gpu"],
            "--accelerator gpu.*No supported gpu",
        ),
        (
            ["--setting", "chameleon", "--arm", "mom", "--trainer.strategy", "garbage"],
            "--strategy garbage.*invalid strategy",
        ),
        (["--setting", "chameleon", "--arm", "mom", "--data.seq_len", "-1"], "need seq_len >= 2.*-1"),
        (["--setting", "chameleon", "--arm", "mom", "--data.batch_size", "0"], "batch_size >= 1.*0"),
        (
            ["--setting", "chameleon", "--arm", "mom", "--model.d_model", "-1"],
            "d_model must be >= 1",
        ),
    ],
)
def test_unknown_names_fail_before_training(args, match, captured, capsys):
    """An unknown setting or arm, a budget that trains nothing or never validates, Trainer flags Lightning refuses
    on this machine, a data or model value its class refuses: the CLI stops with what is valid, nothing trains."""
    with pytest.raises(SystemExit):
        train.main(args)
    assert re.search(match, capsys.readouterr().err) and not captured


def test_debug_config_runs_end_to_end(tmp_path, capfd):
    """The debug YAML trains to its last step and writes a finished summary; the progress bar shows the losses."""
    summary = train.main(
        [
            "--config",
            str(CONFIGS[0].with_name("debug.yaml")),
            "--root",
            str(tmp_path / "runs"),
            "--data.cache_dir",
            str(tmp_path / "cache"),
        ]
    )
    assert summary.status == "finished" and summary.steps == 20
    shown = capfd.readouterr().out  # Lightning's bar writes to stdout
    assert "20/20" in shown and all(re.search(rf"\b{name}=\d+\.\d{{3}}", shown) for name in ("loss", "loss_text"))


def test_model_options_name_what_compares_model_flag_names_and_give_its_run_folder(captured, tmp_path):
    """train.py's --model.d_model 64 is compare.py's --model d_model=64: the same ModelConfig override, the same run
    folder; a model option left at the arm's own value is no override."""
    root = str(tmp_path)
    train.main(["--setting", "chameleon", "--arm", "mom", "--root", root, "--model.d_model", "64", "--model.d_state",
                "16", "--module.lr", "0.008"])  # fmt: skip
    (kw,) = captured
    assert kw["module"]["model_overrides"] == {"d_model": 64}
    args = ["--settings", "chameleon", "--arms", "mom", "--seeds", "1", "--root", root, "--model", "d_model=64"]
    c = plan_comparison(build_parser().parse_args(args))
    assert c.folder(c.runs[0]) == RunRequest(**{k: v for k, v in kw.items() if k != "trainer"}).folder
