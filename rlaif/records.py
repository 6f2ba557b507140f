"""The data contract: the rows every stage reads and writes, and the resumable JSONL files they live in.

Column names follow TRL's dataset formats (`prompt`, `messages`, `chosen`, `rejected`), conversational flavour: a
prompt is a list of chat messages, so multi-turn context survives every stage. Every file loads with
`datasets.load_dataset("json", data_files=PATH)`. The full reference, with examples, is docs/data-contract.md.

Stages write rows as they finish (one flushed line per row, keyed by `id`), so a killed run loses at most the row
being written; reopening the file repairs a torn last line and reports which ids are done, so a rerun skips them.
Users' prompt and preference files become these rows in rlaif/loaders.py.

This module imports only the standard library.
"""

from __future__ import annotations

import codecs
import datetime as _dt
import hashlib
import json
import math
import os
import platform
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypedDict

try:  # NotRequired and Self are in typing from 3.11
    from typing import NotRequired, Self
except ImportError:  # pragma: no cover
    from typing_extensions import NotRequired, Self


# --------------------------------------------------------------------------------------------------------------------
# Row types (documentation and type hints; JSON on disk)


class Message(TypedDict):
    role: Literal["system", "user", "assistant"]
    content: str


class PromptRow(TypedDict):
    """A prompt to answer. `prompt` ends with a user turn; earlier turns are context."""

    id: str
    prompt: list[Message]
    tags: NotRequired[list[str]]  # e.g. ["red-team"], ["helpful"]: lets evaluation report them apart
    source: NotRequired[str]  # where it came from: a file name, "hh-rlhf"


class RevisionRound(TypedDict):
    principle: str  # principle id
    critique_request: str
    critique: str
    revision_request: str
    revision: str
    flags: NotRequired[list[str]]


class RevisionRow(TypedDict):
    """The whole critique-and-revise trace for one prompt (`rlaif critique`, revisions.jsonl)."""

    id: str
    prompt: list[Message]
    initial: str
    rounds: list[RevisionRound]
    final: str
    flags: NotRequired[list[str]]


class SFTRow(TypedDict):
    """A supervised example in TRL's conversational language-modeling format (sft.jsonl)."""

    id: str
    messages: list[Message]


class CandidateRow(TypedDict):
    """K sampled responses to one prompt (`rlaif sample`, candidates.jsonl)."""

    id: str
    prompt: list[Message]
    responses: list[str]
    policy: NotRequired[str]
    tokens: NotRequired[list[int]]  # generated tokens of each response
    finished: NotRequired[list[bool]]  # whether each response ended with EOS (else it hit max_new_tokens)


class PreferenceRow(TypedDict):
    """One preference pair in TRL's conversational preference format, plus a soft label and its evidence."""

    id: str
    prompt: list[Message]
    chosen: list[Message]  # one assistant message
    rejected: list[Message]  # one assistant message
    p_chosen: float  # probability that `chosen` is the better response: 1.0 for a hard human label
    source: Literal["ai", "human", "critique"]
    weight: NotRequired[float]
    annotator: NotRequired[str]  # human rater id, when known
    seconds: NotRequired[float]  # how long the person took to answer (the rank page, Label Studio's lead_time)
    # How `rlaif rankings export` chose the pair a person answered (its task's `why`): random (an unbiased sample, the
    # only rows that measure the AI labeler fairly), uncertain, inconsistent, principles_disagree or stratified
    # (`chosen_for_doubt`)
    why: NotRequired[str]
    ai_p: NotRequired[float]  # the AI's p_chosen of that task, turned to face this row's `chosen`
    note: NotRequired[str]  # the annotator's note on their answer (non-empty)
    labeler: NotRequired[str]  # AI labeler model id
    principles: NotRequired[list[str]]  # principle ids used by the AI labeler
    principle_p: NotRequired[dict[str, float]]  # p_chosen under each principle
    p_orders: NotRequired[dict[str, float]]  # p_chosen with chosen shown first / second
    consistent: NotRequired[bool]  # both orders agree on the winner
    flags: NotRequired[list[str]]


