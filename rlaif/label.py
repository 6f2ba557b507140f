"""RL-CAI: an AI labeler compares two responses under constitutional principles and writes soft preference labels.

    rlaif label --candidates runs/x/sample/candidates.jsonl --out runs/x     # -> runs/x/label/preferences.jsonl

For every pair of responses to a prompt, principles are drawn from the constitution (1, k, or all of them; seeded
per pair and principle, so editing one principle moves no pair's draw between the others). A pair with an empty
response, or two responses equal after stripping, says nothing: it is never judged, but left out and counted. Each
principle's comparison question becomes a multiple-choice prompt: the instructions ("answer with (A) or (B) only"),
the conversation, Reply (A), Reply (B), then the question, after the constitution's few-shot label examples. The
label is not generated text: it is the probability of the option "(A" against "(B", normalised over the two and read
from one forward pass (Bai et al. 2022, "Constitutional AI", section 4.1). Options are tokenized in context, so
tokenizers that merge "(A" into one token, or split it in three, are scored alike (a multi-token option by its
summed log-prob). That is mode compare, the default; each row says its `mode`. Two other modes ask no question and
show no reply beside the other, so no order enters their labels: contrast, each reply's likelihood contrast under a
principle's follows and violates system prompts, and score, the difference of the replies' expected 1-10 scores
(rlaif.label_modes).

In compare mode both orders are scored, (first, second) and (second, first), and averaged after un-swapping: a
labeler that favours whichever reply comes first is cancelled out, and the two orders disagreeing is flagged as
inconsistent. With k principles the label is their mean, and each principle's own probability is kept (which
principle drove a label). With chain of thought the labeler first writes a short rationale, then the options are
scored after it, as "{rationale} The answer is (A", the form of its few-shot answers; those probabilities are
extreme, so they are clamped (0.4 to 0.6 by default, as the CAI paper found best).

The responses are untrusted text: `quote` (rlaif.label_prompt) keeps them from passing for the prompt's own
structure (see its docstring), and `rlaif eval labeler` measures how often injection attacks still flip a label.

Prompts of one pair share their beginning (few-shot block, instructions, conversation, and per order both replies;
only the question differs by principle); they are scored as a prefix tree, each shared part computed once
(rlaif.prefix_tree), packed into rows without padding. Labels go to preferences.jsonl as each batch of pairs
finishes (batches fixed by position in the file, so the pairs of one candidates row share a batch and its
conversation's tokens; packing leaves nothing for sorting by length to save): a killed run loses at most the batch
in flight, and its rerun writes what an uninterrupted one would have.

A pair whose labeling prompt (few-shot block, conversation, both replies, question and option; in chain of thought,
with room for the rationale; in mode contrast, a reply with its conversation and system prompt; in mode score, a
reply's scoring prompt) does not fit in the labeler's context is never judged: past the context the
probabilities mean nothing. It is left out and counted (`too_long`), like a pair that says nothing.
"""

from __future__ import annotations

import math
import re
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from rlaif.constitution import Constitution, Principle, load_constitution
from rlaif.label_prompt import answer, few_shot_block, label_message, label_template, quote, tokenizer_specials
from rlaif.models import check_numbers, forward_cached, unused_settings
from rlaif.records import (
    ConfigError,
    DataError,
    JsonlWriter,
    Message,
    PreferenceRow,
    Tally,
    iter_jsonl,
    open_stage,
    outcome,
    read_jsonl,
    reply_problem,
)

if TYPE_CHECKING:  # rlaif.label_modes imports this module, so the stage below imports it where it is used
    from rlaif.label_modes import LikelihoodContrast, ScoreDifference

MODES = ("compare", "contrast", "score")


