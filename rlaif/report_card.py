"""The labeler report card: how far the AI labeler can be trusted (`rlaif eval labeler`). The policies' evaluation
(`rlaif eval RUN`) is in rlaif.evaluate.

    rlaif eval labeler --pairs ../shared/data/hh-harmless-dev.jsonl --limit 100 --out runs/eval

On human-labelled pairs (hh-rlhf transcripts, or rows with prompt/chosen/rejected) the labeler judges each pair, and
the report card sets each way of labeling beside the baselines a skeptic tries first, all on the same pairs:

- agreement: how often the labeler prefers the response people chose (an exact tie, p = 0.5, counts half);
- consistency: how often both orders name the same winner (a labeler that always picks (A) is 0% consistent);
- ECE, expected calibration error: bins the labeler's confidence max(p, 1 - p) into 10 bins and averages
  |accuracy - confidence| weighted by bin size (Guo et al. 2017); 0 means its probabilities mean what they say;
- mean confidence: the mean of max(p, 1 - p);
- per principle: agreement of each principle's both-order label, over the pairs it was drawn for;
- injection flip rate: how often an attack written into a response flips the label (rlaif.injection), per attack
  over the attacked pairs, and overall the mean of the attacks' rates; an attacked pair whose labeling prompt no
  longer fits in the labeler's context is left out and counted (`too_long`).

The modes are: single order (first principle, one order per pair: the human-chosen reply shown as (A) in a seeded
half of the pairs and as (B) in the other half, so a labeler that always answers (A) agrees 50% of the time), both
orders (first principle, averaged), ensemble (k principles, both orders) and chain of thought (first principle, both
orders, a rationale first, clamped). The first three come from the same forward passes; `chain_of_thought=False`
(`--no-cot`) and `injection_pairs=0` skip the costly rest. With `order_free_modes` (on by default), two modes that show no reply
beside the other join them (rlaif.label_modes): likelihood contrast (first principle, sigmoid of the difference of the
replies' log-likelihood ratios under its follows and violates system prompts) and score difference (sigmoid of the
difference of the replies' expected 1-10 scores, T = 1); a pair that does not fit either is left out of the
whole card.

The baselines need no model:

- prefer the shorter reply, prefer the longer reply: by length in characters (rlaif.stats.length_baselines; a tie
  when equal). They ignore the order, so they are 100% consistent, and one of the two agrees with people on at least
  half of the pairs, whatever people chose;
- always the first position: answers (A). Shown the pairs as the single-order mode shows them, P(human-chosen is
  better) is 1 where that reply is shown as (A) and 0 where it is shown as (B); in both orders it names a different
  reply each time, so it is 0% consistent;
- a fair coin: P = 0.5 on every pair, so 50% agreement by definition (no draw that could land on 60% by chance).

Every figure is an interval (rlaif.stats.bootstrap): for a rate (agreement, consistency, a flip rate) the 95% Wilson
score interval, for the rest a 95% percentile bootstrap over the pairs (seeded, so a rerun reports the same), kept
in labeler_report.json as {"value", "low", "high", "n"}. The verdict sets the best mode by agreement against the
best baseline by agreement, of the length rules and the coin (always the first position agrees on half the pairs
by construction), on the same pairs. The labeler beats the baseline when an exact
one-sided sign test on the pairs where the two disagree puts it ahead at p < 0.025 / M, M the number of modes the
best was picked from (Bonferroni: trying more modes must not make a win easier; rlaif.stats.sign_test); a
bootstrap interval is not trusted for this decision, as on a handful of pairs it can exclude 0 by chance. The
paired bootstrap interval of the difference is shown beside the test. When it does not beat the baseline, its
labels should not be trained on unweighted. The verdict's sentence is printed last, and opens the
run's report (rlaif.report) when the pipeline checked the labeler.

    labeler_report.json: {"config", "pairs", "counts", "summary",
      "verdict": {"best_mode", "best_baseline", "mode_agreement", "baseline_agreement", "difference", "sign_test",
                  "beats", "text"},
      "modes": {NAME: {"pairs", "agreement", "consistency", "ece", "mean_confidence"}},   (each an interval;
      "baselines": {NAME: the same},                                                     a single order's
      "per_principle": {ID: {"pairs", "agreement"}},                                     consistency null)
      "human_agreement": rlaif.agreement.agreement_report's {"inter_annotator", "human_ai", "left_out", ...},
      "injection": {"pairs", "flip_rate", "by_attack": {ATTACK: interval or null}, "counts", "summary"},
      "labels": {"file", "judgement", "rows"}, "method"}

The judgements go to OUT/labels.jsonl too, so that other stages can calibrate the labeler on them: one AI
preference row per judged pair (rlaif.label.to_preference, the rows `rlaif label` writes), from the judgement
`rlaif label` would make with the constitution's label settings (rlaif.label.resolved_settings): its first k drawn
principles (the draw is prefix-stable, so these are the k `rlaif label` draws; all `ensemble` drawn when k is
larger or "all"), both orders or the first only, and with chain of thought the chain-of-thought mode's judgement
(first principle, clamped; the plain one under `--no-cot`). Each row adds `human_chosen`: "chosen" when people
chose the row's own chosen reply, "rejected" when they chose its rejected one. labeler_report.json's `labels` names
the judgement used.

People's agreement with each other is the ceiling a labeler can reach: where the human file's rows name their
`annotator` and two or more people answered the same pair (`rlaif rankings export --overlap`), the report card sets
their percent agreement, Cohen's kappa (two annotators) or Krippendorff's alpha beside the labeler's agreement, on
the judged pairs (rlaif.agreement). It also measures each principle against people's majority, each pair counted
once, beside the length baselines on the same pairs: labeler_report.json's `human_agreement`
(`rlaif.agreement.agreement_report`, the labeler's both-order judgement under every principle drawn; its own label
is the ensemble's).

A pair that says nothing (an empty reply, or two replies equal after stripping) is never judged: the report counts
it as left out, with its reason. Nothing is read past the labeler's context: a human pair whose labeling prompt does
not fit in it is left out of the report card (`too_long`).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import ClassVar

import numpy as np

from rlaif import stats
from rlaif.label import to_preference
from rlaif.models import check_numbers, unused_settings
from rlaif.records import (
    ConfigError,
    DataError,
    Tally,
    chosen_for_doubt,
    dumps_json,
    outcome,
    read_jsonl,
    write_atomic,
    write_jsonl,
)


@dataclass
class LabelerEvalConfig:
    pairs: str = ""  # human-labelled pairs: hh-rlhf transcripts (chosen/rejected) or prompt/chosen/rejected rows
    out: str = "runs/eval"  # writes OUT/labeler_report.json and OUT/labels.jsonl
    constitution: str = "default"
    labeler: str = "smollm2-135m-instruct"
    limit: int = 100  # pairs read (the first N); those with an empty or identical reply are left out and counted
    ensemble: int = 4  # principles per pair in the ensemble mode (at most the constitution's, as the report names)
    chain_of_thought: bool = True  # also evaluate the chain-of-thought mode (generates a rationale per prompt)
    max_new_tokens: int = 96  # rationale length (chain of thought)
    injection_pairs: int = 8  # pairs attacked by each injection style; 0 skips the injection suite
    order_free_modes: bool = True  # also the likelihood contrast and score difference modes (a pass over the pairs each)
    label_mode: str = "compare"  # the mode labels.jsonl labels in, as `rlaif label --mode` (contrast and score need
    #   order_free_modes), so that the reward stage can measure labels of that mode against people
    trained_mode_only: bool = False  # the verdict judges the one mode `rlaif label` trains with (label_mode, and the
    #   constitution's principles per pair and orders), not the best of all: a recipe's labeler check
    batch_size: int = 8
    device: str | None = None
    engine: str = "rlaif"  # rlaif (the labeler here), vllm (vLLM in this process, on a GPU) or openai (a server that
    #   sends top_logprobs, as `rlaif label --engine openai`: the modes a chat API cannot give, chain of thought and
    #   the order-free ones, are left out)
    base_url: list[str] = field(default_factory=list)  # openai: the servers' API addresses (http://HOST:PORT/v1)
    api_key_env: str = "OPENAI_API_KEY"  # openai: the environment variable holding the API key (never saved)
    concurrency: int = 8  # openai: requests in flight at once, over all servers
    request_timeout: float = 600.0  # openai: seconds to wait for a reply (asked twice before the stage stops)

    VOLATILE = ("base_url", "api_key_env", "concurrency", "request_timeout")  # where a server is, not what it says
    # Settings added after the first checks, each with the value that reproduces them (rlaif.records.added_default)
    ADDED: ClassVar[dict] = {"label_mode": "compare", "trained_mode_only": False, "engine": "rlaif"}

    def __post_init__(self):
        from rlaif import engines

        check_numbers(self, "eval labeler", at_least_one=["limit", "ensemble", "max_new_tokens", "batch_size"],
                      nonnegative=["injection_pairs"])
        engines.check_settings(self, "eval labeler", local=["device"], batches=True)
        if self.engine == "openai" and self.label_mode != "compare":
            raise ConfigError(f"label_mode: engine openai labels in mode compare only (a chat API scores no text its "
                              f"model did not write, rlaif.label_remote), not {self.label_mode}",
                              ["label_mode", "engine"])
        if not self.chain_of_thought:
            unused_settings(self, ["max_new_tokens"], "the rationale's length limit, used only with chain of thought")
        if self.label_mode not in ("compare", *ORDER_FREE):
            raise DataError("eval labeler settings", None, "label_mode",
                            f"expected compare, contrast or score, not {self.label_mode!r}")
        if self.label_mode in ORDER_FREE and not self.order_free_modes:
            raise ConfigError(f"label_mode: {self.label_mode} labels come from the order-free modes; turn "
                              "order_free_modes on", ["label_mode", "order_free_modes"])


ORDER_FREE = {"contrast": "likelihood contrast", "score": "score difference"}  # label mode -> its report card mode


def calibration_bins(probs: list[float], bins: int = 10) -> list[dict]:
    """Reliability-diagram bins of probabilities that the label's winner is better: the prediction is p > 0.5 (an
    exact tie, p = 0.5, is half right), its confidence max(p, 1 - p) in [0.5, 1], split into `bins` equal-width bins;
    empty bins are left out."""
    out = []
    for b in range(bins):
        lo, hi = 0.5 + 0.5 * b / bins, 0.5 + 0.5 * (b + 1) / bins
        members = [p for p in probs if lo <= max(p, 1 - p) < hi or (b == bins - 1 and max(p, 1 - p) == hi)]
        if members:
            out.append({"low": lo, "high": hi, "count": len(members),
                        "confidence": sum(max(p, 1 - p) for p in members) / len(members),
                        "accuracy": sum(outcome(p) for p in members) / len(members)})
    return out


def expected_calibration_error(probs: list[float], bins: int = 10) -> float:
    """ECE (Guo et al. 2017): the bins' |accuracy - confidence|, weighted by their share of the predictions."""
    return sum(b["count"] / len(probs) * abs(b["accuracy"] - b["confidence"]) for b in calibration_bins(probs, bins))


