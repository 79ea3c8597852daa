"""Pairs over seeds with known answers: the dense curve's end flags, censored seeds counted with their bound, the
verdict and FLOPs-to-match's word each from its own interval, Holm's adjustment over a summary."""

import math

import numpy as np
import pandas as pd
import pytest

from analysis.pairs import IDENTITY, curve_end, summarise
from analysis.results import Curve
from analysis.tables import multiplicity_text


def curve(loss: np.ndarray) -> Curve:
    steps = np.arange(1, len(loss) + 1, dtype=np.float64) * 20
    return Curve(steps=steps, flops=steps * 1e9, wall=steps * 0.1, loss=np.asarray(loss, dtype=np.float64))


def test_curve_end_steep_flat_or_neither():
    """Over the last doubling of FLOPs: steep when the loss still falls by more than 5% of its final value; flat
    when its fall is within two standard errors of a line fitted there, or the curve turned up; neither between."""
    x = np.log(np.arange(1, 11))
    assert curve_end(curve(6.0 - 0.8 * x)) == "steep"  # 0.55 nats per doubling at a final 4.2
    assert curve_end(curve(3.0 - 0.05 * x)) == ""  # 0.035 nats per doubling at 2.9: 1.2%
    noise = np.random.default_rng(0).normal(0, 0.02, 10)
    assert curve_end(curve(3.0 - 0.01 * x + noise)) == "flat"
    assert curve_end(curve(3.0 - 0.4 * x + 0.1 * x**2)) == "flat"  # turns up at the end


def rows(gaps: list[float], fractions: list[float | None], at_least: list[float], variant: str = "mom") -> list[dict]:
    identity = dict(zip(IDENTITY, ("chameleon", "train", "", "text", "", variant, variant, "mamba"), strict=True))
    return [
        identity
        | {"seed": seed, "reached": f is not None, "fraction": f, "at_least": b, "loss_gap": g}
        | {"sparse_final_loss": 3.0, "dense_final_loss": 3.0 - g, "wall_clock_fraction": f, "dense_end": "steep"}
        for seed, (g, f, b) in enumerate(zip(gaps, fractions, at_least, strict=True))
    ]


def test_summary_verdicts_censoring_and_holm():
    """The verdict comes from the gap's interval; FLOPs-to-match is a geometric mean whose word comes from its log
    interval; a seed that never reached is counted with its bound; Holm adjusts the report's p-values together."""
    frame = pd.DataFrame(
        rows([-0.10, -0.05, -0.08], [0.5, 0.6, 0.55], [0.5, 0.6, 0.55])
        + rows([-0.02, 0.03, -0.01], [0.9, None, 1.0], [0.9, 1.2, 1.0], variant="mom_hash")
    )
    summary = summarise(frame).set_index("variant")
    mom, control = summary.loc["mom"], summary.loc["mom_hash"]
    assert mom["verdict"] == "better" and mom["fraction_verdict"] == "fewer FLOPs"
    assert mom["fraction_mean"] == pytest.approx((0.5 * 0.6 * 0.55) ** (1 / 3))
    assert control["verdict"] == "no significant difference" and control["fraction_verdict"] == ""
    assert control["n_reached"] == 2 and pd.isna(control["fraction_mean"])
    assert control["fraction_at_least"] == pytest.approx((0.9 * 1.2 * 1.0) ** (1 / 3))
    assert mom["dense_end"] == "steep 3/3"
    p = sorted([mom["loss_gap_p"], control["loss_gap_p"]])
    assert sorted([mom["loss_gap_p_holm"], control["loss_gap_p_holm"]]) == pytest.approx(
        [2 * p[0], max(2 * p[0], p[1])]
    )
    assert mom["loss_gap_p"] == pytest.approx(0.034, abs=1e-3) and not math.isnan(control["loss_gap_p"])


def test_the_tests_line_counts_verdicts_and_names_each_survivor_with_its_loss_kind():
    """Two cells that differ only in train / val are two tests, and a survivor of Holm is named with its kind."""
    train = rows([-0.10, -0.11, -0.105], [0.5, 0.6, 0.55], [0.5, 0.6, 0.55])
    val = [r | {"kind": "val", "valset": "val"} for r in rows([-0.1, 0.02, -0.05], [0.9, 1.0, 0.95], [0.9, 1.0, 0.95])]
    text = multiplicity_text(summarise(pd.DataFrame(train + val)))
    assert text.startswith("2 verdicts are tests") and "1 say *better* or *worse*" in text
    assert text.endswith(": chameleon text, training loss, MoM vs Mamba (better).")
