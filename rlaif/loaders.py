"""Users' input files in the data contract's rows: prompts (JSONL, CSV or TSV, plain text or hh-rlhf transcripts) and
hh-rlhf chosen/rejected transcripts as human preference pairs. docs/data-contract.md lists the formats.

Rows without an `id` get a stable one from their content; errors name the file, line and field. This module
imports only the standard library.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from pathlib import Path
from typing import Any

from rlaif.records import DataError, Message, PreferenceRow, PromptRow, Tally, iter_jsonl, read_text, reply_problem


def content_id(value: Any, prefix: str = "p") -> str:
    """A stable id from content, so rows without an `id` get the same id on every run."""
    blob = json.dumps(value, sort_keys=True, ensure_ascii=False).encode("utf-8")
    return f"{prefix}-{hashlib.sha1(blob).hexdigest()[:12]}"


_TURN = re.compile(r"\n\n(Human|Assistant): ")


def parse_transcript(text: str) -> list[Message]:
    """Turn an hh-rlhf transcript ("\\n\\nHuman: ...\\n\\nAssistant: ...") into chat messages."""
    parts = _TURN.split(text)
    if parts[0].strip() or len(parts) < 3:
        raise ValueError("expected a transcript starting with '\\n\\nHuman: '")
    roles = {"Human": "user", "Assistant": "assistant"}
    return [{"role": roles[who], "content": said.strip()} for who, said in zip(parts[1::2], parts[2::2])]


def _as_messages(value: Any, path: Path, line: int, name: str) -> list[Message]:
    if isinstance(value, str):
        if not value.strip():
            raise DataError(path, line, name, "is empty")
        return [{"role": "user", "content": value}]
    if isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
        for i, m in enumerate(value):
            if m.get("role") not in ("system", "user", "assistant"):
                raise DataError(path, line, f"{name}[{i}].role", "expected 'system', 'user' or 'assistant'")
            if not isinstance(m.get("content"), str):
                raise DataError(path, line, f"{name}[{i}].content", "expected text")
        return value
    raise DataError(path, line, name, "expected text or a list of {role, content} messages")


def _ends_with_user(messages: list[Message], path: Path, line: int, name: str) -> list[Message]:
    """`messages`, which a prompt must end with a user turn (the one the model answers), or a DataError."""
    if not any(m["role"] == "user" for m in messages):
        raise DataError(path, line, name, "has no user turn (a prompt ends with the user turn to answer)")
    if messages[-1]["role"] != "user":
        raise DataError(path, line, f"{name}[{len(messages) - 1}].role",
                        f"a prompt ends with the user turn to answer, not {messages[-1]['role']!r}")
    return messages


def as_prompt(value: Any, path: Path, line: int, name: str = "prompt") -> list[Message]:
    """A prompt from text (one user turn) or from {role, content} messages ending with a user turn; a DataError
    naming the file, line and field otherwise."""
    return _ends_with_user(_as_messages(value, path, line, name), path, line, name)


def response_text(value: Any, path: Path, line: int, name: str) -> str:
    """A reply given as text, or as chat messages ending with the assistant's (its content), possibly empty."""
    if isinstance(value, list) and value and isinstance(value[-1], dict) and value[-1].get("role", "assistant") \
            == "assistant":
        value = value[-1].get("content")
    if not isinstance(value, str):
        raise DataError(path, line, name, "expected the reply: text, or a list ending with an assistant message")
    return value


def _prompt_from_object(row: dict, path: Path, line: int) -> tuple[list[Message], str]:
    """The prompt of one input object, and the kind of object it was."""
    if "prompt" in row:
        return as_prompt(row["prompt"], path, line, "prompt"), "prompt"
    if "messages" in row:
        messages = _as_messages(row["messages"], path, line, "messages")
        while messages and messages[-1]["role"] == "assistant":  # a finished chat: answer its last user turn again
            messages = messages[:-1]
        return _ends_with_user(messages or row["messages"], path, line, "messages"), "messages"
    if "chosen" in row and isinstance(row["chosen"], str):
        try:
            turns = parse_transcript(row["chosen"])
        except ValueError as e:
            raise DataError(path, line, "chosen", str(e)) from None
        return [turns[0]], "hh-rlhf"
    raise DataError(path, line, "prompt", "missing: expected a 'prompt', 'messages' or hh-rlhf 'chosen' field")