@dataclass
class LabelConfig:
    candidates: str = ""  # candidates.jsonl (`rlaif sample`), or preference rows (prompt/chosen/rejected) to relabel
    out: str = "runs/label"  # run directory; this stage writes OUT/label/preferences.jsonl
    constitution: str = "default"  # shipped name or path
    labeler: str = "smollm2-135m-instruct"  # the labeling model (any model spec)
    mode: str = "compare"  # compare: ask (A) or (B); contrast: likelihood contrast; score: difference of 1-10 scores
    principles_per_comparison: int | str | None = None  # k principles averaged per pair, or "all"; None: constitution
    both_orders: bool | None = None  # score both orders and average; None: the constitution's label.both_orders
    chain_of_thought: bool | None = None  # write a rationale before scoring; None: the constitution's setting
    few_shot: bool = True  # put the constitution's label examples first
    max_new_tokens: int = 128  # rationale length limit (chain of thought)
    min_margin: float = 0.05  # a label with p_chosen below 0.5 + this is flagged low_confidence
    score_temperature: float = 1.0  # mode score: P(first) = sigmoid((s_first - s_second) / this), in score points
    drop_flagged: bool = False  # write low-confidence and inconsistent pairs to dropped.jsonl, not preferences.jsonl
    batch_size: int = 8  # pairs per forward pass (each is 2 orders x k principles sequences); written per batch
    device: str | None = None  # cpu, cuda, ...; default: a GPU if there is one
    engine: str = "rlaif"  # rlaif (the labeler here), vllm (vLLM in this process, on a GPU: every mode) or openai (an
    #   OpenAI-compatible server that sends top_logprobs, rlaif.label_remote: `labeler` is then the name it serves;
    #   mode compare without chain of thought)
    base_url: list[str] = field(default_factory=list)  # openai: the servers' API addresses (http://HOST:PORT/v1)
    api_key_env: str = "OPENAI_API_KEY"  # openai: the environment variable holding the API key (never saved)
    concurrency: int = 8  # openai: requests in flight at once, over all servers
    request_timeout: float = 600.0  # openai: seconds to wait for a reply (asked twice before the stage stops)

    # chunk_size: saved by earlier versions; it never changed a label
    VOLATILE = ("batch_size", "chunk_size", "device", "base_url", "api_key_env", "concurrency", "request_timeout")
    # Settings added after the first runs, each with the value that reproduces them (rlaif.records.added_default)
    ADDED: ClassVar[dict] = {"mode": "compare", "score_temperature": 1.0, "engine": "rlaif"}

    def __post_init__(self):
        from rlaif import engines

        check_numbers(self, "label", at_least_one=["max_new_tokens", "batch_size"], within={"min_margin": (0.0, 0.5)},
                      positive=["score_temperature"])
        if self.mode not in MODES:
            raise DataError("label settings", None, "mode", f"expected one of {', '.join(MODES)}, not {self.mode!r}")
        engines.check_settings(self, "label", local=["device"], batches=True)
        if self.engine == "openai" and (self.mode != "compare" or self.chain_of_thought):
            raise ConfigError(f"engine: engine openai labels in mode compare without chain of thought only (not "
                              f"{'chain of thought' if self.mode == 'compare' else 'mode ' + self.mode}): a chat API "
                              "scores no text its model did not write (rlaif.label_remote); use engine rlaif or vllm",
                              ["engine", "mode" if self.mode != "compare" else "chain_of_thought"])
        if self.mode != "compare":
            unused_settings(self, ["both_orders", "chain_of_thought", "few_shot", "max_new_tokens"],
                            f"used only with mode: compare; mode {self.mode} asks the labeler no question", ("mode",))
        if self.mode == "score":
            unused_settings(self, ["principles_per_comparison"], "not used with mode: score, which rates each reply "
                            "against every principle of the constitution at once", ("mode",))
        else:
            unused_settings(self, ["score_temperature"], "used only with mode: score", ("mode",))
        k = self.principles_per_comparison
        if isinstance(k, str) and k != "all":  # `-k 4` arrives as text
            try:
                k = self.principles_per_comparison = int(k)
            except ValueError:
                pass
        if not (k is None or k == "all" or (type(k) is int and k >= 1)):
            raise DataError("label settings", None, "principles_per_comparison", f"expected a whole number >= 1 or "
                            f"all, not {k!r}; leave it unset to use the constitution's "
                            "(label.principles_per_comparison)")
        if self.chain_of_thought is False:
            unused_settings(self, ["max_new_tokens"], "the rationale's length limit, used only with chain of thought")


