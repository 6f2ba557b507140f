"""Batched generation over chat conversations: the one place rlaif samples text from a model.

    replies = generate(model, tokenizer, [[{"role": "user", "content": "Hi!"}]], GenerationConfig(max_new_tokens=64))
    replies[0].text, replies[0].token_ids, replies[0].finish_reason

Conversations are rendered with the tokenizer's chat template, sorted by length (over the whole call) so each batch
carries little padding, and decoded with a KV cache; a row that reaches EOS or the length limit leaves the batch at
once, so the others do not pay for it. `generate` returns the replies in input order; `iter_generate` yields them
batch by batch as each finishes, so a stage can save them while the rest decode. A conversation whose prompt and
`max_new_tokens` do not fit in the model's context (`max_position_embeddings`) is not decoded: past it, positions
the model never saw give text that looks like any other. It comes back empty, with finish_reason "too_long".

Greedy decoding (temperature 0) gives the same text batched as one prompt at a time. With sampling, each row draws
from its own random generator, seeded per conversation (`GenerationConfig.seeds`), so the random numbers a reply
uses depend on its conversation and its seed only, never on the other rows of the call, their order or the batch
size: how vLLM and hosted APIs take seeds too, one per request. The probabilities those numbers are compared
against come out of a batched forward pass, and another batch (other rows, other padding) may round them
differently in the last digits; on CPU we find them equal, and the tests check it, but a kernel that rounds by
batch shape could flip a draw that sits on a near-tie. That, with per-request seeds, is what lets a resumed stage,
whose batches hold only the work left, write what the uninterrupted one would have.

Two kinds of work are never done twice. Messages shared by every conversation (few-shot examples) can be passed
once as `prefix`: their keys and values are computed once and shared by every row. And a `KVMemory` passed to
successive calls keeps each conversation's keys and values, so when it comes back one turn longer (the critique
loop's next request) only the new tokens are computed. Padding sits between the parts and is masked out, positions
count real tokens only, so each row computes exactly what it would alone.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterable, Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field

import torch

from rlaif.attention import shared_prefix
from rlaif.models import CACHE, forward_cached


@dataclass
class GenerationConfig:
    max_new_tokens: int = 256  # reply length limit, in tokens
    temperature: float = 0.7  # 0 means greedy decoding
    top_p: float = 1.0  # nucleus sampling: keep the smallest token set with this much probability
    seed: int | None = None  # row i of a call samples with seed derive_seed(seed, i); None: unseeded
    seeds: list[int] | None = None  # one seed per conversation, in order (overrides `seed`): a reply then depends only
    #                                 on its conversation and its seed, whatever shares the call (see derive_seed)
    batch_size: int = 16  # conversations per forward pass
    logprobs: bool = False  # also return each generated token's log-probability (at this temperature)
    prefix_cache: bool = True  # reuse keys and values: a shared prefix's, and a `memory`'s (off: recompute all)

    def __post_init__(self):
        from rlaif.models import check_numbers

        check_numbers(self, "generation", at_least_one=["max_new_tokens", "batch_size"], nonnegative=["temperature"],
                      within={"top_p": (0.0, 1.0)})

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Generation:
    text: str  # the reply, without special tokens
    token_ids: list[int]  # generated ids, ending with the EOS token when finish_reason is "stop"; [] from a server
    finish_reason: str  # "stop" (EOS), "length" (hit max_new_tokens) or "too_long" (no room in the context: not run)
    prompt_tokens: int = 0
    logprobs: list[float] | None = field(default=None, repr=False)  # one per token_ids entry
    completion_tokens: int | None = None  # tokens generated, as a server counts them (it sends no ids); None: ids

    @property
    def tokens(self) -> int:
        """How many tokens the reply took: its ids, or the count a server reported (rlaif.engines)."""
        return len(self.token_ids) if self.completion_tokens is None else self.completion_tokens


def derive_seed(*parts) -> int:
    """A 63-bit seed from a base seed and what names a request (a prompt id, a step, an attempt): the same in every
    process (Python's hash() is salted per process), so a request samples the same text in a resumed run.

        derive_seed(0, "rt-001", 2, 0)   # critique: seed, prompt id, step, attempt
    """
    digest = hashlib.sha256(json.dumps(list(parts)).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") >> 1


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


class KVMemory:
    """Keys and values kept from one `generate` call to the next, so work already done is not done again.

    It holds the latest shared prefix's cache, and each conversation's own keys and values (its prompt and reply)
    under a key naming the conversation and the prefix it followed: when the same conversation comes back one turn
    longer, only the tokens after the longest common prefix are computed. Reuse is checked token by token, so a stale
    or mismatched entry only costs speed, never correctness. When a new entry would pass `max_bytes`, the oldest ones
    make room.
    """

    def __init__(self, max_bytes: int = 2 << 30):
        self.max_bytes = max_bytes
        self.prefix_ids: list[int] = []
        self.prefix = None  # DynamicCache of the prefix, batch 1
        self.rows: dict[str, tuple[list[int], list[tuple[torch.Tensor, torch.Tensor]]]] = {}
        self.bytes = 0  # held by `rows`
        self.reused_tokens = 0  # prompt tokens not computed again thanks to stored rows

    def prefix_cache(self, model, prefix_ids: list[int]):
        if self.prefix is None or self.prefix_ids != prefix_ids:
            device = next(model.parameters()).device
            self.prefix = forward_cached(model, input_ids=torch.tensor([prefix_ids], device=device))[1]
            self.prefix_ids = prefix_ids
        return self.prefix

    def lookup(self, key: str, ids: list[int]) -> tuple[int, list[tuple[torch.Tensor, torch.Tensor]]]:
        """How many leading tokens of `ids` have stored keys and values (at least one is always left to compute)."""
        if key not in self.rows:
            return 0, []
        stored, layers = self.rows[key]
        n = 0
        for a, b in zip(stored, ids[:-1]):
            if a != b:
                break
            n += 1
        self.reused_tokens += n
        return n, [(k[:, :n], v[:, :n]) for k, v in layers]

    def store(self, key: str, ids: list[int], layers: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        if key in self.rows:
            self.bytes -= _size(self.rows.pop(key)[1])
        size = _size(layers)
        while self.rows and self.bytes + size > self.max_bytes:
            self.bytes -= _size(self.rows.pop(next(iter(self.rows)))[1])  # the oldest entry goes first
        if size <= self.max_bytes:
            self.rows[key], self.bytes = (ids, layers), self.bytes + size


def _size(layers: list[tuple[torch.Tensor, torch.Tensor]]) -> int:
    return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in layers)


def generate(
    model,
    tokenizer,
    conversations: list[list[dict]],
    config: GenerationConfig | None = None,
    progress: bool = False,
    prefix: list[dict] | None = None,
    memory: KVMemory | None = None,
) -> list[Generation]:
    """Generate one assistant reply for each conversation (a list of {"role", "content"} messages), each continuing
    `prefix + conversation` when a shared `prefix` is given. Pass the same `memory` to successive calls to reuse
    keys and values across them (the prefix's, and those of conversations that come back with one more turn).
    Returns the replies in input order; a conversation with no room for `max_new_tokens` in the model's context
    gets an empty reply with finish_reason "too_long". Raises ValueError when `config.seeds` does not hold one seed
    per conversation."""
    results: list[Generation | None] = [None] * len(conversations)
    for index, reply in iter_generate(model, tokenizer, conversations, config, progress, prefix, memory):
        results[index] = reply
    return results  # type: ignore[return-value]


@torch.inference_mode()
def iter_generate(
    model,
    tokenizer,
    conversations: list[list[dict]],
    config: GenerationConfig | None = None,
    progress: bool = False,
    prefix: list[dict] | None = None,
    memory: KVMemory | None = None,
) -> Iterator[tuple[int, Generation]]:
    """`generate`'s replies as (index into `conversations`, reply) pairs: first those too long for the context,
    then a batch at a time as each finishes, longest prompts first."""
    config = config or GenerationConfig()
    if config.seeds is not None and len(config.seeds) != len(conversations):
        raise ValueError(f"seeds: {len(config.seeds)} given for {len(conversations)} conversations")
    if config.seeds is not None:
        seeds = list(config.seeds)
    elif config.seed is not None:
        seeds = [derive_seed(config.seed, i) for i in range(len(conversations))]
    else:  # unseeded: the seeds come from torch's global generator, as torch.multinomial's draws would
        seeds = torch.randint(0, 2**62, (len(conversations),)).tolist()
    if prefix:
        prefix_ids, encoded = split_prefix(tokenizer, prefix, conversations)
    else:
        prefix_ids, encoded = [], [encode_chat(tokenizer, conv) for conv in conversations]
    if not config.prefix_cache:
        encoded, prefix_ids, memory = [prefix_ids + ids for ids in encoded], [], None
    context = getattr(model.config, "max_position_embeddings", None)
    fits = [context is None or len(prefix_ids) + len(ids) + config.max_new_tokens <= context for ids in encoded]
    for i in (i for i, ok in enumerate(fits) if not ok):
        yield i, Generation(text="", token_ids=[], finish_reason="too_long",
                            prompt_tokens=len(prefix_ids) + len(encoded[i]))
    memory = memory or KVMemory(max_bytes=0)
    after = f"{len(prefix_ids)}:{hash(tuple(prefix_ids))}:"  # keys computed after another prefix are other keys
    keys = [after + conversation_key(conv) for conv in conversations]
    eos = set(eos_token_ids(model, tokenizer))
    order = sorted((i for i, ok in enumerate(fits) if ok), key=lambda i: -len(encoded[i]))
    batches = [order[i : i + config.batch_size] for i in range(0, len(order), config.batch_size)]
    with progress_bar(progress, len(encoded), "generating", completed=len(encoded) - len(order)) as bar:
        prefix_cache = memory.prefix_cache(model, prefix_ids) if prefix_ids and order else None
        for batch in batches:
            rows = [_Row(encoded[i], keys[i], *memory.lookup(keys[i], encoded[i]), seed=seeds[i]) for i in batch]
            with shared_prefix(model) if prefix_cache is not None else nullcontext(False) as shared:
                done = _decode(model, rows, prefix_cache, config, eos, tokenizer.pad_token_id, memory, shared)
            bar(len(batch))
            for index, row in zip(batch, done):
                yield index, Generation(
                    text=tokenizer.decode(row.generated, skip_special_tokens=True).strip(),
                    token_ids=row.generated,
                    finish_reason="stop" if row.generated and row.generated[-1] in eos else "length",
                    prompt_tokens=len(prefix_ids) + len(row.ids),
                    logprobs=row.logprobs if config.logprobs else None,
                )


def indexed(replies: list[Generation] | Iterable[tuple[int, Generation]]) -> Iterable[tuple[int, Generation]]:
    """(index, reply) pairs from what a stage's `complete` returns: the replies in input order (a list, all at
    once, as a scripted model gives them), or the pairs themselves as they finish (`iter_generate`)."""
    return enumerate(replies) if isinstance(replies, list) else replies


def conversation_key(conversation: list[dict]) -> str:
    """What identifies a conversation from one turn to the next: its messages up to the first user turn."""
    head = next((i for i, m in enumerate(conversation) if m.get("role") == "user"), len(conversation))
    return json.dumps(conversation[: head + 1], sort_keys=True)


@dataclass
class _Row:
    ids: list[int]  # the row's own prompt tokens (after any shared prefix)
    key: str
    reused: int  # leading tokens of `ids` whose keys and values come from memory
    past: list[tuple[torch.Tensor, torch.Tensor]]  # per layer (kv_heads, reused, head_dim) keys and values
    seed: int = 0  # seeds the row's own generator: its samples do not depend on the other rows
    generated: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)


def _decode(model, rows: list[_Row], prefix_cache, config: GenerationConfig, eos: set[int], pad_id: int,
            memory: KVMemory, shared: bool = False) -> list[_Row]:
    """Prefill and decode one batch. Each row's cache is laid out [prefix][pad][reused][pad][new prompt tokens]
    [generated], padding masked out and positions counted over real tokens only, so every row sees exactly its own
    sequence. With `shared` (rlaif.attention), the prefix is not copied into the rows' cache: every row attends to
    the one batch-1 prefix cache. Rows leave the batch as soon as they finish."""
    device = next(model.parameters()).device
    width_reused = max(row.reused for row in rows)
    width_new = max(len(row.ids) - row.reused for row in rows)
    n_prefix = prefix_cache.get_seq_length() if prefix_cache is not None else 0
    lead = 0 if shared else n_prefix  # prefix columns inside the rows' own cache and mask
    layers = []
    reference = [(layer.keys[0], layer.values[0]) for layer in prefix_cache.layers] if prefix_cache is not None \
        else next(row.past for row in rows if row.past) if width_reused else []
    for layer, (ref_k, ref_v) in enumerate(reference if (lead or width_reused) else []):  # (kv_heads, n, head_dim)
        k = torch.stack([_left_pad(row.past[layer][0] if row.reused else ref_k[:, :0], width_reused) for row in rows])
        v = torch.stack([_left_pad(row.past[layer][1] if row.reused else ref_v[:, :0], width_reused) for row in rows])
        if lead:
            k = torch.cat([ref_k.expand(len(rows), -1, -1, -1), k], dim=2)
            v = torch.cat([ref_v.expand(len(rows), -1, -1, -1), v], dim=2)
        layers.append((k, v))
    from transformers import DynamicCache

    from rlaif.attention import additive_mask

    past = growing(DynamicCache(layers or None, config=model.config), spare=config.max_new_tokens)
    mask = torch.zeros(len(rows), lead + width_reused + width_new, dtype=torch.long)
    input_ids = torch.full((len(rows), width_new), pad_id, dtype=torch.long)
    mask[:, :lead] = 1
    for r, row in enumerate(rows):
        new = row.ids[row.reused :]
        mask[r, lead + width_reused - row.reused : lead + width_reused] = 1
        mask[r, mask.shape[1] - len(new) :] = 1
        input_ids[r, width_new - len(new) :] = torch.tensor(new)
    positions = (mask.cumsum(1) - 1).clamp(min=0)[:, -width_new:] + (n_prefix - lead)
    mask, input_ids, positions = mask.to(device), input_ids.to(device), positions.to(device)
    dtype = next(model.parameters()).dtype
    extra = {"shared_prefix": prefix_cache} if shared else {}

    def forward(ids, mask, positions, **kwargs):
        attention = additive_mask(mask, ids.shape[1], dtype) if shared else mask
        return model(input_ids=ids, attention_mask=attention, position_ids=positions, use_cache=True,
                     **{CACHE: past}, **extra, **kwargs).logits[:, -1]

    logits = forward(input_ids, mask, positions, logits_to_keep=1)
    alive = list(range(len(rows)))
    position = positions[:, -1]
    greedy = config.temperature <= 0
    generators = [] if greedy else [torch.Generator(device).manual_seed(row.seed) for row in rows]
    while True:
        logits = logits.float() if greedy else logits.float() / config.temperature
        if greedy:
            tokens = logits.argmax(-1)
        else:
            filtered = _top_p(logits, config.top_p) if config.top_p < 1 else logits
            tokens = _sample(filtered.softmax(-1), [generators[r] for r in alive])
        logprobs = torch.log_softmax(logits, -1).gather(-1, tokens[:, None])[:, 0].tolist() if config.logprobs else None
        keep = []
        for j, (r, token) in enumerate(zip(alive, tokens.tolist())):
            row = rows[r]
            row.generated.append(token)
            if logprobs:
                row.logprobs.append(logprobs[j])
            if token in eos or len(row.generated) >= config.max_new_tokens:
                _remember(memory, past, j, mask[j], lead, row)
            else:
                keep.append(j)
        if not keep:
            return rows
        if len(keep) < len(alive):
            index = torch.tensor(keep, device=device)
            past.batch_select_indices(index)
            mask, tokens, position = mask[index], tokens[index], position[index]
            alive = [alive[j] for j in keep]
        mask = torch.cat([mask, mask.new_ones(len(alive), 1)], dim=1)
        position = position + 1
        logits = forward(tokens[:, None], mask, position[:, None])


def _sample(probs: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
    """One token per row of `probs` (rows, vocab), row j drawn with `generators[j]` alone: the exponential race
    argmax(p / q), q ~ Exp(1) per token, picks token i with probability p_i (the Gumbel-max trick in another form;
    vLLM samples seeded requests the same way)."""
    race = torch.empty_like(probs)
    for row, generator in zip(race, generators):
        row.exponential_(generator=generator)
    return (probs / race.clamp_(min=torch.finfo(race.dtype).tiny)).argmax(-1)


def _remember(memory: KVMemory, past, j: int, mask: torch.Tensor, lead: int, row: _Row) -> None:
    """Store a finished row's own keys and values: its prompt and every generated token but the last (not fed)."""
    if not memory.max_bytes:
        return
    columns = mask[lead:].nonzero()[:, 0] + lead
    memory.store(row.key, row.ids + row.generated[:-1],
                 [(layer.keys[j][:, columns], layer.values[j][:, columns]) for layer in past.layers])


def growing(cache, spare: int):
    """`cache` with each plain layer swapped for a `_GrowingLayer` with room for `spare` more tokens."""
    from transformers.cache_utils import DynamicLayer

    for i, layer in enumerate(cache.layers):
        if type(layer) is DynamicLayer:
            cache.layers[i] = _growing_layer_class()(spare)
            if layer.is_initialized and layer.keys.numel():
                cache.layers[i].update(layer.keys, layer.values)
    return cache


@functools.cache
def _growing_layer_class():
    """Defined on first use: transformers is imported only when a model runs."""
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):
        """A cache layer that writes new keys and values into room kept free after the last ones, where the plain
        layer concatenates: a decoding step then copies one column per row, not the whole cache (at batch 16 the
        copies were a fifth of a step). `keys` and `values` are views of the filled part."""

        def __init__(self, spare: int):
            super().__init__()
            self.spare, self.length = spare, 0
            self._keys = self._values = None

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            n = key_states.shape[-2]
            if self._keys is None or self.length + n > self._keys.shape[-2]:
                room = self.length + n + self.spare
                shape = (*key_states.shape[:-2], room, key_states.shape[-1])
                keys, values = key_states.new_empty(shape), value_states.new_empty(shape)
                if self.length:
                    keys[..., : self.length, :] = self._keys[..., : self.length, :]
                    values[..., : self.length, :] = self._values[..., : self.length, :]
                self._keys, self._values = keys, values
            self._keys[..., self.length : self.length + n, :] = key_states
            self._values[..., self.length : self.length + n, :] = value_states
            self.length += n
            self.keys, self.values = self._keys[..., : self.length, :], self._values[..., : self.length, :]
            return self.keys, self.values

        def batch_select_indices(self, indices):
            if self.length:
                self._keys, self._values = self._keys[indices], self._values[indices]
                self.keys, self.values = self._keys[..., : self.length, :], self._values[..., : self.length, :]

    return GrowingLayer