CSV_SUFFIXES = (".csv", ".tsv")


def read_csv(path: Path | str) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """A CSV or TSV file as (column names, [(line, {column: cell})]), as spreadsheets export it: column names
    lowercased and stripped (`Prompt `, `prompt` are one column; others, like `Timestamp`, are the caller's to
    ignore); the delimiter a tab for .tsv, else taken from the header line (comma, semicolon or tab); rows whose
    cells are all empty skipped (Excel and Sheets add `,,` rows); a row with fewer cells than columns has its
    missing cells read as empty (spreadsheets drop trailing empty cells), so every row has every column and the
    caller's field checks name the empty one. `line` is where a row starts. A row with more non-empty cells than
    columns is a DataError (a comma inside an unquoted cell), as is a column named twice."""
    path = Path(path)
    text = read_text(path)
    delimiter = "\t"
    if path.suffix.lower() != ".tsv":
        try:
            delimiter = csv.Sniffer().sniff(text.split("\n", 1)[0], delimiters=",;\t").delimiter
        except csv.Error:  # one column: nothing to tell the delimiter by
            delimiter = ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    rows: list[tuple[int, dict[str, str]]] = []
    try:
        columns = [name.strip().lower() for name in next(reader, [])]
        for name in columns:
            if name and columns.count(name) > 1:
                raise DataError(path, 1, name, "column named twice (names are read without case and spaces)")
        end = reader.line_num
        for cells in reader:
            start, end = end + 1, reader.line_num
            if not any(cell.strip() for cell in cells):
                continue
            if any(cell.strip() for cell in cells[len(columns):]):
                raise DataError(path, start, None, f"{len(cells)} cells under {len(columns)} columns; a cell holding "
                                                   f"{delimiter!r} must be in double quotes")
            cells += [""] * (len(columns) - len(cells))  # trailing empty cells a spreadsheet left out
            rows.append((start, {name: cell for name, cell in zip(columns, cells) if name}))
    except csv.Error as e:
        raise DataError(path, reader.line_num, None, f"not valid CSV: {e}") from None
    return [name for name in columns if name], rows


def load_prompts(path: Path | str) -> list[PromptRow]:
    """Load prompts from JSONL, CSV or TSV (a `prompt` column, read by `read_csv`), plain text (any other suffix:
    one prompt per line, no header) or hh-rlhf transcripts (the first Human turn becomes the prompt). A prompt ends
    with a user turn. Rows keep their `id` and `tags` when given; others get a stable id from their content. Errors
    name the file, line and field (in a CSV, the column)."""
    path = Path(path)
    if not path.exists():
        raise DataError(path, None, None, "file not found")
    suffix = path.suffix.lower()
    rows: list[PromptRow] = []
    if suffix in (".jsonl", ".json"):
        for line, obj in iter_jsonl(path):
            messages, kind = _prompt_from_object(obj, path, line)
            rows.append(_prompt_row(obj, messages, path, line, "hh-rlhf" if kind == "hh-rlhf" else path.name))
    elif suffix in CSV_SUFFIXES:
        columns, records = read_csv(path)
        if "prompt" not in columns:
            raise DataError(path, 1, "prompt", f"no 'prompt' column (columns: {', '.join(columns) or 'none'})")
        for line, record in records:
            obj: dict[str, Any] = {k: v for k, v in record.items() if v != ""}
            if "tags" in obj:
                obj["tags"] = [t.strip() for t in obj["tags"].split(";") if t.strip()]
            messages = _as_messages(record["prompt"], path, line, "prompt")
            rows.append(_prompt_row(obj, messages, path, line, path.name))
    else:  # one prompt per line; split on "\n" only, like JSONL
        for line, text in enumerate(read_text(path).split("\n"), start=1):
            if text.strip():
                rows.append(_prompt_row({}, [{"role": "user", "content": text.strip()}], path, line, path.name))
    if not rows:
        raise DataError(path, None, None, "no prompts found")
    return _unique_ids(rows, path, lambda row: content_id(row["prompt"]))