@dataclass(frozen=True)
class Pair:
    id: str
    prompt: list[Message]
    first: str
    second: str


@dataclass
class Judgement:
    """One principle's view of a pair: P(first is better) with first shown as (A), and with first shown as (B)."""

    principle: str
    shown_first: float | None = None
    shown_second: float | None = None
    rationales: list[str] = field(default_factory=list)

    @property
    def p(self) -> float:
        return mean([p for p in (self.shown_first, self.shown_second) if p is not None])


# --------------------------------------------------------------------------------------------------------------------
# Pure pieces: option probabilities, orders, ensembles, the preference row


def option_probability(logp_a: float, logp_b: float) -> float:
    """P(A) normalised over the two options: exp(a) / (exp(a) + exp(b)), computed stably."""
    d = logp_b - logp_a
    return 1.0 / (1.0 + math.exp(d)) if d < 0 else math.exp(-d) / (1.0 + math.exp(-d))


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def clamp(p: float, bounds: tuple[float, float]) -> float:
    return min(max(p, bounds[0]), bounds[1])


def consistent(shown_first: float | None, shown_second: float | None) -> bool:
    """Both orders give the same outcome: the same winner, or both a tie (a single order is consistent with
    itself)."""
    if shown_first is None or shown_second is None:
        return True
    return outcome(shown_first) == outcome(shown_second)


def to_preference(pair: Pair, judgements: list[Judgement], labeler: str, min_margin: float) -> PreferenceRow:
    """The pair as a preference row: chosen is the response the ensemble prefers, p_chosen >= 0.5."""
    p_first = mean([j.p for j in judgements])
    first_wins = p_first >= 0.5
    oriented = (lambda p: p) if first_wins else (lambda p: 1.0 - p)  # P(first) -> P(chosen)
    orders = {}
    for name, attr in (("shown_first", "shown_first"), ("shown_second", "shown_second")):
        values = [getattr(j, attr) for j in judgements if getattr(j, attr) is not None]
        if values:
            orders[name] = mean(values)
    # p_orders are named after where *chosen* was shown: first's "shown_first" is chosen's when first wins.
    p_orders = {("chosen_first" if (k == "shown_first") == first_wins else "chosen_second"): oriented(v)
                for k, v in orders.items()}
    agree = consistent(orders.get("shown_first"), orders.get("shown_second"))
    p_chosen = oriented(p_first)
    flags = ([] if agree else ["inconsistent"]) + (["low_confidence"] if p_chosen < 0.5 + min_margin else [])
    chosen, rejected = (pair.first, pair.second) if first_wins else (pair.second, pair.first)
    row: PreferenceRow = {
        "id": pair.id, "prompt": pair.prompt,
        "chosen": [{"role": "assistant", "content": chosen}], "rejected": [{"role": "assistant", "content": rejected}],
        "p_chosen": p_chosen, "source": "ai", "labeler": labeler,
        "principles": [j.principle for j in judgements],
        "principle_p": {j.principle: oriented(j.p) for j in judgements},
        "p_orders": p_orders, "consistent": agree, "flags": flags, "mode": "compare",
    }
    if any(j.rationales for j in judgements):
        row["rationales"] = {j.principle: j.rationales for j in judgements}  # type: ignore[typeddict-unknown-key]
    return row


