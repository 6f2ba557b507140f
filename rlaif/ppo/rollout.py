"""What PPO computes about a batch of responses before it learns from them: tokens, log-probabilities, values and
rewards. The trainer (rlaif/ppo/trainer.py) calls these; the math on the results is in rlaif/ppo/losses.py.

A batch is laid out as [left padding][prompt][response][right padding], so every response starts at the same
column and a model's outputs for the responses are the last T + 1 positions (the logits at position t predict
token t + 1). Positions count real tokens only, as in `rlaif.generate`, so a row computes what it would alone.
Only the response positions ever reach the language-model head: logits over the vocabulary for prompt tokens
would be computed and thrown away.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from rlaif.records import ConfigError, Message

RewardFn = Callable[[list[list[Message]], list[str]], Tensor]


@dataclass
class Batch:
    """Prompts and responses as tensors. B rows, P prompt columns, T response columns."""

    input_ids: Tensor  # (B, P + T) long
    attention_mask: Tensor  # (B, P + T) long, 0 on padding
    position_ids: Tensor  # (B, P + T) long, counting real tokens only
    response: Tensor  # (B, T) long, the response tokens (padding after each one's end)
    mask: Tensor  # (B, T) float, 1 on real response tokens

    def select(self, rows: Tensor) -> Batch:
        """The given rows, with the columns that are padding in every one of them cut off."""
        mask = self.attention_mask[rows]
        prompt_width = self.input_ids.shape[1] - self.response.shape[1]
        first = int(mask[:, :prompt_width].any(0).nonzero()[0]) if prompt_width else 0
        width = max(int(self.mask[rows].sum(1).max()), 1)
        end = prompt_width + width
        return Batch(self.input_ids[rows, first:end], mask[:, first:end], self.position_ids[rows, first:end],
                     self.response[rows, :width], self.mask[rows, :width])

    def to(self, device) -> Batch:
        return Batch(*(t.to(device) for t in (self.input_ids, self.attention_mask, self.position_ids, self.response,
                                               self.mask)))


def pack(prompts: list[list[int]], responses: list[list[int]], pad_id: int) -> Batch:
    """Token lists -> a Batch: prompts padded on the left, responses on the right."""
    prompt_width, width = max(map(len, prompts)), max(max(map(len, responses)), 1)
    rows = len(prompts)
    input_ids = torch.full((rows, prompt_width + width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for i, (prompt, response) in enumerate(zip(prompts, responses)):
        input_ids[i, prompt_width - len(prompt) : prompt_width + len(response)] = torch.tensor(prompt + response)
        attention_mask[i, prompt_width - len(prompt) : prompt_width + len(response)] = 1
    position_ids = (attention_mask.cumsum(1) - 1).clamp(min=0)
    mask = attention_mask[:, prompt_width:].float()
    return Batch(input_ids, attention_mask, position_ids, input_ids[:, prompt_width:].clone(), mask)


def response_logits(model, batch: Batch, hidden: bool = False):
    """(B, T, V) logits predicting each response token, from one forward pass of a causal LM; with `hidden`, also
    (B, T, H): the last hidden states they are computed from (the input of the language-model head)."""
    width = batch.response.shape[1]
    seen = []
    head = getattr(model, "module", model).get_output_embeddings()  # under DDP, the wrapped model's head
    hook = head.register_forward_pre_hook(lambda module, args: seen.append(args[0])) if hidden else None
    try:
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
                    logits_to_keep=width + 1, use_cache=False)
    finally:
        if hook is not None:
            hook.remove()
    return (out.logits[:, :-1], seen[0][:, :-1]) if hidden else out.logits[:, :-1]


class ValueModel(nn.Module):
    """V(s_t) for every response position: a sequence classifier's backbone and scalar head, applied per token.

    Built from the reward model's backbone with a zero head (rlaif/ppo/build.py): values start at 0 and learn on the
    reward PPO optimises, from the reward model's features (Huang et al. 2024, "The N Implementation Details of RLHF
    with PPO", on initialising the value model from the reward model). No bias beyond the classifier's own, so
    `save_pretrained` writes a plain sequence classifier whose output at a state is the value there.
    """

    def __init__(self, classifier: nn.Module, adapter: nn.Module | None = None):
        """`adapter`: the PEFT model wrapping `classifier` when it trains LoRA adapters (kept outside the module tree:
        its parameters are the classifier's), merged into it by `save_pretrained`."""
        super().__init__()
        self.classifier = classifier
        object.__setattr__(self, "adapter", adapter)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor, width: int) -> Tensor:
        """-> (B, width) float32: the value before each of the last `width` tokens is generated (the states at
        positions -width-1 .. -2, whose logits predict those tokens)."""
        base = self.classifier
        backbone = getattr(base, base.base_model_prefix)
        hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          use_cache=False).last_hidden_state
        # a copy, not a view of the head's output: FSDP2 hooks a sharded module's output for its backward
        return base.score(hidden[:, -width - 1 : -1]).squeeze(-1).float().clone()

    def values(self, batch: Batch) -> Tensor:
        return self(batch.input_ids, batch.attention_mask, batch.position_ids, batch.response.shape[1])

    def save_pretrained(self, directory) -> None:
        """Write a sequence classifier that loads with AutoModelForSequenceClassification (num_labels=1) with no
        missing or unexpected weights: a LoRA adapter is merged in first (after which this model has no adapter)."""
        if self.adapter is not None:
            self.classifier = self.adapter.merge_and_unload()
            object.__setattr__(self, "adapter", None)
        self.classifier.save_pretrained(directory, safe_serialization=True)


