"""Constitution A/B: what an edit to the constitution changes in the labels, before any training is spent on it.

    rlaif constitution diff default my-constitution.yaml            # what changed in the text; no model is loaded
    rlaif constitution diff default my-constitution.yaml --candidates runs/x/round-1/sample/candidates.jsonl

What changed from A to B: principles added, removed and edited (each edited field's text under A and B), label
settings, templates, and the few-shot label examples *as the labeler reads them* (rlaif.label_prompt.few_shot_block). An
example is asked with the comparison question of the principle it names, so editing that question changes the
few-shot block that every pair is labeled after, whichever principles the pair draws. The critique stage's examples
are compared the same way (they ask their principle's critique and revision requests). No model is needed for this.

With candidates, the same labeler labels the same pairs under A and under B, as `rlaif label` does under each
constitution's label settings (principles per pair, both orders, chain of thought and its clamp). Each pair draws
its principles by keys from the label seed, the pair id and each principle's id (rlaif.critique.draw_key), so an
edit that leaves a principle and the label settings alone gives that pair the same principle under both unless an
added or re-weighted principle outranks it. A pair with an empty reply or two identical replies, or whose labeling
prompt does not fit in the labeler's context under A or B, is not relabeled (left out and counted).

A pair *flips* when its labels P(first better) under A and B fall on different sides of 0.5. A flip is *confident*
when neither label is within `min_margin` of 0.5, that is neither is one `rlaif label` flags low_confidence: 0.5007
to 0.4913 is a flip, not a confident one. The mean |p_B - p_A| says how far the labels moved, flips or not.

Each flip is put on what changed in what its pair's labeler read: the added, removed or edited principles the pair
drew (under A or B); for a pair that drew only unchanged principles, the changed inputs every pair reads (the
few-shot examples, the label template, the label settings), or "nothing changed" when none did (a labeler that is
not deterministic). A flip is never put on an unchanged principle. The report lists:

- what changed (above);
- flips, confident flips, the flip rate and the mean |p_B - p_A| over the pairs;
- per principle drawn under B (a changed one: under A or B): its pairs, the flips put on it and their mean
  |p_B - p_A|;
  per shared input that changed: the pairs that drew only unchanged principles and the flips put on it;
- the flipped pairs, with both labels, the principles drawn and the causes.

Written to OUT (default runs/constitution-diff.json) as one JSON report.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

from rlaif.records import ConfigError, Tally, dumps_json, write_atomic

# What every pair's labeling prompt reads, besides its own principles.
SHARED = ("few-shot examples", "label template", "label settings")
NOTHING = "nothing changed"


@dataclass
class DiffConfig:
    a: str = "default"  # constitution A (shipped name or path): the one in use
    b: str = ""  # constitution B: the edited one
    candidates: str = ""  # pairs to relabel: candidates.jsonl (rlaif sample) or preference rows; none: text only
    out: str = "runs/constitution-diff.json"
    labeler: str = "smollm2-135m-instruct"
    limit: int = 64  # pairs read (the first N); those with an empty or identical reply are left out and counted
    min_margin: float = 0.05  # a flip is confident when both labels are this far from 0.5 (label's low_confidence)
    batch_size: int = 8
    device: str | None = None

    def __post_init__(self):
        from rlaif.models import check_numbers

        check_numbers(self, "constitution diff", at_least_one=["limit", "batch_size"],
                      within={"min_margin": (0.0, 0.5)})


def edits(a, b) -> dict:
    """The text of what changed from A to B, each as [A, B]: `principles` {id: {field: [A, B]}} of every edited
    principle; `examples`, the few-shot label examples the labeler reads differently ({example: position from 1,
    principle: the one it names, change: edited, added or removed}), whatever changed them (their own text, the
    question of the principle they name, the template); `critique_examples`, the same for the critique stage's
    few-shot conversations (which ask the critique and revision requests of the principle they name); `templates`
    {name: [A, B]} (null where a constitution has none of that name)."""
    from rlaif.constitution import Principle
    from rlaif.critique import few_shot_messages
    from rlaif.label_prompt import few_shot_block

    old = {p.id: p for p in a.principles}
    principles = {p.id: {f.name: [getattr(old[p.id], f.name), getattr(p, f.name)] for f in fields(Principle)
                         if f.compare and getattr(old[p.id], f.name) != getattr(p, f.name)}
                  for p in b.principles if p.id in old and old[p.id] != p}
    templates = {name: [a.templates.get(name), b.templates.get(name)] for name in sorted(a.templates | b.templates)
                 if a.templates.get(name) != b.templates.get(name)}
    return {"principles": principles,
            "examples": _examples(a.label_examples, b.label_examples, 2,
                                  *(few_shot_block(c, c.label.chain_of_thought) for c in (a, b))),
            "critique_examples": _examples(a.critique_examples, b.critique_examples, 6, few_shot_messages(a),
                                           few_shot_messages(b)),
            "templates": templates}


def _examples(examples_a: list, examples_b: list, per: int, shown_a: list, shown_b: list) -> list[dict]:
    """The examples whose messages as shown to the model (`per` messages each, in order) differ from A to B."""
    named = examples_b + examples_a[len(examples_b) :]  # B's, and those B dropped
    return [{"example": i + 1, "principle": named[i].principle,
             "change": "added" if i >= len(examples_a) else "removed" if i >= len(examples_b) else "edited"}
            for i in range(len(named)) if shown_a[per * i : per * (i + 1)] != shown_b[per * i : per * (i + 1)]]


def changes(a, b) -> dict:
    """What changed from constitution A to B: principles `added`, `removed` and `edited` (any field, the weight
    included), `label_settings` and `critique_settings` ({name: [A, B]}; no label reads the critique settings, but
    the SFT data the critique loop writes does), `examples_changed` (the few-shot block as the labeler reads it
    differs: see `edits`) and `templates_changed` (any template differs)."""
    ids_a, ids_b = {p.id: p for p in a.principles}, {p.id: p for p in b.principles}
    edited = sorted(pid for pid in ids_a.keys() & ids_b.keys() if ids_a[pid] != ids_b[pid])
    def changed(x, y) -> dict:
        return {k: [v, asdict(y)[k]] for k, v in asdict(x).items() if asdict(y)[k] != v}

    text = edits(a, b)
    return {"added": sorted(ids_b.keys() - ids_a.keys()), "removed": sorted(ids_a.keys() - ids_b.keys()),
            "edited": edited, "label_settings": changed(a.label, b.label),
            "critique_settings": changed(a.critique, b.critique), "examples_changed": bool(text["examples"]),
            "templates_changed": bool(text["templates"])}


def label_under(labeler, pairs, drawn, batch_size: int, progress: bool, title: str) -> list[float]:
    """P(first better) of every pair under its drawn principles, as `rlaif label` computes it under the labeler's
    constitution's label settings (orders averaged, chain-of-thought probabilities clamped)."""
    from rlaif.generate import progress_bar
    from rlaif.label import label_pairs

    settings = labeler.constitution.label
    clamp_to = settings.clamp if labeler.chain_of_thought else None
    probabilities = []
    with progress_bar(progress, len(pairs), title) as bar:
        for start in range(0, len(pairs), batch_size):
            chunk = slice(start, start + batch_size)
            for judged in label_pairs(labeler, pairs[chunk], drawn[chunk], settings.both_orders, clamp_to):
                probabilities.append(sum(j.p for j in judged) / len(judged))
            bar(len(pairs[chunk]))
    return probabilities


