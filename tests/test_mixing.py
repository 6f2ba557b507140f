"""Reliability-weighted mixing (rlaif.reward, "Reliability"): each AI labeler measured against people on the
training-side pairs both labelled, against the best length baseline and a coin, then calibrated (Platt slope) and
weighed; hand-computed cases for every decision, the held-out pairs never measured on, and the metrics.json section."""

from __future__ import annotations

import json
import math
import re

import pytest
from click.testing import CliRunner

from rlaif.cli import cli
from rlaif.rankings import mix, pair_key
from rlaif.records import ConfigError, DataError
from rlaif.reliability import reliability_line
from rlaif.reward import COIN, RewardConfig, held_out_key, labeler_of, measure_labeler, run, weigh_sources

LABELER = "judge-7b"
GOOD, BAD = "Here is a careful answer.", "No."  # the reply people chose is the longer one ...
TERSE, RAMBLING = "Sure.", "Well, it depends, and there is a lot to say about it."  # ... and here the shorter


def row(i: int, chosen: str, rejected: str, p: float = 1.0, source: str = "human", **more) -> dict:
    return {"id": f"{source}-{i}", "prompt": [{"role": "user", "content": f"Question {i}?"}],
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}], "p_chosen": p, "source": source, **more}


def people(n: int) -> list[dict]:
    """n pairs people labelled: in the even ones they chose the longer reply, in the odd ones the shorter, so that
    preferring the shorter reply, or the longer, agrees with them on exactly half."""
    return [row(i, GOOD, BAD) if i % 2 == 0 else row(i, TERSE, RAMBLING) for i in range(n)]


def labels(humans: list[dict], agree: int, p: float = 0.99, **more) -> list[dict]:
    """The labeler's labels of the same pairs: the first `agree` pick what people picked, the rest the other reply;
    each with confidence p in its pick."""
    out = []
    for i, h in enumerate(humans):
        chosen, rejected = h["chosen"][0]["content"], h["rejected"][0]["content"]
        if i >= agree:
            chosen, rejected = rejected, chosen
        out.append({**row(i, chosen, rejected, p, "ai", labeler=LABELER, **more), "prompt": h["prompt"],
                    "id": f"ai-{h['id']}"})
    return out


def never(key: str) -> bool:
    return False


def logit(p: float) -> float:
    return math.log(p / (1 - p))


# --------------------------------------------------------------------------------------------------------------------
# Measuring one labeler


def test_a_labeler_agreeing_on_18_of_20_beats_the_baselines_and_is_calibrated_with_the_fitted_slope():
    humans = people(20)
    sources, report = weigh_sources([("human.jsonl", humans, 2.0), ("ai.jsonl", labels(humans, 18), 1.0)], [], never)
    entry = report["sources"][LABELER]
    assert entry["pairs"] == 20 and entry["decision"] == "calibrated" and entry["beats"] and not report["warnings"]
    assert entry["agreement"]["value"] == pytest.approx(0.9) and entry["agreement"]["n"] == 20
    # both length baselines agree on 10 of 20; the coin on exactly half: the first of the three ties is the best
    assert {name: b["value"] for name, b in entry["baselines"].items()} == {
        "prefer the shorter reply": 0.5, "prefer the longer reply": 0.5, COIN: 0.5}
    assert entry["baseline"]["name"] == "prefer the shorter reply"
    assert entry["difference"]["value"] == pytest.approx(0.4) and entry["difference"]["low"] > 0
    # The sign test against prefer-the-shorter (right on the odd pairs): the labeler is right and it wrong on the 9
    # even pairs below 18, the other way round on pair 19; P(X >= 9 | 10 coins) = 11/1024 < 0.025.
    assert entry["sign_test"] == {"discordant": 10, "for": 9, "against": 1, "p_value": pytest.approx(11 / 1024),
                                  "alpha": 0.025, "beats": True}
    # Where the better length rule (the shorter, first of a tie) is wrong, the 10 even pairs, it is right on 9.
    assert entry["against_length"] == {"baseline": "prefer the shorter reply", "value": 0.9, "low": pytest.approx(
        0.5958, abs=1e-4), "high": pytest.approx(0.9821, abs=1e-4), "n": 10, "vacuous": False, "passes": True}  # Wilson
    # Platt with smoothed targets (n = 20: t+ = 21/22, t- = 1/22): labels all at 0.99, right on 18, calibrate to
    # (18 t+ + 2 t-) / 20 = 19/22, so a * logit(0.99) = logit(19/22) = ln(19/3).
    slope = math.log(19 / 3) / logit(0.99)
    assert slope == pytest.approx(0.40169, abs=1e-5) and entry["slope"] == pytest.approx(slope, abs=1e-4)
    assert entry["weight_given"] == entry["weight_used"] == {"ai.jsonl": 1.0}
    ai = sources[1][2], [r["p_chosen"] for r in sources[1][1]]
    assert ai[0] == 1.0 and ai[1] == pytest.approx([19 / 22] * 20, abs=1e-4)  # each 0.99 label becomes 19/22
    assert sources[0][1] == humans  # people's rows are never changed


