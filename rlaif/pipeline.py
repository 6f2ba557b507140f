"""Recipes: the whole loop from one YAML file, resumable, in rounds.

    rlaif run examples/quickstart/recipe.yaml            # every stage, every round
    rlaif run examples/quickstart/recipe.yaml --dry-run  # the plan: what runs, resumes, is kept or redone

A recipe names the constitution, the models, the prompt sets, optional human rankings, the number of rounds and
each stage's settings (a section per stage, with the fields of that stage's config; see `rlaif STAGE --help`).
The stages of round k write to OUT/round-k/:

| stage | what it does | round k > 1 |
|---|---|---|
| critique, sft | critique-and-revise data and supervised fine-tuning (round 1 only) | - |
| rankings | human rankings imported into preference pairs (round 1 only, if the recipe names any) | - |
| sample | K responses per prompt from the current policy | from round k-1's PPO policy |
| label | AI preference labels of those responses | the new pairs |
| reward | a reward model on every AI label so far and the human pairs | retrained from scratch |
| ppo | PPO from the current policy against that reward model | from round k-1's PPO policy |
| dpo, grpo | instead of PPO with `policy_trainer: dpo`, `grpo` or `rloo` (TRL; rlaif.dpo, rlaif.grpo) | alike |
| eval | base, SFT and every round's policy on the held-out prompts (after the last round; rlaif.evaluate) | - |

The run ends by writing OUT/report.html (rlaif.report).

Each stage already resumes a half-finished run and skips a finished one. The pipeline adds one thing: a stage
whose settings or inputs changed since it ran is run again from scratch, and so is everything after it. The
constitution's content counts as a setting: edit a principle and the stages that use it run again. Each
stage directory keeps a key (its settings and the keys of the stages it reads) in `.pipeline-key`; a different
key means its directory is cleared before it runs. A stage directory without a key (a stage run by hand, say under
`accelerate launch` on several GPUs) is adopted when its config.yaml has every setting the recipe gives it, and is
otherwise left alone: the run stops before anything starts and says so.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlaif.records import ConfigError, DataError

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
    lines: dict[str, int] = field(default_factory=dict)  # "section.key" -> line in the file (derived)


# Fields the pipeline sets: a recipe that sets them inside a stage section gets an error naming the recipe field.
PIPELINE_FIELDS = {
    "critique": {"prompts": "prompts", "out": "out", "constitution": "constitution", "model": "model"},
    "sft": {"data": None, "out": "out", "model": "model"},
    "rankings": {"rankings": "human", "out": "out"},
    "sample": {"prompts": "prompts", "out": "out", "model": None},
    "label": {"candidates": None, "out": "out", "constitution": "constitution", "labeler": "labeler"},
    "reward": {"data": "human", "out": "out", "model": "model", "eval_data": None},
    "ppo": {"prompts": "prompts", "eval_prompts": "eval_prompts", "out": "out", "policy": None,
            "reward_model": None},
    "dpo": {"data": "human", "out": "out", "policy": None},
    "grpo": {"prompts": "prompts", "out": "out", "policy": None, "reward_model": None, "algorithm": "policy_trainer"},
    "eval": {"run": "out", "out": "out", "prompts": "eval_prompts", "labeler": "labeler"},
}


# Settings that extend a finished run instead of starting it over (more PPO steps continue from the last
# checkpoint), though what the stage produces changes, so the steps after it run again.
EXTENDS = {"ppo": ("steps",)}


def load_recipe(path: str | Path, overrides: dict[str, Any] | None = None) -> Recipe:
    """Read and check a recipe; `overrides` ("ppo.steps": 10, "rounds": 2, ...) win over the file."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise DataError(path, None, None, "file not found")
    text = path.read_text(encoding="utf-8")
    try:
        node, data = yaml.compose(text), yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise DataError(path, mark.line + 1 if mark else None, None, f"YAML syntax error: {e}") from None
    if not isinstance(data, dict):
        raise DataError(path, 1, None, "expected a mapping of setting: value")
    lines = {}
    for key, value in node.value:
        lines[key.value] = key.start_mark.line + 1
        if hasattr(value, "value") and isinstance(value.value, list):
            for sub, _ in (value.value if value.tag.endswith(":map") else []):
                lines[f"{key.value}.{sub.value}"] = sub.start_mark.line + 1
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        if key:
            data.setdefault(section, {})
            if not isinstance(data[section], dict):
                raise ConfigError(f"--set {dotted}: {section} is not a section")
            data[section][key] = value
        else:
            data[section] = value
    fields = {f.name for f in dataclasses.fields(Recipe)} - {"path", "lines"}
    for key, value in data.items():
        if key not in fields:
            raise DataError(path, lines.get(key), key, f"unknown setting; expected one of: {', '.join(sorted(fields))}")
        if key in STAGES and not isinstance(value, dict):
            raise DataError(path, lines.get(key), key, "expected a section of that stage's settings")
    recipe = Recipe(**data, path=path, lines=lines)
    if not recipe.prompts:
        raise DataError(path, None, "prompts", "missing: the prompt file for critique, sampling and PPO")
    if recipe.policy_trainer not in POLICY_TRAINERS:
        raise DataError(path, lines.get("policy_trainer"), "policy_trainer",
                        f"expected one of {', '.join(POLICY_TRAINERS)}, not {recipe.policy_trainer!r}")
    if recipe.rounds < 1:
        raise DataError(path, lines.get("rounds"), "rounds", f"expected at least 1, not {recipe.rounds}")
    for stage in STAGES:
        stage_config(recipe, stage, {})  # every section checked before anything runs
    return recipe


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
                    "ppo": ("rlaif.ppo.trainer", "PPOConfig"), "eval": ("rlaif.evaluate", "EvalConfig"),
                    "dpo": ("rlaif.dpo", "DPOConfig"), "grpo": ("rlaif.grpo", "GRPOConfig")}[stage]
    return getattr(import_module(module), name)


