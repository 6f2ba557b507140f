"""Cases for recipes (../shared/cases): bad human data stops `rlaif run` and `--dry-run` before any model stage and
names the recipe setting that fixes it; human files with the same name get a directory each, and reruns keep them;
every stage's settings are checked when the recipe is read (a bad value at its line, a setting that would do nothing
under the others), not when the stage runs after hours of the ones before it."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from rlaif import pipeline
from rlaif.cli import cli
from rlaif.pipeline import plan
from rlaif.recipe import load_recipe
from rlaif.records import DataError, read_jsonl

HH_EMPTY = Path(__file__).parent / "cases" / "hh-empty-reply-late-failure"


@pytest.fixture
def hh_case(tmp_path, monkeypatch):
    """The case's folder copied into a temporary one, which is also the working directory (the recipe's `out` is
    relative to it)."""
    folder = tmp_path / "case"
    shutil.copytree(HH_EMPTY, folder)
    monkeypatch.chdir(folder)
    return folder


@pytest.mark.parametrize("dry_run", [True, False])
def test_an_empty_human_reply_stops_the_run_before_any_stage(hh_case, dry_run, monkeypatch):
    def no_stage(step, progress):
        raise AssertionError(f"{step.stage} ran")

    monkeypatch.setattr(pipeline, "_execute", no_stage)
    result = CliRunner().invoke(cli, ["run", "recipe.yaml"] + ["--dry-run"] * dry_run)
    assert result.exit_code == 1, result.output
    # where the recipe names the file, and where in the file the problem is
    assert f"error: recipe.yaml:10: human[0]: {hh_case}/hh_with_empty.jsonl:3: chosen: is empty" in result.output
    assert "rankings: {skip_empty: true}" in result.output  # the recipe's setting, not only the CLI flag
    assert "Traceback" not in result.output and "round 1" not in result.output
    assert not (hh_case / "out").exists()


def test_with_skip_empty_the_dry_run_counts_the_pair_left_out_and_creates_nothing(hh_case):
    result = CliRunner().invoke(cli, ["run", "recipe.yaml", "--dry-run", "--set", "rankings.skip_empty=true"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[:4] == ["hh_with_empty.jsonl: read 4 pairs, used 3, left out 1 (empty_reply 1)",
                         "prompts.jsonl: read 2 prompts", "eval.jsonl: read 2 prompts",
                         f"out: {hh_case}/out/runs/hh-empty-reply"]  # `out` is relative to the current directory
    assert lines[4].startswith("round 1  rankings  run     out/runs/hh-empty-reply/round-1/human/hh_with_empty-")
    assert lines[4].endswith("  (imports hh_with_empty.jsonl)")  # which human file each directory holds
    assert lines[5].startswith("round 1  critique  run") and lines[-1] == "9 of 9 steps to run"
    assert not (hh_case / "out").exists()


def test_the_shared_hh_file_stops_the_dry_run_at_its_first_empty_reply(hh_case, hh_data):
    result = CliRunner().invoke(cli, ["run", "recipe.yaml", "--dry-run", "--set", f"human=[{hh_data}:2]"])
    assert result.exit_code == 1 and f"{hh_data}:87: chosen: is empty" in result.output, result.output
    assert not (hh_case / "out").exists()


def test_bad_prompts_and_missing_models_stop_the_dry_run(hh_case):
    (hh_case / "eval.jsonl").write_text('{"prompt": "fine"}\n{"prompt": }\n')
    result = CliRunner().invoke(cli, ["run", "recipe.yaml", "--dry-run", "--set", "rankings.skip_empty=true"])
    assert result.exit_code == 1 and "eval.jsonl:2" in result.output, result.output
    shutil.copy(HH_EMPTY / "eval.jsonl", hh_case / "eval.jsonl")
    result = CliRunner().invoke(cli, ["run", "recipe.yaml", "--dry-run", "--set", "rankings.skip_empty=true",
                                      "--set", "labeler=./models/typo"])
    assert result.exit_code == 1, result.output
    assert f"error: --set: labeler: ./models/typo: no such file or directory ({hh_case}/models/typo)" in result.output
    result = CliRunner().invoke(cli, ["run", "recipe.yaml", "--dry-run", "--set", "rankings.skip_empty=true",
                                      "--set", "ppo.reward_fn=[no_such_module:length]"])
    assert result.exit_code == 1 and "--set: ppo.reward_fn[0]: reward_fn: cannot import 'no_such_module:length'" \
        in result.output, result.output
    assert not (hh_case / "out").exists()


# --------------------------------------------------------------------------------------------------------------------
# Review #6: human files with the same file name


def _two_teams(root: Path, human: str = "[a/team.jsonl:1.0, b/team.jsonl:3.0]") -> Path:
    """demo_plan.py's recipe: two human files both named team.jsonl, at weights 1 and 3."""
    for folder, (chosen, rejected) in {"a": ("x", "y"), "b": ("z", "w")}.items():
        (root / folder).mkdir(exist_ok=True)
        row = {"prompt": "q", "chosen": chosen, "rejected": rejected}
        (root / folder / "team.jsonl").write_text(json.dumps(row) + "\n")
    (root / "prompts.txt").write_text("hello\n")
    (root / "recipe.yaml").write_text(f"name: collide\nout: {root / 'runs'}\nprompts: prompts.txt\nhuman: {human}\n")
    return root / "recipe.yaml"