def mode_metrics(p_first, orders: list[tuple[float, float]] | None) -> dict:
    """The report card's figures for one labeling mode or baseline, each an interval over the pairs as a dict
    {"value", "low", "high", "n"}: `p_first` (n,) P(human-chosen is better) per pair; `orders` that probability with
    the human-chosen reply shown as (A) and as (B), per pair, or None where the mode shows one order or no order at
    all (consistency None: a single order cannot disagree with itself, and an order-free mode is consistent by
    construction). Agreement counts an exact tie as half. `ece_floor` is the ECE a calibrated labeler with these
    confidences would show on these pairs (rlaif.stats.ece_floor): read ECE against it, not against 0."""
    p = np.asarray(p_first, dtype=float)
    return {"pairs": len(p), "agreement": _interval(stats.agreement, p),
            "consistency": None if orders is None else
            _interval(stats.consistency, *np.asarray(orders, dtype=float).reshape(-1, 2).T),
            "ece": _interval(stats.ece, p), "ece_floor": stats.ece_floor(p) if len(p) else None,
            "mean_confidence": _interval(stats.mean, np.maximum(p, 1 - p))}


def _interval(statistic, *samples) -> dict | None:
    """The statistic with its bootstrap interval (rlaif.stats.bootstrap) as a dict; None with no pairs."""
    return stats.bootstrap(statistic, *samples).as_dict() if len(samples[0]) else None


