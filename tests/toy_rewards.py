"""Scripted rewards for PPO tests, importable as `toy_rewards:NAME` (tests/ on the path)."""

import torch

VOWELS = set("aeiou")


def vowels(prompts, responses):
    """The share of a response's letters that are vowels: a reward the policy can raise by choosing tokens."""
    return torch.tensor([sum(c in VOWELS for c in r) / max(sum(c.isalpha() for c in r), 1) for r in responses])


def not_a_number(prompts, responses):
    return torch.full((len(responses),), float("nan"))


def fl(prompts, responses):
    return torch.tensor([r.count("fl") / 4 for r in responses])


def refused_on_rank_one(prompts, responses):
    """A user error in the second process only (under accelerate launch), the first going on."""
    import os

    from rlaif.records import ConfigError

    if os.environ.get("RANK") == "1":
        raise ConfigError("reward: refused_on_rank_one says no on rank 1")
    return torch.zeros(len(responses))
