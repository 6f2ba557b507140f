"""Agreement (rlaif.agreement): kappa and alpha against hand computations and Krippendorff's published example,
perfect and chance agreement, a plain-loop alpha with missing answers, ties, each principle against people beside
the length baselines, and what is left out. No model is loaded."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from rlaif.agreement import (
    FIRST,
    MIN_COMMON_PAIRS,
    SECOND,
    TIE,
    agreement_report,
    alpha_interval,
    cohen_kappa,
    inter_annotator_line,
    kappa_interval,
    krippendorff_alpha,
    nominal_alpha,
    percent_agreement,
    shown_estimate,
)

F, S, T = FIRST, SECOND, TIE
nan = np.nan


def person(prompt: str, chosen: str, rejected: str, who: str | None, p: float = 1.0, row_id: str | None = None) -> dict:
    row = {"id": row_id or f"{prompt}-{who}", "prompt": [{"role": "user", "content": prompt}],
           "chosen": [{"role": "assistant", "content": chosen}],
           "rejected": [{"role": "assistant", "content": rejected}], "p_chosen": p, "source": "human"}
    if who:
        row["annotator"] = who
    return row


def ai(prompt: str, chosen: str, rejected: str, principle_p: dict | None, labeler: str = "judge") -> dict:
    """An AI row as `rlaif label` writes it: p_chosen the mean of its principles' (0.7 without any)."""
    p = sum(principle_p.values()) / len(principle_p) if principle_p else 0.7
    row = {"id": f"{prompt}-ai", "prompt": [{"role": "user", "content": prompt}],
           "chosen": [{"role": "assistant", "content": chosen}],
           "rejected": [{"role": "assistant", "content": rejected}], "p_chosen": p, "source": "ai",
           "labeler": labeler}
    if principle_p is not None:
        row["principle_p"] = principle_p
        row["principles"] = list(principle_p)
    return row


def flipped(row: dict) -> dict:
    """The same label with its replies the other way round."""
    out = {**row, "chosen": row["rejected"], "rejected": row["chosen"], "p_chosen": 1 - row["p_chosen"]}
    if "principle_p" in row:
        out["principle_p"] = {k: 1 - v for k, v in row["principle_p"].items()}
    return out


# --------------------------------------------------------------------------------------------------------------------
# The statistics, by hand and against published values


def test_kappa_and_alpha_by_hand_each_pair_both_ways():
    # Two annotators, five pairs: agree, agree, disagree, agree, and a tie against "first".
    a, b = [F, S, F, F, T], [F, S, S, F, F]
    # Both ways round: 10 items, (F,F) (S,S) (F,S) (F,F) (T,F) and (S,S) (F,F) (S,F) (S,S) (T,S).
    # p_o = 6/10. a's answers: F .4, S .4, T .2; b's: F .5, S .5. p_e = .4 * .5 + .4 * .5 = .4.
    # kappa = (.6 - .4) / (1 - .4) = 1/3 (Cohen 1960, eq. 1).
    assert cohen_kappa(a, b) == pytest.approx(1 / 3)
    # Krippendorff 2011, sec. A: the coincidence matrix of the 10 two-value units. o_FF = o_SS = 6 (three agreeing
    # units each, counted both ways), o_FS = o_SF = 2, o_TF = o_FT = o_TS = o_ST = 1; n_F = n_S = 9, n_T = 2, n = 20.
    # alpha = 1 - (n - 1) * sum_{c != k} o_ck / sum_{c != k} n_c n_k = 1 - 19 * 8 / (2 * (81 + 18 + 18)) = 82 / 234.
    assert krippendorff_alpha([a, b]) == pytest.approx(82 / 234)
    # With no ties, counting both ways makes kappa 2 p_o - 1: 3 of 4 pairs agree -> 0.5.
    assert cohen_kappa([F, S, F, F], [F, S, S, F]) == pytest.approx(0.5)
    # The order of the replies does not matter: swapping first and second in every pair changes nothing.
    swap = {F: S, S: F, T: T}
    assert cohen_kappa([swap[x] for x in a], [swap[x] for x in b]) == pytest.approx(1 / 3)
    # A weight counts a pair that many times (a bootstrap resample's draws).
    assert cohen_kappa([F, S, S, T], [F, S, F, F], weight=[1, 2, 1, 1]) == \
        pytest.approx(cohen_kappa([F, S, S, S, T], [F, S, S, F, F]))