def _left_pad(x: torch.Tensor, width: int) -> torch.Tensor:
    """(heads, n, dim) -> (heads, width, dim), zeros in front."""
    return torch.nn.functional.pad(x, (0, 0, width - x.shape[1], 0))


def _top_p(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus filtering (Holtzman et al. 2019), as transformers' TopPLogitsWarper does it."""
    from transformers import TopPLogitsWarper

    return TopPLogitsWarper(top_p)(None, logits)


class progress_bar:
    """A rich progress bar (or nothing, when not enabled); the context value advances it: `bar(n)`, or
    `bar(n, info)` to show a line of figures after it. `completed`: work done before (a resumed run)."""

    def __init__(self, enabled: bool, total: int, description: str, completed: int = 0, transient: bool = True):
        self.enabled, self.total, self.description = enabled, total, description
        self.completed, self.transient = completed, transient

    def __enter__(self):
        if not self.enabled:
            return lambda n, info=None: None
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._bar = Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                             TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                             transient=self.transient)
        self._bar.start()
        task = self._bar.add_task(self.description, total=self.total, completed=self.completed, info="")

        def advance(n: int, info: str | None = None) -> None:
            self._bar.update(task, advance=n, **({"info": info} if info is not None else {}))

        return advance

    def __exit__(self, *exc):
        if self.enabled:
            self._bar.stop()