def test_a_labeler_at_chance_gets_weight_0_and_a_warning_naming_it_and_both_agreements():
    humans = people(20)
    ai = labels(humans, 10)
    sources, report = weigh_sources([("human.jsonl", humans, 1.0), ("ai.jsonl", ai, 1.0)], [], never)
    entry = report["sources"][LABELER]
    assert entry["decision"] == "weight 0" and not entry["beats"] and entry["difference"]["low"] <= 0
    assert entry["agreement"]["value"] == 0.5 and entry["weight_used"] == {"ai.jsonl": 0.0}
    warning = report["warnings"] == [entry["warning"]] and entry["warning"]
    assert warning.startswith(f"AI labels of {LABELER} get weight 0: on 20 pairs people also labelled, they agree "
                              "with people 50.0% [")
    assert "against 50.0% [" in warning and "for prefer the shorter reply (difference +0.0 points [" in warning
    # 5 pairs each way where it and the shorter reply differ: P(X >= 5 | 10) = 638/1024
    assert "sign test on the 10 pairs where they differ: 5 for, 5 against, p = 0.623, needs p < 0.025): not better " \
           "with 95% confidence; and on the 10 pairs where prefer the shorter reply is wrong they agree with people " \
           "on only 50.0% [" in warning
    assert entry["sign_test"]["p_value"] == pytest.approx(638 / 1024) and not entry["against_length"]["passes"]
    assert "(reliability: weight). Set reliability to warn (--reliability warn; in a recipe, label.gate: warn)" in warning
    assert all(r["weight"] == 0.0 and r["p_chosen"] == 0.99 for r in sources[1][1])  # not trained, left as labelled
    # Mixed: every pair is labelled by people too, so it trains on their label alone at their weight.
    rows, _ = mix(sources)
    assert all(r["p_chosen"] == 1.0 and r["weight"] == 1.0 for r in rows)
    # An AI-only pair of that labeler weighs 0: the trainer leaves it out and counts it (zero_weight).
    extra = row(99, "Yes.", "Maybe.", 0.8, "ai", labeler=LABELER)
    sources, _ = weigh_sources([("human.jsonl", humans, 1.0), ("ai.jsonl", ai + [extra], 1.0)], [], never)
    assert [r["weight"] for r in mix(sources)[0] if r["id"] == "ai-99"] == [0.0]


def test_warn_keeps_the_weight_calibrates_and_warns_and_off_changes_nothing():
    humans = people(20)
    ai = labels(humans, 10)
    sources, report = weigh_sources([("human.jsonl", humans, 1.0), ("ai.jsonl", ai, 3.0)], [], never, mode="warn")
    entry = report["sources"][LABELER]
    assert entry["decision"] == "warned" and entry["weight_used"] == {"ai.jsonl": 3.0}
    assert entry["slope"] == pytest.approx(0.0, abs=1e-6)  # right half the time: sigmoid(a * z) = 0.5, a = 0
    assert [r["p_chosen"] for r in sources[1][1]] == pytest.approx([0.5] * 20)
    assert "weight" not in sources[1][1][0]
    assert report["warnings"] == [entry["warning"]] and "kept at the weight given (reliability: warn)" in entry["warning"]

    given = [("human.jsonl", humans, 1.0), ("ai.jsonl", ai, 3.0)]
    assert weigh_sources(given, [], never, mode="off") == (given, {"mode": "off"})


