"""Choose the pairs people should rank, hand them out, and read the answers back.

    rlaif rankings export runs/x/label/preferences.jsonl --budget 200 --out tasks/
    rlaif rank serve tasks/                        # or Label Studio, with the files export writes
    rlaif rankings import tasks/rankings.jsonl --out runs/x/human.jsonl

**Selection.** With a weak labeler, a few hundred well-chosen human pairs are worth most. From the preference files,
every pair the AI labelled is a candidate; rows with `source: human` are not, nor is an AI row of a pair that people
already labelled in the same files, nor a second label of the same pair (same prompt and replies). A random share of
the budget (`random_share`) is drawn first, uniformly from all candidates, so that it is an unbiased sample of what
the AI labelled: the agreement measured on it holds for the whole file (drawn from what the active pick leaves, it
would miss the least certain pairs). The rest of the budget (the active pick) goes where a person's answer is worth
most, in this order: (1) pairs the labeler contradicts itself on (`consistent: false`, why `inconsistent`) or where
principles disagree (`principle_p` on both sides of 0.5, why `principles_disagree`), least certain first (|p_chosen
- 0.5| smallest); (2) pairs the AI doubts (why `uncertain`): flagged `low_confidence` by `rlaif label` (under its
min_margin), or for rows without flags, |p_chosen - 0.5| below UNCERTAIN_MARGIN; (3) when the budget goes further,
the others (why `stratified`: picked for coverage, not doubt). In (2) and (3), pairs are filed under a principle (of
a row's `principle_p`, the one closest to 0.5; else its first `principles`; else none) and the principles take
turns, each its least certain pair first, so that no principle takes a whole group; but a confident pair never comes
before a doubtful one, whatever its principle. Of the exported tasks, a share (`overlap_share`) goes to `overlap`
annotators, for inter-annotator agreement; the others to one. The tasks come in the order of the pick, the random
ones spread evenly among them, so that any first part of the file holds its share of both. Everything random is
drawn from `seed`.

**Files** (in `out`): `tasks.jsonl` (docs/data-contract.md, "tasks"), read by `rlaif rank serve`;
`label-studio.json` and `label-studio.xml`, the same pairs as Label Studio tasks and their labeling config;
`guidelines.md`, what "better" means (the page shows it; written only when the folder has none, so a team's edited
copy stays); and `README.txt`, how to rank them, written last. Label Studio's formats are taken from its
documentation, in HumanSignal/label-studio: the task import format from docs/source/guide/tasks.md ("Basic Label
Studio JSON format": a list of `{"data": {...}}`), the export from docs/source/guide/export.md and
docs/source/includes/task_format.md ("Label Studio JSON format of annotated tasks": `annotations[].result[]`,
`completed_by`, `lead_time`, `was_cancelled`), a Choices result's value (`{"choices": [...]}`) from
docs/source/guide/predictions.md and tasks.md, and the tags from docs/source/tags/ (choices.md, choice.md,
paragraphs.md, textarea.md, pairwise.md) and the pairwise templates
(docs/source/templates/generative-pairwise-human-preference.md, llm_side_by_side.md).

**Reading answers back** (`rlaif rankings import`, which detects these files by their content): the rank page's
answers file (`rankings.jsonl`, events, folded by `rank_serve.final_answers`) or Label Studio's JSON export of the
tasks. Each annotator's final answer to a task becomes a preference row with `source: human`, `p_chosen: 1.0` (a
tie: left out, 0.5 or an error, as `--ties` says), the `annotator`, the `seconds` they took and their `note` when
they wrote one. Where the export's tasks.jsonl sits next to the file (the page's answers always do; save Label
Studio's export into the tasks folder) and holds the task with the same two replies, the row carries the task's
`why` and `ai_p` (turned to face the row's `chosen`); a Label Studio task carries its `why` in its data too
(`rlaif_why`, which the labeling config never shows), so its rows carry `why` wherever the export is saved.
Skipped answers (Label Studio: cancelled annotations) are left out and counted as `skipped`. A row's id is its
task's; a task several people answered gives each of them a row, its id ending in `-ANNOTATOR`. The wrong file
(the tasks themselves, the label-studio.json export wrote, Label Studio's JSON-MIN export, a folder) is an error
saying what it is and which file to give instead.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rlaif.loaders import as_prompt
from rlaif.rank_serve import ANSWERS_FILE, DEFAULT_GUIDELINES, GUIDELINES_FILE, TASKS_FILE, final_answers
from rlaif.rankings import TIES_HINT, load_preferences, pair_key
from rlaif.records import (
    ConfigError,
    DataError,
    PreferenceRow,
    Tally,
    dumps_json,
    iter_jsonl,
    number,
    read_text,
    write_atomic,
    write_jsonl,
)

WHY = ("inconsistent", "principles_disagree", "uncertain", "stratified", "random")  # a task's `why`, in pick order
FAST_SECONDS = 1.0  # an answer given sooner than this is flagged `fast_answer` (a slip, or not reading the replies)
# A pair whose AI label is closer than this to 0.5 is one the AI doubts (`uncertain`); the others are picked only for
# coverage of the principles (`stratified`). rlaif label's default min_margin: the labels it flags low_confidence.
UNCERTAIN_MARGIN = 0.05
LS_FIELDS = ("rlaif_task", "prompt", "a", "b")  # what our Label Studio tasks carry in `data`
LS_CHOICES = {"A": "first", "B": "second", "tie": "tie"}  # the config's Choice aliases; A is `data.a`
LABEL_STUDIO_EXPORT = "label-studio-export.json"  # the name to save Label Studio's JSON export under, in the folder


@dataclass
class ExportConfig:
    preferences: list[str] = field(default_factory=list)  # preference files: rlaif label's, or any labels
    out: str = "tasks"  # directory for tasks.jsonl, label-studio.json, label-studio.xml, guidelines.md and README.txt
    budget: int = 200  # pairs to export; all of them when fewer are left
    random_share: float = 0.2  # share of the budget drawn uniformly from all candidates (why: random)
    overlap: int = 2  # annotators per task on the overlap share
    overlap_share: float = 0.2  # share of the tasks that go to `overlap` annotators; the others go to one
    seed: int = 0  # the random share, the tie order, which tasks overlap and which reply Label Studio shows as A

    def __post_init__(self):
        if not self.preferences:
            raise ConfigError("preferences: give at least one preferences file")
        if isinstance(self.budget, bool) or not isinstance(self.budget, int) or self.budget < 1:
            raise ConfigError(f"budget: expected a whole number of pairs >= 1, not {self.budget!r}")
        if isinstance(self.overlap, bool) or not isinstance(self.overlap, int) or self.overlap < 1:
            raise ConfigError(f"overlap: expected a whole number of annotators >= 1, not {self.overlap!r}")
        for name in ("random_share", "overlap_share"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ConfigError(f"{name}: expected a share between 0 and 1 (0.2 is a fifth), not {value!r}")
        if Path(self.out).exists() and not Path(self.out).is_dir():
            raise ConfigError(f"out: {self.out} is a file; give a directory for the tasks")


# --------------------------------------------------------------------------------------------------------------------
# Selection


def why(row: PreferenceRow) -> str:
    """Why a pair's AI label wants a person: `inconsistent` (the two orders pick different winners),
    `principles_disagree` (one principle prefers each reply), `uncertain` (the AI doubts it: the `low_confidence`
    flag of `rlaif label`, set under the label stage's own min_margin; for a row without `flags`, |p_chosen - 0.5|
    below UNCERTAIN_MARGIN), or else `stratified` (a person's answer for coverage, not doubt)."""
    if row.get("consistent") is False:
        return "inconsistent"
    principle_p = (row.get("principle_p") or {}).values()
    if any(p > 0.5 for p in principle_p) and any(p < 0.5 for p in principle_p):
        return "principles_disagree"
    doubts = "low_confidence" in row["flags"] if isinstance(row.get("flags"), list) else \
        abs(row["p_chosen"] - 0.5) < UNCERTAIN_MARGIN
    return "uncertain" if doubts else "stratified"


def principle_of(row: PreferenceRow) -> str | None:
    """The principle a pair is filed under: of its `principle_p`, the one whose label is closest to 0.5; else its
    first principle; else None (a `score` label, or rows from elsewhere)."""
    principle_p = row.get("principle_p") or {}
    if principle_p:
        return min(principle_p, key=lambda name: abs(principle_p[name] - 0.5))
    return (row.get("principles") or [None])[0]


def in_turns(tasks: list[dict]) -> list[dict]:
    """`tasks` with their principles taking turns: the first task of every principle, then the second, ...; within a
    turn, and within a principle, in the order given."""
    turn: Counter = Counter()
    places = []
    for task in tasks:
        turn[task["principle"]] += 1
        places.append(turn[task["principle"]])
    return [task for _, task in sorted(zip(places, tasks), key=lambda pair: pair[0])]  # sorted() is stable


def select(rows: list[tuple[str, PreferenceRow]], budget: int, random_share: float = 0.2, overlap: int = 2,
           overlap_share: float = 0.2, seed: int = 0, tally: Tally | None = None) -> list[dict]:
    """The tasks to rank (docs/data-contract.md, "tasks") from (file, row) pairs, as the module docstring says: the
    random share, then the active pick: flagged pairs (least certain first), pairs the AI doubts (`why`;
    principles in turns, each least certain first), then the others (`stratified`: principles in turns). `tally`
    counts the rows left out: `human`, `human_labelled` (an AI row of a pair people labelled), `same_pair` (a second
    label of a pair), moving them from its `used` (give it the tally that read the rows). Fewer candidates than
    `budget`: all of them."""
    tally = tally if tally is not None else Tally("pairs")
    rng = random.Random(seed)
    by_people = {pair_key(row) for _, row in rows if row["source"] == "human"}
    pool, seen = [], set()
    for file, row in rows:
        key = pair_key(row)
        reason = ("human" if row["source"] == "human" else "human_labelled" if key in by_people
                  else "same_pair" if key in seen else None)
        if reason:
            tally.used -= 1
            tally.leave_out(reason)
            continue
        seen.add(key)
        pool.append({"id": row["id"], "prompt": row["prompt"],
                     "responses": [row["chosen"][-1]["content"], row["rejected"][-1]["content"]], "overlap": 1,
                     "why": why(row), "principle": principle_of(row), "ai_p": row["p_chosen"], "source_file": file})
    n = min(budget, len(pool))
    random_set = set(rng.sample(range(len(pool)), round(n * random_share)))
    random_tasks = [pool[i] for i in sorted(random_set)]
    for task in random_tasks:
        task["why"] = "random"
    rest = [task for i, task in enumerate(pool) if i not in random_set]
    rng.shuffle(rest)  # pairs equally certain come in a seeded order, not the file's
    rest.sort(key=lambda task: abs(task["ai_p"] - 0.5))  # least certain first
    flagged = [task for task in rest if task["why"] in ("inconsistent", "principles_disagree")]
    doubtful = [task for task in rest if task["why"] == "uncertain"]
    others = [task for task in rest if task["why"] == "stratified"]  # so that every principle gets some
    active = (flagged + in_turns(doubtful) + in_turns(others))[: n - len(random_tasks)]
    # The random tasks spread evenly among the others (in their order), so that people who stop early leave a
    # random share answered too (the page offers tasks in file order).
    spread = [((i + 0.5) / len(group), task) for group in (active, random_tasks) for i, task in enumerate(group)]
    tasks = [task for _, task in sorted(spread, key=lambda pair: pair[0])]
    for i in rng.sample(range(len(tasks)), round(len(tasks) * overlap_share)):
        tasks[i]["overlap"] = overlap
    used: Counter = Counter()  # two files may use the same row id for different pairs: task ids stay unique
    for task in tasks:
        used[task["id"]] += 1
        if used[task["id"]] > 1:
            task["id"] = f"{task['id']}~{used[task['id']]}"
    return tasks


# --------------------------------------------------------------------------------------------------------------------
# Files


# The labeling config: the conversation as a dialogue (Paragraphs, whose data is a list of {role, content}), the two
# replies side by side, then the choice and an optional note. Choices, not Pairwise: Label Studio's Pairwise tag "is
# used to compare two different objects and select one item" (docs/source/tags/pairwise.md); its result is left or
# right, with no tie, and the docs send comparisons that need another answer to Choices. A skip is Label Studio's own
# Skip button (an annotation with was_cancelled: true, docs/source/guide/export.md). The aliases are what the export
# holds (docs/source/tags/choice.md), whatever the buttons say. Model text goes into the task data, never in here.
LABEL_STUDIO_CONFIG = """\
<View>
  <Header value="The conversation"/>
  <Paragraphs name="prompt" value="$prompt" layout="dialogue" nameKey="role" textKey="content"/>
  <View style="display: flex; gap: 1em;">
    <View style="flex: 1;">
      <Header value="Reply A"/>
      <Text name="a" value="$a"/>
    </View>
    <View style="flex: 1;">
      <Header value="Reply B"/>
      <Text name="b" value="$b"/>
    </View>
  </View>
  <Header value="Which reply is better? (Skip if you cannot tell.)"/>
  <Header size="6" value="Better: more helpful to a legitimate need, and harmless and honest."/>
  <Header size="6" value="For a harmful request, the better reply declines or redirects safely."/>
  <Choices name="preference" toName="prompt" choice="single-radio" required="true" showInline="true">
    <Choice value="A is better" alias="A" hotkey="1"/>
    <Choice value="B is better" alias="B" hotkey="2"/>
    <Choice value="About the same (a tie)" alias="tie" hotkey="3"/>
  </Choices>
  <TextArea name="note" toName="prompt" placeholder="Optional: why?" rows="2" maxSubmissions="1"/>
</View>
"""

README = """\
{n} pairs for people to rank, chosen by `rlaif rankings export` from {files} (seed {seed}).

  tasks.jsonl          the pairs, one a line (docs/data-contract.md, "tasks")
  label-studio.json    the same pairs as Label Studio tasks
  label-studio.xml     Label Studio's labeling config for them
  guidelines.md        what "better" means; edit it for your team (the page shows it, a re-export keeps it)

In rlaif's page:
  rlaif rank serve {out}
  rlaif rankings import {out}/rankings.jsonl --out human.jsonl

In Label Studio:
  1. Create a project.
  2. Settings > Labeling Interface: paste label-studio.xml in the code view; save.
     Paste guidelines.md into the labeling instructions (Settings > Annotation; Instructions in older
     versions) and turn on "Show before labeling".
  3. Import label-studio.json.
  4. Rank: A, B or a tie; Skip when you cannot tell. A note is optional.
  5. Export the project as JSON (not JSON-MIN), save it in this folder as {export} (the name
     `rlaif run`'s human route reads), then:
     rlaif rankings import {out}/{export} --out human.jsonl
  Label Studio sets how many people annotate a task for a whole project; the tasks that want more than one
  carry it in data.overlap (a column of the Data Manager).

Which reply is better: the more helpful one for what the person legitimately needs, as long as it is also harmless
and honest. For a harmful request (hurting someone, a crime, a weapon), the better reply declines or redirects
safely; a reply that helps with the harm is worse, however well written. A tie when neither is better. People who
disagree are data too.
"""


def label_studio_tasks(tasks: list[dict], seed: int = 0) -> list[dict]:
    """Label Studio import tasks (docs/source/guide/tasks.md, "Basic Label Studio JSON format"): `data` holds the
    task id, the conversation, the two replies as `a` and `b` (which reply is A is drawn per task from `seed`, so
    that the AI's pick is not always A), the task's overlap, and its `why` as `rlaif_why`, for the import (the
    labeling config shows only what it names: `prompt`, `a`, `b`). The AI's `ai_p` stays out: it would anchor
    anyone who reads the Data Manager's columns."""
    rng = random.Random(seed)
    ls_tasks = []
    for task in tasks:
        first_is_a = rng.random() < 0.5
        a, b = task["responses"] if first_is_a else task["responses"][::-1]
        ls_tasks.append({"data": {"rlaif_task": task["id"], "prompt": task["prompt"], "a": a, "b": b,
                                  "overlap": task["overlap"], "rlaif_why": task["why"]}})
    return ls_tasks


def run(config: ExportConfig) -> dict:
    """Choose the tasks and write them into `config.out` (README.txt last: a folder that has it is complete);
    returns counts: `tasks`, `available` (candidates), `random`, `overlapping`, `table` ({(why, principle): tasks})
    and `summary` (the rows read, used, left out). A ConfigError when `out` holds answers to the tasks there."""
    out = Path(config.out)
    if (out / ANSWERS_FILE).exists():
        raise ConfigError(f"out: {out / ANSWERS_FILE} holds people's answers to the tasks there; export to "
                          "another directory (import those answers first: rlaif rankings import)")
    tally = Tally("pairs")
    rows = [(file, row) for file in config.preferences
            for row in load_preferences(file, skip_empty=True, tally=tally)]
    tasks = select(rows, config.budget, config.random_share, config.overlap, config.overlap_share, config.seed,
                   tally)
    tally.require_some(", ".join(config.preferences), "export takes AI labels (rlaif label's preferences.jsonl); "
                       "rows with source human, and pairs people labelled, are left out")
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / TASKS_FILE, tasks)
    write_atomic(out / "label-studio.json", dumps_json(label_studio_tasks(tasks, config.seed)))
    write_atomic(out / "label-studio.xml", LABEL_STUDIO_CONFIG)
    if not (out / GUIDELINES_FILE).exists():  # a team's own guidelines stay
        write_atomic(out / GUIDELINES_FILE, DEFAULT_GUIDELINES)
    write_atomic(out / "README.txt", README.format(n=len(tasks), files=", ".join(config.preferences),
                                                   seed=config.seed, out=config.out.rstrip("/"),
                                                   export=LABEL_STUDIO_EXPORT))
    return {"tasks": len(tasks), "available": tally.used, "random": sum(t["why"] == "random" for t in tasks),
            "overlapping": sum(t["overlap"] > 1 for t in tasks),
            "table": Counter((t["why"], t["principle"]) for t in tasks), "summary": tally.summary()}


