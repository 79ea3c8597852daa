"""The budget-matched FLOPs-to-match: the rule on final losses with known answers (and its monotone fit against
scipy's isotonic regression), then over seeds on synthetic run folders at three budgets whose answer is known."""

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import isotonic_regression

from analysis.budgets import budget_folder, budget_pairs, run_finals, summarise_budgets
from analysis.matching import budget_match, pool_adjacent_violators
from analysis.report import write_report
from analysis.results import load_results
from tests.test_report import STEPS, write_comparison, write_run


def law(budget: float) -> float:
    """A final loss linear in log-budget: the interpolation in log-budget is exact on it."""
    return 3.0 - 0.5 * math.log(budget)


BUDGETS = [0.4, 0.6, 1.0]


@pytest.mark.parametrize("at", [0.4, 0.45, 0.5, 0.6, 0.8, 1.0])
def test_the_budget_at_which_the_sparse_fit_meets_the_dense_final_loss(at):
    match = budget_match(1.0, law(at), BUDGETS, [law(b) for b in BUDGETS])
    assert match.status == "matched" and match.fraction == pytest.approx(at, rel=1e-12)


def test_units_and_order_do_not_matter():
    """Budgets in FLOPs, given in any order: the same fraction."""
    flops = [2e12 * b for b in BUDGETS]
    shuffled = budget_match(2e12, law(0.5), flops[::-1], [law(b) for b in BUDGETS][::-1])
    assert shuffled.fraction == pytest.approx(0.5, rel=1e-12)


def test_beyond_the_budgets_it_gives_a_bound_never_an_extrapolation():
    finals = [law(b) for b in BUDGETS]
    assert budget_match(1.0, law(1.3), BUDGETS, finals)[1:3] == ("not reached", 1.0)
    assert budget_match(1.0, law(0.3), BUDGETS, finals)[1:3] == ("below", 0.4)
    assert budget_match(1.0, law(0.3), BUDGETS, finals).fraction is None


def test_a_crossing_where_the_finals_turned_up_is_withheld():
    """Finals 3.5, 3.2, 3.25, 3.0: the third run ended above the second, so the two pool to 3.225, and a crossing
    beside the pooled block (a target of 3.4 or 3.1) is withheld; without the violation both are matched."""
    turned_up, monotone, budgets = [3.5, 3.2, 3.25, 3.0], [3.5, 3.2, 3.15, 3.0], [0.4, 0.6, 0.8, 1.0]
    assert pool_adjacent_violators(turned_up)[0].tolist() == pytest.approx([3.5, 3.225, 3.225, 3.0])
    for target in (3.4, 3.1):
        assert budget_match(1.0, target, budgets, turned_up).status == "flat"
        assert budget_match(1.0, target, budgets, monotone).status == "matched"
    assert budget_match(1.0, 2.9, budgets, turned_up).status == "not reached"


@pytest.mark.parametrize("seed", range(5))
def test_the_monotone_fit_is_isotonic_regression(seed):
    values = np.random.default_rng(seed).normal(size=9).cumsum()
    fit, blocks = pool_adjacent_violators(values)
    np.testing.assert_allclose(fit, isotonic_regression(values, increasing=False).x, rtol=0, atol=1e-12)
    assert (np.diff(fit) <= 0).all() and len(set(blocks)) == len(set(np.round(fit, 12)))


def test_bad_input_says_what_is_wrong():
    with pytest.raises(ValueError, match="length >= 2"):
        budget_match(1.0, 3.0, [1.0], [3.0])
    with pytest.raises(ValueError, match="strictly increasing"):
        budget_match(1.0, 3.0, [0.5, 0.5], [3.2, 3.1])
    with pytest.raises(ValueError, match="finite"):
        budget_match(1.0, float("nan"), BUDGETS, [3.2, 3.1, 3.0])