def test_too_few_pairs_people_also_labelled_give_weight_0_and_say_how_to_go_on():
    humans = people(19)
    ai = labels(humans, 19)
    sources, report = weigh_sources([("human.jsonl", humans, 1.0), ("ai.jsonl", ai, 1.0)], [], never)
    entry = report["sources"][LABELER]
    assert entry["decision"] == "too few pairs" and entry["pairs"] == 19 and entry["slope"] is None
    assert entry["weight_used"] == {"ai.jsonl": 0.0} and all(r["weight"] == 0.0 for r in sources[1][1])
    assert [r["p_chosen"] for r in sources[1][1]] == [0.99] * 19  # not calibrated either: nothing to calibrate with
    assert report["warnings"] == [entry["warning"]] and entry["warning"] == (
        f"AI labels of {LABELER} get weight 0: only 19 training-side pairs people also labelled were measured, and at "
        "least 20 are needed to measure it (reliability_min_pairs), so it cannot be shown to beat the baselines and "
        "its labels are left out of training (reliability: weight). To train on them: give more human pairs it "
        "labelled, or a calibration file of its labels of human-labelled pairs (--calibration: `rlaif eval labeler` "
        "writes labels.jsonl), or set reliability to warn (--reliability warn; in a recipe, label.gate: warn) to keep "
        "them at the weight given, uncalibrated")
    assert reliability_line(report) == f"reliability: {LABELER} not measured (19 pairs, fewer than 20): weight 0"
    # Mixed: the pairs people labelled train on their label alone; an AI-only pair of the labeler weighs 0.
    extra = row(99, "Yes.", "Maybe.", 0.8, "ai", labeler=LABELER)
    sources, _ = weigh_sources([("human.jsonl", humans, 1.0), ("ai.jsonl", ai + [extra], 1.0)], [], never)
    assert [r["weight"] for r in mix(sources)[0] if r["id"] == "ai-99"] == [0.0]
    # warn: kept at the weight given, uncalibrated, and warned.
    sources, report = weigh_sources([("human.jsonl", humans, 1.0), ("ai.jsonl", ai, 2.0)], [], never, mode="warn")
    entry = report["sources"][LABELER]
    assert entry["decision"] == "too few pairs" and entry["weight_used"] == {"ai.jsonl": 2.0} and sources[1][1] == ai
    assert entry["warning"].startswith(f"AI labels of {LABELER}: only 19 training-side pairs people also labelled "
                                       "were measured, and at least 20 are needed to measure it "
                                       "(reliability_min_pairs); kept at the weight given, uncalibrated "
                                       "(reliability: warn)")
    assert weigh_sources([("h", humans, 1.0), ("a", ai, 1.0)], [], never, min_pairs=19)[1]["sources"][LABELER][
        "decision"] == "calibrated"
    # Human labels of other pairs only: the labeler is measured on none of them, and gets weight 0 as well.
    others = [row(200 + i, GOOD, BAD) for i in range(30)]
    _, report = weigh_sources([("human.jsonl", others, 1.0), ("ai.jsonl", ai, 1.0)], [], never)
    assert report["sources"][LABELER]["pairs"] == 0 and report["sources"][LABELER]["weight_used"] == {"ai.jsonl": 0.0}
    assert "only 0 training-side pairs people also labelled" in report["warnings"][0]
    # No human label anywhere (plain RLAIF): nothing to measure; the labels train as given, with a note saying so.
    sources, report = weigh_sources([("ai.jsonl", ai, 1.0)], [], never)
    assert report["sources"][LABELER]["decision"] == "no human labels" and report["warnings"] == []
    assert report["sources"][LABELER]["weight_used"] == {"ai.jsonl": 1.0} and sources[0][1] == ai
    assert report["unmeasured"].startswith(f"the AI labels of {LABELER} train as given, unmeasured")
    assert reliability_line(report) == "reliability: AI labels unmeasured (no human pairs)"
    assert "unmeasured" not in weigh_sources([("h", humans, 1.0), ("a", ai, 1.0)], [], never)[1]


def test_held_out_pairs_are_never_measured_on():
    humans = people(30)
    ai = labels(humans[:20], 20) + labels(humans[20:], 0)  # right on 20 pairs, wrong on the other 10
    held = {pair_key(h) for h in humans[20:]}
    _, report = weigh_sources([("human.jsonl", humans, 1.0), ("ai.jsonl", ai, 1.0)], [], held.__contains__)
    entry = report["sources"][LABELER]
    assert entry["pairs"] == 20 and entry["held_out_left_out"] == 10 and report["human_pairs"] == 20
    assert entry["agreement"]["value"] == 1.0  # 20/30 had the held-out pairs counted
    # The eval_fraction split holds out by a hash of the pair, whichever file the pair comes from.
    fraction = 0.3
    held_keys = {k for k in map(pair_key, humans) if held_out_key(k, fraction)}
    assert 0 < len(held_keys) < 30
    training = [row(100, "Yes, gladly.", "No.", 0.95, "ai", labeler=LABELER)]
    _, report = weigh_sources([("human.jsonl", humans, 1.0), ("ai.jsonl", training, 1.0)],
                              [("labels.jsonl", labels(humans, 30))], lambda key: held_out_key(key, fraction))
    entry = report["sources"][LABELER]
    assert entry["pairs"] == report["human_pairs"] == 30 - len(held_keys)
    assert entry["held_out_left_out"] == len(held_keys)


