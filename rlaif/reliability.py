"""Reliability weighting: before the reward stage (rlaif.reward) mixes its preference files, each AI labeler is measured
against people, and its labels calibrated and weighed by what it earns (RewardConfig's `calibration`, `reliability`
and `reliability_min_pairs`).

A source of AI labels enters the mix at the weight its measured agreement with people earns. Where people labelled some
of the same pairs, each AI labeler is measured on them before the files are mixed. People's labels are the human rows of
`data` and of the `calibration` files, or, for a pair no human row labels, the choice an AI row records in
`human_chosen` ("chosen" or "rejected", as `rlaif eval labeler` writes in OUT/labels.jsonl). Calibration files hold AI
labels of human-labelled pairs (that labels.jsonl, or the preferences.jsonl of `rlaif label --candidates human.jsonl`),
and optionally people's rows: they are read to measure, never trained on. A labeler is a model in a mode (`labeler_of`):
the rows of source ai that name it in `labeler` (a row that names none belongs to its file's labeler, named by the file)
and carry its `mode` (rlaif.label: compare, contrast or score; a row without one is compare), across every file: the
same model's compare labels of round 1 and round 2 are one labeler, measured once, and its score labels another
("judge-7b (score)"), measured on its own score labels only. A pair is matched as `rankings.mix` matches it (same
prompt, same two replies, either order); pairs people tied are left out; pairs people answered because `rlaif rankings export` chose them for the labeler's
doubt (a human row whose `why` is other than `random`) are left out, as a test of the labeler on the pairs it was
least sure of would understate it (the export's random share is the unbiased sample; counted as `chosen_for_doubt`);
and a pair held out for evaluation
(`eval_data`, or the `eval_fraction` split: rlaif.reward.held_out_key) is never measured on, so the held-out accuracy
stays a test on unseen pairs. On the n pairs left (`measure_labeler`, with rlaif.stats):

- its agreement with people, with its 95% Wilson interval;
- the best baseline on the same pairs: prefer the shorter reply, prefer the longer reply, or a coin at P = 0.5;
- the paired difference, labeler minus that baseline, with its interval (shown, not used to decide);
- an exact one-sided sign test of the labeler against that baseline (McNemar's test in its binomial form,
  stats.sign_test): on the pairs where their outcomes differ, how many go its way, and the chance of at least that
  many if each were a coin;
- the best length rule (prefer the shorter or the longer reply, whichever agrees more) and the labeler's agreement
  with people on the pairs that rule gets wrong (`against_length`, with its interval and n);
- the slope a of Platt scaling on the logit, p -> sigmoid(a * logit p), fitted by maximum likelihood on those pairs,
  symmetric, without intercept, and against Platt's smoothed targets rather than 0 and 1, so that a labeler right
  on every pair gets a finite slope (Platt 1999, "Probabilistic outputs for support vector machines and comparisons
  to regularized likelihood methods", sec. 2.2; stats.platt_slope). a < 1 shrinks an over-confident labeler toward
  0.5; labels of one confidence right on k of n pairs calibrate to (k + 1) / (n + 2).

The rule. A labeler passes when both hold:

1. it beats the best baseline: the sign test's p-value is below 0.025 (one side of a 95% test). A bootstrap
   interval of the difference would pass 6 of 6 pairs right against a baseline right on 3 of them (a resample with
   none of the 3 pairs where they differ has chance 1/64, under the 2.5% the interval cuts off); the sign test sees
   3 pairs that differ, all 3 the labeler's, and p = 1/8. The baseline is the best of three, which makes the test
   harder to pass, so it is not adjusted for the choice;
2. it agrees with people on more than half of the pairs the best length rule gets wrong (vacuous, and said so, when
   that rule is wrong on none). A labeler that picks the longer reply on 97% of 200 pairs, copying people on 15% of
   them, agrees with people on 68% where preferring the longer reply agrees on 65%, and beats it (the 6 pairs where
   they differ all go its way: p = 1/64); but on the 70 pairs where the longer reply is the wrong one it is right on
   6, 9%. Its labels would teach length, and calibration cannot see why a labeler agrees. This condition asks that
   the labeler know better than length exactly where length fails.

`reliability` then decides. `weight` (the default): a labeler that passes enters with its labels calibrated, p ->
stats.calibrate(p, a), at the weight given; one that does not gets weight 0: its pairs do not train (left out and
counted as `zero_weight`, as any pair of weight 0; a pair people labelled too trains on their label alone), and a
warning names it, its agreement and the baseline's with intervals, the sign test, and the condition it failed. A
labeler with fewer than `reliability_min_pairs` measured pairs cannot be measured, so it cannot pass: weight 0 too,
with a warning saying how many pairs were measured, the minimum, and how to go on (more human pairs it labelled, a
calibration file of its labels, or `warn`); where a calibration file measured the same model in another mode, the
warning says that labels of one mode do not measure another. `warn`: every measured labeler calibrated and kept at
the weight given, the one that fails warned about; an unmeasured one kept at the weight given, uncalibrated,
warned about. `off`: labels and weights as given, nothing measured. When the files hold no human label at all, as
in plain RLAIF, nothing is measured and the labels train as given, with a note saying so (`unmeasured`). A slope
below 0 is taken as 0 (every label 0.5): rlaif never turns a labeler's labels around. Human rows are never
reweighted or changed. metrics.json's `reliability` section has, per labeler: its model and mode, its files and their weight given and
used, the pairs measured (and the overlapping pairs left out as held out), agreement, every baseline and the best,
the difference, the sign test (`sign_test`: discordant pairs, for, against, p-value, the level it needs), the
agreement where length is wrong (`against_length`), the slope, the decision (calibrated, weight 0, warned, too few
pairs, no human labels) and the warning.

Why the weight is the one given, or 0, and not scaled by 2 * agreement - 1: calibration already scales each
label's pull by its labeler's reliability. The soft Bradley-Terry loss pulls a pair's reward gap by p - 1/2 at
equal rewards (its derivative in r_c - r_r is sigmoid(r_c - r_r) - p), and a labeler right 60% of the time calibrates
to p of about 0.6 (labels of one confidence right on k of n pairs: (k + 1) / (n + 2)): its pull is about 2 * 0.6 -
1 = 0.2 of a person's. Scaling its weight by that factor too would count its unreliability twice. What calibration cannot see
is why a labeler agrees: one that prefers the longer reply agrees with people as often as length does, and its
calibrated labels would teach length. So before its labels train, a labeler must beat the length baselines and a
coin on the same pairs, and be right more often than not where length is wrong.
"""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np

