"""Human rankings in, and the mix of preference sources a reward model trains on.

    rlaif rankings import team_rankings.jsonl --out runs/x/human.jsonl [--ties skip|half|error]

**Import.** A ranking of K responses to one prompt becomes every pair it implies: responses ranked 2, 1, 3 give
(2nd over 1st), (2nd over 3rd) and (1st over 3rd), each a preference row (docs/data-contract.md) with `source: human`,
`p_chosen: 1.0` and the annotator when given. Two tied responses are a pair too, read and counted like the others:
left out (`tie`, with `skip`, the default), labelled 0.5 (`half`), or an error (`error`, for files that should have
none). Accepted input, JSONL, CSV or TSV:

| rows | fields |
|---|---|
| rankings | `prompt`, `responses`, `ranks` (1 = best) or `scores` (higher is better); optional `id`, `annotator` |
| pairs | `prompt`, `chosen`, `rejected` (text or chat messages); optional `id`, `annotator` |
| hh-rlhf | `chosen` and `rejected` transcripts ("\\n\\nHuman: ... \\n\\nAssistant: ...") |
| labels | preference rows that carry `p_chosen` (`rlaif label`'s, an earlier import's, a script's) |
| CSV, long | one response per line: `prompt`, `response`, `rank` or `score`; optional `id` and `annotator` |
| CSV, pairs | `prompt`, `chosen`, `rejected`; optional `id`, `annotator`, and `p_chosen`, `source`, `labeler` |
| rank page answers | `rlaif rank serve`'s `rankings.jsonl`: `answer` and `undo` events (rows with `event`) |
| Label Studio | its JSON export (a JSON list) of the tasks `rlaif rankings export` wrote: `data`, `annotations` |

Any of the first six may give a `weight`. The last two (rlaif.rank_export, recognised by their content) give one
pair per annotator and task, from each one's final answer, with the `annotator`, the `seconds` they took and their
`note`, and, where the export's tasks.jsonl is in the same folder, how the export chose the pair (`why`) and the AI's
label of it (`ai_p`, facing `chosen`; `mix` turns it with the row); skips (Label Studio: cancelled annotations) are
left out and counted.

**Labels stay labels.** A row that carries `p_chosen` is a label, never turned into a hard human one: it is checked
and kept as it is (`p_chosen`, `source`, `labeler` and every other field; `--ties` is for rankings, and `--annotator`
only names `source: human` rows that name no one). A file holds labels, or rankings and pairs, not both: the first
row that differs from line 1 is an error naming its line.

**CSV and TSV** are read as spreadsheets export them (`loaders.read_csv`): column names in any case and spacing,
other columns (a `Timestamp`) ignored, empty rows skipped, missing trailing cells read as empty (so the column's own
check names them), the delimiter (comma, semicolon or tab) taken from the header line, a tab for `.tsv`. The lines of
one ranking share an `id`; without one, they are the lines of one prompt by one annotator, which must be together: a
prompt an annotator ranks in two separate blocks is an error naming both (an `id` column tells two rankings apart).

Every row is checked before anything is written, and the output is written whole and atomically: a bad file gives an
error naming its file, line and field (a CSV column), and no output. Ranks, scores and weights must be finite numbers
(a `NaN` score is a missing label, not a loss); a row's `weight` (>= 0) goes to each of its pairs, and a pair of
weight 0 is left out and counted (`zero_weight`; `load_preferences` keeps it for the trainer, which counts it). A pair
whose two replies are the same text is left out and counted, as is (with `skip_empty`) a pair with an empty reply.
Several annotators may rank the same prompt: each ranking gives its own pairs, with its `annotator`; a row without
an `id` gets a content id that includes the annotator, and an explicit id shared by several annotators gets
`-ANNOTATOR` appended to its pairs' ids. The same ranking twice (same prompt, replies in any order and annotator, or
the same id) is an error naming both lines.

**Mixing.** `mix` takes several preference files, each with a weight. The same pair (same prompt, same two responses,
in either order) labelled by several sources becomes one row: its `p_chosen` the weighted mean of the labels (each
turned to face the same way), its weight their sum, and `provenance` listing every source's label. Because the
soft-label loss is linear in the label, that one row trains exactly like the separate rows would. Where people and
the AI labeled the same pair, the agreement table reports how often they pick the same winner, with the rows where
they don't; `human_overrides` drops the AI's label on those conflicts. The weights are the user's: the reward stage
reads the files (`load_sources`), weighs and calibrates each AI labeler by its measured agreement with people, and
only then mixes (rlaif.reward, "Reliability").
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlaif.loaders import CSV_SUFFIXES, as_prompt, content_id, parse_transcript, read_csv, response_text
from rlaif.records import (
    ConfigError,
    DataError,
    Message,
    PreferenceRow,
    Tally,
    iter_jsonl,
    number,
    outcome,
    reply_problem,
    split_weight,
    write_jsonl,
)

TIES = ("skip", "half", "error")
SOURCES = ("human", "ai", "critique")
LABEL_MODES = ("compare", "contrast", "score", "contrastive")  # rlaif label's modes, and RLCD's (rlaif sample)
# How to get past an empty reply: `rlaif rankings import`'s flag, or the setting in a recipe (`rlaif run`).
EMPTY_HINT = "--skip-empty, or rankings: {skip_empty: true} in a recipe, leaves such pairs out"
TIES_HINT = "--ties half, or rankings: {ties: half} in a recipe, keeps tied pairs labelled 0.5"


@dataclass
class ImportConfig:
    rankings: str = ""  # the file to import: rankings, pairs, hh-rlhf transcripts or labels (JSONL, CSV or TSV)
    out: str = "human.jsonl"  # preference rows (a .jsonl file), written atomically
    ties: str = "skip"  # tied responses: skip (left out, counted), half (a pair labelled 0.5) or error
    annotator: str | None = None  # annotator id for rows that name none
    skip_empty: bool = False  # leave out pairs with an empty response (counted) instead of stopping at the first

    def __post_init__(self):
        if self.ties not in TIES:
            raise DataError("rankings settings", None, "ties", f"expected one of {', '.join(TIES)}, not {self.ties!r}")
        out = Path(self.out)
        if out.suffix.lower() != ".jsonl":
            raise ConfigError(f"out: {self.out} would hold JSONL preference rows; name it .jsonl")
        if out.is_dir():
            raise ConfigError(f"out: {self.out} is a directory; give the .jsonl file to write in it, e.g. "
                              f"{out / 'human.jsonl'}")
        blocker = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
        if blocker is not None:
            raise ConfigError(f"out: {self.out} cannot be written: {blocker} is a file, not a directory")
        if self.rankings and out.exists() and Path(self.rankings).exists() and out.samefile(self.rankings):
            raise ConfigError(f"out: {self.out} is the file being imported; writing the pairs there would replace "
                              "your rankings: give another .jsonl file")


# --------------------------------------------------------------------------------------------------------------------
# Rankings to pairs


def ranking_pairs(row_id: str, prompt: list[Message], responses: list[str], ranks: list[float],
                  annotator: str | None = None) -> list[PreferenceRow]:
    """Every pair a ranking implies, ties included (labelled 0.5; the reader skips or keeps them). `ranks`: lower
    is better (1 = best); scores are passed negated. A pair i < j gets id ROW-i-j (0-based response indices) and
    faces its winner: `chosen` is the better-ranked response."""
    pairs: list[PreferenceRow] = []
    for i in range(len(responses)):
        for j in range(i + 1, len(responses)):
            winner, loser = (j, i) if ranks[j] < ranks[i] else (i, j)
            pair: PreferenceRow = {"id": f"{row_id}-{i}-{j}", "prompt": prompt,
                                   "chosen": [{"role": "assistant", "content": responses[winner]}],
                                   "rejected": [{"role": "assistant", "content": responses[loser]}],
                                   "p_chosen": 0.5 if ranks[i] == ranks[j] else 1.0, "source": "human"}
            if annotator:
                pair["annotator"] = annotator
            pairs.append(pair)
    return pairs


def _response_text(value: Any, path: Path, line: int, name: str, allow_empty: bool = False) -> str:
    """A response given as text or as one assistant message (or a list ending with one); empty only if allowed."""
    value = response_text(value, path, line, name)
    if not value.strip() and not allow_empty:
        raise DataError(path, line, name, f"is empty ({EMPTY_HINT})")
    return value


def _ranks(obj: dict, n: int, ties: str, path: Path, line: int) -> list[float]:
    """Ranks (lower is better) from a row's `ranks` or `scores`, checked against its `n` responses."""
    if ("ranks" in obj) == ("scores" in obj):
        raise DataError(path, line, "ranks", "expected exactly one of 'ranks' (1 = best) or 'scores' (higher is better)")
    name = "ranks" if "ranks" in obj else "scores"
    values = obj[name]
    if not isinstance(values, list):
        raise DataError(path, line, name, "expected a list of numbers, one per response")
    if len(values) != n:
        raise DataError(path, line, name, f"has {len(values)} entries for {n} responses")
    for i, value in enumerate(values):  # ranks start at 1, the best response
        number(value, path, line, f"{name}[{i}]", minimum=1 if name == "ranks" else None)
    if ties == "error" and len(set(values)) < len(values):
        duplicate = next(v for v in values if values.count(v) > 1)
        raise DataError(path, line, name, f"tie: {duplicate} appears more than once (ties are off; --ties skip or half "
                                          f"allows them)")
    return [float(v) for v in values] if name == "ranks" else [-float(v) for v in values]


