"""Batched generation on the tiny model: batching must not change greedy output; seeds, log-probs and EOS handling."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from rlaif.cli import cli
from rlaif.generate import (
    GenerationConfig,
    KVMemory,
    derive_seed,
    encode_chat,
    generate,
    iter_generate,
    left_pad,
    split_prefix,
    trim_at_eos,
)

CONVERSATIONS = [
    [{"role": "user", "content": "How do I bake bread?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Which response is more helpful?"}],
    [{"role": "user", "content": "def add(a, b):"}, {"role": "assistant", "content": "return a + b"},
     {"role": "user", "content": "Critique the reply: it is rude and gives dangerous advice. " * 3}],
    [{"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "Mix flour, water, salt and yeast, then let it rise. " * 5}],
]


@pytest.mark.parametrize("batch_size", [2, 5])
def test_batched_greedy_equals_one_by_one(tiny, batch_size):
    model, tokenizer = tiny
    config = GenerationConfig(max_new_tokens=24, temperature=0, batch_size=batch_size)
    batched = generate(model, tokenizer, CONVERSATIONS, config)
    single = [generate(model, tokenizer, [c], GenerationConfig(max_new_tokens=24, temperature=0, batch_size=1))[0]
              for c in CONVERSATIONS]
    assert [g.token_ids for g in batched] == [g.token_ids for g in single]
    assert [g.text for g in batched] == [g.text for g in single]
    assert len({tuple(g.token_ids) for g in batched}) > 1  # the replies differ, so the comparison means something
    assert [g.prompt_tokens for g in batched] == [len(encode_chat(tokenizer, c)) for c in CONVERSATIONS]


def test_seeded_sampling_is_reproducible_and_leaves_global_rng_alone(tiny):
    model, tokenizer = tiny
    config = GenerationConfig(max_new_tokens=16, temperature=1.0, seed=3)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = generate(model, tokenizer, CONVERSATIONS, config)
    after = torch.rand(1)
    b = generate(model, tokenizer, CONVERSATIONS, config)
    c = generate(model, tokenizer, CONVERSATIONS, GenerationConfig(max_new_tokens=16, temperature=1.0, seed=4))
    assert [g.token_ids for g in a] == [g.token_ids for g in b]
    assert [g.token_ids for g in a] != [g.token_ids for g in c]
    assert torch.equal(before, after)


@pytest.mark.parametrize("top_p", [1.0, 0.9])
def test_a_seeded_reply_is_the_same_alone_and_in_any_batch(tiny, top_p):
    """Each conversation samples with its own seed: its draws do not depend on the other rows, their order or the
    batch size, and on CPU neither do the probabilities they are drawn against, so its reply is the same (what lets
    a resumed stage, whose batches hold only the work left, sample what the uninterrupted one would have)."""
    model, tokenizer = tiny
    seeds = [derive_seed(7, i) for i in range(len(CONVERSATIONS))]
    kwargs = {"max_new_tokens": 16, "temperature": 1.0, "top_p": top_p}
    batched = generate(model, tokenizer, CONVERSATIONS, GenerationConfig(**kwargs, seeds=seeds, batch_size=5))
    alone = [generate(model, tokenizer, [c], GenerationConfig(**kwargs, seeds=[s]))[0]
             for c, s in zip(CONVERSATIONS, seeds)]
    order = [3, 0, 4, 1, 2]
    shuffled = generate(model, tokenizer, [CONVERSATIONS[i] for i in order],
                        GenerationConfig(**kwargs, seeds=[seeds[i] for i in order], batch_size=2))
    assert [g.token_ids for g in batched] == [g.token_ids for g in alone]
    assert [shuffled[order.index(i)].token_ids for i in range(5)] == [g.token_ids for g in alone]
    # Sampled, not greedy: other seeds give other replies.
    other = generate(model, tokenizer, CONVERSATIONS, GenerationConfig(**kwargs, seeds=[s + 1 for s in seeds]))
    assert [g.token_ids for g in other] != [g.token_ids for g in batched]
    with pytest.raises(ValueError, match="2 given for 5"):
        generate(model, tokenizer, CONVERSATIONS, GenerationConfig(**kwargs, seeds=seeds[:2]))


def test_derive_seed_is_stable_and_tells_requests_apart():
    assert derive_seed(0, "rt-001", 2, 0) == derive_seed(0, "rt-001", 2, 0)
    assert len({derive_seed(0, "a", step, attempt) for step in range(5) for attempt in range(2)}) == 10
    assert derive_seed(0, "a1", 1) != derive_seed(0, "a", 11)  # the parts stay apart
    assert 0 <= derive_seed(3, "x") < 2**63
    # Fixed across processes and versions: sha256 of the JSON list [1, "x"], first 8 bytes, shifted right by 1.
    import hashlib

    assert derive_seed(1, "x") == int.from_bytes(hashlib.sha256(b'[1, "x"]').digest()[:8], "big") >> 1


@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_logprobs_match_a_forward_pass(tiny, temperature):
    model, tokenizer = tiny
    replies = generate(model, tokenizer, CONVERSATIONS[:3],
                       GenerationConfig(max_new_tokens=12, temperature=temperature, seed=0, logprobs=True))
    for conversation, reply in zip(CONVERSATIONS, replies):
        prompt = encode_chat(tokenizer, conversation)
        ids = torch.tensor([prompt + reply.token_ids])
        with torch.no_grad():
            logits = model(ids).logits[0, len(prompt) - 1 : -1].float()
        if temperature > 0:
            logits = logits / temperature
        expected = torch.log_softmax(logits, -1).gather(-1, torch.tensor(reply.token_ids)[:, None]).squeeze(-1)
        assert len(reply.logprobs) == len(reply.token_ids)
        torch.testing.assert_close(torch.tensor(reply.logprobs), expected, atol=1e-4, rtol=1e-4)


def test_each_sequence_stops_at_its_own_eos(tiny):
    model, tokenizer = tiny
    eos = tokenizer.eos_token_id
    # A near-uniform tiny model emits EOS about once in a few hundred tokens: enough over 48 sampled replies.
    replies = generate(model, tokenizer, CONVERSATIONS * 10, GenerationConfig(max_new_tokens=80, temperature=1.5, seed=0))
    stopped = [r for r in replies if r.finish_reason == "stop"]
    running = [r for r in replies if r.finish_reason == "length"]
    assert stopped and running
    for r in stopped:
        assert r.token_ids[-1] == eos and eos not in r.token_ids[:-1]
    for r in running:
        assert len(r.token_ids) == 80 and eos not in r.token_ids


FEW_SHOT = [
    {"role": "user", "content": "How do I bake bread?"},
    {"role": "assistant", "content": "Mix flour, water, salt and yeast, then let it rise. " * 4},
    {"role": "user", "content": "Critique the reply: is it helpful, honest and harmless?"},
    {"role": "assistant", "content": "It is helpful but could say how long to bake it."},
]


@pytest.mark.parametrize("batch_size", [1, 3])
def test_shared_prefix_cache_keeps_greedy_output_identical(tiny, batch_size):
    model, tokenizer = tiny
    kwargs = {"max_new_tokens": 20, "temperature": 0, "batch_size": batch_size}
    cached = generate(model, tokenizer, CONVERSATIONS, GenerationConfig(**kwargs), prefix=FEW_SHOT)
    uncached = generate(model, tokenizer, CONVERSATIONS, GenerationConfig(**kwargs, prefix_cache=False), prefix=FEW_SHOT)
    plain = [generate(model, tokenizer, [FEW_SHOT + c], GenerationConfig(max_new_tokens=20, temperature=0))[0]
             for c in CONVERSATIONS]
    assert [g.token_ids for g in cached] == [g.token_ids for g in uncached] == [g.token_ids for g in plain]
    assert len({tuple(g.token_ids) for g in cached}) > 1
    assert [g.prompt_tokens for g in cached] == [len(encode_chat(tokenizer, FEW_SHOT + c)) for c in CONVERSATIONS]


@pytest.mark.parametrize("batch_size", [1, 3])
def test_memory_reuses_a_growing_conversation_and_keeps_greedy_output_identical(tiny, batch_size):
    """Turn after turn, a KVMemory computes only new tokens, and the replies match a run that recomputes everything."""
    model, tokenizer = tiny
    config = GenerationConfig(max_new_tokens=12, temperature=0, batch_size=batch_size)
    memory = KVMemory()
    with_memory, without = [list(c) for c in CONVERSATIONS], [list(c) for c in CONVERSATIONS]
    for turn in range(3):
        prefix = FEW_SHOT if turn else None  # the first turn without the prefix, as the critique loop does
        a = generate(model, tokenizer, with_memory, config, prefix=prefix, memory=memory)
        b = generate(model, tokenizer, without, GenerationConfig(**{**config.to_dict(), "prefix_cache": False}),
                     prefix=prefix)
        assert [g.token_ids for g in a] == [g.token_ids for g in b]
        assert [g.prompt_tokens for g in a] == [g.prompt_tokens for g in b]
        for conversations, replies in ((with_memory, a), (without, b)):
            for conversation, reply in zip(conversations, replies):
                conversation += [{"role": "assistant", "content": reply.text}, {"role": "user", "content": "Again."}]
        if turn == 1:
            assert memory.reused_tokens == 0  # turn 0 had no prefix: its keys and values do not apply after one
    assert memory.reused_tokens > 0 and memory.rows
    assert memory.bytes == sum(k.nbytes + v.nbytes for _, layers in memory.rows.values() for k, v in layers)


def test_memory_evicts_the_oldest_rows_to_stay_within_its_budget():
    memory = KVMemory(max_bytes=3 * 2 * 4 * 8)  # three entries of one layer, (1, 1, 8) float32 keys and values
    entry = [(torch.zeros(1, 1, 8), torch.zeros(1, 1, 8))]
    for key in "abcd":
        memory.store(key, [1], entry)
    assert list(memory.rows) == ["b", "c", "d"] and memory.bytes == 3 * 64
    n, layers = memory.lookup("d", [1, 2])
    assert n == 1 and layers[0][0].shape == (1, 1, 8)
    assert memory.lookup("d", [1])[0] == 0  # the last token is always computed, to have logits for it
    assert memory.lookup("d", [3, 1])[0] == 0  # a different first token: nothing reused
    memory.store("huge", [1], [(torch.zeros(1, 100, 8), torch.zeros(1, 100, 8))])
    assert "huge" not in memory.rows


def test_split_prefix_reassembles_each_conversation(tiny):
    _, tokenizer = tiny
    prefix_ids, rest = split_prefix(tokenizer, FEW_SHOT, CONVERSATIONS)
    assert prefix_ids
    for conversation, own in zip(CONVERSATIONS, rest):
        full = tokenizer.apply_chat_template(FEW_SHOT + conversation, tokenize=False, add_generation_prompt=True)
        assert tokenizer.decode(prefix_ids + own) == full


def test_trim_at_eos_and_left_pad():
    assert trim_at_eos([5, 6, 2, 7, 2], {2}) == ([5, 6, 2], "stop")
    assert trim_at_eos([5, 6], {2}) == ([5, 6], "length")
    ids, mask = left_pad([[1, 2, 3], [4]], pad_id=0, device="cpu")
    assert ids.tolist() == [[1, 2, 3], [0, 0, 4]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]


@pytest.mark.parametrize("prefix", [None, FEW_SHOT])
def test_a_conversation_with_no_room_in_the_context_is_not_generated(tiny, prefix):
    """Prompt (with any shared prefix) + max_new_tokens must fit in max_position_embeddings (512 here): at 512 the
    conversation is decoded, at 513 it comes back empty with finish_reason "too_long", before any batch and without
    changing the others' replies. Past the context the tiny model would have written text like any other."""
    model, tokenizer = tiny
    assert model.config.max_position_embeddings == 512
    edge, prompt_tokens = [], 0
    while prompt_tokens < 512 - 24:  # a prompt that leaves room for about 20 new tokens
        edge = [{"role": "user", "content": edge[0]["content"] + "How do I bake bread? " if edge else "Hi. "}]
        prompt_tokens = len(encode_chat(tokenizer, (prefix or []) + edge))
    conversations = CONVERSATIONS[:2] + [edge] + CONVERSATIONS[2:]
    for max_new_tokens, fits in ((512 - prompt_tokens, True), (513 - prompt_tokens, False)):
        config = GenerationConfig(max_new_tokens=max_new_tokens, temperature=0, batch_size=2)
        pairs = list(iter_generate(model, tokenizer, conversations, config, prefix=prefix))
        assert sorted(i for i, _ in pairs) == list(range(len(conversations)))  # each conversation once
        replies = dict(pairs)
        edge_reply = replies[2]
        assert edge_reply.prompt_tokens == prompt_tokens
        if fits:
            assert edge_reply.finish_reason in ("stop", "length") and edge_reply.token_ids
        else:
            assert pairs[0][0] == 2  # reported first, without waiting for a batch
            assert (edge_reply.finish_reason, edge_reply.text, edge_reply.token_ids) == ("too_long", "", [])
        others = generate(model, tokenizer, CONVERSATIONS, config, prefix=prefix)
        assert [replies[i].token_ids for i in (0, 1, 3, 4, 5)] == [g.token_ids for g in others]
        assert all(g.finish_reason != "too_long" for g in others)


