"""A simulated AI labeler of known accuracy, for measuring what reliability-weighted mixing does with a labeler
better than the embedded one: each human pair is relabelled as an AI label that keeps people's choice, except on a
seeded random share (default 25%) where it picks the other reply. Labels are hard (p_chosen 1.0), as an
overconfident labeler's would be; `rlaif reward` calibrates them on the pairs people also labelled.

    python simulate_labeler.py human_extra.jsonl sim_extra.jsonl --flip 0.25 --seed 1
"""

import argparse
import json
import random


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("human", help="human preference rows (rlaif rankings import writes them)")
    parser.add_argument("out", help="AI preference rows to write")
    parser.add_argument("--flip", type=float, default=0.25, help="share of pairs whose winner is flipped")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--labeler", default="simulated-75")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    flipped = n = 0
    with open(args.human, encoding="utf-8") as source, open(args.out, "w", encoding="utf-8") as out:
        for line in source:
            row = json.loads(line)
            n += 1
            if rng.random() < args.flip:
                row["chosen"], row["rejected"] = row["rejected"], row["chosen"]
                flipped += 1
            row.pop("annotator", None)
            row.update(p_chosen=1.0, source="ai", labeler=args.labeler)
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"{n} pairs -> {args.out}: {flipped} flipped ({flipped / max(n, 1):.1%})")


if __name__ == "__main__":
    main()