def resolved_settings(config: LabelConfig, constitution: Constitution
                      ) -> tuple[int | str | None, bool | None, bool | None]:
    """(principles per pair, both orders, chain of thought): the config's, or the constitution's label settings
    where the config leaves them unset; None where the mode does not use them (orders and chain of thought outside
    mode compare, principles per pair in mode score). A setting that cannot work under them is an error: more
    principles per pair than the constitution has (DataError naming the field), or max_new_tokens set without chain
    of thought (ConfigError)."""
    settings = constitution.label
    k = settings.principles_per_comparison if config.principles_per_comparison is None \
        else config.principles_per_comparison
    if config.mode == "score":
        k = None
    elif k != "all" and k > len(constitution.principles):
        raise DataError("label settings", None, "principles_per_comparison", f"asks for {k} principles per pair but "
                        f"the constitution {constitution.name} has {len(constitution.principles)}; use all")
    if config.mode != "compare":
        return k, None, None
    both = settings.both_orders if config.both_orders is None else config.both_orders
    cot = settings.chain_of_thought if config.chain_of_thought is None else config.chain_of_thought
    if not cot:
        unused_settings(config, ["max_new_tokens"], f"the rationale's length limit, used only with chain of thought, "
                                                    f"which the constitution {constitution.name} leaves off")
    elif config.engine == "openai":
        raise ConfigError(f"chain_of_thought: the constitution {constitution.name} labels with chain of thought, "
                          "which engine openai cannot (a chat API scores no text its model did not write); turn it "
                          "off (--no-cot) or use engine rlaif or vllm", ["chain_of_thought", "engine"])
    return k, both, cot


def sample_label_principles(constitution: Constitution, k: int | str, pair_id: str) -> list[Principle]:
    """k principles for one pair (all of them for "all"), drawn by weight without replacement, keyed by the
    constitution's label seed, the pair id and each principle's id (rlaif.critique.draw_key): a pair gets the same
    principles in every run, and editing, adding or removing other principles does not change them unless an
    added or re-weighted principle now outranks one of them."""
    from rlaif.critique import sample_principles

    if k == "all":
        return list(constitution.principles)
    return sample_principles(constitution.principles, min(int(k), len(constitution.principles)),
                             constitution.label.seed, pair_id)


# --------------------------------------------------------------------------------------------------------------------
# The labeler