class RankingRow(TypedDict):
    """A human ranking of K responses (input to `rlaif rankings import`): `ranks` (1 = best, ties allowed) or
    `scores` (higher is better)."""

    id: str
    prompt: list[Message]
    responses: list[str]
    ranks: NotRequired[list[int]]
    scores: NotRequired[list[float]]
    annotator: NotRequired[str]


# --------------------------------------------------------------------------------------------------------------------
# Errors, numbers and tallies: what a stage refuses, and what it read, used and left out


class ConfigError(Exception):
    """A setting whose value cannot work. The message starts with the settings it is about ("top_p, seed: no
    effect with temperature 0"); `fields` lists them (given, or read from that start), so that a caller can point
    at the recipe line, `--config` line or flag that set them."""

    def __init__(self, message: str, fields: Iterable[str] | None = None):
        super().__init__(message)
        if fields is None:
            head, sep, _ = message.partition(": ")
            fields = head.split(", ") if sep and re.fullmatch(r"[a-z_]+(, [a-z_]+)*", head) else []
        self.fields = list(fields)

    def __reduce__(self):  # raised in a child process (rlaif.launch.in_child) and again here
        return type(self), (str(self), self.fields)


class DataError(Exception):
    """A problem with a user's data file. The message names the file, line and field."""

    def __init__(self, path: Path | str, line: int | None, field: str | None, message: str):
        self.path, self.line, self.field, self.message = Path(path), line, field, message
        where = f"{path}:{line}" if line else str(path)
        super().__init__(f"{where}: {field}: {message}" if field else f"{where}: {message}")

    def __reduce__(self):
        return type(self), (self.path, self.line, self.field, self.message)


