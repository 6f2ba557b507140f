"""Agreement: how often people agree with each other, and how often each principle of the AI labeler agrees with
people, from preference rows (docs/data-contract.md) of any files, human and AI mixed.

    from rlaif.agreement import agreement_report
    report = agreement_report(human_rows + ai_rows)   # a JSON-able dict

**People with each other.** Pairs answered by two or more named annotators (rows with `source: human` and an
`annotator`, matched as `rlaif.rankings.pair_key` matches a pair: same prompt, same two replies, either order).
Each answer is one of three categories, said of the pair's two replies in a fixed order (the reply whose text sorts
first, then the other): the first is better, the second is better, or a tie (`p_chosen` 0.5, `rlaif rankings import
--ties half`). On them:

- percent agreement: per pair, the share of agreeing pairs of answers among all pairs of its answers (the P_i of
  Fleiss 1971, "Measuring nominal scale agreement among many raters", eq. 2; with two annotators, 1 when they agree,
  0 when not), averaged over the pairs;
- Cohen's kappa (Cohen 1960, "A coefficient of agreement for nominal scales"), agreement beyond chance between two
  annotators: (p_o - p_e) / (1 - p_e), p_o their agreement and p_e the agreement expected from their own answer
  frequencies; `sklearn.metrics.cohen_kappa_score`. The headline when exactly two annotators answered the overlapping
  pairs, and pairwise for every two annotators sharing at least MIN_COMMON_PAIRS pairs;
- Krippendorff's alpha, nominal (Krippendorff 2011, "Computing Krippendorff's alpha-reliability", sec. C: any
  number of annotators, missing answers), 1 - D_o / D_e, observed over expected disagreement; the `krippendorff`
  package.

The two replies of a pair have no order: which one is "first" is an accident of their text, and kappa's and alpha's
chance term depends on how often each category is used. So each pair enters both ways round (its answers once as
given and once with first and second swapped): the chance term then sees the two replies as interchangeable, as a
coin would, and the figures do not depend on the order chosen; ties stay ties. With no ties this makes kappa
2 p_o - 1. Where every answer is a tie, kappa and alpha are 0/0: None for the figure, and 1 (every answer agrees)
for a bootstrap resample that happens to hold only such pairs.

**Each principle against people.** Pairs labelled by people and by an AI labeler whose rows carry `principle_p`
(P(chosen is better) under each principle, rlaif.label). People's label of a pair is their majority: the mean of
their answers' outcomes (1, 0.5 for a tie, 0; an unnamed answer counts, and an AI row's `human_chosen`, as `rlaif
eval labeler`'s labels.jsonl records it, counts where no human row labels the pair); a pair where people tie is left
out and counted. For each labeler (rlaif.reliability.labeler_of: a model in a mode), each principle's agreement is
the share of the pairs it labelled where its label picks people's winner (a label of exactly 0.5 counts half), and
overall the labeler's own label (`p_chosen`, its principles' mean in mode compare) on the same pairs; beside each, on
the same pairs, "prefer the shorter reply" and "prefer the longer reply" (rlaif.stats.length_baselines).

**Intervals** (rlaif.stats): rates (percent agreement, agreement with people, the baselines) get the 95% Wilson
score interval over the n pairs (percent agreement with three or more annotators averages fractions, for which the
Wilson interval is conservative); kappa and alpha a 95% percentile bootstrap over the pairs (each resample draws
whole pairs, both ways round together), seeded, so a rerun prints the same interval.

**Small samples.** Kappa and alpha (value and interval, headline and pairwise) are reported only on at least
MIN_COMMON_PAIRS pairs: on fewer, where every pair agrees, every resample agrees too and the bootstrap says [1, 1],
certainty that three pairs cannot give (percent agreement, with its Wilson interval, is reported at any n). Nor is a
zero-width bootstrap interval ever reported: where every resample gives the same figure (say, 12 pairs that all
agree), the figure keeps its value and its interval is None (`low`, `high`), with a note saying why.

This module imports numpy and rlaif's own light modules; scikit-learn and krippendorff are imported where used.
"""

from __future__ import annotations

import itertools
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable

import numpy as np

from rlaif import stats
from rlaif.records import PreferenceRow, outcome

