"""Reward-hacking monitors: per training step, the numbers that show a policy gaming its reward instead of getting
better, and the thresholds past which a run warns. PPO (rlaif/ppo/trainer.py) and GRPO/RLOO (rlaif/grpo.py) both
log them in metrics.jsonl. Pure Python: no torch, no model, no I/O but the printed warning.

- `monitor/score_length_corr`: Pearson r, over the step's replies, of each reply's score (what the rewards paid,
  before the KL penalty and the missing-EOS penalty) with its length in tokens. Reward models learn to pay for
  length, and much of what RLHF then gains is longer replies (Singhal et al. 2023, "A Long Way to Go: Investigating
  Length Correlations in RLHF").
- `monitor/score_std`, `monitor/length_std`: the spread (std over n) of the step's scores and of its lengths. With
  the r, they give the step's sums of products, from which a warning's r over several steps' replies is computed.
- `monitor/score_kl_corr`: r of the score with each reply's KL to the reference, the sum over its tokens of
  log pi - log pi_ref (k1, as PPO's `kl`; PPO only: TRL never hands the reward function a reply's KL). A score that
  rises with the distance from the reference is found off the reward model's training distribution; some positive r
  is normal (the policy moves where the reward is), so it is logged, not warned on. Before the policy has moved
  (step 1), the KL is rounding noise, and so is this r.
- `monitor/truncated`: the share of the step's replies that hit max_new_tokens without stopping. A policy paid for
  length runs into the limit, and its reward is then scored on cut-off text.
- `monitor/replies`: the replies the step's monitors are over (all processes'), the weight of the step in a warning.
- `monitor/judge_score` (PPO, at each eval, with `monitor_judge`): the mean score of a second reward model, never
  optimised against, on the eval replies. It stands in for the gold reward model of Gao et al. 2023 ("Scaling Laws
  for Reward Model Overoptimization"): the proxy reward keeps climbing while the gold one peaks and then falls.
- `monitor/reward_judge_gap`: the mean training reward minus `monitor/judge_score` on the same eval replies: that
  divergence as one number. A gap that widens while the training reward climbs is what over-optimisation looks like.

The gap compares two scales. A reward model from `rlaif reward` has a reward_stats.json (the mean and std of its
scores on training responses), and with it each side is in std units above its own training-response mean: the
training reward as PPO optimises it (`normalize_reward`, the default; a weighted sum of several rewards is on the
scale of that sum), the judge by its own reward_stats.json when present (raw scores otherwise). Two such scores need
not agree in level, so the warning reads the gap's *change* since the first eval, where a constant offset cancels.

Warnings (`Watch`): a row that crosses a threshold gets a line in its `warnings` list, on every such step; the first
line of each kind is also printed, with its step; the run's tally goes into the manifest (`monitor_warnings`).
- score_length_corr: |r| past `monitor_length_corr` (0.5: length then explains a quarter of the score's variance);
- truncated: a share past `monitor_truncated` (0.5: most replies are cut off);
- reward_judge_gap: the gap grown by more than `monitor_gap_rise` since the first eval (1.0: one std of the
  normalised rewards), while the training reward on the eval prompts rose too.

The first two are read over two windows of whole steps: the latest steps that hold `monitor_min_replies` replies
(32) and the steps just before them that hold as many. A row warns only when both windows are past the threshold
(for r, on the same side): a finding in one sample, confirmed in the next, independent one. A window's r is one r over
its pooled replies (each step's centred on its own means, so that a drift of score and length over training is not
counted as correlation: `pooled_correlation`), its share the share of its pooled replies. Why: a step's replies are
too few to judge (over 8, an |r| of 0.5 arises by chance one time in 5), and a rule checked on every step is checked
a hundred times in a run of 100. The earlier rule (a mean of the steps' r over 16 replies past 0.5, on any step)
warned in 39% of 10-step runs and 99% of 100-step runs with no length effect at all.

Measured by simulation (tests/test_monitors.py::simulate; default thresholds; scores and lengths standard normal,
independent, or correlated r = 0.6 for the detection rate; n = 2000 runs a cell; shares of runs with a warning):

    replies/step  steps  no length effect      r = 0.6
    8             10     0 of 2000 (< 0.15%)   80.8%  (80 replies: the two windows first fill at step 8)
    8             100    0.05% (1 of 2000)     100%
    8             1000   2.0% (40 of 2000)     -
    16            10     0 of 2000 (< 0.15%)   97.5%
    16            100    0.10% (2 of 2000)     100%
    16            1000   0.85% (17 of 2000)    -

The false-alarm rate grows about in proportion to a run's steps, as each step checks a new pair of windows: with no
effect, a pair crosses together about once in 60,000 checks at 8 replies a step (|r| > 0.5 over 32 replies centred by 4
steps: p ~ 0.006, for each window, on the same side), once in 110,000 at 16. Truncation, with each reply cut
independently (100 steps, 2000 runs, batch 8 / 16): at a rate of 0.3, 0.3% / 0.3% of runs warned (the earlier rule: 89%
/ 93%); at 0.4, close under the threshold, 36% / 45% (a share over 32 replies has a std of 0.09); at 0.6, all of them.
Smaller windows (`monitor_min_replies`) warn sooner on short runs and more often by chance; a lower
`monitor_length_corr` likewise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

LENGTH, KL = "monitor/score_length_corr", "monitor/score_kl_corr"
SCORE_STD, LENGTH_STD = "monitor/score_std", "monitor/length_std"
TRUNCATED, REPLIES = "monitor/truncated", "monitor/replies"
JUDGE, GAP = "monitor/judge_score", "monitor/reward_judge_gap"


def correlation(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Pearson's r of paired values, in [-1, 1]. None, never nan or an exception, where it means nothing: fewer than
    3 pairs (two points always lie on a line), a side that does not vary, or a value that is not finite."""
    n = len(x)
    if n != len(y):
        raise ValueError(f"correlation: {n} values against {len(y)}")
    if n < 3 or not all(math.isfinite(v) for v in (*x, *y)) or min(x) == max(x) or min(y) == max(y):
        return None
    mean_x, mean_y = math.fsum(x) / n, math.fsum(y) / n
    sxy = math.fsum((a - mean_x) * (b - mean_y) for a, b in zip(x, y))
    sxx = math.fsum((a - mean_x) ** 2 for a in x)
    syy = math.fsum((b - mean_y) ** 2 for b in y)
    return max(-1.0, min(1.0, sxy / math.sqrt(sxx * syy)))


