"""Log-probabilities of many token sequences that share prefixes, every shared prefix computed once.

    logprobs = tree_logprobs(model, [ctx + [a], ctx + [b]], n_scored=[1, 1])   # one forward pass over ctx

The AI labeler asks the same conversation under two orders of the responses and several principles, and reads the
probability of each answer option; the direct scorer reads ten score options after one prompt. Written out, those
are many sequences with long common beginnings. Here they are put in a radix tree (a trie whose chains are merged):
each node is a run of tokens shared by every sequence below it, computed once, its keys and values handed to its
children. Nodes of the same depth run as one batch; each row of a batch is laid out [shared prefix][ancestors'
tokens][own tokens], every part left-padded, the padding masked out and positions counted over real tokens, so each
sequence is computed exactly as it would be alone.

A sequence's last `n` tokens are scored: their log-probabilities given everything before them. Only the logits
that predict a scored token are computed (the vocabulary projection is most of the cost of a short segment).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field

import torch


@dataclass
class _Node:
    tokens: list[int]
    parent: _Node | None = None
    children: dict[int, _Node] = field(default_factory=dict)
    wanted: list[int] = field(default_factory=list)  # offsets into `tokens` whose next-token logits are needed
    row: int = -1  # this node's row in its depth's batch
    logprobs: dict[int, torch.Tensor] = field(default_factory=dict)  # offset -> log-softmax over the vocabulary


def _insert(root: _Node, seq: list[int]) -> None:
    node, i = root, 0
    while i < len(seq):
        child = node.children.get(seq[i])
        if child is None:  # a new branch takes the rest of the sequence
            node.children[seq[i]] = _Node(tokens=list(seq[i:]), parent=node)
            return
        common = 1
        while common < len(child.tokens) and i + common < len(seq) and child.tokens[common] == seq[i + common]:
            common += 1
        if common < len(child.tokens):  # split the child where this sequence leaves it
            tail = _Node(tokens=child.tokens[common:], parent=child, children=child.children)
            for grandchild in tail.children.values():
                grandchild.parent = tail
            child.tokens, child.children = child.tokens[:common], {tail.tokens[0]: tail}
        node, i = child, i + common


def _places(root: _Node, seq: list[int]) -> list[tuple[_Node, int]]:
    """The (node, offset) holding each token of an inserted sequence."""
    places, node, i = [], root, 0
    while i < len(seq):
        node = node.children[seq[i]]
        places += [(node, k) for k in range(len(node.tokens))][: len(seq) - i]
        i += len(node.tokens)
    return places


@torch.inference_mode()
def tree_logprobs(model, sequences: list[list[int]], n_scored: list[int], prefix_cache=None) -> list[list[float]]:
    """For each sequence, the log-probabilities of its last `n_scored[i]` tokens, each given every token before it
    (and the shared prefix whose keys and values are `prefix_cache`, batch 1, if given).

    sequences: token-id lists, each longer than its n_scored (the first token is never scored).
    Returns: per sequence, n_scored floats."""
    if any(not 1 <= n < len(s) for s, n in zip(sequences, n_scored)):
        raise ValueError("each sequence needs 1 or more scored tokens and at least one token before them")
    fed = [s[:-1] for s in sequences]  # the last token is only predicted, never fed
    root = _Node(tokens=[])
    for seq in fed:
        _insert(root, seq)
    wanted_at = []  # per sequence, the (node, offset) whose logits predict each scored token
    for seq, n in zip(fed, n_scored):
        wanted_at.append(_places(root, seq)[len(seq) - n :])
        for node, offset in wanted_at[-1]:
            if offset not in node.wanted:
                node.wanted.append(offset)
    _run_levels(model, root, prefix_cache)
    return [[float(node.logprobs[offset][token]) for token, (node, offset) in zip(seq[len(seq) - n :], places)]
            for seq, n, places in zip(sequences, n_scored, wanted_at)]


def _run_levels(model, root: _Node, prefix_cache) -> None:
    """Forward every node, depth by depth, each depth one batch whose cache is its parents' cache. The shared
    prefix is attended to in place (rlaif.attention) where the model allows, else copied into the first depth."""
    from rlaif.attention import shared_prefix

    with shared_prefix(model) if prefix_cache is not None else nullcontext(False) as shared:
        _levels(model, root, prefix_cache, shared)


def _levels(model, root: _Node, prefix_cache, shared: bool) -> None:
    from transformers import DynamicCache

    from rlaif.attention import additive_mask

    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    n_prefix = prefix_cache.get_seq_length() if prefix_cache is not None else 0
    extra = {"shared_prefix": prefix_cache} if shared else {}
    level = list(root.children.values())
    past_layers = None  # per layer (keys, values): (rows of the previous depth, heads, cached, head_dim)
    mask = None  # (rows of the previous depth, cached columns)
    while level:
        width = max(len(node.tokens) for node in level)
        parents = torch.tensor([node.parent.row if node.parent is not root else 0 for node in level], device=device)
        if past_layers is not None:
            layers = [(k.index_select(0, parents), v.index_select(0, parents)) for k, v in past_layers]
            mask = mask.index_select(0, parents)
        elif prefix_cache is not None and not shared:
            layers = [(layer.keys.expand(len(level), -1, -1, -1), layer.values.expand(len(level), -1, -1, -1))
                      for layer in prefix_cache.layers]
            mask = torch.ones(len(level), n_prefix, dtype=torch.long, device=device)
        else:
            layers, mask = [], torch.zeros(len(level), 0, dtype=torch.long, device=device)
        input_ids = torch.zeros(len(level), width, dtype=torch.long)
        own = torch.zeros(len(level), width, dtype=torch.long)
        for r, node in enumerate(level):
            node.row = r
            input_ids[r, width - len(node.tokens) :] = torch.tensor(node.tokens)
            own[r, width - len(node.tokens) :] = 1
        mask = torch.cat([mask, own.to(device)], dim=1)
        positions = (mask.cumsum(1) - 1).clamp(min=0)[:, -width:] + (n_prefix if shared else 0)
        # Columns whose logits some node of this depth needs (a segment is left-padded to `width`).
        columns = sorted({width - len(node.tokens) + w for node in level for w in node.wanted})
        past = DynamicCache(layers or None, config=model.config)
        out = model(input_ids=input_ids.to(device), position_ids=positions, past_key_values=past, use_cache=True,
                    attention_mask=additive_mask(mask, width, dtype) if shared else mask,
                    logits_to_keep=torch.tensor(columns or [width - 1], device=device), **extra)
        if columns:
            logprobs = torch.log_softmax(out.logits.float(), dim=-1)
            index = {c: i for i, c in enumerate(columns)}
            for node in level:
                for w in node.wanted:
                    node.logprobs[w] = logprobs[node.row, index[width - len(node.tokens) + w]]
        past_layers = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
        level = [child for node in level for child in node.children.values()]