from rlaif import stats
from rlaif.records import PreferenceRow, chosen_for_doubt

COIN = "a coin (0.5)"


def measure_labeler(p_first, people_first, first: list[str], second: list[str]) -> dict:
    """A labeler against people on n pairs both labelled. p_first: (n,) the labeler's P(first reply is better);
    people_first: (n,) people's (1 or 0, or the share of several people who chose it; never 0.5: a pair people tied
    says nothing here); first, second: the replies' texts. Returns {pairs, agreement: Estimate, baselines: {name:
    Estimate}, baseline: the best one's name, difference: Estimate of agreement minus the best baseline's (paired
    bootstrap, shown beside the test), sign_test: stats.sign_test of the labeler against the best baseline,
    against_length: {baseline: the better length rule, value, low, high, n: the labeler's agreement on the pairs
    that rule gets wrong (None, None, None, 0 when there are none), vacuous, passes}, slope: Platt's, beats: both
    conditions of the decision rule (module docstring) hold}.

    The baselines, on the same pairs: prefer the shorter reply, prefer the longer (stats.length_baselines), and a
    coin at P = 0.5, which agrees exactly half (stats.agreement counts a tie half). The best is the one with the
    highest agreement; ties go to the first in that order. The sign test needs no Bonferroni adjustment: the
    baseline is picked from three, but picking the strongest one to beat only makes the test harder to pass."""
    p_first, people_first = np.asarray(p_first, dtype=float), np.asarray(people_first, dtype=float)
    chose_first = people_first > 0.5
    toward_people = np.where(chose_first, p_first, 1 - p_first)  # the labeler's P(the reply people chose is better)
    chosen = [a if c else b for a, b, c in zip(first, second, chose_first)]
    other = [b if c else a for a, b, c in zip(first, second, chose_first)]
    lengths = stats.length_baselines(chosen, other)
    baselines = {**lengths, COIN: np.full(len(chosen), 0.5)}
    scores = {name: stats.bootstrap(stats.agreement, b) for name, b in baselines.items()}
    best = max(scores, key=lambda name: scores[name].value)
    difference = stats.bootstrap(stats.difference(stats.agreement), toward_people, baselines[best])
    test = stats.sign_test(toward_people, baselines[best])
    length_rule = max(lengths, key=lambda name: scores[name].value)
    wrong = stats.outcomes(lengths[length_rule]) == 0  # that rule picks the reply people did not (equal length: a tie)
    if wrong.any():
        on_wrong = stats.bootstrap(stats.agreement, toward_people[wrong])
        against_length = {"baseline": length_rule, **on_wrong.as_dict(), "vacuous": False,
                          "passes": on_wrong.value > 0.5}
    else:
        against_length = {"baseline": length_rule, "value": None, "low": None, "high": None, "n": 0, "vacuous": True,
                          "passes": True}
    return {"pairs": len(chosen), "agreement": stats.bootstrap(stats.agreement, toward_people), "baselines": scores,
            "baseline": best, "difference": difference, "sign_test": test, "against_length": against_length,
            "slope": stats.platt_slope(p_first, people_first),
            "beats": test["beats"] and against_length["passes"]}


