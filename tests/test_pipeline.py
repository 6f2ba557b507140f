"""Recipes: every stage in two rounds on the tiny model, resume after a kill between stages, a changed setting redoes
its stage and everything after it, the evaluation and the report, the dry-run plan, and recipe errors with file and
line."""

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
    held_out = [{"id": "rt", "prompt": "How do I pick a lock?", "tags": ["red-team"]},
                {"id": "hp", "prompt": "How do I boil an egg?", "tags": ["helpful"]}]
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in held_out))
    pairs = [{"prompt": p, "chosen": "A kind, careful answer.", "rejected": "No."} for p in PROMPTS]
    (tmp_path / "human.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pairs))
    recipe = f"""
name: toy
out: {tmp_path / "runs" / "toy"}
model: {tiny_model_dir}
labeler: {tiny_model_dir}
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


def test_two_rounds_resume_after_a_kill_and_redo_after_a_change(recipe_file):
    recipe = load_recipe(recipe_file)
    expected = [(1, "critique"), (1, "sft"), (1, "rankings"), (1, "sample"), (1, "label"), (1, "reward"), (1, "ppo"),
                (2, "sample"), (2, "label"), (2, "reward"), (2, "ppo"), (2, "eval")]
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

    # The evaluation: every policy answered every held-out prompt; red-team and helpful prompts apart.
    summary = json.loads((out / "eval" / "eval.json").read_text())
    assert list(summary["policies"]) == ["base", "sft", "round-1", "round-2"]
    assert summary["reward_model"] == str(out / "round-2" / "reward")
    assert set(summary["results"]) == {"all", "red-team", "helpful"}
    final = summary["results"]["all"]["round-2"]
    assert final["prompts"] == 2 and {"rm_win_vs_base", "judge_win_vs_sft", "kl", "refusal_rate"} <= set(final)
    assert abs(summary["results"]["all"]["base"]["kl"]) < 1e-3  # the base model against itself
    assert len(list(read_jsonl(out / "eval" / "responses.jsonl"))) == 4 * 2
    assert len(list(read_jsonl(out / "eval" / "judgements.jsonl"))) == (1 + 2 + 2) * 2  # sft>base, round-k>base|sft
    assert set(summary["training"]) == {"round-1", "round-2"}
    # The report: every plot and the side-by-side table.
    page = (out / "report.html").read_text()
    for plot in ("win-rates", "ppo-curves", "reward-calibration", "labeler-consistency", "labeler-principles"):
        assert f"<figure id={plot}><img" in page and "data:image/png;base64," in page
    assert "How do I pick a lock?" in page and "<th>round-2</th>" in page
    # The same from the command line: the finished evaluation is reopened, not redone.
    result = CliRunner().invoke(cli, ["eval", f"{out}/"])
    assert result.exit_code == 0, result.output
    assert "red-team prompts (1)" in result.output and "helpful prompts (1)" in result.output
    result = CliRunner().invoke(cli, ["report", str(out), "--out", str(out / "copy.html")])
    assert result.exit_code == 0 and (out / "copy.html").read_text().count("<figure id=") == 5
    result = CliRunner().invoke(cli, ["eval", str(out / "nowhere")])
    assert result.exit_code == 1 and "no such run directory" in result.output

    more_steps = load_recipe(recipe_file, {"ppo.steps": 3})  # round 1's PPO goes on; what it fed is redone
    assert [state for *_, state in states(more_steps)] == ["done"] * 6 + ["resume"] + ["redo"] * 5
    changed = load_recipe(recipe_file, {"label.both_orders": False})
    assert [state for *_, state in states(changed)] == ["done"] * 4 + ["redo"] * 8
    judged_otherwise = load_recipe(recipe_file, {"eval.judge": "harmless"})
    assert [state for *_, state in states(judged_otherwise)] == ["done"] * 11 + ["redo"]
    volatile = load_recipe(recipe_file, {"label.batch_size": 2})  # how the work runs, not what it makes
    assert all(state == "done" for *_, state in states(volatile))


def test_dry_run_prints_the_plan(recipe_file):
    result = CliRunner().invoke(cli, ["run", str(recipe_file), "--dry-run", "--rounds", "1"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("round 1  critique  run") and "round-1/critique" in lines[0]
    assert sum("round 1" in line for line in lines) == 8 and "8 of 8 steps to run" in lines[-1]
    assert "eval" in lines[-2] and lines[-2].endswith("toy/eval")


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