def _annotator(obj: dict, default: str | None, path: Path, line: int) -> str | None:
    value = obj.get("annotator", default)
    if value is not None and not isinstance(value, (str, int)):
        raise DataError(path, line, "annotator", "expected an id (text)")
    return None if value is None or value == "" else str(value)


def _row_id(obj: dict, path: Path, line: int, content: list, annotator: str | None) -> str:
    """The row's own id, or a content id; the annotator is part of the content, so two people's labels of the
    same pair get two ids."""
    if "id" in obj:
        if not isinstance(obj["id"], (str, int)) or str(obj["id"]) == "":
            raise DataError(path, line, "id", "expected non-empty text")
        return str(obj["id"])
    return content_id(content + [annotator] if annotator else content, "h")


def object_pairs(obj: dict, path: Path, line: int, ties: str = "skip", annotator: str | None = None,
                 skip_empty: bool = False) -> list[PreferenceRow]:
    """The preference rows of one input object (a ranking, a pair or an hh-rlhf transcript pair), tied pairs
    included (p_chosen 0.5; `ties="error"` refuses them), each with the row's `weight` when it has one. An empty
    response is an error unless `skip_empty`, which lets its pairs through for the caller to count and leave out."""
    if not isinstance(obj, dict):
        raise DataError(path, line, None, "expected a JSON object")
    who = _annotator(obj, annotator, path, line)
    if "responses" in obj:
        if "prompt" not in obj:
            raise DataError(path, line, "prompt", "missing")
        prompt = as_prompt(obj["prompt"], path, line, "prompt")
        responses = obj["responses"]
        if not isinstance(responses, list) or len(responses) < 2:
            raise DataError(path, line, "responses", "expected a list of at least two responses")
        texts = [_response_text(r, path, line, f"responses[{i}]", skip_empty) for i, r in enumerate(responses)]
        ranks = _ranks(obj, len(texts), ties, path, line)
        pairs = ranking_pairs(_row_id(obj, path, line, [prompt, texts], who), prompt, texts, ranks, who)
    elif "chosen" in obj or "rejected" in obj:
        for name in ("chosen", "rejected"):
            if name not in obj:
                raise DataError(path, line, name, "missing")
        if "prompt" in obj:
            prompt = as_prompt(obj["prompt"], path, line, "prompt")
            chosen = _response_text(obj["chosen"], path, line, "chosen", skip_empty)
            rejected = _response_text(obj["rejected"], path, line, "rejected", skip_empty)
        else:  # hh-rlhf: two transcripts that share every turn but the last
            sides = {}
            for name in ("chosen", "rejected"):
                if not isinstance(obj[name], str):
                    raise DataError(path, line, name, "expected an hh-rlhf transcript (or give a 'prompt' field)")
                try:
                    sides[name] = parse_transcript(obj[name])
                except ValueError as e:
                    raise DataError(path, line, name, str(e)) from None
                if sides[name][-1]["role"] != "assistant":
                    raise DataError(path, line, name, "transcript does not end with an Assistant turn")
            if sides["chosen"][:-1] != sides["rejected"][:-1]:
                raise DataError(path, line, "rejected", "chosen and rejected differ before their last Assistant turn")
            prompt = as_prompt(sides["chosen"][:-1], path, line, "chosen")  # turns before the reply
            chosen = _response_text(sides["chosen"][-1]["content"], path, line, "chosen", skip_empty)
            rejected = _response_text(sides["rejected"][-1]["content"], path, line, "rejected", skip_empty)
        pairs = ranking_pairs(_row_id(obj, path, line, [prompt, chosen, rejected], who), prompt, [chosen, rejected],
                              [1, 2], who)
        pairs[0]["id"] = pairs[0]["id"][: -len("-0-1")]
    else:
        raise DataError(path, line, "responses", "missing: expected 'responses' with 'ranks' or 'scores', or "
                                                 "'chosen' and 'rejected'")
    if "weight" in obj:
        weight = number(obj["weight"], path, line, "weight", minimum=0.0)
        for pair in pairs:
            pair["weight"] = weight
    return pairs