def run(config: DiffConfig, progress: bool = False, model=None) -> dict:
    """Write and return the report (see the module docstring; keys in docs/data-contract.md). Without candidates
    it holds what changed only, and no model is loaded. `model` is an already loaded (model, tokenizer) for tests.
    Raises ConfigError without B, DataError (before loading the labeler) when no pair is left to relabel."""
    from rlaif.constitution import load_constitution

    if not config.b:
        raise ConfigError("b: the edited constitution to compare with is required")
    a, b = load_constitution(config.a), load_constitution(config.b)
    diff = changes(a, b)
    report = {"a": config.a, "b": config.b, "candidates": config.candidates, "changes": diff, "edits": edits(a, b)}
    if config.candidates:
        report.update(_relabel(config, a, b, diff, model, progress))
    Path(config.out).parent.mkdir(parents=True, exist_ok=True)
    write_atomic(config.out, dumps_json(report))
    return report


def _relabel(config: DiffConfig, a, b, diff: dict, model, progress: bool) -> dict:
    """Label the candidates under A and under B; the report's keys from `labeler` on."""
    from rlaif.label import Labeler, load_pairs, sample_label_principles
    from rlaif.label_prompt import label_template

    tally = Tally("pairs")
    pairs = load_pairs(config.candidates, tally, config.limit)
    tally.require_some(config.candidates, "a pair needs two different, non-empty replies")
    if model is None:
        from rlaif.models import load_model

        model = load_model(config.labeler, device=config.device)
    labelers = [Labeler(*model, c, chain_of_thought=c.label.chain_of_thought, name=config.labeler) for c in (a, b)]
    drawn = [{p.id: sample_label_principles(c, c.label.principles_per_comparison, p.id) for p in pairs}
             for c in (a, b)]
    fitting = [p for p in pairs if all(lab.fits(p, d[p.id]) for lab, d in zip(labelers, drawn))]
    tally.used -= len(pairs) - len(fitting)
    tally.leave_out("too_long", len(pairs) - len(fitting))
    tally.require_some(config.candidates, "no pair's labeling prompts fit in the labeler's context under both A "
                                          "and B; use a labeler with a longer context")
    pairs = fitting
    drawn_a, drawn_b = ([[p.id for p in d[pair.id]] for pair in pairs] for d in drawn)
    p_a, p_b = (label_under(lab, pairs, [d[pair.id] for pair in pairs], config.batch_size, progress,
                            f"labeling ({name})") for lab, d, name in zip(labelers, drawn, "AB"))
    moved = [abs(x - y) for x, y in zip(p_a, p_b)]
    flipped = [(x > 0.5) != (y > 0.5) and 0.5 not in (x, y) for x, y in zip(p_a, p_b)]
    confident = [f and min(abs(x - 0.5), abs(y - 0.5)) >= config.min_margin for f, x, y in zip(flipped, p_a, p_b)]

    # What each pair's labeler read that changed: its changed principles, else what every pair reads.
    kind = {pid: k for k in ("added", "removed", "edited") for pid in diff[k]}
    shared = [name for name, changed in zip(SHARED, (
        diff["examples_changed"],
        label_template(a, a.label.chain_of_thought) != label_template(b, b.label.chain_of_thought),
        bool(diff["label_settings"]))) if changed]
    causes = [sorted({pid for pid in da + db if pid in kind}) or shared or [NOTHING]
              for da, db in zip(drawn_a, drawn_b)]
    unchanged = [i for i, (da, db) in enumerate(zip(drawn_a, drawn_b)) if not any(pid in kind for pid in da + db)]

    def row(change: str, members: list[int], name: str) -> dict:
        return {"change": change, "pairs": len(members),
                "flips": sum(flipped[i] and name in causes[i] for i in members),
                "confident_flips": sum(confident[i] and name in causes[i] for i in members),
                "mean_abs_change": sum(moved[i] for i in members) / len(members)}

    members: dict[str, list[int]] = {}
    for i, (da, db) in enumerate(zip(drawn_a, drawn_b)):
        for pid in db + [pid for pid in da if pid in kind and pid not in db]:  # a changed one drawn only under A
            members.setdefault(pid, []).append(i)
    principles = {pid: row(kind.get(pid, "same"), ids, pid) for pid, ids in members.items()}
    common = {name: row("same" if name == NOTHING else "changed", unchanged, name)
              for name in shared or [NOTHING]} if unchanged else {}
    n = len(pairs)
    return {
        "labeler": config.labeler, "pairs": n, "counts": tally.counts(), "summary": tally.summary(),
        "min_margin": config.min_margin, "flips": sum(flipped), "confident_flips": sum(confident),
        "flip_rate": sum(flipped) / n, "mean_abs_change": sum(moved) / n,
        "principles": dict(sorted(principles.items(), key=lambda kv: (-kv[1]["flips"], -kv[1]["mean_abs_change"],
                                                                      kv[0]))),
        "shared": common,
        "flipped": [{"id": pairs[i].id, "p_a": p_a[i], "p_b": p_b[i], "confident": confident[i],
                     "principles_a": drawn_a[i], "principles_b": drawn_b[i], "causes": causes[i],
                     "prompt": pairs[i].prompt[-1]["content"], "first": pairs[i].first, "second": pairs[i].second}
                    for i in range(n) if flipped[i]],
    }