def test_over_seeds_on_run_folders_at_three_budgets(tmp_path):
    """Chameleon, two seeds: dense Mamba at the full budget (its own shorter runs too), MoM at 40%, 60% and 100% of
    it with a speedup of 2 (any loss at half the FLOPs: 50%) and 1.25 (80%) on the two seeds' text, never on image
    (not reached), and the twin, which is dense Mamba again (100%). Validation losses are read at each run's last
    step, so the answers are exact."""
    folders = []
    for fraction in BUDGETS:
        steps, root = round(STEPS * fraction), tmp_path / f"b{fraction}"
        runs = []
        for seed, speedup in ((0, 2.0), (1, 1.25)):
            runs.append(write_run(root, "chameleon", "mamba", seed, steps=steps))
            runs.append(write_run(root, "chameleon", "mamba_twin", seed, steps=steps))
            runs.append(write_run(root, "chameleon", "mom", seed, {"text": speedup, "image": 0.5}, steps=steps))
        folders.append(write_comparison(root / "results", runs, ["chameleon"], None, [0, 1]))
    finals = [run_finals(load_results(folder)) for folder in folders]
    pairs = budget_pairs(pd.concat(finals, ignore_index=True))
    val = pairs[(pairs["kind"] == "val") & (pairs["source"].fillna("") == "")]
    text = val[(val["variant"] == "mom") & (val["modality"] == "text")].set_index("seed")
    assert text["fraction"].to_dict() == pytest.approx({0: 0.5, 1: 0.8}, rel=1e-9)
    assert set(val[(val["variant"] == "mom") & (val["modality"] == "image")]["status"]) == {"not reached"}
    assert val[val["variant"] == "mamba_twin"]["fraction"].tolist() == pytest.approx([1.0] * 4, rel=1e-9)
    assert set(val["budgets"]) == {"0.4 0.6 1"}
    summary = summarise_budgets(val).set_index(["variant", "modality"])
    mean, low, high = summary.loc[("mom", "text"), ["fraction_mean", "fraction_low", "fraction_high"]]
    assert mean == pytest.approx(math.sqrt(0.5 * 0.8), rel=1e-9) and low < mean < high
    assert summary.loc[("mom", "image"), "statuses"] == "2 not reached (≥ 100%)"
    assert summary.loc[("mom", "image"), "n_matched"] == 0 and np.isnan(summary.loc[("mom", "image"), "fraction_mean"])


def test_the_report_sets_the_budget_matched_measure_beside_the_within_run_one(tmp_path):
    """A comparison with its shorter budgets in `<out>/budgets/<steps>steps/` (as compare.py --budgets writes them):
    the report's section gives MoM's text at the geometric mean of 50% and 80% over the two seeds, the twin at 100%,
    the image *not reached*, and both CSVs."""
    out = tmp_path / "results"
    for fraction in BUDGETS:
        steps, root = round(STEPS * fraction), tmp_path / f"b{fraction}"
        runs = []
        for seed, speedup in ((0, 2.0), (1, 1.25)):
            if fraction == 1.0:
                runs.append(write_run(root, "chameleon", "mamba", seed, steps=steps))
            runs.append(write_run(root, "chameleon", "mamba_twin", seed, steps=steps))
            runs.append(write_run(root, "chameleon", "mom", seed, {"text": speedup, "image": 0.5}, steps=steps))
        folder = write_comparison(out if fraction == 1.0 else budget_folder(out, steps), runs, ["chameleon"], None,
                                  [0, 1])  # fmt: skip
        comparison = json.loads((folder / "comparison.json").read_text())
        comparison["meta"]["max_steps"] = steps
        (folder / "comparison.json").write_text(json.dumps(comparison))
    report = write_report(out).read_text()
    section = report.split("## Budget-matched FLOPs-to-match")[1].split("\n## ")[0]
    assert f"trained for {round(STEPS * 0.4)}, {round(STEPS * 0.6)} steps" in section
    rows = {tuple(c.strip() for c in line.strip("|").split("|")[:3]): line for line in section.splitlines()
            if line.startswith("| chameleon")}  # fmt: skip
    mean = 100 * math.sqrt(0.5 * 0.8)
    assert f"{mean:.1f}% [" in rows[("chameleon", "val text", "MoM vs Mamba")]
    assert "2 matched" in rows[("chameleon", "val text", "MoM vs Mamba")]
    assert "100.0% [100.0%, 100.0%]" in rows[("chameleon", "val image", "Mamba vs Mamba (null)")]
    assert "2 not reached (≥ 100%)" in rows[("chameleon", "val image", "MoM vs Mamba")]
    summary = pd.read_csv(out / "budget_matched_summary.csv")
    assert len(pd.read_csv(out / "budget_matched.csv")) == 2 * len(summary)  # two seeds per cell


def test_a_report_without_shorter_budgets_has_no_such_section(tmp_path):
    runs = [write_run(tmp_path, "chameleon", arm, seed) for arm in ("mamba", "mom") for seed in (0, 1)]
    report = write_report(write_comparison(tmp_path / "results", runs, ["chameleon"], None, [0, 1])).read_text()
    assert "## Budget-matched" not in report and "--budgets 0.4,0.6" in report
    assert not (tmp_path / "results" / "budget_matched.csv").exists()
