"""Reward-model training speed: batches grouped by length vs shuffled batches, same pairs, same model, same steps.

    python bench/reward.py                 # default: the first 64 hh-rlhf harmless pairs, batch 8, LoRA
    python bench/reward.py --pairs 64 --full

A batch of pairs is padded to its longest sequence, and conversations vary a lot in length (hh-rlhf harmless:
median 160 tokens, 90th percentile 330, longest over 1,000 with SmolLM2's chat template), so a shuffled batch
computes many pad tokens. `rlaif reward` groups pairs of similar length into batches (`group_by_length`, on by
default: transformers' LengthGroupedSampler, which sorts within random megabatches and shuffles the batches) and
computes fewer. Both runs train `rlaif.reward.run` for one epoch over the same pairs; the time is the training call
alone (not loading, not scoring). Prints seconds, pairs/s, the tokens computed (pads included) against the real
tokens, and the ratio; writes bench/results/reward.json. Needs ../shared/data/hh-harmless-dev.jsonl.
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

from rlaif import models, reward
from rlaif.loaders import load_hh_preferences

DATA = ROOT.parent / "shared" / "data" / "hh-harmless-dev.jsonl"


def train_once(args, data: Path, grouped: bool) -> dict:
    """One `rlaif.reward.run` in a fresh folder: the training call's seconds and the tokens its batches held."""
    tokens = {"computed": 0, "real": 0}
    classes = reward._trainer_classes

    def counting_classes():
        trainer_cls, collator_cls = classes()

        class CountingCollator(collator_cls):
            def torch_call(self, examples):
                batch = super().torch_call(examples)
                tokens["computed"] += batch["input_ids"].numel()
                tokens["real"] += int(batch["attention_mask"].sum())
                return batch

        return trainer_cls, CountingCollator

    timed = {}
    train_and_save = models.train_and_save  # imported by reward.run when it runs

    def timed_train(*a, **k):
        started = time.perf_counter()
        value = train_and_save(*a, **k)
        timed["seconds"] = time.perf_counter() - started
        return value

    reward._trainer_classes, models.train_and_save = counting_classes, timed_train
    try:
        with tempfile.TemporaryDirectory() as out:
            config = reward.RewardConfig(data=[str(data)], out=out, model=args.model, lora=not args.full,
                                         batch_size=args.batch_size, max_length=args.max_length, epochs=1,
                                         eval_fraction=0.0, stats_samples=1, group_by_length=grouped, device="cpu")
            metrics = reward.run(config, progress=False)
    finally:
        reward._trainer_classes, models.train_and_save = classes, train_and_save
    return {"seconds": timed["seconds"], "steps": metrics["train"]["steps"], "pairs": metrics["train"]["pairs"],
            "pairs_per_second": metrics["train"]["pairs"] / timed["seconds"], "tokens_computed": tokens["computed"],
            "tokens_real": tokens["real"], "pad_share": 1 - tokens["real"] / tokens["computed"],
            "loss": metrics["train"]["loss"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--full", action="store_true", help="train every weight (default: LoRA)")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    args = parser.parse_args()
    if not DATA.is_file():
        sys.exit(f"bench/reward.py needs {DATA} (hh-rlhf harmless pairs); it is not there")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "pairs.jsonl"
        data.write_text("".join(json.dumps(row) + "\n" for row in load_hh_preferences(DATA, args.pairs, skip_empty=True)))
        shuffled = train_once(args, data, grouped=False)
        grouped = train_once(args, data, grouped=True)

    result = {
        "config": vars(args),
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
                    "torch": torch.__version__, "processor": platform.processor() or platform.machine()},
        "shuffled": shuffled, "grouped_by_length": grouped,
        "speedup_grouped_over_shuffled": shuffled["seconds"] / grouped["seconds"],
        "tokens_ratio_shuffled_over_grouped": shuffled["tokens_computed"] / grouped["tokens_computed"],
    }
    print(f"{grouped['pairs']} pairs, {args.model}, batch {args.batch_size}, {'full' if args.full else 'LoRA'}, "
          f"{grouped['steps']} steps")
    print(f"{'':18} {'seconds':>8} {'pairs/s':>8} {'tokens':>8} {'real':>8} {'pads':>6}")
    for name, r in (("shuffled", shuffled), ("grouped by length", grouped)):
        print(f"{name:18} {r['seconds']:8.1f} {r['pairs_per_second']:8.2f} {r['tokens_computed']:8d} "
              f"{r['tokens_real']:8d} {r['pad_share']:6.1%}")
    print(f"grouped by length: {result['speedup_grouped_over_shuffled']:.2f}x the pairs/s of shuffled batches, "
          f"{result['tokens_ratio_shuffled_over_grouped']:.2f}x fewer tokens computed")
    out = ROOT / "bench" / "results" / "reward.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
