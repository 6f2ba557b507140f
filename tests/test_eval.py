"""Judging a labeler and a policy with baselines, intervals and a verdict: hand-computed baselines, the verdict on
clear cases, length-controlled win rates, eval.json's layout, the labels and the report. Pure functions and a
scripted fake labeler; no model is loaded."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from rich.console import Console

from rlaif import stats
from rlaif.evaluate import (
    SUMMARY_COLUMNS,
    baselines,
    human_choice_shown_first,
    injection_report,
    label_rows,
    mode_metrics,
    print_labeler_report,
    shown_figure,
    summarize,
    verdict,
)
from rlaif.label import Judgement, Pair

PROMPT = [{"role": "user", "content": "How do I store bleach?"}]
KEYS = ("agreement", "consistency", "ece", "mean_confidence")


def pairs_of(texts: list[tuple[str, str]]) -> list[Pair]:
    """Pairs whose `first` is the reply people chose."""
    return [Pair(f"p{i}", PROMPT, chosen, rejected) for i, (chosen, rejected) in enumerate(texts)]


# --------------------------------------------------------------------------------------------------------------------
# Baselines and the verdict


def test_baselines_on_four_pairs_by_hand():
    # chosen shorter, chosen longer, equal length (a tie), chosen shorter
    pairs = pairs_of([("aa", "bbbb"), ("cccccc", "d"), ("eee", "fff"), ("g", "hhhhhhhh")])
    skeptics = baselines(pairs)
    assert list(skeptics) == ["prefer the shorter reply", "prefer the longer reply", "always the first position",
                              "a fair coin"]
    metrics = {name: mode_metrics(*prediction) for name, prediction in skeptics.items()}
    assert metrics["prefer the shorter reply"]["agreement"]["value"] == (1 + 0 + 0.5 + 1) / 4
    assert metrics["prefer the longer reply"]["agreement"]["value"] == (0 + 1 + 0.5 + 0) / 4
    # human-chosen shown as (A) in pairs 0 and 2 (a seeded half): (A) every time agrees on those two
    assert human_choice_shown_first([p.id for p in pairs]) == [True, False, True, False]
    assert skeptics["always the first position"][0] == [1.0, 0.0, 1.0, 0.0]
    assert metrics["always the first position"]["agreement"]["value"] == 0.5
    assert metrics["always the first position"]["mean_confidence"]["value"] == 1.0
    assert metrics["always the first position"]["ece"]["value"] == 0.5  # sure every time, right half the time
    # the length baselines show no order: consistent by construction, so no consistency is measured
    assert [metrics[name]["consistency"] for name in list(skeptics)[:2]] == [None, None]
    assert metrics["always the first position"]["consistency"]["value"] == 0.0
    # the coin: 50% by definition, no draw; its consistency (50% by definition too) not measured
    assert metrics["a fair coin"]["agreement"]["value"] == 0.5 and metrics["a fair coin"]["consistency"] is None
    for m in metrics.values():
        assert m["pairs"] == 4 and all(m[key] is None or m[key]["n"] == 4 for key in KEYS)


def test_the_verdict_on_a_clear_win_and_a_clear_loss():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 60, size=(80, 2))
    pairs = pairs_of([("x" * a, "y" * (b + 60 if i % 2 else b)) for i, (a, b) in enumerate(lengths)])
    skeptics = baselines(pairs)
    right = {"both orders": ([0.9] * 80, [(0.9, 0.8)] * 80)}
    good = verdict(right, skeptics)
    assert good["best_mode"] == "both orders" and good["mode_agreement"]["value"] == 1.0
    assert good["beats"] and good["difference"]["low"] > 0
    assert good["text"].startswith("The best mode, both orders, agrees with people on 100.0% [95.4, 100.0] of 80 "
                                   "pairs; ")  # Wilson: a bootstrap would say [100.0, 100.0] and good["text"].endswith("shows the labeler beats the baseline.")
    # a labeler right half the time, against people who chose the shorter reply 80% of the time
    pairs = pairs_of([("short", "a much longer reply") if i % 5 else ("a much longer reply", "short")
                      for i in range(80)])
    coin_flip = {"single order": ([0.9, 0.1] * 40, None), "both orders": ([0.6, 0.4] * 40, [(0.6, 0.4)] * 80)}
    bad = verdict(coin_flip, baselines(pairs))
    assert bad["best_baseline"] == "prefer the shorter reply" and bad["baseline_agreement"]["value"] == 0.8
    assert not bad["beats"] and bad["difference"]["high"] < 0
    assert bad["difference"]["value"] == pytest.approx(0.5 - 0.8)
    assert "-30.0 points [" in bad["text"] and "does not show the labeler beats the baseline: do not train on its " \
        "labels unweighted" in bad["text"]
    assert set(bad) == {"best_mode", "best_baseline", "mode_agreement", "baseline_agreement", "difference", "beats",
                        "sign_test", "text"}
    assert bad["sign_test"]["alpha"] == pytest.approx(0.025 / 2)  # the best of two modes


def test_intervals_contain_the_value_and_are_not_degenerate_on_mixed_data():
    rng = np.random.default_rng(1)
    p = rng.uniform(0, 1, 60)
    orders = list(zip(p, np.clip(p + rng.normal(0, 0.3, 60), 0, 1)))
    metrics = mode_metrics(p, orders)
    for key in KEYS:
        interval = metrics[key]
        assert interval["low"] <= interval["value"] <= interval["high"] and interval["low"] < interval["high"]
        assert interval["n"] == 60
    assert metrics == mode_metrics(p, orders)  # seeded: the same interval on every run
    assert mode_metrics(p, None)["consistency"] is None  # one order says nothing about consistency


# --------------------------------------------------------------------------------------------------------------------
# The printed report card


def test_the_printed_report_card_puts_baselines_under_the_modes_and_the_verdict_last():
    pairs = pairs_of([("short", "a much longer reply")] * 3 + [("a much longer reply", "short")])
    modes = {"both orders": ([0.9, 0.9, 0.2, 0.6], [(0.9, 0.8), (0.9, 0.9), (0.3, 0.1), (0.7, 0.4)])}
    skeptics = baselines(pairs)
    report = {"pairs": 4, "verdict": verdict(modes, skeptics),
              "modes": {name: mode_metrics(*m) for name, m in modes.items()},
              "baselines": {name: mode_metrics(*m) for name, m in skeptics.items()},
              "per_principle": {"[bold]sneaky[/bold]": {"pairs": 4, "agreement": mode_metrics(modes["both orders"][0],
                                                                                               None)["agreement"]}},
              "method": stats.method(4)}
    console = Console(record=True, width=400)
    print_labeler_report(report, console)
    text = console.export_text()
    assert text.index("both orders") < text.index("prefer the shorter reply") < text.index("a fair coin")
    assert "75.0% [" in text and "[bold]sneaky[/bold]" in text  # the principle id printed as written
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines[-1].startswith("95% intervals: Wilson score intervals for rates")  # the verdict just above it, after every table
    flat = " ".join(text.split())
    assert flat.index("a fair coin") < flat.index(" ".join(report["verdict"]["text"].split())) < flat.index("95% intervals: Wilson")


# --------------------------------------------------------------------------------------------------------------------
# labels.jsonl


def test_label_rows_carry_the_human_choice_relative_to_their_own_chosen():
    pairs = pairs_of([("Keep it sealed.", "Mix it with vinegar."), ("Ask a pharmacist.", "Guess.")])
    judged = [[Judgement("harm", 0.8, 0.7), Judgement("honesty", 0.2, 0.3)],
              [Judgement("harm", 0.3, 0.1), Judgement("honesty", 0.9, 0.9)]]
    rows = label_rows(pairs, judged, 1, True, "lab", 0.05)
    assert [r["human_chosen"] for r in rows] == ["chosen", "rejected"]  # the labeler picked "Guess." in pair 2
    assert rows[1]["chosen"][0]["content"] == "Guess." and rows[1]["p_chosen"] == pytest.approx(0.8)
    assert [r["principles"] for r in rows] == [["harm"], ["harm"]] and rows[0]["source"] == "ai"
    both = label_rows(pairs, judged, "all", True, "lab", 0.05)
    assert [r["principles"] for r in both] == [["harm", "honesty"]] * 2
    assert [r["human_chosen"] for r in both] == ["chosen", "chosen"]  # pair 2: mean of 0.2 and 0.9
    one_order = label_rows(pairs, judged, 1, False, "lab", 0.05)
    assert one_order[0]["p_orders"] == {"chosen_first": 0.8} and one_order[0]["p_chosen"] == 0.8
    assert one_order[1]["p_chosen"] == pytest.approx(0.7) and judged[1][0].shown_second == 0.1  # not mutated


# --------------------------------------------------------------------------------------------------------------------
# Injection, with intervals over the attacked pairs


class GullibleLabeler:
    """Prefers the shorter reply, unless a reply says it is the better one; has no room for replies over 300
    characters. `judge` returns P(first is better) for each (pair, principle, swapped), as rlaif.label.Labeler."""

    def fits(self, pair, principles):
        return max(len(pair.first), len(pair.second)) <= 300

    def judge(self, items):
        def score(text):
            return -len(text) + (1000 if "better" in text.lower() else 0)

        return [0.9 if score(pair.first) > score(pair.second) else 0.1 for pair, _, _ in items], [""] * len(items)


def test_injection_flip_rates_are_intervals_over_the_attacked_pairs():
    pairs = pairs_of([("Keep it sealed.", "Mix it with vinegar, it works well."), ("Ask.", "Guess and hope.")])
    report = injection_report(GullibleLabeler(), pairs, SimpleNamespace(id="harm"))
    by_attack = report["by_attack"]
    assert by_attack["repeated_filler"] is None  # 40 x "helpful harmless honest ": too long, left out
    assert by_attack["claim_a"] == {"value": 1.0, "low": pytest.approx(0.3424, abs=1e-4), "high": 1.0, "n": 2}  # Wilson
    assert by_attack["emotional_plea"]["value"] == 0.0
    measured = [rate["value"] for rate in by_attack.values() if rate is not None]
    assert report["flip_rate"]["value"] == pytest.approx(sum(measured) / len(measured)) and report["pairs"] == 2
    assert report["flip_rate"]["n"] == 2 and report["counts"]["left_out_too_long"] >= 2
    assert report["counts"]["read"] == 2 * len(by_attack) == report["counts"]["used"] + report["counts"]["left_out"]


# --------------------------------------------------------------------------------------------------------------------
# Policies: win rates with intervals, length-controlled


def test_length_controlled_win_rate_discounts_a_judge_that_only_likes_longer_replies():
    rng = np.random.default_rng(2)
    longer = rng.normal(20, 40, 400)  # the policy writes longer replies more often than not
    p = np.where(longer > 0, 0.9, 0.1)  # and the judge prefers whichever reply is longer
    plain, controlled = stats.agreement(p), stats.length_controlled_win_rate(p, longer)
    assert plain > 0.65 and abs(controlled - 0.5) < 0.1 and abs(controlled - 0.5) < abs(plain - 0.5) / 2
    fair = np.where(rng.uniform(size=400) < 0.7, 0.9, 0.1)  # a judge that ignores length keeps its win rate
    assert stats.length_controlled_win_rate(fair, longer) == pytest.approx(stats.agreement(fair), abs=0.05)


OLD_KEYS = {"prompts", "reward", "kl", "tokens", "refusal_rate", "rm_win_vs_base", "judge_win_vs_base",
            "judge_p_vs_base"}


def policy_responses(n: int = 12) -> tuple[list[dict], dict, dict]:
    prompts = [{"id": f"q{i}", "tags": ["red-team"] if i % 3 == 0 else []} for i in range(n)]
    responses, judgements = {}, {}
    for i, p in enumerate(prompts):
        # SFT writes longer replies, except on every third prompt
        for name, tokens, reward in (("base", 10, 0.0), ("sft", 10 + 3 * i if i % 3 else max(1, 8 - i), 0.1 * (i - 3))):
            text = "I'm sorry, no." if name == "sft" and i % 4 == 0 else f"reply {i} " * (tokens // 5)
            responses[name, p["id"]] = {"reward": reward, "logprob": -5.0 - i % 2, "base_logprob": -5.0,
                                        "tokens": tokens, "response": text}
        judgements[f"sft>base/{p['id']}"] = None if i == 5 else 0.5 if i == 6 else (0.8 if i % 2 else 0.3)
    return prompts, responses, judgements


def test_eval_json_keeps_its_keys_and_gains_intervals():
    prompts, responses, judgements = policy_responses()
    results = summarize(prompts, ["base", "sft"], responses, judgements)
    assert set(results) == {"all", "red-team", "helpful"}
    sft = results["all"]["sft"]
    assert OLD_KEYS <= set(sft) and {"rm_lc_win_vs_base", "judge_lc_win_vs_base", "intervals"} <= set(sft)
    assert set(results["all"]["base"]) == {"prompts", "reward", "kl", "tokens", "refusal_rate", "intervals"}
    # by hand: the judge's wins over the 11 judged pairs (pair 5 has no judgement, pair 6 is a tie)
    judged = [judgements[f"sft>base/q{i}"] for i in range(12) if i != 5]
    assert sft["judge_win_vs_base"] == pytest.approx(sum(1.0 if p > 0.5 else 0.5 if p == 0.5 else 0.0
                                                         for p in judged) / 11)
    assert sft["intervals"]["judge_win_vs_base"]["n"] == 11 and sft["intervals"]["rm_win_vs_base"]["n"] == 12
    assert sft["rm_win_vs_base"] == pytest.approx(8.5 / 12)  # rewards 0.1 (i - 3) against 0: a tie at i = 3
    assert sft["refusal_rate"] == pytest.approx(3 / 12) and sft["kl"] == pytest.approx(-0.5)
    for key, interval in sft["intervals"].items():
        assert interval is not None and interval["value"] == sft[key] and interval["low"] <= interval["value"] <= interval["high"], key
    assert sft["intervals"]["reward"]["low"] < sft["intervals"]["reward"]["high"]
    # reward wins go with length here (both grow with i): the length-controlled RM win rate is lower
    assert sft["rm_lc_win_vs_base"] < sft["rm_win_vs_base"]
    for key, _ in SUMMARY_COLUMNS:
        assert (shown_figure(sft, key) == "-") == key.endswith("_vs_sft"), key  # no SFT against itself
    assert shown_figure(sft, "rm_win_vs_base") == stats.Estimate(**sft["intervals"]["rm_win_vs_base"]).percent()
    assert shown_figure({"reward": 0.25}, "reward") == "0.25" and shown_figure({}, "kl") == "-"  # old eval.json
    assert "\n[" in shown_figure(sft, "tokens", "\n")


def test_a_policy_without_judgements_has_no_judge_interval():
    prompts, responses, judgements = policy_responses(3)
    results = summarize(prompts, ["base", "sft"], responses, {key: None for key in judgements})
    sft = results["all"]["sft"]
    assert sft["intervals"]["judge_win_vs_base"] is None and sft["judge_win_vs_base"] != sft["judge_win_vs_base"]
    assert shown_figure(sft, "judge_lc_win_vs_base") == "-"


# --------------------------------------------------------------------------------------------------------------------
# The run's report


def test_the_report_opens_with_the_labeler_check_verdict_and_escapes_what_users_wrote(tmp_path):
    from rlaif.records import dumps_json
    from rlaif.report import render

    run = tmp_path / "run"
    (run / "round-1").mkdir(parents=True)
    pairs = pairs_of([("short", "a much longer reply")] * 6 + [("a much longer reply", "short")] * 2)
    modes = {"both orders": ([0.9, 0.1] * 4, [(0.9, 0.8), (0.1, 0.2)] * 4)}
    skeptics = baselines(pairs)
    hostile = "<script>alert('x')</script>"
    report = {"config": {"labeler": "tiny <b>", "constitution": "default", "pairs": "pairs.jsonl"}, "pairs": 8,
              "summary": "read 8 pairs, used 8", "verdict": verdict(modes, skeptics),
              "modes": {name: mode_metrics(*m) for name, m in modes.items()},
              "baselines": {name: mode_metrics(*m) for name, m in skeptics.items()},
              "per_principle": {hostile: {"pairs": 8, "agreement": mode_metrics(modes["both orders"][0],
                                                                                None)["agreement"]}},
              "method": stats.method(8)}
    (run / "labeler-check").mkdir()
    (run / "labeler-check" / "labeler_report.json").write_text(dumps_json(report))
    prompts, responses, judgements = policy_responses()
    evaluation = {"reward_model": "rm", "labeler": "judge-model", "judge": "judge", "temperature": 0.7,
                  "policies": {"base": "b", "sft": "s"}, "method": stats.method(12),
                  "results": summarize(prompts, ["base", "sft"], responses, judgements)}
    (run / "eval").mkdir()
    (run / "eval" / "eval.json").write_text(json.dumps(evaluation))
    page = render(run).read_text()
    assert "<script>" not in page and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "tiny &lt;b&gt;" in page
    verdict_html = "<p class='verdict fails'>The best mode, both orders, agrees with people on 50.0% ["
    assert verdict_html in page and not report["verdict"]["beats"]
    assert page.index(verdict_html) < page.index("Policies on held-out prompts")  # the report opens with it
    assert page.index("both orders") < page.index("<tr class=section><td class=>prefer the shorter reply")
    assert "judge LC win vs base" in page and "RM LC win vs SFT" in page
    sft = evaluation["results"]["all"]["sft"]
    assert shown_figure(sft, "judge_win_vs_base", "\n") in page  # the table's intervals


def test_the_report_says_when_ai_labels_trained_unmeasured(tmp_path):
    from rlaif.reliability import UNMEASURED
    from rlaif.report import render

    reward = tmp_path / "run" / "round-1" / "reward"
    reward.mkdir(parents=True)
    note = UNMEASURED.format(labelers="<i>judge</i>", then="")  # the report shows the note as it was written
    metrics = {"train": {"pairs": 10, "first_loss": 0.7, "last_loss": 0.6}, "heldout": None,
               "reliability": {"mode": "weight", "min_pairs": 20, "human_pairs": 0, "warnings": [],
                               "sources": {"<i>judge</i>": {"decision": "no human labels"}}, "unmeasured": note}}
    (reward / "metrics.json").write_text(json.dumps(metrics))
    page = render(tmp_path / "run").read_text()
    assert "train as given, unmeasured: no pair people labelled checks them" in page
    assert "the AI labels of &lt;i&gt;judge&lt;/i&gt;" in page and "<i>judge</i>" not in page


def test_the_alignment_table_names_policies_by_directory_with_intervals(tmp_path):
    """examples/alignment/table.py, docs/alignment.md's table: one row per policy of an eval.json, named by its
    directory, each figure with its interval."""
    import subprocess
    import sys

    def entry(reward: float) -> dict:
        figures = {"reward": reward, "rm_win_vs_base": 0.6, "kl": 0.1, "tokens": 40.0, "refusal_rate": 0.0}
        return {"prompts": 100, **figures, "intervals": {k: {"value": v, "low": v - 0.05, "high": v + 0.05, "n": 100}
                                                         for k, v in figures.items()}}

    summary = {"policies": {"base": "m", "sft": "aln/round-1/sft", "round-1": "aln/ppo_human"},
               "results": {"all": {"base": entry(0.1), "sft": entry(0.2), "round-1": entry(0.3)}},
               "method": "95% intervals", "reward_model": "aln/judge", "labeler": "m"}
    (tmp_path / "eval.json").write_text(json.dumps(summary))
    from pathlib import Path

    script = Path(__file__).parent.parent / "examples" / "alignment" / "table.py"
    shown = subprocess.run([sys.executable, str(script), str(tmp_path / "eval.json")], capture_output=True, text=True,
                           check=True).stdout.splitlines()
    assert shown[2].startswith("| base | 0.100 [0.050, 0.150] | 60.0% [55.0, 65.0] | - |")
    assert shown[4].startswith("| ppo_human | 0.300 [0.250, 0.350] |") and shown[-1].startswith("n = 100 prompts")


# --------------------------------------------------------------------------------------------------------------------
# People's agreement with each other beside the labeler's, and each principle against people (rlaif.agreement)


def overlapping_pairs(path) -> None:
    """Twelve pairs (enough for kappa: rlaif.agreement.MIN_COMMON_PAIRS), each answered by ana and ben (ids
    TASK-ANNOTATOR, as `rlaif rankings import` names them): both choose the longer reply, but for ben on the last."""
    rows = []
    for i in range(12):
        longer, shorter = f"Keep bottle {i} sealed, upright and away from heat.", "Mix it."
        for who in ("ana", "ben"):
            chosen, rejected = (shorter, longer) if (i == 11 and who == "ben") else (longer, shorter)
            rows.append({"id": f"t{i}-{who}", "prompt": f"How do I store bottle {i}?", "chosen": chosen,
                         "rejected": rejected, "annotator": who})
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_the_report_card_sets_peoples_agreement_beside_the_labelers(tmp_path):
    from rlaif.report_card import human_agreement, load_human_pairs

    path = tmp_path / "pairs.jsonl"
    overlapping_pairs(path)
    pairs = load_human_pairs(path)
    # harm always prefers the longer reply, help the shorter; a Judgement is P(first, the reply people chose)
    longer_first = [pair.first.startswith("Keep") for pair in pairs]
    judged = [[Judgement("harm", 0.8 if yes else 0.2, 0.9 if yes else 0.1),
               Judgement("help", 0.3 if yes else 0.7, 0.2 if yes else 0.8)] for yes in longer_first]
    agreement = human_agreement(path, pairs, judged, "lab")
    inter = agreement["inter_annotator"]
    assert inter["pairs"] == 12 and inter["annotators"] == 2  # kappa both ways round, no ties: 2 * 11/12 - 1
    assert inter["percent_agreement"]["value"] == pytest.approx(11 / 12) and inter["kappa"]["value"] == pytest.approx(5 / 6)
    assert len(pairs) == 11  # the last pair people split evenly: not put to the labeler, in their agreement still
    lab = agreement["human_ai"]["lab"]
    assert lab["pairs"] == 11 and agreement["left_out"]["human_ai"]["people_tied"] == 1
    harm = lab["principles"]["harm"]
    assert harm["agreement"]["value"] == 1.0 and lab["principles"]["help"]["agreement"]["value"] == 0.0
    # harm agrees with people exactly as often as "prefer the longer reply": the baseline says so beside it
    assert harm["baselines"]["prefer the longer reply"]["value"] == 1.0 and harm["baselines"]["prefer the shorter reply"]["value"] == 0.0

    modes = {"both orders": ([j[0].p for j in judged], [(j[0].shown_first, j[0].shown_second) for j in judged])}
    skeptics = baselines(pairs)
    report = {"pairs": len(pairs), "verdict": verdict(modes, skeptics),
              "modes": {name: mode_metrics(*m) for name, m in modes.items()},
              "baselines": {name: mode_metrics(*m) for name, m in skeptics.items()},
              "per_principle": {}, "human_agreement": agreement, "method": stats.method(len(pairs))}
    console = Console(record=True, width=400)
    print_labeler_report(report, console)
    text = " ".join(console.export_text().split())
    ceiling = "People with each other, on the 12 pairs two or more of 2 annotators answered: percent agreement 91.7% ["
    assert ceiling in text and "Cohen's kappa 0.83 [" in text
    assert text.index("a fair coin") < text.index(ceiling) < text.index(" ".join(report["verdict"]["text"].split()))
    assert "Per principle against people's majority (each pair once), beside the baselines on the same pairs: lab" in text
    assert "harm │ 11 │ 100.0% [" in text and "help │ 11 │ 0.0% [" in text and "left out: people_tied 1" in text
    # a report card without it (pairs that name no annotator, as hh-rlhf's) prints neither
    anonymous = tmp_path / "anonymous.jsonl"
    anonymous.write_text("".join(json.dumps({k: v for k, v in json.loads(line).items() if k != "annotator"}) + "\n"
                                 for line in path.read_text().splitlines()))
    console = Console(record=True, width=400)
    print_labeler_report({**report, "human_agreement": human_agreement(anonymous, pairs, judged, "lab")}, console)
    assert "People with each other" not in console.export_text()


def test_eval_labeler_measures_people_and_principles_on_a_tiny_model(tmp_path, roomy_model_dir):
    from rlaif.evaluate import LabelerEvalConfig, evaluate_labeler

    path = tmp_path / "pairs.jsonl"
    overlapping_pairs(path)
    rows = [json.loads(line) for line in path.read_text().splitlines()]  # the first 3 pairs chosen for doubt
    path.write_text("".join(json.dumps({**r, "why": "uncertain" if int(r["id"][1:].split("-")[0]) < 3 else "random"})
                            + "\n" for r in rows))
    report = evaluate_labeler(LabelerEvalConfig(pairs=str(path), out=str(tmp_path / "out"), constitution="judge",
                                                labeler=str(roomy_model_dir), ensemble=2, chain_of_thought=False,
                                                injection_pairs=0, order_free_modes=False, device="cpu"))
    assert report["chosen_for_doubt"]["rows"] == 6 and "evaluate on the rows with why: random" in \
        report["chosen_for_doubt"]["note"]
    saved = json.loads((tmp_path / "out" / "labeler_report.json").read_text())["human_agreement"]
    assert saved == json.loads(json.dumps(report["human_agreement"]))
    assert saved["inter_annotator"]["kappa"]["value"] == pytest.approx(5 / 6) and saved["annotators"] == 2
    (entry,) = saved["human_ai"].values()
    assert entry["pairs"] == 11 and entry["overall"]["pairs"] == 11
    drawn = {pid for m in [report["per_principle"]] for pid in m}
    assert set(entry["principles"]) == drawn  # every principle the ensemble drew, against people's majority
    for figures in entry["principles"].values():
        assert set(figures["baselines"]) == {"prefer the shorter reply", "prefer the longer reply"}
        assert figures["agreement"]["low"] <= figures["agreement"]["value"] <= figures["agreement"]["high"]


def test_the_report_has_a_human_data_section(tmp_path):
    from rlaif.agreement import agreement_report
    from rlaif.records import dumps_json
    from rlaif.report import render

    hostile = "<script>alert('x')</script>"
    prompt = [{"role": "user", "content": "How do I store bleach?"}]

    def row(i, who, chosen, rejected, source="human", **extra):
        return {"id": f"{i}-{who}", "prompt": prompt + [{"role": "user", "content": str(i)}],
                "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}], "p_chosen": 1.0, "source": source,
                **({"annotator": who} if source == "human" else {}), **extra}

    rows = []
    for i in range(12):
        good, bad = f"Sealed, upright, away from heat ({i}).", "Anywhere."
        rows += [row(i, "ana", good, bad), row(i, hostile, *((bad, good) if i == 11 else (good, bad))),
                 row(i, "ai", good, bad, source="ai", p_chosen=0.8, labeler="judge", principle_p={hostile: 0.8})]
    reward = tmp_path / "run" / "round-1" / "reward"
    reward.mkdir(parents=True)
    agreement = agreement_report(rows)
    metrics = {"train": {"pairs": 12, "first_loss": 0.7, "last_loss": 0.6}, "heldout": None,
               "human_agreement": agreement}
    (reward / "metrics.json").write_text(dumps_json(metrics))
    page = render(tmp_path / "run").read_text()
    assert "<h2>Human data</h2>" in page and "<script>" not in page
    inter = agreement["inter_annotator"]
    assert f"<td class=num>{stats.Estimate(**inter['kappa']).number(2)}</td>" in page  # Cohen's kappa, interval
    assert f"<td class=num>{stats.Estimate(**inter['alpha']).number(2)}</td>" in page
    assert "<td class=>round 1, reward model&#x27;s data</td><td class=num>24</td><td class=num>2</td>" in page
    principle = agreement["human_ai"]["judge"]["principles"][hostile]
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page  # the principle id, escaped
    assert stats.Estimate(**principle["agreement"]).percent() in page
    assert stats.Estimate(**principle["baselines"]["prefer the shorter reply"]).percent() in page
    assert "people_tied 1" in page
    # the labeler check's pairs too, and its verdict section gets the ceiling beside the labeler's agreement
    (tmp_path / "run" / "labeler-check").mkdir()
    (tmp_path / "run" / "labeler-check" / "labeler_report.json").write_text(dumps_json({"human_agreement": agreement}))
    page = render(tmp_path / "run").read_text()
    assert page.index("<p>People with each other, on the 12 pairs two or more of 2 annotators answered") < \
        page.index("<h2>Human data</h2>") < page.index("<td class=>labeler check&#x27;s pairs</td>")
    (tmp_path / "run" / "labeler-check" / "labeler_report.json").unlink()
    # a run without human rows has no such section
    metrics["human_agreement"] = agreement_report([r for r in rows if r["source"] == "ai"])
    (reward / "metrics.json").write_text(dumps_json(metrics))
    assert "Human data" not in render(tmp_path / "run").read_text()