def test_alpha_matches_krippendorffs_published_example_with_missing_values():
    # Krippendorff (2011), "Computing Krippendorff's alpha-reliability", sec. C: four observers, twelve units,
    # values 1-5, missing data; nominal alpha = 0.743.
    data = [[1, 2, 3, 3, 2, 1, 4, 1, 2, nan, nan, nan],
            [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, nan, 3],
            [nan, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, nan],
            [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, nan]]
    assert nominal_alpha(data) == pytest.approx(0.743, abs=5e-4)


def plain_nominal_alpha(matrix) -> float:
    """Krippendorff's nominal alpha by a plain loop over the coincidence matrix (Krippendorff 2011, sec. C): each
    unit with m >= 2 values adds 1 / (m - 1) for every ordered pair of its values."""
    o: dict[tuple, float] = {}
    for unit in np.asarray(matrix, dtype=float).T:
        values = [v for v in unit if not np.isnan(v)]
        if len(values) < 2:
            continue
        for i, j in itertools.permutations(range(len(values)), 2):
            o[values[i], values[j]] = o.get((values[i], values[j]), 0.0) + 1 / (len(values) - 1)
    n_c: dict[float, float] = {}
    for (c, _), count in o.items():
        n_c[c] = n_c.get(c, 0.0) + count
    n = sum(n_c.values())
    observed = sum(count for (c, k), count in o.items() if c != k)
    expected = sum(n_c[c] * n_c[k] for c in n_c for k in n_c if c != k)
    return 1 - (n - 1) * observed / expected


def test_alpha_with_missing_answers_and_ties_matches_a_plain_loop():
    rng = np.random.default_rng(4)
    truth = rng.integers(0, 2, 40)
    matrix = np.where(rng.uniform(size=(4, 40)) < 0.8, truth, rng.integers(0, 3, (4, 40))).astype(float)
    matrix[rng.uniform(size=(4, 40)) < 0.4] = nan  # each annotator skipped some pairs
    doubled = np.concatenate([matrix, np.where(matrix == F, S, np.where(matrix == S, F, matrix))], axis=1)
    assert krippendorff_alpha(matrix) == pytest.approx(plain_nominal_alpha(doubled))
    assert 0.3 < krippendorff_alpha(matrix) < 0.95


def test_perfect_agreement_is_one_and_chance_is_about_zero():
    perfect = [F, S, S, F, F, S, F, T]
    assert cohen_kappa(perfect, perfect) == 1.0 and krippendorff_alpha([perfect, perfect, perfect]) == 1.0
    assert list(percent_agreement([perfect, perfect])) == [1.0] * 8
    kappa = kappa_interval(perfect, perfect)
    # every resample agrees perfectly too: no interval, rather than [1, 1], a certainty 8 pairs cannot give
    assert kappa == {"value": 1.0, "low": None, "high": None, "n": 8}
    assert alpha_interval([perfect, perfect]) == {"value": 1.0, "low": None, "high": None, "n": 8}
    # Every answer a tie: kappa and alpha are 0/0, not 1 and not 0.
    assert cohen_kappa([T, T], [T, T]) is None and krippendorff_alpha([[T, T], [T, T]]) is None
    assert kappa_interval([T, T], [T, T]) is None

    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 2, 400), rng.integers(0, 2, 400)  # two coins
    kappa = kappa_interval(a, b, resamples=400)
    assert abs(kappa["value"]) < 0.1 and kappa["low"] < 0 < kappa["high"] and kappa["n"] == 400
    alpha = alpha_interval(np.stack([a, b, rng.integers(0, 2, 400)]), resamples=400)
    assert abs(alpha["value"]) < 0.1 and alpha["low"] < 0 < alpha["high"]


def test_intervals_contain_the_value_and_repeat_with_the_seed():
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 2, 60)
    a = np.where(rng.uniform(size=60) < 0.85, truth, 1 - truth)
    b = np.where(rng.uniform(size=60) < 0.85, truth, 1 - truth)
    kappa = kappa_interval(a, b)
    assert kappa["low"] < kappa["value"] < kappa["high"] and kappa["value"] == pytest.approx(cohen_kappa(a, b))
    assert kappa == kappa_interval(a, b)  # seeded: the same interval on every run
    alpha = alpha_interval([a, b])
    assert alpha["low"] < alpha["value"] < alpha["high"] and alpha["n"] == 60