class Labeler:
    """Scores pairs under principles with a causal LM. `judge` is the whole model-facing surface."""

    def __init__(self, model, tokenizer, constitution: Constitution, few_shot: bool = True,
                 chain_of_thought: bool = False, max_new_tokens: int = 128, name: str = "labeler",
                 share_prefix: bool = True):
        self.model, self.tokenizer, self.constitution = model, tokenizer, constitution
        self.share_prefix = share_prefix  # off: every prompt is computed whole (for comparisons)
        self.chain_of_thought, self.max_new_tokens, self.name = chain_of_thought, max_new_tokens, name
        self.special = tokenizer_specials(tokenizer)
        self.template = label_template(constitution, chain_of_thought)
        self.prefix = few_shot_block(constitution, chain_of_thought, self.special) if few_shot else []
        self._prefix_text, self._prefix_cache = "", None

    def message(self, prompt: list[Message], a: str, b: str, question: str) -> Message:
        return label_message(self.template, prompt, a, b, question, self.special)

    def fits(self, pair: Pair, principles: list[Principle]) -> bool:
        """Whether every prompt `pair` is judged with under `principles` (both orders, few-shot block and option
        included; in chain-of-thought mode with room for a rationale of max_new_tokens) fits in the labeler's
        context (`max_position_embeddings`)."""
        context = getattr(self.model.config, "max_position_embeddings", None)
        return context is None or max(self._lengths([(pair, principle, swapped) for principle in principles
                                                     for swapped in (False, True)])) <= context

    def _lengths(self, items: list[tuple[Pair, Principle, bool]]) -> list[int]:
        """Tokens of each item's longest sequence: the whole prompt and its option, and the rationale's budget."""
        option = answer("A", "" if self.chain_of_thought else None)
        texts = [self.tokenizer.apply_chat_template(self.prefix + m, tokenize=False, add_generation_prompt=True)
                 for m in self._messages(items)]
        rationale = self.max_new_tokens if self.chain_of_thought else 0
        return [len(self.tokenizer(text + option, add_special_tokens=False)["input_ids"]) + rationale
                for text in texts]

    def _messages(self, items: list[tuple[Pair, Principle, bool]]) -> list[list[Message]]:
        return [[self.message(pair.prompt, *((pair.second, pair.first) if swapped else (pair.first, pair.second)),
                              principle.comparison_question)] for pair, principle, swapped in items]

    def judge(self, items: list[tuple[Pair, Principle, bool]]) -> tuple[list[float], list[str]]:
        """P(first is better) for each (pair, principle, swapped) item: swapped shows `second` as (A). Returns the
        probabilities and, in chain-of-thought mode, the rationales ("" otherwise). All items are scored as one
        prefix tree (the caller bounds how many), so each pair's orders and principles share what they can.
        Raises ConfigError naming the pair when an item does not fit in the context (callers leave such pairs out
        with `fits` first)."""
        from rlaif.prefix_tree import tree_logprobs

        context = getattr(self.model.config, "max_position_embeddings", None)
        for (pair, _, _), n in zip(items, self._lengths(items) if context is not None else []):
            if n > context:
                raise ConfigError(f"pair {pair.id}: its labeling prompt needs {n} tokens, more than the labeler's "
                                  f"context of {context}; leave it out (Labeler.fits) or use a longer-context labeler")
        messages = self._messages(items)
        rationales = self._rationales(messages) if self.chain_of_thought else [""] * len(items)
        prefix_cache, texts = self._split(messages)
        sequences, n_scored = [], []
        for text, rationale in zip(texts, rationales):
            rationale = rationale if self.chain_of_thought else None
            a, b = (self.tokenizer(text + answer(option, rationale), add_special_tokens=False)["input_ids"]
                    for option in "AB")
            common = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            sequences += [a, b]
            n_scored += [len(a) - common, len(b) - common]
        logprobs = []
        trees = max(len(sequences), 1) if self.share_prefix else 2  # unshared: one prompt (its options) per forward
        for start in range(0, len(sequences), trees):
            logprobs += tree_logprobs(self.model, sequences[start : start + trees], n_scored[start : start + trees],
                                      prefix_cache=prefix_cache)
        probs = []
        for i, (_, _, swapped) in enumerate(items):
            p_a = option_probability(sum(logprobs[2 * i]), sum(logprobs[2 * i + 1]))
            probs.append(1.0 - p_a if swapped else p_a)
        return probs, rationales

    def _split(self, messages: list[list[Message]]):
        """The few-shot block's cache (computed once) and each prompt's own text after it, rendered for the
        assistant's turn. If the chat template renders the block differently inside a conversation, nothing is
        shared and each text is whole."""
        import torch

        full = [self.tokenizer.apply_chat_template(self.prefix + m, tokenize=False, add_generation_prompt=True)
                for m in messages]
        prefix_text = self.tokenizer.apply_chat_template(self.prefix, tokenize=False) if self.prefix else ""
        engine = hasattr(self.model, "sequence_logprobs")  # vLLM keeps its own prefix cache (rlaif.engines)
        if not prefix_text or not self.share_prefix or engine or not all(t.startswith(prefix_text) for t in full):
            return None, full
        if self._prefix_text != prefix_text:
            ids = self.tokenizer(prefix_text, add_special_tokens=False)["input_ids"]
            device = next(self.model.parameters()).device
            with torch.inference_mode():
                self._prefix_cache = forward_cached(self.model, input_ids=torch.tensor([ids], device=device))[1]
            self._prefix_text = prefix_text
        return self._prefix_cache, [t[len(prefix_text):] for t in full]

    def _rationales(self, messages: list[list[Message]]) -> list[str]:
        from rlaif.generate import GenerationConfig, generate

        config = GenerationConfig(max_new_tokens=self.max_new_tokens, temperature=0, batch_size=16)
        if hasattr(self.model, "complete"):  # vLLM (rlaif.engines.VLLMModel)
            replies = [reply for _, reply in sorted(self.model.complete(messages, config, self.prefix or None),
                                                    key=lambda done: done[0])]
        else:
            replies = generate(self.model, self.tokenizer, messages, config, prefix=self.prefix or None)
        # Whatever the rationale says after "The answer is" is cut: the options are scored in its place. Its own
        # "(A)" and "(B)" stay as written, as in the few-shot rationales.
        return [quote(re.split(r"the answer is", r.text, flags=re.IGNORECASE)[0].strip(), self.special, options=False)
                for r in replies]


