"""The report statistics on hand-computed values."""

from __future__ import annotations

import math

import pytest

from rmrouter.stats import paired_test, proportion_se


def test_proportion_se():
    assert proportion_se(0.5, 100) == pytest.approx(0.05)
    assert proportion_se(1.0, 10) == 0.0
    assert math.isnan(proportion_se(0.5, 0))


def test_paired_test_on_hand_computed_values():
    # differences 1, 0, 0, 1: mean 0.5, sample sd 0.57735, se 0.288675, z 1.7321, two-sided p 0.0833
    test = paired_test([1, 1, 0, 1], [0, 1, 0, 0])
    assert test.rows == 4 and test.mean == 0.5
    assert test.se == pytest.approx(0.288675, abs=1e-6)
    assert test.p_value == pytest.approx(math.erfc(1.7320508 / math.sqrt(2)), rel=1e-6)
    assert test.p_value == pytest.approx(0.0833, abs=1e-4)
    assert test.verdict() == "no difference"


def test_paired_test_edge_cases_and_verdicts():
    same = paired_test([1, 0, 1], [1, 0, 1])
    assert same.p_value == 1.0 and same.verdict() == "no difference"
    always = paired_test([1, 1, 1], [0, 0, 0])
    assert always.p_value == 0.0 and always.verdict() == "above"
    many = paired_test([0.0] * 80 + [1.0] * 20, [1.0] * 60 + [0.0] * 40)
    assert many.mean == pytest.approx(-0.4) and many.p_value < 1e-6 and many.verdict() == "below"
    with pytest.raises(ValueError, match="one value per row"):
        paired_test([1, 0], [1])
    with pytest.raises(ValueError, match="at least 2 rows"):
        paired_test([1], [0])
