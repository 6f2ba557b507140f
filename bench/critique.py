"""Critique-and-revise throughput: rlaif's batched, prefix-cached loop vs a naive loop, same model and prompts.

    python bench/critique.py                      # default size: 16 prompts, 2 rounds, 64 new tokens, greedy
    python bench/critique.py --prompts 8 --rounds 1

The naive peer is what a straightforward script does: for every prompt and every turn (answer, critique, revision),
render the few-shot examples plus the conversation and call `model.generate` on it alone. rlaif runs the same turns
through `rlaif.critique` (batched by round, the few-shot block's keys and values computed once, each conversation's
kept from turn to turn, finished rows leaving the batch). Both decode greedily with
the same principles, so their texts should match; the table says how many do. Writes bench/results/critique.json.

Two rounds by default (the shipped constitution runs four): from the second round on, each turn continues a
conversation whose keys and values are already cached, which one round never shows; four rounds take too long for
the naive loop on two cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rlaif.constitution import load_constitution
from rlaif.critique import CritiqueConfig, few_shot_messages, run, sample_principles
from rlaif.generate import KVMemory, eos_token_ids, iter_generate
from rlaif.loaders import load_prompts
from rlaif.models import load_model
from rlaif.records import read_jsonl, write_jsonl


def naive(model, tokenizer, prompts, constitution, rounds, max_new_tokens):
    """One `generate` call per prompt per turn, the few-shot block re-encoded every time."""
    prefix = few_shot_messages(constitution)
    eos = eos_token_ids(model, tokenizer)
    traces, tokens = {}, 0

    def reply(messages):
        nonlocal tokens
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                 do_sample=False, temperature=None, top_p=None, top_k=None, eos_token_id=eos,
                                 pad_token_id=tokenizer.pad_token_id)
        new = out[0, ids.shape[1]:].tolist()
        tokens += len(new)
        return tokenizer.decode(new, skip_special_tokens=True).strip()

    for row in prompts:
        principles = sample_principles(constitution.principles, rounds, constitution.critique.seed, row["id"])
        conversation = list(row["prompt"])
        answer = reply(conversation)
        conversation.append({"role": "assistant", "content": answer})
        texts = [answer]
        for principle in principles:
            conversation.append({"role": "user", "content": principle.critique_request})
            critique = reply(prefix + conversation)
            conversation += [{"role": "assistant", "content": critique},
                             {"role": "user", "content": principle.revision_request}]
            revision = reply(prefix + conversation)
            conversation.append({"role": "assistant", "content": revision})
            texts += [critique, revision]
        traces[row["id"]] = texts
    return traces, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    args = parser.parse_args()

    constitution = load_constitution("default")
    pool = load_prompts(ROOT / "examples/prompts/red-team.jsonl") + load_prompts(ROOT / "examples/prompts/helpful.jsonl")
    prompts = [pool[i] for i in sorted(range(len(pool)), key=lambda i: (i % 16, i))][: args.prompts]  # mix both kinds
    model, tokenizer = load_model(args.model, device="cpu")

    with tempfile.TemporaryDirectory() as tmp:
        prompt_file = Path(tmp) / "prompts.jsonl"
        write_jsonl(prompt_file, prompts)
        config = CritiqueConfig(prompts=str(prompt_file), out=tmp, model=args.model, rounds=args.rounds,
                                max_new_tokens=args.max_new_tokens, temperature=0, retry_flagged=False,
                                batch_size=args.batch_size, chunk_size=len(prompts), device="cpu")

        memory = KVMemory()

        def complete(conversations, generation, prefix):  # as the stage binds its model
            return iter_generate(model, tokenizer, conversations, generation, prefix=prefix, memory=memory)

        started = time.perf_counter()
        counts = run(config, complete=complete)
        ours_seconds = time.perf_counter() - started
        ours = {row["id"]: [row["initial"]] + [t for r in row["rounds"] for t in (r["critique"], r["revision"])]
                for row in read_jsonl(Path(tmp) / "critique" / "revisions.jsonl")}
    ours_tokens = counts["generated_tokens"]

    started = time.perf_counter()
    theirs, naive_tokens = naive(model, tokenizer, prompts, constitution, args.rounds, args.max_new_tokens)
    naive_seconds = time.perf_counter() - started

    turns = sum(len(texts) for texts in theirs.values())
    matching = sum(a == b for pid in theirs for a, b in zip(theirs[pid], ours[pid]))
    result = {
        "config": vars(args),
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
                    "torch": torch.__version__, "processor": platform.processor() or platform.machine()},
        "naive": {"seconds": naive_seconds, "tokens": naive_tokens, "tokens_per_second": naive_tokens / naive_seconds},
        "rlaif": {"seconds": ours_seconds, "tokens": ours_tokens, "tokens_per_second": ours_tokens / ours_seconds},
        "speedup": (ours_tokens / ours_seconds) / (naive_tokens / naive_seconds),
        "wall_clock_ratio": naive_seconds / ours_seconds,
        "turns": turns,
        "matching_turns": matching,
    }
    print(f"{'':8} {'seconds':>9} {'tokens':>7} {'tokens/s':>9}")
    for name in ("naive", "rlaif"):
        r = result[name]
        print(f"{name:8} {r['seconds']:9.1f} {r['tokens']:7d} {r['tokens_per_second']:9.1f}")
    print(f"speedup (tokens/s): {result['speedup']:.2f}x   wall clock: {result['wall_clock_ratio']:.2f}x   "
          f"identical turns: {matching}/{turns}")
    out = ROOT / "bench" / "results" / "critique.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