# --------------------------------------------------------------------------------------------------------------------
# Files


def import_rankings(path: Path | str, ties: str = "skip", annotator: str | None = None, skip_empty: bool = False,
                    tally: Tally | None = None) -> list[PreferenceRow]:
    """Read rankings, pairs, hh-rlhf transcripts or labels (JSONL, CSV or TSV) into preference rows; see the module
    docstring.

    `tally`, if given, counts the pairs read, used and left out: `tie` (with ties "skip"), `zero_weight`,
    `identical_replies`, and `empty_reply` (with `skip_empty`). A file that leaves no pair is a DataError, as is any
    bad row (file, line and field)."""
    return _read(path, ties, annotator, skip_empty, tally, keep_zero_weight=False)[0]


def _read(path: Path | str, ties: str, annotator: str | None, skip_empty: bool, tally: Tally | None,
          keep_zero_weight: bool) -> tuple[list[PreferenceRow], bool]:
    """`import_rankings`, and whether the file held labels (rows with `p_chosen`, kept as they are)."""
    path = Path(path)
    if ties not in TIES:
        raise DataError(path, None, "ties", f"expected one of {', '.join(TIES)}, not {ties!r}")
    if path.suffix.lower() not in CSV_SUFFIXES:  # the rank page's answers, or a Label Studio export
        from rlaif.rank_export import human_kind, import_answers

        kind = human_kind(path)
        if kind:
            return import_answers(path, kind, ties, tally), False
    items = _csv_items(path, ties, annotator, skip_empty) if path.suffix.lower() in CSV_SUFFIXES else iter_jsonl(path)
    counted = Tally(tally.noun if tally is not None else "pairs")
    kept: list[tuple[int, str | None, PreferenceRow, str]] = []  # (line, own id or None, pair, what its row is about)
    first: tuple[int, bool] | None = None  # the first row's line, and whether it is a label
    for line, obj in items:
        labelled = "p_chosen" in obj
        if first is None:
            first = (line, labelled)
        elif labelled != first[1]:
            raise DataError(path, line, "p_chosen", (
                "missing, though line {0} has one" if first[1] else "given, though line {0} has none"
            ).format(first[0]) + ": a file holds labels (rows with p_chosen) or rankings and pairs, not both; split it")
        if labelled:
            pairs = [_checked_preference(obj, path, line, skip_empty)]
            if annotator and pairs[0]["source"] == "human":
                pairs[0].setdefault("annotator", annotator)
        else:
            pairs = object_pairs(obj, path, line, ties, annotator, skip_empty)
        # What the row is about, in any order of its replies: a row without an id that repeats an earlier one's
        # prompt, replies and annotator ([x, y, z] ranked 1, 2, 3, then [z, y, x] ranked 3, 2, 1) is the same
        # ranking twice, though its content id (and so its pairs' ids, kept stable) differs.
        replies = sorted({side[0]["content"] for pair in pairs for side in (pair["chosen"], pair["rejected"])})
        about = content_id([pairs[0]["prompt"], replies, pairs[0].get("annotator")], "row")
        for pair in pairs:
            counted.read += 1
            problem = reply_problem(pair["chosen"][0]["content"], pair["rejected"][0]["content"])
            if not problem and not labelled and ties == "skip" and pair["p_chosen"] == 0.5:
                problem = "tie"
            if not problem and pair.get("weight") == 0 and not keep_zero_weight:
                problem = "zero_weight"
            if problem:
                counted.leave_out(problem)
            else:
                counted.used += 1
                kept.append((line, str(obj["id"]) if "id" in obj else None, pair, about))
    if first is None:
        raise DataError(path, None, None, "no rankings, pairs or labels in the file")
    if tally is not None:
        tally.add(counted)
    every_tie = "every pair is a tie; " if set(counted.left_out) == {"tie"} else ""
    counted.require_some(path, every_tie + TIES_HINT if "tie" in counted.left_out else "")
    annotators: dict[str, set] = defaultdict(set)
    for _, _, row, _ in kept:
        annotators[row["id"]].add(row.get("annotator"))
    seen: dict[str, int] = {}  # pair id -> line
    rows_seen: dict[str, int] = {}  # what a row without an id is about -> its line
    for line, given, row, about in kept:
        if len(annotators[row["id"]]) > 1 and row.get("annotator"):  # one item, several people: an id each
            row["id"] = f"{row['id']}-{row['annotator']}"
        if given is not None and row["id"] in seen:
            raise DataError(path, line, "id", f"duplicate id {given!r} (first on line {seen[row['id']]})")
        earlier = rows_seen.setdefault(about, line) if given is None else line
        if earlier == line:  # or a content id that an earlier row gave as its id
            earlier = seen.get(row["id"], line)
        if earlier != line:
            who = f", by annotator {row['annotator']}" if row.get("annotator") else ""
            raise DataError(path, line, None, f"the same prompt and replies as line {earlier}{who}: a repeated row, "
                                              "or a second ranking of them (in any order); give each ranking its own "
                                              "id to keep both, or remove the repeat")
        seen[row["id"]] = line
    return [row for _, _, row, _ in kept], first[1]