def test_percent_agreement_per_pair():
    # three annotators: all agree; two of three (1 agreeing pair of answers of 3); all differ; two answers
    matrix = [[F, F, F, S], [F, F, S, nan], [F, S, T, S]]
    assert list(percent_agreement(matrix)) == pytest.approx([1.0, 1 / 3, 0.0, 1.0])
    with pytest.raises(ValueError, match="two answers or more"):
        percent_agreement([[F, nan], [F, nan]])


# --------------------------------------------------------------------------------------------------------------------
# From preference rows


SHORT, LONG = "Keep it sealed.", "Keep it sealed, upright, away from heat and out of children's reach."


def fixture_rows() -> list[dict]:
    """Seven pairs (see the test below for what each is for)."""
    return [
        # q0, q1: ana and ben agree (q0 on the shorter reply, q1 on the longer); an unnamed answer on q1
        person("q0", SHORT, LONG, "ana"), person("q0", SHORT, LONG, "ben"),
        person("q1", LONG + " 1", "Tiny.", "ana"), person("q1", LONG + " 1", "Tiny.", "ben"),
        person("q1", LONG + " 1", "Tiny.", None, row_id="q1-unnamed"),
        # q2: ana and ben disagree: people tie
        person("q2", "No.", "A reply that explains.", "ana"), person("q2", "A reply that explains.", "No.", "ben"),
        # q3: cy alone, on the longer reply; q4: ana alone, no AI label; q6: ana alone, AI without principle_p
        person("q3", "A fuller answer.", "Ok.", "cy"),
        person("q4", "Fine.", "Also fine, longer.", "ana"),
        person("q6", "Yes.", "Yes, with care.", "ana"),
        # a second answer of ana's to q0, and the unnamed q1 row again: both left out as repeated
        person("q0", LONG, SHORT, "ana", row_id="q0-ana-again"),
        person("q1", LONG + " 1", "Tiny.", None, row_id="q1-unnamed"),
        # the AI: harm right on q0 and q1, tied on q3; help wrong on q0 and q1 (rows face the AI's choice)
        ai("q0", SHORT, LONG, {"harm": 0.9, "help": 0.4}),
        ai("q1", "Tiny.", LONG + " 1", {"harm": 0.2, "help": 0.7}),
        ai("q2", "No.", "A reply that explains.", {"harm": 0.8}),
        ai("q3", "Ok.", "A fuller answer.", {"harm": 0.5}),
        ai("q5", "Only the AI.", "Labelled this.", {"harm": 0.6}),
        ai("q6", "Yes.", "Yes, with care.", None),
    ]


def test_report_from_rows_by_hand():
    report = agreement_report(fixture_rows())
    json.dumps(report)  # JSON-able as it is
    assert report["rows"] == {"human": 12, "ai": 6, "other": 0}
    assert report["annotators"] == 3 and report["human_pairs"] == 6
    inter = report["inter_annotator"]
    # q0, q1, q2 answered by ana and ben: they agree on 2 of 3
    assert inter["pairs"] == 3 and inter["annotators"] == 2 and inter["answers"] == 6 and inter["tie_answers"] == 0
    assert inter["percent_agreement"]["value"] == pytest.approx(2 / 3)
    figure = inter["percent_agreement"]  # Wilson: honest on 3 pairs
    assert figure["low"] < figure["value"] < figure["high"] and figure["n"] == 3
    # 3 pairs are too few for kappa and alpha (MIN_COMMON_PAIRS): not reported, counted, and said
    assert inter["kappa"] is None and inter["alpha"] is None and inter["pairwise_kappa"] == []
    assert inter["min_common_pairs"] == MIN_COMMON_PAIRS == 10
    assert report["left_out"]["inter_annotator"] == {"single_annotator": 3, "annotator_pairs_too_few": 1,
                                                      "unnamed_answers": 1, "repeated_answers": 2}

    judge = report["human_ai"]["judge"]
    # measured: q0, q1, q3 (q2 people tied, q5 no person, q6 no principle_p)
    assert judge["pairs"] == 3
    assert judge["left_out"] == {"people_tied": 1, "no_human_label": 1, "no_principle_p": 1}
    harm, helpful = judge["principles"]["harm"], judge["principles"]["help"]
    assert harm["pairs"] == 3 and harm["agreement"]["value"] == pytest.approx(2.5 / 3)  # q3's 0.5 counts half
    assert helpful["pairs"] == 2 and helpful["agreement"]["value"] == 0.0
    assert judge["overall"]["agreement"]["value"] == pytest.approx(2.5 / 3)  # 0.65 right, 0.45 wrong way: 0.55 right
    # people chose the shorter reply on q0, the longer on q1 and q3
    assert harm["baselines"]["prefer the shorter reply"]["value"] == pytest.approx(1 / 3)
    assert harm["baselines"]["prefer the longer reply"]["value"] == pytest.approx(2 / 3)
    assert helpful["baselines"]["prefer the shorter reply"]["value"] == pytest.approx(1 / 2)
    for figure in [harm["agreement"], *harm["baselines"].values()]:  # Wilson intervals over the same 3 pairs
        assert figure["low"] <= figure["value"] <= figure["high"] and figure["n"] == 3 and figure["low"] < figure["high"]
    assert report["left_out"]["human_ai"] == {"people_tied": 1, "no_ai_label": 1, "no_human_label": 1,
                                              "no_principle_p": 1}
    assert report["notes"] == [("Cohen's kappa and Krippendorff's alpha not reported (n too small): 3 pairs two or "
                               "more people answered, fewer than 10; percent agreement's interval shows how little "
                               "they say")]
    line = inter_annotator_line(report)
    assert "on the 3 pairs two or more of 2" in line and "percent agreement 66.7% [" in line
    assert "Cohen's kappa and Krippendorff's alpha - (n too small: they need 10 pairs)" in line