FIRST, SECOND, TIE = 0, 1, 2  # an answer's category: the reply that sorts first is better, the other is, a tie
CATEGORIES = (FIRST, SECOND, TIE)
# Kappa and alpha need at least this many pairs (two annotators' common pairs for a kappa, pairs two or more answered
# for alpha): on fewer, their bootstrap interval collapses to a point ([1, 1] where all agree), and they say little.
MIN_COMMON_PAIRS = 10
UNNAMED_LABELER = "(unnamed labeler)"  # AI rows that name no `labeler`


# --------------------------------------------------------------------------------------------------------------------
# Statistics of answers (pure; the pairs on the last axis)


def both_ways(answers) -> np.ndarray:
    """Answers (..., n) of categories FIRST, SECOND, TIE (nan: missing) -> (..., 2n): as given, then with FIRST and
    SECOND swapped, the same pairs seen the other way round."""
    answers = np.asarray(answers, dtype=float)
    swapped = np.where(answers == FIRST, SECOND, np.where(answers == SECOND, FIRST, answers))
    return np.concatenate([answers, swapped], axis=-1)


def percent_agreement(matrix) -> np.ndarray:
    """Per pair, the share of agreeing pairs of answers among all pairs of its answers (Fleiss 1971, eq. 2:
    P_i = sum_c n_ic (n_ic - 1) / (m_i (m_i - 1)), m_i its answers, n_ic those in category c). matrix: (annotators,
    pairs) categories, nan where an annotator did not answer; every pair needs two answers or more. -> (pairs,)."""
    matrix = np.asarray(matrix, dtype=float)
    counts = np.stack([(matrix == c).sum(axis=0) for c in CATEGORIES])  # (categories, pairs)
    m = counts.sum(axis=0)
    if (m < 2).any():
        raise ValueError("percent_agreement: every pair needs two answers or more")
    return (counts * (counts - 1)).sum(axis=0) / (m * (m - 1))


def cohen_kappa(a, b, weight=None) -> float | None:
    """Cohen's kappa of two annotators' answers to the same n pairs, each pair counted both ways round (module
    docstring): (p_o - p_e) / (1 - p_e) (Cohen 1960, eq. 1), computed by sklearn.metrics.cohen_kappa_score. a, b:
    (n,) categories; weight: (n,) how many times each pair counts (a bootstrap resample's draws), 1 when None. None
    where it is 0/0 (every answer a tie)."""
    from sklearn.metrics import cohen_kappa_score

    a, b = both_ways(a).astype(int), both_ways(b).astype(int)
    weight = None if weight is None else np.concatenate([weight, weight]).astype(float)
    if len(set(a.tolist()) | set(b.tolist())) < 2:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(cohen_kappa_score(a, b, labels=list(CATEGORIES), sample_weight=weight))


def nominal_alpha(matrix) -> float | None:
    """Krippendorff's alpha for nominal data with any number of annotators and missing answers (Krippendorff 2011,
    sec. C: alpha = 1 - (n - 1) sum_{c != k} o_ck / sum_{c != k} n_c n_k, from the coincidence matrix o of the
    pairable values), computed by the `krippendorff` package. matrix: (annotators, units), any category codes, nan
    where missing. None where it is 0/0 (every pairable value the same)."""
    import krippendorff

    matrix = np.asarray(matrix, dtype=float)
    pairable = matrix[:, (~np.isnan(matrix)).sum(axis=0) >= 2]
    values = np.unique(pairable[~np.isnan(pairable)])
    if len(values) < 2:
        return None
    return float(krippendorff.alpha(reliability_data=matrix, level_of_measurement="nominal", value_domain=values))


def krippendorff_alpha(matrix) -> float | None:
    """Krippendorff's nominal alpha of answers to pairs, each pair counted both ways round (module docstring).
    matrix: (annotators, pairs) categories FIRST, SECOND, TIE, nan where missing. None where it is 0/0."""
    return nominal_alpha(both_ways(matrix))


