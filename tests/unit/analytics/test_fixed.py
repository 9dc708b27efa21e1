"""Fixed-sample statistics against an independent implementation (statsmodels)."""

from __future__ import annotations

import numpy as np
import pytest
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import (
    proportion_confint,
    proportion_effectsize,
    proportions_ztest,
)

from streams.analytics import fixed

pytestmark = pytest.mark.unit

CASES = [(0, 10), (1, 10), (17, 250), (250, 250), (3, 4000), (412, 9_876)]


@pytest.mark.parametrize(("conversions", "exposures"), CASES)
def test_wilson_matches_statsmodels(conversions: int, exposures: int) -> None:
    # reference: statsmodels.stats.proportion.proportion_confint(method="wilson")
    low, high = fixed.wilson_interval(np.array(conversions), np.array(exposures))
    ref_low, ref_high = proportion_confint(conversions, exposures, alpha=0.05, method="wilson")
    assert float(low) == pytest.approx(ref_low, abs=1e-12)
    assert float(high) == pytest.approx(ref_high, abs=1e-12)


def test_wilson_of_nothing_is_nan() -> None:
    low, high = fixed.wilson_interval(np.array([0.0]), np.array([0.0]))
    assert np.isnan(low).all() and np.isnan(high).all()


@pytest.mark.parametrize(("c1", "n1", "c2", "n2"), [(17, 250, 30, 260), (50, 1000, 70, 1100),
                                                     (5, 40, 0, 35)])  # fmt: skip
def test_two_proportion_z_matches_statsmodels(c1: int, n1: int, c2: int, n2: int) -> None:
    # reference: statsmodels.stats.proportion.proportions_ztest (pooled variance, two-sided)
    z, p = fixed.two_proportion_z(np.array(c1), np.array(n1), np.array(c2), np.array(n2))
    ref_z, ref_p = proportions_ztest([c1, c2], [n1, n2])
    assert float(z) == pytest.approx(ref_z, rel=1e-10)
    assert float(p) == pytest.approx(ref_p, rel=1e-9)


def test_z_test_without_variance_is_nan_not_an_error() -> None:
    z, p = fixed.two_proportion_z(np.array([0, 3]), np.array([10, 0]), np.array([0, 1]),
                                  np.array([12, 5]))  # fmt: skip
    assert np.isnan(z).all() and np.isnan(p).all()


@pytest.mark.parametrize(("p1", "p2"), [(0.3, 0.2), (0.05, 0.041), (0.5, 0.5), (1.0, 0.0)])
def test_cohens_h_matches_statsmodels(p1: float, p2: float) -> None:
    # reference: statsmodels.stats.proportion.proportion_effectsize (Cohen's h)
    assert float(fixed.cohens_h(np.array(p1), np.array(p2))) == pytest.approx(
        proportion_effectsize(p1, p2), abs=1e-12
    )


def test_bh_matches_statsmodels_and_keeps_nan() -> None:
    # reference: statsmodels.stats.multitest.multipletests(method="fdr_bh")
    p = np.array([0.01, 0.04, np.nan, 0.03, 0.2, 0.0005])
    q = fixed.bh_q_values(p)
    finite = np.isfinite(p)
    np.testing.assert_allclose(q[finite], multipletests(p[finite], method="fdr_bh")[1], rtol=1e-12)
    assert np.isnan(q[~finite]).all()
