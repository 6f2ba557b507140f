"""People in the loop of a recipe: `human.route` sends each round's least certain pairs to people, and waits.

    human:
      files: [team.jsonl:2]                                  # human rankings files, as `human: [...]` takes them
      route: {budget: 200, random_share: 0.2, overlap: 2, overlap_share: 0.2, weight: 2}

With a route (rlaif.recipe.HumanRoute), each round of `rlaif run` (rlaif.pipeline) has these steps after its label
step:

| step | what it does |
|---|---|
| human | `rlaif rankings export` (rlaif.rank_export) of the round's preferences.jsonl into OUT/round-k/human/: tasks.jsonl, label-studio.json, label-studio.xml, README.txt |
| answers | people's answers imported as preference rows (`source: human`, `annotator`): the rank page's rankings.jsonl into answers-page/, Label Studio's JSON export (saved as label-studio-export.json) into answers-label-studio/; a step only for a file that is there |

After the human step, a round with no answer yet stops the run (HumanRouteStopped: `rlaif run` exits 2, as the
labeler gate does), saying how many pairs, how to rank them (`rlaif rank serve`, or Label Studio) and how to go on:
rerun the same command, or add `--skip-human` to go on without them. Answers there are: the page's rankings.jsonl
with a final answer that makes a pair (first or second; a tie too, unless `rankings.ties` is skip, which leaves
ties out), or Label Studio's export file. The reward stage of the round, and of every round after it, mixes them in
at `route.weight`, as it mixes the human files (DPO too). Each answers step's key holds a hash of its file, so
answers given later redo the import, the reward stages that read it and everything after them at the next rerun.
`--skip-human` changes no key: a round without answers trains its reward model on the AI labels and the human files,
and the first rerun after people answer retrains it with theirs.

The human step's key holds the export's settings (not `weight`, which only the reward stages read) and the label
step's output. When it changes (the round's labels were made again, or the route's budget changed), a new export
would ask about other pairs than the ones people answered: if answers are in the folder, the run stops before
anything runs and says to move them away (listed under `human.files`, they still join the mix). A redo removes only
the export's own files: the folder also holds round 1's imported human files (round-1/human/STEM-HASH/).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING

from rlaif.rank_export import LABEL_STUDIO_EXPORT, ExportConfig
from rlaif.rank_export import run as export_tasks
from rlaif.rank_serve import ANSWERS_FILE, TASKS_FILE, final_answers
from rlaif.recipe import Recipe, shown_path, stage_config
from rlaif.records import DataError, read_jsonl, read_text

if TYPE_CHECKING:
    from rlaif.pipeline import Step

ANSWER_FILES = {"answers-page": ANSWERS_FILE, "answers-label-studio": LABEL_STUDIO_EXPORT}  # import dir -> its file
# the export's files, README.txt last; not its guidelines.md, which a team may have edited: a redo keeps it
EXPORT_FILES = (TASKS_FILE, "label-studio.json", "label-studio.xml", "README.txt")


class HumanRouteStopped(Exception):
    """A round's pairs wait for people's answers (human.route), and the run was not told to go on (--skip-human)."""


def add_round(add, recipe: Recipe, k: int, label: Step) -> tuple[Step, list[tuple[str, Step]]]:
    """Round k's human step (through `add`, rlaif.pipeline.plan's) and an answers step for each answers file in its
    folder: (the human step, [(the preference rows file, its answers step)])."""
    route = recipe.human_route
    folder = label.directory.parent / "human"
    settings = {f.name: getattr(route, f.name) for f in dataclasses.fields(ExportConfig) if hasattr(route, f.name)}
    asked = add(k, "human", folder, {}, [label],
                ExportConfig(preferences=[str(label.directory / "preferences.jsonl")], out=str(folder), **settings))
    ties = stage_config(recipe, "rankings", {}).ties
    answers = []
    for name, file in ANSWER_FILES.items():
        if _answered(folder / file, ties):
            rows = folder / name / "preferences.jsonl"
            config = stage_config(recipe, "rankings", {"rankings": str(folder / file), "out": str(rows)})
            answers.append((str(rows), add(k, "answers", folder / name, {}, [asked], config)))
    return asked, answers


def _answered(path: Path, ties: str) -> bool:
    """Whether an answers file holds an answer that makes a pair: Label Studio's export by being there; the page's
    answers by a final answer first or second (or a tie, unless `ties` is skip). A page file that cannot be read
    counts, so that the run reads it before anything runs and stops at its bad line (recipe.check_inputs)."""
    if not path.is_file():
        return False
    if path.name == LABEL_STUDIO_EXPORT:
        return True
    try:
        return any(a["choice"] in ("first", "second") or (a["choice"] == "tie" and ties != "skip")
                   for a in final_answers(path))
    except DataError:
        return True


def tasks_answered(folder: Path) -> tuple[int, int]:
    """(tasks with an answer that is not a skip, in the page's answers or Label Studio's export; tasks exported). A
    file that cannot be read counts no answer here: the answers step reads it, and its error names the bad line."""
    tasks = {row["id"] for row in read_jsonl(folder / TASKS_FILE)}
    done = set()
    try:
        if (folder / ANSWERS_FILE).is_file():
            done |= {a["task"] for a in final_answers(folder / ANSWERS_FILE) if a["choice"] != "skip"}
        if (folder / LABEL_STUDIO_EXPORT).is_file():
            done |= {str(task["data"]["rlaif_task"]) for task in json.loads(read_text(folder / LABEL_STUDIO_EXPORT))
                     if any(not a.get("was_cancelled") for a in task.get("annotations") or [])}
    except (DataError, ValueError, KeyError, TypeError, AttributeError):
        pass
    return len(done & tasks), len(tasks)


def state(step: Step) -> str:
    """What running the human step would do: run, done, redo, or conflict: answers in its folder that a new export
    would orphan (the export refuses such a folder), or tasks there that the run did not export."""
    key_file = step.directory / ".pipeline-key"
    answers = any((step.directory / file).is_file() for file in ANSWER_FILES.values())
    if key_file.is_file() and key_file.read_text().strip() == step.key:
        if (step.directory / EXPORT_FILES[-1]).is_file():
            return "done"
        return "conflict" if answers else "run"
    if answers or (not key_file.is_file() and (step.directory / TASKS_FILE).is_file()):
        return "conflict"
    return "redo" if key_file.is_file() else "run"


def conflict(step: Step) -> str:
    """Why a human step in conflict stops the run, and what to do."""
    folder = shown_path(step.directory)
    answers = [file for file in ANSWER_FILES.values() if (step.directory / file).is_file()]
    if answers:
        return (f"{folder}: holds people's answers ({', '.join(answers)}) to pairs exported before the round's labels "
                "or human.route's export settings changed, and the round would now export other pairs; move the "
                "answers out of the folder (to keep them in the mix, list them under human.files, e.g. human: "
                f"{{files: [round-{step.round}-answers.jsonl:2]}}) and run again")
    return (f"{folder}: holds {TASKS_FILE} that this recipe did not export (no .pipeline-key); move "
            f"{', '.join(EXPORT_FILES)} away and run again")


def note(step: Step, answers: list[Step], skip_human: bool) -> str:
    """The plan's note on a human step: what it exports and whether the run waits there."""
    if step.state == "conflict":
        if any((step.directory / file).is_file() for file in ANSWER_FILES.values()):
            return "holds people's answers to pairs the round would no longer export: the run stops until they move"
        return f"holds a {TASKS_FILE} this recipe did not export: the run stops until it moves"
    go_on = "--skip-human: the run goes on without them" if skip_human else "the run stops here until people answer"
    if step.state != "done":
        return f"exports up to {step.config.budget} of the round's pairs for people to rank; no answers yet: {go_on}"
    done, total = tasks_answered(step.directory)
    return f"{done} of {total} tasks answered" if answers else f"{total} tasks, no answers yet: {go_on}"


