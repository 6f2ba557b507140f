"""The labeler on a server: mode compare's labels over HTTP (`rlaif label --engine openai`).

    rlaif label --candidates runs/x/sample/candidates.jsonl --out runs/x \\
        --engine openai --base-url http://127.0.0.1:8080/v1 --labeler NAME

The server is asked what rlaif's own labeler is asked (rlaif.label): the constitution's few-shot block, then the
labeling question about the pair, as chat messages that the server renders with its model's chat template. It
answers at temperature 0 with the log-probabilities of its likeliest tokens at each of its first three tokens
(OpenAI's `logprobs` and `top_logprobs: 20`). rlaif's labeler reads P("(A") against P("(B") right after the prompt
(Bai et al. 2022, section 4.1); here the same two numbers are read from the first place where the text written so
far is a common beginning of both options and a listed token completes one of them (`option_logprobs`). A labeler
that answers in its examples' form writes "(" first, and the next token's list holds "A" and "B": the reading is
then the local engine's, up to the server's numerics (a quantized GGUF under llama.cpp moves it by a few points,
tests/test_label_remote.py measures it). A reply that does not start like an option has no reading: the pair is
left out and counted (`no_option`), as is a pair whose prompt the server says is too long for its context
(`too_long`). An option missing from the 20 listed tokens is given the lowest listed log-probability, a bound
above its own, so that label is less extreme than the exact one, never more.

What a chat API cannot do: score text it did not write. So chain of thought (options scored after the labeler's
own rationale), mode contrast (a reply's likelihood) and mode score need engine rlaif; asking for them with engine
openai is a ConfigError. The server's special tokens are not known here, so untrusted text has those of the common
chat templates broken up (`SERVER_SPECIALS`; rlaif.label.quote).
"""

from __future__ import annotations

import math

from rlaif.constitution import Constitution, Principle
from rlaif.label import Labeler, Pair, answer, few_shot_block, label_template, option_probability

# Chat-template markers of the common model families (ChatML, Llama 3, Phi, Gemma, Mistral/Llama 2, DeepSeek),
# broken up in untrusted text when the server's own tokenizer is not at hand.
SERVER_SPECIALS = sorted({
    "<|im_start|>", "<|im_end|>", "<|im_sep|>", "<|endoftext|>", "<|begin_of_text|>", "<|end_of_text|>",
    "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|eom_id|>", "<|python_tag|>", "<|system|>",
    "<|user|>", "<|assistant|>", "<|end|>", "<start_of_turn>", "<end_of_turn>", "<s>", "</s>", "[INST]", "[/INST]",
    "<<SYS>>", "<</SYS>>", "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>",
})
TOP_LOGPROBS = 20  # OpenAI's limit and vLLM's default max_logprobs


def option_logprobs(steps: list[tuple[str, dict[str, float]]], options: tuple[str, ...] = ("(A", "(B")
                    ) -> dict[str, float] | None:
    """Each option's log-probability as the start of a reply, from a greedy reply's top log-probabilities.

    `steps`: per token the server wrote, (its text, {token text: log-probability} of the likeliest tokens there).
    At the first step where the text written before it is a common beginning of every option and a listed token
    completes at least one (the text so far plus the token starts with it), an option's log-probability is the
    log of the summed probabilities of the listed tokens that complete it. An option no listed token completes
    gets the lowest listed log-probability (a bound above its own). None when the reply leaves the options'
    common beginning before any listed token completes one (the model wrote something else)."""
    text = ""
    for written, listed in steps:
        found = {o: [lp for token, lp in listed.items() if (text + token).startswith(o)] for o in options}
        if any(found.values()):
            floor = min(listed.values())
            return {o: _logsumexp(lps) if lps else floor for o, lps in found.items()}
        text += written
        if not all(o.startswith(text) for o in options):
            return None
    return None


def _logsumexp(values: list[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


class RemoteLabeler(Labeler):
    """rlaif.label.Labeler's `judge` and `fits` over an OpenAI-compatible server (an rlaif.engines.OpenAIEngine).
    `skipped` names each pair left out so far and why (too_long, no_option)."""

    def __init__(self, engine, constitution: Constitution, few_shot: bool = True, name: str = "labeler"):
        self.engine, self.constitution, self.name = engine, constitution, name
        self.chain_of_thought, self.share_prefix = False, True
        self.special = SERVER_SPECIALS
        self.template = label_template(constitution, False)
        self.prefix = few_shot_block(constitution, False, self.special) if few_shot else []
        self.options = (answer("A"), answer("B"))
        self.skipped: dict[str, str] = {}

    def fits(self, pair: Pair, principles: list[Principle]) -> bool:
        """True: the server says which prompts are too long for it, when asked (`judge`)."""
        return True

    def judge(self, items: list[tuple[Pair, Principle, bool]]) -> tuple[list[float], list[str]]:
        """P(first is better) per (pair, principle, swapped) item, as rlaif.label.Labeler.judge; NaN for an item
        with no reading, its pair then named in `skipped`. Raises ConfigError when the server cannot be used
        (rlaif.engines.OpenAIEngine)."""
        probs = [math.nan] * len(items)
        for i, steps in self.engine.next_tokens(self._messages(items), prefix=self.prefix, top=TOP_LOGPROBS):
            pair, _, swapped = items[i]
            reading = option_logprobs(steps, self.options) if steps is not None else None
            if reading is None:
                self.skipped.setdefault(pair.id, "too_long" if steps is None else "no_option")
                continue
            p_a = option_probability(*(reading[o] for o in self.options))
            probs[i] = 1.0 - p_a if swapped else p_a
        return probs, [""] * len(items)