def number(value: Any, path: Path | str, line: int | None, field: str, minimum: float | None = None,
           maximum: float | None = None, positive: bool = False) -> float:
    """`value` as a float, or a DataError naming file, line and field: refuses text, booleans, NaN and infinities
    (JSON as Python writes it holds `NaN` and `Infinity`, a CSV cell `nan`), and values outside [minimum, maximum]
    (or not > 0 with `positive`). Every number rlaif reads from a user's file or setting goes through here."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DataError(path, line, field, f"expected a number, not {value!r}")
    try:
        value = float(value)
    except OverflowError:  # an integer beyond any float
        value = math.inf if value > 0 else -math.inf
    if minimum is not None and maximum is not None:
        bounds = f" between {minimum:g} and {maximum:g}"
    elif positive or minimum is not None:
        bounds = " > 0" if positive else f" >= {minimum:g}"
    else:
        bounds = f" <= {maximum:g}" if maximum is not None else ""
    below = (positive and value <= 0) or (minimum is not None and value < minimum)
    if not math.isfinite(value):
        raise DataError(path, line, field, f"expected a finite number{bounds}, got {value}")
    if below or (maximum is not None and value > maximum):
        raise DataError(path, line, field, f"expected a finite number{bounds}, got {value:g}")
    return value


def split_weight(spec: str, minimum: float | None = None) -> tuple[str, float]:
    """"THING:WEIGHT" -> (THING, WEIGHT); a bare THING weighs 1. A colon not followed by a number is part of the
    name ("C:/data/a.jsonl", "module:function"), unless THING is a file and THING:TAIL is not: "a.jsonl:one" is a
    DataError (a weight that is not a number), not a missing file. A numeric tail must be a finite number
    (>= `minimum` when given): "a.jsonl:nan", "a.jsonl:inf" are DataErrors, never part of a file name."""
    head, sep, tail = spec.rpartition(":")
    if not sep:
        return spec, 1.0
    try:
        weight = float(tail)
    except ValueError:
        if Path(head).is_file() and not Path(spec).exists():  # "prefs.jsonl:one", "prefs.jsonl:1,5"
            raise DataError(head, None, "weight", f"expected a number, not {tail!r}") from None
        return spec, 1.0
    return head, number(weight, head, None, "weight", minimum=minimum)


def chosen_for_doubt(row: dict) -> bool:
    """A person's row of a pair `rlaif rankings export` chose for the AI labeler's doubt (its `why` other than
    random): it trains, but measuring the labeler on it would understate it. Rows without `why` (human files from
    elsewhere) are taken as they come."""
    return row.get("source", "human") == "human" and row.get("why") not in (None, "random")


def outcome(p: float) -> float:
    """The winner a preference probability names: 1 (the first side), 0 (the second) or 0.5 (an exact tie, which
    counts half wherever labels are compared: agreement, consistency, accuracy)."""
    return 1.0 if p > 0.5 else 0.5 if p == 0.5 else 0.0


def reply_problem(chosen: str, rejected: str) -> str | None:
    """Why a pair of replies says nothing to learn from or judge, or None: `empty_reply` (either is blank) or
    `identical_replies` (equal after stripping, so "chosen" is compared with itself). The reason is a Tally key."""
    if not chosen.strip() or not rejected.strip():
        return "empty_reply"
    if chosen.strip() == rejected.strip():
        return "identical_replies"
    return None


@dataclass
class Tally:
    """What a stage read, what it used, and what it left out and why.

    Every stage that reads data keeps one: `counts()` goes into its manifest and `summary()` into its closing
    line, so no row disappears without a count and a reason. `require_some()` stops a stage that has nothing left
    to train on or judge, before it loads a model.

        tally = Tally("pairs")
        for row in rows:
            tally.read += 1
            if (problem := reply_problem(...)):
                tally.leave_out(problem)
            else:
                tally.used += 1
    """

    noun: str = "rows"
    read: int = 0
    used: int = 0
    left_out: dict[str, int] = field(default_factory=dict)

    def leave_out(self, reason: str, n: int = 1) -> None:
        """Count `n` rows left out for `reason` (a short snake_case key: too_long, empty_reply, ...)."""
        if n:
            self.left_out[reason] = self.left_out.get(reason, 0) + n

    def add(self, other: Tally) -> None:
        """Count what `other` counted too (one file's tally into a stage's)."""
        self.read, self.used = self.read + other.read, self.used + other.used
        for reason, n in other.left_out.items():
            self.leave_out(reason, n)

    def counts(self, prefix: str = "") -> dict[str, int]:
        """{read, used, left_out, left_out_REASON...}, keys optionally prefixed (for a stage with several inputs)."""
        counts = {"read": self.read, "used": self.used, "left_out": sum(self.left_out.values())}
        counts.update({f"left_out_{reason}": n for reason, n in sorted(self.left_out.items())})
        return {f"{prefix}{key}": n for key, n in counts.items()}

    def summary(self) -> str:
        """"read 4 pairs, used 3, left out 1 (too_long 1)"; "read 1 pair, ..." (the noun's first plural word loses
        its s: "training pairs" -> "training pair")."""
        noun = re.sub(r"s\b", "", self.noun, count=1) if self.read == 1 else self.noun
        text = f"read {self.read} {noun}, used {self.used}"
        if self.left_out:
            reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(self.left_out.items()))
            text += f", left out {sum(self.left_out.values())} ({reasons})"
        return text

    def require_some(self, path: Path | str, advice: str | dict[str, str] = "") -> None:
        """A DataError when nothing is left to use: the whole tally, and what to change (`advice`, or for each
        reason rows were left out for, `advice[reason]`)."""
        if self.used == 0:
            if isinstance(advice, dict):
                advice = "; ".join(dict.fromkeys(advice[r] for r in self.left_out if r in advice))
            advice = f"; {advice}" if advice else ""
            raise DataError(path, None, None, f"nothing left to use: {self.summary()}{advice}")


# --------------------------------------------------------------------------------------------------------------------
# Reading and writing: JSONL, a user's text and YAML files


def _repair_tail(path: Path) -> int:
    """Make `path` end at a line boundary. A crash can leave a last line without its newline: if what is there is a
    whole JSON object it is kept (and the newline added), otherwise it is cut off. Returns the bytes removed."""
    with open(path, "rb+") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        if size == 0:
            return 0
        # Read back far enough to find the previous newline.
        start = size
        tail = b""
        while start > 0 and b"\n" not in tail:
            step = min(start, 1 << 16)
            start -= step
            f.seek(start)
            tail = f.read(step) + tail
        if tail.endswith(b"\n"):
            return 0
        cut = tail.rfind(b"\n") + 1  # 0 when the file is one torn line
        last = tail[cut:]
        try:
            if isinstance(json.loads(last), dict):
                f.seek(0, os.SEEK_END)  # reading back moved the position off the end
                f.write(b"\n")
                return 0
        except ValueError:
            pass
        f.truncate(start + cut)
        return len(last)


# Line ends inside JSON strings that `json.dumps(..., ensure_ascii=False)` leaves raw and that str.splitlines() (and
# so many JSONL readers) would take for line breaks. rlaif reads JSONL split on "\n" only and writes these escaped.
_RAW_LINE_BREAKS = {"\u2028": "\\u2028", "\u2029": "\\u2029", "\x85": "\\u0085"}


def _json_safe(value: Any) -> Any:
    """`value` with every NaN or infinite float replaced by None: `json.dumps` would write the bare tokens NaN and
    Infinity, which are not JSON (jq, JavaScript and most parsers refuse them)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return value


