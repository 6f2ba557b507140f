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
| human, answers | with `human.route`: the round's least certain pairs exported for people, the run stopped until they answer, their answers imported (rlaif.human_route) | alike |
| labeler-check | with human files: the labeler's report card on their pairs, into OUT/labeler-check/ (round 1, before reward) | - |
| reward | a reward model on every AI label so far, the human pairs and the answers so far | retrained from scratch |
| ppo | PPO from the current policy against that reward model | from round k-1's PPO policy |
| dpo, grpo | instead of PPO with `policy_trainer: dpo`, `grpo` or `rloo` (TRL; rlaif.dpo, rlaif.grpo) | alike |
| eval | base, SFT and every round's policy on the held-out prompts (after the last round; rlaif.evaluate) | - |

The run ends by writing OUT/report.html (rlaif.report); after each step, `rlaif run` prints what its stage read,
used and left out, and why (`summary`). A round whose pairs wait for people (`human.route`) stops the run after its
human step (HumanRouteStopped, exit status 2) until they answer or `--skip-human` says to go on: rlaif.human_route.

How a recipe is read and checked before anything runs is in rlaif.recipe.

**The labeler check.** With human files, a step before the first reward stage asks whether the AI labeler can be
trusted: rlaif.report_card.evaluate_labeler on the human pairs (the recipe's constitution, labeler and label mode,
no chain of thought, no injection suite, as many principles per pair as the label stage draws), into
OUT/labeler-check/: labeler_report.json, whose verdict says whether the mode the label stage trains with beats the
best baseline on the same pairs (prefer the shorter reply, the longer, a coin) with 95% confidence, and
labels.jsonl, its labels of those pairs in that mode, with people's choice. It labels up to `label.gate_pairs` (default 200) pairs where people chose (ties name no
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
in `.pipeline-key`; a different key means its directory is cleared before it runs. A setting added to a stage in
a later version of rlaif leaves runs made before it alone while it keeps the value that reproduces them (the
stage config's ADDED): the key leaves it out at that value. No two steps share a
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlaif import human_route
from rlaif.human_route import HumanRouteStopped  # noqa: F401  (rlaif run's stop, with LabelerGateStopped)
from rlaif.launch import LAUNCHED, in_child, launched, run_stage
from rlaif.recipe import (
    EXTENDS,
    Recipe,
    check_inputs,
    model_spec,
    pipeline_setting,
    reading,
    recipe_line,
    recipe_path,
    shown_path,
    stage_config,
)
from rlaif.records import (
    LOCK_FILES,
    ConfigError,
    DataError,
    added_default,
    parse_yaml,
    read_text,
)

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
    processes: int = 1  # a training stage under `accelerate launch` with this many processes (rlaif.launch)

    def describe(self) -> str:
        return f"round {self.round}  {self.stage:9} {self.state:7} {shown_path(str(self.directory))}" + (
            f"  ({self.note})" if self.note else "")


def plan(recipe: Recipe, skip_human: bool = False) -> list[Step]:
    """Every step of every round, wired to the files of the steps before it, each with its key and state. No two
    steps share a directory (a human file listed twice is a DataError naming the recipe's line). `skip_human`: the
    human steps' notes say the run goes on without answers (rlaif run --skip-human)."""
    from rlaif.rankings import parse_weighted
    from rlaif.records import file_sha256

    out = output_dir(recipe)
    prompts = recipe_path(recipe, recipe.prompts)
    eval_prompts = recipe_path(recipe, recipe.eval_prompts) if recipe.eval_prompts else None
    constitution, model = model_spec(recipe, recipe.constitution), model_spec(recipe, recipe.model)
    steps: list[Step] = []

    digests: dict[str, str] = {}

    def add(round_: int, stage: str, directory: Path, wiring: dict, reads: list[Step], config=None,
            inputs: dict | None = None) -> Step:
        from rlaif.constitution import load_constitution

        config = config or stage_config(recipe, stage, wiring)
        volatile = set(getattr(type(config), "VOLATILE", ())) | set(CHECK_VOLATILE if stage == CHECK else ())
        # A setting added to a stage later (its config's ADDED) is left out of the key while it has the value that
        # reproduces the runs made before it, so that those runs keep their directories.
        added = getattr(type(config), "ADDED", {})
        settings = {k: v for k, v in dataclasses.asdict(config).items()
                    if k not in volatile and not (k in added and v == added[k])} | (inputs or {})
        # How many processes train is not in the key (as the device is not): a finished stage is kept whatever
        # num_processes a rerun gives, never cleared for it.
        processes = recipe.num_processes if stage in LAUNCHED else 1
        if stage == "ppo":  # what PPO on these processes refuses; on several, also what `rlaif ppo` refuses that a
            from rlaif.ppo.config import check_alone, check_processes  # run in one process only warns about

            try:
                check_processes(config, processes)
                if processes > 1:
                    check_alone(config)
            except ConfigError as e:
                launched = f" (with num_processes {processes}, PPO runs as `rlaif ppo` under accelerate launch)" \
                    if processes > 1 else ""
                raise ConfigError(f"ppo.{e}{launched}", [f"ppo.{f}" for f in e.fields]) from None
        for name in ("constitution", "judge"):  # an edited constitution or principle file is a changed setting
            spec = settings.get(name)
            if isinstance(spec, str):
                if spec not in digests:
                    with reading(recipe, f"{stage}.{name}" if name in getattr(recipe, stage) else name):
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
                    inputs=inputs or {}, processes=processes)
        steps.append(step)
        return step

    r1 = out / "round-1"
    human: list[tuple[str, float, Step]] = []  # imported first: the cheapest step, and the one bad data stops
    for i, spec in enumerate(recipe.human):
        path, weight = parse_weighted(recipe_path(recipe, spec))
        place = hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest()[:8]
        directory = r1 / "human" / f"{Path(path).stem}-{place}"
        same = next((j for j, (_, _, step) in enumerate(human) if step.directory == directory), None)
        if same is not None:
            raise DataError(*recipe_line(recipe, f"{recipe.human_key}[{i}]"), f"{spec} is the file "
                            f"{recipe.human[same]} names too; list it once, with the weight it should have")
        target = directory / "preferences.jsonl"
        human.append((str(target), weight, add(1, "rankings", directory, {"rankings": path, "out": str(target)}, [])))
    route = recipe.human_route
    if recipe.ai_weight == 0 and not any(weight > 0 for _, weight, _ in human) and not (route and route.weight > 0):
        raise DataError(*recipe_line(recipe, "ai_weight"), "0, and no human file with a weight above 0: the reward model "
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
    routed: list[tuple[str, Step]] = []  # people's answers to the rounds' pairs so far (human.route)
    for k in range(1, recipe.rounds + 1):
        rk = out / f"round-{k}"
        sample = add(k, "sample", rk / "sample", {"prompts": prompts, "out": str(rk), "model": policy}, [policy_step])
        label = add(k, "label", rk / "label", {"candidates": str(rk / "sample" / "candidates.jsonl"), "out": str(rk),
                                               "constitution": constitution,
                                               "labeler": model_spec(recipe, recipe.labeler)}, [sample])
        labels.append((str(rk / "label" / "preferences.jsonl"), label))
        if route:  # the round's least certain pairs to people, and their answers once there are some
            routed += human_route.add_round(add, recipe, k, label)[1]
        if human and not check:  # before the first reward stage: the labeler's report card on the human pairs
            check_config, also_reads = _check_config(recipe, out, constitution, human)
            check = [add(1, CHECK, out / CHECK, {}, [s for _, _, s in human], check_config, also_reads)]
            gated = {"calibration": [str(check[0].directory / "labels.jsonl")],
                     "reliability": "warn" if pipeline_setting(recipe, "label", "gate") == "warn" else "weight"}
        data = [f"{path}:{recipe.ai_weight}" for path, _ in labels] + [f"{path}:{w}" for path, w, _ in human] + [
            f"{path}:{route.weight}" for path, _ in routed]
        people = [s for _, _, s in human] + [s for _, s in routed]
        reward = add(k, "reward", rk / "reward", {"data": data, "out": str(rk / "reward"), "model": model, **gated},
                     [s for _, s in labels] + people + check)
        trainer = recipe.policy_trainer
        if trainer == "ppo":
            trained = add(k, "ppo", rk / "ppo", {"prompts": prompts, "eval_prompts": eval_prompts,
                                                 "out": str(rk / "ppo"), "policy": policy,
                                                 "reward_model": [str(rk / "reward")], **rubric}, [policy_step, reward])
        elif trainer == "dpo":
            trained = add(k, "dpo", rk / "dpo", {"data": data, "out": str(rk / "dpo"), "policy": policy},
                          [policy_step] + [s for _, s in labels] + people)
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
                                             "labeler": model_spec(recipe, recipe.labeler)},
        [sft] + [s for s in steps if s.stage in ("reward", "ppo", "dpo", "grpo")])
    owners: dict[Path, Step] = {}
    for step in steps:
        other = owners.setdefault(step.directory, step)
        if other is not step:
            raise ConfigError(f"{recipe.path}: the {other.stage} and {step.stage} steps would both write "
                              f"{step.directory}")
        step.state = human_route.state(step) if step.stage == "human" else _state(step)
        if step.stage in ("rankings", "answers"):
            step.note = f"imports {shown_path(step.config.rankings)}"
        elif step.stage == CHECK:
            step.note = _check_note(recipe, step)
        elif step.stage == "human":
            step.note = human_route.note(step, _answers(steps, step), skip_human)
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
    with reading(recipe, "constitution"):
        loaded = load_constitution(constitution)
    k = resolved_settings(label, loaded)[0]
    # as many principles per pair as the label stage draws, so that labels.jsonl labels as it does
    ensemble = len(loaded.principles) if k == "all" else (k or LabelerEvalConfig.ensemble)
    directory = out / CHECK
    config = LabelerEvalConfig(pairs=str(directory / "human-pairs.jsonl"), out=str(directory),
                               constitution=constitution, labeler=model_spec(recipe, recipe.labeler),
                               limit=pipeline_setting(recipe, "label", "gate_pairs"), ensemble=ensemble,
                               chain_of_thought=False, injection_pairs=0, order_free_modes=label.mode != "compare",
                               label_mode=label.mode, trained_mode_only=True, batch_size=label.batch_size,
                               device=label.device, engine=label.engine, base_url=label.base_url,
                               api_key_env=label.api_key_env, concurrency=label.concurrency,
                               request_timeout=label.request_timeout)
    inputs = {"human_files": [path for path, _, _ in human],
              "held_out_fraction": stage_config(recipe, "reward", {}).eval_fraction}
    return config, inputs


