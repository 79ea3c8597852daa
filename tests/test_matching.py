"""FLOPs-to-match on constructed curves with known answers, smoothing, not-reached, intervals, bad input."""

import math

import numpy as np
import pytest

from analysis.matching import flops_to_match, mean_interval, smooth


def log_linear(flops: np.ndarray, speedup: float = 1.0) -> np.ndarray:
    """Loss linear in log-FLOPs; `speedup` k means the curve reaches any loss at 1/k of the FLOPs."""
    return 5.0 - 0.3 * np.log(flops * speedup)


@pytest.mark.parametrize("speedup", [1.25, 2.0, 2.87, 4.0])
def test_known_answer_without_smoothing(speedup):
    """A sparse curve that is the dense one shifted by k in FLOPs matches at exactly 1/k of the dense total."""
    flops = np.geomspace(1e12, 1e15, 37)
    result = flops_to_match(flops, log_linear(flops), flops, log_linear(flops, speedup), window=1)
    assert result == pytest.approx(1 / speedup, rel=1e-9)


def test_known_answer_with_smoothing_and_different_grids():
    """A trailing mean on both arms and a coarser sparse grid move the answer by at most a dense grid step."""
    dense_f = np.geomspace(1e12, 1e15, 61)
    sparse_f = np.geomspace(1e12, 1e15, 31)
    result = flops_to_match(dense_f, log_linear(dense_f), sparse_f, log_linear(sparse_f, 2.0), window=3)
    # The trailing mean of a log-linear curve lags by a fixed log-FLOPs offset, equal on both arms only if the grids
    # share one log spacing; with a 2x coarser sparse grid the lags differ by about one dense step.
    step = math.log(dense_f[1] / dense_f[0])
    assert abs(math.log(result * 2.0)) <= 2 * step


def test_never_reached_is_none_and_identical_is_one():
    """A sparse arm that never gets as low is None (not a number); an identical curve matches at 100%."""
    flops = np.geomspace(1e12, 1e14, 20)
    assert flops_to_match(flops, log_linear(flops), flops, log_linear(flops) + 0.01) is None
    assert flops_to_match(flops, log_linear(flops), flops, log_linear(flops)) == pytest.approx(1.0)


def test_match_at_first_evaluation_is_not_extrapolated():
    """If the sparse arm is already below target at its first evaluation, that evaluation's FLOPs is the answer."""
    flops = np.array([1.0, 2.0, 4.0, 8.0])
    assert flops_to_match(flops, [4.0, 3.0, 2.5, 2.0], flops, [1.0, 0.9, 0.8, 0.7], window=1) == 1.0 / 8.0


def test_smoothing_ignores_a_single_noisy_dip():
    """One noisy evaluation below target does not count as a match with window 3, but does without smoothing."""
    flops = np.arange(1, 11, dtype=float)
    dense = np.linspace(3.0, 2.0, 10)
    sparse = np.full(10, 2.5)
    sparse[3] = 1.9
    assert flops_to_match(flops, dense, flops, sparse, window=1) is not None
    assert flops_to_match(flops, dense, flops, sparse, window=3) is None
    assert smooth([1.0, 2.0, 3.0, 4.0], window=2).tolist() == [1.0, 1.5, 2.5, 3.5]


def test_mean_interval():
    """Mean with a Student-t 95% interval over seeds (known values), a single seed gives a zero-width interval."""
    mean, low, high = mean_interval([0.7, 0.8, 0.9])
    assert mean == pytest.approx(0.8)
    assert high - mean == pytest.approx(4.302652729911275 * 0.1 / math.sqrt(3))
    assert mean_interval([0.5]) == (0.5, 0.5, 0.5)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (([1, 2], [1.0], [1, 2], [1, 2]), "dense: flops and loss must be 1-D"),
        (([2, 1], [1, 1], [1, 2], [1, 1]), "dense: flops must be positive and strictly increasing"),
        (([1, 2], [1, float("nan")], [1, 2], [1, 1]), "dense: flops and loss must be finite"),
    ],
)
def test_bad_input(args, match):
    """Malformed curves fail with a message naming the arm and the problem."""
    with pytest.raises(ValueError, match=match):
        flops_to_match(*args)
