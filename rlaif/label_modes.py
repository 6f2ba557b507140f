"""The order-free labeling modes of `rlaif label` (rlaif.label), contrast and score: they ask the labeler no question and
show no reply beside the other, so no order enters their labels (rows say `order_free`; swapping the replies gives
exactly 1 - p). Mode compare, the labeler's (A)-or-(B) question, is in rlaif.label.

    rlaif label --mode contrast --candidates runs/x/sample/candidates.jsonl --out runs/x
    rlaif label --mode score --candidates runs/x/sample/candidates.jsonl --out runs/x

- contrast: each reply's likelihood contrast under a principle, c(y) = log p(y | x, follows) - log p(y | x,
  violates), the reply's summed token log-probabilities under the principle's two system prompts (its `follows` and
  `violates` texts, or the constitution's templates filled with its critique request), and P(first is better) =
  sigmoid(c(first) - c(second)): DPO's implicit reward with the two prompted labelers as policy and reference
  (Rafailov et al. 2023, eq. 5), a likelihood reading of RLCD's prompts (Yang et al. 2023, arXiv:2307.12950). The
  principles are drawn as in compare and their probabilities averaged; the row keeps each principle's contrasts.
- score: each reply's expected 1-10 score under the whole constitution (rlaif.score.DirectScore), and P(first is
  better) = sigmoid((s(first) - s(second)) / score_temperature), T = 1 score point by default; the row keeps both
  scores.

The labeler report card (rlaif.report_card) reads both as modes of its own: `contrast_probabilities` and
`score_difference_probabilities`.
"""

from __future__ import annotations

from dataclasses import dataclass

from rlaif.constitution import Constitution, Principle
from rlaif.label import Pair, mean, option_probability
from rlaif.label_prompt import defuse, tokenizer_specials, with_system
from rlaif.records import ConfigError, Message, PreferenceRow

# --------------------------------------------------------------------------------------------------------------------
# Pure pieces: the preference probability, the likelihood contrast, the rows


def preference_probability(first: float, second: float, temperature: float = 1.0) -> float:
    """P(first is better) under the Bradley-Terry model, the preference model of reward modeling and of DPO
    (Rafailov et al. 2023, "Direct Preference Optimization", eq. 1): sigmoid((first - second) / temperature),
    computed stably. `first`, `second`: the two replies' scores on one scale; `temperature` (> 0): the score
    difference that moves the log-odds by 1."""
    return option_probability(first / temperature, second / temperature)  # sigmoid(a - b) = e^a / (e^a + e^b)


def likelihood_contrast(follows: list[float], violates: list[float]) -> float:
    """c(y) = sum_t log p(y_t | x, s+, y<t) - sum_t log p(y_t | x, s-, y<t), from the per-token log-probabilities of
    one reply's T tokens y under the system prompt s+ that follows a principle (`follows`, T floats) and the one
    s- that breaks it (`violates`, the same T tokens).

    It is DPO's implicit reward (Rafailov et al. 2023, eq. 5: r(x, y) = beta log pi_r(y|x) / pi_ref(y|x) + beta log
    Z(x)) with beta = 1, the labeler prompted with s+ as pi_r and with s- as pi_ref. Z(x) is the same for both
    replies to a prompt, so it cancels in the preference probability, sigmoid(c(first) - c(second))
    (`preference_probability`): a likelihood reading of RLCD's positive and negative prompts (Yang et al. 2023,
    "RLCD", arXiv:2307.12950), which RLCD itself uses to sample the two replies, not to score them."""
    if len(follows) != len(violates):
        raise ValueError(f"the same tokens are scored under both prompts: got {len(follows)} and {len(violates)}")
    return sum(follows) - sum(violates)


@dataclass(frozen=True)
class Contrast:
    """One principle's likelihood contrast of a pair: c(first) and c(second), in nats (`likelihood_contrast`)."""

    principle: str
    first: float
    second: float

    @property
    def p(self) -> float:
        """P(first is better) = sigmoid(c(first) - c(second)); showing the replies in the other order gives 1 - p."""
        return preference_probability(self.first, self.second)


def _order_free_row(pair: Pair, p_first: float, labeler: str, min_margin: float, mode: str) -> PreferenceRow:
    """The preference row of a label that no order of the replies entered: chosen is the reply `p_first` favours
    (the first on a tie), consistent by construction, without `p_orders`, flagged low_confidence like any label."""
    first_wins = p_first >= 0.5
    p_chosen = p_first if first_wins else 1.0 - p_first
    chosen, rejected = (pair.first, pair.second) if first_wins else (pair.second, pair.first)
    return {"id": pair.id, "prompt": pair.prompt, "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}], "p_chosen": p_chosen, "source": "ai",
            "labeler": labeler, "consistent": True, "order_free": True,
            "flags": ["low_confidence"] if p_chosen < 0.5 + min_margin else [], "mode": mode}