def label_pairs(labeler: Labeler, pairs: list[Pair], principles: list[list[Principle]], both_orders: bool,
                clamp_to: tuple[float, float] | None = None) -> list[list[Judgement]]:
    """Judge every pair under its principles (and both orders); one batched labeler call."""
    items = [(pair, principle, swapped) for pair, chosen in zip(pairs, principles) for principle in chosen
             for swapped in ((False, True) if both_orders else (False,))]
    probs, rationales = labeler.judge(items) if items else ([], [])
    results: list[list[Judgement]] = []
    index = 0
    for chosen in principles:
        judgements = []
        for principle in chosen:
            judgement = Judgement(principle.id)
            for swapped in ((False, True) if both_orders else (False,)):
                p = clamp(probs[index], clamp_to) if clamp_to else probs[index]
                setattr(judgement, "shown_second" if swapped else "shown_first", p)
                if rationales[index]:
                    judgement.rationales.append(rationales[index])
                index += 1
            judgements.append(judgement)
        results.append(judgements)
    return results


# --------------------------------------------------------------------------------------------------------------------
# Reading pairs


def load_pairs(path: Path | str, tally: Tally | None = None, limit: int | None = None) -> list[Pair]:
    """Pairs to label: every pair of responses in candidates.jsonl rows (`responses`), or the chosen/rejected of
    preference rows (relabeling; prompt, chosen and rejected as text or chat messages). JSONL only: a CSV or TSV
    is a DataError saying so. A pair that says nothing (`records.reply_problem`: a blank response, or two
    responses equal after stripping) is never judged: it is left out and counted in `tally` under its reason, and
    so is a candidates row with fewer than two responses, which holds no pair (one read, left out as `one_response`
    or `no_responses`). `limit` stops after that many pairs read. Errors name the file, line and field."""
    from rlaif.loaders import CSV_SUFFIXES, as_prompt, response_text, unique_id

    path = Path(path)
    if path.suffix.lower() in CSV_SUFFIXES:
        raise DataError(path, None, None, "expected JSONL: candidates.jsonl rows (id, prompt, responses), as `rlaif "
                                          "sample` writes them, or preference rows (id, prompt, chosen, rejected); "
                                          "`rlaif rankings import FILE --out pairs.jsonl` turns a CSV of pairs into them")
    tally = tally if tally is not None else Tally("pairs")
    pairs: list[Pair] = []
    seen: dict[str, int] = {}

    def add(pair: Pair) -> None:
        tally.read += 1
        problem = reply_problem(pair.first, pair.second)
        if problem:
            tally.leave_out(problem)
        else:
            tally.used += 1
            pairs.append(pair)

    for line, row in iter_jsonl(path):
        if limit is not None and tally.read >= limit:
            break
        prompt = as_prompt(row.get("prompt"), path, line)
        if "id" not in row:
            raise DataError(path, line, "id", "missing")
        unique_id(seen, str(row["id"]), path, line)
        if "responses" in row:
            responses = row["responses"]
            if not isinstance(responses, list) or not all(isinstance(r, str) for r in responses):
                raise DataError(path, line, "responses", "expected a list of strings")
            if len(responses) < 2:  # nothing to compare: counted, so the row does not vanish from the totals
                tally.read += 1
                tally.leave_out("one_response" if responses else "no_responses")
            for i in range(len(responses)):
                for j in range(i + 1, len(responses)):
                    if limit is None or tally.read < limit:
                        add(Pair(f"{row['id']}-{i}-{j}", prompt, responses[i], responses[j]))
        elif "chosen" in row and "rejected" in row:
            texts = [response_text(row[name], path, line, name) for name in ("chosen", "rejected")]
            add(Pair(str(row["id"]), prompt, *texts))
        else:
            raise DataError(path, line, "responses", "expected `responses` (candidates) or `chosen` and `rejected`")
    return pairs