def dumps_json(value: Any, indent: int | None = 2) -> str:
    """A whole JSON file's text (metrics, reports, manifests): strict JSON, an undefined number (NaN, infinity)
    written as null, text kept as UTF-8."""
    return json.dumps(_json_safe(value), indent=indent, ensure_ascii=False, allow_nan=False) + "\n"


def dumps_line(row: dict) -> str:
    """One JSONL line for `row`: strict JSON (an undefined number as null, as in `dumps_json`) with U+2028, U+2029
    and U+0085 escaped (they are legal raw inside JSON strings, but line-splitting readers other than rlaif's would
    cut the row there), ending in "\n"."""
    text = json.dumps(_json_safe(row), ensure_ascii=False, allow_nan=False)
    if any(c in text for c in _RAW_LINE_BREAKS):
        text = text.translate(str.maketrans(_RAW_LINE_BREAKS))
    return text + "\n"


def read_text(path: Path | str) -> str:
    """A user's text file (prompts, rankings, YAML, CSV): UTF-8 with or without a byte-order mark, or UTF-16 with
    one. The mark is not returned. A byte that is not UTF-8 is an error naming the line and column; so is a NUL, which
    text does not hold (UTF-16 without its mark reads as UTF-8 with a NUL after every ASCII character)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, None, None, "file not found")
    raw = path.read_bytes()
    if b"\0" in raw and not raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        at = raw.index(b"\0")
        raise DataError(path, raw.count(b"\n", 0, at) + 1, None, "a NUL byte: not UTF-8 text (UTF-16 without a "
                        "byte-order mark?); save the file as UTF-8")
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return raw.decode("utf-16")
        except UnicodeDecodeError as e:
            raise DataError(path, None, None, f"not UTF-16 text ({e.reason}); save the file as UTF-8") from None
    raw = raw.removeprefix(codecs.BOM_UTF8)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line_start = raw.rfind(b"\n", 0, e.start) + 1
        raise _not_utf8(path, raw.count(b"\n", 0, e.start) + 1, raw[line_start : e.end], e.start - line_start) from None


def parse_yaml(text: str, path: Path | str = "<yaml>") -> tuple[Any, Any]:
    """(value, node) of YAML text (a recipe, constitution, `--config` file: `parse_yaml(read_text(path))`), read as
    YAML 1.2 reads it: U+2028, U+2029 and U+0085 are text. PyYAML follows YAML 1.1, where they end a line, so a raw
    one inside a value breaks the file or changes the value. The node (None for an empty document) gives line
    numbers. A key given twice in one mapping is a DataError naming `path`, the line and the key (YAML would keep
    only the last, silently). Raises yaml.YAMLError on a syntax error, as yaml.safe_load does."""
    import yaml

    free = (chr(c) for c in range(0xE000, 0xF900) if chr(c) not in text)  # private-use stand-ins for the parser
    stand_in = {c: next(free) for c in _RAW_LINE_BREAKS if c in text}
    loader = yaml.SafeLoader(text.translate(str.maketrans(stand_in)) if stand_in else text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, None
        back, todo, seen = str.maketrans({s: c for c, s in stand_in.items()}), [node], set()
        while stand_in and todo:
            item = todo.pop()
            if id(item) not in seen:
                seen.add(id(item))
                if isinstance(item, yaml.ScalarNode):
                    item.value = item.value.translate(back)
                else:
                    todo += [n for entry in item.value for n in (entry if isinstance(entry, tuple) else [entry])]
        _refuse_duplicate_keys(node, path)
        return loader.construct_document(node), node
    finally:
        loader.dispose()


def _refuse_duplicate_keys(root, path: Path | str) -> None:
    """A DataError at the second of two equal keys in one mapping of the YAML node tree `root`; the field is the
    key's place ("label", "critique.rounds", "examples.label[0].answer")."""
    import yaml

    todo, seen = [(root, "")], set()
    while todo:
        node, where = todo.pop()
        if id(node) in seen:  # an alias: checked where its anchor is
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first: dict[str, int] = {}
            for key, value in node.value:
                name = key.value if isinstance(key, yaml.ScalarNode) else None  # as written: `no` and "no" are one
                place = f"{where}.{name}" if where else str(name)
                if name is not None and key.tag != "tag:yaml.org,2002:merge":
                    if name in first:
                        raise DataError(path, key.start_mark.line + 1, place, f"duplicate key '{name}' (first on line "
                                        f"{first[name]}); YAML would keep only the last")
                    first[name] = key.start_mark.line + 1
                todo.append((value, place))
        elif isinstance(node, yaml.SequenceNode):
            todo += [(item, f"{where}[{i}]") for i, item in enumerate(node.value)]