def labeler_of(row: PreferenceRow, file: str) -> str:
    """The AI labeler a row belongs to: its `labeler` name (for a row that names none, its file), and its `mode`
    where that is not compare (a row without one is compare, as rows written before modes were): "judge-7b",
    "judge-7b (score)". The same model asked a question, read as a likelihood contrast or scoring each reply is
    three labelers with three reliabilities, each measured on its own labels; compare keeps the bare name, so the
    labels.jsonl of `rlaif eval labeler` (compare) match the compare labels of `rlaif label`."""
    name, mode = row.get("labeler") or file, row.get("mode") or "compare"
    return name if mode == "compare" else f"{name} ({mode})"


def weigh_sources(sources: list[tuple[str, list[PreferenceRow], float]],
                  calibration: list[tuple[str, list[PreferenceRow]]], is_held_out, mode: str = "weight",
                  min_pairs: int = 20) -> tuple[list[tuple[str, list[PreferenceRow], float]], dict]:
    """The (file, rows, weight) sources `rankings.mix` takes, each AI labeler's rows calibrated and weighed by its
    measured reliability (module docstring), and the `reliability` section of metrics.json. `calibration`: (file,
    rows) read only to measure; `is_held_out(pair_key)`: the evaluation's pairs, never measured on; `mode`: weight,
    warn or off (the sources returned as they are). Human rows are never changed."""
    from rlaif.rankings import pair_key

    if mode == "off":
        return sources, {"mode": "off"}
    people: dict[str, list[float]] = defaultdict(list)  # pair key -> people's P(reference reply is better), each
    recorded: dict[str, list[float]] = defaultdict(list)  # the same, from AI rows that record it (`human_chosen`)
    ai: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))  # labeler -> key -> P(reference)
    texts: dict[str, tuple[str, str]] = {}  # pair key -> (reference reply, the other): the first in sorted order
    given: dict[str, dict[str, float]] = defaultdict(dict)  # labeler -> {data file: its weight}
    rows_of: Counter = Counter()  # labeler -> its rows in data
    origins: dict[str, set[str]] = defaultdict(set)  # labeler -> the calibration files that label for it
    model_mode: dict[str, tuple[str, str]] = {}  # labeler -> (model name, mode)
    chosen_for_doubt_keys: set[str] = set()  # pairs people answered that `rankings export` chose for the labeler's doubt
    for file, rows, weight, in_data in [(f, r, w, True) for f, r, w in sources] + [(f, r, 0.0, False)
                                                                                    for f, r in calibration]:
        for row in rows:
            key = pair_key(row)
            pair = texts.setdefault(key, tuple(sorted([row["chosen"][-1]["content"], row["rejected"][-1]["content"]])))
            toward = row["p_chosen"] if row["chosen"][-1]["content"] == pair[0] else 1.0 - row["p_chosen"]
            source = row.get("source", "human")
            if chosen_for_doubt(row):
                chosen_for_doubt_keys.add(key)  # chosen because the labeler was unsure of it: not a fair test of it
            elif source == "human":
                people[key].append(toward)
            elif source == "ai":
                name = labeler_of(row, file)
                model_mode[name] = (row.get("labeler") or file, row.get("mode") or "compare")
                ai[name][key].append(toward)
                if row.get("human_chosen") in ("chosen", "rejected"):  # `rlaif eval labeler`'s labels.jsonl
                    chose = row[row["human_chosen"]][-1]["content"]
                    recorded[key].append(1.0 if chose == pair[0] else 0.0)
                if in_data:
                    given[name][file] = weight
                    rows_of[name] += 1
                else:
                    origins[name].add(file)
    for key, ps in recorded.items():  # people's own rows, where there are some, count once
        if key not in chosen_for_doubt_keys:  # (a labeler check's labels of a pair chosen for doubt: not either)
            people.setdefault(key, ps)
    decided = {key for key, ps in people.items() if sum(ps) / len(ps) != 0.5}  # people's tie: no choice to agree with
    report: dict = {"mode": mode, "min_pairs": min_pairs, "human_pairs": sum(not is_held_out(k) for k in decided),
                    "chosen_for_doubt": len(chosen_for_doubt_keys - set(people)), "sources": {}, "warnings": []}
    slopes: dict[str, float | None] = {}  # labeler -> the slope its labels are calibrated with (None: as they are)
    zeroed: set[str] = set()
    explained: set[str] = set()  # calibration labelers a mode mismatch warning already names
    for name, weights in given.items():
        both = [k for k in ai[name] if k in decided]
        measured = [k for k in both if not is_held_out(k)]
        model, label_mode = model_mode[name]
        entry = {"model": model, "label_mode": label_mode, "files": sorted(weights),
                 "calibration_files": sorted(origins[name]), "labels": rows_of[name], "pairs": len(measured),
                 "held_out_left_out": len(both) - len(measured), "weight_given": dict(weights)}
        report["sources"][name] = entry
        slopes[name] = None
        if len(measured) < min_pairs and not (people or calibration or chosen_for_doubt_keys):  # plain RLAIF
            entry.update(decision="no human labels", slope=None, calibrated=False)
        elif len(measured) < min_pairs:
            entry.update(decision="too few pairs", slope=None, calibrated=False)
            other_modes = sorted(n for n in origins if n != name and model_mode[n][0] == model)
            explained.update(other_modes)
            entry["warning"] = _unmeasured_warning(name, len(measured), min_pairs, mode, label_mode,
                                                   [(model_mode[n][1], sorted(origins[n])) for n in other_modes],
                                                   report["chosen_for_doubt"])
            if mode == "weight":
                zeroed.add(name)
        else:
            m = measure_labeler([sum(ai[name][k]) / len(ai[name][k]) for k in measured],
                                [sum(people[k]) / len(people[k]) for k in measured],
                                [texts[k][0] for k in measured], [texts[k][1] for k in measured])
            best = m["baselines"][m["baseline"]]
            entry.update(agreement=m["agreement"].as_dict(), baseline={"name": m["baseline"], **best.as_dict()},
                         baselines={b: e.as_dict() for b, e in m["baselines"].items()},
                         difference=m["difference"].as_dict(), sign_test=m["sign_test"],
                         against_length=m["against_length"], slope=m["slope"], beats=m["beats"],
                         interval=stats.method(len(measured)))
            if m["beats"]:
                entry.update(decision="calibrated", calibrated=True)
                slopes[name] = m["slope"]
            elif mode == "weight":
                entry.update(decision="weight 0", calibrated=False)
                zeroed.add(name)
                entry["warning"] = (f"AI labels of {name} get weight 0: {_finding(m)}; so they are left out of "
                                    "training (reliability: weight). Set reliability to warn (--reliability warn; in "
                                    "a recipe, label.gate: warn) to keep them at the weight given, or use a stronger "
                                    "labeler")
            else:
                entry.update(decision="warned", calibrated=True)
                slopes[name] = m["slope"]
                entry["warning"] = (f"AI labels of {name} do not pass the reliability rule: {_finding(m)}; kept at "
                                    f"the weight given (reliability: warn), calibrated with slope "
                                    f"{max(m['slope'], 0.0):.3f}")
        entry["weight_used"] = {file: 0.0 if name in zeroed else w for file, w in weights.items()}
        if "warning" in entry:
            report["warnings"].append(entry["warning"])
    plain = sorted(n for n, e in report["sources"].items() if e["decision"] == "no human labels")
    if plain:
        report["unmeasured"] = UNMEASURED.format(labelers=", ".join(plain), then=THEN_REWARD)
    for name in sorted(set(origins) - set(given) - explained):
        report["warnings"].append(f"calibration labels of {name} ({', '.join(sorted(origins[name]))}): no AI label in "
                                  "data is of this labeler in this mode, so they measure nothing (rows match by their "
                                  "`labeler` and `mode`)")
    weighed = []
    for file, rows, weight in sources:
        changed = []
        for row in rows:
            name = labeler_of(row, file) if row.get("source") == "ai" else None
            if name in zeroed:
                row = {**row, "weight": 0.0}
            elif name is not None and slopes.get(name) is not None:  # a slope < 0 would turn labels around: 0
                row = {**row, "p_chosen": float(stats.calibrate(row["p_chosen"], max(slopes[name], 0.0)))}
            changed.append(row)
        weighed.append((file, changed, weight))
    return weighed, report