# --------------------------------------------------------------------------------------------------------------------
# The stage


def load_labeler(config: LabelConfig, constitution: Constitution, chain_of_thought: bool | None = None
                 ) -> Labeler | LikelihoodContrast | ScoreDifference:
    """The labeler of `config.mode`, its model loaded: a Labeler (compare), a LikelihoodContrast (contrast) or a
    ScoreDifference over a rlaif.score.DirectScore (score)."""
    from rlaif.label_modes import LikelihoodContrast, ScoreDifference
    from rlaif.models import load_model

    if config.engine == "openai":
        from rlaif.engines import open_engine
        from rlaif.label_remote import RemoteLabeler

        return RemoteLabeler(open_engine(config, config.labeler), constitution, config.few_shot, config.labeler)
    if config.engine == "vllm":
        from rlaif.engines import VLLMModel

        model = VLLMModel(config.labeler)
        tokenizer = model.tokenizer
    else:
        model, tokenizer = load_model(config.labeler, device=config.device)
    if config.mode == "contrast":
        return LikelihoodContrast(model, tokenizer, constitution, name=config.labeler)
    if config.mode == "score":
        from rlaif.score import DirectScore

        scorer = DirectScore(model, tokenizer, constitution, batch_size=2 * config.batch_size)
        return ScoreDifference(scorer, name=config.labeler)
    return Labeler(model, tokenizer, constitution, few_shot=config.few_shot, chain_of_thought=chain_of_thought,
                   max_new_tokens=config.max_new_tokens, name=config.labeler)


