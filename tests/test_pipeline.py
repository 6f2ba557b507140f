"""Recipes: every stage in two rounds on the tiny model, resume after a kill between stages, a changed setting redoes
its stage and everything after it, the dry-run plan, and recipe errors with file and line."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from rlaif.cli import cli
from rlaif.pipeline import load_recipe, plan, run
from rlaif.records import DataError, read_jsonl

PROMPTS = ["How do I bake bread?", "Tell me about travel.", "What is science?", "Write a Python function."]


@pytest.fixture
def recipe_file(tmp_path, tiny_model_dir):
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    pairs = [{"prompt": p, "chosen": "A kind, careful answer.", "rejected": "No."} for p in PROMPTS]
    (tmp_path / "human.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pairs))
    recipe = f"""
name: toy
out: {tmp_path / "runs" / "toy"}
model: {tiny_model_dir}
labeler: {tiny_model_dir}
prompts: prompts.txt
human: [human.jsonl:2]
rounds: 2
critique: {{rounds: 1, max_new_tokens: 8, few_shot: false, sft_include_flagged: true, device: cpu}}
sft: {{max_steps: 2, batch_size: 2, max_length: 128, device: cpu}}
sample: {{n: 2, max_new_tokens: 8, device: cpu}}
label: {{batch_size: 4, device: cpu}}
reward: {{max_steps: 2, batch_size: 4, eval_fraction: 0.0, learning_rate: 0.001, device: cpu}}
ppo: {{steps: 2, batch_size: 4, max_new_tokens: 8, learning_rate: 0.001, save_steps: 1, device: cpu}}
"""
    path = tmp_path / "recipe.yaml"
    path.write_text(recipe)
    return path


def states(recipe) -> list[tuple[int, str, str]]:
    return [(s.round, s.stage, s.state) for s in plan(recipe)]


def test_two_rounds_resume_after_a_kill_and_redo_after_a_change(recipe_file):
    recipe = load_recipe(recipe_file)
    expected = [(1, "critique"), (1, "sft"), (1, "rankings"), (1, "sample"), (1, "label"), (1, "reward"), (1, "ppo"),
                (2, "sample"), (2, "label"), (2, "reward"), (2, "ppo")]
    assert states(recipe) == [(r, s, "run") for r, s in expected]

    def kill_at_round_one_label(step):
        if (step.round, step.stage) == (1, "label"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(recipe, progress=False, on_step=kill_at_round_one_label)
    assert [state for *_, state in states(recipe)][:6] == ["done", "done", "done", "done", "resume", "run"]

    run(recipe, progress=False)
    assert all(state == "done" for *_, state in states(recipe))
    out = recipe_file.parent / "runs" / "toy"
    steps = {(s.round, s.stage): s for s in plan(recipe)}
    # Round 2 samples from round 1's PPO policy, retrains the reward model on both rounds' labels and the human
    # pairs, and runs PPO from round 1's policy.
    assert steps[2, "sample"].config.model == str(out / "round-1" / "ppo")
    assert steps[2, "reward"].config.data == [f"{out}/round-1/label/preferences.jsonl:1.0",
                                              f"{out}/round-2/label/preferences.jsonl:1.0",
                                              f"{out}/round-1/human/human/preferences.jsonl:2.0"]
    assert steps[2, "ppo"].config.policy == str(out / "round-1" / "ppo")
    assert (out / "round-2" / "ppo" / "model.safetensors").is_file()
    assert len(list(read_jsonl(out / "round-2" / "label" / "preferences.jsonl"))) == len(PROMPTS)
    assert [r["step"] for r in read_jsonl(out / "round-2" / "ppo" / "metrics.jsonl")] == [1, 2]

    more_steps = load_recipe(recipe_file, {"ppo.steps": 3})  # round 1's PPO goes on; what it fed is redone
    assert [state for *_, state in states(more_steps)] == ["done"] * 6 + ["resume"] + ["redo"] * 4
    changed = load_recipe(recipe_file, {"label.both_orders": False})
    assert [state for *_, state in states(changed)] == ["done"] * 4 + ["redo"] * 7
    volatile = load_recipe(recipe_file, {"label.batch_size": 2})  # how the work runs, not what it makes
    assert all(state == "done" for *_, state in states(volatile))


def test_dry_run_prints_the_plan(recipe_file):
    result = CliRunner().invoke(cli, ["run", str(recipe_file), "--dry-run", "--rounds", "1"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("round 1  critique  run") and "round-1/critique" in lines[0]
    assert sum("round 1" in line for line in lines) == 7 and "7 of 7 steps to run" in lines[-1]


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