def read_yaml(path: Path | str) -> tuple[Any, dict[str, int]]:
    """A user's YAML file (a recipe, a stage's `--config`): (value, lines), `lines` giving the line of each key of a
    top-level mapping, of their keys ("ppo.steps") and of their list items ("human[0]"). A syntax error or a
    duplicate key is a DataError naming the file and line; a missing file too."""
    import yaml

    try:
        value, node = parse_yaml(read_text(path), path)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise DataError(path, mark.line + 1 if mark else None, None, f"YAML syntax error: {e}") from None
    lines: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key, item in node.value:
            if not isinstance(key, yaml.ScalarNode):
                continue
            lines[key.value] = key.start_mark.line + 1
            if isinstance(item, yaml.MappingNode):
                lines.update({f"{key.value}.{sub.value}": sub.start_mark.line + 1 for sub, _ in item.value})
            elif isinstance(item, yaml.SequenceNode):
                lines.update({f"{key.value}[{i}]": entry.start_mark.line + 1 for i, entry in enumerate(item.value)})
    return value, lines


def _yaml_dump(value: Any) -> str:
    """YAML that `parse_yaml` (and any YAML 1.1 reader) reads back as `value`: text holding U+2028, U+2029 or U+0085
    is written double-quoted, where they are escapes."""
    import yaml

    class Dumper(yaml.SafeDumper):
        def represent_str(self, data: str):
            style = '"' if any(c in data for c in _RAW_LINE_BREAKS) else None
            return self.represent_scalar("tag:yaml.org,2002:str", data, style=style)

    Dumper.add_representer(str, Dumper.represent_str)
    return yaml.dump(value, Dumper=Dumper, sort_keys=False, allow_unicode=True)


def _not_utf8(path: Path, line: int, raw: bytes, offset: int) -> DataError:
    """The error for an undecodable byte at `offset` of the line `raw`: its column in characters, 1-based."""
    column = len(raw[:offset].decode("utf-8", errors="replace")) + 1
    return DataError(path, line, None, f"not UTF-8 text: byte 0x{raw[offset]:02x} at column {column}; save the file "
                                       "as UTF-8")