def twelve_pairs(disagree: int) -> list[dict]:
    """ana and ben on 12 pairs, ben answering the other reply on the first `disagree`."""
    rows = []
    for i in range(12):
        x, y = f"reply {i}", f"another reply {i}"
        rows += [person(f"q{i}", x, y, "ana"), person(f"q{i}", *((y, x) if i < disagree else (x, y)), "ben")]
    return rows


def test_kappa_and_alpha_from_rows_by_hand_on_enough_pairs():
    report = agreement_report(twelve_pairs(disagree=4), resamples=500)
    inter = report["inter_annotator"]
    assert inter["pairs"] == 12 and inter["percent_agreement"]["value"] == pytest.approx(8 / 12)
    assert inter["kappa"]["value"] == pytest.approx(2 * 8 / 12 - 1)  # no ties: 2 p_o - 1
    # alpha, both ways round (24 units): o_FF = o_SS = 16, o_FS = o_SF = 8, n_F = n_S = 24, n = 48:
    # 1 - 47 * 16 / (2 * 24 * 24) = 25/72
    assert inter["alpha"]["value"] == pytest.approx(25 / 72)
    assert [p["annotators"] for p in inter["pairwise_kappa"]] == [["ana", "ben"]]
    for figure in (inter["percent_agreement"], inter["kappa"], inter["alpha"]):
        assert figure["low"] < figure["value"] < figure["high"] and figure["n"] == 12
    assert report["notes"] == [] and "Cohen's kappa 0.33 [" in inter_annotator_line(report)


def test_no_zero_width_interval_where_every_resample_agrees():
    # 12 pairs, all agreeing, no ties: every resample's kappa and alpha is 1, so the bootstrap says [1, 1]
    report = agreement_report(twelve_pairs(disagree=0), resamples=300)
    inter = report["inter_annotator"]
    assert inter["kappa"] == {"value": 1.0, "low": None, "high": None, "n": 12}
    assert inter["alpha"] == {"value": 1.0, "low": None, "high": None, "n": 12}
    low, high = inter["percent_agreement"]["low"], inter["percent_agreement"]["high"]
    assert low == pytest.approx(0.7575, abs=1e-4) and high == 1.0  # Wilson for 12 of 12: the honest interval stays
    assert report["notes"] == [("Cohen's kappa and Krippendorff's alpha: no interval, as every bootstrap resample of "
                               "the 12 pairs gives the same figure (a zero-width interval would claim certainty); "
                               "read percent agreement's interval")]
    assert "Cohen's kappa 1.00 (no interval); Krippendorff's alpha 1.00 (no interval)" in inter_annotator_line(report)
    assert shown_estimate(inter["percent_agreement"], percent=True) == "100.0% [75.8, 100.0]"


