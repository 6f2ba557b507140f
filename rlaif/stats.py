"""The statistics every judgement of a labeler, a reward model or a policy carries: bootstrap intervals, the
baselines a skeptic tries first, and two small logistic fits (Platt scaling, the length-controlled win rate).

A figure without its interval and its baseline misleads, so each figure here comes as an `Estimate` (value, 95%
interval, n). A rate (agreement, consistency, a share) gets the Wilson score interval (`wilson`), which keeps its
coverage near 0 and 1 and on few pairs, where a bootstrap collapses to a point; every other figure, and every
difference, a percentile bootstrap over the pairs (Efron & Tibshirani 1993, ch. 13; computed by
`scipy.stats.bootstrap`), seeded so a rerun prints the same interval. Statistics of several per-pair arrays resample
the pairs together (paired), so the difference of two labelers on the same pairs gets the narrower paired interval.

Every statistic below takes arrays whose last axis is the pairs and reduces it (`axis=-1`), as scipy's vectorised
bootstrap calls it with an extra leading axis of resamples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CONFIDENCE = 0.95
RESAMPLES = 2000
SEED = 0


def method(n: int, resamples: int = RESAMPLES, seed: int = SEED) -> str:
    """How every interval was computed, for a report's footnote."""
    return (f"{CONFIDENCE:.0%} intervals: Wilson score intervals for rates, percentile bootstrap for other figures "
            f"and differences ({resamples} resamples of the {n} pairs, paired across columns, seed {seed})")


@dataclass(frozen=True)
class Estimate:
    """A statistic with its bootstrap interval over n pairs."""

    value: float
    low: float
    high: float
    n: int

    def as_dict(self) -> dict:
        return {"value": self.value, "low": self.low, "high": self.high, "n": self.n}

    def percent(self, points: bool = False) -> str:
        """'46.2% [39.1, 53.0]' (or '+4.0 points [-2.0, 9.5]' for a difference of rates)."""
        if points:
            return f"{100 * self.value:+.1f} points [{100 * self.low:+.1f}, {100 * self.high:+.1f}]"
        return f"{self.value:.1%} [{100 * self.low:.1f}, {100 * self.high:.1f}]"

    def number(self, digits: int = 3) -> str:
        return f"{self.value:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


def bootstrap(statistic, *samples, resamples: int = RESAMPLES, seed: int = SEED) -> Estimate:
    """`statistic(*samples, axis=-1)` with its 95% interval over the pairs. For a rate (a statistic
    marked `rate`: agreement, consistency, share), the Wilson score interval (`wilson`): a percentile bootstrap of
    a share near 0 or 1 is too narrow, and of 20 out of 20 it is [100, 100]. For anything else, the percentile
    bootstrap, the samples (equal-length 1-d arrays, one entry per pair) resampled together; a sample with one pair,
    or a statistic constant over the resamples, gets the point as its interval. Raises ValueError on empty
    samples."""
    from scipy.stats import bootstrap as scipy_bootstrap

    arrays = [np.asarray(s, dtype=float) for s in samples]
    n = len(arrays[0])
    if n == 0 or any(len(a) != n for a in arrays):
        raise ValueError(f"bootstrap: expected samples of one non-zero length, got {[len(a) for a in arrays]}")
    value = float(statistic(*arrays, axis=-1))
    if getattr(statistic, "rate", False):
        return Estimate(value, *wilson(value, n), n)
    if n == 1:
        return Estimate(value, value, value, 1)
    result = scipy_bootstrap(arrays, statistic, paired=True, vectorized=True, n_resamples=resamples,
                             confidence_level=CONFIDENCE, method="percentile", random_state=np.random.default_rng(seed))
    low, high = result.confidence_interval
    low, high = (value, value) if not (np.isfinite(low) and np.isfinite(high)) else (float(low), float(high))
    return Estimate(value, min(low, value), max(high, value), n)


