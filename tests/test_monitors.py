"""Reward-hacking monitors (rlaif/ppo/monitors.py): correlation, truncation share and pooling against values worked
out by hand, the warnings a hand-made series of rows raises (each printed once, rebuilt by a replay); GRPO's side:
the reward function's length correlation, the rows built from TRL's log history, and a tiny run through TRL; and the
report's section. PPO's runs with the monitors are in test_ppo.py."""

from __future__ import annotations

import math
import random
import statistics
from pathlib import Path

import pytest
import torch

from rlaif.ppo import monitors as M
from rlaif.records import read_jsonl


def test_correlation_against_hand_computed_values():
    # x = 1, 2, 3 and y = 2, 4, 7: deviations (-1, 0, 1) and (-7/3, -1/3, 8/3); sxy = 5, sxx = 2, syy = 114/9
    assert M.correlation([1, 2, 3], [2, 4, 7]) == pytest.approx(15 / math.sqrt(228), abs=1e-12)
    assert M.correlation([1, 2, 3, 4], [8, 6, 4, 2]) == pytest.approx(-1.0, abs=1e-12)
    assert M.correlation([1, 2, 3, 4], [1, 3, 1, 3]) == pytest.approx(0.4472135955, abs=1e-9)  # 2 / sqrt(5 * 4)


def test_correlation_is_none_where_it_means_nothing():
    assert M.correlation([], []) is None
    assert M.correlation([1.0, 2.0], [3.0, 5.0]) is None  # two points always lie on a line
    assert M.correlation([0.1] * 5, [1, 2, 3, 4, 5]) is None  # constant: no nan from a rounding-error variance
    assert M.correlation([1, 2, 3], [7, 7, 7]) is None
    assert M.correlation([1, 2, float("nan")], [1, 2, 3]) is None
    assert M.correlation([1, 2, 3], [1, float("inf"), 3]) is None
    with pytest.raises(ValueError, match="3 values against 2"):
        M.correlation([1, 2, 3], [1, 2])


def test_correlation_matches_the_standard_library():
    rng = random.Random(0)
    for n in (3, 7, 64):
        x = [rng.gauss(0, 1) for _ in range(n)]
        y = [0.3 * a + rng.gauss(0, 1) for a in x]
        assert M.correlation(x, y) == pytest.approx(statistics.correlation(x, y), abs=1e-12)


def test_truncated_share_counts_replies_that_hit_the_limit_without_stopping():
    # 4 tokens and no EOS: cut off; 4 tokens ending with EOS: stopped right at the limit; 2 tokens: short anyway
    assert M.truncated_share([4, 4, 2, 4], [False, True, False, False], max_new_tokens=4) == 0.5
    assert M.truncated_share([1, 2], [True, True], max_new_tokens=4) == 0.0
    assert M.truncated_share([], [], max_new_tokens=4) is None


def test_comoments_against_hand_computed_values():
    # x = 1, 2, 3 and y = 2, 4, 7: sxy = 5, sxx = 2, syy = 114/9, each over n = 3
    assert M.comoments([1, 2, 3], [2, 4, 7]) == pytest.approx((5 / 3, 2 / 3, 114 / 27), abs=1e-12)
    assert M.comoments([4.0], [9.0]) == (0.0, 0.0, 0.0)
    assert M.comoments([], []) is None and M.comoments([1, float("nan")], [1, 2]) is None
    with pytest.raises(ValueError, match="2 values against 1"):
        M.comoments([1, 2], [1])


def test_step_monitors_keys():
    row = M.step_monitors([1.0, 2.0, 3.0], [5, 6, 8], [True, True, False], max_new_tokens=8, kls=[0.5, 0.1, 0.9])
    assert row == {M.LENGTH: pytest.approx(M.correlation([1, 2, 3], [5, 6, 8])),
                   M.SCORE_STD: pytest.approx(math.sqrt(2 / 3)), M.LENGTH_STD: pytest.approx(math.sqrt(14 / 9)),
                   M.KL: pytest.approx(M.correlation([1, 2, 3], [0.5, 0.1, 0.9])), M.TRUNCATED: 1 / 3, M.REPLIES: 3}
    assert M.KL not in M.step_monitors([1.0], [5], [True], max_new_tokens=8)  # GRPO: no per-reply KL