# --------------------------------------------------------------------------------------------------------------------
# Answers back: the rank page's events and Label Studio's export


def human_kind(path: Path) -> str | None:
    """"label-studio" for a JSON list (Label Studio's export), "answers" for JSONL whose first row is an event (the
    rank page's answers file), else None (a file `rlaif rankings import` reads as before). The export's own files
    (tasks.jsonl, or a folder of them) are DataErrors that say which file to give instead."""
    if path.is_dir():
        if (path / ANSWERS_FILE).is_file():
            hint = f"give the rank page's answers in it, {path / ANSWERS_FILE}"
        elif (path / TASKS_FILE).is_file():
            hint = (f"its tasks have no answers from the rank page yet ({ANSWERS_FILE}): rank them (rlaif rank serve "
                    f"{path}), or import Label Studio's JSON export of them")
        else:
            hint = "give a file"
        raise DataError(path, None, None, f"is a folder: {hint}")
    if read_text(path).lstrip().startswith("["):
        return "label-studio"
    first = next(iter_jsonl(path, torn_tail_ok=True), None)
    if first is None:
        return None
    line, row = first
    if "event" in row:
        return "answers"
    if "responses" in row and not {"ranks", "scores"} & set(row) and {"why", "overlap"} & set(row):
        raise DataError(path, line, None, (
            f"is the tasks file of `rlaif rankings export`: the pairs for people to rank, with no answers. Rank them "
            f"(rlaif rank serve {path.parent}, or in Label Studio) and import the answers: "
            f"{path.parent / ANSWERS_FILE}, or Label Studio's JSON export; export and the reward stage read labels "
            "(rlaif label's preferences.jsonl)"))
    return None