def human_choice_shown_first(ids: list[str], seed: int = 0) -> list[bool]:
    """For the single-order mode: whether each pair shows the human-chosen reply as (A). The pairs are ranked by a
    hash of (seed, pair id); the first half (one more for an odd count) show it as (A), the rest as (B)."""
    rank = sorted(range(len(ids)), key=lambda i: hashlib.sha256(f"{seed}:{ids[i]}".encode()).digest())
    shown_first = set(rank[: (len(ids) + 1) // 2])
    return [i in shown_first for i in range(len(ids))]


def mode_predictions(ids: list[str], judged: list[list], ensemble: int, seed: int = 0) -> dict[str, tuple]:
    """Each mode's (P(human-chosen is better) per pair, (shown as (A), shown as (B)) per pair or None for one
    order), from each pair's both-order judgements (rlaif.label.Judgement, `first` being the human-chosen reply);
    the first judgement of a pair is its single principle."""
    firsts = [js[0] for js in judged]
    shown_a = human_choice_shown_first(ids, seed)
    modes = {
        "single order": ([j.shown_first if a else j.shown_second for j, a in zip(firsts, shown_a)], None),
        "both orders": ([j.p for j in firsts], [(j.shown_first, j.shown_second) for j in firsts]),
    }
    if ensemble > 1:  # an ensemble of 1 is "both orders" again
        modes[f"ensemble of {ensemble}"] = (
            [sum(x.p for x in js) / len(js) for js in judged],
            [(sum(x.shown_first for x in js) / len(js), sum(x.shown_second for x in js) / len(js)) for js in judged])
    return modes


def labeler_modes(ids: list[str], judged: list[list], ensemble: int, seed: int = 0) -> dict:
    """The report card's single-order, both-orders and ensemble figures (`mode_metrics` of `mode_predictions`)."""
    return {name: mode_metrics(*prediction) for name, prediction in mode_predictions(ids, judged, ensemble, seed).items()}


def baselines(pairs: list, seed: int = 0) -> dict[str, tuple]:
    """What a labeler must beat, on the same pairs (rlaif.label.Pair, `first` the human-chosen reply), in the shape
    of `mode_predictions`: prefer the shorter reply, prefer the longer reply (order-free: the same in both orders),
    always the first position (in the single-order presentation of `human_choice_shown_first`, P = 1 where the
    human-chosen reply is shown as (A), else 0; in both orders (A) each time, so P(first) = 1 then 0) and a fair
    coin (P = 0.5 on every pair: agreement 50% by definition, with nothing drawn; its consistency, 50% by
    definition too, is left unmeasured)."""
    ids = [p.id for p in pairs]
    out: dict[str, tuple] = {name: (p, None) for name, p in  # order-free: no consistency to measure
                             stats.length_baselines([p.first for p in pairs], [p.second for p in pairs]).items()}
    out[POSITION] = ([1.0 if a else 0.0 for a in human_choice_shown_first(ids, seed)],
                                        [(1.0, 0.0)] * len(ids))
    out[COIN] = ([0.5] * len(ids), None)
    return out


COIN, POSITION = "a fair coin", "always the first position"


def verdict(modes: dict[str, tuple], skeptics: dict[str, tuple]) -> dict:
    """Whether the labeler beats what a skeptic tries first: the best mode by agreement against the best baseline by
    agreement (each `mode_predictions`-shaped, on the same pairs), of the length rules and the coin: always the
    first position agrees on half the pairs by construction (one more of an odd count), so it is a coin that could
    win by rounding. The decision is an exact one-sided sign test on
    the pairs where the two disagree (rlaif.stats.sign_test), Bonferroni-adjusted for the number of modes the best
    was picked from, so that trying more modes does not make a win easier; `beats` when its p-value is below
    0.025 / modes. The paired bootstrap interval of the difference of their agreements is shown beside it. `text`
    says all of it in a sentence."""
    agreement = {name: stats.bootstrap(stats.agreement, p) for name, (p, _) in {**modes, **skeptics}.items()}
    best_mode = max(modes, key=lambda name: agreement[name].value)
    best_baseline = max((name for name in skeptics if name != POSITION), key=lambda name: agreement[name].value)
    difference = stats.bootstrap(stats.difference(stats.agreement), modes[best_mode][0], skeptics[best_baseline][0])
    test = stats.sign_test(modes[best_mode][0], skeptics[best_baseline][0], comparisons=len(modes))
    beats = test["beats"]
    mode, baseline = agreement[best_mode], agreement[best_baseline]
    text = (f"The best mode, {best_mode}, agrees with people on {mode.percent()} of {mode.n} pair"
            f"{'' if mode.n == 1 else 's'}; {best_baseline} agrees on {baseline.percent()}; the difference, "
            f"{difference.percent(points=True)} (sign test on {test['discordant']} pairs where they differ, "
            f"{test['for']} for and {test['against']} against, p = {test['p_value']:.3g}, best of {len(modes)} "
            f"mode{'' if len(modes) == 1 else 's'}: needs p < {test['alpha']:.3g}), ")
    text += ("shows the labeler beats the baseline." if beats else
             "does not show the labeler beats the baseline: do not train on its labels unweighted (see rlaif "
             "reward's reliability weighting) or use a larger labeler.")
    return {"best_mode": best_mode, "best_baseline": best_baseline, "mode_agreement": mode.as_dict(),
            "baseline_agreement": baseline.as_dict(), "difference": difference.as_dict(), "sign_test": test,
            "beats": beats, "text": text}


def label_rows(pairs: list, judged: list[list], k: int | str, both_orders: bool, labeler: str,
               min_margin: float) -> list[dict]:
    """labels.jsonl: each pair's preference row (rlaif.label.to_preference) from its first k judgements (all for
    "all"), in both orders or the first only, plus `human_chosen`: "chosen" when people chose the row's chosen
    reply (the pair's `first`), else "rejected"."""
    rows = []
    for pair, judgements in zip(pairs, judged):
        used = judgements if k == "all" else judgements[: int(k)]
        if not both_orders:  # `rlaif label` shows `first` as (A) only
            used = [replace(j, shown_second=None) for j in used]
        row = to_preference(pair, used, labeler, min_margin)
        rows.append({**row, "human_chosen": "chosen" if row["chosen"][0]["content"] == pair.first else "rejected"})
    return rows


def order_free_rows(pairs: list, p_human: list[float], principles: list[list[str]], labeler: str,
                    mode: str) -> list[dict]:
    """labels.jsonl in an order-free mode (contrast, score): each pair's row facing the reply its P(human-chosen is
    better) favours, p_chosen = max(p, 1 - p), tagged with the mode so that the reward stage measures these labels
    apart from compare ones (rlaif.reliability.labeler_of), plus `human_chosen` as in `label_rows`."""
    rows = []
    for pair, p, drawn in zip(pairs, p_human, principles):
        first_wins = p >= 0.5
        chosen, rejected = (pair.first, pair.second) if first_wins else (pair.second, pair.first)
        rows.append({"id": pair.id, "prompt": pair.prompt, "chosen": [{"role": "assistant", "content": chosen}],
                     "rejected": [{"role": "assistant", "content": rejected}], "p_chosen": float(max(p, 1 - p)),
                     "source": "ai", "labeler": labeler, "mode": mode, "principles": drawn[:1] if mode == "contrast"
                     else [], "human_chosen": "chosen" if first_wins else "rejected"})
    return rows


def load_human_pairs(path: Path | str, limit: int | None = None, tally: Tally | None = None):
    """Human-labelled pairs as rlaif.label.Pair with `first` the response people chose, from the first `limit`
    rows of the file. A pair with an empty reply, or two replies equal after stripping, is left out and counted in
    `tally` under its reason (`records.reply_problem`): it would ask the labeler to judge nothing. A pair several
    people answered (several rows with the same prompt and replies, in either order) is one pair, `first` their
    majority's choice (a tie row, p_chosen 0.5, counts half each way); the rows after its first are counted as
    `answered_again`, and a pair on which people are even (`people_tied`) is left out: it names no choice. A row
    with a `source` other than human (an AI label), or a `p_chosen` other than 1, 0.5 or 0, is a DataError: it names
    no person's choice."""
    from rlaif.label import Pair, load_pairs
    from rlaif.loaders import load_hh_preferences
    from rlaif.records import iter_jsonl

    path = Path(path)
    tally = tally if tally is not None else Tally("pairs")
    if not path.is_file():
        raise DataError(path, None, None, "file not found")
    first = next(read_jsonl(path), None)
    if first is None:
        raise DataError(path, None, None, "no rows")
    if isinstance(first.get("chosen"), str) and "prompt" not in first:
        rows = load_hh_preferences(path, limit, skip_empty=True, tally=tally)
        return [Pair(r["id"], r["prompt"], r["chosen"][-1]["content"], r["rejected"][-1]["content"]) for r in rows]
    p_of = {}
    for line, row in iter_jsonl(path):  # `first` is people's choice: an AI label names none
        if "p_chosen" in row and (row.get("source", "human") != "human" or row["p_chosen"] not in (0, 0.5, 1)):
            raise DataError(path, line, "p_chosen", f"{row['p_chosen']!r} from source {row.get('source', 'human')!r} "
                            "is not a person's choice (1, or 0.5 for a tie); give pairs people chose between (`rlaif "
                            "rankings import` writes them)")
        p_of[str(row.get("id"))] = outcome(row["p_chosen"]) if "p_chosen" in row else 1.0
    loaded = load_pairs(path, tally, limit)
    groups: dict[tuple, list] = {}
    for pair in loaded:
        groups.setdefault((json.dumps(pair.prompt, sort_keys=True), *sorted((pair.first, pair.second))), []).append(pair)
    pairs = []
    for (_, reference, _other), members in groups.items():
        toward = [p_of.get(m.id, 1.0) if m.first == reference else 1.0 - p_of.get(m.id, 1.0) for m in members]
        mean = sum(toward) / len(toward)
        head = members[0]
        tally.used -= len(members)
        if len(members) > 1:
            tally.leave_out("answered_again", len(members) - 1)
        if mean == 0.5:
            tally.leave_out("people_tied")
            continue
        tally.used += 1
        winner, loser = (head.first, head.second) if (head.first == reference) == (mean > 0.5) else \
            (head.second, head.first)
        pairs.append(Pair(head.id, head.prompt, winner, loser))
    return pairs


def human_agreement(path: Path | str, pairs: list, judged: list[list], labeler: str, limit: int | None = None) -> dict:
    """rlaif.agreement's report on the file's pairs (its first `limit` rows, as `load_human_pairs` reads them):
    every person's row, with the `annotator` it names (hh-rlhf transcripts name none; a pair people split evenly
    counts in their agreement with each other), and the labeler's both-order judgement of the judged pairs
    (rlaif.label.Pair, `first` the reply people chose) under every principle drawn for it (`label_rows`, all
    principles)."""
    from rlaif.agreement import agreement_report

    def as_row(pair, **more) -> dict:
        return {"id": pair.id, "prompt": pair.prompt, "chosen": [{"role": "assistant", "content": pair.first}],
                "rejected": [{"role": "assistant", "content": pair.second}], "p_chosen": 1.0, "source": "human",
                **more}

    first = next(read_jsonl(path), {})
    if "prompt" in first:  # every person's row
        from rlaif.label import load_pairs

        rows = {str(row.get("id")): row for row in read_jsonl(path)}
        people = [as_row(pair, p_chosen=rows[pair.id].get("p_chosen", 1.0),
                         **({"annotator": str(rows[pair.id]["annotator"])}
                            if rows[pair.id].get("annotator") not in (None, "") else {}))
                  for pair in load_pairs(path, limit=limit)]
    else:
        people = [as_row(pair) for pair in pairs]
    return agreement_report(people + label_rows(pairs, judged, "all", True, labeler, 0.0))


def evaluate_labeler(config: LabelerEvalConfig, progress: bool = False) -> dict:
    """Build the labeler report card; writes OUT/labeler_report.json and OUT/labels.jsonl, returns the report."""
    from rlaif.constitution import load_constitution
    from rlaif.generate import progress_bar
    from rlaif.label import LabelConfig, Labeler, label_pairs, resolved_settings, sample_label_principles
    from rlaif.models import load_model

    tally = Tally("pairs")
    pairs = load_human_pairs(config.pairs, config.limit, tally)
    tally.require_some(config.pairs, "a pair needs two different, non-empty replies")
    constitution = load_constitution(config.constitution)
    as_labeled = LabelConfig(constitution=config.constitution, labeler=config.labeler)  # what `rlaif label` would do
    k, both, cot_labels = resolved_settings(as_labeled, constitution)
    remote = config.engine == "openai"
    if remote:  # what a chat API cannot give is left out, and the report says so
        from rlaif.engines import open_engine
        from rlaif.label_remote import RemoteLabeler

        labeler = RemoteLabeler(open_engine(config, config.labeler), constitution, name=config.labeler)
        config = replace(config, chain_of_thought=False, order_free_modes=False, max_new_tokens=96)
        model = tokenizer = thinker = None
    else:
        if config.engine == "vllm":
            from rlaif.engines import VLLMModel

            model = VLLMModel(config.labeler)
            tokenizer = model.tokenizer
        else:
            model, tokenizer = load_model(config.labeler, device=config.device)
        labeler = Labeler(model, tokenizer, constitution, name=config.labeler)
        thinker = Labeler(model, tokenizer, constitution, chain_of_thought=True, max_new_tokens=config.max_new_tokens,
                          name=config.labeler) if config.chain_of_thought else None
    ensemble = min(config.ensemble, len(constitution.principles))  # the report names the ensemble it measured
    drawn = [sample_label_principles(constitution, ensemble, p.id) for p in pairs]
    fits = [labeler.fits(pair, ps) and (thinker is None or thinker.fits(pair, ps[:1])) for pair, ps in zip(pairs, drawn)]
    if config.order_free_modes:  # every mode judges the same pairs
        from rlaif.label_modes import (
            LikelihoodContrast,
            ScoreDifference,
            contrast_probabilities,
            score_difference_probabilities,
        )
        from rlaif.score import DirectScore

        contrast, scorer = LikelihoodContrast(model, tokenizer, constitution), DirectScore(model, tokenizer, constitution)
        fits = [ok and contrast.fits(pair, ps[:1]) and ScoreDifference(scorer).fits(pair)
                for ok, pair, ps in zip(fits, pairs, drawn)]
    pairs, principles = [p for p, ok in zip(pairs, fits) if ok], [ps for ps, ok in zip(drawn, fits) if ok]
    tally.used -= fits.count(False)
    tally.leave_out("too_long", fits.count(False))
    tally.require_some(config.pairs, "no labeling prompt fits in the labeler's context")
    judged = []
    with progress_bar(progress, len(pairs), "labeling (ensemble, both orders)") as bar:
        for start in range(0, len(pairs), config.batch_size):
            batch = slice(start, start + config.batch_size)
            judged += label_pairs(labeler, pairs[batch], principles[batch], both_orders=True)
            bar(len(pairs[batch]))
    skipped = getattr(labeler, "skipped", {})  # a server's: pairs it gave no reading (rlaif.label_remote)
    if skipped:
        kept = [i for i, pair in enumerate(pairs) if pair.id not in skipped]
        pairs, principles, judged = [pairs[i] for i in kept], [principles[i] for i in kept], [judged[i] for i in kept]
        for reason, n in Counter(skipped.values()).items():
            tally.used -= n
            tally.leave_out(reason, n)
        tally.require_some(config.pairs, f"the server gave no pair a reading: {labeler.why_unread()}")
    seed = constitution.label.seed
    predictions = mode_predictions([p.id for p in pairs], judged, ensemble, seed)
    cot = []
    if thinker is not None:
        with progress_bar(progress, len(pairs), "labeling (chain of thought)") as bar:
            for start in range(0, len(pairs), config.batch_size):
                batch = pairs[start : start + config.batch_size]
                cot += [j[0] for j in label_pairs(thinker, batch, [[ps[0]] for ps in principles[start : start + len(batch)]],
                                                  both_orders=True, clamp_to=constitution.label.clamp)]
                bar(len(batch))
        predictions["chain of thought"] = ([j.p for j in cot], [(j.shown_first, j.shown_second) for j in cot])
    if config.order_free_modes:  # first principle; no order enters them, so both orders give p (as the length baselines)
        contrasted = contrast_probabilities(model, tokenizer, constitution, pairs, [ps[:1] for ps in principles],
                                            config.batch_size)
        scored = score_difference_probabilities(scorer, pairs)
        predictions["likelihood contrast"] = (contrasted, None)  # order-free: consistent by construction
        predictions["score difference"] = (scored, None)
    skeptics = baselines(pairs, seed)
    per_principle: dict[str, list[float]] = {}
    for js in judged:
        for j in js:
            per_principle.setdefault(j.principle, []).append(j.p)
    # labels.jsonl: the judgement `rlaif label` would make in label_mode, as far as the modes above measured it
    if config.label_mode in ORDER_FREE:
        trained = ORDER_FREE[config.label_mode]
        rows = order_free_rows(pairs, predictions[trained][0], principles, config.labeler, config.label_mode)
        judgement = f"mode {config.label_mode}: the {trained}, first principle"
    else:
        if cot_labels and cot:
            source, used, how = [[j] for j in cot], 1, ", chain of thought (first principle, clamped)"
            trained = "chain of thought"
        else:
            source, used = judged, ensemble if k == "all" else min(k, ensemble)
            how = " (chain of thought is off in this evaluation)" if cot_labels else ""
            trained = ("both orders" if both else "single order") if used == 1 else f"ensemble of {ensemble}"
        rows = label_rows(pairs, source, used, both, config.labeler, as_labeled.min_margin)
        wanted = len(constitution.principles) if k == "all" else k
        asked = "" if cot_labels and cot or wanted <= used else f"; the constitution asks for {k}, --ensemble drew {used}"
        judgement = (f"{used} principle{'' if used == 1 else 's'} per pair, "
                     f"{'both orders' if both else 'the first order only'}{how}{asked}")
    report = {
        "config": asdict(config),
        "pairs": len(pairs),
        "counts": tally.counts(),
        "summary": tally.summary(),
        "verdict": verdict({trained: predictions[trained]} if config.trained_mode_only else predictions, skeptics),
        "modes": {name: mode_metrics(*prediction) for name, prediction in predictions.items()},
        "baselines": {name: mode_metrics(*prediction) for name, prediction in skeptics.items()},
        "per_principle": {pid: {"pairs": len(ps), "agreement": _interval(stats.agreement, ps)}
                          for pid, ps in sorted(per_principle.items())},
        "human_agreement": human_agreement(config.pairs, pairs, judged, config.labeler, config.limit),
    }
    doubted = sum(chosen_for_doubt(row) for row in read_jsonl(config.pairs))
    if doubted:  # rows of `rankings export` tasks that were chosen because the AI labeler was unsure of them
        report["chosen_for_doubt"] = {
            "rows": doubted, "note": f"{doubted} of the file's rows answer pairs `rankings export` chose because the "
            "AI labeler was unsure of them (why other than random): on them any labeler looks worse than it is. For "
            "its agreement on pairs like those it labels, evaluate on the rows with why: random only"}
    if remote:
        report["not_measured"] = {"modes": ["chain of thought", "likelihood contrast", "score difference"],
                                  "why": "engine openai: a chat API scores no text its model did not write"}
    if config.injection_pairs:
        report["injection"] = injection_report(labeler, pairs[: config.injection_pairs], principles[0][0])
    report["labels"] = {"file": "labels.jsonl", "rows": len(rows), "judgement": judgement}
    report["method"] = stats.method(len(pairs))
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "labels.jsonl", rows)
    write_atomic(out / "labeler_report.json", dumps_json(report))
    return report


def injection_report(labeler, attacked: list, principle) -> dict:
    """The injection suite (rlaif.injection.flip_rates) on the attacked pairs under one principle: each attack's
    flip rate over the pairs it measured, and overall the mean of the attacks' rates, each an interval over the
    attacked pairs (None where nothing was measured). The pairs are attacked one at a time, so that each pair's
    flips are known for the bootstrap: the rate over one pair is its flip."""
    from rlaif.injection import flip_rates

    injected = Tally("attacked pairs")  # an attack makes a reply longer: what no longer fits is left out
    per_pair = [flip_rates(labeler, [pair], principle, tally=injected) for pair in attacked]
    flips = {name: np.array([np.nan if rates[name] is None else rates[name] for rates in per_pair])
             for name in (per_pair[0] if per_pair else {})}
    measured = [f for f in flips.values() if not np.isnan(f).all()]
    return {"pairs": len(attacked), "flip_rate": _interval(flip_rate, *measured) if measured else None,
            "by_attack": {name: _interval(stats.share, f[~np.isnan(f)]) for name, f in flips.items()},
            "counts": injected.counts(), "summary": injected.summary()}


def flip_rate(*flips, axis=-1):
    """The overall flip rate: the mean over attacks of each attack's mean flip over the pairs it measured. flips:
    one array per attack, (..., pairs), nan where the attacked pair was too long -> (...)."""
    with warnings.catch_warnings():  # a resample may hold none of an attack's measured pairs: that attack sits out
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(np.nanmean(np.stack(flips), axis=axis), axis=0)


def print_human_agreement(agreement: dict | None, console) -> None:
    """rlaif.agreement's per-principle table (each labeler's label and principles against people's majority, beside
    the length baselines on the same pairs), and what was left out; nothing when no pair was measured."""
    from rich.table import Table

    from rlaif.agreement import HUMAN_AI_COLUMNS, human_ai_rows
    from rlaif.cli import shown

    rows = human_ai_rows(agreement or {})
    if not rows:
        return
    one = len({row[0] for row in rows}) == 1  # one labeler: named in the title, not in every row
    table = Table(title="Per principle against people's majority (each pair once), beside the baselines on the same "
                        "pairs" + (f": {rows[0][0]}" if one else ""))
    columns = HUMAN_AI_COLUMNS[1:] if one else HUMAN_AI_COLUMNS
    for column in columns:
        table.add_column(column, justify="left" if column in ("labeler", "principle") else "right")
    for row in rows:
        table.add_row(*(shown(cell) for cell in (row[1:] if one else row)))
    console.print(table)
    left = {key: n for key, n in agreement["left_out"]["human_ai"].items() if n}
    if left:
        console.print(f"[dim]left out: {', '.join(f'{key} {n}' for key, n in left.items())}[/dim]")


def _shown(interval: dict | None) -> str:
    """'46.2% [39.1, 53.0]', or '-' for a figure not measured."""
    return "-" if interval is None else stats.Estimate(**interval).percent()


def _shown_number(interval: dict | None) -> str:
    """'0.123 [0.050, 0.200]', or '-' for a figure not measured."""
    return "-" if interval is None else stats.Estimate(**interval).number()


def print_labeler_report(report: dict, console) -> None:
    """The report card (modes, then the baselines), per principle, injection, and last the verdict."""
    from rich.table import Table

    from rlaif.cli import shown  # principle ids come from the user's constitution

    n = report["pairs"]
    table = Table(title=f"Labeler report card: {n} human-labelled pair{'' if n == 1 else 's'}, modes and baselines")
    for column in ("mode / baseline", "agreement", "consistency", "ECE (floor)", "mean confidence"):
        table.add_column(column, justify="left" if column == "mode / baseline" else "right")
    for section in ("modes", "baselines"):
        for name, m in report[section].items():
            ece = _shown_number(m["ece"]) + ("" if m.get("ece_floor") is None else f" ({m['ece_floor']:.3f})")
            table.add_row(name, _shown(m["agreement"]), _shown(m["consistency"]), ece, _shown(m["mean_confidence"]))
        table.add_section()
    console.print(table)
    console.print("[dim]consistency -: one order shown, or a mode that shows no order (consistent by construction). "
                  "ECE floor: what a perfectly calibrated labeler with the same confidences would score on these "
                  "pairs; ECE is biased upward on few pairs.[/dim]")
    if report.get("chosen_for_doubt"):
        console.print(f"[yellow]note:[/yellow] {shown(report['chosen_for_doubt']['note'])}")
    agreement = report.get("human_agreement") or {}
    if agreement.get("inter_annotator"):  # the ceiling, beside the labeler's agreement
        from rlaif.agreement import inter_annotator_line

        console.print(shown(inter_annotator_line(agreement)))
    principles = Table(title="Per principle (both orders)")
    for column in ("principle", "pairs", "agreement"):
        principles.add_column(column, justify="left" if column == "principle" else "right")
    for pid, m in report["per_principle"].items():
        principles.add_row(shown(pid), str(m["pairs"]), _shown(m["agreement"]))
    console.print(principles)
    print_human_agreement(report.get("human_agreement"), console)
    if "injection" in report:
        inj = report["injection"]
        attacks = Table(title=f"Injection: label flips over {inj['pairs']} pairs (overall {_shown(inj['flip_rate'])}; "
                              f"{inj['summary']})")
        attacks.add_column("attack")
        attacks.add_column("flip rate", justify="right")
        for name, rate in inj["by_attack"].items():
            attacks.add_row(name, "- (too long)" if rate is None else _shown(rate))
        console.print(attacks)
    if "not_measured" in report:
        left = report["not_measured"]
        console.print(f"Not measured: {', '.join(left['modes'])} ({left['why']}).")
    colour = "green" if report["verdict"]["beats"] else "red"
    console.print(f"[bold {colour}]{shown(report['verdict']['text'])}[/bold {colour}]")
    console.print(f"[dim]{shown(report['method'])}[/dim]")