def contrast_preference(pair: Pair, contrasts: list[Contrast], labeler: str, min_margin: float) -> PreferenceRow:
    """The pair as a row of mode contrast: p_chosen the mean over its principles of sigmoid(c(chosen) -
    c(rejected)), `principle_p` each principle's, and the evidence `contrasts` {principle: {chosen: c, rejected:
    c}} (nats)."""
    p_first = mean([c.p for c in contrasts])
    row, first_wins = _order_free_row(pair, p_first, labeler, min_margin, "contrast"), p_first >= 0.5
    row["principles"] = [c.principle for c in contrasts]
    row["principle_p"] = {c.principle: c.p if first_wins else 1.0 - c.p for c in contrasts}
    row["contrasts"] = {c.principle: {"chosen": c.first if first_wins else c.second,  # type: ignore[typeddict-unknown-key]
                                      "rejected": c.second if first_wins else c.first} for c in contrasts}
    return row


def score_preference(pair: Pair, first: float, second: float, temperature: float, labeler: str,
                     min_margin: float) -> PreferenceRow:
    """The pair as a row of mode score: p_chosen = sigmoid((s_chosen - s_rejected) / temperature) from the two
    replies' expected 1-10 scores (rlaif.score.DirectScore), kept as the evidence `scores` {chosen, rejected}.

    The temperature is in score points. With LabelConfig's default, 1, a point of difference is odds of e : 1 (P =
    0.73) and three points P = 0.95: the expected scores of a small labeler lie close together, so its labels stay
    near 0.5, as its uncertainty warrants, while a scorer that tells replies apart by several points gives labels
    near 1. A smaller temperature sharpens every label."""
    p_first = preference_probability(first, second, temperature)
    row, first_wins = _order_free_row(pair, p_first, labeler, min_margin, "score"), p_first >= 0.5
    row["scores"] = {"chosen": first if first_wins else second,  # type: ignore[typeddict-unknown-key]
                     "rejected": second if first_wins else first}
    return row


# --------------------------------------------------------------------------------------------------------------------
# The labelers


class LikelihoodContrast:
    """The labeler read as a likelihood contrast (mode contrast). For a reply y to the conversation x and a
    principle with follows and violates system prompts s+ and s- (Constitution.contrast_prompts), c(y) = log p(y |
    x, s+) - log p(y | x, s-) (`likelihood_contrast`), and P(first is better) = sigmoid(c(first) - c(second)). Each
    reply is scored alone, never beside the other, so no order enters the label: swapping the replies gives 1 - p.

    y is scored as TRL's DPO trainer tokenizes a completion (rlaif.models.completion_start): the chat template's
    tokens after the conversation's generation prompt, its end-of-turn tokens included. The conversation and the
    reply are untrusted text: their special tokens are broken up (`defuse`), so a reply cannot close its turn and
    write a system prompt of its own. A pair's 4 k sequences (k principles, two replies, two prompts) share their
    beginnings and are scored as one prefix tree with the rest of the batch (rlaif.prefix_tree.tree_logprobs)."""

    def __init__(self, model, tokenizer, constitution: Constitution, name: str = "labeler"):
        self.model, self.tokenizer, self.constitution, self.name = model, tokenizer, constitution, name
        self.special = tokenizer_specials(tokenizer)

    def _sequences(self, pair: Pair, principles: list[Principle]) -> list[tuple[list[int], int]]:
        """(token ids, how many of the last are the reply's) of each reply under each principle's two prompts, in
        the order principle, reply (first, second), prompt (follows, violates)."""
        from jinja2 import TemplateError

        from rlaif.models import chat_ids, completion_start

        prompt: list[Message] = [{"role": m["role"], "content": defuse(m["content"], self.special)}
                                 for m in pair.prompt]
        replies = [{"role": "assistant", "content": defuse(reply, self.special)} for reply in (pair.first, pair.second)]
        sequences = []
        for principle in principles:
            systems = [with_system(prompt, system) for system in self.constitution.contrast_prompts(principle)]
            try:
                heads = [chat_ids(self.tokenizer, messages, add_generation_prompt=True) for messages in systems]
                for reply in replies:
                    for head, messages in zip(heads, systems):
                        ids = chat_ids(self.tokenizer, messages + [reply])
                        sequences.append((ids, len(ids) - max(completion_start(head, ids), 1)))
            except TemplateError as e:  # e.g. a chat template that refuses a system turn
                raise ConfigError(f"labeler: its chat template cannot render a conversation under a system prompt "
                                  f"({e}); mode contrast needs one that can, or use mode compare") from None
        return sequences

    def fits(self, pair: Pair, principles: list[Principle]) -> bool:
        """Whether every sequence `pair` is scored in under `principles` fits in the labeler's context
        (`max_position_embeddings`)."""
        context = getattr(self.model.config, "max_position_embeddings", None)
        return context is None or max(len(ids) for ids, _ in self._sequences(pair, principles)) <= context

    def contrasts(self, pairs: list[Pair], principles: list[list[Principle]]) -> list[list[Contrast]]:
        """Per pair, one Contrast per principle of `principles[i]`, in their order. Raises ConfigError naming the
        pair when one of its sequences does not fit in the context (callers leave such pairs out with `fits`)."""
        from rlaif.prefix_tree import tree_logprobs

        context = getattr(self.model.config, "max_position_embeddings", None)
        sequences, n_scored = [], []
        for pair, chosen in zip(pairs, principles):
            items = self._sequences(pair, chosen)
            longest = max(len(ids) for ids, _ in items)
            if context is not None and longest > context:
                raise ConfigError(f"pair {pair.id}: a reply and its conversation need {longest} tokens, more than the "
                                  f"labeler's context of {context}; leave it out (LikelihoodContrast.fits) or use a "
                                  "longer-context labeler")
            sequences += [ids for ids, _ in items]
            n_scored += [n for _, n in items]
        logprobs = iter(tree_logprobs(self.model, sequences, n_scored))
        results = []
        for chosen in principles:
            contrasts = []
            for principle in chosen:
                first = likelihood_contrast(next(logprobs), next(logprobs))  # follows, then violates
                second = likelihood_contrast(next(logprobs), next(logprobs))
                contrasts.append(Contrast(principle.id, first, second))
            results.append(contrasts)
        return results