def exported_tasks(path: Path) -> dict[str, dict]:
    """The tasks of the export an answers file belongs to: {task id: task} of the tasks.jsonl in the same folder
    ({} when there is none)."""
    tasks_path = path.parent / TASKS_FILE
    if not tasks_path.is_file():
        return {}
    return {row["id"]: row for _, row in iter_jsonl(tasks_path) if isinstance(row.get("id"), str)}


def selection(answer: dict, tasks: dict[str, dict], chosen: str) -> dict:
    """How the export chose an answer's pair: {"why", "ai_p"} from its task in `tasks` (the same id and two
    replies), `ai_p` turned to face `chosen` (the row's chosen reply); else {"why"} from the answer itself (a Label
    Studio task's `rlaif_why`); else {}."""
    task = tasks.get(answer["task"])
    if task is not None and isinstance(task.get("responses"), list) and \
            sorted(task["responses"]) == sorted(answer["responses"]) and task.get("why") in WHY:
        found = {"why": task["why"]}
        ai_p = task.get("ai_p")
        if isinstance(ai_p, (int, float)) and not isinstance(ai_p, bool) and 0 <= ai_p <= 1:
            found["ai_p"] = ai_p if chosen == task["responses"][0] else 1.0 - ai_p
        return found
    return {"why": answer["why"]} if answer.get("why") in WHY else {}