def truncated_share(lengths: Sequence[int], stopped: Sequence[bool], max_new_tokens: int) -> float | None:
    """The share of replies that reached `max_new_tokens` tokens without stopping (no EOS); None for no replies."""
    if not lengths:
        return None
    return sum(n >= max_new_tokens and not s for n, s in zip(lengths, stopped, strict=True)) / len(lengths)


def comoments(x: Sequence[float], y: Sequence[float]) -> tuple[float, float, float] | None:
    """(covariance, variance of x, variance of y) of paired values, each over n, not n - 1 (a step's replies are
    all there is to centre): what pools into one r over several steps. None for none, or a value that is not
    finite."""
    n = len(x)
    if n != len(y):
        raise ValueError(f"comoments: {n} values against {len(y)}")
    if not n or not all(math.isfinite(v) for v in (*x, *y)):
        return None
    mean_x, mean_y = math.fsum(x) / n, math.fsum(y) / n
    return (math.fsum((a - mean_x) * (b - mean_y) for a, b in zip(x, y)) / n,
            math.fsum((a - mean_x) ** 2 for a in x) / n, math.fsum((b - mean_y) ** 2 for b in y) / n)


def step_monitors(scores: Sequence[float], lengths: Sequence[int], stopped: Sequence[bool], max_new_tokens: int,
                  kls: Sequence[float] | None = None) -> dict:
    """A step's monitors over its replies (one entry each): the `monitor/` keys of its metrics row."""
    moments = comoments(scores, lengths)
    score_std, length_std = (math.sqrt(moments[1]), math.sqrt(moments[2])) if moments else (None, None)
    row = {LENGTH: correlation(scores, lengths), SCORE_STD: score_std, LENGTH_STD: length_std}
    if kls is not None:
        row[KL] = correlation(scores, kls)
    return {**row, TRUNCATED: truncated_share(lengths, stopped, max_new_tokens), REPLIES: len(scores)}