def export(config: ExportConfig, progress: bool = True) -> dict:
    """Run the human step: `rlaif rankings export` into its folder; returns the export's counts, with `summary`."""
    result = export_tasks(config)
    return {**result, "summary": f"{result['tasks']} of the round's {result['available']} pairs exported for people "
                                 f"({result['random']} drawn at random, {result['overlapping']} for {config.overlap} "
                                 f"people each); {result['summary']}"}


def arrived(step: Step, answers: list[Step], weight: float, skip_human: bool, command: str,
            min_pairs: int = 20) -> str:
    """After a round's human step, done now or before: a line saying how many tasks people answered and what the run
    does with them. When the plan found no answers in the folder and `skip_human` is off: HumanRouteStopped, saying
    how many pairs, how to rank them, how to go on (`command`, the `rlaif run` to rerun) and whether the random ones
    can measure the labeler (`min_pairs`: the reward stage's reliability_min_pairs)."""
    folder = shown_path(step.directory)
    done, total = tasks_answered(step.directory)
    later = f"the reward stages from round {step.round} on"
    if answers:
        return f"{done} of {total} tasks answered in {folder}; {later} mix the answers in at weight {weight:g}"
    if skip_human:
        return (f"no answers yet to the {total} tasks in {folder}; --skip-human: the run goes on without them. Rerun "
                f"once people have answered, and {later} retrain with their answers")
    so_far = f" (so far {done} answered, with no pair to train on: ties, which rankings.ties skip leaves out)" \
        if done else ""
    drawn = sum(row.get("why") == "random" for row in read_jsonl(step.directory / TASKS_FILE))
    measure = (f"\nOnly the {drawn} drawn at random measure the AI labeler (the others were chosen because it was "
               "unsure, where it would look worse than it is)")
    if drawn < min_pairs:  # counted on the training side
        measure += (f": fewer than the {min_pairs} pairs the reward stage needs to measure it "
                    "(reliability_min_pairs), so its labels stay unmeasured (weight 0 under label.gate: weight); "
                    "raise human.route.budget or random_share for a later round")
    strays = sorted(path.name for path in step.directory.glob("*.json")
                    if path.name not in ("label-studio.json", LABEL_STUDIO_EXPORT) and not path.name.startswith("."))
    stray = (f"\n{folder} holds {', '.join(strays)}: if that is Label Studio's export, rename it "
             f"{LABEL_STUDIO_EXPORT}, the name the run reads, and rerun") if strays else ""
    raise HumanRouteStopped(
        f"round {step.round} waits for people: rank the {total} pairs its AI labels were least sure of (and a random "
        f"share), exported to {folder}{so_far}.{stray}\n"
        f"  In rlaif's page:    rlaif rank serve {folder}\n"
        f"  Or in Label Studio: make a project with the labeling config in {folder}/label-studio.xml, import "
        f"{folder}/label-studio.json, and when done export the project as JSON and save it as "
        f"{folder}/{LABEL_STUDIO_EXPORT}\n"
        f"Then rerun the same command: {command}\n"
        f"The answers join the reward stage of round {step.round} and of every round after it, at weight {weight:g}; "
        f"answers given later retrain them at the next rerun. To go on without waiting: {command} --skip-human"
        f"{measure}.")