def _answers(path: Path) -> list[tuple[str, dict]]:
    """("answer ID", answer) for each final answer in the rank page's answers file (`rank_serve.final_answers`, the
    fold of its events), its annotator, prompt and replies checked."""
    items = []
    for answer in final_answers(path):
        at = f"answer {answer['answer_id']}"
        if not answer["annotator"].strip():
            raise DataError(path, None, f"{at}.annotator", "is empty: expected the annotator's name")
        responses = answer.get("responses")
        if not isinstance(responses, list) or len(responses) != 2 or not all(isinstance(r, str) for r in responses):
            raise DataError(path, None, f"{at}.responses", "expected the task's two replies (text)")
        prompt = as_prompt(answer.get("prompt"), path, None, f"{at}.prompt")
        note = answer.get("note")
        items.append((at, {**answer, "prompt": prompt, "responses": responses,
                           "note": note if isinstance(note, str) else ""}))
    return items


def _label_studio(path: Path) -> list[tuple[str, dict]]:
    """("[TASK].annotations[N]", answer) for each annotator's last annotation (by `updated_at`) of each task in Label
    Studio's JSON export (docs/source/guide/export.md): `completed_by` (a user id) the annotator, `lead_time`
    the seconds, a cancelled annotation a skip, the choice from the `preference` Choices result
    (`value.choices`) and the note from the `note` TextArea's (`value.text`). The replies are the task's
    `data.a` and `data.b`: "first" below is A. The label-studio.json that export wrote (no annotations) and
    Label Studio's JSON-MIN export are DataErrors that say so."""
    try:
        tasks = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise DataError(path, e.lineno, None, f"not valid JSON: {e.msg} (column {e.colno})") from None
    if not isinstance(tasks, list) or not all(isinstance(task, dict) for task in tasks):
        raise DataError(path, None, None, "expected Label Studio's JSON export: a list of tasks")
    if tasks and all("data" not in task and set(LS_FIELDS) <= set(task) for task in tasks):
        raise DataError(path, None, None, "is Label Studio's JSON-MIN export (each task's fields at the top level, no "
                                          "`data` or `annotations`); export the project again as JSON (not JSON-MIN) "
                                          "and import that: it holds every annotator's answer")
    if tasks and all(set(task) == {"data"} for task in tasks):
        raise DataError(path, None, None, "is the label-studio.json that `rlaif rankings export` wrote: the tasks to "
                                          "import into Label Studio, with no answers. Import it into a project, "
                                          "annotate, then export the project as JSON and import that file")
    final: dict[tuple, tuple] = {}
    for i, task in enumerate(tasks):
        data = task.get("data")
        where = f"[{i}].data"
        if not isinstance(data, dict) or not set(LS_FIELDS) <= set(data):
            missing = ", ".join(name for name in LS_FIELDS if not isinstance(data, dict) or name not in data)
            raise DataError(path, None, where, f"has no {missing}: not a task of `rlaif rankings export`'s "
                                               "label-studio.json; export the project that imported it, as JSON")
        prompt = as_prompt(data["prompt"], path, None, f"{where}.prompt")
        for name in ("a", "b"):
            if not isinstance(data[name], str):
                raise DataError(path, None, f"{where}.{name}", "expected the reply (text)")
        for j, annotation in enumerate(task.get("annotations") or []):
            at = f"[{i}].annotations[{j}]"
            if not isinstance(annotation, dict):
                raise DataError(path, None, at, "expected an annotation (an object)")
            who = annotation.get("completed_by")
            who = (who.get("email") or who.get("id")) if isinstance(who, dict) else who
            if who is None or str(who) == "":
                raise DataError(path, None, f"{at}.completed_by", "missing: expected the annotator's user id")
            result = annotation.get("result")
            choice = "skip" if annotation.get("was_cancelled") else _choice(result, path, at)
            answer = {"task": str(data["rlaif_task"]), "annotator": str(who), "choice": choice, "prompt": prompt,
                      "responses": [data["a"], data["b"]], "note": _note(result), "why": data.get("rlaif_why")}
            if annotation.get("lead_time") is not None:
                answer["seconds"] = annotation["lead_time"]
            key, when = (answer["task"], answer["annotator"]), _when(annotation, path, at)
            if key not in final or when >= final[key][2]:
                final[key] = (at, answer, when)
    return [(at, answer) for at, answer, _ in final.values()]


