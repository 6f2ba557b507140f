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
| CSV, long | one response per line: `prompt`, `response`, `rank` or `score`; optional `id` (groups lines; else the prompt does), `annotator` |
| CSV, pairs | `prompt`, `chosen`, `rejected`; optional `id`, `annotator` |

Every row is checked before anything is written, and the output is written whole and atomically: a bad file gives an
error naming its file, line and field, and no output.

**Mixing.** `mix` takes several preference files, each with a weight. The same pair (same prompt, same two responses,
in either order) labelled by several sources becomes one row: its `p_chosen` the weighted mean of the labels (each
turned to face the same way), its weight their sum, and `provenance` listing every source's label. Because the
soft-label loss is linear in the label, that one row trains exactly like the separate rows would. Where people and
the AI labeled the same pair, the agreement table reports how often they pick the same winner, with the rows where
they don't; `human_overrides` drops the AI's label on those conflicts.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlaif.records import (
    DataError,
    Message,
    PreferenceRow,
    _as_messages,
    content_id,
    parse_transcript,
    write_jsonl,
)

TIES = ("skip", "half", "error")
SOURCES = ("human", "ai", "critique")


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
        raise DataError(path, line, name, "is empty (--skip-empty leaves such pairs out)")
    return value


def _ranks(obj: dict, n: int, ties: str, path: Path, line: int) -> list[float]:
    """Ranks (lower is better) from a row's `ranks` or `scores`, checked against its `n` responses."""
    if ("ranks" in obj) == ("scores" in obj):
        raise DataError(path, line, "ranks", "expected exactly one of 'ranks' (1 = best) or 'scores' (higher is better)")
    name = "ranks" if "ranks" in obj else "scores"
    values = obj[name]
    if not isinstance(values, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise DataError(path, line, name, "expected a list of numbers, one per response")
    if len(values) != n:
        raise DataError(path, line, name, f"has {len(values)} entries for {n} responses")
    if name == "ranks" and any(v < 1 for v in values):
        raise DataError(path, line, name, "ranks start at 1 (the best response)")
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


def _row_id(obj: dict, path: Path, line: int, content: Any) -> str:
    if "id" in obj:
        if not isinstance(obj["id"], (str, int)) or str(obj["id"]) == "":
            raise DataError(path, line, "id", "expected non-empty text")
        return str(obj["id"])
    return content_id(content, "h")


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
        return ranking_pairs(_row_id(obj, path, line, [prompt, texts]), prompt, texts, ranks, ties, who)
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
        pair = ranking_pairs(_row_id(obj, path, line, [prompt, chosen, rejected]), prompt, [chosen, rejected],
                             [1, 2], ties, who)[0]
        pair["id"] = pair["id"][: -len("-0-1")]
        return [pair]
    raise DataError(path, line, "responses", "missing: expected 'responses' with 'ranks' or 'scores', or "
                                             "'chosen' and 'rejected'")


# --------------------------------------------------------------------------------------------------------------------
# Files


def read_text(path: Path) -> str:
    """A data file's text: UTF-8 (with or without a byte-order mark) or UTF-16 with one; anything else is an error
    naming the line and byte where decoding failed."""
    if not path.is_file():
        raise DataError(path, None, None, "file not found")
    raw = path.read_bytes()
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return raw.decode("utf-16")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(path, line, None, f"not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}); save "
                                          f"the file as UTF-8") from None


def import_rankings(path: Path | str, ties: str = "skip", annotator: str | None = None, skip_empty: bool = False,
                    report: dict | None = None) -> list[PreferenceRow]:
    """Read rankings, pairs or hh-rlhf transcripts (JSONL or CSV) into preference rows; see the module docstring.
    `report`, if given, gets `skipped_empty`: pairs left out for an empty response."""
    path = Path(path)
    if ties not in TIES:
        raise DataError(path, None, "ties", f"expected one of {', '.join(TIES)}, not {ties!r}")
    text = read_text(path)
    rows: list[PreferenceRow] = []
    if path.suffix.lower() == ".csv":
        rows = _csv_pairs(path, text, ties, annotator, skip_empty)
    else:
        for number, raw in enumerate(text.splitlines(), start=1):
            if raw.strip():
                try:
                    obj = json.loads(raw)
                except json.JSONDecodeError as e:
                    raise DataError(path, number, None, f"not valid JSON ({e.msg} at column {e.colno})") from None
                for pair in object_pairs(obj, path, number, ties, annotator, skip_empty):
                    rows.append({**pair, "_line": number})  # type: ignore[typeddict-unknown-key]
    kept = [r for r in rows if r["chosen"][0]["content"].strip() and r["rejected"][0]["content"].strip()]
    if report is not None:
        report["skipped_empty"] = len(rows) - len(kept)
    rows = kept
    if not rows:
        raise DataError(path, None, None, "no preference pairs found (every ranking tied?)" if text.strip() else "empty")
    seen: dict[str, int] = {}
    for row in rows:
        line = row.pop("_line")  # type: ignore[typeddict-item]
        if row["id"] in seen:
            raise DataError(path, line, "id", f"duplicate id {row['id']!r} (first on line {seen[row['id']]})")
        seen[row["id"]] = line
    return rows


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
    groups: dict[str, dict] = {}
    for record in reader:
        line = reader.line_num
        key = record.get("id") or record.get("prompt") or ""
        if not (record.get("prompt") or "").strip():
            raise DataError(path, line, "prompt", "is empty")
        try:
            value = float(record[field])
        except (TypeError, ValueError):
            raise DataError(path, line, field, f"expected a number, not {record[field]!r}") from None
        group = groups.setdefault(key, {"line": line, "obj": {"prompt": record["prompt"], "responses": [],
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
    """Import `config.rankings` into `config.out`; returns counts."""
    report: dict = {}
    rows = import_rankings(config.rankings, config.ties, config.annotator, config.skip_empty, report)
    Path(config.out).parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(config.out, rows)
    return {"pairs": len(rows), "ties": sum(r["p_chosen"] == 0.5 for r in rows), **report,
            "annotators": len({r.get("annotator") for r in rows if r.get("annotator")})}


# --------------------------------------------------------------------------------------------------------------------
# Mixing sources


def load_preferences(path: Path | str, ties: str = "skip", skip_empty: bool = False) -> list[PreferenceRow]:
    """Preference rows from a file: rows rlaif wrote (`p_chosen` present: labels, critique prefs, imports) are read
    as they are; rankings, pairs and hh-rlhf transcripts are imported as human labels."""
    path = Path(path)
    text = read_text(path)
    first = next((line for line in text.splitlines() if line.strip()), "")
    try:
        is_rlaif = path.suffix.lower() != ".csv" and "p_chosen" in json.loads(first)
    except (json.JSONDecodeError, TypeError):
        is_rlaif = False
    if not is_rlaif:
        return import_rankings(path, ties, skip_empty=skip_empty)
    rows = []
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as e:
            raise DataError(path, number, None, f"not valid JSON ({e.msg} at column {e.colno})") from None
        rows.append(_checked_preference(obj, path, number))
    return rows


def _checked_preference(obj: Any, path: Path, line: int) -> PreferenceRow:
    if not isinstance(obj, dict):
        raise DataError(path, line, None, "expected a JSON object")
    prompt = _as_messages(obj.get("prompt"), path, line, "prompt")
    row = dict(obj)
    row["prompt"] = prompt
    for name in ("chosen", "rejected"):
        row[name] = [{"role": "assistant", "content": _response_text(obj.get(name), path, line, name)}]
    p = obj.get("p_chosen")
    if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0.0 <= p <= 1.0:
        raise DataError(path, line, "p_chosen", "expected a probability between 0 and 1")
    if obj.get("source", "human") not in SOURCES:
        raise DataError(path, line, "source", f"expected one of {', '.join(SOURCES)}")
    weight = obj.get("weight", 1.0)
    if not isinstance(weight, (int, float)) or weight < 0:
        raise DataError(path, line, "weight", "expected a number >= 0")
    row.setdefault("source", "human")
    row["id"] = str(obj.get("id") or content_id([prompt, row["chosen"], row["rejected"]], "pref"))
    return row  # type: ignore[return-value]


def pair_key(row: PreferenceRow) -> str:
    """The same pair whichever response a source put first."""
    responses = sorted([row["chosen"][-1]["content"], row["rejected"][-1]["content"]])
    return content_id([row["prompt"], responses], "pair")


def parse_weighted(spec: str) -> tuple[str, float]:
    """"FILE:WEIGHT" -> (FILE, WEIGHT); a bare FILE weighs 1. A colon not followed by a number is part of the path."""
    path, sep, tail = spec.rpartition(":")
    if sep:
        try:
            weight = float(tail)
        except ValueError:
            return spec, 1.0
        if not math.isfinite(weight):  # "nan", "inf": part of the name
            return spec, 1.0
        if weight < 0:
            raise DataError(path, None, "weight", f"must be >= 0, not {weight}")
        return path, weight
    return spec, 1.0


def mix(sources: list[tuple[str, list[PreferenceRow], float]], human_overrides: bool = False
        ) -> tuple[list[PreferenceRow], dict]:
    """Merge (name, rows, weight) sources into one row per distinct pair; returns (rows, agreement).

    A merged row faces the side its labels favour (`p_chosen >= 0.5`); `weight` = the sum of source weight times
    row weight; `provenance` = [{file, id, source, p_chosen (facing this row's chosen), weight}, ...]; `source` is
    "human" if any person labeled the pair, else the first source's."""
    groups: dict[str, list[tuple[str, PreferenceRow, float]]] = defaultdict(list)
    for name, rows, weight in sources:
        for row in rows:
            groups[pair_key(row)].append((name, row, weight * float(row.get("weight", 1.0))))
    merged, both, disagreements = [], 0, []
    for entries in groups.values():
        base = entries[0][1]
        chosen_text = base["chosen"][-1]["content"]
        provenance = []
        for name, row, weight in entries:
            same_way = row["chosen"][-1]["content"] == chosen_text
            provenance.append({"file": name, "id": row["id"], "source": row.get("source", "human"),
                               "p_chosen": row["p_chosen"] if same_way else 1.0 - row["p_chosen"], "weight": weight})
        human = [e for e in provenance if e["source"] == "human"]
        ai = [e for e in provenance if e["source"] == "ai"]
        if human and ai:
            both += 1
            h, a = _mean_p(human), _mean_p(ai)
            if (h - 0.5) * (a - 0.5) < 0:  # opposite winners; a 0.5 on either side is no conflict
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
        if p < 0.5:  # face the winner
            row["chosen"], row["rejected"], p = base["rejected"], base["chosen"], 1.0 - p
            for e in provenance:
                e["p_chosen"] = 1.0 - e["p_chosen"]
            if "p_orders" in row:
                first, second = row["p_orders"]["chosen_first"], row["p_orders"]["chosen_second"]
                row["p_orders"] = {"chosen_first": 1.0 - second, "chosen_second": 1.0 - first}
            if "principle_p" in row:
                row["principle_p"] = {k: 1.0 - v for k, v in row["principle_p"].items()}
        row.update(p_chosen=p, weight=total, provenance=provenance,
                   source="human" if any(e["source"] == "human" for e in provenance) else provenance[0]["source"])
        merged.append(row)
    agreement = {"pairs_labeled_by_both": both, "agree": both - len(disagreements),
                 "rate": (both - len(disagreements)) / both if both else None, "disagreements": disagreements,
                 "human_overrides": human_overrides}
    return merged, agreement


def _mean_p(entries: list[dict]) -> float:
    return sum(e["p_chosen"] for e in entries) / len(entries)