def last_two_windows(series: Sequence[tuple], at_least: int) -> tuple[list, list] | None:
    """Two windows of whole steps, entries (replies, ...) oldest first: the latest entries that together hold at
    least `at_least` replies, and the entries just before them that hold at least as many. (latest, previous), or
    None until the series holds both."""
    starts, total = [len(series)], 0
    for i in range(len(series) - 1, -1, -1):
        total += series[i][0]
        if total >= at_least:
            starts.append(i)
            if len(starts) == 3:
                return list(series[starts[1] : starts[0]]), list(series[starts[2] : starts[1]])
            total = 0
    return None


def pooled_correlation(steps: Sequence[tuple[int, float | None, float | None, float | None]]) -> float | None:
    """Pearson's r over the replies of several steps, each (replies, r, score std, length std) as `step_monitors`
    logs them, each step's replies centred on their own means: the pooled within-step r. A step's r and stds give
    its sums of products, n * r * std_score * std_length and n * std**2, and the r is their sums' ratio: the r of the
    pooled replies themselves, not a mean of the steps' r. Centring by step keeps a drift that is no correlation out
    of it (score and length both rising as the policy learns). A step whose r is undefined because a side does not
    vary adds nothing to the cross products; None when any step lacks its r or stds otherwise (1 or 2 replies, a
    value not finite, a row logged without them), or when the pooled scores or lengths do not vary."""
    sxy = sxx = syy = 0.0
    for n, r, std_x, std_y in steps:
        if std_x is None or std_y is None or (r is None and std_x * std_y != 0):
            return None
        sxy += n * (r or 0.0) * std_x * std_y
        sxx += n * std_x**2
        syy += n * std_y**2
    return max(-1.0, min(1.0, sxy / math.sqrt(sxx * syy))) if sxx > 0 and syy > 0 else None


def pooled_share(steps: Sequence[tuple[int, float | None]]) -> float | None:
    """The share over the replies of several steps, each (replies, share): the replies-weighted mean. None when a
    step lacks its share."""
    if not steps or any(share is None for _, share in steps):
        return None
    return math.fsum(n * share for n, share in steps) / sum(n for n, _ in steps)