def test_a_calibration_file_measures_labels_of_other_pairs_and_records_peoples_choice():
    humans = people(24)
    checked = labels(humans, 22)
    for r, h in zip(checked, humans):  # as `rlaif eval labeler` writes labels.jsonl: people's choice in the row
        r["human_chosen"] = "chosen" if r["chosen"] == h["chosen"] else "rejected"
    training = [row(100 + i, "Yes, gladly.", "No.", 0.95, "ai", labeler=LABELER) for i in range(5)]
    sources, report = weigh_sources([("round-1.jsonl", training, 1.0)], [("labels.jsonl", checked)], never)
    entry = report["sources"][LABELER]
    assert entry["pairs"] == 24 and entry["calibration_files"] == ["labels.jsonl"] and entry["labels"] == 5
    assert entry["agreement"]["value"] == pytest.approx(22 / 24) and entry["decision"] == "calibrated"
    assert sources[0][1][0]["p_chosen"] == pytest.approx(1 / (1 + math.exp(-entry["slope"] * logit(0.95))))
    # Calibration labels of a labeler that labelled nothing in data measure nothing, and the report says so.
    other = [{**r, "labeler": "someone-else"} for r in checked]
    _, report = weigh_sources([("round-1.jsonl", training, 1.0)], [("labels.jsonl", other)], never)
    assert report["warnings"][-1] == ("calibration labels of someone-else (labels.jsonl): no AI label in data is of "
                                      "this labeler in this mode, so they measure nothing (rows match by their "
                                      "`labeler` and `mode`)")
    assert report["sources"][LABELER]["weight_used"] == {"round-1.jsonl": 0.0}  # and judge-7b is measured by none


def test_measure_labeler_by_hand():
    # People chose the first reply each time; the labeler's P(first) 0.8, 0.3, 0.6, 0.5 (the last a tie: half).
    m = measure_labeler([0.8, 0.3, 0.6, 0.5], [1, 1, 1, 1], ["a", "bbbb", "cc", "d"], ["aa", "b", "c", "dd"])
    assert m["agreement"].value == pytest.approx(2.5 / 4)
    assert m["baselines"]["prefer the shorter reply"].value == 0.5 and m["baselines"][COIN].value == 0.5
    assert m["baseline"] == "prefer the shorter reply" and m["difference"].value == pytest.approx(0.125)
    # The shorter reply is the first (people's) on pairs 1 and 4, so that rule is right there. They differ on pair 3
    # (the labeler right, the rule wrong: for) and pair 4 (the labeler's tie against the rule's right: against):
    # 1 for, 1 against, P(X >= 1 | 2 coins) = 3/4.
    assert m["sign_test"] == {"discordant": 2, "for": 1, "against": 1, "p_value": pytest.approx(0.75),
                              "alpha": 0.025, "beats": False}
    # the shorter reply is wrong on pairs 2 and 3, where the labeler agrees on 0 and 1: 1/2, not more than half
    assert m["against_length"]["n"] == 2 and m["against_length"]["value"] == 0.5
    assert not m["against_length"]["passes"] and not m["beats"]


def test_6_of_6_right_against_a_baseline_right_on_3_does_not_beat_it():
    # People chose the first reply each time; the shorter reply is the first on pairs 0-2, the longer on 3-5, so
    # each length rule and the coin agree on 3 of 6. The labeler is right on all 6.
    first, second = ["a", "b", "c", "dddd", "eeee", "ffff"], ["aaaa", "bbbb", "cccc", "d", "e", "f"]
    m = measure_labeler([0.9] * 6, [1] * 6, first, second)
    assert m["agreement"].value == 1.0 and m["baseline"] == "prefer the shorter reply"
    # The bootstrap interval of the difference lies above 0 (a resample of only the 3 pairs where both are right has
    # chance 1/64 < 2.5%), which passed this labeler before ...
    assert m["difference"].value == 0.5 and m["difference"].low > 0
    # ... but only 3 pairs tell them apart, all 3 its way: P(X >= 3 | 3 coins) = 1/8, not below 0.025.
    assert m["sign_test"] == {"discordant": 3, "for": 3, "against": 0, "p_value": pytest.approx(0.125),
                              "alpha": 0.025, "beats": False}
    assert m["against_length"]["passes"] and not m["beats"]  # right on the 3 pairs the shorter reply gets wrong
    # The same six pairs twice: 6 of 6 discordant pairs its way is enough, 1/64 < 0.025.
    m = measure_labeler([0.9] * 12, [1] * 12, first * 2, second * 2)
    assert m["sign_test"]["for"] == 6 and m["sign_test"]["p_value"] == pytest.approx(1 / 64) and m["beats"]


def length_lover(n_longer: int = 130, n_shorter: int = 70, copied: int = 6) -> tuple[list[dict], list[dict]]:
    """People chose the longer reply on n_longer pairs and the shorter on n_shorter; the labeler picks the longer
    reply, except on `copied` of the pairs where people chose the shorter, where it copies them."""
    humans = [row(i, GOOD, BAD) for i in range(n_longer)] + [row(n_longer + i, TERSE, RAMBLING)
                                                            for i in range(n_shorter)]
    ai = []
    for i, h in enumerate(humans):
        chosen, rejected = h["chosen"][0]["content"], h["rejected"][0]["content"]
        if len(chosen) < len(rejected) and i >= n_longer + copied:
            chosen, rejected = rejected, chosen
        ai.append({**row(i, chosen, rejected, 0.99, "ai", labeler=LABELER), "prompt": h["prompt"]})
    return humans, ai