def test_human_files_with_the_same_name_import_apart_and_reruns_keep_them(tmp_path):
    recipe = load_recipe(_two_teams(tmp_path))
    steps = plan(recipe)
    a, b = [s for s in steps if s.stage == "rankings"]
    r1 = tmp_path / "runs" / "round-1"
    for step, folder in ((a, "a"), (b, "b")):  # a directory per file: its stem and a hash of its resolved path
        place = hashlib.sha256(str((tmp_path / folder / "team.jsonl").resolve()).encode()).hexdigest()[:8]
        assert step.directory == r1 / "human" / f"team-{place}"
    assert a.directory != b.directory
    reward = next(s for s in steps if s.stage == "reward")
    assert reward.config.data == [f"{r1}/label/preferences.jsonl:1.0", f"{a.config.out}:1.0", f"{b.config.out}:3.0"]

    def stop_at_the_first_model_stage(step):
        if step.stage != "rankings":
            raise KeyboardInterrupt(step.stage)

    for _ in range(2):  # the second run finds both imports done and keeps them
        with pytest.raises(KeyboardInterrupt, match="critique"):
            pipeline.run(recipe, progress=False, on_step=stop_at_the_first_model_stage)
        states = {s.directory: s.state for s in plan(recipe) if s.stage == "rankings"}
        assert states == {a.directory: "done", b.directory: "done"}
        assert [r["chosen"][0]["content"] for r in read_jsonl(a.config.out)] == ["x"]
        assert [r["chosen"][0]["content"] for r in read_jsonl(b.config.out)] == ["z"]

    # An edited human file is a changed input: its import is redone, and the reward model that reads it.
    (tmp_path / "b" / "team.jsonl").write_text(json.dumps({"prompt": "q", "chosen": "v", "rejected": "w"}) + "\n")
    after = {(s.stage, s.directory): s for s in plan(recipe)}
    assert after["rankings", a.directory].state == "done" and after["rankings", b.directory].state == "redo"
    assert after["reward", reward.directory].key != reward.key


def test_a_human_file_listed_twice_is_refused_naming_both_entries(tmp_path):
    recipe = load_recipe(_two_teams(tmp_path, "[a/team.jsonl:1.0, ./a/team.jsonl:3.0]"))
    with pytest.raises(DataError, match=r"recipe.yaml:4: human\[1\]: ./a/team.jsonl:3.0 is the file a/team.jsonl:1.0 "
                                        r"names too; list it once"):
        plan(recipe)


def test_a_custom_template_missing_a_variable_stops_the_dry_run(hh_case):
    (hh_case / "mine.yaml").write_text(
        'name: mine\nversion: "1"\ndescription: a label template that never shows reply (B)\n'
        "principles:\n  include: [harmless]\ntemplates:\n  label: |\n"
        "    {conversation}\n    (A) {response_a}\n    {question}\n")
    result = CliRunner().invoke(cli, ["run", "recipe.yaml", "--dry-run", "--set", "rankings.skip_empty=true",
                                      "--set", "constitution=mine.yaml"])
    assert result.exit_code == 1, result.output
    assert "mine.yaml:7:3: templates.label: must use {response_b}" in result.output
    assert not (hh_case / "out").exists()


