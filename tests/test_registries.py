"""The arm and settings registries are the one definition everything reads: an arm and a setting registered in this
test alone are planned by compare.py, trained, counted, paired, tabled and drawn, with no other file changed."""

import pytest
from matplotlib.colors import to_rgba

from analysis.pairs import match_runs
from analysis.plots import curve_figure
from analysis.results import evaluation_grid, load_results
from analysis.run_record import read_config, read_summary
from datamodules.settings import SETTINGS, Setting, get_setting, register_setting
from experiments.compare import main
from models import ARMS, MAMBA, Arm, ModelConfig, get_arm, register_arm
from tests.helpers import trained_folder
from tests.test_compare import small

ARM = Arm("mom_io", MAMBA, "MoM-io", "tab:pink", dense="mamba", routing="modality", decouple=("in_proj", "out_proj"))
SETTING = Setting("transfusion_speech", ("text", "image", "speech"), "continuous", paper_vocab=32000)


@pytest.fixture(scope="module")
def registered():
    register_arm(ARM)
    register_setting(SETTING)
    yield
    del ARMS[ARM.name], SETTINGS[SETTING.name]


@pytest.fixture(scope="module")
def trained(registered, tmp_path_factory, small_cache):
    """mamba and the new arm trained in the new setting (4 steps): the folder holding runs/ and results/."""
    tmp = tmp_path_factory.mktemp("registries")
    args = small(tmp, small_cache, "--settings", SETTING.name, "--arms", "mamba,mom_io", "--max-steps", "4")
    assert main(args) == 0
    return tmp


def runs(tmp) -> dict:
    return {arm: trained_folder(tmp / "runs", SETTING.name, arm) for arm in ("mom_io", "mamba")}


def test_a_new_arm_trains_in_a_new_setting_with_what_they_define(trained):
    folders = runs(trained)
    sparse, dense = (read_summary(folders[arm]) for arm in ("mom_io", "mamba"))
    assert sparse.status == dense.status == "finished" and sparse.steps == 4
    config = read_config(folders["mom_io"])
    assert config["model"]["decouple"] == ["in_proj", "out_proj"] and config["model"]["n_modalities"] == 3
    # The setting: continuous image patches with a diffusion loss, and speech beside them.
    assert {"val/loss_text", "val/loss_image", "val_real_speech/loss_speech"} <= set(sparse.final_val_loss)
    assert config["model"]["patch_dim"] > 0


def test_a_new_arm_is_counted_and_costs_its_dense_partners_flops(trained):
    sparse, dense = (read_summary(folder) for folder in runs(trained).values())
    assert sparse.flops_per_token == pytest.approx(sparse.flops_per_token_analytic, rel=1e-9)
    assert sparse.flops_per_token_analytic == dense.flops_per_token_analytic
    assert sparse.params_active == dense.params_total < sparse.params_total


def test_a_new_arm_and_setting_are_reported_under_their_label_units_and_colour(trained):
    report = (trained / "results" / "report.md").read_text()
    assert "MoM-io vs Mamba" in report and f"| {SETTING.name} | image | diffusion MSE |" in report
    results = load_results(trained / "results")
    grid = evaluation_grid(results)
    figure = curve_figure(results, grid, match_runs(results, grid), SETTING.name)
    colours = {line.get_color() for ax in figure.axes for line in ax.get_lines()}
    assert to_rgba("tab:pink") in {to_rgba(c) for c in colours}


def test_registries_check_what_they_are_given(registered):
    """Registration refuses a clash or an inconsistent record, naming the problem; lookups list the valid names."""
    cases = [
        (lambda: register_arm(ARM), "registered already"),
        (lambda: register_arm(Arm("x", MAMBA, "X", "k", dense="transformer", routing="modality")), "dense partner"),
        (lambda: register_arm(Arm("x", MAMBA, "X", "k", routing="modality")), "needs a dense partner"),
        (lambda: register_arm(Arm("x", MAMBA, "X", "k", dense="mom")), "dense partner 'mom'"),
        (lambda: register_arm(Arm("x", MAMBA, "X", "k", dense="mamba_twin")), "dense partner 'mamba_twin'"),
        (lambda: register_arm(Arm("x", MAMBA, "X", "k", dense="mamba", decouple=("in_proj",))), "decouples nothing"),
        (lambda: register_arm(Arm("x", MAMBA, "X", "k", dense="mamba", routing="modality", decouple=("wq",))), "wq"),
        (lambda: register_arm(Arm("x", MAMBA, "X", "k", routing="learned")), "routing 'learned'"),
        (lambda: register_setting(Setting("x", ("text", "speech"), "discrete", 1)), "first k >= 2"),
        (lambda: register_setting(Setting("x", ("text", "image"), "pixels", 1)), "continuous"),
        (lambda: get_arm("rwkv"), "unknown arm 'rwkv'.*'mom_io'"),
        (lambda: get_setting("audio"), "unknown setting 'audio'.*'transfusion_speech'"),
    ]
    for make, match in cases:
        with pytest.raises(ValueError, match=match):
            make()
    assert "x" not in ARMS and "x" not in SETTINGS
    assert ModelConfig(arch="mom_io").decouple == ("in_proj", "out_proj")