def test_a_labeler_that_mostly_prefers_longer_replies_gets_weight_0():
    # 200 pairs, people chose the longer reply on 130 (65%). The labeler picks the longer reply on 194 (97%); on
    # 30 (15%) it copies people (the 24 of them where people chose the longer reply look the same as length).
    humans, ai = length_lover()
    assert sum(len(r["chosen"][0]["content"]) > len(r["rejected"][0]["content"]) for r in ai) == 194
    _, report = weigh_sources([("human.jsonl", humans, 1.0), ("ai.jsonl", ai, 1.0)], [], never)
    entry = report["sources"][LABELER]
    assert entry["agreement"]["value"] == pytest.approx(136 / 200)  # 68%
    assert entry["baseline"]["name"] == "prefer the longer reply" and entry["baseline"]["value"] == 0.65
    # It beats the longer reply: the 6 pairs where they differ are all its way, P = 1/64 < 0.025 ...
    assert entry["sign_test"] == {"discordant": 6, "for": 6, "against": 0, "p_value": pytest.approx(1 / 64),
                                  "alpha": 0.025, "beats": True}
    # ... but on the 70 pairs where the longer reply is wrong it agrees with people on 6: 8.6%, not more than half.
    length = entry["against_length"]
    assert length["baseline"] == "prefer the longer reply" and length["n"] == 70
    assert length["value"] == pytest.approx(6 / 70) and length["low"] <= 6 / 70 <= length["high"] < 0.5
    assert not length["passes"] and not entry["beats"] and entry["decision"] == "weight 0"
    assert entry["weight_used"] == {"ai.jsonl": 0.0}
    assert "; and" not in entry["warning"] and ("p = 0.0156, needs p < 0.025): on the 70 pairs where prefer the "
                                                "longer reply is wrong they agree with people on only 8.6% [") \
        in entry["warning"]
    assert "not more than half: their agreement is mostly that length rule's; so they are left out of training" \
        in entry["warning"]
    # A labeler that copies people on most of those pairs passes: 36 of 70 where the longer reply is wrong.
    humans, ai = length_lover(copied=36)
    entry = weigh_sources([("human.jsonl", humans, 1.0), ("ai.jsonl", ai, 1.0)], [], never)[1]["sources"][LABELER]
    assert entry["against_length"]["value"] == pytest.approx(36 / 70) and entry["decision"] == "calibrated"


def test_the_length_condition_is_vacuous_where_length_is_never_wrong():
    # People always chose the longer reply: the longer-reply rule is never wrong, and there is nothing to ask.
    humans = [row(i, GOOD, BAD) for i in range(20)]
    m = measure_labeler([0.9] * 20, [1] * 20, [GOOD] * 20, [BAD] * 20)
    assert m["against_length"] == {"baseline": "prefer the longer reply", "value": None, "low": None, "high": None,
                                   "n": 0, "vacuous": True, "passes": True}
    assert not m["beats"]  # no pair where it and the longer reply differ: the sign test has nothing, p = 1
    _, report = weigh_sources([("human.jsonl", humans, 1.0), ("ai.jsonl", labels(humans, 20), 1.0)], [], never)
    assert report["sources"][LABELER]["against_length"]["vacuous"]


# --------------------------------------------------------------------------------------------------------------------
# Labelers are keyed by model and mode


def test_labels_of_each_mode_are_a_labeler_of_their_own():
    humans = people(20)
    compare = labels(humans, 18)  # no `mode`: compare, as rows written before modes were
    score = labels(humans, 10, p=0.7, mode="score")
    sources, report = weigh_sources([("human.jsonl", humans, 1.0), ("compare.jsonl", compare, 1.0),
                                     ("score.jsonl", score, 1.0)], [], never)
    assert set(report["sources"]) == {LABELER, f"{LABELER} (score)"}
    assert labeler_of(compare[0], "x") == LABELER and labeler_of({**compare[0], "mode": "compare"}, "x") == LABELER
    assert labeler_of(score[0], "x") == f"{LABELER} (score)" and labeler_of({"mode": "contrast"}, "f") == "f (contrast)"
    right, chance = report["sources"][LABELER], report["sources"][f"{LABELER} (score)"]
    assert right["decision"] == "calibrated" and right["agreement"]["value"] == 0.9 and right["label_mode"] == "compare"
    assert chance["decision"] == "weight 0" and chance["agreement"]["value"] == 0.5
    assert chance["model"] == LABELER and chance["label_mode"] == "score"
    assert sources[1][1][0]["p_chosen"] == pytest.approx(19 / 22, abs=1e-4) and "weight" not in sources[1][1][0]
    assert all(r["weight"] == 0.0 for r in sources[2][1])