def iter_jsonl(path: Path | str, torn_tail_ok: bool = False) -> Iterator[tuple[int, dict]]:
    """(line number, object) for every row of a JSONL file: the one JSONL reader of rlaif.

    Lines are split on "\n" only ("\r\n" is fine): U+2028, U+2029 and U+0085 inside a string are text, not line
    breaks. A UTF-8 byte-order mark at the start is ignored (UTF-16 with a mark is read too); blank lines are
    skipped. A line that is not a JSON object is a DataError naming the line (and column), as is a key written twice
    in one object, at any depth (JSON readers keep only the last value, silently). With `torn_tail_ok`, a last line
    cut short by a crash (no newline, not valid JSON) is ignored: for files rlaif itself appends to."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, None, None, "file not found")
    with open(path, "rb") as f:
        data = f.read()
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        data = read_text(path).encode("utf-8")
    elif data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    lines = data.split(b"\n")
    torn = lines.pop()  # what follows the final newline: empty for a well-formed file
    for number, raw in enumerate(lines, start=1):
        if raw.strip():
            yield number, _parse_line(path, number, raw)
    if torn.strip():
        try:
            yield len(lines) + 1, _parse_line(path, len(lines) + 1, torn)
        except DataError:
            if not torn_tail_ok:
                raise


def read_jsonl(path: Path | str) -> Iterator[dict]:
    """The rows of a JSONL file that rlaif wrote (see `iter_jsonl`); a torn last line left by a crash is ignored."""
    return (row for _, row in iter_jsonl(path, torn_tail_ok=True))


def _parse_line(path: Path, number: int, raw: bytes) -> dict:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _not_utf8(path, number, raw, e.start) from None
    try:
        row = json.loads(text, object_pairs_hook=_object_once)
    except json.JSONDecodeError as e:
        raise DataError(path, number, None, f"not valid JSON: {e.msg} (column {e.colno})") from None
    except _DuplicateKey as e:
        raise DataError(path, number, e.key, "key written twice in one object (a JSON reader keeps only the last "
                                             "value, silently); remove one") from None
    if not isinstance(row, dict):
        raise DataError(path, number, None, f"expected a JSON object, got {type(row).__name__}")
    if "\\u" in text and _LONE_SURROGATE.search(text):
        _refuse_lone_surrogates(path, number, text, row)
    return row


class _DuplicateKey(Exception):
    def __init__(self, key: str):
        self.key = key


def _object_once(pairs: list[tuple[str, Any]]) -> dict:
    """A JSON object from its (key, value) pairs, as `json.loads` builds it, but refusing a key given twice (which
    `json.loads` resolves by keeping the last value)."""
    obj = dict(pairs)
    if len(obj) < len(pairs):
        keys: set[str] = set()
        raise _DuplicateKey(next(key for key, _ in pairs if key in keys or keys.add(key)))
    return obj


# A \uD800-\uDFFF escape that is not half of a pair: JSON lets it through, but it is no character, and UTF-8 (so
# every file rlaif writes) cannot hold it. A pair (an emoji written as \ud83d\ude00) is one character and fine.
_LONE_SURROGATE = re.compile(r"\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F])|"
                             r"(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2}")


def _refuse_lone_surrogates(path: Path, number: int, text: str, row: dict) -> None:
    """A DataError naming the line and column of the first lone surrogate escape, if the row really holds one (the
    pattern also matches an escaped backslash followed by "ud800", which is plain text)."""
    try:
        json.dumps(row, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        column = _LONE_SURROGATE.search(text).start() + 1
        raise DataError(path, number, None, f"{text[column - 1 : column + 5]} at column {column} is half of a "
                                            "UTF-16 surrogate pair, not a character; fix the text that wrote it") from None


class JsonlWriter:
    """Append-only JSONL output keyed by `id`, safe to kill at any moment.

    Opening an existing file repairs a torn last line and loads the ids already written into `done`; `write` appends
    one row and flushes it, so after a crash the rerun skips `done` and writes each id exactly once.

        with JsonlWriter(out / "sft.jsonl") as out_rows:
            for row in rows:
                if row["id"] not in out_rows.done:
                    out_rows.write(make(row))
    """

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.done: set[str] = set()
        if self.path.exists():
            _repair_tail(self.path)
            for number, row in iter_jsonl(self.path):
                if "id" not in row:
                    raise DataError(self.path, number, "id", "row has no id; this file was not written by rlaif")
                self.done.add(row["id"])
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - held until close(), one flush per row

    def write(self, row: dict) -> None:
        if row["id"] in self.done:
            raise ValueError(f"{self.path}: id {row['id']!r} is already written")
        self._file.write(dumps_line(row))
        self._file.flush()
        self.done.add(row["id"])

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_atomic(path: Path | str, text: str) -> None:
    """Write a whole file so that readers see the old version or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_jsonl(path: Path | str, rows: Iterable[dict]) -> int:
    """Write a whole JSONL file atomically (for small derived files; stages stream with JsonlWriter)."""
    lines = [dumps_line(row) for row in rows]
    write_atomic(path, "".join(lines))
    return len(lines)


