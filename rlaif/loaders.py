"""Users' input files in the data contract's rows: prompts (JSONL, CSV, plain text or hh-rlhf transcripts) and
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


def _prompt_from_object(row: dict, path: Path, line: int) -> tuple[list[Message], str]:
    """The prompt of one input object, and the kind of object it was."""
    if "prompt" in row:
        return _as_messages(row["prompt"], path, line, "prompt"), "prompt"
    if "messages" in row:
        messages = _as_messages(row["messages"], path, line, "messages")
        while messages and messages[-1]["role"] == "assistant":  # a finished chat: answer its last user turn again
            messages = messages[:-1]
        if not messages:
            raise DataError(path, line, "messages", "has no user turn")
        return messages, "messages"
    if "chosen" in row and isinstance(row["chosen"], str):
        try:
            turns = parse_transcript(row["chosen"])
        except ValueError as e:
            raise DataError(path, line, "chosen", str(e)) from None
        return [turns[0]], "hh-rlhf"
    raise DataError(path, line, "prompt", "missing: expected a 'prompt', 'messages' or hh-rlhf 'chosen' field")


def load_prompts(path: Path | str) -> list[PromptRow]:
    """Load prompts from JSONL, CSV (a `prompt` column), plain text (one prompt per line) or hh-rlhf transcripts
    (the first Human turn becomes the prompt). Rows keep their `id` and `tags` when given; others get a stable id
    from their content. Errors name the file, line and field."""
    path = Path(path)
    if not path.exists():
        raise DataError(path, None, None, "file not found")
    suffix = path.suffix.lower()
    rows: list[PromptRow] = []
    if suffix in (".jsonl", ".json"):
        for line, obj in iter_jsonl(path):
            messages, kind = _prompt_from_object(obj, path, line)
            rows.append(_prompt_row(obj, messages, path, line, "hh-rlhf" if kind == "hh-rlhf" else path.name))
    elif suffix == ".csv":
        reader = csv.DictReader(io.StringIO(read_text(path), newline=""))
        if not reader.fieldnames or "prompt" not in reader.fieldnames:
            raise DataError(path, 1, "prompt", f"no 'prompt' column (columns: {reader.fieldnames})")
        for record in reader:
            line = reader.line_num
            obj: dict[str, Any] = {k: v for k, v in record.items() if v not in (None, "")}
            if "tags" in obj:
                obj["tags"] = [t.strip() for t in obj["tags"].split(";") if t.strip()]
            messages = _as_messages(record["prompt"] or "", path, line, "prompt")
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


def _unique_ids(rows: list, path: Path, make_id) -> list:
    """Give id-less rows a content id (repeats get -2, -3, ...) and reject duplicate explicit ids."""
    seen: dict[str, int] = {}
    for row in rows:
        line = row.pop("_line")
        if row["id"]:
            if row["id"] in seen:
                raise DataError(path, line, "id", f"duplicate id {row['id']!r} (first on line {seen[row['id']]})")
        else:
            base = make_id(row)
            row["id"], n = base, 1
            while row["id"] in seen:
                n += 1
                row["id"] = f"{base}-{n}"
        seen[row["id"]] = line
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