def test_last_two_windows_are_whole_steps_holding_enough_replies_each():
    assert M.last_two_windows([(8, "a"), (8, "b"), (8, "c")], 16) is None  # 24 replies: one window of 16 and 8
    assert M.last_two_windows([(8, "a"), (8, "b"), (8, "c"), (8, "d")], 16) == ([(8, "c"), (8, "d")],
                                                                               [(8, "a"), (8, "b")])
    # a step is never split: the latest window takes 4 + 14, the one before 12 + 8, the oldest step is not needed
    steps = [(5, "a"), (8, "b"), (12, "c"), (4, "d"), (14, "e")]
    assert M.last_two_windows(steps, 16) == ([(4, "d"), (14, "e")], [(8, "b"), (12, "c")])
    assert M.last_two_windows([(40, "a"), (32, "b")], 32) == ([(32, "b")], [(40, "a")])


def within_step_r(steps: list[tuple[list[float], list[float]]]) -> float:
    """The slow reference: each step's replies centred on their own means, then one r over them all."""
    xs = [x - statistics.fmean(sx) for sx, _ in steps for x in sx]
    ys = [y - statistics.fmean(sy) for _, sy in steps for y in sy]
    return statistics.correlation(xs, ys)


def test_pooled_correlation_is_the_r_of_the_pooled_replies_centred_by_step():
    rng = random.Random(1)
    steps = []
    for n, shift in ((8, 0.0), (5, 3.0), (16, -2.0)):  # the shift moves a step's means: no correlation by itself
        x = [rng.gauss(shift, 1) for _ in range(n)]
        steps.append((x, [0.4 * a + rng.gauss(10 * shift, 1) for a in x]))
    logged = [M.step_monitors(x, y, [True] * len(x), max_new_tokens=100) for x, y in steps]
    entries = [(row[M.REPLIES], row[M.LENGTH], row[M.SCORE_STD], row[M.LENGTH_STD]) for row in logged]
    assert M.pooled_correlation(entries) == pytest.approx(within_step_r(steps), abs=1e-12)
    assert M.pooled_correlation(entries) != pytest.approx(statistics.fmean(row[M.LENGTH] for row in logged))
    # equal replies and spreads: the mean of the steps' r, hand-computed
    assert M.pooled_correlation([(8, 0.9, 1.0, 2.0), (8, 0.3, 1.0, 2.0)]) == pytest.approx(0.6)
    # a step whose lengths all match: no cross products, but its scores' spread counts: 8 * 0.9 / sqrt(16 * 8)
    assert M.pooled_correlation([(8, None, 1.0, 0.0), (8, 0.9, 1.0, 1.0)]) == pytest.approx(7.2 / math.sqrt(128))
    assert M.pooled_correlation([(8, None, 1.0, 1.0), (8, 0.9, 1.0, 1.0)]) is None  # an r missing for no reason
    assert M.pooled_correlation([(8, 0.5, None, None)]) is None  # a row logged without the spreads
    assert M.pooled_correlation([(8, None, 0.0, 1.0), (8, None, 0.0, 2.0)]) is None  # no score varies


def test_pooled_share_is_the_share_of_the_pooled_replies():
    assert M.pooled_share([(4, 0.25), (12, 0.75)]) == pytest.approx(10 / 16)
    assert M.pooled_share([(4, None), (12, 0.75)]) is None and M.pooled_share([]) is None


def step(n: int, r: float | None = None, cut: float = 0.0, replies: int = 8, **extra) -> dict:
    """A hand-made row. Equal spreads in every step: a window's pooled r is the replies-weighted mean of its r."""
    return {"step": n, M.LENGTH: r, M.SCORE_STD: 1.0, M.LENGTH_STD: 2.0, M.KL: 0.9, M.TRUNCATED: cut,
            M.REPLIES: replies, **extra}