def wilson(rate: float, n: int) -> tuple[float, float]:
    """The 95% Wilson score interval of a rate observed on n pairs (Wilson 1927, "Probable inference, the law of
    succession, and statistical inference", eq. 4; recommended over the normal interval by Brown, Cai & DasGupta
    2001): (p + z^2/2n -+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n). A tie counted half makes the rate a half-count
    share, read as it is."""
    from scipy.stats import norm

    z = float(norm.ppf(0.5 + CONFIDENCE / 2))
    centre = (rate + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(max(0.0, min(centre - half, rate))), float(min(1.0, max(centre + half, rate)))


def rate(statistic):
    """Mark a statistic as a rate (a mean of outcomes 0, 0.5 or 1 per pair): `bootstrap` gives it the Wilson
    interval."""
    statistic.rate = True
    return statistic


# --------------------------------------------------------------------------------------------------------------------
# Statistics of preference probabilities (last axis: pairs)


def outcomes(p):
    """1 where p > 0.5 names the first side, 0.5 for an exact tie, 0 otherwise (rlaif.records.outcome, vectorised)."""
    p = np.asarray(p, dtype=float)
    return np.where(p > 0.5, 1.0, np.where(p == 0.5, 0.5, 0.0))


@rate
def agreement(p, axis=-1):
    """Share of pairs whose probability P(side people chose is better) names that side; a tie counts half. The
    same statistic is a win rate when p is P(policy's reply is better)."""
    return outcomes(p).mean(axis=axis)


@rate
def consistency(shown_first, shown_second, axis=-1):
    """Share of pairs whose two orders name the same outcome (rlaif.label.consistent)."""
    return (outcomes(shown_first) == outcomes(shown_second)).mean(axis=axis)


@rate
def share(x, axis=-1):
    """Share of pairs where x is 1 (x: 0 or 1 per pair): a refusal rate, a flip rate."""
    return np.asarray(x, dtype=float).mean(axis=axis)


def ece(p, axis=-1, bins: int = 10):
    """Expected calibration error (Guo et al. 2017) of probabilities that the first side is better: the prediction
    is p > 0.5 (a tie half right), its confidence max(p, 1 - p) binned into `bins` equal bins on [0.5, 1], and ECE
    the bins' |accuracy - confidence| weighted by their share. Matches rlaif.report_card.expected_calibration_error."""
    p = np.moveaxis(np.asarray(p, dtype=float), axis, -1)
    confidence, correct = np.maximum(p, 1 - p), outcomes(p)
    index = np.minimum(((confidence - 0.5) * 2 * bins).astype(int), bins - 1)
    total = np.zeros(p.shape[:-1])
    for b in range(bins):
        member = index == b
        count = member.sum(-1)
        gap = np.abs((correct * member).sum(-1) - (confidence * member).sum(-1))
        total = total + np.where(count > 0, gap, 0.0)
    return total / p.shape[-1]


def ece_floor(p, draws: int = 200, seed: int = SEED, bins: int = 10) -> float:
    """The ECE a perfectly calibrated labeler with these confidences would show on these n pairs: the mean ECE over
    `draws` simulations where each pair's predicted winner is right with probability max(p, 1 - p). ECE is biased
    upward on few pairs (empty and thin bins cannot average their errors away; 0.1 at n = 100 is typical for a
    calibrated labeler), so a labeler's ECE is read against this floor, not against 0. p: (n,) -> a number."""
    p = np.asarray(p, dtype=float)
    right = np.random.default_rng(seed).uniform(size=(draws, p.size)) < np.maximum(p, 1 - p)
    # the same confidences, the outcome drawn as a calibrated labeler's: right, its P(the chosen side) is the larger
    simulated = np.where(right, np.maximum(p, 1 - p), np.minimum(p, 1 - p))
    simulated = np.where(p == 0.5, 0.5, simulated)
    return float(ece(simulated, bins=bins).mean())


def mean(x, axis=-1):
    return np.asarray(x, dtype=float).mean(axis=axis)


def difference(statistic):
    """The statistic of the first half of the samples minus that of the second half, for paired comparisons:
    `bootstrap(difference(agreement), p_mode, p_baseline)`."""

    def diff(*samples, axis=-1):
        half = len(samples) // 2
        return statistic(*samples[:half], axis=axis) - statistic(*samples[half:], axis=axis)

    return diff


def sign_test(p_a, p_b, comparisons: int = 1) -> dict:
    """Whether labeler (or policy) a beats b on the same pairs: an exact one-sided sign test (McNemar's test in its
    exact binomial form) on the pairs where their outcomes differ. p_a, p_b: (n,) P(the side people chose is
    better). A pair counts for a when a's outcome is better than b's (right where b is wrong, or right where b
    tied), against it when worse; pairs where they agree say nothing. p-value: P(at least that many for a | each
    discordant pair a coin), scipy.stats.binomtest; `beats` when it is below 0.025 / comparisons (one side of a 95%
    two-sided test, Bonferroni-adjusted when the best of several candidates is the one tested). Unlike a bootstrap
    interval, it stays honest on a handful of pairs: 3 of 3 discordant pairs give p = 0.125."""
    from scipy.stats import binomtest

    d = outcomes(p_a) - outcomes(p_b)
    wins, losses = int((d > 0).sum()), int((d < 0).sum())
    p_value = binomtest(wins, wins + losses, 0.5, alternative="greater").pvalue if wins + losses else 1.0
    alpha = round(1 - CONFIDENCE, 10) / 2 / comparisons
    return {"discordant": wins + losses, "for": wins, "against": losses, "p_value": float(p_value),
            "alpha": alpha, "beats": bool(p_value < alpha)}


# --------------------------------------------------------------------------------------------------------------------
# Baselines: what a labeler must beat before its labels mean anything


def length_baselines(first: list[str], second: list[str]) -> dict[str, np.ndarray]:
    """P(first is better) under 'prefer the shorter reply' and 'prefer the longer reply', by length in characters
    of the stripped text (a tie when equal). Both are order-free: consistent on every pair."""
    a = np.array([len(t.strip()) for t in first])
    b = np.array([len(t.strip()) for t in second])
    shorter = np.where(a < b, 1.0, np.where(a == b, 0.5, 0.0))
    return {"prefer the shorter reply": shorter, "prefer the longer reply": 1.0 - shorter}


# --------------------------------------------------------------------------------------------------------------------
# Logistic fits


def fit_logistic(x, y, intercept: bool = True, ridge: float = 1e-3, iterations: int = 50):
    """Maximum-likelihood logistic regression of soft targets y in [0, 1] on features x, by Newton's method,
    batched over leading axes: x (..., n, k), y (..., n) -> coefficients (..., k), and the intercept (...,) when
    `intercept`. A small ridge penalty keeps separable data (every target 1) finite."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if intercept:
        x = np.concatenate([x, np.ones(x.shape[:-1] + (1,))], axis=-1)
    k = x.shape[-1]
    w = np.zeros(x.shape[:-2] + (k,))
    eye = np.eye(k) * ridge * x.shape[-2]
    for _ in range(iterations):
        q = 1 / (1 + np.exp(-np.einsum("...nk,...k->...n", x, w)))
        gradient = np.einsum("...nk,...n->...k", x, y - q) - np.einsum("kj,...j->...k", eye, w)
        hessian = np.einsum("...nk,...n,...nj->...kj", x, q * (1 - q), x) + eye
        step = np.linalg.solve(hessian, gradient[..., None])[..., 0]
        w = w + step
        if np.abs(step).max() < 1e-10:
            break
    return (w[..., :-1], w[..., -1]) if intercept else w


def logit(p, eps: float = 1e-4):
    p = np.clip(np.asarray(p, dtype=float), eps, 1 - eps)
    return np.log(p) - np.log1p(-p)


def platt_slope(p, agrees) -> float:
    """Platt scaling of a labeler's probabilities (Platt 1999) on the logit: p -> sigmoid(a * logit(p)), a fitted by
    maximum likelihood on pairs people also labelled. p: (n,) the labeler's P(its chosen reply is better); agrees:
    (n,) 1 where people chose that reply too, 0 where they chose the other, 0.5 for their tie (or the share of
    several people who chose it). A label names no order, so the map is fitted symmetric (each pair also enters as
    (1 - p, 1 - agrees)) and has no intercept. a < 1 shrinks an over-confident labeler toward 0.5; a <= 0 means its
    labels carry no signal or the wrong one. Probabilities are clipped to [1e-4, 1 - 1e-4] first.

    The targets are Platt's smoothed ones, not 0 and 1 (Platt 1999, "Probabilistic outputs for support vector
    machines", sec. 2.2): t+ = (N+ + 1) / (N+ + 2) for a positive, t- = 1 / (N- + 2) for a negative, the posterior
    mean of a rate seen N times under a uniform prior. With the symmetric augmentation every pair enters once as a
    positive and once as a negative (a pair people agree with: (p, 1) and (1 - p, 0); one they do not: (p, 0) and
    (1 - p, 1)), so N+ = N- = n; a soft target y becomes t- + y (t+ - t-), and a tie stays 1/2. Without it, n pairs
    that all agree are separable and the slope runs off (20 of 20 labels at 0.55: a of 42, every label near 1);
    with it, labels of one confidence right on k of n pairs calibrate to (k t+ + (n - k) t-) / n = (k + 1) / (n + 2),
    Laplace's rule of succession (20 of 20 at 0.55: 21/22)."""
    z = logit(p)
    agrees = np.asarray(agrees, dtype=float)
    n = len(agrees)
    positives = negatives = n  # the augmentation: each pair once as a positive, once as a negative
    high, low = (positives + 1) / (positives + 2), 1 / (negatives + 2)  # Platt 1999, sec. 2.2
    smoothed = low + agrees * (high - low)
    x = np.concatenate([z, -z])[:, None]
    y = np.concatenate([smoothed, 1 - smoothed])
    return float(fit_logistic(x, y, intercept=False, ridge=1e-6)[0])


def calibrate(p, slope: float):
    """sigmoid(slope * logit(p)): a labeler's probabilities through its Platt map."""
    return 1 / (1 + np.exp(-slope * logit(p)))


def length_feature(length_difference):
    """tanh(d / std(d)) of the length differences (policy minus opponent), as length-controlled AlpacaEval
    normalises them (Dubois et al. 2024); 0 where every difference is the same."""
    d = np.asarray(length_difference, dtype=float)
    scale = d.std(axis=-1, keepdims=True)
    return np.tanh(np.divide(d, scale, out=np.zeros_like(d), where=scale > 0))


def length_control_identified(length_difference, minority: float = 0.1) -> bool:
    """Whether a length-controlled win rate can be fitted from these pairs alone: at least `minority` of the pairs
    whose lengths differ must differ the other way. When the policy is longer on (nearly) every prompt, the length
    feature is (nearly) constant and indistinguishable from the intercept, and the "win rate at equal length" would
    be an extrapolation the data never saw (length-controlled AlpacaEval identifies it from many models at once)."""
    d = np.asarray(length_difference, dtype=float)
    d = d[d != 0]
    return d.size > 0 and min((d > 0).mean(), (d < 0).mean()) >= minority


def length_controlled_win_rate(p, length_difference, axis=-1):
    """The win rate with the judge's preference for length regressed out: fit the judge's outcome (1 a win, 0.5 a
    tie, 0 a loss) as sigmoid(theta + phi * tanh(d / std(d))), d the policy's reply length minus the opponent's, and
    report sigmoid(theta), the win rate predicted at equal length. Length-controlled AlpacaEval (Dubois et al.
    2024, "Length-Controlled AlpacaEval", arXiv:2404.04475, sec. 3) with one policy pair and without its per-prompt
    difficulty term. p, length_difference: (..., n) -> (...)."""
    p = np.moveaxis(np.asarray(p, dtype=float), axis, -1)
    d = np.moveaxis(np.asarray(length_difference, dtype=float), axis, -1)
    feature = length_feature(d)[..., None]
    _, theta = fit_logistic(feature, outcomes(p))
    return 1 / (1 + np.exp(-theta))