def print_report(report: dict, console) -> None:
    from rich.table import Table

    from rlaif.cli import shown as escape  # the texts are a user's files: terminal-safe, markup escaped

    c, text = report["changes"], report["edits"]
    lines = [f"added: {', '.join(c['added']) or '-'}", f"removed: {', '.join(c['removed']) or '-'}",
             f"edited: {', '.join(c['edited']) or '-'}"]
    if c["label_settings"]:
        lines.append("label settings: " + ", ".join(f"{k} {v[0]} → {v[1]}" for k, v in c["label_settings"].items()))
    if c["critique_settings"]:
        lines.append("critique settings (SFT data, not labels): " + ", ".join(
            f"{k} {v[0]} → {v[1]}" for k, v in c["critique_settings"].items()))
    console.print(escape(f"{report['a']} → {report['b']}:  " + ";  ".join(lines)), soft_wrap=True)
    for pid, changed in text["principles"].items():
        for name, (old, new) in changed.items():
            console.print(escape(f"  {pid}.{name}\n    A: {old}\n    B: {new}"), soft_wrap=True)
    if text["examples"]:
        shown = ", ".join(f"{e['example']} ({e['principle']}, {e['change']})" for e in text["examples"])
        console.print(escape(f"  few-shot label examples as the labeler reads them: {shown}. Every pair is labeled "
                             "after them, so any label can move, whichever principles its pair draws."),
                      soft_wrap=True)
    if text["critique_examples"]:
        shown = ", ".join(f"{e['example']} ({e['principle']}, {e['change']})" for e in text["critique_examples"])
        console.print(escape(f"  few-shot critique examples as the critique stage reads them: {shown}. Every "
                             "prompt's critiques follow them, so the SFT data can change."), soft_wrap=True)
    if text["templates"]:
        console.print(escape(f"  templates changed: {', '.join(text['templates'])}"), soft_wrap=True)
    if not report["candidates"]:
        console.print("no pairs relabeled: give --candidates FILE to see which labels flip")
        return
    console.print(f"pairs: {report['summary']}")
    console.print(f"{report['flips']} of {report['pairs']} labels flip ({report['flip_rate']:.1%}), "
                  f"{report['confident_flips']} with both labels beyond the low-confidence margin "
                  f"{report['min_margin']:g}; mean |Δp| {report['mean_abs_change']:.4f}")
    table = Table(title="What moved the labels: flips are put on the changed inputs their pair read")
    for column in ("principle or input", "change", "pairs", "flips", "confident", "mean |Δp|"):
        table.add_column(column, justify="left" if column in ("principle or input", "change") else "right")
    for name, entry in [*report["principles"].items(), *report["shared"].items()]:
        blamed = entry["change"] != "same" or name == NOTHING  # a flip there: a labeler that is not deterministic
        table.add_row(name, entry["change"], str(entry["pairs"]), str(entry["flips"]) if blamed else "-",
                      str(entry["confident_flips"]) if blamed else "-", f"{entry['mean_abs_change']:.4f}",
                      style="bold" if entry["flips"] else None)
    console.print(table)
    moved = {name: e["flips"] for name, e in report["shared"].items() if e["flips"]}
    if NOTHING in moved:
        console.print(f"{moved[NOTHING]} flips on pairs whose labeler read nothing that changed: the labeler is "
                      "not deterministic, so read the other flips with care.")
    elif moved:
        console.print(escape(f"{max(moved.values())} flips on pairs that drew only unchanged principles come from "
                             f"the changed {' and '.join(moved)}, not from those principles."), soft_wrap=True)
    if report["flipped"]:
        flips = Table(title="Flipped pairs: P(first better) under A and B")
        for column in ("pair", "A", "B", "principles (A → B)", "causes"):
            flips.add_column(column)
        for row in report["flipped"][:20]:
            flips.add_row(escape(row["id"]), f"{row['p_a']:.4f}", f"{row['p_b']:.4f}",
                          f"{', '.join(row['principles_a'])} → {', '.join(row['principles_b'])}",
                          escape(", ".join(row["causes"])))
        console.print(flips)