# --------------------------------------------------------------------------------------------------------------------
# Fail late: each stage's settings checked when the recipe is read, not when the stage runs


def _with_section(folder: Path, section: str) -> int:
    """The case's recipe with `section` ("stage: {...}") as its last line, in place of that stage's own line;
    returns the section's line number."""
    recipe = folder / "recipe.yaml"
    stage = section.partition(":")[0]
    lines = [line for line in recipe.read_text().splitlines() if not line.startswith(f"{stage}:")] + [section]
    recipe.write_text("\n".join(lines) + "\n")
    return len(lines)


def _dry_run_refused(folder: Path, monkeypatch, *args: str) -> str:
    """`rlaif run recipe.yaml --dry-run` (no stage may run): exit 1, nothing created; returns the output."""
    def no_stage(step, progress):
        raise AssertionError(f"{step.stage} ran")

    monkeypatch.setattr(pipeline, "_execute", no_stage)
    result = CliRunner().invoke(cli, ["run", "recipe.yaml", "--dry-run", *args])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert not (folder / "out").exists()
    return result.output


def _principles(spec: str) -> int:
    from rlaif.constitution import load_constitution

    return len(load_constitution(spec).principles)


@pytest.mark.parametrize("section, error", [
    ("critique: {rounds: 0}", "critique.rounds: expected a finite number >= 1, got 0"),
    ("critique: {temperature: -0.5}", "critique.temperature: expected a finite number >= 0, got -0.5"),
    ("critique: {top_p: 1.5}", "critique.top_p: expected a share in (0, 1], got 1.5"),
    ("critique: {max_new_tokens: 0}", "critique.max_new_tokens: expected a finite number >= 1, got 0"),
    ("critique: {batch_size: 0}", "critique.batch_size: expected a finite number >= 1, got 0"),
    ("critique: {kv_memory_gb: -1}", "critique.kv_memory_gb: expected a finite number >= 0, got -1"),
    ("sample: {n: 1}", "sample.n: the labeler compares two responses to a prompt: use at least 2"),
    ("sample: {n: 0}", "sample.n: expected a finite number >= 1, got 0"),
    ("sample: {temperature: -1}", "sample.temperature: expected a finite number >= 0, got -1"),
    ("sample: {top_p: 0}", "sample.top_p: expected a share in (0, 1], got 0"),
    ("sample: {engine: vllm}", "sample.engine: vllm is not installed here"),
    ("sample: {engine: hf}", "sample.engine: expected rlaif, vllm or openai, not 'hf'"),
    ("critique: {engine: openai}", "critique: base_url: engine openai sends its requests to a server"),
    ("sample: {concurrency: 4}", "sample: concurrency: used only with engine: openai"),
    ("label: {principles_per_comparison: 0}", ("label.principles_per_comparison: expected a whole number >= 1 or all, "
                                               "not 0; leave it unset to use the constitution's")),
    ("label: {principles_per_comparison: MANY}", ("label.principles_per_comparison: asks for MANY principles per pair "
                                                  "but the constitution default has COUNT; use all")),
    ("label: {min_margin: 0.6}", "label.min_margin: expected a finite number between 0 and 0.5, got 0.6"),
    ("label: {batch_size: 0}", "label.batch_size: expected a finite number >= 1, got 0"),
    ("grpo: {group_size: 1}", "grpo.group_size: advantages are relative to the group; use at least 2, not 1"),
    ("grpo: {learning_rate: 0}", "grpo.learning_rate: expected a finite number > 0, got 0"),
    ("grpo: {temperature: 0}", "grpo.temperature: expected a finite number > 0, got 0"),
    ("eval: {temperature: 0}", ("eval.temperature: the KL to the base model is measured on sampled replies: expected a "
                                "temperature > 0, got 0")),
    ("eval: {max_new_tokens: 0}", "eval.max_new_tokens: expected a finite number >= 1, got 0"),
    ("eval: {batch_size: 0}", "eval.batch_size: expected a finite number >= 1, got 0"),
    ("ppo: {save_steps: 0}", "ppo.save_steps: expected a finite number >= 1, got 0"),
    ("ppo: {steps: 0}", "ppo.steps: expected a finite number >= 1, got 0"),
    ("ppo: {gamma: 2}", "ppo.gamma: expected a finite number between 0 and 1, got 2"),
    ("ppo: {lam: -1}", "ppo.lam: expected a finite number between 0 and 1, got -1"),
    ("ppo: {clip_range: -0.2}", "ppo.clip_range: expected a finite number > 0, got -0.2"),
    ("ppo: {kl_coef: -1}", "ppo.kl_coef: expected a finite number >= 0, got -1"),
    ("ppo: {max_grad_norm: 0}", "ppo.max_grad_norm: expected a finite number > 0, got 0"),
    ("ppo: {learning_rate: -1e-5}", "ppo.learning_rate: expected a finite number >= 0, got -1e-05"),
    ("ppo: {temperature: .nan}", "ppo.temperature: expected a finite number, got nan"),
    ("ppo: {vf_coef: .nan}", "ppo.vf_coef: expected a finite number, got nan"),
    ("ppo: {minibatches: 3}", "ppo.minibatches: 3 does not divide batch_size 8"),
])
def test_a_bad_stage_setting_stops_the_dry_run_at_its_recipe_line(hh_case, monkeypatch, section, error):
    monkeypatch.setitem(sys.modules, "vllm", None)  # vLLM not importable, on any machine
    count = _principles("default")
    section, error = section.replace("MANY", str(count + 1)), error.replace("MANY", str(count + 1))
    line = _with_section(hh_case, section)
    output = _dry_run_refused(hh_case, monkeypatch)
    assert f"error: recipe.yaml:{line}: {error.replace('COUNT', str(count))}" in output


