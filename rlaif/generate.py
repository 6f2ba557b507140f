"""Batched generation over chat conversations: the one place rlaif samples text from a model.

    replies = generate(model, tokenizer, [[{"role": "user", "content": "Hi!"}]], GenerationConfig(max_new_tokens=64))
    replies[0].text, replies[0].token_ids, replies[0].finish_reason

Conversations are rendered with the tokenizer's chat template, sorted by length so each batch carries little
padding, left-padded, and generated with `transformers`' `generate` (KV cache, per-sequence EOS). Results come back in
input order. Greedy decoding (temperature 0) gives the same text batched as one prompt at a time.

Messages shared by every conversation (few-shot examples) can be passed once as `prefix`: their keys and values are
computed once and reused by every sequence of every batch. Each row is then laid out as
[prefix][padding][own tokens], the padding masked out, so positions stay continuous.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field

import torch


@dataclass
class GenerationConfig:
    max_new_tokens: int = 256  # reply length limit, in tokens
    temperature: float = 0.7  # 0 means greedy decoding
    top_p: float = 1.0  # nucleus sampling: keep the smallest token set with this much probability
    seed: int | None = None  # seeds the sampler for this call; same inputs, batch size and seed give the same text
    batch_size: int = 16  # conversations per forward pass
    logprobs: bool = False  # also return each generated token's log-probability (at this temperature)
    prefix_cache: bool = True  # compute a shared prefix's KV cache once (off: recompute it in every row)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Generation:
    text: str  # the reply, without special tokens
    token_ids: list[int]  # generated ids, ending with the EOS token when finish_reason is "stop"
    finish_reason: str  # "stop" (EOS) or "length" (hit max_new_tokens)
    prompt_tokens: int = 0
    logprobs: list[float] | None = field(default=None, repr=False)  # one per token_ids entry


def eos_token_ids(model, tokenizer) -> list[int]:
    """Every id that ends a reply: the tokenizer's EOS and any the model's generation config adds (e.g. <|eot_id|>)."""
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(configured if isinstance(configured, (list, tuple)) else [configured])
    return sorted(i for i in ids if i is not None)


def encode_chat(tokenizer, conversation: list[dict]) -> list[int]:
    """Token ids of a conversation rendered for the assistant's next turn."""
    text = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def split_prefix(tokenizer, prefix: list[dict], conversations: list[list[dict]]) -> tuple[list[int], list[list[int]]]:
    """Token ids of the shared `prefix` messages and of each conversation's own part, rendered for the assistant's
    next turn. The prefix is tokenized once, so prefix + own part is the same for cached and uncached generation.
    If the chat template renders the prefix differently inside a longer conversation, nothing is shared."""
    prefix_text = tokenizer.apply_chat_template(prefix, tokenize=False)
    texts = [tokenizer.apply_chat_template(prefix + c, tokenize=False, add_generation_prompt=True) for c in conversations]
    if not all(text.startswith(prefix_text) for text in texts):
        return [], [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    prefix_ids = tokenizer(prefix_text, add_special_tokens=False)["input_ids"]
    return prefix_ids, [tokenizer(text[len(prefix_text):], add_special_tokens=False)["input_ids"] for text in texts]


def left_pad(sequences: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), both (batch, longest), with padding on the left so every row ends together."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
        mask[row, width - len(seq):] = 1
    return ids.to(device), mask.to(device)


def trim_at_eos(ids: list[int], eos_ids: list[int] | set[int]) -> tuple[list[int], str]:
    """Cut generated ids just after the first EOS; the finish reason is "stop" if there was one, else "length"."""
    for i, token in enumerate(ids):
        if token in eos_ids:
            return ids[: i + 1], "stop"
    return ids, "length"


@torch.inference_mode()
def generate(
    model,
    tokenizer,
    conversations: list[list[dict]],
    config: GenerationConfig | None = None,
    progress: bool = False,
    prefix: list[dict] | None = None,
) -> list[Generation]:
    """Generate one assistant reply for each conversation (a list of {"role", "content"} messages), each continuing
    `prefix + conversation` when a shared `prefix` is given."""
    from transformers import GenerationConfig as HFGenerationConfig

    config = config or GenerationConfig()
    if prefix:
        prefix_ids, encoded = split_prefix(tokenizer, prefix, conversations)
    else:
        prefix_ids, encoded = [], [encode_chat(tokenizer, conv) for conv in conversations]
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    eos = eos_token_ids(model, tokenizer)
    greedy = config.temperature <= 0
    settings = HFGenerationConfig(
        max_new_tokens=config.max_new_tokens,
        do_sample=not greedy,
        temperature=None if greedy else config.temperature,
        top_p=None if greedy else config.top_p,
        top_k=None,
        eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id,
        return_dict_in_generate=True,
        output_logits=config.logprobs,
    )
    device = next(model.parameters()).device
    prefix_tensor = torch.tensor([prefix_ids], dtype=torch.long, device=device)
    prefix_cache = model(prefix_tensor, use_cache=True).past_key_values if prefix_ids and config.prefix_cache else None
    results: list[Generation | None] = [None] * len(encoded)
    batches = [order[i : i + config.batch_size] for i in range(0, len(order), config.batch_size)]
    cuda = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda), progress_bar(progress, len(encoded), "generating") as bar:
        if config.seed is not None:
            torch.manual_seed(config.seed)
        for batch in batches:
            input_ids, attention_mask = left_pad([encoded[i] for i in batch], tokenizer.pad_token_id, device)
            cache = {}
            if prefix_ids:
                input_ids = torch.cat([prefix_tensor.expand(len(batch), -1), input_ids], dim=1)
                attention_mask = torch.cat([torch.ones_like(input_ids[:, : len(prefix_ids)]), attention_mask], dim=1)
            if prefix_cache is not None:
                cache["past_key_values"] = copy.deepcopy(prefix_cache)
                cache["past_key_values"].batch_repeat_interleave(len(batch))
            out = model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=settings, **cache)
            new_tokens = out.sequences[:, input_ids.shape[1]:]
            token_logprobs = None
            if config.logprobs:
                logits = torch.stack(out.logits, dim=1).float()  # (batch, new_tokens, vocab), before any warping
                if not greedy:
                    logits = logits / config.temperature
                token_logprobs = torch.log_softmax(logits, dim=-1).gather(-1, new_tokens.unsqueeze(-1)).squeeze(-1)
            for row, index in enumerate(batch):
                ids, reason = trim_at_eos(new_tokens[row].tolist(), set(eos))
                results[index] = Generation(
                    text=tokenizer.decode(ids, skip_special_tokens=True).strip(),
                    token_ids=ids,
                    finish_reason=reason,
                    prompt_tokens=len(prefix_ids) + len(encoded[index]),
                    logprobs=token_logprobs[row, : len(ids)].tolist() if token_logprobs is not None else None,
                )
            bar(len(batch))
    return results  # type: ignore[return-value]


class progress_bar:
    """A rich progress bar (or nothing, when not enabled); the context value advances it: `bar(n)`."""

    def __init__(self, enabled: bool, total: int, description: str):
        self.enabled, self.total, self.description = enabled, total, description

    def __enter__(self):
        if not self.enabled:
            return lambda n: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn, TimeRemainingColumn

        self._bar = Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                             TimeElapsedColumn(), TimeRemainingColumn(), transient=True)
        self._bar.start()
        task = self._bar.add_task(self.description, total=self.total)
        return lambda n: self._bar.advance(task, n)

    def __exit__(self, *exc):
        if self.enabled:
            self._bar.stop()