def _cell_number(text: str, path: Path, line: int, field: str, minimum: float | None = None) -> float:
    """A CSV cell as a finite number (`nan`, `inf`, text and an empty cell are refused)."""
    if not text.strip():
        raise DataError(path, line, field, "is empty: expected a number")
    try:
        value = float(text)
    except ValueError:
        raise DataError(path, line, field, f"expected a number, not {text!r}") from None
    return number(value, path, line, field, minimum=minimum)


# The columns a CSV of pairs (or labels) may give; others are ignored.
PAIR_COLUMNS = ("id", "prompt", "chosen", "rejected", "annotator", "weight", "p_chosen", "source", "labeler", "margin")


def _csv_items(path: Path, ties: str, annotator: str | None, skip_empty: bool) -> list[tuple[int, dict]]:
    """(line, object) for each pair row of a CSV, or each ranking its lines make (at the ranking's first line),
    the objects `object_pairs` and `_checked_preference` read. Errors name the CSV's columns and lines."""
    columns, records = read_csv(path)
    if {"chosen", "rejected"} <= set(columns):
        items = []
        for line, record in records:
            obj: dict[str, Any] = {name: record[name] for name in PAIR_COLUMNS if record.get(name, "") != ""}
            for name in ("weight", "p_chosen", "margin"):
                if name in obj:
                    obj[name] = _cell_number(obj[name], path, line, name)
            if "prompt" in columns:
                obj["prompt"] = record["prompt"]  # an empty cell is an error, not an hh-rlhf transcript
            items.append((line, {"chosen": "", "rejected": "", **obj}))
        return items
    if "response" not in columns or not {"rank", "score"} & set(columns) or "prompt" not in columns:
        raise DataError(path, 1, None, f"expected columns prompt, response and rank (or score), or prompt, chosen "
                                       f"and rejected; found {', '.join(columns) or 'none'}")
    field = "rank" if "rank" in columns else "score"
    groups: dict[tuple, dict] = {}  # one ranking per id, else per (prompt, annotator) block of lines
    previous = None
    for line, record in records:
        if not record["prompt"].strip():
            raise DataError(path, line, "prompt", "is empty")
        who = record.get("annotator") or annotator
        key = ("id", record["id"], who) if record.get("id") else ("prompt", record["prompt"], who)
        group = groups.setdefault(key, {"lines": [], "blocks": [], "obj": {"prompt": record["prompt"],
                                                                             "responses": [], f"{field}s": []}})
        obj = group["obj"]
        if record["prompt"] != obj["prompt"]:
            raise DataError(path, line, "prompt", f"differs from the prompt of id {record['id']!r} on line "
                                                  f"{group['lines'][0]}")
        if key != previous:
            group["blocks"].append([line, line])
        group["blocks"][-1][1], previous = line, key
        group["lines"].append(line)
        obj["responses"].append(_response_text(record["response"], path, line, "response", skip_empty))
        obj[f"{field}s"].append(_cell_number(record[field], path, line, field, minimum=1 if field == "rank" else None))
        if record.get("weight", "") != "":
            weight = _cell_number(record["weight"], path, line, "weight", minimum=0.0)
            if obj.setdefault("weight", weight) != weight:
                raise DataError(path, line, "weight", f"{weight:g} differs from the {obj['weight']:g} given earlier "
                                                      f"in this ranking (line {group['lines'][0]}): one per ranking")
        for name in ("id", "annotator"):
            if record.get(name):
                obj[name] = record[name]
    split = [g for key, g in groups.items() if key[0] == "prompt" and len(g["blocks"]) > 1]
    if split:
        group = min(split, key=lambda g: g["blocks"][1][0])
        (a, b), (c, d) = group["blocks"][:2]
        by = f" by annotator {group['obj']['annotator']}" if group["obj"].get("annotator") else ""
        raise DataError(path, c, "prompt", f"ranked twice{by} (lines {_span(a, b)} and {_span(c, d)}); add an id "
                                           "column to tell the rankings apart, or put a ranking's lines together")
    items = []
    for group in groups.values():
        lines, values = group["lines"], group["obj"][f"{field}s"]
        if len(lines) < 2:
            raise DataError(path, lines[0], "response", "the only line of its ranking: a ranking needs two or more "
                                                        "response lines (same id, or same prompt and annotator)")
        if ties == "error" and len(set(values)) < len(values):
            i, j = next((i, j) for j in range(len(values)) for i in range(j) if values[i] == values[j])
            raise DataError(path, lines[j], field, f"tie: {values[j]:g} as on line {lines[i]} (ties are off; --ties "
                                                   "skip or half allows them)")
        items.append((lines[0], group["obj"]))
    return items


