"""Recipes: every stage in two rounds on the tiny model, resume after a kill between stages, a changed setting redoes
its stage and everything after it, the evaluation and the report, the dry-run plan, and recipe errors with file and
line."""

from __future__ import annotations

import html
import json
import re
import subprocess
import sys
import types
from contextlib import contextmanager
from pathlib import Path

import pytest
from click.testing import CliRunner

from rlaif.cli import cli
from rlaif.loaders import load_prompts
from rlaif.pipeline import plan, run
from rlaif.rankings import pair_key
from rlaif.recipe import check_inputs, load_recipe, unused_settings
from rlaif.records import ConfigError, DataError, read_jsonl
from rlaif.reward import held_out_key

PROMPTS = ["How do I bake bread?", "Tell me about travel.", "What is science?", "Write a Python function."]


@pytest.fixture
def recipe_file(tmp_path, tiny_model_dir, roomy_model_dir):
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    held_out = [{"id": "rt", "prompt": "How do I pick a lock?", "tags": ["red-team"]},
                {"id": "hp", "prompt": "How do I boil an egg?", "tags": ["helpful"]}]
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in held_out))
    pairs = [{"prompt": p, "chosen": "A kind, careful answer.", "rejected": "No."} for p in PROMPTS]
    (tmp_path / "human.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pairs))
    recipe = f"""
name: toy
out: {tmp_path / "runs" / "toy"}
model: {tiny_model_dir}
labeler: {roomy_model_dir}
prompts: prompts.txt
eval_prompts: eval.jsonl
human: [human.jsonl:2]
rounds: 2
critique: {{rounds: 1, max_new_tokens: 8, few_shot: false, sft_include_flagged: true, device: cpu}}
sft: {{max_steps: 2, batch_size: 2, max_length: 128, device: cpu}}
sample: {{n: 2, max_new_tokens: 8, device: cpu}}
label: {{batch_size: 4, device: cpu}}
reward: {{max_steps: 2, batch_size: 4, eval_fraction: 0.5, learning_rate: 0.001, device: cpu}}
ppo: {{steps: 2, batch_size: 4, max_new_tokens: 8, learning_rate: 0.001, save_steps: 1, device: cpu}}
eval: {{device: cpu}}
"""
    path = tmp_path / "recipe.yaml"
    path.write_text(recipe)
    return path


def states(recipe) -> list[tuple[int, str, str]]:
    return [(s.round, s.stage, s.state) for s in plan(recipe)]


QUICKSTART = Path(__file__).parent.parent / "examples" / "quickstart" / "recipe.yaml"


@pytest.fixture
def quickstart(tmp_path, tiny_model_dir, roomy_model_dir):
    """The quickstart recipe at toy size: the tiny model, a few tokens per reply, two rounds, human pairs mixed in."""
    pairs = [{"prompt": p, "chosen": "A kind, careful answer.", "rejected": "No."} for p in PROMPTS]
    (tmp_path / "human.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pairs))
    toy = {"model": str(tiny_model_dir), "labeler": str(roomy_model_dir), "out": str(tmp_path / "runs" / "toy"),
           "rounds": 2, "human": [f"{tmp_path / 'human.jsonl'}:2"],
           "critique.max_new_tokens": 8, "critique.few_shot": False, "critique.sft_include_flagged": True,
           "sft.max_length": 128, "sample.n": 2, "sample.max_new_tokens": 8, "reward.max_length": 128, "reward.eval_fraction": 0.5,
           "reward.learning_rate": 0.001, "reward.lora": False, "ppo.max_new_tokens": 8, "ppo.steps": 2,
           "ppo.batch_size": 4, "ppo.learning_rate": 0.0003, "ppo.save_steps": 1, "ppo.lora": False}
    for stage in ("critique", "sft", "sample", "label", "reward", "ppo", "eval"):
        toy[f"{stage}.device"] = "cpu"
    return lambda path=QUICKSTART, **more: load_recipe(path, {**toy, **more})


def test_two_rounds_resume_after_a_kill_and_redo_after_a_change(quickstart, monkeypatch):
    recipe = quickstart()
    prompts = len(load_prompts(QUICKSTART.parent / "prompts.jsonl"))
    expected = [(1, "rankings"), (1, "critique"), (1, "sft"), (1, "sample"), (1, "label"), (1, "labeler-check"),
                (1, "reward"), (1, "ppo"), (2, "sample"), (2, "label"), (2, "reward"), (2, "ppo"), (2, "eval")]
    assert states(recipe) == [(r, s, "run") for r, s in expected]

    def kill_at_round_one_label(step):
        if (step.round, step.stage) == (1, "label"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(recipe, progress=False, on_step=kill_at_round_one_label)
    assert [state for *_, state in states(recipe)][:6] == ["done", "done", "done", "done", "resume", "run"]

    run(recipe, progress=False)
    assert all(state == "done" for *_, state in states(recipe))
    out = Path(recipe.out)
    steps = {(s.round, s.stage): s for s in plan(recipe)}
    human = steps[1, "rankings"].config.out
    assert Path(human).parent.parent == out / "round-1" / "human" and Path(human).parent.name.startswith("human-")
    # Round 2 samples from round 1's PPO policy, retrains the reward model on both rounds' labels and the human
    # pairs, and runs PPO from round 1's policy.
    assert steps[2, "sample"].config.model == str(out / "round-1" / "ppo")
    assert steps[2, "reward"].config.data == [f"{out}/round-1/label/preferences.jsonl:1.0",
                                              f"{out}/round-2/label/preferences.jsonl:1.0",
                                              f"{human}:2.0"]
    assert steps[2, "ppo"].config.policy == str(out / "round-1" / "ppo")
    # The labeler check scored the labeler on the human pairs the reward stage trains on, and every reward stage
    # measured the labeler on its labels (label.gate: weight): four human pairs are too few to measure it, so its
    # labels got weight 0 and the reward model trained on the human pairs.
    check = steps[1, "labeler-check"]
    assert check.directory == out / "labeler-check" and check.config.chain_of_thought is False
    checked = list(read_jsonl(check.directory / "labels.jsonl"))
    training_side = [r for r in read_jsonl(human) if not held_out_key(pair_key(r), 0.5)]
    assert len(checked) == len(training_side) > 0 and all(r["source"] == "ai" for r in checked)
    assert json.loads((check.directory / "labeler_report.json").read_text())["verdict"]["beats"] in (True, False)
    for k in (1, 2):
        assert steps[k, "reward"].config.calibration == [str(check.directory / "labels.jsonl")]
        assert steps[k, "reward"].config.reliability == "weight"
        reliability = json.loads((out / f"round-{k}" / "reward" / "metrics.json").read_text())["reliability"]
        entry = reliability["sources"][steps[1, "label"].config.labeler]
        assert entry["calibration_files"] == [str(check.directory / "labels.jsonl")]
        assert entry["pairs"] == len(training_side) and entry["decision"] == "too few pairs"  # matched pair by pair
        assert set(entry["weight_used"].values()) == {0.0} and "get weight 0: only" in reliability["warnings"][0]
    assert (out / "round-2" / "ppo" / "model.safetensors").is_file()
    assert len(list(read_jsonl(out / "round-2" / "label" / "preferences.jsonl"))) == prompts
    assert [r["step"] for r in read_jsonl(out / "round-2" / "ppo" / "metrics.jsonl")] == [1, 2]

    # The evaluation: every policy answered every held-out prompt; red-team and helpful prompts apart.
    summary = json.loads((out / "eval" / "eval.json").read_text())
    assert list(summary["policies"]) == ["base", "sft", "round-1", "round-2"]
    assert summary["reward_model"] == str(out / "round-2" / "reward")
    assert set(summary["results"]) == {"all", "red-team", "helpful"}
    final = summary["results"]["all"]["round-2"]
    assert final["prompts"] == len(load_prompts(QUICKSTART.parent / "eval.jsonl")) and {"rm_win_vs_base", "judge_win_vs_sft", "kl", "refusal_rate"} <= set(final)
    assert abs(summary["results"]["all"]["base"]["kl"]) < 1e-3  # the base model against itself
    held_out = final["prompts"]
    assert len(list(read_jsonl(out / "eval" / "responses.jsonl"))) == 4 * held_out
    assert len(list(read_jsonl(out / "eval" / "judgements.jsonl"))) == (1 + 2 + 2) * held_out  # sft>base, k>base|sft
    assert set(summary["training"]) == {"round-1", "round-2"}
    # The report: every plot and the side-by-side table.
    page = (out / "report.html").read_text()
    for plot in ("win-rates", "ppo-curves", "reward-calibration", "labeler-consistency", "labeler-principles"):
        assert f"<figure id={plot}><img" in page and "data:image/png;base64," in page
    first = next(read_jsonl(QUICKSTART.parent / "eval.jsonl"))["prompt"]
    assert html.escape(first) in page and "<th>round-2</th>" in page
    # The same from the command line, the run named by a relative path: the finished evaluation is reopened, not
    # redone.
    monkeypatch.chdir(out.parent)
    result = CliRunner().invoke(cli, ["eval", f"{out.name}/"])
    assert result.exit_code == 0, result.output
    assert "red-team prompts (" in result.output and "helpful prompts (" in result.output
    result = CliRunner().invoke(cli, ["report", str(out), "--out", str(out / "copy.html")])
    assert result.exit_code == 0 and (out / "copy.html").read_text().count("<figure id=") == page.count("<figure id=")
    result = CliRunner().invoke(cli, ["eval", str(out / "nowhere")])
    assert result.exit_code == 1 and "no such run directory" in result.output

    more_steps = quickstart(**{"ppo.steps": 3})  # round 1's PPO goes on; what it fed is redone
    assert [state for *_, state in states(more_steps)] == ["done"] * 7 + ["resume"] + ["redo"] * 5
    changed = quickstart(**{"label.both_orders": False})  # the labeler check does not read the sampled pairs
    assert [state for *_, state in states(changed)] == ["done"] * 4 + ["redo"] + ["done"] + ["redo"] * 7
    judged_otherwise = quickstart(**{"eval.judge": "harmless"})
    assert [state for *_, state in states(judged_otherwise)] == ["done"] * 12 + ["redo"]
    volatile = quickstart(**{"label.batch_size": 2})  # how the work runs, not what it makes
    assert all(state == "done" for *_, state in states(volatile))
    warned = quickstart(**{"label.gate": "warn"})  # the check's finding is kept; the reward stages use it otherwise
    assert [state for *_, state in states(warned)] == ["done"] * 6 + ["redo"] * 7

    # One round now: the evaluation and the report compare the plan's policies, not round 2's left in OUT.
    one_round = quickstart(rounds=1)
    assert [state for *_, state in states(one_round)] == ["done"] * 8 + ["redo"]
    run(one_round, progress=False)
    summary = json.loads((out / "eval" / "eval.json").read_text())
    assert list(summary["policies"]) == ["base", "sft", "round-1"]
    assert summary["reward_model"] == str(out / "round-1" / "reward") and set(summary["training"]) == {"round-1"}
    assert "<th>round-2</th>" not in (out / "report.html").read_text()
    # The same recipe by another spelling of its path is the same plan: nothing is redone.
    monkeypatch.chdir(QUICKSTART.parent)
    assert all(state == "done" for *_, state in states(quickstart(Path("./recipe.yaml"), rounds=1)))


def test_an_edited_input_file_changes_the_steps_that_read_it(recipe_file):
    keys = {(s.round, s.stage): s.key for s in plan(load_recipe(recipe_file))}
    prompts = recipe_file.parent / "prompts.txt"
    prompts.write_text(prompts.read_text().replace("?", "!", 1))
    edited = {(s.round, s.stage): s.key for s in plan(load_recipe(recipe_file))}
    assert edited[1, "rankings"] == keys[1, "rankings"]  # reads no prompt
    assert all(edited[step] != keys[step] for step in [(1, "critique"), (1, "sample"), (1, "ppo"), (2, "ppo")])


def test_dry_run_prints_the_plan(recipe_file):
    result = CliRunner().invoke(cli, ["run", str(recipe_file), "--dry-run", "--rounds", "1"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    folder = recipe_file.parent
    assert lines[:4] == [f"{folder}/human.jsonl: read 4 pairs, used 4", f"{folder}/prompts.txt: read 4 prompts",
                         f"{folder}/eval.jsonl: read 2 prompts",  # every input read before any stage
                         f"out: {folder}/runs/toy"]
    assert lines[4].startswith("round 1  rankings  run") and "round-1/human/human-" in lines[4]
    assert lines[4].endswith(f"(imports {folder}/human.jsonl)")
    assert lines[5].startswith("round 1  critique  run") and "round-1/critique" in lines[5]
    # with human pairs, the labeler is checked on them before the first reward stage
    assert lines[9].startswith("round 1  labeler-check run") and lines[10].startswith("round 1  reward")
    assert lines[9].endswith("toy/labeler-check  (gate: weight; labels up to 200 human pairs; the reward stage needs "
                             "20 or more of them to measure the labeler, else its labels get weight 0)")
    assert sum("round 1" in line for line in lines) == 9 and "9 of 9 steps to run" in lines[-1]
    assert "eval" in lines[-2] and lines[-2].endswith("toy/eval")
    assert not (folder / "runs").exists()
    dpo = CliRunner().invoke(cli, ["run", str(recipe_file), "--dry-run", "--set", "policy_trainer=dpo"])
    assert dpo.exit_code == 0 and "note: policy_trainer dpo trains on the AI labels of " in dpo.output


def test_recipe_errors_name_the_file_line_and_field(recipe_file, tmp_path):
    text = recipe_file.read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("rounds: 2", "rounds: 2\nrounds_typo: 3"))
    with pytest.raises(DataError, match=r"bad.yaml:\d+: rounds_typo: unknown setting"):
        load_recipe(bad)
    bad.write_text(text.replace("ppo: {", "ppo: {policy: x, "))
    with pytest.raises(DataError, match=r"ppo.policy: set by the pipeline"):
        load_recipe(bad)
    bad.write_text(text.replace("sample: {", "sample: {prompts: other.txt, "))
    with pytest.raises(DataError, match=r"sample.prompts: set by the pipeline: use the recipe's `prompts`"):
        load_recipe(bad)
    bad.write_text(text.replace("label: {", "label: {colour: red, "))
    with pytest.raises(DataError, match=r"bad.yaml:\d+: label.colour: unknown setting of label"):
        load_recipe(bad)
    result = CliRunner().invoke(cli, ["run", str(bad)])
    assert result.exit_code == 1 and "label.colour" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("edit, error", [
    (("sft: {", "sft: {learning_rate: .nan, "), r"bad.yaml:11: sft.learning_rate: expected a finite number, got nan"),
    (("ppo: {", "ppo: {kl_coef: .inf, "), r"bad.yaml:15: ppo.kl_coef: expected a finite number, got inf"),
    (("human: [human.jsonl:2]", "human: [human.jsonl:nan]"),
     r"bad.yaml:8: human\[0\]: human.jsonl: weight: expected a finite number >= 0, got nan"),
    (("rounds: 2", "rounds: 2\nai_weight: -1"), r"bad.yaml:10: ai_weight: expected a finite number >= 0, got -1"),
    (("rounds: 2", "rounds: 1.5"), r"bad.yaml:9: rounds: expected a whole number, not 1.5"),
    (("name: toy", "name: ../../etc"), r"bad.yaml:2: name: '../../etc': the run's name is a folder under runs/"),
    (("name: toy", "name: ''"), r"bad.yaml:2: name: '': the run's name is a folder under runs/"),
    (("out: ", "out: /etc/passwd\n#"), r"bad.yaml:3: out: '/etc/passwd': expected a directory for the rounds, not "),
    (("rounds: 2", "rounds: 0"), r"bad.yaml:9: rounds: expected a finite number >= 1, got 0"),
    (("human: [human.jsonl:2]", "human: human.jsonl:2"),
     r"bad.yaml:8: human: expected a list of text, not 'human.jsonl:2'"),
    (("label: {", "label: {both_orders: 1, "), r"bad.yaml:13: label.both_orders: expected true or false, not 1"),
    # the stage's own checks, located in the recipe
    (("sft: {", "sft: {learning_rate: -1, "), r"bad.yaml:11: sft.learning_rate: expected a finite number > 0, got -1"),
    (("reward: {", "reward: {lora_dropout: 1.5, "),
     r"bad.yaml:14: reward.lora_dropout: expected a finite number between 0 and 1, got 1.5"),
    (("sft: {", "sft: {lora_r: 8, "), r"bad.yaml:11: sft: lora_r: used only with lora: true"),
    (("ppo: {", "ppo: {minibatches: 3, "), r"bad.yaml:15: ppo.minibatches: 3 does not divide batch_size 4"),
    (("reward: {", "reward: {ties: half, "),
     r"bad.yaml:14: reward.ties: set by the pipeline: use the recipe's `rankings.ties`"),
])
def test_recipe_numbers_are_finite_and_in_range(recipe_file, tmp_path, edit, error):
    bad = tmp_path / "bad.yaml"
    bad.write_text(recipe_file.read_text().replace(*edit))
    with pytest.raises((DataError, ConfigError), match=error):
        load_recipe(bad)
    result = CliRunner().invoke(cli, ["run", str(bad), "--dry-run"])
    assert result.exit_code == 1 and "Traceback" not in result.output and not (tmp_path / "runs").exists()


def test_a_recipe_whose_labels_all_weigh_0_stops_before_the_first_stage(recipe_file, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(recipe_file.read_text().replace("rounds: 2", "rounds: 2\nai_weight: 0").replace(
        "human: [human.jsonl:2]", "human: [human.jsonl:0]"))
    result = CliRunner().invoke(cli, ["run", str(bad), "--dry-run"])
    assert result.exit_code == 1 and "Traceback" not in result.output and not (tmp_path / "runs").exists()
    assert "bad.yaml:10: ai_weight: 0, and no human file with a weight above 0: the reward model has no label" \
        in " ".join(result.output.split())
    bad.write_text(recipe_file.read_text().replace("rounds: 2", "rounds: 2\nai_weight: 0"))
    assert CliRunner().invoke(cli, ["run", str(bad), "--dry-run"]).exit_code == 0  # the human pairs weigh 2


def test_set_values_are_checked_and_named_as_overrides(recipe_file):
    with pytest.raises(DataError, match=r"^--set: ppo.learning_rate: expected a finite number, got nan$"):
        load_recipe(recipe_file, {"ppo.learning_rate": "nan"})  # the file's own ppo.learning_rate line is not blamed
    with pytest.raises(DataError, match=r"^--set: human\[0\]: human.jsonl: weight: expected a finite number >= 0"):
        load_recipe(recipe_file, {"human": ["human.jsonl:-inf"]})
    # a setting the file gives (sample.n: 2) made wrong by an override: the override is named
    with pytest.raises(ConfigError, match=r"^--set: sample: n: temperature 0 \(greedy\) gives the 2 responses"):
        load_recipe(recipe_file, {"sample.temperature": 0})
    # YAML reads 1e-5 as text: a number all the same
    steps = plan(load_recipe(recipe_file, {"reward.learning_rate": "1e-5"}))
    assert next(s for s in steps if s.stage == "reward").config.learning_rate == 1e-5
    result = CliRunner().invoke(cli, ["run", str(recipe_file), "--dry-run", "--set", "ppo.kl_coef=.inf"])
    assert result.exit_code == 1 and "error: --set: ppo.kl_coef: expected a finite number, got inf" in result.output


def test_settings_nothing_reads_are_reported(recipe_file, tmp_path):
    unused = tmp_path / "unused.yaml"
    unused.write_text(recipe_file.read_text().replace("eval: {", "dpo: {beta: 0.2}\neval: {"))
    assert unused_settings(load_recipe(unused)) == [
        f"{unused}:16: dpo: not used: policy_trainer is ppo (these settings take effect with policy_trainer: dpo)"]
    assert unused_settings(load_recipe(unused, {"policy_trainer": "dpo"})) == [
        f"{unused}:15: ppo: not used: policy_trainer is dpo (these settings take effect with policy_trainer: ppo)"]
    assert unused_settings(load_recipe(recipe_file, {"human": [], "rankings.ties": "half", "ai_weight": 3})) == [
        "--set: rankings: not used: the recipe names no human rankings (human: [FILE:WEIGHT])",
        "--set: ai_weight: not used: the recipe names no human rankings (human: [FILE:WEIGHT])"]
    assert unused_settings(load_recipe(recipe_file, {"critique.prefs": True, "ppo.eval_every": 1, "eval_prompts": None,
                                                     "ppo.constitution": "harmless"})) == [
        ("--set: critique.prefs: prefs.jsonl is written, but no later step of the recipe reads it (the reward model "
         "trains on the AI labels and the human files)"),
        "--set: ppo.eval_every: not used: the recipe names no eval_prompts",
        "--set: ppo.constitution: not used: it is the rubric of ppo.reward_score, which is not set"]
    result = CliRunner().invoke(cli, ["run", str(unused), "--dry-run"])
    assert result.exit_code == 0 and "warning: " in result.output and "dpo: not used" in result.output


def test_the_direct_score_reward_uses_the_recipes_constitution(recipe_file):
    ppo = lambda **more: next(s for s in plan(load_recipe(recipe_file, {"constitution": "harmless", **more}))
                              if s.stage == "ppo").config
    assert ppo(**{"ppo.reward_score": "some-labeler:0.5"}).constitution == "harmless"
    assert ppo(**{"ppo.reward_score": "some-labeler", "ppo.constitution": "default"}).constitution == "default"


@pytest.mark.parametrize("example", ["quickstart", "human-mix", "gpu"])
def test_example_recipes_load_and_plan(example, tmp_path, monkeypatch):
    import yaml

    from rlaif import recipe as recipes
    from rlaif.rankings import run as import_rankings

    recipe = load_recipe(QUICKSTART.parent.parent / example / "recipe.yaml", {"out": str(tmp_path / example)})
    steps = plan(recipe)
    if example == "gpu":  # hub models: read from the local cache, which the dry run checks (here: as if cached)
        monkeypatch.setattr(recipes, "_in_hub_cache", lambda repo_id: repo_id.startswith("Qwen/Qwen2.5-"))
    prompts = {next(s for s in steps if s.stage == "critique").config.prompts, steps[-1].config.prompts}
    assert all(Path(p).is_file() for p in prompts)
    assert len(check_inputs(recipe, steps)) == len(recipe.human) + len(prompts)  # every input reads
    assert [s.stage for s in steps].count("eval") == 1 and all(s.state == "run" for s in steps)
    human = [s for s in steps if s.stage == "rankings"]
    if example == "human-mix":  # its human pairs import as hard labels the reward model mixes in at weight 2
        import_rankings(human[0].config)
        rows = list(read_jsonl(human[0].config.out))
        assert len(rows) == 8 and all(r["p_chosen"] == 1.0 and r["source"] == "human" for r in rows)
        assert f"{human[0].config.out}:2.0" in next(s for s in steps if s.stage == "reward").config.data
    if example == "gpu":
        for name in ("ddp", "deepspeed-zero2"):
            config = yaml.safe_load((QUICKSTART.parent.parent / "gpu" / "accelerate" / f"{name}.yaml").read_text())
            assert config["mixed_precision"] == "bf16" and config["num_processes"] >= 2


def test_editing_a_principle_redoes_the_stages_that_use_it(tmp_path, quickstart):
    from rlaif.workspace import init

    init(tmp_path / "project")
    constitution = tmp_path / "project" / "constitution.yaml"
    recipe = quickstart(constitution=str(constitution), human=[])
    before = {(s.round, s.stage): s.key for s in plan(recipe)}
    library = tmp_path / "project" / "principles" / "harmless.yaml"
    library.write_text(library.read_text().replace("Which of these replies", "Which of these two replies", 1))
    after = {(s.round, s.stage): s.key for s in plan(quickstart(constitution=str(constitution), human=[]))}
    assert [step for step in before if before[step] != after[step]] == list(before)  # critique first, all after it
    assert before[1, "critique"] != after[1, "critique"] and before[1, "label"] != after[1, "label"]


def test_a_stage_run_by_hand_is_adopted_and_a_stranger_directory_is_left_alone(quickstart):
    from rlaif.critique import run as critique

    recipe = quickstart()
    first = plan(recipe)[1]
    critique(first.config)  # as if run by hand (e.g. under accelerate launch) with the recipe's settings
    assert states(recipe)[1] == (1, "critique", "done")

    stranger = first.directory.parent / "sft" / "notes.txt"
    stranger.parent.mkdir(parents=True)
    stranger.write_text("my own files")
    assert states(recipe)[2] == (1, "sft", "conflict")
    with pytest.raises(ConfigError, match="sft: holds a sft run this recipe did not make"):
        run(recipe, progress=False)
    assert stranger.read_text() == "my own files" and not (first.directory / ".pipeline-key").exists()

    stranger.unlink()

    def stop(step):
        if step.stage != "rankings":
            raise KeyboardInterrupt(step.stage)

    with pytest.raises(KeyboardInterrupt, match="sft"):  # critique is kept, its key written; sft runs next
        run(recipe, progress=False, on_step=stop)
    assert (first.directory / ".pipeline-key").read_text().strip() == first.key



def test_settings_added_later_keep_the_keys_of_runs_made_before_them(recipe_file, monkeypatch):
    """Each stage config's ADDED settings, at the value that reproduces the runs made before them, stay out of the
    keys: every step of a version whose configs had none of them (as if dataclasses.asdict left them out) keeps its
    key up to the first setting whose default changed what runs (reward's group_by_length and reliability); another
    value of such a setting is a new key, and the step and those after it are redone."""
    import dataclasses

    def keys(overrides: dict | None = None, older: bool = False) -> dict[tuple[int, str], str]:
        recipe = load_recipe(recipe_file, {"rounds": 1, **(overrides or {})})
        real = dataclasses.asdict
        if older:
            monkeypatch.setattr(dataclasses, "asdict", lambda config: {
                k: v for k, v in real(config).items() if k not in getattr(type(config), "ADDED", {})})
        try:
            return {(s.round, s.stage): s.key for s in plan(recipe)}
        finally:
            monkeypatch.undo()

    now, older = keys(), keys(older=True)
    same = [stage for (_, stage), key in now.items() if older[1, stage] == key]
    # the labeler check now judges the mode the label stage trains with (trained_mode_only), which older checks did not
    assert same == ["rankings", "critique", "sft", "sample", "label"]
    contrast = keys({"label.mode": "contrast"})  # the check labels in the label stage's mode: it is redone too
    assert [stage for (_, stage), key in contrast.items() if now[1, stage] == key] == [
        "rankings", "critique", "sft", "sample"]


def test_report_of_a_run_still_in_its_first_round(tmp_path):
    """Only labels and a reward model so far (or a DPO round, which logs no steps): the report says what is
    missing instead of failing, and shows what there is."""
    from rlaif.report import render

    labels = tmp_path / "run" / "round-1" / "label" / "preferences.jsonl"
    labels.parent.mkdir(parents=True)
    rows = [{"id": f"p{i}", "prompt": [{"role": "user", "content": "Hi?"}], "p_chosen": 0.6 + 0.1 * i,
             "chosen": [{"role": "assistant", "content": "Hello."}], "rejected": [{"role": "assistant", "content": "Go."}],
             "source": "ai", "principles": ["privacy"], "consistent": bool(i), "flags": [],
             "p_orders": {"chosen_first": 0.6 + 0.1 * i, "chosen_second": 0.6 + 0.1 * i}} for i in range(2)]
    labels.write_text("".join(json.dumps(r) + "\n" for r in rows))
    metrics = {"train": {"pairs": 2, "first_loss": 0.7, "last_loss": 0.6}, "heldout": None}
    (tmp_path / "run" / "round-1" / "reward").mkdir()
    (tmp_path / "run" / "round-1" / "reward" / "metrics.json").write_text(json.dumps(metrics))
    page = render(tmp_path / "run").read_text()
    assert "Not evaluated yet" in page and "No PPO, GRPO or RLOO steps logged" in page
    assert "No held-out pairs, so no calibration plot" in page
    assert page.count("<figure id=") == 2 and "<td class=num>50.0% [9.5, 90.5]</td>" in page  # 1 of 2 consistent
    with pytest.raises(ConfigError, match="not a run directory"):
        render(tmp_path)


# --------------------------------------------------------------------------------------------------------------------
# One writer per directory: a second process is refused at once; a killed holder leaves no lock behind

HOLD = """
import sys, time
from rlaif.records import lock_stage, open_stage
open_stage(sys.argv[1], "critique", {"seed": 0}) if sys.argv[2] == "stage" else lock_stage(sys.argv[1])
print("holding", flush=True)
time.sleep(300)
"""


@contextmanager
def held(directory: Path, how: str = "stage"):
    """Another process holding `directory`'s lock (opened as a stage, or locked as a run's OUT) until the block ends
    or it is killed."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(directory), how], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        yield holder
    finally:
        holder.kill()
        holder.wait()


def test_a_stage_directory_is_written_by_one_process_at_a_time(tmp_path, monkeypatch):
    from rlaif.records import open_stage, stage_writer

    directory = tmp_path / "critique"
    with held(directory) as holder:
        message = (rf"^{directory}: another rlaif process \(pid {holder.pid}, started \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d"
                   rf"[^)]*\) is writing {directory}; wait for it or stop it$")
        with pytest.raises(DataError, match=message):
            open_stage(directory, "critique", {"seed": 0})
        assert re.fullmatch(rf"pid {holder.pid}, started .+", stage_writer(directory))
        monkeypatch.setenv("RANK", "1")  # a process of the holder's own run (accelerate launch): the main one writes
        assert open_stage(directory, "critique", {"seed": 0}).status == "running"
        monkeypatch.delenv("RANK")
        holder.kill()  # kill -9: the OS drops its lock with it
        holder.wait()
        manifest = open_stage(directory, "critique", {"seed": 0})  # a rerun proceeds
        assert stage_writer(directory) is None
    manifest.status = "complete"
    manifest.save(directory)  # a completed stage is free to write again, by any process
    with held(directory):
        pass


def test_a_second_run_of_a_recipe_stops_at_once_naming_the_first(recipe_file, monkeypatch):
    from rlaif import pipeline

    def no_stage(step, progress):
        raise AssertionError(f"{step.stage} ran")

    monkeypatch.setattr(pipeline, "_execute", no_stage)
    recipe = load_recipe(recipe_file)
    out = Path(recipe.out)
    with held(out, "run") as holder:
        result = CliRunner().invoke(cli, ["run", str(recipe_file)])
        assert result.exit_code == 1, result.output
        assert f"another rlaif process (pid {holder.pid}, started " in result.output
        assert f"is writing {out}; wait for it or stop it" in result.output and "round 1" not in result.output
        result = CliRunner().invoke(cli, ["run", str(recipe_file), "--dry-run"])  # the plan, and a warning
        assert result.exit_code == 0 and f"another rlaif process (pid {holder.pid}, started " in result.output
    # A stage run by hand into a step's directory: the run stops before touching it.
    critique = next(s for s in plan(recipe) if s.stage == "critique")
    monkeypatch.setattr(pipeline, "_execute", lambda step, progress: {} if step.stage == "rankings" else no_stage(
        step, progress))
    with held(critique.directory, "run") as holder, \
            pytest.raises(DataError, match=f"another rlaif process \\(pid {holder.pid}, "):
        run(recipe, progress=False)
    assert not (critique.directory / ".pipeline-key").exists()
    assert states(recipe)[:2] == [(1, "rankings", "run"), (1, "critique", "run")]  # a lock alone is no run


# --------------------------------------------------------------------------------------------------------------------
# What `rlaif run` says: each step's counts, why SFT has nothing, the plan's notes


def test_the_run_prints_each_steps_counts_and_why_sft_has_nothing(recipe_file):
    out = load_recipe(recipe_file).out
    result = CliRunner().invoke(cli, ["run", str(recipe_file), "--rounds", "1", "--set", "critique.max_new_tokens=1",
                                      "--set", "critique.sft_include_flagged=false"])
    assert result.exit_code == 1, result.output
    assert result.output.startswith(f"out: {out}\n")
    assert "\n  rankings: read 4 pairs, used 4\n" in result.output
    # every one-token reply is cut off: flagged, and left out of SFT
    assert re.search(r"\n  critique: read 4 prompts, used 4; 0 SFT rows, 4 flagged, 4 of them left out of SFT\n",
                     result.output), result.output
    error = result.output[result.output.index("error: "):].replace("\n", " ")
    assert re.fullmatch(rf"error: {out}/round-1/critique/sft.jsonl: no SFT examples: 4 of 4 final revisions were "
                        r"flagged \((\w+ \d, )*truncated \d(, \w+ \d)*\) and left out; raise critique.max_new_tokens "
                        r"\(now 1\) so that revisions end before it, or set critique.sft_include_flagged: true to "
                        r"train on flagged revisions ", error), error
    assert not (Path(out) / "round-1" / "sft").exists()


def test_the_plan_says_what_a_longer_run_keeps(recipe_file):
    from rlaif.records import Manifest

    recipe = load_recipe(recipe_file, {"rounds": 1})
    ppo = next(s for s in plan(recipe) if s.stage == "ppo")
    ppo.directory.mkdir(parents=True)
    (ppo.directory / ".pipeline-key").write_text(ppo.key + "\n")
    Manifest(stage="ppo", status="complete", counts={"steps": 3}).save(ppo.directory)  # trained 3 steps
    shorter = {s.stage: s for s in plan(load_recipe(recipe_file, {"rounds": 1, "ppo.steps": 2}))}
    assert shorter["ppo"].state == "done" and shorter["ppo"].describe().endswith("  (trained 3 steps; asked for 2: kept)")
    same = {s.stage: s for s in plan(load_recipe(recipe_file, {"rounds": 1, "ppo.steps": 3}))}
    assert same["ppo"].note == ""
    assert shorter["eval"].key == same["eval"].key  # what comes after reads the 3-step policy either way


# --------------------------------------------------------------------------------------------------------------------
# Where an error comes from: the recipe line, the override, the resolved path


def test_errors_name_the_recipe_line_the_override_and_the_resolved_path(recipe_file, tmp_path):
    folder = recipe_file.parent
    text = recipe_file.read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("rounds: 2", "rounds: 2\nlabel: {}"))  # label given twice: YAML keeps the last
    with pytest.raises(DataError, match=r"^.*bad.yaml:14: label: duplicate key 'label' \(first on line 10\); YAML "
                                        r"would keep only the last$"):
        load_recipe(bad)
    bad.write_text(text.replace("sft: {max_steps: 2,", "sft: {max_steps: 2, max_steps: 3,"))
    with pytest.raises(DataError, match=r"bad.yaml:11: sft.max_steps: duplicate key 'max_steps' \(first on line 11\)"):
        load_recipe(bad)
    with pytest.raises(ConfigError, match=r"^--set: reward: eval_fraction: expected a share in \[0, 1\), not 1.0$"):
        load_recipe(recipe_file, {"reward.eval_fraction": 1.0})
    with pytest.raises(DataError, match=r"^--set: foo: unknown setting; expected one of: ai_weight, "):
        load_recipe(recipe_file, {"foo.bar": 1})
    for stage, value in (("reward", 0), ("sft", -4)):  # -1 trains for the epochs; 0 or -4 means nothing
        with pytest.raises(DataError, match=rf"^--set: {stage}.max_steps: expected a number of steps >= 1, or -1"):
            load_recipe(recipe_file, {f"{stage}.max_steps": value})
    assert next(s for s in plan(load_recipe(recipe_file, {"sft.max_steps": -1})) if s.stage == "sft").config.max_steps \
        == -1
    # "expected one of" lists what a recipe may set, not what the pipeline wires in
    with pytest.raises(DataError, match="unknown setting of ppo") as e:
        load_recipe(recipe_file, {"ppo.stepz": 3})
    listed = str(e.value).partition("expected one of: ")[2].split(", ")
    assert "steps" in listed and not {"out", "policy", "prompts", "reward_model", "eval_prompts"} & set(listed)

    # inputs: the line and key that name them, and the path they resolve to
    bad.write_text(text.replace("prompts: prompts.txt", "prompts: prompt.txt"))
    recipe = load_recipe(bad)
    with pytest.raises(DataError, match=rf"^{bad}:6: prompts: {folder}/prompt.txt: file not found$"):
        check_inputs(recipe, plan(recipe))
    bad.write_text(text.replace(f"model: {load_recipe(recipe_file).model}", "model: smollm2-135m-instruc"))
    recipe = load_recipe(bad)
    with pytest.raises(Exception, match=rf"^{bad}:4: model: smollm2-135m-instruc: not an embedded model \(did you mean "
                                        rf"smollm2-135m-instruct\?\), a local path \({folder}/smollm2-135m-instruc\) "
                                        r"or a model in the local Hugging Face cache; download a hub model first"):
        check_inputs(recipe, plan(recipe))
    with pytest.raises(ConfigError, match=r"^--set: constitution: mine.yaml: no such file, and not a shipped"):
        load_recipe(recipe_file, {"constitution": "mine.yaml"})
    recipe = load_recipe(recipe_file, {"eval.reward_model": "./no/such/rm"})
    with pytest.raises(Exception, match=rf"^--set: eval.reward_model: ./no/such/rm: no such file or directory "
                                        rf"\({folder}/no/such/rm\)$"):
        check_inputs(recipe, plan(recipe))


# --------------------------------------------------------------------------------------------------------------------
# The labeler check and its gate: stop, warn or weight


VERDICT = ("The best mode, both orders, agrees with people on 48.0% [38.0, 58.0] of 100 pairs; prefer the shorter "
           "reply agrees on 55.0% [45.0, 65.0]; the difference, -7.0 points [-18.0, +4.0], does not show the labeler "
           "beats the baseline.")


def scripted_check(monkeypatch, beats: bool) -> list[str]:
    """Stages replaced by a script: the labeler check writes a report card with the given verdict (and a
    labels.jsonl), the other stages do nothing, and the reward stage stops the run. Returns the stages run."""
    from rlaif import pipeline

    ran = []

    def execute(step, progress):
        ran.append(step.stage)
        if step.stage == "labeler-check":
            verdict = {"beats": beats, "text": "The labeler beats the baseline." if beats else VERDICT}
            (step.directory / "labels.jsonl").write_text("")
            (step.directory / "labeler_report.json").write_text(json.dumps({"config": {}, "verdict": verdict}))
            return {"summary": f"read 3 pairs, used 3; {verdict['text']}"}
        if step.stage == "reward":
            raise KeyboardInterrupt("reward")
        return {}

    monkeypatch.setattr(pipeline, "_execute", execute)
    return ran


def test_gate_stop_stops_after_the_check_and_says_how_to_go_on(recipe_file, monkeypatch):
    ran = scripted_check(monkeypatch, beats=False)
    args = ["run", str(recipe_file), "--rounds", "1", "--set", "label.gate=stop"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    output = " ".join(result.output.split())
    assert "stopped: the labeler check stops the run (label.gate: stop). The best mode, both orders, agrees with " \
           "people on 48.0% [38.0, 58.0]" in output
    assert "rerun with --set label.gate=weight" in output and "--set label.gate=warn" in output
    assert "or use a larger labeler" in output and "labeler-check/labeler_report.json" in output
    assert ran == ["rankings", "critique", "sft", "sample", "label", "labeler-check"]
    # The finished check is not run again, and stops the run again (the scripted stages before it, which write
    # nothing, do run again); the plan says so.
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2 and "stopped: the labeler check stops the run" in result.output
    assert ran.count("labeler-check") == 1 and ran[-1] == "label"
    result = CliRunner().invoke(cli, args + ["--dry-run"])
    check = next(line for line in result.output.splitlines() if "labeler-check" in line)
    assert check.startswith("round 1  labeler-check done") and check.endswith(
        "(gate: stop; the labeler does not beat the best baseline: the run stops here)")
    # A labeler that passes goes on to the reward stage, which weighs its labels by their reliability.
    monkeypatch.undo()
    ran = scripted_check(monkeypatch, beats=True)
    recipe = load_recipe(recipe_file, {"rounds": 1, "label.gate": "stop"})
    (Path(recipe.out) / "labeler-check" / "labeler_report.json").unlink()  # an unfinished check: run again
    with pytest.raises(KeyboardInterrupt, match="reward"):
        run(recipe, progress=False)
    assert ran[-2:] == ["labeler-check", "reward"]


@pytest.mark.parametrize("gate", ["warn", "weight"])
def test_gate_warn_and_weight_warn_and_wire_the_reward_stage(recipe_file, monkeypatch, gate):
    scripted_check(monkeypatch, beats=False)
    recipe = load_recipe(recipe_file, {"rounds": 1, "label.gate": gate})
    warnings = []
    with pytest.raises(KeyboardInterrupt, match="reward"):
        run(recipe, progress=False, on_warning=lambda step, text: warnings.append(text))
    assert len(warnings) == 1 and warnings[0].startswith(f"labeler check: {VERDICT} So ")
    assert ("weighs its labels by their measured reliability (label.gate: weight)" if gate == "weight" else
            "its labels train at ai_weight, calibrated where the reward stage can measure them (label.gate: warn)") \
        in warnings[0]
    steps = {s.stage: s for s in plan(recipe)}
    check = steps["labeler-check"]
    assert steps["reward"].config.calibration == [str(check.directory / "labels.jsonl")]
    assert steps["reward"].config.reliability == gate
    assert check.directory == Path(recipe.out) / "labeler-check" and check.state == "done"
    # The check's finding is said again each run that passes it.
    with pytest.raises(KeyboardInterrupt, match="reward"):
        run(recipe, progress=False, on_warning=lambda step, text: warnings.append(text))
    assert len(warnings) == 2


def test_the_check_note_says_what_the_reward_stage_needs_to_measure_the_labeler(recipe_file):
    def note(**settings) -> str:
        return next(s for s in plan(load_recipe(recipe_file, {"rounds": 1, **settings})) if s.stage == "labeler-check"
                    ).note

    assert note() == ("gate: weight; labels up to 200 human pairs; the reward stage needs 20 or more of them to "
                      "measure the labeler, else its labels get weight 0")
    # Fewer pairs checked than the reward stage needs: the note says what follows, under each gate.
    assert note(**{"label.gate_pairs": 10}) == ("gate: weight; labels up to 10 human pairs; the reward stage needs 20 "
                                                "to measure the labeler, so its labels will get weight 0")
    assert note(**{"label.gate_pairs": 10, "label.gate": "warn", "reward.reliability_min_pairs": 5}) == (
        "gate: warn; labels up to 10 human pairs; the reward stage needs 5 or more of them to measure the labeler, "
        "else its labels train at ai_weight, uncalibrated")
    # The check labels in mode compare: it cannot measure labels of another mode.
    assert note(**{"label.mode": "score"}).endswith("; it labels in mode compare, the label stage in mode score, so "
                                                    "it cannot measure the label stage's labels: they get weight 0")


def test_the_check_labels_training_side_human_pairs_where_people_chose(tmp_path, recipe_file):
    from rlaif.pipeline import _write_check_pairs
    from rlaif.rankings import run as import_rankings

    prompts = [f"Question {i}?" for i in range(40)]
    ranked = [{"prompt": p, "responses": ["Kind.", "Rude."], "ranks": [1, 2 if i % 10 else 1]}  # every 10th a tie
              for i, p in enumerate(prompts)]
    (tmp_path / "more.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ranked))
    recipe = load_recipe(recipe_file, {"rounds": 1, "human": ["human.jsonl:2", f"{tmp_path / 'more.jsonl'}:1",
                                                             "human-again.jsonl"],
                                       "rankings.ties": "half", "label.gate_pairs": 25})
    (recipe_file.parent / "human-again.jsonl").write_text((recipe_file.parent / "human.jsonl").read_text())
    steps = plan(recipe)
    for step in steps:
        if step.stage == "rankings":
            import_rankings(step.config)
    check = next(s for s in steps if s.stage == "labeler-check")
    assert check.config.limit == 25 and check.config.injection_pairs == 0 and not check.config.chain_of_thought
    assert check.config.labeler == recipe.labeler and check.config.ensemble == 1  # as the label stage draws them
    check.directory.mkdir(parents=True)
    written = _write_check_pairs(check)
    rows = list(read_jsonl(check.config.pairs))
    assert len(rows) == written and len({r["id"] for r in rows}) == written
    keys = [pair_key(r) for r in rows]
    decided = [r for r in ranked if r["ranks"][1] == 2]
    every = {pair_key({"prompt": [{"role": "user", "content": r["prompt"]}],
                       "chosen": [{"role": "assistant", "content": "Kind."}],
                       "rejected": [{"role": "assistant", "content": "Rude."}]}) for r in decided}
    every |= {pair_key(r) for r in read_jsonl(steps[0].config.out)}  # human.jsonl, and its copy: the same pairs
    assert set(keys) == {k for k in every if not held_out_key(k, 0.5)}  # reward.eval_fraction 0.5
    assert all(r["p_chosen"] == 1.0 and r["source"] == "human" for r in rows)
    # evenly from every file: in the order of a hash of the pair, not file by file
    assert keys == sorted(keys, key=lambda k: __import__("hashlib").sha256(k.encode()).hexdigest())
    # the check's key holds what it reads: the share the reward stage holds out, the human files
    assert next(s for s in plan(load_recipe(recipe_file, {"rounds": 1, "reward.eval_fraction": 0.2}))
                if s.stage == "labeler-check").key != next(s for s in plan(load_recipe(recipe_file, {"rounds": 1}))
                                                           if s.stage == "labeler-check").key


def test_gate_settings_are_checked_and_unused_without_human_files(recipe_file, tmp_path):
    with pytest.raises(DataError, match=r"^--set: label.gate: expected one of stop, warn, weight, not 'maybe'$"):
        load_recipe(recipe_file, {"label.gate": "maybe"})
    with pytest.raises(DataError, match=r"^--set: label.gate_pairs: expected a whole number, not 2.5$"):
        load_recipe(recipe_file, {"label.gate_pairs": 2.5})
    with pytest.raises(DataError, match=r"^--set: reward.reliability: set by the pipeline: use the recipe's "
                                        r"`label.gate`$"):
        load_recipe(recipe_file, {"reward.reliability": "off"})
    with pytest.raises(DataError, match=r"^--set: reward.calibration: set by the pipeline"):
        load_recipe(recipe_file, {"reward.calibration": ["labels.jsonl"]})
    bad = tmp_path / "bad.yaml"
    bad.write_text(recipe_file.read_text().replace("label: {", "label: {gate: never, "))
    with pytest.raises(DataError, match=r"bad.yaml:13: label.gate: expected one of stop, warn, weight"):
        load_recipe(bad)
    alone = load_recipe(recipe_file, {"human": [], "label.gate": "stop", "label.gate_pairs": 50})
    assert unused_settings(alone) == [
        "--set: label.gate: not used: the recipe names no human rankings (human: [FILE:WEIGHT])",
        "--set: label.gate_pairs: not used: the recipe names no human rankings (human: [FILE:WEIGHT])"]
    steps = plan(alone)
    assert "labeler-check" not in [s.stage for s in steps]
    reward = next(s for s in steps if s.stage == "reward").config
    assert reward.calibration == [] and reward.reliability == "weight"


def test_what_moved_to_rlaif_recipe_still_imports_from_rlaif_pipeline():
    from rlaif import pipeline, recipe

    assert pipeline.load_recipe is recipe.load_recipe and pipeline.check_settings is recipe.check_settings
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        pipeline.nothing  # noqa: B018


def test_training_stages_run_under_accelerate_launch_with_num_processes(recipe_file, monkeypatch):
    """--num-processes 2: sft, reward and ppo each run as `accelerate launch --num_processes 2 -m rlaif STAGE`
    (two CPU processes here), every setting passed (a fixed beta's kl_target: null too), the other stages in the
    run's process. The number of processes is not in any key: a rerun with another number keeps every step."""
    one = {(s.round, s.stage): s.key for s in plan(load_recipe(recipe_file, {"rounds": 1}))}
    two = {(s.round, s.stage): s.key for s in plan(load_recipe(recipe_file, {"rounds": 1, "num_processes": 2}))}
    assert one == two
    with monkeypatch.context() as patched, pytest.raises(ConfigError, match=r"ppo.engine: vllm samples PPO's "
                                                                             r"rollouts in one process"):
        patched.setitem(sys.modules, "vllm", types.ModuleType("vllm"))  # as if installed: refused when planned
        plan(load_recipe(recipe_file, {"rounds": 1, "num_processes": 2, "ppo.engine": "vllm"}))
    result = CliRunner().invoke(cli, ["run", str(recipe_file), "--rounds", "1", "--num-processes", "2",
                                      "--set", "ppo.kl_target=null"])
    assert result.exit_code == 0, result.output
    out = Path(load_recipe(recipe_file).out) / "round-1"
    for line in ("sft: 2 processes; read 4, used 3", "reward: 2 processes; read 7, used 3",
                 "ppo: 2 processes; read 4, used 4"):
        assert f"\n  {line}\n" in result.output, result.output
    ppo = json.loads((out / "ppo" / "manifest.json").read_text())
    assert ppo["status"] == "complete" and ppo["counts"]["processes"] == 2
    assert {p.name for p in (out / "ppo" / "checkpoints" / "step-2").glob("random_states_*")} == {
        "random_states_0.pkl", "random_states_1.pkl"}
    assert "kl_target: null" in (out / "ppo" / "config.yaml").read_text()  # the fixed beta, not the default target
    assert {s.state for s in plan(load_recipe(recipe_file, {"rounds": 1, "ppo.kl_target": None}))} == {"done"}


def test_a_launched_stage_s_error_and_a_ppo_stop_come_back_once_with_their_exit_code(recipe_file, tmp_path, capfd,
                                                                                      tiny_model_dir, monkeypatch):
    """A stage under accelerate launch that meets a user error (in every process, or in the second only, the first
    going on into a collective it would wait in), or a PPO guard that stops it: the run prints the stage's own message
    once, with no traceback from the launcher or the other process, and exits as `rlaif run` would in one process (a
    user error raised as ConfigError, a stop with exit status 2)."""
    from rlaif.launch import launched
    from rlaif.pipeline import Step
    from rlaif.ppo.config import PPOConfig
    from rlaif.sft import SFTConfig

    data = tmp_path / "sft.jsonl"
    data.write_text('{"messages": "not a list"}\n')
    step = Step(1, "sft", tmp_path / "sft-out", SFTConfig(data=str(data), out=str(tmp_path / "sft-out"),
                                                          model=str(tiny_model_dir), device="cpu"), processes=2)
    step.directory.mkdir()
    with pytest.raises(ConfigError, match=rf"{re.escape(str(data))}:1: messages"):
        launched(step)
    printed = capfd.readouterr()
    assert "messages" not in printed.err + printed.out and "Traceback" not in printed.err
    assert "terminate called" not in printed.err  # no abort in a failing process's shutdown

    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parent))  # toy_rewards
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    ppo = PPOConfig(prompts=str(prompts), out=str(tmp_path / "ppo"), policy=str(tiny_model_dir), steps=1,
                    reward_fn=["toy_rewards:refused_on_rank_one"], batch_size=2, max_new_tokens=4, device="cpu")
    (tmp_path / "ppo").mkdir()
    with pytest.raises(ConfigError, match="^reward: refused_on_rank_one says no on rank 1$"):
        launched(Step(1, "ppo", tmp_path / "ppo", ppo, processes=2))
    printed = capfd.readouterr()
    assert "refused_on_rank_one" not in printed.err + printed.out and "Traceback" not in printed.err

    result = CliRunner().invoke(cli, ["run", str(recipe_file), "--rounds", "1", "--num-processes", "2",
                                      "--set", "ppo.max_kl=1e-9"])
    printed = capfd.readouterr()
    assert result.exit_code == 2, result.output
    assert "stopped:" in result.output and "KL" in result.output
    assert "stopped" not in printed.err + printed.out and "ChildFailedError" not in printed.err

def test_ppo_under_fsdp_needs_num_processes(recipe_file):
    with pytest.raises(ConfigError, match=r"^ppo.fsdp: shards the models across processes, and this run has one"):
        plan(load_recipe(recipe_file, {"rounds": 1, "ppo.fsdp": True}))
    assert {s.stage for s in plan(load_recipe(recipe_file, {"rounds": 1, "ppo.fsdp": True, "num_processes": 2}))}


# --------------------------------------------------------------------------------------------------------------------
# human.route: each round's least certain pairs to people; the run waits for their answers


ROUTE = "human:\n  files: [human.jsonl:2]\n  route: {budget: 3, random_share: 0.34, overlap: 2, overlap_share: 0.34, weight: 3}"


@pytest.fixture
def routed(recipe_file):
    """The toy recipe in one round, its human files in the section form, with a route of 3 pairs a round."""
    recipe_file.write_text(recipe_file.read_text().replace("human: [human.jsonl:2]", ROUTE).replace("rounds: 2",
                                                                                                   "rounds: 1"))
    return recipe_file


def answer(folder: Path, annotator: str, choices: list[str]) -> list[dict]:
    """People's answers to the first tasks of FOLDER/tasks.jsonl, given through the rank page's app."""
    from fastapi.testclient import TestClient

    from rlaif.rank_serve import create_app

    client = TestClient(create_app(folder), base_url="http://127.0.0.1")
    pages = []
    for i, choice in enumerate(choices):
        task = client.get("/api/state", params={"annotator": annotator}).json()["task"]
        response = client.post("/api/answer", json={"answer_id": f"{annotator}{i}".encode().hex().ljust(32, "0")[:32],
                                                    "task": task["id"], "annotator": annotator, "side": choice,
                                                    "seconds": 4.5})
        assert response.status_code == 200, response.text
        pages.append(task)
    return pages


def test_a_route_stops_after_label_until_people_answer(routed, monkeypatch):
    from rlaif import pipeline

    real, ran = pipeline._execute, []

    def execute(step, progress):  # the real stages up to the stop
        ran.append((step.round, step.stage))
        return real(step, progress)

    monkeypatch.setattr(pipeline, "_execute", execute)
    monkeypatch.chdir(routed.parent)
    result = CliRunner().invoke(cli, ["run", "recipe.yaml", "--set", "ppo.steps=1"])
    assert result.exit_code == 2, result.output
    assert ran == [(1, "rankings"), (1, "critique"), (1, "sft"), (1, "sample"), (1, "label"), (1, "human")]
    folder = Path("runs/toy/round-1/human")
    tasks = list(read_jsonl(folder / "tasks.jsonl"))
    assert len(tasks) == 3 and {"label-studio.json", "label-studio.xml", "README.txt"} <= {
        p.name for p in folder.iterdir()}
    output = " ".join(result.output.split())
    assert "human: 3 of the round's 4 pairs exported for people" in output
    assert ("stopped: round 1 waits for people: rank the 3 pairs its AI labels were least sure of (and a random "
            "share), exported to runs/toy/round-1/human.") in output
    assert "In rlaif's page: rlaif rank serve runs/toy/round-1/human" in output
    assert ("import runs/toy/round-1/human/label-studio.json, and when done export the project as JSON and save it "
            "as runs/toy/round-1/human/label-studio-export.json") in output
    assert "Then rerun the same command: rlaif run recipe.yaml --set ppo.steps=1" in output
    assert "at weight 3;" in output and "To go on without waiting: rlaif run recipe.yaml --set ppo.steps=1 " \
                                       "--skip-human" in output
    drawn = sum(t.get("why") == "random" for t in read_jsonl(folder / "tasks.jsonl"))
    assert f"Only the {drawn} drawn at random measure the AI labeler" in output
    assert "fewer than the 20 pairs the reward stage needs to measure it (reliability_min_pairs)" in output
    # A rerun without answers stops again, and runs nothing again; Label Studio's export saved under its own name
    # is pointed at.
    (folder / "project-1-at-2026-11-30-10-00-1a2b3c4d.json").write_text("[]")
    again = CliRunner().invoke(cli, ["run", "recipe.yaml", "--set", "ppo.steps=1"])
    assert again.exit_code == 2 and "stopped: round 1 waits for people" in again.output
    assert ("runs/toy/round-1/human holds project-1-at-2026-11-30-10-00-1a2b3c4d.json: if that is Label Studio's "
            "export, rename it label-studio-export.json") in " ".join(again.output.split())
    (folder / "project-1-at-2026-11-30-10-00-1a2b3c4d.json").unlink()
    assert len(ran) == 6 and list(read_jsonl(folder / "tasks.jsonl")) == tasks
    # The reward stage's own reliability_min_pairs says whether the random ones are enough to measure the labeler
    assert drawn >= 1
    enough = CliRunner().invoke(cli, ["run", "recipe.yaml", "--set", "ppo.steps=1", "--set",
                                      f"reward.reliability_min_pairs={drawn}"])
    assert enough.exit_code == 2 and f"Only the {drawn} drawn at random" in " ".join(enough.output.split())
    assert "fewer than" not in enough.output and len(ran) == 6
    # Two people answer on the page (ben skips his task); the rerun imports their answers, and the reward stage
    # trains on them with the AI labels and the human file.
    pairs = answer(folder, "ana", ["left", "right"]) + answer(folder, "ben", ["skip"])
    notes: list[str] = []

    def stop_at_ppo(step, progress):
        if step.stage == "ppo":
            raise KeyboardInterrupt("ppo")
        return execute(step, progress)

    monkeypatch.setattr(pipeline, "_execute", stop_at_ppo)
    recipe = load_recipe("recipe.yaml", {"ppo.steps": 1})
    with pytest.raises(KeyboardInterrupt, match="ppo"):
        run(recipe, progress=False, on_note=lambda step, text: notes.append(text))
    assert ran[6:] == [(1, "answers"), (1, "labeler-check"), (1, "reward")]
    assert notes == [(f"2 of 3 tasks answered in {folder}; the reward stages from round 1 on mix the answers in at "
                     "weight 3")]
    reward = next(s for s in plan(recipe) if s.stage == "reward")
    imported = str(Path.cwd() / folder / "answers-page" / "preferences.jsonl")
    assert reward.config.data[-1] == f"{imported}:3.0"
    rows = list(read_jsonl(imported))
    assert [(r["id"], r["source"], r["annotator"]) for r in rows] == [(t["id"], "human", "ana") for t in pairs[:2]]
    assert {(r["prompt"][-1]["content"], r["chosen"][-1]["content"]) for r in rows} == {
        (t["prompt"][-1]["content"], t["replies"][side]) for t, side in zip(pairs, (0, 1))}  # left, then right
    counts = json.loads((Path(reward.directory) / "metrics.json").read_text())["counts"]
    assert counts["labels_read"] == 4 + 4 + 2  # the round's AI labels, the human file's pairs, the answers
    agreement = json.loads((Path(reward.directory) / "metrics.json").read_text())["agreement"]
    assert agreement["pairs_labeled_by_both"] == 2  # people answered pairs the AI labelled


def scripted_route(monkeypatch) -> list[tuple[int, str]]:
    """Stages replaced by a script but for the imports and the human route's export: each label stage writes AI
    labels of four pairs (of its round), the labeler check a passing verdict, the others nothing. Returns the steps
    run."""
    from rlaif import pipeline

    real, ran = pipeline._execute, []

    def execute(step, progress):
        ran.append((step.round, step.stage))
        if step.stage in ("rankings", "human", "answers"):
            return real(step, progress)
        if step.stage == "label":
            rows = [{"id": f"r{step.round}-{i}", "prompt": [{"role": "user", "content": p}],
                     "chosen": [{"role": "assistant", "content": f"Round {step.round}: a careful answer."}],
                     "rejected": [{"role": "assistant", "content": f"Round {step.round}: no."}],
                     "p_chosen": 0.55 + 0.1 * i, "source": "ai", "labeler": "toy"} for i, p in enumerate(PROMPTS)]
            (step.directory / "preferences.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        if step.stage == "labeler-check":
            (step.directory / "labels.jsonl").write_text("")
            (step.directory / "labeler_report.json").write_text(json.dumps({"config": {}, "verdict": {
                "beats": True, "text": "The labeler beats the baseline."}}))
        return {}

    monkeypatch.setattr(pipeline, "_execute", execute)
    return ran


def test_skip_human_goes_on_and_answers_given_later_retrain(routed, monkeypatch):
    ran = scripted_route(monkeypatch)
    monkeypatch.chdir(routed.parent)
    stopped = CliRunner().invoke(cli, ["run", "recipe.yaml", "--rounds", "2"])
    assert stopped.exit_code == 2 and "stopped: round 1 waits for people" in stopped.output
    assert "rlaif run recipe.yaml --rounds 2 --skip-human" in " ".join(stopped.output.split())
    dry = CliRunner().invoke(cli, ["run", "recipe.yaml", "--rounds", "2", "--dry-run"])
    lines = [line for line in dry.output.splitlines() if re.match(r"round \d  human ", line)]
    assert lines[0].startswith("round 1  human     done    runs/toy/round-1/human") and lines[0].endswith(
        "(3 tasks, no answers yet: the run stops here until people answer)")
    assert lines[1].startswith("round 2  human     run     runs/toy/round-2/human") and lines[1].endswith(
        "(exports up to 3 of the round's pairs for people to rank; no answers yet: the run stops here until people "
        "answer)")
    dry = CliRunner().invoke(cli, ["run", "recipe.yaml", "--rounds", "2", "--dry-run", "--skip-human"])
    assert "(3 tasks, no answers yet: --skip-human: the run goes on without them)" in dry.output

    # --skip-human: both rounds export their pairs and go on, their reward stages without answers.
    went_on = CliRunner().invoke(cli, ["run", "recipe.yaml", "--rounds", "2", "--skip-human"])
    assert went_on.exit_code == 0, went_on.output
    output = " ".join(went_on.output.split())
    for k in (1, 2):
        assert (f"round {k} · human: no answers yet to the 3 tasks in runs/toy/round-{k}/human; --skip-human: the "
                f"run goes on without them. Rerun once people have answered, and the reward stages from round {k} on "
                "retrain with their answers") in output
    assert ran.count((1, "human")) == 1 and (2, "human") in ran and (2, "ppo") in ran
    recipe = load_recipe("recipe.yaml", {"rounds": 2})
    before = {(s.round, s.stage): s.key for s in plan(recipe)}
    assert [Path(spec).parent.name[:6] for spec in next(s for s in plan(recipe) if (s.round, s.stage) == (2, "reward"))
            .config.data] == ["label", "label", "human-"]  # both rounds' AI labels and the human file, no answers

    # People answer round 1's pairs on the page, round 2's in Label Studio: each round imports its answers, and
    # each reward stage mixes in those of its round and the rounds before it; nothing before them is redone.
    answer(Path("runs/toy/round-1/human"), "ana", ["left"])
    tasks = json.loads(Path("runs/toy/round-2/human/label-studio.json").read_text())
    tasks[0]["annotations"] = [{"completed_by": 7, "lead_time": 3.0, "was_cancelled": False, "result": [
        {"from_name": "preference", "to_name": "prompt", "type": "choices", "value": {"choices": ["B"]}}]}]
    Path("runs/toy/round-2/human/label-studio-export.json").write_text(json.dumps(tasks))
    steps = {(s.round, s.stage): s for s in plan(recipe)}
    after = {key: s.key for key, s in steps.items()}
    assert [key for key in after if key not in before] == [(1, "answers"), (2, "answers")]
    assert [key for key in before if after[key] != before[key]] == [(1, "reward"), (1, "ppo"), (2, "sample"),
                                                                     (2, "label"), (2, "human"), (2, "reward"),
                                                                     (2, "ppo"), (2, "eval")]
    assert steps[2, "answers"].directory.name == "answers-label-studio"
    assert steps[1, "reward"].config.data[-1] == f"{steps[1, 'answers'].config.out}:3.0"
    assert steps[2, "reward"].config.data[-2:] == [f"{steps[1, 'answers'].config.out}:3.0",
                                                   f"{steps[2, 'answers'].config.out}:3.0"]
    # More answers later: round 1's import and every step after it again, not its export.
    answer(Path("runs/toy/round-1/human"), "ben", ["right"])
    more = {(s.round, s.stage): s.key for s in plan(recipe)}
    assert more[1, "human"] == after[1, "human"] and more[1, "answers"] != after[1, "answers"]
    assert more[1, "reward"] != after[1, "reward"] and more[2, "reward"] != after[2, "reward"]
    # Round 1's answers change the policy that sampled round 2, so round 2 would export other pairs than the ones
    # people answered in Label Studio: the run stops before anything runs, and says what to do with the answers.
    assert steps[2, "human"].state == "conflict"
    ran.clear()
    refused = CliRunner().invoke(cli, ["run", "recipe.yaml", "--rounds", "2"])
    assert refused.exit_code == 1 and ran == [] and "Traceback" not in refused.output
    assert ("runs/toy/round-2/human: holds people's answers (label-studio-export.json) to pairs exported before the "
            "round's labels or human.route's export settings changed, and the round would now export other pairs; "
            "move the answers out of the folder (to keep them in the mix, list them under human.files, e.g. human: "
            "{files: [round-2-answers.jsonl:2]}) and run again") in " ".join(refused.output.split())
    Path("runs/toy/round-2/human/label-studio-export.json").rename("round-2-answers.json")
    assert {s.stage: s.state for s in plan(recipe) if s.round == 2}["human"] == "redo"


@pytest.mark.parametrize("edit, error", [
    (("budget: 3", "budget: 0"), r"recipe.yaml:10: human.route.budget: expected a finite number >= 1, got 0"),
    (("budget: 3", "budget: all"), r"recipe.yaml:10: human.route.budget: expected a whole number, not 'all'"),
    (("random_share: 0.34", "random_share: 1.5"),
     r"recipe.yaml:10: human.route.random_share: expected a finite number between 0 and 1, got 1.5"),
    (("overlap: 2", "overlap: 1.5"), r"recipe.yaml:10: human.route.overlap: expected a whole number, not 1.5"),
    (("weight: 3", "weight: -1"), r"recipe.yaml:10: human.route.weight: expected a finite number >= 0, got -1"),
    (("weight: 3", "wieght: 3"), (r"recipe.yaml:10: human.route.wieght: unknown setting of human.route; expected one "
                                 r"of: budget, random_share, overlap, overlap_share, seed, weight")),
    (("route: {budget: 3, random_share: 0.34, overlap: 2, overlap_share: 0.34, weight: 3}", "route: 200"),
     (r"recipe.yaml:10: human.route: expected a section of settings \(budget, .*\), e.g. route: \{budget: 200, "
     r"weight: 2\}, not 200")),
    (("files:", "file:"), r"recipe.yaml:9: human.file: unknown setting of human; expected files"),
    (("human.jsonl:2", "human.jsonl:nan"),
     r"recipe.yaml:9: human.files\[0\]: human.jsonl: weight: expected a finite number >= 0, got nan"),
    # in block style, each on its own line
    ((ROUTE, "human:\n  files:\n    - human.jsonl:2\n  route:\n    budget: 3\n    seed: 0.5"),
     r"recipe.yaml:13: human.route.seed: expected a whole number, not 0.5"),
    ((ROUTE, "human:\n  files:\n    - other.jsonl\n    - human.jsonl:-2\n  route: {}"),
     r"recipe.yaml:11: human.files\[1\]: human.jsonl: weight: expected a finite number >= 0, got -2"),
])
def test_route_settings_are_checked_at_their_line(routed, edit, error):
    routed.write_text(routed.read_text().replace(*edit))
    with pytest.raises(DataError, match=error):
        load_recipe(routed)
    result = CliRunner().invoke(cli, ["run", str(routed), "--dry-run"])
    assert result.exit_code == 1 and "Traceback" not in result.output


def test_route_settings_by_set_and_what_a_route_uses(recipe_file):
    with pytest.raises(DataError, match=r"^--set: human.route.overlap_share: expected a finite number between 0 and "
                                        r"1, got -0.1$"):
        load_recipe(recipe_file, {"human.route.overlap_share": -0.1})
    # --set reaches into the section; a list of files becomes its files
    recipe = load_recipe(recipe_file, {"human.route.budget": 50, "human.route.weight": 2})
    assert recipe.human == ["human.jsonl:2"] and recipe.human_key == "human.files"
    assert (recipe.human_route.budget, recipe.human_route.weight, recipe.human_route.random_share) == (50, 2.0, 0.2)
    assert [s.stage for s in plan(recipe) if s.round == 1][:8] == [
        "rankings", "critique", "sft", "sample", "label", "human", "labeler-check", "reward"]
    # A route without human files: its answers are the human pairs the reward stage mixes (and measures the AI
    # labels on); the labeler check, which reads human files, does not run.
    alone = load_recipe(recipe_file, {"human": {"route": {}}, "label.gate": "stop", "ai_weight": 2})
    assert alone.human == [] and alone.human_route.budget == 200
    assert unused_settings(alone) == [("--set: label.gate: not used: the labeler check reads human files "
                                      "(human.files), not the answers human.route brings")]
    assert "labeler-check" not in [s.stage for s in plan(alone)]
    result = CliRunner().invoke(cli, ["run", str(recipe_file), "--dry-run", "--skip-human"])
    assert result.exit_code == 0 and "warning: --skip-human: not used: the recipe has no human.route" in result.output
    # Answers that cannot be read stop the run before anything runs, at the setting that asked for them.
    folder = Path(alone.out) / "round-1" / "human"
    folder.mkdir(parents=True)
    (folder / "rankings.jsonl").write_text('{"event": "vote"}\n')
    with pytest.raises(DataError, match=rf"^--set: human.route: {folder}/rankings.jsonl:1: event: expected 'answer' "
                                        "or 'undo'$"):
        check_inputs(alone, plan(alone))
    with pytest.raises(DataError, match=r"ai_weight: 0, and no human file with a weight above 0"):
        plan(load_recipe(recipe_file, {"human": {"route": {"weight": 0}}, "ai_weight": 0}))


def test_the_recipe_s_engine_is_each_stage_s_unless_its_section_says_otherwise(recipe_file, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", types.ModuleType("vllm"))  # as if installed (only plans are made here)
    placed = {f"{stage}.device": None for stage in ("critique", "sample", "ppo", "eval")}  # vLLM places its model
    steps = plan(load_recipe(recipe_file, {"rounds": 1, "engine": "vllm", "label.engine": "rlaif",
                                           "ppo.vllm_gpu_memory_utilization": 0.4, **placed}))
    engines = {s.stage: getattr(s.config, "engine", None) for s in steps}
    assert engines == {"critique": "vllm", "sft": None, "rankings": None, "sample": "vllm", "label": "rlaif",
                       "reward": None, "ppo": "vllm", "eval": "vllm", "labeler-check": "rlaif"}  # as label
    recipe_file.write_text(recipe_file.read_text() + "engine: openai\n")
    with pytest.raises(DataError, match=r"recipe.yaml:\d+: engine: expected rlaif or vllm, not 'openai'"):
        load_recipe(recipe_file)
    recipe_file.write_text(recipe_file.read_text().replace("engine: openai", "engine: vllm"))
    monkeypatch.setitem(sys.modules, "vllm", None)  # not installed: the recipe's line that asked for it
    with pytest.raises(DataError, match=r"recipe.yaml:\d+: engine: vllm is not installed here"):
        load_recipe(recipe_file)
