"""rlaif.stats: intervals, baselines and the logistic fits, against hand-computed values and slow references."""

import numpy as np
import pytest

from rlaif import stats
from rlaif.evaluate import expected_calibration_error


def test_agreement_counts_a_tie_half():
    assert stats.agreement([0.9, 0.2, 0.5, 0.51]) == pytest.approx((1 + 0 + 0.5 + 1) / 4)


def test_consistency_compares_outcomes_of_both_orders():
    assert stats.consistency([0.9, 0.9, 0.5, 0.4], [0.6, 0.1, 0.5, 0.3]) == pytest.approx(3 / 4)


def test_ece_matches_the_loop_it_vectorises():
    rng = np.random.default_rng(3)
    for n in (1, 7, 300):
        p = rng.uniform(0, 1, n)
        p[: n // 3] = 0.5  # ties and confidence exactly 1 take the edge bins
        p[-1] = 1.0
        assert stats.ece(p) == pytest.approx(expected_calibration_error(list(p)), abs=1e-12)


def test_ece_of_hand_made_bins():
    # p is P(the side people chose is better): 0.9 is right at confidence 0.9, 0.1 wrong at confidence 0.9
    assert stats.ece([0.9, 0.1]) == pytest.approx(0.4)  # one bin: |0.5 - 0.9|
    assert stats.ece([0.9, 0.9]) == pytest.approx(0.1)  # one bin: |1 - 0.9|
    assert stats.ece([0.9, 0.9, 0.6, 0.4]) == pytest.approx(0.5 * 0.1 + 0.5 * 0.1)  # bins 0.9 and 0.6: |0.5 - 0.6|


def test_bootstrap_interval_holds_the_value_and_is_seeded():
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 1, 200)
    est = stats.bootstrap(stats.mean, p)
    assert est.n == 200 and est.low < est.value < est.high
    assert est.high - est.low == pytest.approx(2 * 1.96 * p.std() / np.sqrt(200), rel=0.25)
    assert stats.bootstrap(stats.mean, p) == est  # seeded: the same interval on every run
    assert stats.bootstrap(stats.mean, p, seed=1) != est


def test_rates_get_wilson_intervals_that_cover_near_0_and_1():
    # Wilson (1927) by hand: 19 of 20, and 5 of 5, where a percentile bootstrap gives [100, 100]
    assert stats.wilson(19 / 20, 20) == pytest.approx((0.7639, 0.9911), abs=1e-4)
    assert stats.bootstrap(stats.agreement, [1.0] * 5) == stats.Estimate(1.0, pytest.approx(0.5655, abs=1e-4), 1.0, 5)
    assert stats.bootstrap(stats.agreement, [0.2]) == stats.Estimate(0.0, 0.0, pytest.approx(0.7935, abs=1e-4), 1)
    assert stats.bootstrap(stats.consistency, [0.9, 0.9], [0.8, 0.1]).as_dict() == {
        "value": 0.5, "low": pytest.approx(0.0945, abs=1e-4), "high": pytest.approx(0.9055, abs=1e-4), "n": 2}
    # Coverage of the nominal 95% where the percentile bootstrap of a share falls short (about 69% at n 25, p 0.95)
    rng = np.random.default_rng(0)
    for n, truth in ((25, 0.95), (20, 0.5), (60, 0.1)):
        draws = (rng.uniform(size=(400, n)) < truth).astype(float)
        covered = [e.low <= truth <= e.high for e in (stats.bootstrap(stats.share, d) for d in draws)]
        assert np.mean(covered) >= 0.92, (n, truth, np.mean(covered))


def test_bootstrap_degenerate_and_bad_samples():
    assert stats.bootstrap(stats.mean, [1.0] * 5) == stats.Estimate(1.0, 1.0, 1.0, 5)
    assert stats.bootstrap(stats.mean, [0.2]) == stats.Estimate(0.2, 0.2, 0.2, 1)
    with pytest.raises(ValueError):
        stats.bootstrap(stats.agreement, [])
    with pytest.raises(ValueError):
        stats.bootstrap(stats.difference(stats.agreement), [1.0, 0.0], [1.0])


def test_paired_difference_is_narrower_than_unpaired():
    rng = np.random.default_rng(1)
    base = rng.uniform(0, 1, 400)
    better = np.where(rng.uniform(size=400) < 0.1, 0.9, base)  # the same pairs, a few more right
    paired = stats.bootstrap(stats.difference(stats.agreement), better, base)
    assert paired.value == pytest.approx(stats.agreement(better) - stats.agreement(base))
    a, b = stats.bootstrap(stats.agreement, better), stats.bootstrap(stats.agreement, base)
    assert paired.high - paired.low < (a.high - a.low)
    assert stats.Estimate(0.04, -0.02, 0.095, 10).percent(points=True) == "+4.0 points [-2.0, +9.5]"
    assert b.percent().endswith("]")