def _prompt_row(obj: dict, messages: list[Message], path: Path, line: int, source: str) -> PromptRow:
    row: PromptRow = {"id": "", "prompt": messages}
    if "id" in obj:
        if not isinstance(obj["id"], (str, int)) or str(obj["id"]) == "":
            raise DataError(path, line, "id", "expected non-empty text")
        row["id"] = str(obj["id"])
    tags = obj.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise DataError(path, line, "tags", "expected a list of text tags")
    if tags:
        row["tags"] = tags
    row["source"] = str(obj.get("source", source))
    row["_line"] = line  # type: ignore[typeddict-unknown-key]  # removed by _unique_ids
    return row


def unique_id(seen: dict[str, int], row_id: str, path: Path | str, line: int) -> None:
    """Record that `row_id` is on `line` of `path`; a DataError if an earlier line had it (`seen`: id -> line).
    Stages write their rows by id, once each: two input rows of one id would be one output row."""
    if row_id in seen:
        raise DataError(path, line, "id", f"duplicate id {row_id!r} (first on line {seen[row_id]})")
    seen[row_id] = line


def _unique_ids(rows: list, path: Path, make_id) -> list:
    """Give id-less rows a content id (repeats get -2, -3, ...) and reject duplicate explicit ids."""
    seen: dict[str, int] = {}
    for row in rows:
        line = row.pop("_line")
        if not row["id"]:
            base = make_id(row)
            row["id"], n = base, 1
            while row["id"] in seen:
                n += 1
                row["id"] = f"{base}-{n}"
        unique_id(seen, row["id"], path, line)
    return rows


def load_hh_preferences(path: Path | str, limit: int | None = None, skip_empty: bool = False,
                        tally: Tally | None = None) -> list[PreferenceRow]:
    """Load hh-rlhf chosen/rejected transcripts as human preference rows: the shared turns become the prompt and
    the final Assistant turns the chosen and rejected responses; `limit` stops after that many pairs read.

    A pair whose final replies are the same text is left out. An empty reply is a DataError naming its line and
    side, unless `skip_empty`, which leaves the pair out (as `rlaif rankings import --skip-empty` does). `tally`,
    if given, counts the pairs read, used and left out (`empty_reply`, `identical_replies`)."""
    path = Path(path)
    tally = tally if tally is not None else Tally("pairs")
    rows: list[PreferenceRow] = []
    for read, (line, obj) in enumerate(iter_jsonl(path)):
        if limit is not None and read >= limit:
            break
        sides = {}
        for name in ("chosen", "rejected"):
            if not isinstance(obj.get(name), str):
                raise DataError(path, line, name, "missing: expected an hh-rlhf transcript")
            try:
                sides[name] = parse_transcript(obj[name])
            except ValueError as e:
                raise DataError(path, line, name, str(e)) from None
        chosen, rejected = sides["chosen"], sides["rejected"]
        if chosen[-1]["role"] != "assistant" or rejected[-1]["role"] != "assistant":
            raise DataError(path, line, "chosen", "transcript does not end with an Assistant turn")
        if chosen[:-1] != rejected[:-1]:
            raise DataError(path, line, "rejected", "chosen and rejected differ before their last Assistant turn")
        _ends_with_user(chosen[:-1], path, line, "chosen")  # two Assistant turns in a row end it
        tally.read += 1
        problem = reply_problem(chosen[-1]["content"], rejected[-1]["content"])
        if problem == "empty_reply" and not skip_empty:
            side = "rejected" if chosen[-1]["content"].strip() else "chosen"
            raise DataError(path, line, side, "is empty (skip_empty leaves such pairs out)")
        if problem:
            tally.leave_out(problem)
            continue
        tally.used += 1
        prompt = chosen[:-1]
        row: PreferenceRow = {
            "id": str(obj.get("id", "")),
            "prompt": prompt,
            "chosen": [chosen[-1]],
            "rejected": [rejected[-1]],
            "p_chosen": 1.0,
            "source": "human",
        }
        row["_line"] = line  # type: ignore[typeddict-unknown-key]
        rows.append(row)
    return _unique_ids(rows, path, lambda row: content_id([row["prompt"], row["chosen"], row["rejected"]], "hh"))