def test_the_report_shows_too_few_pairs_and_a_missing_interval(tmp_path):
    from rlaif.records import dumps_json
    from rlaif.report import render

    reward = tmp_path / "run" / "round-1" / "reward"
    reward.mkdir(parents=True)
    small = agreement_report(twelve_pairs(disagree=0)[:6])  # 3 pairs, all agreeing: once kappa 1.00 [1.00, 1.00]
    (reward / "metrics.json").write_text(dumps_json({"train": {"pairs": 3}, "human_agreement": small}))
    page = render(tmp_path / "run").read_text()
    assert page.count("<td class=num>- (n too small)</td>") == 2 and "[1.00, 1.00]" not in page
    assert "<td class=num>100.0% [43.9, 100.0]</td>" in page and "(n too small): 3 pairs two or more" in page
    flat = agreement_report(twelve_pairs(disagree=0), resamples=200)
    (reward / "metrics.json").write_text(dumps_json({"train": {"pairs": 12}, "human_agreement": flat}))
    page = render(tmp_path / "run").read_text()
    assert page.count("<td class=num>1.00 (no interval)</td>") == 2 and "[1.00, 1.00]" not in page


def test_the_report_does_not_depend_on_which_reply_a_row_calls_chosen():
    rows = fixture_rows()
    assert agreement_report([flipped(r) for r in rows]) == agreement_report(rows)


def test_ties_are_answers_and_three_annotators_get_alpha_and_pairwise_kappa():
    texts = [(f"q{i}", f"reply {i}", f"another reply {i}") for i in range(12)]
    rows = []
    for i, (q, x, y) in enumerate(texts):
        rows.append(person(q, x, y, "ana"))
        rows.append(person(q, x, y, "ben", p=0.5 if i % 4 == 0 else 1.0))  # ben ties every fourth pair
        if i < 10:
            rows.append(person(q, y if i % 3 == 0 else x, x if i % 3 == 0 else y, "cy"))
    rows.append(person("q0", "x", "y", "dee"))  # dee answered one pair, alone
    rows.append(person("q0", "reply 0", "another reply 0", "eve"))  # eve shares one pair with the others
    report = agreement_report(rows, resamples=300)
    inter = report["inter_annotator"]
    assert inter["annotators"] == 4 and inter["pairs"] == 12 and inter["tie_answers"] == 3
    assert inter["kappa"] is None  # more than two annotators: alpha is the headline
    assert {tuple(p["annotators"]) for p in inter["pairwise_kappa"]} == {("ana", "ben"), ("ana", "cy"), ("ben", "cy")}
    assert report["left_out"]["inter_annotator"]["annotator_pairs_too_few"] == 3  # eve with ana, ben and cy
    ana_ben = next(p for p in inter["pairwise_kappa"] if p["annotators"] == ["ana", "ben"])
    # ana chose "reply i", the second in text order, every time; ben too, but for his ties
    a, b = [S] * 12, [T if i % 4 == 0 else S for i in range(12)]
    assert ana_ben["pairs"] == 12 and ana_ben["kappa"]["value"] == pytest.approx(cohen_kappa(a, b))
    assert ana_ben["kappa"]["value"] < 1  # a tie against a winner is a disagreement
    assert inter["alpha"]["low"] <= inter["alpha"]["value"] <= inter["alpha"]["high"]
    assert report["left_out"]["inter_annotator"]["single_annotator"] == 1  # dee's pair
    assert "Krippendorff's alpha" in inter_annotator_line(report) and "Cohen's kappa" not in \
        inter_annotator_line(report)


def test_what_is_missing_is_said_and_counted():
    alone = agreement_report([person("q0", SHORT, LONG, "ana"), person("q1", SHORT, LONG, "ben")])
    assert alone["inter_annotator"] is None and alone["left_out"]["inter_annotator"]["single_annotator"] == 2
    assert alone["notes"][0].startswith("people's agreement with each other not measured: no pair was answered by "
                                        "two or more named annotators (2 annotators, 2 pairs answered by one)")
    assert inter_annotator_line(alone) == alone["notes"][0]
    unnamed = agreement_report([person("q0", SHORT, LONG, None), ai("q0", LONG, SHORT, {"harm": 0.8})])
    assert "no row names its annotator" in unnamed["notes"][0]
    assert unnamed["left_out"]["inter_annotator"]["unnamed_answers"] == 1
    assert unnamed["human_ai"]["judge"]["principles"]["harm"]["agreement"]["value"] == 0.0  # the other reply
    only_ai = agreement_report([ai("q0", LONG, SHORT, {"harm": 0.8})])
    assert only_ai["notes"] == ["no human rows: nothing to measure agreement with",
                                ("the AI labels were not measured against people: no pair both labelled with "
                                 "principle_p and decided by people")]
    assert only_ai["human_ai"]["judge"] == {"pairs": 0, "overall": None, "principles": {},
                                            "left_out": {"people_tied": 0, "no_human_label": 1, "no_principle_p": 0}}
    empty = agreement_report([])
    assert empty["inter_annotator"] is None and empty["human_ai"] == {} and empty["human_pairs"] == 0
    assert empty["notes"] == ["no human rows: nothing to measure agreement with"]


