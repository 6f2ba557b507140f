"""Log-probabilities of many token sequences that share prefixes, every shared prefix computed once.

    logprobs = tree_logprobs(model, [ctx + [a], ctx + [b]], n_scored=[1, 1])   # one forward pass over ctx

The AI labeler asks the same conversation under two orders of the responses and several principles, and reads the
probability of each answer option; the direct scorer reads ten score options after one prompt. Written out, those
are many sequences with long common beginnings. Here they are put in a radix tree (a trie whose chains are merged):
each node is a run of tokens shared by every sequence below it, and each node is computed once. The chain that
every sequence starts with (a template's opening) is run first and joins the shared prefix. The subtrees below it
are laid out flat, each node's tokens once, several subtrees side by side in one row (packed longest first, so rows
need little padding), with a tree attention mask: a token sees the tokens before it in its own node and in every
ancestor node, nothing else, and its position counts along its own path from the root. So each sequence is computed
exactly as it would be alone, in one forward pass per batch of rows (SpecInfer's token-tree attention, Miao et al.
2024, used here for scoring rather than speculation).

A sequence's last `n` tokens are scored: their log-probabilities given everything before them. Only the logits
that predict a scored token are computed (the vocabulary projection is most of the cost of a short segment).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field

import torch

from rlaif.models import CACHE, forward_cached


@dataclass(eq=False)  # nodes compare (and hash) by identity
class _Node:
    tokens: list[int]
    parent: _Node | None = None
    children: dict[int, _Node] = field(default_factory=dict)
    wanted: list[int] = field(default_factory=list)  # offsets into `tokens` whose next-token logits are needed
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
def tree_logprobs(model, sequences: list[list[int]], n_scored: list[int], prefix_cache=None, row_tokens: int = 1024,
                  batch_tokens: int = 8192) -> list[list[float]]:
    """For each sequence, the log-probabilities of its last `n_scored[i]` tokens, each given every token before it
    (and the shared prefix whose keys and values are `prefix_cache`, batch 1, if given).

    sequences: token-id lists, each longer than its n_scored (the first token is never scored).
    row_tokens: a subtree up to this many tokens is packed into one row; a larger one is split below its root.
    batch_tokens: rows per forward pass, counting padding.
    Returns: per sequence, n_scored floats.
    A model that scores sequences itself (rlaif.engines.VLLMModel: `sequence_logprobs`) is handed them whole; it
    keeps its own prefix cache, so `prefix_cache` is not used."""
    if any(not 1 <= n < len(s) for s, n in zip(sequences, n_scored)):
        raise ValueError("each sequence needs 1 or more scored tokens and at least one token before them")
    if not sequences:
        return []
    if hasattr(model, "sequence_logprobs"):
        return model.sequence_logprobs(sequences, n_scored)
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
    # The chain every sequence starts with (a prompt template's opening) is computed once and joins the prefix.
    top, head = root, []
    while len(top.children) == 1:
        (child,) = top.children.values()
        if child.wanted or not child.children:
            break
        head, top = head + child.tokens, child
    if head:
        prefix_cache = _extend(model, prefix_cache, head)
    # Subtrees packed side by side into rows (first fit, longest first): the mask keeps them apart, so rows need
    # next to no padding.
    units = sorted((unit for child in top.children.values() for unit in _pack(child, [], row_tokens)),
                   key=_length, reverse=True)
    capacity = max(row_tokens, _length(units[0]))
    rows: list[list[_Node]] = []
    for unit in units:
        row = next((row for row in rows if _length(row) + _length(unit) <= capacity), None)
        if row is None:
            rows.append(list(unit))
        else:
            row += unit
    from rlaif.attention import shared_prefix

    with shared_prefix(model) if prefix_cache is not None else nullcontext(False) as shared:
        size = max(1, batch_tokens // capacity)
        for start in range(0, len(rows), size):
            _forward(model, rows[start : start + size], top, prefix_cache, shared)
    return [[float(node.logprobs[offset][token]) for token, (node, offset) in zip(seq[len(seq) - n :], places)]
            for seq, n, places in zip(sequences, n_scored, wanted_at)]


def _length(row: list[_Node]) -> int:
    return sum(len(node.tokens) for node in row)


def _subtree(node: _Node) -> list[_Node]:
    """The node and its descendants, each after its parent."""
    return [node] + [n for child in node.children.values() for n in _subtree(child)]


def _pack(node: _Node, chain: list[_Node], row_tokens: int) -> list[list[_Node]]:
    """Rows holding `node`'s subtree: one row if it fits, else one per child, each repeating `chain` + node (the
    ancestors its tokens attend to)."""
    nodes = chain + _subtree(node)
    if not node.children or _length(nodes) <= row_tokens:
        return [nodes]
    return [row for child in node.children.values() for row in _pack(child, chain + [node], row_tokens)]


def _extend(model, prefix_cache, tokens: list[int]):
    """`prefix_cache` (or nothing) followed by `tokens`, batch 1."""
    from transformers import DynamicCache

    device = next(model.parameters()).device
    past = None if prefix_cache is None else DynamicCache(
        [(layer.keys, layer.values) for layer in prefix_cache.layers], config=model.config)
    return forward_cached(model, past, input_ids=torch.tensor([tokens], device=device))[1]


def _forward(model, rows: list[list[_Node]], top: _Node, prefix_cache, shared: bool) -> None:
    """One forward pass over packed rows. Each row lays its nodes end to end; a token sees the tokens before it in
    its own node and every ancestor node (a tree attention mask), positions count along its path from the root."""
    from transformers import DynamicCache

    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    n_prefix = prefix_cache.get_seq_length() if prefix_cache is not None else 0
    width = max(_length(row) for row in rows)
    input_ids = torch.zeros(len(rows), width, dtype=torch.long)
    positions = torch.zeros(len(rows), width, dtype=torch.long)
    visible = torch.eye(width, dtype=torch.bool).repeat(len(rows), 1, 1)  # padding sees itself
    picks = []  # (row, column, node, offset) of every logit wanted
    for r, row in enumerate(rows):
        placed = {}  # node -> (first column, position of its first token)
        column = 0
        for node in row:
            n = len(node.tokens)
            depth = 0 if node.parent is top else placed[node.parent][1] + len(node.parent.tokens)
            span = slice(column, column + n)
            input_ids[r, span] = torch.tensor(node.tokens)
            positions[r, span] = n_prefix + depth + torch.arange(n)
            visible[r, span, span] = torch.ones(n, n, dtype=torch.bool).tril()
            ancestor = node.parent
            while ancestor is not top:
                first = placed[ancestor][0]
                visible[r, span, first : first + len(ancestor.tokens)] = True
                ancestor = ancestor.parent
            placed[node] = (column, depth)
            picks += [(r, column + w, node, w) for w in node.wanted]
            column += n
    if not picks:
        return
    past = None
    if prefix_cache is not None and not shared:  # the prefix copied into every row's cache, visible to all
        past = DynamicCache([(layer.keys.expand(len(rows), -1, -1, -1), layer.values.expand(len(rows), -1, -1, -1))
                             for layer in prefix_cache.layers], config=model.config)
        visible = torch.cat([torch.ones(len(rows), width, n_prefix, dtype=torch.bool), visible], dim=2)
    mask = torch.zeros(visible.shape, dtype=dtype).masked_fill(~visible, torch.finfo(dtype).min)[:, None]
    # Only the wanted positions go through the vocabulary projection (most of the cost of a short segment).
    per_row = [[c for rr, c, _, _ in picks if rr == r] for r in range(len(rows))]
    index = torch.tensor([cols + [0] * (max(map(len, per_row)) - len(cols)) for cols in per_row], device=device)
    slot = {}
    for r, cols in enumerate(per_row):
        for m, c in enumerate(cols):
            slot[(r, c)] = m

    def gather(module, args):
        hidden = args[0]
        return (hidden.gather(1, index[..., None].expand(-1, -1, hidden.shape[-1])),) + args[1:]

    handle = model.get_output_embeddings().register_forward_pre_hook(gather)
    try:
        out = model(input_ids=input_ids.to(device), position_ids=positions.to(device), attention_mask=mask.to(device),
                    use_cache=past is not None, logits_to_keep=0, **({CACHE: past} if past is not None else {}),
                    **({"shared_prefix": prefix_cache} if shared else {}))
    finally:
        handle.remove()
    logprobs = torch.log_softmax(out.logits.float(), dim=-1)
    for r, c, node, w in picks:
        node.logprobs[w] = logprobs[r, slot[(r, c)]]
