"""Paired drop statistics, on numbers a reader can check by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from resnest_deploy.stats import binom_cdf, clopper_pearson, images_needed, paired_drop, resolves, tango


def _outcomes(n: int, lost: int, gained: int, both_wrong: int = 0) -> tuple[np.ndarray, np.ndarray]:
    ref, cand = np.ones(n, bool), np.ones(n, bool)
    cand[:lost] = False
    ref[lost : lost + gained] = False
    ref[lost + gained : lost + gained + both_wrong] = cand[lost + gained : lost + gained + both_wrong] = False
    return ref, cand


def test_binomial_cdf_matches_the_sum_of_its_terms() -> None:
    for n, k, p in ((10, 3, 0.5), (25, 0, 0.1), (40, 17, 0.37), (899, 5, 0.004)):
        direct = sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k + 1))
        assert binom_cdf(k, n, p) == pytest.approx(direct, rel=1e-10, abs=1e-14)


def test_clopper_pearson_known_values() -> None:
    # 5 of 10: the textbook interval 0.187086 .. 0.812914
    low, high = clopper_pearson(5, 10)
    assert low == pytest.approx(0.187086, abs=1e-6) and high == pytest.approx(0.812914, abs=1e-6)
    # all successes: the lower bound solves p**n = 0.025, the upper is 1
    assert clopper_pearson(2, 2) == pytest.approx((0.025**0.5, 1.0), abs=1e-9)
    assert clopper_pearson(0, 4) == pytest.approx((0.0, 1 - 0.025**0.25), abs=1e-9)


def test_one_image_lost_of_100_mcnemar() -> None:
    """b=1, c=0: theta in [0.025, 1], so the drop is in [1 * (2 * 0.025 - 1), 1] = [-0.95, 1] points."""
    drop = paired_drop(*_outcomes(100, lost=1, gained=0, both_wrong=3), method="mcnemar")
    assert (drop.points, drop.n, drop.lost, drop.gained, drop.discordant) == (1.0, 100, 1, 0, 1)
    assert drop.low == pytest.approx(-0.95, abs=1e-9) and drop.high == pytest.approx(1.0, abs=1e-9)
    assert drop.p_value == 1.0
    assert str(drop) == "1 point (95% CI -0.95 to 1, 100 images, McNemar exact)"


def test_digits_sized_example_and_its_p_value_mcnemar() -> None:
    """899 images, 4 lost and 2 gained: 2/899 = 0.22 points; theta = 4/6 in CP [0.2228, 0.9567];
    p = 2 * P(X <= 2 | 6, 1/2) = 2 * 22/64 = 0.6875."""
    drop = paired_drop(*_outcomes(899, lost=4, gained=2, both_wrong=3), method="mcnemar")
    t_low, t_high = clopper_pearson(4, 6)
    assert drop.points == pytest.approx(100 * 2 / 899)
    assert drop.low == pytest.approx(100 * 6 * (2 * t_low - 1) / 899)
    assert drop.high == pytest.approx(100 * 6 * (2 * t_high - 1) / 899)
    assert t_low == pytest.approx(0.2228, abs=1e-4) and t_high == pytest.approx(0.9567, abs=1e-4)
    assert drop.p_value == pytest.approx(0.6875)
    assert str(drop) == "0.22 points (95% CI -0.37 to 0.61, 899 images, McNemar exact)"


def test_no_disagreement_is_not_a_point_interval_mcnemar() -> None:
    """0 discordant of 899: the drop is 0 but the interval is +-(1 - 0.025**(1/899)) = +-0.41 points."""
    drop = paired_drop(*_outcomes(899, 0, 0, both_wrong=5), method="mcnemar")
    bound = 100 * (1 - 0.025 ** (1 / 899))
    assert drop.points == 0 and drop.low == pytest.approx(-bound) and drop.high == pytest.approx(bound)
    assert str(drop) == "0 points (95% CI -0.41 to 0.41, 899 images, McNemar exact)"


def test_a_gain_is_a_negative_drop_mcnemar() -> None:
    """b=0, c=3 of 50: theta in [0, 1 - 0.025**(1/3)], so the drop is in [-6, 6 * (2 * 0.7076 - 1)];
    p = 2 * (1/2)**3 = 0.25."""
    drop = paired_drop(*_outcomes(50, lost=0, gained=3), method="mcnemar")
    assert drop.points == -6.0 and drop.low == pytest.approx(-6.0)
    assert drop.high == pytest.approx(6 * (2 * (1 - 0.025 ** (1 / 3)) - 1)) and drop.p_value == pytest.approx(
        0.25
    )


Z = 1.959963984540054  # the normal 97.5% quantile


def _tango_score(b: int, c: int, n: int, d: float) -> float:
    """Tango's statistic written out again: q solves 2n q^2 + W q - c d (1 - d) = 0."""
    w = -b - c + (2 * n - b + c) * d
    q = (math.sqrt(w * w + 8 * n * c * d * (1 - d)) - w) / (4 * n)
    return (b - c - n * d) / math.sqrt(n * (2 * q + d * (1 - d)))