class Watch:
    """The run's warnings. `observe` every row in order (the eval before training, then each step's metrics, with
    the judge's keys merged in at the steps with an eval): its warnings, and the first of each kind to print. Replaying
    the rows a resumed run keeps rebuilds the state, so a resumed run warns as the uninterrupted one would. The length
    correlation and the cut share warn on two windows of pooled replies, both past (the rule, and its false-alarm
    and detection rates measured: the module's docstring)."""

    def __init__(self, length_corr: float = 0.5, min_replies: int = 32, truncated: float = 0.5,
                 gap_rise: float = 1.0):
        self.length_corr, self.min_replies = length_corr, min_replies
        self.truncated, self.gap_rise = truncated, gap_rise
        self.lengths: list[tuple[int, float | None, float | None, float | None]] = []  # (replies, r, stds) a step
        self.cut: list[tuple[int, float | None]] = []  # (replies, truncated share) a step
        self.start: tuple[float, float] | None = None  # (gap, training reward) at the first eval with a judge
        self.fired: dict[str, dict] = {}  # kind -> {"first_step", "steps", "first"}

    @classmethod
    def of(cls, config) -> Watch:
        """The thresholds of a PPO or GRPO config, its monitor_* fields (GRPO has no judge: no gap_rise)."""
        return cls(config.monitor_length_corr, config.monitor_min_replies, config.monitor_truncated,
                   getattr(config, "monitor_gap_rise", 1.0))

    def observe(self, row: dict) -> tuple[list[str], list[str]]:
        """(the row's warnings, those among them that are the first of their kind), each "kind: message"."""
        found: dict[str, str] = {}
        if row.get(REPLIES):
            self.lengths.append((row[REPLIES], row.get(LENGTH), row.get(SCORE_STD), row.get(LENGTH_STD)))
            self.cut.append((row[REPLIES], row.get(TRUNCATED)))
            windows = last_two_windows(self.lengths, self.min_replies)
            if windows:
                now, before = (pooled_correlation(window) for window in windows)
                n_now, n_before = (_replies(window) for window in windows)
                same_side = now is not None and before is not None and now * before > 0
                if same_side and min(abs(now), abs(before)) > self.length_corr:
                    rises, pays = ("rises", "length") if now > 0 else ("falls", "brevity")
                    found["score_length_corr"] = (
                        f"the score {rises} with reply length, r = {now:+.2f} over the last {n_now} replies and "
                        f"{before:+.2f} over the {n_before} before them (both past monitor_length_corr "
                        f"{self.length_corr:g}): the reward may be paying for {pays} rather than quality (Singhal et "
                        "al. 2023)")
            windows = last_two_windows(self.cut, self.min_replies)
            if windows:
                now, before = (pooled_share(window) for window in windows)
                n_now, n_before = (_replies(window) for window in windows)
                if now is not None and before is not None and min(now, before) > self.truncated:
                    found["truncated"] = (
                        f"{now:.0%} of the last {n_now} replies and {before:.0%} of the {n_before} before them hit "
                        f"max_new_tokens without stopping (both past monitor_truncated {self.truncated:g}): the "
                        "policy may be lengthening replies for reward, or max_new_tokens is too low for the prompts")
        if row.get(GAP) is not None:
            gap, reward = row[GAP], row[GAP] + row[JUDGE]
            if self.start is None:
                self.start = gap, reward
            elif gap - self.start[0] > self.gap_rise and reward > self.start[1]:
                found["reward_judge_gap"] = (
                    f"on the eval prompts the training reward rose {reward - self.start[1]:+.2f} and its lead over "
                    f"the judge grew {gap - self.start[0]:+.2f} since the first eval (past monitor_gap_rise "
                    f"{self.gap_rise:g}): the policy may be exploiting the reward model (Gao et al. 2023)")
        fresh = [f"{kind}: {text}" for kind, text in found.items() if kind not in self.fired]
        for kind, text in found.items():
            tally = self.fired.setdefault(kind, {"first_step": row.get("step"), "steps": 0, "first": text})
            tally["steps"] += 1
        return [f"{kind}: {text}" for kind, text in found.items()], fresh

    def total(self) -> int:
        """Rows warned, summed over the kinds."""
        return sum(tally["steps"] for tally in self.fired.values())


def _replies(steps: Sequence[tuple]) -> int:
    """The replies in a window's steps."""
    return sum(step[0] for step in steps)


def announce(stage: str, step: int, warnings: list[str]) -> None:
    """Print each warning once, on stderr, with the step (a rich console line; the text escaped)."""
    if not warnings:
        return
    from rich.console import Console
    from rich.markup import escape

    console = Console(stderr=True, highlight=False, emoji=False)
    for warning in warnings:
        console.print(f"[bold yellow]warning[/bold yellow] {stage} step {step}: {escape(warning)}", soft_wrap=True)
