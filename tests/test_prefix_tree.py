"""Shared-prefix scoring: the radix-tree batches give the log-probabilities of scoring every sequence on its own."""

from __future__ import annotations

import random

import pytest
import torch

from rlaif.models import forward_cached
from rlaif.prefix_tree import _insert, _Node, _places, tree_logprobs


def plain_logprobs(model, seq: list[int], n: int, prefix: list[int] = ()) -> list[float]:
    ids = torch.tensor([list(prefix) + seq])
    with torch.inference_mode():
        logprobs = torch.log_softmax(model(ids).logits[0].float(), dim=-1)
    start = len(prefix) + len(seq) - n
    return [float(logprobs[t - 1, ids[0, t]]) for t in range(start, start + n)]


def test_radix_tree_splits_and_places_every_token():
    root = _Node(tokens=[])
    seqs = [[1, 2, 3, 4], [1, 2, 5], [1, 2, 3, 6, 7], [9], [1, 2]]
    for seq in seqs:
        _insert(root, seq)
    assert sorted(root.children) == [1, 9]
    shared = root.children[1]
    assert shared.tokens == [1, 2] and sorted(shared.children) == [3, 5]
    assert shared.children[3].tokens == [3] and sorted(shared.children[3].children) == [4, 6]
    for seq in seqs:
        places = _places(root, seq)
        assert [node.tokens[offset] for node, offset in places] == seq


@pytest.mark.parametrize("row_tokens, batch_tokens", [(1024, 8192), (8, 16)])
def test_matches_scoring_each_sequence_alone(tiny, row_tokens, batch_tokens):
    """Whole subtrees side by side in one row, or (small rows) subtrees split below their root with the root
    repeated, several forward passes."""
    model, _ = tiny
    rng = random.Random(0)
    context = [rng.randrange(3, 300) for _ in range(12)]
    sequences, n_scored = [], []
    for order in range(2):  # a labeler-like tree: shared context, two branches, options below each
        branch = context + [rng.randrange(3, 300) for _ in range(5 + order)]
        for option in ([40], [41], [42, 43], [44, 45, 46]):
            sequences.append(branch + option)
            n_scored.append(len(option))
    sequences.append([7, 8, 9])  # unrelated to the rest
    n_scored.append(2)
    got = tree_logprobs(model, sequences, n_scored, row_tokens=row_tokens, batch_tokens=batch_tokens)
    for seq, n, row in zip(sequences, n_scored, got):
        assert row == pytest.approx(plain_logprobs(model, seq, n), abs=1e-4)


@pytest.mark.parametrize("in_place", [True, False])
def test_prefix_cache_and_duplicate_sequences(tiny, monkeypatch, in_place):
    """The prefix attended to in place, or (a model family without plain softmax attention) copied into each row;
    the chain all sequences share ([50]) joins the prefix."""
    model, _ = tiny
    if not in_place:
        monkeypatch.setattr("rlaif.attention.SUPPORTED", set())
    prefix = list(range(20, 35))
    with torch.inference_mode():
        cache = forward_cached(model, input_ids=torch.tensor([prefix]))[1]
    sequences = [[50, 51, 52], [50, 51, 52], [50, 60]]
    got = tree_logprobs(model, sequences, [2, 1, 1], prefix_cache=cache)
    assert got[0][1] == pytest.approx(got[1][0], abs=1e-6)
    for seq, n, row in zip(sequences, [2, 1, 1], got):
        assert row == pytest.approx(plain_logprobs(model, seq, n, prefix), abs=1e-4)


def test_rejects_a_sequence_with_nothing_to_predict_from(tiny):
    with pytest.raises(ValueError, match="at least one token before"):
        tree_logprobs(tiny[0], [[5]], [1])
    assert tree_logprobs(tiny[0], [], []) == []