def _span(first: int, last: int) -> str:
    return f"{first}-{last}" if last > first else str(first)


def run(config: ImportConfig) -> dict:
    """Import `config.rankings` into `config.out`; returns counts: pairs written, ties (labelled 0.5), annotators,
    labels (1 when the file held labels, kept as they are), the tally's read / used / left_out_REASON, and
    `summary`, the tally's line (and, for labels, their sources)."""
    tally = Tally("pairs")
    rows, labels = _read(config.rankings, config.ties, config.annotator, config.skip_empty, tally, False)
    Path(config.out).parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(config.out, rows)
    summary = tally.summary()
    fast = sum("fast_answer" in r.get("flags", ()) for r in rows)
    if fast:
        summary += (f"; {fast} answer{'s' if fast > 1 else ''} given in under a second, kept and flagged fast_answer "
                    "(a slip, or the replies not read)")
    if labels:
        sources = Counter(r["source"] for r in rows)
        summary += "; labels (p_chosen) kept as they are: " + ", ".join(f"source {s} {n}" for s, n in
                                                                         sorted(sources.items()))
    return {"pairs": len(rows), "ties": 0 if labels else sum(r["p_chosen"] == 0.5 for r in rows), **tally.counts(),
            "labels": int(labels), "annotators": len({r.get("annotator") for r in rows if r.get("annotator")}),
            "summary": summary}