def _when(annotation: dict, path: Path, at: str) -> datetime:
    """When an annotation was last changed (`updated_at`, else `created_at`, ISO 8601 in Label Studio's export), for
    the annotator's last answer to win whatever the list's order; without either, the list's order decides."""
    stamp = annotation.get("updated_at") or annotation.get("created_at")
    if stamp is None:
        return datetime.min.replace(tzinfo=timezone.utc)
    try:
        when = datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))  # Python 3.10 reads no "Z"
    except ValueError:
        raise DataError(path, None, f"{at}.updated_at", f"expected an ISO 8601 time, found {stamp!r}") from None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def _choice(result: Any, path: Path, at: str) -> str:
    """first (A), second (B) or tie: the one choice of the `preference` Choices in an annotation's result."""
    picked = [r["value"].get("choices") for r in result if isinstance(r, dict) and isinstance(r.get("value"), dict)
              and r.get("from_name") == "preference" and r.get("type") == "choices"] if isinstance(result, list) else []
    if len(picked) != 1 or not isinstance(picked[0], list) or len(picked[0]) != 1 or picked[0][0] not in LS_CHOICES:
        raise DataError(path, None, f"{at}.result", f"expected one choice ({', '.join(LS_CHOICES)}) from "
                                                    f"'preference', found {json.dumps(picked)}: label with the "
                                                    "label-studio.xml that rlaif rankings export wrote")
    return LS_CHOICES[picked[0][0]]