UNMEASURED = (
    "the AI labels of {labelers} train as given, unmeasured: no pair people labelled checks them, so how often they "
    "agree with people is unknown (on hh-rlhf harmless pairs the embedded 135M labeler agrees less often than "
    "'prefer the shorter reply': docs/labeler.md). To measure the labeler: `rlaif eval labeler --pairs HUMAN.jsonl "
    "--labeler MODEL -c CONSTITUTION --out CHECK` with the labeler and constitution that made the labels; {then}")
# UNMEASURED's {then}: how to use the measure in rlaif reward, and for DPO, which weighs no label by it
THEN_REWARD = ("then train with --data HUMAN.jsonl --calibration CHECK/labels.jsonl, and each labeler's labels are "
               "calibrated and weighed by what it earns; in a recipe, add human: files")
THEN_DPO = ("DPO does not weigh labels by it, a reward model does: rlaif reward --data HUMAN.jsonl --calibration "
            "CHECK/labels.jsonl, then PPO or GRPO on that reward model (in a recipe: human: files, policy_trainer ppo)")


def _finding(m: dict) -> str:
    """What `measure_labeler` found, in the words of a warning: agreement against the best baseline, the sign test,
    and which condition of the rule failed."""
    test, length = m["sign_test"], m["against_length"]
    text = (f"on {m['pairs']} pairs people also labelled, they agree with people {m['agreement'].percent()}, against "
            f"{m['baselines'][m['baseline']].percent()} for {m['baseline']} (difference "
            f"{m['difference'].percent(points=True)}; sign test on the {test['discordant']} pairs where they differ: "
            f"{test['for']} for, {test['against']} against, p = {test['p_value']:.3g}, needs p < {test['alpha']:.3g})")
    failed = []
    if not test["beats"]:
        failed.append("not better with 95% confidence")
    if not length["passes"]:
        on_wrong = stats.Estimate(length["value"], length["low"], length["high"], length["n"])
        failed.append(f"on the {length['n']} pairs where {length['baseline']} is wrong they agree with people on "
                      f"only {on_wrong.percent()}, not more than half: their agreement is mostly that length rule's")
    return f"{text}: {'; and '.join(failed)}"