def file_sha256(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------------------------------
# Stage directories: resolved config.yaml + manifest.json


def _versions() -> dict[str, str]:
    from importlib import metadata

    found = {"python": platform.python_version()}
    for name in ("rlaif", "torch", "transformers", "trl", "accelerate", "peft"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class Manifest:
    """What a stage directory holds and how it was made: `manifest.json`.

    `inputs` maps each input file to its sha256 and size, `counts` holds row counts (written, skipped, failed, ...),
    `status` is "running" until the stage finishes, then "complete".
    """

    stage: str
    status: str = "running"
    created: str = field(default_factory=_now)
    updated: str = field(default_factory=_now)
    seconds: float = 0.0
    inputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=_versions)
    extra: dict[str, Any] = field(default_factory=dict)

    def add_input(self, path: Path | str) -> None:
        """Record an input file's sha256 and size. A file this stage directory recorded before with other contents
        is a DataError: resumed (or reported finished), its rows would mix two versions of the file."""
        path = Path(path)
        digest = file_sha256(path)
        before = self.inputs.get(str(path), {}).get("sha256")
        if before not in (None, digest):
            raise DataError(path, None, None, f"changed since this {self.stage} run began (sha256 {before[:12]}..., "
                            f"now {digest[:12]}...): its rows would mix both versions. Write to another --out to "
                            "start over with it, or restore the file to resume")
        self.inputs[str(path)] = {"sha256": digest, "bytes": path.stat().st_size}

    def save(self, directory: Path | str) -> None:
        """Write manifest.json; saved "complete", the stage is done and its directory's lock (`lock_stage`) is
        released."""
        self.updated = _now()
        write_atomic(Path(directory) / "manifest.json", dumps_json(self.__dict__))
        if self.status == "complete":
            release_stage(directory)

    @classmethod
    def load(cls, directory: Path | str) -> Manifest:
        return cls(**json.loads(read_text(Path(directory) / "manifest.json")))


def write_config(directory: Path | str, config: dict[str, Any]) -> None:
    """Save a stage's resolved config as `config.yaml`, the record of exactly what ran."""
    write_atomic(Path(directory) / "config.yaml", _yaml_dump(config))


# A stage directory's lock (flock: the OS drops it when its process dies, kill -9 included) and who holds it.
LOCK_FILES = (".lock", ".lock.json")
_HELD: dict[Path, Any] = {}  # directories this process holds the lock of: their FileLock
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_HELD.clear)  # a forked child is another process: it holds none of them


def lock_stage(directory: Path | str) -> None:
    """Make this process the one writer of `directory` until the stage completes (`Manifest.save` with status
    "complete", or `release_stage`) or the process ends, however it ends. Taken again by its holder, it is a no-op.
    Under a launcher (`accelerate launch`, torchrun: RANK set), the processes of one run share the main process's
    lock: only RANK 0 takes it. Held by another process: a DataError naming its pid and start."""
    directory = Path(directory)
    if directory.resolve() in _HELD or os.environ.get("RANK", "0") != "0":
        return
    from filelock import FileLock, Timeout

    directory.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(directory / LOCK_FILES[0]), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise DataError(directory, None, None, f"another rlaif process ({_holder(directory)}) is writing "
                                               f"{directory}; wait for it or stop it") from None
    _HELD[directory.resolve()] = lock
    started = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
    write_atomic(directory / LOCK_FILES[1], dumps_json({"pid": os.getpid(), "started": started}))


def release_stage(directory: Path | str) -> None:
    """Let other processes write `directory` again (a no-op when this process does not hold it)."""
    lock = _HELD.pop(Path(directory).resolve(), None)
    if lock is not None:
        lock.release()