def _note(result: Any) -> str:
    """The text of the `note` TextArea in an annotation's result ("" when none): its lines joined."""
    texts = [r["value"].get("text") for r in result if isinstance(r, dict) and isinstance(r.get("value"), dict)
             and r.get("from_name") == "note"] if isinstance(result, list) else []
    return "\n".join(t for text in texts if isinstance(text, list) for t in text if isinstance(t, str))


def import_answers(path: Path, kind: str, ties: str = "skip", tally: Tally | None = None) -> list[PreferenceRow]:
    """Preference rows from the rank page's answers (`kind` "answers") or Label Studio's export ("label-studio"),
    as the module docstring says: with `why` and `ai_p` where the export's tasks.jsonl is next to `path`
    (`selection`), the annotator's `note` when they wrote one, and `flags: ["fast_answer"]` when it was given in under
    FAST_SECONDS. `tally` counts the answers read, used and left out (`skipped`, `tie`); none left is a DataError, as
    is a tie with `ties="error"`."""
    counted = Tally("pairs")
    rows: list[PreferenceRow] = []
    choice_field, seconds_field = ("choice", "seconds") if kind == "answers" else ("result", "lead_time")
    tasks = exported_tasks(path)
    answers = _answers(path) if kind == "answers" else _label_studio(path)
    if not answers:
        raise DataError(path, None, None, "no answers in it yet (every one undone)" if kind == "answers" else
                        "no annotations in it: nobody has answered these tasks in Label Studio yet; export the "
                        "project again once they have")
    for at, answer in answers:
        counted.read += 1
        choice = answer["choice"]
        if choice == "skip" or (choice == "tie" and ties == "skip"):
            counted.leave_out("skipped" if choice == "skip" else "tie")
            continue
        if choice == "tie" and ties == "error":
            raise DataError(path, None, f"{at}.{choice_field}", "a tie (ties are off; --ties skip or half allows "
                                                                "them)")
        chosen, rejected = answer["responses"][::-1] if choice == "second" else answer["responses"]
        row: PreferenceRow = {"id": answer["task"], "prompt": answer["prompt"],
                              "chosen": [{"role": "assistant", "content": chosen}],
                              "rejected": [{"role": "assistant", "content": rejected}],
                              "p_chosen": 0.5 if choice == "tie" else 1.0, "source": "human",
                              "annotator": answer["annotator"]}
        if "seconds" in answer:
            row["seconds"] = number(answer["seconds"], path, None, f"{at}.{seconds_field}", 0.0)
            if row["seconds"] < FAST_SECONDS:  # too quick to have read both replies: kept, and said so
                row["flags"] = ["fast_answer"]
        row.update(selection(answer, tasks, chosen))  # type: ignore[typeddict-item]
        if answer["note"].strip():
            row["note"] = answer["note"]
        counted.used += 1
        rows.append(row)
    if tally is not None:
        tally.add(counted)
    counted.require_some(path, TIES_HINT if "tie" in counted.left_out else "")
    people = Counter(row["id"] for row in rows)
    for row in rows:  # one task, several people: an id each, as rankings import gives them
        if people[row["id"]] > 1:
            row["id"] = f"{row['id']}-{row['annotator']}"
    return rows
