"""The small statistics every comparison in the reports uses: the standard error of a proportion and a paired test.

A claim is a comparison on the same rows with its noise: two methods judged on the same pairs are compared pair by
pair (`paired_test`), which removes the rows' shared difficulty from the noise, and every accuracy is shown with its
standard error (`proportion_se`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

SIGNIFICANCE = 0.05


def proportion_se(proportion: float, rows: int) -> float:
    """The standard error `sqrt(p (1 - p) / n)` of an accuracy `p` measured on `n` rows (NaN for no rows)."""
    if rows <= 0:
        return math.nan
    return math.sqrt(max(proportion * (1.0 - proportion), 0.0) / rows)


@dataclass(frozen=True)
class PairedTest:
    """A paired comparison of two methods on the same rows: `mean` of `a_i - b_i`, its standard error and p-value."""

    rows: int
    mean: float
    se: float
    p_value: float

    def verdict(self, alpha: float = SIGNIFICANCE) -> str:
        """`above`, `below`, or `no difference` (p >= alpha): a gap inside the noise is reported as none."""
        if not self.p_value < alpha:
            return "no difference"
        return "above" if self.mean > 0 else "below"


def paired_test(first: Sequence[float], second: Sequence[float]) -> PairedTest:
    """Two-sided paired test of `mean(first - second) = 0` over rows (per-row scores in [0, 1], e.g. right or not).

    The normal approximation of the paired t-test (`z = mean / (sd / sqrt(n))`), fine for the hundreds of rows the
    reports compare on. When every difference is 0 the methods agree on every row: p = 1. With a constant non-zero
    difference p = 0.
    """
    if len(first) != len(second):
        raise ValueError(f"a paired test needs one value per row from both methods, got {len(first)} and {len(second)}")
    rows = len(first)
    if rows < 2:
        raise ValueError(f"a paired test needs at least 2 rows, got {rows}")
    differences = [a - b for a, b in zip(first, second, strict=True)]
    mean = math.fsum(differences) / rows
    variance = math.fsum((d - mean) ** 2 for d in differences) / (rows - 1)
    se = math.sqrt(variance / rows)
    if se == 0.0:
        return PairedTest(rows, mean, 0.0, 1.0 if mean == 0.0 else 0.0)
    return PairedTest(rows, mean, se, math.erfc(abs(mean / se) / math.sqrt(2.0)))