def stage_config(recipe: Recipe, stage: str, wiring: dict[str, Any]):
    """A stage's config: its dataclass defaults < the recipe's section < what the pipeline wires in."""
    cls = _config_class(stage)
    section = getattr(recipe, stage)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in section:
        where = (recipe.path, recipe.lines.get(f"{stage}.{key}"), f"{stage}.{key}")
        if key not in known:
            raise DataError(*where, f"unknown setting of {stage}; expected one of: {', '.join(sorted(known))}")
        if key in PIPELINE_FIELDS[stage]:
            owner = PIPELINE_FIELDS[stage][key]
            raise DataError(*where, "set by the pipeline" + (f": use the recipe's `{owner}`" if owner else ""))
    return cls(**{**section, **wiring})


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
    """Every step of every round, wired to the files of the steps before it, each with its key and state."""
    from rlaif.rankings import parse_weighted

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
        key = _hash([stage, settings, [s.output for s in reads]])
        extends = {name: getattr(config, name) for name in EXTENDS.get(stage, ())}
        step = Step(round_, stage, directory, config, key, _hash([key, extends]) if extends else key)
        steps.append(step)
        return step

    r1 = out / "round-1"
    critique = add(1, "critique", r1 / "critique", {"prompts": prompts, "out": str(r1),
                                                     "constitution": constitution, "model": model}, [])
    sft = add(1, "sft", r1 / "sft", {"data": str(r1 / "critique" / "sft.jsonl"), "out": str(r1 / "sft"),
                                     "model": model}, [critique])
    human: list[tuple[str, float, Step]] = []
    for spec in recipe.human:
        path, weight = parse_weighted(_path(recipe, spec))
        directory = r1 / "human" / Path(path).stem
        target = directory / "preferences.jsonl"
        human.append((str(target), weight, add(1, "rankings", directory, {"rankings": path, "out": str(target)}, [])))
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
                                                 "reward_model": [str(rk / "reward")]}, [policy_step, reward])
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
    for step in steps:
        step.state = _state(step)
    return steps


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
    import yaml

    saved_path = step.directory / "config.yaml"
    if not saved_path.is_file():
        return False
    saved = yaml.safe_load(saved_path.read_text(encoding="utf-8")) or {}
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
    Ends by writing OUT/report.html."""
    from rlaif import report

    steps = plan(recipe)
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