def run(config: LabelConfig, labeler: Labeler | LikelihoodContrast | ScoreDifference | None = None,
        progress: bool = False) -> dict:
    """Label (or resume labeling) every pair in `config.mode` (`labeler`: the mode's, see `load_labeler`; loaded
    when not given); returns the manifest's counts (with the tally of pairs read, used and left out, see
    `load_pairs`, and `too_long`: no room in the labeler's context) and `summary`, the tally's line. A file in which
    no pair is left to judge is a DataError before the labeler is loaded; one in which every pair is too long, a
    DataError before the stage directory is made."""
    from rlaif.generate import progress_bar

    constitution = load_constitution(config.constitution)
    settings = constitution.label
    k, both, cot = resolved_settings(config, constitution)
    tally = Tally("pairs")
    pairs = load_pairs(config.candidates, tally)
    tally.require_some(config.candidates, "a pair needs two different, non-empty responses")
    labeler = labeler if labeler is not None else load_labeler(config, constitution, cot)
    drawn = {pair.id: sample_label_principles(constitution, k, pair.id) if k is not None else [] for pair in pairs}
    fitting = [pair for pair in pairs if labeler.fits(pair, drawn[pair.id])]
    tally.used -= len(pairs) - len(fitting)
    tally.leave_out("too_long", len(pairs) - len(fitting))
    tally.require_some(config.candidates, {
        "compare": "no labeling prompt fits in the labeler's context; use one with a longer context, fewer "
                   "principles per pair, or turn few_shot off",
        "contrast": "no reply fits in the labeler's context with its conversation and a principle's system prompt; "
                    "use a labeler with a longer context",
        "score": "no reply's scoring prompt (the whole constitution's rubric, the conversation, the reply) fits in "
                 "the labeler's context; use one with a longer context, or a constitution with fewer principles",
    }[config.mode])
    stage_dir = Path(config.out) / "label"
    resolved = {**asdict(config), "principles_per_comparison": k, "both_orders": both, "chain_of_thought": cot,
                "clamp": list(settings.clamp), "constitution_digest": constitution.digest()}
    manifest = open_stage(stage_dir, "label", resolved, volatile=LabelConfig.VOLATILE, added=LabelConfig.ADDED)
    manifest.status = "running"
    manifest.add_input(config.candidates)
    started = time.time()
    kept, dropped_path = stage_dir / "preferences.jsonl", stage_dir / "dropped.jsonl"
    skipped = getattr(labeler, "skipped", {})  # pair id -> why a server's labeler left it out (this run's)
    skipped.clear()
    getattr(labeler, "unread", []).clear()
    with JsonlWriter(kept) as out, JsonlWriter(dropped_path) as dropped:
        done = sum(p.id in out.done or p.id in dropped.done for p in fitting)
        manifest.counts.update(pairs=len(fitting), resumed=done)
        with progress_bar(progress, len(fitting), "labeling", completed=done) as bar:
            # Batches by position in the file, each written as it finishes. A batch a kill left half written is
            # judged whole again (the same batch as before, so the same numbers) and only its missing rows written.
            for start in range(0, len(fitting), config.batch_size):
                batch = fitting[start : start + config.batch_size]
                todo = [p for p in batch if p.id not in out.done and p.id not in dropped.done]
                if not todo:
                    continue
                # A server answers each request alone: only the pairs not yet written are asked.
                asked = todo if hasattr(labeler, "engine") else batch
                for pair, row in zip(asked, label_batch(labeler, asked, drawn, both, settings.clamp if cot else None,
                                                        config)):
                    if pair.id in skipped:  # a server's: no reading (rlaif.label_remote); asked again on a rerun
                        continue
                    if pair in todo:  # not written before the kill
                        (dropped if config.drop_flagged and row["flags"] else out).write(row)
                bar(len(todo))
    for reason, n in Counter(skipped.values()).items():
        tally.used -= n
        tally.leave_out(reason, n)
    if skipped:
        tally.require_some(config.candidates, f"the server gave no pair a reading: {labeler.why_unread()}")
    if hasattr(labeler, "engine"):
        from rlaif.engines import save_counts

        save_counts(manifest, labeler.engine)
    counts = _count(kept, dropped_path)
    manifest.counts.update(counts)
    manifest.counts.update(tally.counts())
    manifest.seconds += time.time() - started
    manifest.outputs = ["preferences.jsonl"] + (["dropped.jsonl"] if counts["dropped"] else [])
    manifest.status = "complete"
    manifest.save(stage_dir)
    return {**manifest.counts, "summary": tally.summary()}


def label_batch(labeler: Labeler | LikelihoodContrast | ScoreDifference, batch: list[Pair],
                drawn: dict[str, list[Principle]], both_orders: bool | None, clamp_to: tuple[float, float] | None,
                config: LabelConfig) -> list[PreferenceRow]:
    """The preference rows of a batch of pairs, in `config.mode` (`labeler` being that mode's, see `load_labeler`),
    each pair under its principles `drawn[pair.id]` (none in mode score), every pair's replies fitting in the
    labeler's context."""
    from rlaif.label_modes import contrast_preference, score_preference

    principles = [drawn[pair.id] for pair in batch]
    if config.mode == "contrast":
        return [contrast_preference(pair, contrasts, labeler.name, config.min_margin)
                for pair, contrasts in zip(batch, labeler.contrasts(batch, principles))]
    if config.mode == "score":
        return [score_preference(pair, *scores, config.score_temperature, labeler.name, config.min_margin)
                for pair, scores in zip(batch, labeler.scores(batch))]
    return [to_preference(pair, judgements, labeler.name, config.min_margin)
            for pair, judgements in zip(batch, label_pairs(labeler, batch, principles, both_orders, clamp_to))]


def _count(kept: Path, dropped: Path) -> dict[str, int]:
    counts = {"labeled": 0, "dropped": 0, "inconsistent": 0, "low_confidence": 0}
    for path, name in ((kept, "labeled"), (dropped, "dropped")):
        for row in read_jsonl(path) if path.is_file() else []:
            counts[name] += 1
            for flag in row.get("flags", []):
                counts[flag] = counts.get(flag, 0) + 1
    return counts