def test_length_baselines():
    b = stats.length_baselines(["short", "a much longer reply", " same ", "x"], ["a longer one", "tiny", "same", ""])
    assert b["prefer the shorter reply"].tolist() == [1.0, 0.0, 0.5, 0.0]
    assert b["prefer the longer reply"].tolist() == [0.0, 1.0, 0.5, 1.0]


def test_fit_logistic_recovers_coefficients():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(20000, 1))
    y = (rng.uniform(size=20000) < 1 / (1 + np.exp(-(1.5 * x[:, 0] - 0.5)))).astype(float)
    coef, intercept = stats.fit_logistic(x, y, ridge=1e-9)
    assert coef[0] == pytest.approx(1.5, abs=0.06) and intercept == pytest.approx(-0.5, abs=0.05)
    # intercept only: sigmoid(theta) is the mean of the soft targets
    _, theta = stats.fit_logistic(np.zeros((4, 1)), [1, 1, 0.5, 0], ridge=1e-9)
    assert 1 / (1 + np.exp(-theta)) == pytest.approx(0.625)


def test_platt_calibrates_hard_labels_to_their_smoothed_accuracy():
    # 100 pairs: N+ = N- = 100 (each pair once each way), so Platt's targets are t+ = 101/102 and t- = 1/102, and a
    # hard label right on 75 of them calibrates to (75 t+ + 25 t-) / 100 = 7600/10200 = 38/51, not 0.75.
    agrees = np.array([1.0] * 75 + [0.0] * 25)
    slope = stats.platt_slope(np.ones(100), agrees)
    assert stats.calibrate(1.0, slope) == pytest.approx(38 / 51, abs=1e-4)
    assert stats.calibrate(0.0, slope) == pytest.approx(13 / 51, abs=1e-4)
    assert stats.calibrate(0.5, slope) == pytest.approx(0.5)


def test_platt_leaves_calibrated_probabilities_alone_and_flips_a_contrary_labeler():
    rng = np.random.default_rng(4)
    p = rng.uniform(0.5, 0.99, 20000)
    agrees = (rng.uniform(size=20000) < p).astype(float)
    assert stats.platt_slope(p, agrees) == pytest.approx(1.0, abs=0.08)  # t+ = 20001/20002: smoothing is negligible
    assert stats.platt_slope(p, 1 - agrees) < 0  # wrong more often than right: the map turns its labels around


def test_platt_on_20_of_20_agreeing_pairs_stays_finite():
    # Every label 0.55 and every one right: with 0/1 targets the data are separable and the slope ran off (0.55
    # calibrated to 0.9998). Platt's targets (t+ = 21/22, t- = 1/22 for n = 20) cap the fit at sigmoid(a * z) =
    # 21/22: a = ln(21) / logit(0.55).
    slope = stats.platt_slope(np.full(20, 0.55), np.ones(20))
    assert np.isfinite(slope) and slope == pytest.approx(np.log(21) / np.log(0.55 / 0.45), rel=1e-3)
    assert stats.calibrate(0.55, slope) == pytest.approx(21 / 22, abs=1e-4) and stats.calibrate(0.55, slope) < 0.99


def test_length_controlled_win_rate():
    rng = np.random.default_rng(5)
    d = rng.normal(30, 40, 4000)  # the policy's replies are mostly longer than the opponent's
    feature = stats.length_feature(d)

    def judged(quality):  # a judge whose preference is the policy's quality plus a liking for length
        return (rng.uniform(size=d.size) < 1 / (1 + np.exp(-(quality + 2.0 * feature)))).astype(float)

    length_only = judged(0.0)
    assert stats.agreement(length_only) > 0.65  # wins that are only length
    assert stats.length_controlled_win_rate(length_only, d) == pytest.approx(0.5, abs=0.04)
    better = judged(0.8)
    assert stats.length_controlled_win_rate(better, d) == pytest.approx(1 / (1 + np.exp(-0.8)), abs=0.04)
    # no length difference at all: the plain win rate
    wins = np.array([1, 1, 1, 0.5, 0])
    assert stats.length_controlled_win_rate(wins, np.zeros(5)) == pytest.approx(0.7, abs=1e-3)
    est = stats.bootstrap(stats.length_controlled_win_rate, better, d, resamples=200)
    assert est.low < est.value < est.high


def test_ece_floor_is_what_a_calibrated_labeler_scores():
    assert stats.ece_floor([0.0, 1.0, 0.0]) == 0.0  # sure and calibrated: always right, whichever side it names
    assert stats.ece_floor([0.5] * 4) == 0.0  # ties: half right at confidence one half
    rng = np.random.default_rng(6)
    p = rng.uniform(0, 1, 1000)
    floor = stats.ece_floor(p)
    assert 0 < floor < 0.06  # thin bins on 1,000 pairs: small but not 0
    assert stats.ece_floor(p[:20]) > floor  # and larger on few pairs
    # the floor does not depend on which side each probability names
    assert stats.ece_floor(1 - p) == pytest.approx(floor, abs=0.01)