# --------------------------------------------------------------------------------------------------------------------
# Mixing sources


def load_preferences(path: Path | str, ties: str = "skip", skip_empty: bool = False,
                     tally: Tally | None = None) -> list[PreferenceRow]:
    """Preference rows from a file, read as `import_rankings` reads it: labels (rows with `p_chosen`: `rlaif
    label`'s, critique prefs, imports) checked and kept as they are; rankings, pairs and hh-rlhf transcripts
    imported as human labels (with `ties`, `skip_empty`). Unlike `import_rankings`, a row of weight 0 is kept, for
    the trainer to leave out and count. Errors name the file, line and field."""
    return _read(path, ties, None, skip_empty, tally, keep_zero_weight=True)[0]


def _checked_preference(obj: dict, path: Path, line: int, skip_empty: bool = False) -> PreferenceRow:
    """A preference row as rlaif writes it, every field checked; numbers must be finite (`weight` >= 0, the
    probabilities `p_chosen`, `p_orders` and `principle_p` in [0, 1]). An empty reply is an error unless
    `skip_empty` (the caller then leaves the pair out)."""
    prompt = as_prompt(obj.get("prompt"), path, line, "prompt")
    row = dict(obj)
    row["prompt"] = prompt
    for name in ("chosen", "rejected"):
        row[name] = [{"role": "assistant", "content": _response_text(obj.get(name), path, line, name, skip_empty)}]
    row["p_chosen"] = number(obj.get("p_chosen"), path, line, "p_chosen", 0.0, 1.0)
    if obj.get("source", "human") not in SOURCES:
        raise DataError(path, line, "source", f"expected one of {', '.join(SOURCES)}")
    for name in ("labeler", "annotator"):  # who labelled: a name, matched as text (rlaif.reliability.labeler_of)
        if name in obj and obj[name] is not None and (not isinstance(obj[name], str) or not obj[name].strip()):
            raise DataError(path, line, name, f"expected a name (a non-empty string), not {json.dumps(obj[name])}")
    if obj.get("mode", "compare") not in LABEL_MODES:
        raise DataError(path, line, "mode", f"expected one of {', '.join(LABEL_MODES)} (how an AI label was made), "
                                            f"not {json.dumps(obj['mode'])}")
    if "weight" in obj:
        row["weight"] = number(obj["weight"], path, line, "weight", minimum=0.0)
    if "margin" in obj:
        row["margin"] = number(obj["margin"], path, line, "margin")
    for name in ("p_orders", "principle_p"):
        if name in obj:
            if not isinstance(obj[name], dict):
                raise DataError(path, line, name, "expected {name: probability}")
            row[name] = {key: number(p, path, line, f"{name}.{key}", 0.0, 1.0) for key, p in obj[name].items()}
    row.setdefault("source", "human")
    row["id"] = str(obj.get("id") or content_id([prompt, row["chosen"], row["rejected"]], "pref"))
    return row  # type: ignore[return-value]


