"""The labeling prompt: what the labeler reads (the constitution's few-shot block, then one question about a pair of
replies) and how untrusted text (replies, conversations) is kept from passing for that prompt's structure.

    message = label_message(template, prompt, reply_a, reply_b, question, tokenizer_specials(tokenizer))
    prefix = few_shot_block(constitution, chain_of_thought=False)   # the messages every labeling prompt starts with

rlaif.label scores the options after these messages; rlaif.label_remote asks a server the same messages.
"""

from __future__ import annotations

import re

from rlaif.constitution import Constitution, render
from rlaif.records import Message

# --------------------------------------------------------------------------------------------------------------------
# Isolating untrusted text

_STRUCTURE = re.compile(r"<\s*/?\s*(reply|conversation)\s*>", re.IGNORECASE)
_OPTION = re.compile(r"\(\s*([AB])\s*\)")


def quote(text: str, special_tokens: list[str] = (), options: bool = True) -> str:
    """Make untrusted text (a response, a conversation) safe to place inside the labeling prompt:

    - the prompt's own markers (<reply>, </reply>, <conversation>, ...) become [reply], [/reply], ..., so a response
      cannot close its block early and continue as if it were the prompt;
    - option markers "(A)" and "(B)" become "[A]" and "[B]": the only "(A)" and "(B)" in a prompt are the real ones
      (with `options` off they are kept: for the labeler's own rationale, which names the options as its examples do);
    - the tokenizer's special tokens (e.g. <|im_end|>) are broken up, so text cannot end a chat turn or open one.
    """
    text = _STRUCTURE.sub(lambda m: "[" + ("/" if "/" in m.group(0) else "") + m.group(1).lower() + "]", text)
    if options:
        text = _OPTION.sub(lambda m: f"[{m.group(1)}]", text)
    return defuse(text, special_tokens)


def defuse(text: str, special_tokens: list[str] = ()) -> str:
    """`text` with each of the tokenizer's special tokens (e.g. <|im_end|>) broken up by a zero-width space, so that
    it is read as text and cannot end a chat turn or open one."""
    for token in special_tokens:
        if len(token) > 1 and token in text:
            text = text.replace(token, token[0] + "\u200b" + token[1:])
    return text


def tokenizer_specials(tokenizer) -> list[str]:
    """The tokenizer's special and added tokens: what `quote` and `defuse` break up in untrusted text."""
    return sorted(set(tokenizer.all_special_tokens) | set(getattr(tokenizer, "added_tokens_encoder", {})))


def with_system(prompt: list[Message], system: str) -> list[Message]:
    """The conversation `prompt` under the system prompt `system`: a system turn first, or, where the conversation
    opens with its own, `system` put before that turn's text (chat templates take one system turn)."""
    if prompt and prompt[0]["role"] == "system":
        return [{"role": "system", "content": f"{system}\n\n{prompt[0]['content']}"}, *prompt[1:]]
    return [{"role": "system", "content": system}, *prompt]


def answer(option: str, rationale: str | None = None) -> str:
    """The labeler's answer up to its option letter: "(A", or in chain-of-thought mode "{rationale} The answer is
    (A". The few-shot examples are written as this plus ")" (plus "." after a rationale), and the options are scored
    as this continuation, so the labeler is scored in the form its examples show."""
    return f"({option}" if rationale is None else f"{rationale} The answer is ({option}".lstrip()


def format_conversation(prompt: list[Message], special_tokens: list[str] = ()) -> str:
    names = {"user": "Human", "assistant": "Assistant", "system": "System"}
    return "\n\n".join(f"{names.get(m['role'], m['role'])}: {quote(m['content'], special_tokens)}" for m in prompt)


# --------------------------------------------------------------------------------------------------------------------
# What the labeler reads


def label_template(constitution: Constitution, chain_of_thought: bool) -> str:
    """The constitution's template for one labeling question: `label_cot` in chain-of-thought mode, else `label`."""
    return constitution.templates["label_cot" if chain_of_thought else "label"]


def label_message(template: str, prompt: list[Message], a: str, b: str, question: str,
                  special_tokens: list[str] = ()) -> Message:
    """The user turn that asks `question` about replies `a` (shown as (A)) and `b` (as (B)) to the conversation
    `prompt`, with the conversation and replies quoted (`quote`)."""
    content = render(template, conversation=format_conversation(prompt, special_tokens),
                     response_a=quote(a, special_tokens), response_b=quote(b, special_tokens), question=question)
    return {"role": "user", "content": content}


def few_shot_block(constitution: Constitution, chain_of_thought: bool = False,
                   special_tokens: list[str] = ()) -> list[Message]:
    """The few-shot messages every labeling prompt starts with: each of the constitution's label examples asked as
    a pair is asked (`label_message`, with the comparison question of the principle the example names, as that
    principle is worded now) and answered as `answer` writes it ("(A)", or in chain-of-thought mode the example's
    rationale and "The answer is (A)."). Two messages per example, in order. Editing a principle an example names
    changes this block, so it changes what every pair is labeled after, whichever principles the pair draws."""
    template = label_template(constitution, chain_of_thought)
    messages: list[Message] = []
    for example in constitution.label_examples:
        question = constitution.principle(example.principle).comparison_question
        prompt = [{"role": "user", "content": example.prompt}]
        messages.append(label_message(template, prompt, example.response_a, example.response_b, question,
                                      special_tokens))
        rationale = example.rationale.strip() if chain_of_thought else None
        messages.append({"role": "assistant",
                         "content": answer(example.answer, rationale) + (")" if rationale is None else ").")})
    return messages
