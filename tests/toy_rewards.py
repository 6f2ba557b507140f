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