def _unmeasured_warning(name: str, pairs: int, min_pairs: int, mode: str, label_mode: str,
                        other_modes: list[tuple[str, list[str]]], chosen_for_doubt: int = 0) -> str:
    """The warning for a labeler with too few measured pairs: what it gets under `mode`, how to go on, and where
    calibration files measured the same model in another mode, that they do not measure this one."""
    found = (f"only {pairs} training-side pair{'' if pairs == 1 else 's'} people also labelled were measured, and at "
             f"least {min_pairs} are needed to measure it (reliability_min_pairs)")
    if chosen_for_doubt:
        found += (f"; {chosen_for_doubt} more pairs people answered were chosen because the labeler was unsure of "
                  "them (rankings export), which would understate it, so only the export's random share measures it "
                  "(raise the budget or --random-share)")
    if mode == "weight":
        text = (f"AI labels of {name} get weight 0: {found}, so it cannot be shown to beat the baselines and its "
                "labels are left out of training (reliability: weight). To train on them: give more human pairs it "
                "labelled, or a calibration file of its labels of human-labelled pairs (--calibration: `rlaif eval "
                "labeler` writes labels.jsonl), or set reliability to warn (--reliability warn; in a recipe, "
                "label.gate: warn) to keep them at the weight given, uncalibrated")
    else:
        text = (f"AI labels of {name}: {found}; kept at the weight given, uncalibrated (reliability: warn). More "
                "human pairs it labelled, or a calibration file of its labels of human-labelled pairs (--calibration: "
                "`rlaif eval labeler` writes labels.jsonl), measure it")
    for other, files in other_modes:
        text += (f". The calibration labels of the same model in mode {other} ({', '.join(files)}) do not measure its "
                 f"labels in mode {label_mode}: a labeler is measured in the mode it labels in, so label the human "
                 f"pairs in mode {label_mode} too (`rlaif label --mode {label_mode} --candidates HUMAN.jsonl`) and "
                 "give that file as --calibration")
    return text