def test_tango_default_no_disagreement_is_z2_over_n_plus_z2() -> None:
    """b = c = 0: |T(d)| = sqrt(n d / (1 - d)), so the ends are +-z^2 / (n + z^2) = +-0.4255 points."""
    drop = paired_drop(*_outcomes(899, 0, 0, both_wrong=5))
    bound = 100 * Z * Z / (899 + Z * Z)
    assert drop.low == pytest.approx(-bound, rel=1e-9) and drop.high == pytest.approx(bound, rel=1e-9)
    assert str(drop) == "0 points (95% CI -0.43 to 0.43, 899 images, Tango score)"


def test_tango_ends_are_where_the_score_crosses_z_and_pass_the_observed_discordant_rate() -> None:
    """7 lost, 0 gained of 899 (a planted-outlier INT8 file): the conditional McNemar interval ends at
    the estimate itself (0.78); Tango's goes on to 1.60."""
    drop = paired_drop(*_outcomes(899, lost=7, gained=0, both_wrong=5))
    assert _tango_score(7, 0, 899, drop.low / 100) == pytest.approx(Z, abs=1e-6)
    assert _tango_score(7, 0, 899, drop.high / 100) == pytest.approx(-Z, abs=1e-6)
    assert (round(drop.low, 2), round(drop.high, 2)) == (0.35, 1.6)
    conditional = paired_drop(*_outcomes(899, lost=7, gained=0), method="mcnemar")
    assert conditional.high == pytest.approx(conditional.points) and drop.high > 2 * conditional.points
    low, high = tango(4, 2, 899)
    assert _tango_score(4, 2, 899, low) == pytest.approx(Z) and _tango_score(
        4, 2, 899, high
    ) == pytest.approx(-Z)


def test_tango_holds_the_true_drop_about_95_percent_of_the_time() -> None:
    """Seeded simulation of INT8-like outcomes: 0.5% of images lost, 0.1% gained, 899 images."""
    rng = np.random.default_rng(0)
    held = {"tango": 0, "mcnemar": 0}
    for _ in range(400):
        u = rng.random(899)
        b, c = int((u < 0.005).sum()), int(((u >= 0.005) & (u < 0.006)).sum())
        for method in held:
            d = paired_drop(*_outcomes(899, b, c), method=method)
            held[method] += d.low <= 0.4 <= d.high
    assert held["tango"] / 400 > 0.93 and held["mcnemar"] / 400 < 0.85


def test_resolution_of_a_budget() -> None:
    assert images_needed(0.25) == 800 and images_needed(1.0) == 200 and images_needed(0.1) == 2000
    assert not resolves(64, 0.25) and resolves(899, 0.25) and resolves(800, 0.25) and not resolves(799, 0.25)
    with pytest.raises(ValueError, match="positive"):
        images_needed(0)


def test_bad_outcomes_are_refused() -> None:
    with pytest.raises(ValueError, match="one length"):
        paired_drop(np.ones(3, bool), np.ones(4, bool))
    with pytest.raises(ValueError, match="no images"):
        paired_drop(np.ones(0, bool), np.ones(0, bool))
    with pytest.raises(ValueError, match="unknown interval method"):
        paired_drop(np.ones(3, bool), np.ones(3, bool), method="bootstrap")
