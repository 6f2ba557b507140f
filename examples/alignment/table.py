"""The alignment table of docs/alignment.md from an `rlaif eval` summary: every policy's figures on all prompts, each
with its 95% bootstrap interval, the policies named by their directories.

    python table.py aln/eval/eval.json
"""

import argparse
import json
from pathlib import Path

from rlaif.evaluate import shown_figure

# The reward model given to `rlaif eval --reward-model` is the judge RM here; eval's own "judge" is the AI labeler.
COLUMNS = [("reward", "judge RM score"), ("rm_win_vs_base", "judge RM win vs base"),
           ("rm_win_vs_sft", "judge RM win vs SFT"), ("rm_lc_win_vs_sft", "judge RM LC win vs SFT"),
           ("judge_win_vs_sft", "labeler win vs SFT"), ("kl", "KL to base (nats)"), ("tokens", "length (tokens)"),
           ("refusal_rate", "refusals")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("summary", help="eval.json written by `rlaif eval`")
    summary = json.loads(Path(parser.parse_args().summary).read_text())
    results = summary["results"]["all"]
    names = {name: name if name in ("base", "sft") else Path(path).name for name, path in summary["policies"].items()}
    print("| policy | " + " | ".join(title for _, title in COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 1) + "|")
    for name, entry in results.items():
        print(f"| {names.get(name, name)} | " + " | ".join(shown_figure(entry, key) for key, _ in COLUMNS) + " |")
    n = next(iter(results.values()))["prompts"]
    print(f"\nn = {n} prompts; {summary['method']}; judge RM: {summary['reward_model']}; labeler: "
          f"{summary['labeler']}")


if __name__ == "__main__":
    main()