def _write_check_pairs(step: Step) -> int:
    """The pairs the labeler check labels, to its `pairs` file: every imported human file's pairs where people
    chose (a tie names no choice), one row per pair (the first file's), none the reward stage holds out
    (rlaif.reward.held_out_key) and none `rankings export` chose for the labeler's doubt (records.chosen_for_doubt:
    the check would understate it there, and its labels.jsonl measures the labeler in the reward stage), in the
    order of a hash of the pair, so that the first `limit` of them are drawn evenly from every file. Returns how
    many."""
    from rlaif.rankings import pair_key
    from rlaif.records import chosen_for_doubt, read_jsonl, write_jsonl
    from rlaif.reward import held_out_key

    fraction = step.inputs["held_out_fraction"]
    rows: dict[str, dict] = {}
    doubted = set()
    for path in step.inputs["human_files"]:
        for row in read_jsonl(path):
            key = pair_key(row)
            if chosen_for_doubt(row):
                doubted.add(key)
            elif row.get("source", "human") == "human" and row["p_chosen"] == 1.0 and not held_out_key(key, fraction):
                rows.setdefault(key, {"id": key, "prompt": row["prompt"], "chosen": row["chosen"],
                                      "rejected": row["rejected"], "p_chosen": 1.0, "source": "human"})
    ordered = [rows[key] for key in sorted(set(rows) - doubted, key=lambda key: hashlib.sha256(key.encode()).hexdigest())]
    write_jsonl(step.config.pairs, ordered)
    return len(ordered)


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
    if step.stage in ("rankings", "answers"):
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
    added = getattr(type(step.config), "ADDED", {})
    return all(added_default(saved, k, added) == v for k, v in wanted.items() if k not in volatile and v is not None)