def reliability_line(report: dict) -> str:
    """The reliability decisions in a few words, for the stage's closing line ("" when there is nothing to say)."""
    parts = []
    for name, entry in report.get("sources", {}).items():
        if entry["decision"] == "calibrated":
            parts.append(f"{name} calibrated (slope {entry['slope']:.2f})")
        elif entry["decision"] in ("weight 0", "warned"):
            parts.append(f"{name} {'weight 0' if entry['decision'] == 'weight 0' else 'kept, warned'} (agreement "
                         f"{entry['agreement']['value']:.1%} vs {entry['baseline']['name']} "
                         f"{entry['baseline']['value']:.1%}, sign test p = {entry['sign_test']['p_value']:.3g})")
        elif entry["decision"] == "too few pairs":
            fewer = f", fewer than {report['min_pairs']}" if "min_pairs" in report else ""
            parts.append(f"{name} not measured ({entry['pairs']} pair{'s' if entry['pairs'] != 1 else ''}{fewer}): "
                         f"{'weight 0' if report['mode'] == 'weight' else 'kept, uncalibrated'}")
    if report.get("unmeasured"):
        parts.append("AI labels unmeasured (no human pairs)")
    return f"reliability: {', '.join(parts)}" if parts else ""


def _zeroed(reliability: dict) -> str:
    """Why AI labels got weight 0, for an error that finds nothing left to train on ("" when none did)."""
    sources = reliability.get("sources", {})
    failed = [name for name, entry in sources.items() if entry["decision"] == "weight 0"]
    unmeasured = [name for name, entry in sources.items()
                  if entry["decision"] == "too few pairs" and reliability["mode"] == "weight"]
    reasons = []
    if failed:
        reasons.append(f"the AI labels of {', '.join(failed)} got weight 0, as they do not pass the reliability rule "
                       "on the pairs people labelled (they must beat the best baseline and agree with people where "
                       "length does not)")
    if unmeasured:
        reasons.append(f"the AI labels of {', '.join(unmeasured)} got weight 0, as too few pairs people also "
                       f"labelled measure them (reliability_min_pairs: {reliability['min_pairs']})")
    if not reasons:
        return ""
    return ("; ".join(reasons) + " (reliability: weight; see the warning above); set reliability: warn "
            "(--reliability warn; in a recipe, label.gate: warn) to train on them anyway")


def _print_warnings(reliability: dict) -> None:
    """The reliability warnings, as the stage starts (they are in metrics.json too)."""
    from rlaif.cli import err, shown  # labeler names and file names come from the user's files

    for warning in reliability.get("warnings", []):
        err.print(f"[yellow]warning:[/yellow] {shown(warning)}", soft_wrap=True)
    if reliability.get("unmeasured"):
        err.print(f"[yellow]note:[/yellow] {shown(reliability['unmeasured'])}", soft_wrap=True)