def test_calibration_labels_of_another_mode_do_not_measure_a_labeler_and_the_warning_says_so():
    humans = people(24)
    checked = labels(humans, 22)  # `rlaif eval labeler`'s labels.jsonl: compare mode
    for r, h in zip(checked, humans):
        r["human_chosen"] = "chosen" if r["chosen"] == h["chosen"] else "rejected"
    scored = [row(100 + i, "Yes, gladly.", "No.", 0.95, "ai", labeler=LABELER, mode="score") for i in range(5)]
    _, report = weigh_sources([("round-1.jsonl", scored, 1.0)], [("labels.jsonl", checked)], never)
    entry = report["sources"][f"{LABELER} (score)"]
    assert list(report["sources"]) == [f"{LABELER} (score)"] and entry["pairs"] == 0
    assert entry["decision"] == "too few pairs" and entry["weight_used"] == {"round-1.jsonl": 0.0}
    assert report["warnings"] == [entry["warning"]]  # one warning: the calibration labels' own is part of it
    assert entry["warning"].endswith(
        ". The calibration labels of the same model in mode compare (labels.jsonl) do not measure its labels in mode "
        "score: a labeler is measured in the mode it labels in, so label the human pairs in mode score too (`rlaif "
        "label --mode score --candidates HUMAN.jsonl`) and give that file as --calibration")
    # The same labels in compare mode are measured by them.
    compared = [{**r, "mode": "compare"} for r in scored]
    _, report = weigh_sources([("round-1.jsonl", compared, 1.0)], [("labels.jsonl", checked)], never)
    assert report["sources"][LABELER]["decision"] == "calibrated" and report["sources"][LABELER]["pairs"] == 24


# --------------------------------------------------------------------------------------------------------------------
# The settings, and the stage


def test_bad_settings_are_clear_errors_naming_the_field():
    with pytest.raises(DataError, match=r"reliability: expected one of weight, warn, off, not 'maybe'"):
        RewardConfig(reliability="maybe")
    with pytest.raises(DataError, match=r"reliability_min_pairs: expected a finite number >= 1, got 0"):
        RewardConfig(reliability_min_pairs=0)
    with pytest.raises(ConfigError, match=r"^calibration: not used with reliability off") as e:
        RewardConfig(reliability="off", calibration=["labels.jsonl"])
    assert e.value.fields == ["calibration", "reliability"]
    with pytest.raises(ConfigError, match=r"^reliability_min_pairs: not used with reliability off"):
        RewardConfig(reliability="off", reliability_min_pairs=5)
    with pytest.raises(DataError, match=r"calibration: labels.jsonl:2: a calibration file takes no weight"):
        RewardConfig(calibration=["labels.jsonl:2"])