def test_watch_warns_on_every_row_whose_two_windows_are_past_a_threshold_first_of_each_kind_fresh():
    watch = M.Watch(min_replies=16)  # |r| 0.5, truncated 0.5, gap rise 1.0; windows of 2 steps of 8
    rows = [step(1, 0.9), step(2, 0.7), step(3, 0.8), step(4, 0.6, cut=1.0), step(5, 0.9, cut=1.0),
            step(6, 0.2, cut=1.0), step(7, None, cut=1.0), step(8, -0.9), step(9, -0.9), step(10, -0.9)]
    seen = [watch.observe(row) for row in rows]
    kinds = [[w.split(":")[0] for w in warnings] for warnings, _ in seen]
    # windows (latest two steps | the two before): step 3: not yet two windows; step 4: r 0.7 | 0.8; step 5: 0.75 |
    # 0.75; step 6: 0.55 | 0.7; truncation 1.0 | 0.5, not past; step 7: an r missing; truncation 1.0 | 1.0;
    # step 8: r missing in the window before; step 9: -0.9 | -0.4; step 10: -0.9 | r missing. KL never warns.
    assert kinds == [[], [], [], ["score_length_corr"], ["score_length_corr"], ["score_length_corr"],
                     ["truncated"], [], [], []]
    assert seen[3][1] == seen[3][0] and seen[4][1] == []  # fresh the first time only
    assert seen[3][0][0] == ("score_length_corr: the score rises with reply length, r = +0.70 over the last 16 "
                             "replies and +0.80 over the 16 before them (both past monitor_length_corr 0.5): the "
                             "reward may be paying for length rather than quality (Singhal et al. 2023)")
    assert seen[6][0][0] == ("truncated: 100% of the last 16 replies and 100% of the 16 before them hit "
                             "max_new_tokens without stopping (both past monitor_truncated 0.5): the policy may be "
                             "lengthening replies for reward, or max_new_tokens is too low for the prompts")
    assert "falls with reply length, r = -0.90" in watch.observe(step(11, -0.9))[0][0]
    assert watch.fired["score_length_corr"]["first_step"] == 4 and watch.fired["score_length_corr"]["steps"] == 4
    assert watch.fired["truncated"] == {"first_step": 7, "steps": 1, "first": watch.fired["truncated"]["first"]}
    assert watch.total() == 5


def test_watch_needs_both_windows_on_the_same_side():
    watch = M.Watch(min_replies=8)
    assert [watch.observe(step(n, r))[0] for n, r in enumerate([0.9, -0.9, 0.9], 1)] == [[], [], []]
    assert watch.observe(step(4, 0.6))[0][0].startswith("score_length_corr: the score rises")


def test_watch_gap_warns_when_the_gap_widens_while_the_reward_climbs():
    def evaluated(n, gap, judge):
        return {"step": n, M.GAP: gap, M.JUDGE: judge}

    watch = M.Watch(gap_rise=1.0)
    assert watch.observe(evaluated(0, 0.2, 0.0)) == ([], [])  # the first eval: the baseline (reward 0.2)
    assert watch.observe(evaluated(5, 1.0, 0.1)) == ([], [])  # grew 0.8: not past 1
    assert watch.observe(evaluated(10, 1.5, -2.0)) == ([], [])  # grew 1.3, but the reward fell to -0.5
    warnings, fresh = watch.observe(evaluated(15, 1.5, -0.3))  # grew 1.3 while the reward rose to 1.2
    expected = ("reward_judge_gap: on the eval prompts the training reward rose +1.00 and its lead over the judge "
                "grew +1.30 since the first eval (past monitor_gap_rise 1): the policy may be exploiting the reward "
                "model (Gao et al. 2023)")
    assert warnings == fresh == [expected]
    assert watch.fired["reward_judge_gap"]["first_step"] == 15