def _execute(step: Step, progress: bool) -> dict:
    """Run one step's stage; returns what the stage returns (its counts, with `summary`: read, used, left out). A
    stage on vLLM (engine: vllm) runs in a child process of its own (rlaif.launch.in_child)."""
    if step.stage == CHECK and not _write_check_pairs(step):
        raise DataError(step.config.pairs, None, None, "no human pair to check the labeler on: every pair of the "
                        "human files is a tie, held out by the reward stage (reward.eval_fraction) or chosen for the "
                        "labeler's doubt (rankings export's why); add human pairs, or lower reward.eval_fraction")
    if step.processes > 1:
        result = launched(step)
    elif getattr(step.config, "engine", "rlaif") == "vllm":
        result = in_child(step, progress)
    else:
        result = run_stage(step.stage, step.config, progress)
    if step.stage == CHECK:  # the report card (rlaif.report_card), with what it read and its verdict
        result = {**result, "summary": f"{result['summary']}; {result['verdict']['text']}"}
    return result


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


def run(recipe: Recipe, progress: bool = True, on_step=None, on_done=None, on_warning=None, on_note=None,
        skip_human: bool = False, command: str | None = None) -> list[Step]:
    """Run every step that is not done, in order; a step whose key changed starts from an empty directory (and
    every step after it has a new key too, so it is redone in turn). `on_step(step)` is called before each one and
    `on_done(step, summary)` after it (`summary`: its closing line). After the labeler check, run now or before,
    its gate (`gate`): LabelerGateStopped with gate stop when the labeler does not beat the best baseline, else
    `on_warning(step, text)` with the verdict. After a round's human step (human.route), run now or before:
    HumanRouteStopped when the round has no answers yet and not `skip_human` (its message tells people what to do
    and to rerun `command`, by default `rlaif run RECIPE`), else `on_note(step, text)` with how many tasks people
    answered (rlaif.human_route.arrived). Every input is read first (`check_inputs`):
    bad data stops the run before anything is created under OUT. One process runs a recipe's OUT at a time, and no
    stage run by hand may be writing a step's directory (records.lock_stage): a DataError at once, naming the
    other process. Ends by writing OUT/report.html."""
    from rlaif import report
    from rlaif.records import lock_stage, release_stage

    steps = plan(recipe, skip_human)
    check_inputs(recipe, steps)
    conflicts = [step for step in steps if step.state == "conflict"]
    if conflicts:
        raise ConfigError("\n".join(
            human_route.conflict(step) if step.stage == "human" else
            f"{step.directory}: holds a {step.stage} run this recipe did not make, with other settings; move it "
            "away (or rerun that stage by hand with the recipe's settings) and run again" for step in conflicts))
    command = command or f"rlaif run {shown_path(recipe.path)}"

    def passed(step: Step) -> None:  # what follows a finished step, done now or before
        if step.stage == CHECK and (warning := gate(recipe, step)) and on_warning:
            on_warning(step, warning)
        if step.stage == "human":
            text = human_route.arrived(step, _answers(steps, step), recipe.human_route.weight, skip_human, command,
                                       stage_config(recipe, "reward", {}).reliability_min_pairs)
            if on_note:
                on_note(step, text)

    out = output_dir(recipe)
    lock_stage(out)
    try:
        for step in steps:
            key_file = step.directory / ".pipeline-key"
            if step.state == "done":
                if not key_file.is_file():  # a finished run made by hand with these settings: adopted
                    key_file.write_text(step.key + "\n")
                passed(step)
                continue
            if step.stage == "sft":
                _require_sft_data(next(s for s in steps if s.stage == "critique"))
            lock_stage(step.directory)
            if step.state == "redo":
                for entry in step.directory.iterdir():  # everything but the lock this process now holds
                    if entry.name in LOCK_FILES or (step.stage == "human" and entry.name not in
                                                    human_route.EXPORT_FILES):  # round-1/human holds human files
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
            passed(step)
        report.render(out)
    finally:
        release_stage(out)
    return steps


def _answers(steps: list[Step], asked: Step) -> list[Step]:
    """The answers steps of a human step's round (none while people have not answered)."""
    return [step for step in steps if step.stage == "answers" and step.round == asked.round]


def __getattr__(name: str):
    """Reading and checking a recipe moved to rlaif.recipe; `from rlaif.pipeline import load_recipe` keeps working."""
    from rlaif import recipe

    if name in ("load_recipe", "unused_settings", "check_settings", "check_model", "STAGES", "POLICY_TRAINERS",
                "PIPELINE_FIELDS", "GATES"):
        return getattr(recipe, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