def test_cli_generate_prints_a_reply(tiny_model_dir):
    result = CliRunner().invoke(cli, ["generate", "-m", str(tiny_model_dir), "-p", "Hi", "-p", "Bread?",
                                      "--max-new-tokens", "5", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "> Hi" in result.output and "> Bread?" in result.output


@pytest.mark.slow
def test_embedded_model_answers_and_batches_exactly(embedded):
    model, tokenizer = embedded
    questions = ["What is the capital of France?", "Name a primary color.", "What is 2 + 2?"]
    conversations = [[{"role": "user", "content": q}] for q in questions]
    config = GenerationConfig(max_new_tokens=24, temperature=0, batch_size=3)
    batched = generate(model, tokenizer, conversations, config)
    assert "Paris" in batched[0].text and batched[0].finish_reason == "stop"
    single = [generate(model, tokenizer, [c], GenerationConfig(max_new_tokens=24, temperature=0))[0]
              for c in conversations]
    assert [g.token_ids for g in batched] == [g.token_ids for g in single]
    few_shot = [{"role": "user", "content": "What is the capital of Italy?"},
                {"role": "assistant", "content": "The capital of Italy is Rome."}]
    cached = generate(model, tokenizer, conversations, config, prefix=few_shot)
    uncached = generate(model, tokenizer, conversations, GenerationConfig(max_new_tokens=24, temperature=0,
                                                                         prefix_cache=False), prefix=few_shot)
    assert [g.token_ids for g in cached] == [g.token_ids for g in uncached]