@pytest.mark.parametrize("section, error", [
    ("critique: {temperature: 0, retry_flagged: false, top_p: 0.5, seed: 3}",
     "critique: top_p, seed: no effect with temperature 0 (greedy) and no retries"),
    ("sample: {temperature: 0}", "sample: n: temperature 0 (greedy) gives the 2 responses to a prompt the same text"),
    ("label: {chain_of_thought: false, max_new_tokens: 64}",
     "label: max_new_tokens: the rationale's length limit, used only with chain of thought"),
    ("label: {max_new_tokens: 64}",  # chain of thought left to the constitution, which leaves it off
     ("label: max_new_tokens: the rationale's length limit, used only with chain of thought, which the constitution "
      "default leaves off")),
    ("ppo: {lora_r: 8}", "ppo: lora_r: used only with lora: true (--lora)"),
    ("ppo: {kl_target: null, kl_horizon: 500}",
     "ppo: kl_horizon: the adaptive beta's horizon, not used with a fixed beta (kl_target: null, --fixed-kl)"),
])
def test_a_setting_that_would_do_nothing_stops_the_dry_run(hh_case, monkeypatch, section, error):
    line = _with_section(hh_case, section)  # at the line of the section that sets it
    assert f"error: recipe.yaml:{line}: {error}" in _dry_run_refused(hh_case, monkeypatch)


@pytest.mark.parametrize("section, settings", [
    # a flagged reply's retry samples, with top_p and its own seed
    ("critique: {temperature: 0, top_p: 0.5, seed: 3}", {"temperature": 0, "top_p": 0.5, "seed": 3}),
    ("label: {chain_of_thought: true, max_new_tokens: 64, principles_per_comparison: all}",
     {"chain_of_thought": True, "max_new_tokens": 64, "principles_per_comparison": "all"}),
    ("label: {principles_per_comparison: '4'}", {"principles_per_comparison": 4}),
    ("sample: {n: 3, temperature: 1.5, top_p: 1}", {"n": 3, "temperature": 1.5, "top_p": 1}),
])
def test_settings_that_take_effect_are_taken(hh_case, section, settings):
    _with_section(hh_case, section)
    step = next(s for s in plan(load_recipe(hh_case / "recipe.yaml")) if s.stage == section.partition(":")[0])
    assert {name: getattr(step.config, name) for name in settings} == settings


def test_a_bad_setting_given_with_set_is_named_as_the_override(hh_case, monkeypatch):
    output = _dry_run_refused(hh_case, monkeypatch, "--set", "critique.rounds=0")
    assert "error: --set: critique.rounds: expected a finite number >= 1, got 0" in output
    output = _dry_run_refused(hh_case, monkeypatch, "--set", "label.principles_per_comparison=0")
    assert "error: --set: label.principles_per_comparison: expected a whole number >= 1 or all" in output