def write(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def only_ai_training(tmp_path, measured: int, right: int) -> RewardConfig:
    """A reward config whose only training labels are AI ones, calibrated by a labels.jsonl of `measured` human
    pairs (as `rlaif eval labeler` writes it) of which the labeler gets `right` right."""
    checked = labels(people(measured), right)
    for r in checked:
        r["human_chosen"] = "chosen" if r["chosen"][0]["content"] in (GOOD, TERSE) else "rejected"
    training = [row(100 + i, "Yes, gladly.", "No.", 0.95, "ai", labeler=LABELER) for i in range(5)]
    return RewardConfig(data=[write(tmp_path / "ai.jsonl", training)], out=str(tmp_path / "rm"),
                        model=str(tmp_path / "no-model"), calibration=[write(tmp_path / "labels.jsonl", checked)],
                        eval_fraction=0.0)


def test_the_stage_stops_before_the_model_when_reliability_leaves_nothing_to_train(tmp_path):
    config = only_ai_training(tmp_path, measured=20, right=10)
    with pytest.raises(DataError, match=r"every pair has weight 0: nothing to train on; the AI labels of judge-7b got "
                                        r"weight 0, as they do not pass the reliability rule .* set reliability: warn"):
        run(config, progress=False)
    assert not (tmp_path / "rm").exists()
    # The same from the command line, where the warning is printed first.
    result = CliRunner().invoke(cli, ["reward", "--data", config.data[0], "--calibration", config.calibration[0],
                                      "--eval-fraction", "0", "--model", config.model, "--out", config.out])
    assert result.exit_code == 1 and "Traceback" not in result.output
    output = " ".join(result.output.split())
    assert "warning: AI labels of judge-7b get weight 0: on 20 pairs people also labelled" in output
    assert "error: " in output and "--reliability warn" in output
    result = CliRunner().invoke(cli, ["reward", "--data", config.data[0], "--reliability", "sometimes"])
    assert result.exit_code == 2 and "'sometimes' is not one of 'weight', 'warn', 'off'" in result.output


def test_the_stage_stops_when_too_few_pairs_measure_the_only_labeler(tmp_path):
    config = only_ai_training(tmp_path, measured=5, right=5)
    with pytest.raises(DataError, match=r"every pair has weight 0: nothing to train on; the AI labels of judge-7b got "
                                        r"weight 0, as too few pairs people also labelled measure them "
                                        r"\(reliability_min_pairs: 20\) .* set reliability: warn"):
        run(config, progress=False)
    assert not (tmp_path / "rm").exists()


def test_metrics_json_has_the_reliability_section(tmp_path, tiny_model_dir):
    humans = people(40)
    ai = labels(humans, 36, p=0.9) + [row(100 + i, "Yes, gladly.", "No.", 0.9, "ai", labeler=LABELER)
                                      for i in range(4)]
    result = CliRunner().invoke(cli, ["reward", "--data", write(tmp_path / "human.jsonl", humans) + ":2", "--data",
                                      write(tmp_path / "ai.jsonl", ai), "--out", str(tmp_path / "rm"), "--model",
                                      str(tiny_model_dir), "--eval-fraction", "0.25", "--max-steps", "1",
                                      "--batch-size", "4", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "AI labelers against people (reliability: weight)" in result.output and "calibrated" in result.output
    saved = json.loads((tmp_path / "rm" / "metrics.json").read_text())
    section = saved["reliability"]
    assert section["mode"] == "weight" and section["min_pairs"] == 20
    entry = section["sources"][LABELER]
    held = sum(held_out_key(pair_key(h), 0.25) for h in humans)
    assert entry["pairs"] == 40 - held and entry["held_out_left_out"] == held and section["human_pairs"] == 40 - held
    assert set(entry) >= {"model", "label_mode", "files", "labels", "pairs", "agreement", "baseline", "baselines",
                          "difference", "sign_test", "against_length", "slope", "weight_given", "weight_used",
                          "decision", "interval"}
    assert set(entry["sign_test"]) == {"discordant", "for", "against", "p_value", "alpha", "beats"}
    assert entry["decision"] == "calibrated" and entry["weight_used"] == {str(tmp_path / "ai.jsonl"): 1.0}
    assert set(entry["agreement"]) == {"value", "low", "high", "n"} and entry["agreement"]["n"] == 40 - held
    assert f"reliability: {LABELER} calibrated (slope " in saved["summary"]


# --------------------------------------------------------------------------------------------------------------------
# Where the decision is shown: `rlaif reward`'s closing table and the run report


def three_labelers() -> dict:
    """The reliability section of a reward stage with a long-named length lover (weight 0), a labeler right on 18
    of 20 (calibrated) and one too few pairs measure (weight 0)."""
    humans, ai = length_lover()
    long_name = "HuggingFaceTB/SmolLM2-135M-Instruct"
    ai = [{**r, "labeler": long_name, "mode": "score"} for r in ai]
    good = labels(humans[:10] + humans[130:140], 18)
    few = [{**r, "labeler": "<b>tiny</b>"} for r in labels(humans[:3], 3)]
    _, report = weigh_sources([("human.jsonl", humans, 1.0), ("ai.jsonl", ai, 1.0), ("good.jsonl", good, 2.0),
                               ("few.jsonl", few, 1.5)], [], never)
    return report


def test_the_closing_table_is_readable_at_100_columns(monkeypatch):
    from rich.console import Console

    from rlaif.cli import training

    console = Console(width=100, record=True, highlight=False)
    monkeypatch.setattr(training, "out", console)
    training.print_reliability(three_labelers())
    text = console.export_text()
    lines = text.splitlines()
    assert max(map(len, lines)) <= 100 and "…" not in text  # nothing cut off, headers included
    header = " ".join(line for line in lines[:6] if "┃" in line)
    for word in ("labeler", "agrees", "best baseline", "sign test", "where length", "is wrong", "slope", "decision"):
        assert word in header
    body = [line.split("│") for line in lines if line.startswith("│")]
    assert "".join(cells[1].strip() for cells in body).startswith("HuggingFaceTB/SmolLM2-135M-Instruct(score)")
    flat = " ".join(" ".join(cell.strip() for cell in cells) for cells in body)
    assert "68.0% of 200" in flat and "longer 65.0%" in flat and "p = 0.016" in flat and "6 of 6" in flat
    assert "8.6% of 70" in flat and "weight 0" in flat and "1 → 0" in flat and "calibrated" in flat
    assert "3 pairs" in flat and "too few" in flat and "1.5 → 0" in flat and "2 → 2" in flat


def test_the_report_shows_each_rounds_reliability_decision(tmp_path):
    from rlaif.report import _reward

    reliability = three_labelers()
    metrics = {"train": {"pairs": 250, "first_loss": 0.7, "last_loss": 0.5}, "heldout": None,
               "reliability": json.loads(json.dumps(reliability))}
    (tmp_path / "round-1" / "reward").mkdir(parents=True)
    (tmp_path / "round-1" / "reward" / "metrics.json").write_text(json.dumps(metrics))
    (tmp_path / "round-2" / "reward").mkdir(parents=True)  # a round of plain RLAIF: nothing measured, a note says so
    plain = {**metrics, "reliability": weigh_sources([("ai.jsonl", labels(people(4), 4), 1.0)], [], never)[1]}
    (tmp_path / "round-2" / "reward" / "metrics.json").write_text(json.dumps(plain))
    page = "".join(_reward(tmp_path, [1, 2]))
    assert "<h3>Round 1: AI labelers against people (reliability: weight; at least 20 measured pairs needed)</h3>" \
        in page and "Round 2: AI labelers" not in page
    assert "<h3>Round 2: AI labels not measured against people</h3><ul class=note><li>the AI labels of " in page
    assert ("<th>labeler</th><th>pairs measured</th><th>agreement</th><th>best baseline</th><th>sign test p (its way, "
            "of pairs that differ)</th><th>agreement where length is wrong</th><th>slope</th>"
            "<th>weight given → used</th><th>decision</th>") in page
    length = reliability["sources"]["HuggingFaceTB/SmolLM2-135M-Instruct (score)"]
    row = (f"<td class=>HuggingFaceTB/SmolLM2-135M-Instruct (score)</td><td class=num>200</td><td class=num>68.0% ["
           f"{100 * length['agreement']['low']:.1f}, {100 * length['agreement']['high']:.1f}]</td>"
           "<td class=num>prefer the longer reply\n65.0% [")
    assert row in page
    assert "<td class=num>0.0156\n(6 of 6)</td><td class=num>8.6% [" in page and "]\nof 70</td>" in page
    assert "<td class=num>1 → 0</td><td class=num>weight 0</td>" in page
    assert "<td class=>&lt;b&gt;tiny&lt;/b&gt;</td><td class=num>3</td><td class=num>-</td>" in page  # escaped
    assert "<td class=num>1.5 → 0</td><td class=num>too few pairs</td>" in page and "<b>tiny" not in page
    warnings = re.search(r"<ul class=note>(.*?)</ul>", page).group(1)
    assert warnings.count("<li>") == 2 and "AI labels of HuggingFaceTB/SmolLM2-135M-Instruct (score) get weight 0" \
        in warnings and "AI labels of &lt;b&gt;tiny&lt;/b&gt; get weight 0: only 3 training-side pairs" in warnings


def test_pairs_people_answered_because_the_labeler_doubted_them_do_not_measure_it():
    """Human rows that `rankings export` chose for the labeler's doubt (why: uncertain, inconsistent, ...) train but
    never measure: on them a labeler is near chance by construction. Its random share measures it."""
    humans = people(40)
    routed = [{**h, "why": "random" if i < 20 else "uncertain"} for i, h in enumerate(humans)]
    ai = labels(humans[:20], 18) + labels(humans[20:], 10)  # right on 18 of the random 20, 10 of the doubted 20
    sources, report = weigh_sources([("human.jsonl", routed, 1.0), ("ai.jsonl", ai, 1.0)], [], never)
    entry = report["sources"][LABELER]
    assert report["chosen_for_doubt"] == 20 and report["human_pairs"] == 20
    assert entry["pairs"] == 20 and entry["agreement"]["value"] == pytest.approx(0.9) and entry["beats"]
    assert sources[0][1] == routed  # they still train
    # measured on every pair, the same labeler would be at 28 of 40
    mixed = weigh_sources([("human.jsonl", humans, 1.0), ("ai.jsonl", ai, 1.0)], [], never)[1]
    assert mixed["sources"][LABELER]["agreement"]["value"] == pytest.approx(0.7)
    few = weigh_sources([("human.jsonl", routed[15:], 1.0), ("ai.jsonl", ai[15:], 1.0)], [], never)[1]
    assert few["sources"][LABELER]["decision"] == "too few pairs"
    assert "20 more pairs people answered were chosen because the labeler was unsure" in few["warnings"][0]


def test_no_side_door_for_pairs_chosen_for_doubt():
    """Every human row chosen for the labeler's doubt: the labeler is not taken as plain RLAIF (full weight,
    unmeasured) but as measured on too few pairs; and a labeler check's labels of those pairs (labels.jsonl,
    `human_chosen`) do not bring them back as calibration."""
    humans = [{**h, "why": "uncertain"} for h in people(30)]
    ai = labels(humans, 27)
    _, report = weigh_sources([("human.jsonl", humans, 1.0), ("ai.jsonl", ai, 1.0)], [], never)
    assert report["sources"][LABELER]["decision"] == "too few pairs" and report["chosen_for_doubt"] == 30
    check = [{**row, "human_chosen": "chosen"} for row in labels(humans, 27)]  # as `rlaif eval labeler` writes
    _, report = weigh_sources([("human.jsonl", humans, 1.0), ("ai.jsonl", ai, 1.0)], [("labels.jsonl", check)], never)
    assert report["sources"][LABELER]["pairs"] == 0 and report["sources"][LABELER]["decision"] == "too few pairs"
    drawn = [{**h, "why": "random"} for h in people(30)]  # the random share: all of them measure it
    _, report = weigh_sources([("human.jsonl", drawn, 1.0), ("ai.jsonl", ai, 1.0)], [], never)
    assert report["sources"][LABELER]["pairs"] == 30 and report["chosen_for_doubt"] == 0
