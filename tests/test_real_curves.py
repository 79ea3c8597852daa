"""Null and known-answer tests of the matching rule on real curves: every dense curve of a default comparison
(tests/data/real_curves.csv, written by tests/real_curves.py) against itself is exactly 100%, and against a copy of
itself on a FLOPs axis scaled by k, k; none is withheld or "never reached". Curves that flatten or turn up at the
end (speech, held-out images) are among them: a target taken at the last evaluation failed both tests there."""

import numpy as np
import pandas as pd
import pytest

from analysis.matching import compare_curves
from tests.real_curves import COLUMNS, FIXTURE

CURVES = [c.sort_values("step") for _, c in pd.read_csv(FIXTURE, keep_default_na=False).groupby(COLUMNS[:7])]


def test_the_fixture_covers_every_setting_loss_and_dense_family():
    frame = pd.concat(CURVES)
    assert set(frame["setting"]) == {"transfusion", "chameleon", "three_modality"}
    assert set(frame["arm"]) == {"mamba", "transformer"} and set(frame["kind"]) == {"train", "val"}
    assert {"text", "image", "speech"} <= set(frame["modality"]) and len(CURVES) >= 100


def test_every_real_curve_matches_itself_at_exactly_one():
    for c in CURVES:
        m = compare_curves(c["flops"], c["loss"], c["flops"], c["loss"])
        assert (m.fraction, m.loss_gap) == (1.0, 0.0), c.iloc[0].to_dict()


@pytest.mark.parametrize("k", [0.5, 0.8])
def test_every_real_curve_against_a_scaled_copy_gives_k(k):
    """The same losses at k times the FLOPs: FLOPs-to-match k (within 2%; it is exact but for rounding), never
    withheld, never "not reached"."""
    answers = np.array([compare_curves(c["flops"], c["loss"], k * c["flops"], c["loss"]).fraction for c in CURVES])
    assert answers == pytest.approx(np.full(len(CURVES), k), rel=0.02)
