"""Reward models side by side on the same held-out human pairs, beside the rule "prefer the shorter reply" (by
characters, rlaif.stats.length_baselines): each one's accuracy with its 95% bootstrap interval, and each against the
first model and against the rule, the paired difference of accuracies (bootstrap over the pairs) and an exact sign
test on the pairs where the two disagree (rlaif.stats). Writes the per-pair margins next to the table, so a later model can
be compared without scoring the others again.

    python compare.py human_heldout.jsonl rm_human rm_sim --out compare.json
"""

import argparse
import json
from pathlib import Path

import numpy as np

from rlaif import stats
from rlaif.rankings import load_mix
from rlaif.reward import RewardModel


def margins(model_dir: str, rows: list[dict], cache: Path) -> np.ndarray:
    """r(chosen) - r(rejected) per held-out pair, scored once and cached as JSON beside the output."""
    if cache.is_file():
        saved = json.loads(cache.read_text())
        if saved["ids"] == [r["id"] for r in rows]:
            return np.array(saved["margins"])
    scorer = RewardModel.load(model_dir, device="cpu")
    prompts = [r["prompt"] for r in rows]
    chosen = scorer.score(prompts, [r["chosen"][-1]["content"] for r in rows])
    rejected = scorer.score(prompts, [r["rejected"][-1]["content"] for r in rows])
    delta = (chosen - rejected).numpy()
    cache.write_text(json.dumps({"model": model_dir, "ids": [r["id"] for r in rows], "margins": delta.tolist()}))
    return delta


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("heldout", help="human preference rows (rlaif rankings import writes them)")
    parser.add_argument("models", nargs="+", help="reward-model directories; the first is the reference")
    parser.add_argument("--out", default="compare.json")
    args = parser.parse_args()
    rows = [r for r in load_mix([args.heldout])[0] if r["p_chosen"] != 0.5]
    oriented = [r if r["p_chosen"] > 0.5 else {**r, "chosen": r["rejected"], "rejected": r["chosen"]} for r in rows]
    out = Path(args.out)
    results = {}
    right = {}
    for model in args.models:
        delta = margins(model, oriented, out.with_name(f"{out.stem}.{Path(model).name}.margins.json"))
        right[model] = np.where(delta > 0, 1.0, np.where(delta == 0, 0.5, 0.0))  # as P(chosen better): outcomes
        results[model] = {"accuracy": stats.bootstrap(stats.agreement, right[model]).as_dict()}
    shorter = "prefer the shorter reply"
    right[shorter] = stats.length_baselines([r["chosen"][-1]["content"] for r in oriented],
                                            [r["rejected"][-1]["content"] for r in oriented])[shorter]
    results[shorter] = {"accuracy": stats.bootstrap(stats.agreement, right[shorter]).as_dict()}
    reference = args.models[0]
    for model in args.models:
        for other in ([reference] if model != reference else []) + [shorter]:
            results[model]["vs_" + other] = {
                "difference": stats.bootstrap(stats.difference(stats.agreement), right[model], right[other]).as_dict(),
                "sign_test": stats.sign_test(right[model], right[other])}
    summary = {"heldout": args.heldout, "pairs": len(rows), "method": stats.method(len(rows)), "models": results}
    out.write_text(json.dumps(summary, indent=2))
    print(f"{len(rows)} held-out pairs; {summary['method']}")
    for model, r in results.items():
        print(f"{model:>24}  accuracy {stats.Estimate(**r['accuracy']).percent()}")
        for other in (reference, shorter):
            if "vs_" + other in r:
                d, t = r["vs_" + other]["difference"], r["vs_" + other]["sign_test"]
                print(f"{'':>26}vs {other}: {stats.Estimate(**d).percent(points=True)}, sign test {t['for']} for / "
                      f"{t['against']} against, p = {t['p_value']:.3g}")


if __name__ == "__main__":
    main()