def _resampled(compute, undefined: float = 1.0):
    """`compute` of one sample (1-d arrays, one entry per pair) as a statistic `rlaif.stats.bootstrap` can call:
    scipy's vectorised bootstrap adds leading axes of resamples, each computed in turn. A resample where the figure
    is 0/0 (only tied pairs drawn: every answer agrees) counts as `undefined`."""

    def statistic(*samples, axis=-1):
        arrays = [np.asarray(s) for s in samples]
        if arrays[0].ndim == 1:
            value = compute(*arrays)
            return undefined if value is None else value
        flat = [a.reshape(-1, a.shape[-1]) for a in arrays]
        values = [compute(*rows) for rows in zip(*flat)]
        return np.array([undefined if v is None else v for v in values]).reshape(arrays[0].shape[:-1])

    return statistic


def without_zero_width(estimate: dict) -> dict:
    """A bootstrap estimate {"value", "low", "high", "n"} with `low` and `high` None where they are equal: every
    resample gave the same figure, and a zero-width interval would claim a certainty the n pairs cannot give."""
    return {**estimate, "low": None, "high": None} if estimate["low"] == estimate["high"] else estimate


def kappa_interval(a, b, resamples: int = stats.RESAMPLES, seed: int = stats.SEED) -> dict | None:
    """Cohen's kappa of two annotators on their n common pairs with its 95% percentile bootstrap interval over the
    pairs (rlaif.stats.bootstrap), as {"value", "low", "high", "n"} (`low`, `high` None where every resample gives
    the same figure: `without_zero_width`); None where kappa is 0/0."""
    if cohen_kappa(a, b) is None:
        return None
    known: dict[bytes, float | None] = {}

    def of_resample(a, b):
        # kappa depends only on how many pairs hold each (answer of a, answer of b): computed once per such count
        counts = np.bincount((len(CATEGORIES) * a + b).astype(int), minlength=len(CATEGORIES) ** 2)
        key = counts.tobytes()
        if key not in known:
            cells = np.nonzero(counts)[0]
            known[key] = cohen_kappa(cells // len(CATEGORIES), cells % len(CATEGORIES), counts[cells])
        return known[key]

    return without_zero_width(stats.bootstrap(_resampled(of_resample), a, b, resamples=resamples, seed=seed).as_dict())


def alpha_interval(matrix, resamples: int = stats.RESAMPLES, seed: int = stats.SEED) -> dict | None:
    """Krippendorff's alpha of (annotators, pairs) answers with its 95% percentile bootstrap interval over the pairs
    (whole columns drawn), as {"value", "low", "high", "n"} (`low`, `high` None where every resample gives the same
    figure); None where alpha is 0/0."""
    matrix = np.asarray(matrix, dtype=float)
    if krippendorff_alpha(matrix) is None:
        return None

    def of_columns(index):
        return krippendorff_alpha(matrix[:, index.astype(int)])

    # the pairs' indices are the sample: a resample of them is a resample of whole pairs
    return without_zero_width(stats.bootstrap(_resampled(of_columns), np.arange(matrix.shape[1]), resamples=resamples,
                                              seed=seed).as_dict())


# --------------------------------------------------------------------------------------------------------------------
# Rows to pairs


def _labeler(row: PreferenceRow) -> str:
    from rlaif.reliability import labeler_of

    return labeler_of(row, UNNAMED_LABELER)


def collect(rows: Iterable[PreferenceRow], measure_only: Iterable[PreferenceRow] = ()
            ) -> tuple[dict[str, dict], Counter]:
    """Preference rows grouped by pair (rlaif.rankings.pair_key), every label said of the pair's replies in sorted
    order: {key: {"texts": (first, second), "people": {annotator: category}, "unnamed": [outcome], "recorded":
    [outcome], "ai": {labeler: {"p": [P(first)], "principles": {id: [P(first)]}}}}} and counts of the rows read.
    A second answer by the same annotator to the same pair is left out and counted (`repeated_answers`), the first
    kept; so is an unnamed answer (a calibration file's, or a row naming no annotator) whose row id the pair already
    had (a file read twice, a calibration file repeating a data file's rows). Named rows are told apart by their
    annotator alone: two imports of the same tasks (the rank page's and Label Studio's) give different people's
    answers the same bare task id. `measure_only`: rows read only to measure the AI against people (a reward stage's
    calibration files): their people's answers count toward people's majority as unnamed ones (counted apart,
    `measure_only_answers`), not toward people's agreement with each other."""
    from rlaif.rankings import pair_key

    pairs: dict[str, dict] = {}
    counts: Counter = Counter()
    seen_rows: set[tuple[str, str]] = set()  # (pair, row id) of every person's answer kept, named or not
    for row, measuring in itertools.chain(((row, False) for row in rows), ((row, True) for row in measure_only)):
        key = pair_key(row)
        chosen = row["chosen"][-1]["content"]
        texts = tuple(sorted([chosen, row["rejected"][-1]["content"]]))
        pair = pairs.setdefault(key, {"texts": texts, "people": {}, "unnamed": [], "recorded": [],
                                      "ai": defaultdict(lambda: {"p": [], "principles": defaultdict(list)})})
        flip = chosen != pair["texts"][0]

        def toward_first(p: float, flip: bool = flip) -> float:
            return 1.0 - p if flip else p

        source = row.get("source", "human")
        if source == "human":
            counts["human"] += 1
            answer = outcome(toward_first(row["p_chosen"]))
            who = None if measuring else row.get("annotator")
            named = who not in (None, "")
            # the same person twice, or an unnamed row twice (a file given twice, a calibration file repeating data)
            row_id = None if row.get("id") is None else (key, str(row["id"]))
            if (named and str(who) in pair["people"]) or (not named and row_id in seen_rows):
                counts["repeated_answers"] += 1
                continue
            if row_id is not None:
                seen_rows.add(row_id)
            if named:
                pair["people"][str(who)] = {1.0: FIRST, 0.0: SECOND}.get(answer, TIE)
            else:
                counts["measure_only_answers" if measuring else "unnamed_answers"] += 1
                pair["unnamed"].append(answer)
        elif source == "ai":
            counts["ai"] += 1
            labels = pair["ai"][_labeler(row)]
            labels["p"].append(toward_first(row["p_chosen"]))
            for principle, p in (row.get("principle_p") or {}).items():
                labels["principles"][principle].append(toward_first(p))
            if row.get("human_chosen") in ("chosen", "rejected"):  # `rlaif eval labeler`'s labels.jsonl
                pair["recorded"].append(1.0 if row[row["human_chosen"]][-1]["content"] == pair["texts"][0] else 0.0)
        else:
            counts["other"] += 1
    return pairs, counts


def people_choice(pair: dict) -> float | None:
    """People's label of a collected pair: the mean outcome of their answers toward its first reply (named and
    unnamed; an AI row's recorded `human_chosen` only where no person's row labels it), None where nobody labelled
    it. 0.5 is a tie: no winner."""
    answers = [{FIRST: 1.0, SECOND: 0.0, TIE: 0.5}[c] for c in pair["people"].values()] + pair["unnamed"]
    answers = answers or pair["recorded"]
    return sum(answers) / len(answers) if answers else None


# --------------------------------------------------------------------------------------------------------------------
# The two reports


def inter_annotator(pairs: dict[str, dict], resamples: int = stats.RESAMPLES, seed: int = stats.SEED
                    ) -> tuple[dict | None, dict]:
    """People's agreement with each other on the collected pairs two or more named annotators answered: (figures,
    left out). Figures (None when no pair has two): {"pairs", "annotators", "answers", "tie_answers",
    "percent_agreement", "kappa" (Cohen's, when exactly two annotators answered them; else None), "alpha"
    (Krippendorff's), "pairwise_kappa": [{"annotators": [a, b], "pairs", "kappa"}] for every two annotators sharing
    at least MIN_COMMON_PAIRS pairs, "min_common_pairs"}, each figure {"value", "low", "high", "n"} (n: pairs; `low`
    and `high` None where every resample gives the same figure). Kappa and alpha are None on fewer than
    MIN_COMMON_PAIRS pairs (module docstring, "Small samples"). Left out: pairs one named annotator answered
    (`single_annotator`), and two annotators sharing too few pairs for a kappa (`annotator_pairs_too_few`)."""
    overlapping = [key for key, pair in pairs.items() if len(pair["people"]) >= 2]
    left_out = {"single_annotator": sum(len(pair["people"]) == 1 for pair in pairs.values()),
                "annotator_pairs_too_few": 0}
    if not overlapping:
        return None, left_out
    annotators = sorted({who for key in overlapping for who in pairs[key]["people"]})
    matrix = np.full((len(annotators), len(overlapping)), np.nan)
    for j, key in enumerate(overlapping):
        for who, category in pairs[key]["people"].items():
            matrix[annotators.index(who), j] = category
    pairwise = []
    for i, k in itertools.combinations(range(len(annotators)), 2):
        common = ~np.isnan(matrix[i]) & ~np.isnan(matrix[k])
        if common.sum() == 0:
            continue
        if common.sum() < MIN_COMMON_PAIRS:
            left_out["annotator_pairs_too_few"] += 1
            continue
        pairwise.append({"annotators": [annotators[i], annotators[k]], "pairs": int(common.sum()),
                         "kappa": kappa_interval(matrix[i, common], matrix[k, common], resamples, seed)})
    answered = ~np.isnan(matrix)
    figures = {"pairs": len(overlapping), "annotators": len(annotators), "answers": int(answered.sum()),
               "tie_answers": int((matrix == TIE).sum()),
               "percent_agreement": stats.bootstrap(stats.share, percent_agreement(matrix)).as_dict(),
               "kappa": pairwise[0]["kappa"] if len(annotators) == 2 and pairwise else None,
               "alpha": alpha_interval(matrix, resamples, seed) if len(overlapping) >= MIN_COMMON_PAIRS else None,
               "pairwise_kappa": pairwise,
               "min_common_pairs": MIN_COMMON_PAIRS}
    return figures, left_out


def against_people(p_winner, winner: list[str], other: list[str]) -> dict:
    """A label's agreement with people on n pairs, beside the length baselines on the same pairs: {"pairs",
    "agreement", "baselines": {name: ...}}, each a rate with its Wilson interval ({"value", "low", "high", "n"}).
    p_winner: (n,) the label's P(the reply people chose is better); winner, other: the replies' texts."""
    baselines = stats.length_baselines(winner, other)
    return {"pairs": len(winner), "agreement": stats.bootstrap(stats.agreement, p_winner).as_dict(),
            "baselines": {name: stats.bootstrap(stats.agreement, b).as_dict() for name, b in baselines.items()}}


def human_ai(pairs: dict[str, dict]) -> tuple[dict, dict]:
    """Each AI labeler's principles against people's majority on the collected pairs both labelled: ({labeler:
    {"pairs", "overall", "principles": {id: ...}, "left_out"}}, left out). "overall" is the labeler's own label
    (`p_chosen`) on the pairs whose rows carry `principle_p`, each principle its own label on the pairs it labelled;
    both `against_people`. Left out, over all labelers: pairs people tied (`people_tied`), pairs people decided that
    no AI labelled (`no_ai_label`), AI-labelled pairs no person labelled (`no_human_label`), and pairs both labelled
    whose AI rows carry no `principle_p` (`no_principle_p`); each labeler's entry counts its own."""
    choice = {key: people_choice(pair) for key, pair in pairs.items()}
    decided = {key for key, p in choice.items() if p is not None and p != 0.5}
    left_out = {"people_tied": sum(p == 0.5 for p in choice.values()),
                "no_ai_label": sum(not pairs[key]["ai"] for key in decided),
                "no_human_label": sum(bool(pair["ai"]) and choice[key] is None for key, pair in pairs.items()),
                "no_principle_p": 0}
    without_principles: set[str] = set()
    labelers = sorted({name for pair in pairs.values() for name in pair["ai"]})
    report = {}
    for name in labelers:
        mine = [key for key, pair in pairs.items() if name in pair["ai"]]
        measured = [key for key in mine if key in decided and pairs[key]["ai"][name]["principles"]]
        unprincipled = [key for key in mine if key in decided and not pairs[key]["ai"][name]["principles"]]
        without_principles.update(unprincipled)
        entry_left = {"people_tied": sum(choice[key] == 0.5 for key in mine),
                      "no_human_label": sum(choice[key] is None for key in mine), "no_principle_p": len(unprincipled)}
        if not measured:
            report[name] = {"pairs": 0, "overall": None, "principles": {}, "left_out": entry_left}
            continue

        def toward_people(ps: list[float], key: str) -> float:
            p = sum(ps) / len(ps)
            return p if choice[key] > 0.5 else 1.0 - p

        def texts(keys: list[str]) -> tuple[list[str], list[str]]:
            first = [choice[k] > 0.5 for k in keys]
            return ([pairs[k]["texts"][0 if f else 1] for k, f in zip(keys, first)],
                    [pairs[k]["texts"][1 if f else 0] for k, f in zip(keys, first)])

        overall = against_people([toward_people(pairs[k]["ai"][name]["p"], k) for k in measured], *texts(measured))
        principles = {}
        for principle in sorted({p for k in measured for p in pairs[k]["ai"][name]["principles"]}):
            keys = [k for k in measured if principle in pairs[k]["ai"][name]["principles"]]
            principles[principle] = against_people(
                [toward_people(pairs[k]["ai"][name]["principles"][principle], k) for k in keys], *texts(keys))
        report[name] = {"pairs": len(measured), "overall": overall, "principles": principles, "left_out": entry_left}
    left_out["no_principle_p"] = len(without_principles)
    return report, left_out


def agreement_report(rows: Iterable[PreferenceRow], measure_only: Iterable[PreferenceRow] = (),
                     resamples: int = stats.RESAMPLES, seed: int = stats.SEED,
                     measures_ai: Callable[[str], bool] | None = None) -> dict:
    """Everything above from preference rows (human and AI mixed, from any files), as one JSON-able dict:

        {"rows": {"human", "ai", "other"}, "annotators": named annotators in the human rows, "human_pairs": distinct
         pairs people labelled, "inter_annotator": `inter_annotator`'s figures or None, "human_ai": `human_ai`'s,
         "left_out": {"inter_annotator": {single_annotator, annotator_pairs_too_few, unnamed_answers,
         repeated_answers}, "human_ai": {people_tied, no_ai_label, no_human_label, no_principle_p}},
         "notes": [why a figure is missing, in words], "method": how the intervals were computed}

    `measure_only`: rows read only to measure the AI against people (`collect`); `resamples`, `seed`: the
    bootstrap's (rlaif.stats); `measures_ai(pair key)`: the pairs the AI labelers are measured on (default every
    pair), people's agreement with each other being read on every pair."""
    pairs, counts = collect(rows, measure_only)
    inter, inter_left = inter_annotator(pairs, resamples, seed)
    inter_left.update(unnamed_answers=counts["unnamed_answers"], repeated_answers=counts["repeated_answers"])
    labelers, ai_left = human_ai(pairs if measures_ai is None else {k: p for k, p in pairs.items() if measures_ai(k)})
    annotators = {who for pair in pairs.values() for who in pair["people"]}
    human_pairs = sum(bool(pair["people"] or pair["unnamed"]) for pair in pairs.values())
    notes = []
    if not counts["human"]:
        notes.append("no human rows: nothing to measure agreement with")
    elif inter is None:
        why = ("no row names its annotator" if not annotators else
               f"no pair was answered by two or more named annotators ({len(annotators)} annotator"
               f"{'' if len(annotators) == 1 else 's'}, {inter_left['single_annotator']} pairs answered by one)")
        notes.append(f"people's agreement with each other not measured: {why}; `rlaif rankings export --overlap-share` "
                     "sends a share of the pairs to several people")
    elif inter["pairs"] < MIN_COMMON_PAIRS:
        notes.append(f"Cohen's kappa and Krippendorff's alpha not reported (n too small): {inter['pairs']} pair"
                     f"{'' if inter['pairs'] == 1 else 's'} two or more people answered, fewer than "
                     f"{MIN_COMMON_PAIRS}; percent agreement's interval shows how little they say")
    else:
        if inter["kappa"] is None and inter["annotators"] == 2:
            notes.append("Cohen's kappa is 0/0: every answer is a tie")
        flat = [name for name in ("kappa", "alpha") if inter[name] and inter[name]["low"] is None]
        if flat:
            names = " and ".join({"kappa": "Cohen's kappa", "alpha": "Krippendorff's alpha"}[name] for name in flat)
            notes.append(f"{names}: no interval, as every bootstrap resample of the {inter['pairs']} pairs gives the "
                         "same figure (a zero-width interval would claim certainty); read percent agreement's "
                         "interval")
    if counts["ai"] and not any(entry["pairs"] for entry in labelers.values()):
        notes.append("the AI labels were not measured against people: no pair both labelled with principle_p and "
                     "decided by people")
    return {"rows": {"human": counts["human"], "ai": counts["ai"], "other": counts["other"]},
            "annotators": len(annotators), "human_pairs": human_pairs, "inter_annotator": inter,
            "human_ai": labelers, "left_out": {"inter_annotator": inter_left, "human_ai": ai_left}, "notes": notes,
            "method": (f"{stats.CONFIDENCE:.0%} intervals: Wilson score intervals for rates (percent agreement, "
                       f"agreement with people and its baselines), percentile bootstrap over the pairs for kappa and "
                       f"alpha ({resamples} resamples of whole pairs, seed {seed}; none where every resample gives the "
                       f"same figure); kappa and alpha count each pair both ways round, and need "
                       f"{MIN_COMMON_PAIRS} pairs or more")}


# --------------------------------------------------------------------------------------------------------------------
# In words


def shown_estimate(estimate: dict | None, percent: bool = False) -> str:
    """A figure with its interval: "46.2% [39.1, 53.0]" for a rate (`percent`), "0.62 [0.41, 0.80]" otherwise; "-"
    for None; "1.00 (no interval)" for a figure whose interval is None (every resample the same)."""
    if estimate is None:
        return "-"
    if estimate["low"] is None or estimate["high"] is None:
        return f"{estimate['value']:.1%} (no interval)" if percent else f"{estimate['value']:.2f} (no interval)"
    e = stats.Estimate(**estimate)
    return e.percent() if percent else e.number(2)


def shown_chance(inter: dict | None, name: str) -> str:
    """`inter_annotator`'s "kappa" or "alpha" for a table cell: `shown_estimate`'s, or "- (n too small)" on fewer
    pairs than it needs."""
    if inter and inter["pairs"] < inter.get("min_common_pairs", 0):
        return "- (n too small)"
    return shown_estimate((inter or {}).get(name))


def inter_annotator_line(report: dict) -> str:
    """People's agreement with each other in a sentence, or why it was not measured ("" with no human rows)."""
    inter = report.get("inter_annotator")
    if inter is None:
        return next((note for note in report.get("notes", []) if note.startswith("people's agreement")), "")
    if inter["pairs"] < inter.get("min_common_pairs", 0):
        chance = f"Cohen's kappa and Krippendorff's alpha - (n too small: they need {inter['min_common_pairs']} pairs)"
    else:
        chance = (f"Cohen's kappa {shown_estimate(inter['kappa'])}; " if inter.get("kappa") else "") + \
            f"Krippendorff's alpha {shown_estimate(inter['alpha'])}"
    return (f"People with each other, on the {inter['pairs']} pair{'' if inter['pairs'] == 1 else 's'} two or more "
            f"of {inter['annotators']} annotators answered: percent agreement {shown_estimate(inter['percent_agreement'], True)}"
            f"; {chance} (1: full agreement, 0: what chance gives). A labeler's agreement with people is read "
            "against this ceiling.")


def human_ai_rows(report: dict) -> list[list[str]]:
    """The per-principle table, one row per labeler's overall label and per principle: labeler, principle, pairs,
    agreement with people's majority, prefer the shorter reply, prefer the longer reply (each with its interval)."""
    rows = []
    for name, entry in report.get("human_ai", {}).items():
        if not entry["pairs"]:
            continue
        for principle, figures in [("(all its principles: its p_chosen)", entry["overall"]), *entry["principles"].items()]:
            base = figures["baselines"]
            rows.append([name, principle, str(figures["pairs"]), shown_estimate(figures["agreement"], True),
                         shown_estimate(base["prefer the shorter reply"], True), shown_estimate(base["prefer the longer reply"], True)])
    return rows


HUMAN_AI_COLUMNS = ["labeler", "principle", "pairs", "agrees with people's majority", "prefer the shorter reply",
                    "prefer the longer reply"]