def test_a_replayed_watch_is_the_watch_that_saw_the_rows():
    rows = [{"step": 0, M.GAP: 0.0, M.JUDGE: 0.0}, step(1, 0.9, cut=0.9), step(2, 0.9, cut=0.9),
            step(3, 0.9, cut=0.9), step(4, 0.9, cut=0.9), step(5, 0.0, cut=0.9, **{M.GAP: 2.0, M.JUDGE: 0.5})]
    first, replayed = M.Watch(min_replies=16), M.Watch(min_replies=16)
    written = [[w.split(":")[0] for w in first.observe(row)[0]] for row in rows]
    assert written == [[], [], [], [], ["score_length_corr", "truncated"], ["truncated", "reward_judge_gap"]]
    for row in rows:
        replayed.observe({**row, "warnings": []})
    assert replayed.fired == first.fired and replayed.start == first.start
    assert replayed.observe(step(6, 0.9)) == first.observe(step(6, 0.9))  # and goes on as it would have


def simulate(replies: int, steps: int, runs: int, length_effect: float = 0.0, cut_rate: float = 0.0,
             seed: int = 0) -> dict[str, float]:
    """The share of simulated runs that warned, by kind, under the default thresholds: each step's scores and
    lengths standard normal with correlation `length_effect`, each reply cut off with probability `cut_rate`, all
    independent. The numbers in monitors.py's docstring are these at 2000 runs."""
    rng = random.Random(seed)
    warned = {"score_length_corr": 0, "truncated": 0}
    for _ in range(runs):
        watch = M.Watch()
        for n in range(1, steps + 1):
            scores = [rng.gauss(0, 1) for _ in range(replies)]
            lengths = [length_effect * x + math.sqrt(1 - length_effect**2) * rng.gauss(0, 1) for x in scores]
            row = M.step_monitors(scores, lengths, [True] * replies, max_new_tokens=1)
            watch.observe({"step": n, **row, M.TRUNCATED: sum(rng.random() < cut_rate for _ in scores) / replies})
        for kind in warned:
            warned[kind] += kind in watch.fired
    return {kind: count / runs for kind, count in warned.items()}


def test_false_alarms_are_rare_and_a_real_length_effect_is_caught_in_simulated_runs():
    """monitors.py's simulation at a smaller scale, seeds fixed. The bounds leave room above what 2000 runs gave
    (no length effect: 0.05% of 100-step runs of 8 replies; 30% of replies cut: 0.3%; r = 0.6 caught in 97.5% of
    10-step runs of 16 replies), far below the earlier per-step rule (39% of 10-step runs, 99% of 100-step runs)."""
    null = simulate(8, 100, 300, cut_rate=0.3, seed=0)
    assert null["score_length_corr"] < 0.02 and null["truncated"] < 0.03
    assert simulate(16, 10, 100, length_effect=0.6, seed=1)["score_length_corr"] > 0.85
    assert simulate(8, 100, 20, length_effect=0.6, cut_rate=0.6, seed=2) == {"score_length_corr": 1.0,
                                                                             "truncated": 1.0}


def test_announce_prints_each_warning_with_its_step_and_markup_escaped(capsys):
    M.announce("ppo", 7, ["truncated: [bold]90%[/bold] of replies"])
    M.announce("ppo", 8, [])
    err = capsys.readouterr().err
    assert err.count("warning") == 1 and "ppo step 7: truncated: [bold]90%[/bold] of replies" in err


# --------------------------------------------------------------------------------------------------------------------
# GRPO


