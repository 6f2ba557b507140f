"""The labeler on a server: mode compare's labels over HTTP (`rlaif label --engine openai`).

    rlaif label --candidates runs/x/sample/candidates.jsonl --out runs/x \\
        --engine openai --base-url http://127.0.0.1:8080/v1 --labeler NAME

The server is asked what rlaif's own labeler is asked (rlaif.label): the constitution's few-shot block, then the
labeling question about the pair, as chat messages that the server renders with its model's chat template. It
answers at temperature 0 with the log-probabilities of its likeliest tokens at each of its first three tokens
(OpenAI's `logprobs` and `top_logprobs: 20`). rlaif's labeler reads P("(A") against P("(B") right after the prompt
(Bai et al. 2022, section 4.1); here the same two are summed along the reply the server wrote (`option_logprobs`).
A labeler that answers in its examples' form writes "(" first, and the next token's list holds "A" and "B": the
reading is then the local engine's, up to the server's numerics (a quantized GGUF under llama.cpp moves it by a few
points, tests/test_label_remote.py measures it). A reply that does not start like an option has no reading: the
pair is left out and counted (`no_option`; the error quotes how such replies began), as is a pair whose prompt the
server says is too long for its context (`too_long`). An option missing from the listed tokens is given the lowest
listed log-probability, a bound above its own, so that label is less extreme than the exact one, never more.

What a chat API cannot do: score text it did not write. So chain of thought (options scored after the labeler's
own rationale), mode contrast (a reply's likelihood) and mode score need engine rlaif or vllm; asking for them
with engine openai is a ConfigError. The server's special tokens are not known here, so untrusted text has the
markers of the common chat templates broken up (`server_specials`; rlaif.label_prompt.quote).
"""

from __future__ import annotations

import math
import re

from rlaif.constitution import Constitution, Principle
from rlaif.label import Labeler, Pair, option_probability
from rlaif.label_prompt import answer, few_shot_block, label_message, label_template

# Chat-template markers of the common model families, broken up in untrusted text when the server's own tokenizer
# is not at hand: these, and whatever `MARKERS` finds (rlaif.label_prompt.quote, `server_specials`).
SERVER_SPECIALS = sorted({
    "<s>", "</s>", "<bos>", "<eos>", "<pad>", "<unk>", "<start_of_turn>", "<end_of_turn>", "<think>", "</think>",
    "[INST]", "[/INST]", "<<SYS>>", "<</SYS>>",
})
# <|im_end|> (ChatML), <|eot_id|> (Llama 3), <|eot|> (Llama 4), <|start|> and <|message|> (harmony),
# <|START_OF_TURN_TOKEN|> (Command R), <|start_of_role|> (Granite), <｜User｜> (DeepSeek), [SYSTEM_PROMPT] and
# [TOOL_CALLS] (Mistral)
MARKERS = re.compile(r"<\|[^<>|\s]{1,48}\|>|<｜[^<>｜]{1,48}｜>|\[/?[A-Z_]{3,24}\]")
TOP_LOGPROBS = 20  # OpenAI's limit and vLLM's default max_logprobs


def server_specials(texts: list[str]) -> list[str]:
    """SERVER_SPECIALS and every marker-shaped span (`MARKERS`) in `texts`: what `quote` breaks up for a server."""
    return sorted(set(SERVER_SPECIALS).union(*(MARKERS.findall(text) for text in texts)))


def option_logprobs(steps: list[tuple[str, float, list[tuple[str, float]]]], options: tuple[str, ...] = ("(A", "(B")
                    ) -> dict[str, float] | None:
    """Each option's log-probability as the start of a reply, from a greedy reply's top log-probabilities.

    `steps`: per token the server wrote, (its text, its log-probability, [(token text, log-probability)] of the
    likeliest tokens there, the written one among them). Along the written path (its log-probability so far,
    `path`), a listed token completes an option when the text written before it plus the token, leading whitespace
    aside, starts with the option and goes on with no letter or digit ("(A" and "(A)" complete "(A"; "(AB" and
    "(Both" complete nothing): it adds exp(path + its log-probability) to that option. The walk stops once the
    written text completes an option or leaves every option's beginning. A tokenizer that has "(A" as one token
    and writes "(" then "B" gives P("(A") = P("(A") + P("(") P("A" | "(") and P("(B") = P("(") P("B" | "("), the
    sums the local engine computes; mass through listed tokens the server did not write (" (" when it wrote "(")
    is not seen. An option nothing completes gets the lowest listed log-probability on the path (a bound above
    its own). None when nothing completes either option (the reply went elsewhere, or the lists were empty)."""
    found: dict[str, list[float]] = {o: [] for o in options}
    lowest: list[float] = []
    text, path = "", 0.0
    for written, written_logprob, listed in steps:
        for token, logprob in listed:
            candidate = (text + token).lstrip()
            for o in options:
                if candidate.startswith(o) and (len(candidate) == len(o) or not candidate[len(o)].isalnum()):
                    found[o].append(path + logprob)
        if listed:
            lowest.append(path + min(logprob for _, logprob in listed))
        text, path = text + written, path + written_logprob
        now = text.lstrip()
        if any(now.startswith(o) for o in options) or not any(o.startswith(now) for o in options):
            break
    if not any(found.values()):
        return None
    return {o: _logsumexp(values) if values else min(lowest) for o, values in found.items()}


def _logsumexp(values: list[float]) -> float:
    top = max(values)
    if top == -math.inf:
        return top
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
        self.unread: list[str] = []  # how the first replies with no reading began (`why_unread`)

    def message(self, prompt, a: str, b: str, question: str):
        texts = [a, b, *(m["content"] for m in prompt)]
        return label_message(self.template, prompt, a, b, question, server_specials(texts))

    def why_unread(self) -> str:
        """What the pairs left out so far say about the server, for an error when none was read."""
        reasons = set(self.skipped.values())
        parts = []
        if "too_long" in reasons:
            parts.append("some prompts were too long for the server's context (raise it: vLLM --max-model-len, "
                         "llama.cpp --n_ctx or -c; or label with --no-few-shot)")
        if "no_option" in reasons:
            began = ", ".join(repr(text[:40]) for text in self.unread)
            parts.append(f"some replies did not start with an option: they began {began}")
            if any(text.lstrip().startswith("<think>") for text in self.unread):
                parts.append("the model thinks before it answers: serve it with thinking off (e.g. its chat "
                             "template's enable_thinking: false)")
        return "; ".join(parts)

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
            p_a = option_probability(*(reading[o] for o in self.options)) if reading is not None else math.nan
            if math.isnan(p_a):  # no reading, or both options at -inf
                if pair.id not in self.skipped:
                    self.skipped[pair.id] = "too_long" if steps is None else "no_option"
                    if steps is not None and len(self.unread) < 3:
                        self.unread.append("".join(written for written, _, _ in steps))
                continue
            probs[i] = 1.0 - p_a if swapped else p_a
        return probs, [""] * len(items)