class ScoreDifference:
    """The direct scorer read as a preference (mode score): each reply's expected 1-10 score under the constitution's
    rubric (rlaif.score.DirectScore; Lee et al. 2023, "RLAIF vs. RLHF", section 3.2), and P(first is better) =
    sigmoid((s(first) - s(second)) / T) (`score_preference`, with T = LabelConfig.score_temperature). Each reply is
    scored alone, so no order enters the label."""

    def __init__(self, scorer, name: str = "labeler"):
        self.scorer, self.name = scorer, name

    def fits(self, pair: Pair, principles: list[Principle] = ()) -> bool:
        """Whether both replies' scoring prompts fit in the labeler's context (`principles` is not used: the rubric
        is every principle of the constitution)."""
        return all(self.scorer.fits(pair.prompt, reply) for reply in (pair.first, pair.second))

    def scores(self, pairs: list[Pair]) -> list[tuple[float, float] | None]:
        """(s(first), s(second)) per pair, the expected scores in [1, 10]; None for a pair a reply of which does not
        fit in the labeler's context."""
        results = self.scorer.scores([pair.prompt for pair in pairs for _ in range(2)],
                                     [reply for pair in pairs for reply in (pair.first, pair.second)])
        return [None if a is None or b is None else (a[0], b[0]) for a, b in zip(results[::2], results[1::2])]


def contrast_probabilities(model, tokenizer, constitution: Constitution, pairs: list[Pair],
                           principles: list[list[Principle]], batch_size: int = 8) -> list[float | None]:
    """P(first is better) per pair by likelihood contrast (`LikelihoodContrast`), the mean over the pair's
    principles `principles[i]`; None for a pair whose sequences do not fit in the model's context. `batch_size`
    pairs per prefix tree. For the labeler report card, `first` being the reply people chose."""
    contrast = LikelihoodContrast(model, tokenizer, constitution)
    probabilities: list[float | None] = [None] * len(pairs)
    fitting = [i for i, (pair, chosen) in enumerate(zip(pairs, principles)) if contrast.fits(pair, chosen)]
    for start in range(0, len(fitting), batch_size):
        batch = fitting[start : start + batch_size]
        for i, contrasts in zip(batch, contrast.contrasts([pairs[i] for i in batch], [principles[i] for i in batch])):
            probabilities[i] = mean([c.p for c in contrasts])
    return probabilities


def score_difference_probabilities(scorer, pairs: list[Pair], temperature: float = 1.0) -> list[float | None]:
    """P(first is better) per pair from the difference of the replies' expected scores under `scorer` (a
    rlaif.score.DirectScore, which batches by its own batch_size): sigmoid((s(first) - s(second)) / temperature)
    (`ScoreDifference`); None for a pair a reply of which does not fit in the scorer's context. For the labeler
    report card, `first` being the reply people chose."""
    return [None if s is None else preference_probability(*s, temperature) for s in ScoreDifference(scorer).scores(pairs)]