class ValueHead(nn.Module):
    """V(s_t) as a scalar head on the policy's own last hidden states: policy and value share one trunk, so a PPO
    minibatch costs one forward and one backward pass, not two of each (the layout of Ziegler et al. 2019's
    lm-human-preferences and of TRL before its PPOv2). The value loss then also trains the trunk (through vf_coef).
    The head starts at zero, with no bias, as the value model's does: every value starts at 0."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.score = nn.Linear(hidden_size, 1, bias=False)
        nn.init.zeros_(self.score.weight)

    def forward(self, hidden: Tensor) -> Tensor:
        """(B, T, H) hidden states -> (B, T) float32 values."""
        return self.score(hidden).squeeze(-1).float()


# --------------------------------------------------------------------------------------------------------------------
# Rewards: a reward model, the labeler's direct score, any Python function, or a weighted sum of several


def import_function(spec: str) -> RewardFn:
    """"package.module:function" -> the function."""
    module_name, _, name = spec.partition(":")
    if not module_name or not name:
        raise ConfigError(f"reward_fn: {spec!r} is not 'module:function'")
    try:
        function = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"reward_fn: cannot import {spec!r}: {e}") from None
    if not callable(function):
        raise ConfigError(f"reward_fn: {spec!r} is not callable")
    return function


class CombinedReward:
    """sum_i w_i * r_i(prompts, responses): one reward per response, with each part kept for the logs."""

    def __init__(self, parts: list[tuple[str, RewardFn, float]]):
        if not parts:
            raise ConfigError("no reward: give a reward model (--reward-model), a labeler (--reward-score) or a "
                              "Python function (--reward-fn)")
        self.parts = parts
        self.last: dict[str, Tensor] = {}

    def __call__(self, prompts: list[list[Message]], responses: list[str]) -> Tensor:
        total = torch.zeros(len(responses))
        for name, function, weight in self.parts:
            value = torch.as_tensor(function(prompts, responses), dtype=torch.float32).flatten().cpu()
            if value.shape != (len(responses),):
                raise ConfigError(f"reward {name}: returned {tuple(value.shape)} values for {len(responses)} responses")
            self.last[name] = value
            total += weight * value
        return total
