"""Human rankings in, and the mix of preference sources a reward model trains on.

    rlaif rankings import team_rankings.jsonl --out runs/x/human.jsonl [--ties skip|half|error]

**Import.** A ranking of K responses to one prompt becomes every pair it implies: responses ranked 2, 1, 3 give
(2nd over 1st), (2nd over 3rd) and (1st over 3rd), each a preference row (docs/data-contract.md) with `source: human`,
`p_chosen: 1.0` and the annotator when given. Ties give no pair (`skip`, the default), a pair labelled 0.5 (`half`),
or an error (`error`, for files that should have none). Accepted input, JSONL or CSV:

| rows | fields |
|---|---|
| rankings | `prompt`, `responses`, `ranks` (1 = best) or `scores` (higher is better); optional `id`, `annotator` |
| pairs | `prompt`, `chosen`, `rejected` (text or chat messages); optional `id`, `annotator` |
| hh-rlhf | `chosen` and `rejected` transcripts ("\\n\\nHuman: ... \\n\\nAssistant: ...") |
| CSV, long | one response per line: `prompt`, `response`, `rank` or `score`; optional `id` and `annotator` (lines are grouped by id, else prompt, and annotator) |
| CSV, pairs | `prompt`, `chosen`, `rejected`; optional `id`, `annotator` |

Every row is checked before anything is written, and the output is written whole and atomically: a bad file gives an
error naming its file, line and field, and no output. Ranks, scores and weights must be finite numbers (a `NaN` score
is a missing label, not a loss). A pair whose two replies are the same text is left out and counted, as is (with
`skip_empty`) a pair with an empty reply. Several annotators may rank the same prompt: each ranking gives its own
pairs, with its `annotator`; a row without an `id` gets a content id that includes the annotator, and an explicit id
shared by several annotators gets `-ANNOTATOR` appended to its pairs' ids.

**Mixing.** `mix` takes several preference files, each with a weight. The same pair (same prompt, same two responses,
in either order) labelled by several sources becomes one row: its `p_chosen` the weighted mean of the labels (each
turned to face the same way), its weight their sum, and `provenance` listing every source's label. Because the
soft-label loss is linear in the label, that one row trains exactly like the separate rows would. Where people and
the AI labeled the same pair, the agreement table reports how often they pick the same winner, with the rows where
they don't; `human_overrides` drops the AI's label on those conflicts.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlaif.loaders import _as_messages, content_id, parse_transcript
from rlaif.records import (
    DataError,
    Message,
    PreferenceRow,
    Tally,
    iter_jsonl,
    number,
    read_text,
    reply_problem,
    split_weight,
    write_jsonl,
)

TIES = ("skip", "half", "error")
SOURCES = ("human", "ai", "critique")
# How to get past an empty reply: `rlaif rankings import`'s flag, or the setting in a recipe (`rlaif run`).
EMPTY_HINT = "--skip-empty, or rankings: {skip_empty: true} in a recipe, leaves such pairs out"


@dataclass
class ImportConfig:
    rankings: str = ""  # the file to import: JSONL or CSV rankings, pairs or hh-rlhf transcripts
    out: str = "human.jsonl"  # preference rows, written atomically
    ties: str = "skip"  # tied responses: skip (no pair), half (a pair labelled 0.5) or error
    annotator: str | None = None  # annotator id for rows that name none
    skip_empty: bool = False  # leave out pairs with an empty response (counted) instead of stopping at the first


# --------------------------------------------------------------------------------------------------------------------
# Rankings to pairs


def ranking_pairs(row_id: str, prompt: list[Message], responses: list[str], ranks: list[float],
                  ties: str = "skip", annotator: str | None = None) -> list[PreferenceRow]:
    """Every pair a ranking implies. `ranks`: lower is better (1 = best); scores are passed negated. A pair i < j
    gets id ROW-i-j (0-based response indices) and faces its winner: `chosen` is the better-ranked response."""
    pairs: list[PreferenceRow] = []
    for i in range(len(responses)):
        for j in range(i + 1, len(responses)):
            if ranks[i] == ranks[j]:
                if ties != "half":
                    continue
                winner, loser, p = i, j, 0.5
            else:
                winner, loser, p = (i, j, 1.0) if ranks[i] < ranks[j] else (j, i, 1.0)
            pair: PreferenceRow = {"id": f"{row_id}-{i}-{j}", "prompt": prompt,
                                   "chosen": [{"role": "assistant", "content": responses[winner]}],
                                   "rejected": [{"role": "assistant", "content": responses[loser]}],
                                   "p_chosen": p, "source": "human"}
            if annotator:
                pair["annotator"] = annotator
            pairs.append(pair)
    return pairs


def _response_text(value: Any, path: Path, line: int, name: str, allow_empty: bool = False) -> str:
    """A response given as text or as one assistant message (or a list ending with one)."""
    if isinstance(value, list) and value and isinstance(value[-1], dict):
        value = value[-1].get("content")
    if not isinstance(value, str):
        raise DataError(path, line, name, "expected the response text")
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
    """The preference rows of one input object (a ranking, a pair or an hh-rlhf transcript pair). An empty response
    is an error unless `skip_empty`, which lets its pairs through for the caller to count and leave out."""
    if not isinstance(obj, dict):
        raise DataError(path, line, None, "expected a JSON object")
    who = _annotator(obj, annotator, path, line)
    if "responses" in obj:
        prompt = _as_messages(obj.get("prompt"), path, line, "prompt") if "prompt" in obj else None
        if prompt is None:
            raise DataError(path, line, "prompt", "missing")
        responses = obj["responses"]
        if not isinstance(responses, list) or len(responses) < 2:
            raise DataError(path, line, "responses", "expected a list of at least two responses")
        texts = [_response_text(r, path, line, f"responses[{i}]", skip_empty) for i, r in enumerate(responses)]
        ranks = _ranks(obj, len(texts), ties, path, line)
        return ranking_pairs(_row_id(obj, path, line, [prompt, texts], who), prompt, texts, ranks, ties, who)
    if "chosen" in obj or "rejected" in obj:
        for name in ("chosen", "rejected"):
            if name not in obj:
                raise DataError(path, line, name, "missing")
        if "prompt" in obj:
            prompt = _as_messages(obj["prompt"], path, line, "prompt")
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
            prompt = sides["chosen"][:-1]
            chosen = _response_text(sides["chosen"][-1]["content"], path, line, "chosen", skip_empty)
            rejected = _response_text(sides["rejected"][-1]["content"], path, line, "rejected", skip_empty)
        pair = ranking_pairs(_row_id(obj, path, line, [prompt, chosen, rejected], who), prompt, [chosen, rejected],
                             [1, 2], ties, who)[0]
        pair["id"] = pair["id"][: -len("-0-1")]
        return [pair]
    raise DataError(path, line, "responses", "missing: expected 'responses' with 'ranks' or 'scores', or "
                                             "'chosen' and 'rejected'")


# --------------------------------------------------------------------------------------------------------------------
# Files


def import_rankings(path: Path | str, ties: str = "skip", annotator: str | None = None, skip_empty: bool = False,
                    tally: Tally | None = None) -> list[PreferenceRow]:
    """Read rankings, pairs or hh-rlhf transcripts (JSONL or CSV) into preference rows; see the module docstring.

    `tally`, if given, counts the pairs read, used and left out (`empty_reply` with `skip_empty`, and
    `identical_replies`). A file that leaves no pair is a DataError, as is any bad row (file, line and field)."""
    path = Path(path)
    if ties not in TIES:
        raise DataError(path, None, "ties", f"expected one of {', '.join(TIES)}, not {ties!r}")
    if path.suffix.lower() == ".csv":
        rows = _csv_pairs(path, read_text(path), ties, annotator, skip_empty)
    else:
        rows = [{**pair, "_line": line} for line, obj in iter_jsonl(path)
                for pair in object_pairs(obj, path, line, ties, annotator, skip_empty)]
    tally = tally if tally is not None else Tally("pairs")
    kept = []
    for row in rows:
        tally.read += 1
        problem = reply_problem(row["chosen"][0]["content"], row["rejected"][0]["content"])
        if problem:
            tally.leave_out(problem)
        else:
            tally.used += 1
            kept.append(row)
    if not rows:
        raise DataError(path, None, None, "no preference pairs found (an empty file, or every ranking tied?)")
    tally.require_some(path)
    annotators: dict[str, set] = defaultdict(set)
    for row in kept:
        annotators[row["id"]].add(row.get("annotator"))
    seen: dict[str, int] = {}
    for row in kept:
        line = row.pop("_line")  # type: ignore[typeddict-item]
        if len(annotators[row["id"]]) > 1 and row.get("annotator"):  # one item, several people: an id each
            row["id"] = f"{row['id']}-{row['annotator']}"
        if row["id"] in seen:
            raise DataError(path, line, "id", f"duplicate id {row['id']!r} (first on line {seen[row['id']]})")
        seen[row["id"]] = line
    return kept


def _cell_number(text: str | None, path: Path, line: int, field: str, minimum: float | None = None) -> float:
    """A CSV cell as a finite number (`nan`, `inf` and text are refused)."""
    try:
        value = float(text or "")
    except ValueError:
        raise DataError(path, line, field, f"expected a number, not {text!r}") from None
    return number(value, path, line, field, minimum=minimum)


def _csv_pairs(path: Path, text: str, ties: str, annotator: str | None, skip_empty: bool) -> list[dict]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    columns = set(reader.fieldnames or [])
    if {"chosen", "rejected"} <= columns:
        rows = []
        for record in reader:
            obj = {k: v for k, v in record.items() if k and v not in (None, "")}
            obj.setdefault("chosen", "")
            obj.setdefault("rejected", "")
            rows += [{**pair, "_line": reader.line_num}
                     for pair in object_pairs(obj, path, reader.line_num, ties, annotator, skip_empty)]
        return rows
    if "response" not in columns or not columns & {"rank", "score"}:
        raise DataError(path, 1, "response", f"expected columns prompt, response and rank (or score), or prompt, "
                                             f"chosen and rejected; found {', '.join(reader.fieldnames or []) or 'none'}")
    if "prompt" not in columns:
        raise DataError(path, 1, "prompt", "no 'prompt' column")
    field = "rank" if "rank" in columns else "score"
    groups: dict[tuple[str, str | None], dict] = {}  # one ranking per (id or prompt, annotator)
    for record in reader:
        line = reader.line_num
        if not (record.get("prompt") or "").strip():
            raise DataError(path, line, "prompt", "is empty")
        value = _cell_number(record[field], path, line, field, minimum=1 if field == "rank" else None)
        key = record.get("id") or record["prompt"]
        who = record.get("annotator") or annotator
        group = groups.setdefault((key, who), {"line": line, "obj": {"prompt": record["prompt"], "responses": [],
                                                                     f"{field}s": []}})
        if record["prompt"] != group["obj"]["prompt"]:
            raise DataError(path, line, "prompt", f"differs from the prompt of id {key!r} on line {group['line']}")
        group["obj"]["responses"].append(_response_text(record.get("response"), path, line, "response", skip_empty))
        group["obj"][f"{field}s"].append(value)
        for name in ("id", "annotator"):
            if record.get(name):
                group["obj"][name] = record[name]
    rows = []
    for group in groups.values():
        rows += [{**pair, "_line": group["line"]}
                 for pair in object_pairs(group["obj"], path, group["line"], ties, annotator, skip_empty)]
    return rows


def run(config: ImportConfig) -> dict:
    """Import `config.rankings` into `config.out`; returns counts: pairs written, ties (labelled 0.5), annotators,
    the tally's read / used / left_out_REASON, and `summary`, the tally's line."""
    tally = Tally("pairs")
    rows = import_rankings(config.rankings, config.ties, config.annotator, config.skip_empty, tally)
    Path(config.out).parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(config.out, rows)
    return {"pairs": len(rows), "ties": sum(r["p_chosen"] == 0.5 for r in rows), **tally.counts(),
            "annotators": len({r.get("annotator") for r in rows if r.get("annotator")}), "summary": tally.summary()}


# --------------------------------------------------------------------------------------------------------------------
# Mixing sources


def load_preferences(path: Path | str, ties: str = "skip", skip_empty: bool = False,
                     tally: Tally | None = None) -> list[PreferenceRow]:
    """Preference rows from a file: rows rlaif wrote (`p_chosen` on the first row: labels, critique prefs, imports)
    are checked and read as they are; rankings, pairs and hh-rlhf transcripts are imported as human labels
    (`import_rankings`, with `ties`, `skip_empty` and `tally`). Errors name the file, line and field."""
    path = Path(path)
    if path.suffix.lower() != ".csv":
        first = next(iter_jsonl(path), None)
        if first is not None and "p_chosen" in first[1]:
            tally = tally if tally is not None else Tally("pairs")
            rows = []
            for line, obj in iter_jsonl(path):
                row = _checked_preference(obj, path, line, skip_empty)
                tally.read += 1
                problem = reply_problem(row["chosen"][0]["content"], row["rejected"][0]["content"])
                if problem:  # the same leave-out-and-count rule as import_rankings
                    tally.leave_out(problem)
                else:
                    tally.used += 1
                    rows.append(row)
            tally.require_some(path)
            return rows
    return import_rankings(path, ties, skip_empty=skip_empty, tally=tally)


def _checked_preference(obj: dict, path: Path, line: int, skip_empty: bool = False) -> PreferenceRow:
    """A preference row as rlaif writes it, every field checked; numbers must be finite (`weight` >= 0, the
    probabilities `p_chosen`, `p_orders` and `principle_p` in [0, 1]). An empty reply is an error unless
    `skip_empty` (the caller then leaves the pair out)."""
    prompt = _as_messages(obj.get("prompt"), path, line, "prompt")
    row = dict(obj)
    row["prompt"] = prompt
    for name in ("chosen", "rejected"):
        row[name] = [{"role": "assistant", "content": _response_text(obj.get(name), path, line, name, skip_empty)}]
    row["p_chosen"] = number(obj.get("p_chosen"), path, line, "p_chosen", 0.0, 1.0)
    if obj.get("source", "human") not in SOURCES:
        raise DataError(path, line, "source", f"expected one of {', '.join(SOURCES)}")
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
            agree += 1.0 - abs(_outcome(h) - _outcome(a))  # a tie against a winner agrees half
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
        row.update(p_chosen=p, weight=total, provenance=provenance,
                   source="human" if any(e["source"] == "human" for e in provenance) else provenance[0]["source"])
        merged.append(row)
    agreement = {"pairs_labeled_by_both": both, "agree": agree, "rate": agree / both if both else None, "disagreements": disagreements,
                 "human_overrides": human_overrides}
    return merged, agreement


_OTHER_ORDER = {"chosen_first": "chosen_second", "chosen_second": "chosen_first"}


def _outcome(p: float) -> float:
    """The winner a label names: 1 (chosen), 0 (rejected) or 0.5 (an exact tie)."""
    return 1.0 if p > 0.5 else 0.0 if p < 0.5 else 0.5


def _mean_p(entries: list[dict]) -> float:
    return sum(e["p_chosen"] for e in entries) / len(entries)