def stage_writer(directory: Path | str) -> str | None:
    """"pid N, started T" of another process that holds `directory`'s lock now, or None. Creates nothing."""
    directory = Path(directory)
    if not (directory / LOCK_FILES[0]).is_file() or directory.resolve() in _HELD:
        return None
    from filelock import FileLock, Timeout

    probe = FileLock(str(directory / LOCK_FILES[0]), timeout=0)
    try:
        probe.acquire()
    except Timeout:
        return _holder(directory)
    probe.release()
    return None


def _holder(directory: Path) -> str:
    try:
        owner = json.loads((directory / LOCK_FILES[1]).read_text(encoding="utf-8"))
        return f"pid {owner['pid']}, started {owner['started']}"
    except (OSError, ValueError, KeyError):  # taken a moment ago, its owner not written yet
        return "pid unknown"


def open_stage(directory: Path | str, stage: str, config: dict[str, Any], volatile: Iterable[str] = (),
               added: dict[str, Any] | None = None) -> Manifest:
    """Create a stage directory, or reopen one to resume it, as its one writer (`lock_stage`): while another process
    writes it, a DataError.

    A directory made with other settings cannot be resumed: its rows would mix two configurations. Fields named in
    `volatile` (batch size, device, ...) change how the work runs, not what it computes, so they may differ: their
    results agree up to floating-point rounding (a padded batch or another device rounds otherwise, about 1e-7 of a
    label in float32 on the CPU), while a resume with the same settings reproduces the uninterrupted run exactly.
    `added` maps settings added to the stage after its first runs to the value that reproduces those runs
    (`added_default`): a directory saved before such a setting existed resumes when the setting has that value. A
    directory holding no output yet (a run that stopped on an error before its first row) takes the new settings.
    Returns the manifest with the resolved config saved next to it: marked running, or still "complete" when the
    stage has finished before (the caller may then skip its work).
    """
    directory = Path(directory)
    blocker = next((p for p in (directory, *directory.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:  # `--out notes.txt`: a file where the run directory would go
        raise DataError(blocker, None, None, f"is a file, not a directory, so the {stage} directory {directory} cannot "
                                             "be made; give --out a directory")
    directory.mkdir(parents=True, exist_ok=True)
    lock_stage(directory)
    saved_path = directory / "config.yaml"
    bookkeeping = {"config.yaml", "manifest.json", ".lock", ".lock.json"}
    output = [p for p in directory.iterdir() if p.name not in bookkeeping and (p.is_dir() or p.stat().st_size)]
    if saved_path.is_file() and output:
        saved = parse_yaml(read_text(saved_path))[0] or {}
        added = added or {}
        for key in sorted(set(saved) | set(config), key=lambda key: (key not in added, key)):  # the newer first
            if key in volatile or added_default(saved, key, added) == config.get(key):
                continue
            made = (f"made before {key} existed, which it ran as {added[key]!r}" if key in added and key not in saved
                    else f"made with {saved.get(key)!r}")
            raise DataError(saved_path, None, key, f"this {stage} run was {made}, now {config.get(key)!r}. Rerun "
                                                   "with the same settings to resume it, or write to another --out "
                                                   "directory.")
    manifest = Manifest.load(directory) if (directory / "manifest.json").is_file() else Manifest(stage=stage)
    if manifest.status != "complete":
        manifest.status = "running"
    write_config(directory, config)
    manifest.save(directory)
    return manifest



def added_default(saved: dict[str, Any], key: str, added: dict[str, Any]) -> Any:
    """A saved config's value of `key`; for a setting added to its stage after the config was saved, the value
    that reproduces what ran then (`added`, a stage config's ADDED), so that older stage directories resume and
    keep their pipeline keys (rlaif.pipeline) as long as the new setting keeps that value."""
    return saved[key] if key in saved else added.get(key)


_MOVED_TO_LOADERS = {"load_prompts", "load_hh_preferences", "content_id", "parse_transcript"}


def __getattr__(name: str):
    """The input loaders live in rlaif.loaders; `from rlaif.records import load_prompts` keeps working."""
    if name in _MOVED_TO_LOADERS:
        from rlaif import loaders

        return getattr(loaders, name)
    raise AttributeError(f"module 'rlaif.records' has no attribute {name!r}")