def pair_key(row: PreferenceRow) -> str:
    """The same pair whichever response a source put first."""
    responses = sorted([row["chosen"][-1]["content"], row["rejected"][-1]["content"]])
    return content_id([row["prompt"], responses], "pair")


def parse_weighted(spec: str) -> tuple[str, float]:
    """"FILE:WEIGHT" -> (FILE, WEIGHT), the weight finite and >= 0 (see `records.split_weight`)."""
    return split_weight(spec, minimum=0.0)


def load_sources(specs: list[str], ties: str = "skip", tally: Tally | None = None, setting: str = "data"
                 ) -> list[tuple[str, list[PreferenceRow], float]]:
    """The preference files "FILE[:WEIGHT]" read (`load_preferences`, every row counted in `tally`: read, used, left
    out), each as (FILE, rows, WEIGHT): the sources `mix` takes. A file listed twice (the same file by resolved path,
    whatever the spelling) is a ConfigError naming `setting`, checked before any file is read: mixing would add its
    weights, so every pair of it would train twice over."""
    files: dict[Path, str] = {}  # resolved path -> the spec that named it
    for spec in specs:
        resolved = Path(parse_weighted(spec)[0]).resolve()
        if resolved in files:
            twice = f"{spec} is listed twice" if files[resolved] == spec else \
                f"{files[resolved]} and {spec} are the same file ({resolved})"
            once = "list it once" if setting == "calibration" else "list it once, with one weight (FILE:WEIGHT)"
            raise ConfigError(f"{setting}: {twice}; {once}")
        files[resolved] = spec
    sources = []
    for spec in specs:
        path, weight = parse_weighted(spec)
        sources.append((path, load_preferences(path, ties, tally=tally), weight))
    return sources


def require_weight(rows: list[PreferenceRow], files: list[str], why: str = "") -> None:
    """A DataError when every mixed pair weighs 0 (file weights times row weights): there is nothing to train on,
    and normalising the weights by their mean would divide by zero. `why`: what set weights to 0, if not the user."""
    if rows and not any(row["weight"] > 0 for row in rows):
        raise DataError(", ".join(files), None, None, "every pair has weight 0: nothing to train on; " + (
            why or "give a file a weight above 0 (FILE:WEIGHT), or its rows a weight above 0"))


def load_mix(specs: list[str], ties: str = "skip", human_overrides: bool = False, tally: Tally | None = None,
             setting: str = "data") -> tuple[list[PreferenceRow], dict]:
    """The preference files "FILE[:WEIGHT]" (`load_sources`) mixed into one row per distinct pair (`mix`); returns
    mix's (rows, agreement). The reader of DPO (the reward stage calls the same pieces, weighing AI sources by their
    measured reliability between reading and mixing: rlaif.reward). When every pair weighs 0, a DataError
    (`require_weight`); a file listed twice, a ConfigError naming `setting`."""
    sources = load_sources(specs, ties, tally, setting)
    rows, agreement = mix(sources, human_overrides)
    require_weight(rows, [path for path, _, _ in sources])
    return rows, agreement