def test_recorded_choices_and_measure_only_rows_count_toward_the_majority_only():
    # labels.jsonl of `rlaif eval labeler`: an AI row recording people's choice, for a pair no human row labels
    recorded = {**ai("q0", SHORT, LONG, {"harm": 0.7}), "human_chosen": "rejected"}
    report = agreement_report([recorded])
    assert report["human_ai"]["judge"]["principles"]["harm"]["agreement"]["value"] == 0.0
    # calibration files' people: counted toward people's majority, never toward people's agreement with each other
    data = [person("q0", SHORT, LONG, "ana"), ai("q0", SHORT, LONG, {"harm": 0.7}), ai("q1", SHORT, LONG, {"harm": 0.7})]
    calibration = [person("q0", SHORT, LONG, "ben"), person("q1", LONG, SHORT, "ben"),
                   person("q0", SHORT, LONG, "ana")]  # the data's own row again: counted once
    report = agreement_report(data, measure_only=calibration)
    assert report["inter_annotator"] is None and report["annotators"] == 1
    assert report["human_ai"]["judge"]["pairs"] == 2
    assert report["human_ai"]["judge"]["principles"]["harm"]["agreement"]["value"] == 0.5  # right on q0, not q1
    assert report["left_out"]["inter_annotator"]["repeated_answers"] == 1


def test_two_imports_of_the_same_tasks_share_ids_but_not_people():
    # The page's answers and Label Studio's, each imported alone: every row has its bare task id. Named rows are the
    # same answer only when the same person gave it; unnamed rows, when the row id repeats.
    page = [person(f"q{i}", f"reply {i}", f"other {i}", "ana", row_id=f"t{i}") for i in range(12)]
    label_studio = [person(f"q{i}", f"reply {i}", f"other {i}", "7", row_id=f"t{i}") for i in range(12)]
    report = agreement_report(page + label_studio, resamples=200)
    assert report["inter_annotator"]["pairs"] == 12 and report["annotators"] == 2
    assert report["left_out"]["inter_annotator"]["repeated_answers"] == 0
    assert report["inter_annotator"]["kappa"]["value"] == 1.0
    # the same file twice: ana's answers again are repeats, by her name
    again = agreement_report(page + page + label_studio, resamples=200)
    assert again["left_out"]["inter_annotator"]["repeated_answers"] == 12 and again["inter_annotator"]["pairs"] == 12
    # unnamed rows: the same id is the same row; another id is another answer
    unnamed = [person("q0", "reply 0", "other 0", None, row_id="t0")]
    report = agreement_report(unnamed * 2 + [person("q0", "reply 0", "other 0", None, row_id="t0-b")])
    assert report["left_out"]["inter_annotator"] == {"single_annotator": 0, "annotator_pairs_too_few": 0,
                                                      "unnamed_answers": 2, "repeated_answers": 1}


def test_each_labeler_is_measured_apart():
    rows = [person("q0", SHORT, LONG, "ana"), ai("q0", SHORT, LONG, {"harm": 0.8}, labeler="big"),
            ai("q0", SHORT, LONG, {"harm": 0.2}, labeler="small"),
            {**ai("q0", SHORT, LONG, {"harm": 0.9}, labeler="big"), "mode": "score"}]
    report = agreement_report(rows)
    assert set(report["human_ai"]) == {"big", "small", "big (score)"}  # rlaif.reliability.labeler_of
    assert report["human_ai"]["big"]["principles"]["harm"]["agreement"]["value"] == 1.0
    assert report["human_ai"]["small"]["principles"]["harm"]["agreement"]["value"] == 0.0
