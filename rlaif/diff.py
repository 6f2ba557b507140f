"""Constitution A/B: what an edit to the constitution changes in the labels, before any training is spent on it.

    rlaif constitution diff default my-constitution.yaml --candidates runs/x/round-1/sample/candidates.jsonl

The same labeler labels the same pairs (both orders) under constitution A and under constitution B. A pair *flips*
when the two labels name different winners. Each pair draws its principles by keys from a seed of the constitution,
the pair id and each principle's id (rlaif.critique.draw_key), so an edit that leaves a principle and the label
settings alone gives that pair the same principle under both unless an added or re-weighted principle outranks it,
and a flip there comes from the text that changed. A pair with an empty reply or two identical replies is not
relabeled (left out and counted). The report lists:

- what changed between A and B: principles added, removed, or edited (any text or the weight), and label settings;
- the flip rate and mean |p_B - p_A| over the pairs;
- per principle: pairs that drew it under B, how many of those flipped, their mean |p_B - p_A|, and whether it
  changed, so the principles that drive the flips (or, short of flips, move the labels) stand out;
- the flipped pairs themselves, with both labels and principles.

Written to OUT (default runs/constitution-diff.json) as one JSON report.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from rlaif.records import ConfigError, Tally, write_atomic


@dataclass
class DiffConfig:
    a: str = "default"  # constitution A (shipped name or path): the one in use
    b: str = ""  # constitution B: the edited one
    candidates: str = ""  # pairs to relabel: candidates.jsonl (rlaif sample) or preference rows
    out: str = "runs/constitution-diff.json"
    labeler: str = "smollm2-135m-instruct"
    limit: int = 64  # pairs read (the first N); those with an empty or identical reply are left out and counted
    batch_size: int = 8
    device: str | None = None

    def __post_init__(self):
        from rlaif.models import check_numbers

        check_numbers(self, "constitution diff", at_least_one=["limit", "batch_size"])


def changes(a, b) -> dict:
    """Principles added, removed and edited from constitution A to B, and label settings that differ."""
    ids_a, ids_b = {p.id: p for p in a.principles}, {p.id: p for p in b.principles}
    edited = sorted(pid for pid in ids_a.keys() & ids_b.keys() if ids_a[pid] != ids_b[pid])
    settings = {k: [v, asdict(b.label)[k]] for k, v in asdict(a.label).items() if asdict(b.label)[k] != v}
    return {"added": sorted(ids_b.keys() - ids_a.keys()), "removed": sorted(ids_a.keys() - ids_b.keys()),
            "edited": edited, "label_settings": settings,
            "examples_changed": a.label_examples != b.label_examples, "templates_changed": a.templates != b.templates}


def label_under(constitution, model, tokenizer, name: str, pairs, batch_size: int, progress: bool, title: str):
    """Both-order soft labels P(first better) of every pair under one constitution, and the principles drawn."""
    from rlaif.generate import progress_bar
    from rlaif.label import Labeler, label_pairs, sample_label_principles

    labeler = Labeler(model, tokenizer, constitution, name=name)
    drawn = [sample_label_principles(constitution, constitution.label.principles_per_comparison, p.id) for p in pairs]
    probabilities = []
    with progress_bar(progress, len(pairs), title) as bar:
        for start in range(0, len(pairs), batch_size):
            chunk = slice(start, start + batch_size)
            for judged in label_pairs(labeler, pairs[chunk], drawn[chunk], both_orders=True):
                probabilities.append(sum(j.p for j in judged) / len(judged))
            bar(len(pairs[chunk]))
    return probabilities, [[p.id for p in ps] for ps in drawn]


def run(config: DiffConfig, progress: bool = False, model=None) -> dict:
    """Label under A and B and write the report; `model` is an already loaded (model, tokenizer) for tests."""
    from rlaif.constitution import load_constitution
    from rlaif.label import load_pairs
    from rlaif.models import load_model

    if not config.b:
        raise ConfigError("b: the edited constitution to compare with is required")
    a, b = load_constitution(config.a), load_constitution(config.b)
    tally = Tally("pairs")
    pairs = load_pairs(config.candidates, tally, config.limit)
    tally.require_some(config.candidates, "a pair needs two different, non-empty replies")
    model, tokenizer = model or load_model(config.labeler, device=config.device)
    p_a, drawn_a = label_under(a, model, tokenizer, config.labeler, pairs, config.batch_size, progress, "labeling (A)")
    p_b, drawn_b = label_under(b, model, tokenizer, config.labeler, pairs, config.batch_size, progress, "labeling (B)")
    flipped = [i for i in range(len(pairs)) if (p_a[i] > 0.5) != (p_b[i] > 0.5) and 0.5 not in (p_a[i], p_b[i])]
    diff = changes(a, b)
    changed = {pid: kind for kind in ("added", "edited") for pid in diff[kind]}
    principles: dict[str, dict] = {}
    for i, ids in enumerate(drawn_b):
        for pid in ids:
            entry = principles.setdefault(pid, {"pairs": 0, "flips": 0, "mean_abs_change": 0.0,
                                                "change": changed.get(pid, "same")})
            entry["pairs"] += 1
            entry["flips"] += i in flipped
            entry["mean_abs_change"] += abs(p_a[i] - p_b[i])
    for entry in principles.values():
        entry["mean_abs_change"] /= entry["pairs"]
    report = {
        "a": config.a, "b": config.b, "candidates": config.candidates, "labeler": config.labeler,
        "pairs": len(pairs), "counts": tally.counts(), "summary": tally.summary(), "changes": diff,
        "flips": len(flipped), "flip_rate": len(flipped) / len(pairs),
        "mean_abs_change": sum(abs(x - y) for x, y in zip(p_a, p_b)) / len(pairs),
        "principles": dict(sorted(principles.items(), key=lambda kv: (-kv[1]["flips"], -kv[1]["mean_abs_change"],
                                                                      kv[0]))),
        "flipped": [{"id": pairs[i].id, "p_a": p_a[i], "p_b": p_b[i], "principles_a": drawn_a[i],
                     "principles_b": drawn_b[i], "prompt": pairs[i].prompt[-1]["content"], "first": pairs[i].first,
                     "second": pairs[i].second} for i in flipped],
    }
    Path(config.out).parent.mkdir(parents=True, exist_ok=True)
    write_atomic(config.out, json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return report


def print_report(report: dict, console) -> None:
    from rich.markup import escape
    from rich.table import Table

    c = report["changes"]
    lines = [f"added: {', '.join(c['added']) or '-'}", f"removed: {', '.join(c['removed']) or '-'}",
             f"edited: {', '.join(c['edited']) or '-'}"]
    if c["label_settings"]:
        lines.append("label settings: " + ", ".join(f"{k} {v[0]} → {v[1]}" for k, v in c["label_settings"].items()))
    for what in ("examples", "templates"):
        if c[f"{what}_changed"]:
            lines.append(f"label {what} changed")
    console.print(escape(f"{report['a']} → {report['b']}:  " + ";  ".join(lines)), soft_wrap=True)
    console.print(f"pairs: {report['summary']}")
    console.print(f"{report['flips']} of {report['pairs']} labels flip ({report['flip_rate']:.1%}); mean |Δp| "
                  f"{report['mean_abs_change']:.4f}")
    table = Table(title="Principles drawn under B")
    for column in ("principle", "change", "pairs", "flips", "mean |Δp|"):
        table.add_column(column, justify="left" if column in ("principle", "change") else "right")
    for pid, entry in report["principles"].items():
        style = "bold" if entry["flips"] or entry["change"] != "same" else None
        table.add_row(pid, entry["change"], str(entry["pairs"]), str(entry["flips"]),
                      f"{entry['mean_abs_change']:.4f}", style=style)
    console.print(table)
    if report["flipped"]:
        flips = Table(title="Flipped pairs: P(first better) under A and B")
        for column in ("pair", "A", "B", "principles (A → B)"):
            flips.add_column(column)
        for row in report["flipped"][:20]:
            flips.add_row(row["id"], f"{row['p_a']:.2f}", f"{row['p_b']:.2f}",
                          f"{', '.join(row['principles_a'])} → {', '.join(row['principles_b'])}")
        console.print(flips)