def build_chatty_model(tiny_model_dir: Path, directory: Path) -> Path:
    """The tiny model with the output embedding of EOS (untied from its input embedding) scaled by 4: replies of 1 to
    12 tokens, some stopped and some cut off, where the tiny model's own all run to max_new_tokens."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model.config.tie_word_embeddings = False
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=False)
    head.weight.data = model.get_input_embeddings().weight.data.clone()
    head.weight.data[tokenizer.eos_token_id] *= 4
    model.lm_head = head
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory


class _FakeRewardModel:
    stats = None

    def score(self, prompts, responses, normalize=False):
        return torch.tensor([float(len(r)) for r in responses])


def test_grpo_reward_function_logs_what_pools_into_the_score_length_correlation():
    from rlaif.grpo import COMOMENTS, RewardModels, _length_monitors

    reward = RewardModels.__new__(RewardModels)
    reward.models = [(_FakeRewardModel(), 0.5)]
    logged = []
    completions = ["a", "abc", "abcdef"]
    scores = reward(["p"] * 3, completions, completion_ids=[[1], [1, 2], [1, 2, 3, 4]],
                    log_metric=lambda name, value: logged.append((name, value)))
    assert scores == [0.5, 1.5, 3.0]
    moments = M.comoments([0.5, 1.5, 3.0], [1, 2, 4])
    assert logged == list(zip(COMOMENTS, moments))
    assert _length_monitors(dict(logged)) == {M.LENGTH: pytest.approx(M.correlation([0.5, 1.5, 3.0], [1, 2, 4])),
                                              M.SCORE_STD: pytest.approx(math.sqrt(moments[1])),
                                              M.LENGTH_STD: pytest.approx(math.sqrt(moments[2]))}
    logged.clear()
    reward(["p"] * 3, completions, completion_ids=[[1, 2]] * 3, log_metric=lambda *a: logged.append(a))
    assert dict(logged)[COMOMENTS[2]] == 0.0  # every reply as long: the spread is logged, r is undefined
    assert _length_monitors(dict(logged))[M.LENGTH] is None
    assert reward(["p"], ["ab"]) == [1.0]  # without TRL's keywords, just the reward


def test_grpo_steps_pool_their_calls_replies_not_their_r():
    """TRL averages each logged value over the step's calls: the mean comoments give the r of the pooled replies,
    each centred on its call's means (here two calls of 4 replies with r of opposite sign)."""
    from rlaif.grpo import COMOMENTS, _length_monitors

    calls = [([0.0, 1.0, 2.0, 3.0], [1, 2, 3, 5]), ([0.0, 1.0, 2.0, 3.0], [9, 1, 1, 1])]
    averaged = {name: statistics.fmean(values) for name, *values in zip(COMOMENTS, *(M.comoments(*c) for c in calls))}
    assert _length_monitors(averaged)[M.LENGTH] == pytest.approx(within_step_r(calls), abs=1e-12)


def test_grpo_rows_from_trl_log_history_carry_the_monitors_and_their_warnings():
    from rlaif.grpo import COMOMENTS, GRPOConfig, monitored_rows

    config = GRPOConfig(prompts="p.txt", reward_model=["rm"], prompts_per_step=2, group_size=4,
                        monitor_min_replies=8)  # 8 replies a step: a step a window

    def logged(step, cov, cut, **extra):  # TRL's entry: the reward function's comoments, unit variances
        return {"step": step, "reward": 0.1, **dict(zip(COMOMENTS, (cov, 1.0, 4.0))),
                "completions/clipped_ratio": cut, **extra}

    history = [logged(1, 1.8, 0.75), logged(2, 1.6, 0.875, kl=0.01), {"step": 2, "train_runtime": 3.0},
               {"step": 3, "reward": 0.2, "completions/clipped_ratio": 0.875}]  # a step whose reward logged nothing
    rows, watch = monitored_rows(history, config)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert rows[1][M.LENGTH] == pytest.approx(0.8) and rows[1][M.SCORE_STD] == 1.0 and rows[1][M.LENGTH_STD] == 2.0
    assert rows[1][M.TRUNCATED] == 0.875 and rows[1][M.REPLIES] == 8 and rows[2][M.LENGTH] is None
    assert rows[0]["warnings"] == []
    assert [w.split(":")[0] for w in rows[1]["warnings"]] == ["score_length_corr", "truncated"]  # 0.8 | 0.9
    assert [w.split(":")[0] for w in rows[2]["warnings"]] == ["truncated"]
    assert watch.total() == 3