def mix(sources: list[tuple[str, list[PreferenceRow], float]], human_overrides: bool = False
        ) -> tuple[list[PreferenceRow], dict]:
    """Merge (name, rows, weight) sources into one row per distinct pair; returns (rows, agreement).

    A merged row faces the side its labels favour (`p_chosen >= 0.5`); `weight` = the sum of source weight times
    row weight; `provenance` = [{file, id, source, p_chosen (facing this row's chosen), weight, annotator if
    any}, ...]; `source` is "human" if any person labeled the pair, else the first source's; `annotator` is kept
    only when one person labeled it. Weights must be finite and >= 0 (a DataError naming the file otherwise)."""
    groups: dict[str, list[tuple[str, PreferenceRow, float]]] = defaultdict(list)
    for name, rows, weight in sources:
        weight = number(weight, name, None, "weight", minimum=0.0)
        for row in rows:
            row_weight = number(row.get("weight", 1.0), name, None, f"weight of {row['id']!r}", minimum=0.0)
            groups[pair_key(row)].append((name, row, weight * row_weight))
    merged, both, agree, disagreements = [], 0, 0.0, []
    for entries in groups.values():
        base = entries[0][1]
        chosen_text = base["chosen"][-1]["content"]
        provenance = []
        for name, row, weight in entries:
            same_way = row["chosen"][-1]["content"] == chosen_text
            provenance.append({"file": name, "id": row["id"], "source": row.get("source", "human"),
                               "p_chosen": row["p_chosen"] if same_way else 1.0 - row["p_chosen"], "weight": weight})
            if row.get("annotator"):
                provenance[-1]["annotator"] = row["annotator"]
        human = [e for e in provenance if e["source"] == "human"]
        ai = [e for e in provenance if e["source"] == "ai"]
        if human and ai:
            both += 1
            h, a = _mean_p(human), _mean_p(ai)
            agree += 1.0 - abs(outcome(h) - outcome(a))  # a tie against a winner agrees half
            if (h - 0.5) * (a - 0.5) < 0:  # opposite winners
                winner = base["chosen"] if h > 0.5 else base["rejected"]
                if h < 0.5:  # report both facing the response people chose
                    h, a = 1.0 - h, 1.0 - a
                disagreements.append({"pair": base["id"], "prompt": base["prompt"][-1]["content"][:200],
                                      "human_chosen": winner[-1]["content"][:200], "human_p": h, "ai_p": a})
                if human_overrides:
                    provenance = [e for e in provenance if e["source"] != "ai"]
        used = [e for e in provenance if e["weight"] > 0] or provenance
        total = sum(e["weight"] for e in used)
        p = sum(e["p_chosen"] * e["weight"] for e in used) / total if total > 0 else _mean_p(used)
        row = {key: value for key, value in base.items() if key not in ("weight", "provenance")}
        if len({e["annotator"] for e in provenance if "annotator" in e}) > 1:
            row.pop("annotator", None)
        if p < 0.5:  # face the winner
            row["chosen"], row["rejected"], p = base["rejected"], base["chosen"], 1.0 - p
            for e in provenance:
                e["p_chosen"] = 1.0 - e["p_chosen"]
            if "p_orders" in row:  # chosen shown first becomes rejected shown first: the other key
                row["p_orders"] = {_OTHER_ORDER.get(k, k): 1.0 - v for k, v in row["p_orders"].items()}
            if "principle_p" in row:
                row["principle_p"] = {k: 1.0 - v for k, v in row["principle_p"].items()}
            if "ai_p" in row:  # an imported answer's AI label (rank_export.selection) faces chosen too
                row["ai_p"] = 1.0 - row["ai_p"]
        row.update(p_chosen=p, weight=total, provenance=provenance,
                   source="human" if any(e["source"] == "human" for e in provenance) else provenance[0]["source"])
        merged.append(row)
    agreement = {"pairs_labeled_by_both": both, "agree": agree, "rate": agree / both if both else None, "disagreements": disagreements,
                 "human_overrides": human_overrides}
    return merged, agreement


_OTHER_ORDER = {"chosen_first": "chosen_second", "chosen_second": "chosen_first"}


def _mean_p(entries: list[dict]) -> float:
    return sum(e["p_chosen"] for e in entries) / len(entries)
