"""AI-labeling throughput: rlaif's one-forward-pass soft labels vs a judge that generates its verdict, same model.

    python bench/label.py                  # default: 24 human-labelled hh-rlhf pairs, k = 3 principles
    python bench/label.py --pairs 8 --k 2

Six ways to label the same pairs with the same model, prompt and few-shot examples:
  one order, whole prompt   one forward pass per pair over its whole prompt (few-shot block included), options read
                  off it: first principle, responses in one order;
  one order       the same with rlaif's sharing: the few-shot block computed once, pairs batched;
  both orders     rlaif, first principle, both orders: 2 prompts per pair, scored as a prefix tree so the few-shot
                  block and the conversation are computed once;
  both orders x k the same with k principles: 2k prompts per pair, (per order) both replies computed once;
  explaining judge what common LLM-as-judge scripts do (the MT-Bench pairwise judge of Zheng et al. 2023 and its
                  descendants): per pair, `generate` token by token from the full prompt (first principle, one
                  order) a short explanation and then the verdict, parsed from "The answer is (A)" or "(B)";
                  rlaif's chain-of-thought prompt and few-shot rationales, up to --judge-tokens new tokens;
  verdict-only judge the cheapest generating judge: the same, but the plain prompt, whose few-shot answers are a
                  bare "(A)", so the model answers in a few tokens; generation adds little over one forward pass.
Prints pairs/s of each, the tokens per pair each runs through the model (for the scorers, beyond the few-shot block;
for the judges, the tokens they generate) and the ratios; writes bench/results/label.json.
Needs ../shared/data/hh-harmless-dev.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rlaif import prefix_tree
from rlaif.constitution import load_constitution
from rlaif.evaluate import load_human_pairs
from rlaif.generate import eos_token_ids
from rlaif.label import Labeler, label_pairs, sample_label_principles
from rlaif.models import load_model

DATA = ROOT.parent / "shared" / "data" / "hh-harmless-dev.jsonl"


def generating_judge(labeler: Labeler, pairs, principles, max_new_tokens: int) -> tuple[list[str | None], int]:
    """One `generate` call per pair on the whole prompt; the verdict parsed from the text (the option after "answer
    is" if there is one, else the first option named), and how many tokens were generated."""
    model, tokenizer = labeler.model, labeler.tokenizer
    eos = eos_token_ids(model, tokenizer)
    verdicts, new_tokens = [], 0
    for pair, chosen in zip(pairs, principles):
        messages = labeler.prefix + [labeler.message(pair.prompt, pair.first, pair.second, chosen[0].comparison_question)]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                 do_sample=False, temperature=None, top_p=None, top_k=None, eos_token_id=eos,
                                 pad_token_id=tokenizer.pad_token_id)
        reply = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        new_tokens += out.shape[1] - ids.shape[1]
        match = re.search(r"answer is \(?([AB])\b", reply, re.IGNORECASE) or re.search(r"\(?\b([AB])\b\)?", reply)
        verdicts.append(match.group(1) if match else None)
    return verdicts, new_tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=24)
    parser.add_argument("--k", type=int, default=3, help="principles per pair in the ensemble run")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--judge-tokens", type=int, default=128, help="max new tokens of the explaining judge")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    args = parser.parse_args()
    if not DATA.is_file():
        sys.exit(f"bench/label.py needs {DATA} (hh-rlhf harmless pairs); it is not there")

    pairs = load_human_pairs(DATA, args.pairs)
    constitution = load_constitution("default")
    model, tokenizer = load_model(args.model, device="cpu")
    labeler = Labeler(model, tokenizer, constitution, name=args.model)
    principles = [sample_label_principles(constitution, args.k, p.id) for p in pairs]
    labeler.judge([(pairs[0], principles[0][0], False)])  # the few-shot block's cache, computed once for all runs

    computed = [0]  # tokens run through the model by the prefix-tree scorer (beyond the few-shot block)
    forward = prefix_tree._forward

    def counting_forward(model, rows, *args):
        computed[0] += sum(prefix_tree._length(row) for row in rows)
        return forward(model, rows, *args)

    prefix_tree._forward = counting_forward

    def timed(fn):
        computed[0] = 0
        started = time.perf_counter()
        value = fn()
        return value, time.perf_counter() - started

    def batched(chosen, both):
        judged = []
        for start in range(0, len(pairs), args.batch_size):
            judged += label_pairs(labeler, pairs[start : start + args.batch_size], chosen[start : start + args.batch_size],
                                  both_orders=both)
        return judged

    plain_labeler = Labeler(model, tokenizer, constitution, name=args.model, share_prefix=False)
    plain, plain_s = timed(lambda: label_pairs(plain_labeler, pairs, [[p[0]] for p in principles], both_orders=False))
    plain_tokens = computed[0]
    single, single_s = timed(lambda: batched([[p[0]] for p in principles], False))
    single_tokens = computed[0]
    both, both_s = timed(lambda: batched([[p[0]] for p in principles], True))
    both_tokens = computed[0]
    ensemble, ensemble_s = timed(lambda: batched(principles, True))
    ensemble_tokens = computed[0]
    (verdicts, judge_new), judge_s = timed(lambda: generating_judge(labeler, pairs, principles, 16))
    explainer = Labeler(model, tokenizer, constitution, name=args.model, chain_of_thought=True)
    (explained, explain_new), explain_s = timed(lambda: generating_judge(explainer, pairs, principles, args.judge_tokens))

    def verdict_stats(found, new_tokens):
        return {"new_tokens_per_pair": new_tokens / len(found), "parsed_verdicts": sum(v is not None for v in found),
                "verdicts_matching_one_order": sum((v == "A") == (j[0].shown_first >= 0.5)
                                                   for v, j in zip(found, single) if v is not None)}

    n = len(pairs)
    result = {
        "config": vars(args),
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
                    "torch": torch.__version__, "processor": platform.processor() or platform.machine()},
        "one_order_whole_prompt": {"seconds": plain_s, "pairs_per_second": n / plain_s, "prompts": n,
                                   "tokens_per_pair": plain_tokens / n},
        "one_order": {"seconds": single_s, "pairs_per_second": n / single_s, "prompts": n,
                      "tokens_per_pair": single_tokens / n},
        "both_orders": {"seconds": both_s, "pairs_per_second": n / both_s, "prompts": 2 * n,
                        "tokens_per_pair": both_tokens / n},
        "both_orders_x_k": {"seconds": ensemble_s, "pairs_per_second": n / ensemble_s, "prompts": 2 * args.k * n,
                            "tokens_per_pair": ensemble_tokens / n},
        "explaining_judge": {"seconds": explain_s, "pairs_per_second": n / explain_s, "prompts": n,
                             **verdict_stats(explained, explain_new)},
        "verdict_only_judge": {"seconds": judge_s, "pairs_per_second": n / judge_s, "prompts": n,
                               **verdict_stats(verdicts, judge_new)},
        "cost_both_orders_over_one_order": both_s / single_s,
        "cost_both_orders_x_k_over_one_order": ensemble_s / single_s,
        "cost_both_orders_x_k_over_one_order_whole_prompt": ensemble_s / plain_s,
        "max_probability_difference_shared_vs_whole": max(abs(a[0].shown_first - b[0].shown_first)
                                                           for a, b in zip(single, plain)),
        "speedup_one_order_over_explaining_judge": explain_s / single_s,
        "speedup_both_orders_x_k_over_explaining_judge": explain_s / ensemble_s,
        "speedup_one_order_over_verdict_only_judge": judge_s / single_s,
        "speedup_both_orders_x_k_over_verdict_only_judge": judge_s / ensemble_s,
        "human_agreement": {"one_order": sum(j[0].shown_first >= 0.5 for j in single) / n,
                            "both_orders": sum(j[0].p >= 0.5 for j in both) / n,
                            "both_orders_x_k": sum(sum(x.p for x in j) / len(j) >= 0.5 for j in ensemble) / n},
    }
    print(f"{n} pairs, {args.model}, k = {args.k}")
    print(f"{'':18} {'seconds':>8} {'pairs/s':>8} {'prompts':>8} {'tokens/pair':>12}")
    for name, key in (("one order, whole", "one_order_whole_prompt"), ("one order", "one_order"),
                      ("both orders", "both_orders"), (f"both orders x {args.k}", "both_orders_x_k"),
                      ("explaining judge", "explaining_judge"), ("verdict-only judge", "verdict_only_judge")):
        r = result[key]
        tokens = r.get("tokens_per_pair", r.get("new_tokens_per_pair"))
        print(f"{name:18} {r['seconds']:8.1f} {r['pairs_per_second']:8.2f} {r['prompts']:8d} {tokens:12.1f}")
    print(f"both orders cost {result['cost_both_orders_over_one_order']:.2f}x one order; both orders x {args.k} "
          f"{result['cost_both_orders_x_k_over_one_order']:.2f}x one order with the "
          f"few-shot block shared, {result['cost_both_orders_x_k_over_one_order_whole_prompt']:.2f}x one whole prompt")
    for name, key in (("explaining", "explaining_judge"), ("verdict-only", "verdict_only_judge")):
        r = result[key]
        print(f"one order is {result[f'speedup_one_order_over_{key}']:.1f}x and both orders x {args.k} "
              f"{result[f'speedup_both_orders_x_k_over_{key}']:.1f}x the {name} judge (its verdict parsed for "
              f"{r['parsed_verdicts']}/{n}, matching one order on {r['verdicts_matching_one_order']})")
    out = ROOT / "bench" / "results" / "label.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