def test_grpo_run_logs_the_monitors_through_trl(tiny_model_dir, tmp_path, capsys, monkeypatch):
    """TRL hands the reward function the completion ids and `log_metric`: the length correlation reaches
    metrics.jsonl with TRL's truncation share, and a reward model that pays for length (one per character) is warned
    about once, at step 2, when the two windows (a step of 8 replies each) are both past the threshold."""
    from rlaif.grpo import GRPOConfig, run
    from rlaif.reward import RewardModel

    monkeypatch.setattr(RewardModel, "load", staticmethod(lambda path, device=None: _FakeRewardModel()))
    policy = build_chatty_model(tiny_model_dir, tmp_path / "chatty")
    (tmp_path / "prompts.txt").write_text("How do I bake bread?\nWhat is science?\nTell me about travel.\n")
    config = GRPOConfig(prompts=str(tmp_path / "prompts.txt"), out=str(tmp_path / "grpo"), policy=str(policy),
                        reward_model=[str(tmp_path / "rm")], steps=2, prompts_per_step=2, group_size=4,
                        max_new_tokens=12, learning_rate=1e-3, device="cpu", monitor_min_replies=8)
    last = run(config, progress=False)
    rows = list(read_jsonl(tmp_path / "grpo" / "metrics.jsonl"))
    assert [r["step"] for r in rows] == [1, 2] and all(r[M.REPLIES] == 8 for r in rows)
    assert all(0.5 < r[M.LENGTH] <= 1 and r[M.SCORE_STD] > 0 and 0 <= r[M.TRUNCATED] <= 1 for r in rows)
    assert rows[0]["warnings"] == []  # one window only
    assert rows[1]["warnings"][0].startswith("score_length_corr: the score rises with reply length")
    assert capsys.readouterr().err.count("score_length_corr:") == 1
    assert last["monitor_warnings"]["score_length_corr"]["first_step"] == 2


# --------------------------------------------------------------------------------------------------------------------
# The report


def test_report_plots_each_rounds_monitors_and_lists_their_warnings_escaped(tmp_path):
    import json
    import re

    from rlaif.report import _monitors

    rows = [step(1, 0.9, cut=0.1), step(2, 0.8, cut=0.1, warnings=["score_length_corr: r = +0.85 <script>"]),
            step(3, 0.7, cut=0.1, warnings=["score_length_corr: r = +0.75 <script>"])]
    (tmp_path / "round-1" / "ppo").mkdir(parents=True)
    (tmp_path / "round-1" / "ppo" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "round-2" / "ppo").mkdir(parents=True)  # logged before the monitors: no monitor keys
    (tmp_path / "round-2" / "ppo" / "metrics.jsonl").write_text(json.dumps({"step": 1, "score": 0.1}) + "\n")
    html = "".join(_monitors(tmp_path, [1, 2], {}))
    assert "<h3>Reward-hacking monitors</h3>" in html and "data:image/png;base64," in html
    cells = re.findall(r"<td[^>]*>(.*?)</td>", html)
    assert cells == ["round 1", "score_length_corr", "2", "2", "r = +0.85 &lt;script&gt;"]  # first step, steps warned
    assert "<script>" not in html and "round 2" not in html
    assert _monitors(tmp_path, [2], {}) == []  # nothing logged: no section
    rows[1]["warnings"] = rows[2]["warnings"] = []
    (tmp_path / "round-1" / "ppo" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    # 3 steps of 8 replies: the two windows of 32 (the default monitor_min_replies) never filled, which is no pass
    assert "never had the two windows of replies they compare (round 1: 24 replies logged, 64 needed)" in "".join(
        _monitors(tmp_path, [1], {}))
    (tmp_path / "round-1" / "ppo" / "config.yaml").write_text("monitor_min_replies: 8\n")
    assert "No monitor crossed its threshold" in "".join(_monitors(tmp_path, [1], {}))
