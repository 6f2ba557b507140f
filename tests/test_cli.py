"""The command line's settings: flags and --config files go through the same checks as recipes (a number must be
finite, then the stage's own range checks), and the error names the flag or the file's line, before any model or
data is loaded."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from rlaif.cli import cli, stage_config
from rlaif.records import ConfigError, DataError


@pytest.mark.parametrize("args, error", [
    (["sft", "--data", "x.jsonl", "--learning-rate", "nan"], "--learning-rate: expected a finite number, got nan"),
    (["sft", "--data", "x.jsonl", "--learning-rate", "-1"], "--learning-rate: expected a finite number > 0, got -1"),
    (["reward", "--data", "x.jsonl", "--eval-fraction", "inf"], "--eval-fraction: expected a finite number, got inf"),
    (["ppo", "--prompts", "p.txt", "--kl-coef", "nan"], "--kl-coef: expected a finite number, got nan"),
    (["dpo", "--data", "x.jsonl", "--label-smoothing", "nan"], "--label-smoothing: expected a finite number, got nan"),
    (["sample", "--prompts", "p.txt", "-t", "-inf"], "--temperature: expected a finite number, got -inf"),
    (["generate", "-p", "hi", "-t", "nan"], "--temperature: expected a finite number, got nan"),
])
def test_flags_refuse_numbers_that_are_not_numbers(tmp_path, monkeypatch, args, error):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1 and f"error: command line: {error}" in result.output, result.output
    assert "Traceback" not in result.output and not list(tmp_path.iterdir())  # refused before anything ran


def test_config_files_refuse_numbers_that_are_not_numbers_with_their_line(tmp_path):
    from rlaif.ppo.config import PPOConfig
    from rlaif.reward import RewardConfig

    config = tmp_path / "ppo.yaml"
    config.write_text("prompts: p.txt\nkl_coef: .inf\n")
    result = CliRunner().invoke(cli, ["ppo", "--config", str(config)])
    assert result.exit_code == 1 and f"error: {config}:2: kl_coef: expected a finite number, got inf" in result.output
    config.write_text("data: [x.jsonl]\nlearning_rate: 1e-5\n")  # YAML reads 1e-5 as text
    assert stage_config(RewardConfig, str(config), {}).learning_rate == 1e-5
    config.write_text("data: x.jsonl\n")
    with pytest.raises(DataError, match=r"ppo.yaml:1: data: expected a list of text, not 'x.jsonl'"):
        stage_config(RewardConfig, str(config), {})
    config.write_text("data: [x.jsonl]\n\nmargin: -1\n")  # the stage's own range check, at the file's line
    with pytest.raises(DataError, match=r"ppo.yaml:3: margin: expected a finite number >= 0, got -1"):
        stage_config(RewardConfig, str(config), {})
    config.write_text("steps: .nan\n")
    with pytest.raises(DataError, match=r"ppo.yaml:1: steps: expected a whole number, not nan"):
        stage_config(PPOConfig, str(config), {})


@pytest.mark.parametrize("args, error", [
    (["critique", "--prompts", "p.txt", "--rounds", "0"], "--rounds: expected a finite number >= 1, got 0"),
    (["critique", "--prompts", "p.txt", "--top-p", "0"], "--top-p: expected a share in (0, 1], got 0"),
    (["critique", "--prompts", "p.txt", "-t", "-1"], "--temperature: expected a finite number >= 0, got -1"),
    (["critique", "--prompts", "p.txt", "--chunk-size", "0"], "--chunk-size: expected a finite number >= 1, got 0"),
    (["sample", "--prompts", "p.txt", "--n", "0"], "--n: expected a finite number >= 1, got 0"),
    (["sample", "--prompts", "p.txt", "--top-p", "1.5"], "--top-p: expected a share in (0, 1], got 1.5"),
    (["sample", "--prompts", "p.txt", "--max-new-tokens", "0"],
     "--max-new-tokens: expected a finite number >= 1, got 0"),
    (["sample", "--prompts", "p.txt", "--engine", "vllm"], "--engine: vllm is not installed here"),
    (["label", "--candidates", "c.jsonl", "-k", "0"], "--principles: expected a whole number >= 1 or all, not 0"),
    (["label", "--candidates", "c.jsonl", "-k", "some"],
     "--principles: expected a whole number >= 1 or all, not 'some'"),
    (["label", "--candidates", "c.jsonl", "--min-margin", "0.7"],
     "--min-margin: expected a finite number between 0 and 0.5, got 0.7"),
    (["score", "--candidates", "c.jsonl", "--batch-size", "0"], "--batch-size: expected a finite number >= 1, got 0"),
    (["grpo", "--prompts", "p.txt", "--group-size", "1"],
     "--group-size: advantages are relative to the group; use at least 2, not 1"),
    (["eval", "runs/x", "--temperature", "0"], ("--temperature: the KL to the base model is measured on sampled "
                                                "replies: expected a temperature > 0, got 0")),
    (["eval", "runs/x", "--max-new-tokens", "0"], "--max-new-tokens: expected a finite number >= 1, got 0"),
    (["eval", "labeler", "--pairs", "x.jsonl", "--limit", "0"], "--limit: expected a finite number >= 1, got 0"),
    (["eval", "labeler", "--pairs", "x.jsonl", "--injection-pairs", "-1"],
     "--injection-pairs: expected a finite number >= 0, got -1"),
    (["ppo", "--prompts", "p.txt", "--save-steps", "0"], "--save-steps: expected a finite number >= 1, got 0"),
    (["ppo", "--prompts", "p.txt", "--steps", "0"], "--steps: expected a finite number >= 1, got 0"),
    (["ppo", "--prompts", "p.txt", "--kl-coef", "-1"], "--kl-coef: expected a finite number >= 0, got -1"),
    (["ppo", "--prompts", "p.txt", "--learning-rate", "-1e-5"],
     "--learning-rate: expected a finite number >= 0, got -1e-05"),
    (["ppo", "--prompts", "p.txt", "-t", "0"], "--temperature: expected a finite number > 0, got 0"),
    (["ppo", "--prompts", "p.txt", "--minibatches", "3"], "--minibatches: 3 does not divide batch_size 8"),
    (["ppo", "--prompts", "p.txt", "--sample-every", "-1"], "--sample-every: expected a finite number >= 0, got -1"),
])
def test_flags_out_of_range_are_refused_before_the_stage_runs(tmp_path, monkeypatch, args, error):
    import sys

    monkeypatch.setitem(sys.modules, "vllm", None)  # vLLM not importable, on any machine
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1 and f"error: command line: {error}" in result.output, result.output
    assert "Traceback" not in result.output and not list(tmp_path.iterdir())


@pytest.mark.parametrize("args, error", [
    (["critique", "--prompts", "p.txt", "-t", "0", "--no-retry", "--seed", "4"],
     "seed: no effect with temperature 0 (greedy) and no retries"),
    (["sample", "--prompts", "p.txt", "-t", "0"],
     "n: temperature 0 (greedy) gives the 2 responses to a prompt the same text"),
    (["sample", "--prompts", "p.txt", "-t", "0", "--n", "1", "--top-p", "0.5"],
     "top_p: no effect with temperature 0 (greedy)"),
    (["label", "--candidates", "c.jsonl", "--no-cot", "--max-new-tokens", "64"],
     "max_new_tokens: the rationale's length limit, used only with chain of thought"),
    (["ppo", "--prompts", "p.txt", "--eval-every", "5"],
     "eval_every: used only with eval prompts (eval_prompts, --eval-prompts)"),
    (["ppo", "--prompts", "p.txt", "-c", "harmless"],
     "constitution: the rubric of reward_score (--reward-score), which is not set"),
])
def test_flags_that_would_do_nothing_are_refused(tmp_path, monkeypatch, args, error):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1 and f"error: {error}" in result.output, result.output
    assert not list(tmp_path.iterdir())


def test_stage_config_files_are_range_checked_at_their_line(tmp_path, monkeypatch):
    import sys

    from rlaif.critique import CritiqueConfig
    from rlaif.evaluate import LabelerEvalConfig
    from rlaif.label import LabelConfig
    from rlaif.sample import SampleConfig

    monkeypatch.setitem(sys.modules, "vllm", None)
    config = tmp_path / "stage.yaml"
    config.write_text("prompts: p.txt\nrounds: 0\n")
    with pytest.raises(DataError, match=r"stage.yaml:2: rounds: expected a finite number >= 1, got 0"):
        stage_config(CritiqueConfig, str(config), {})
    config.write_text("prompts: p.txt\n\nengine: vllm\n")
    with pytest.raises(DataError, match=r"stage.yaml:3: engine: vllm is not installed here"):
        stage_config(SampleConfig, str(config), {})
    config.write_text("candidates: c.jsonl\nprinciples_per_comparison: 0\n")
    with pytest.raises(DataError, match=r"stage.yaml:2: principles_per_comparison: expected a whole number >= 1"):
        stage_config(LabelConfig, str(config), {})
    # a flag overrides the file, and `-k 3` is the number 3
    assert stage_config(LabelConfig, str(config), {"principles_per_comparison": "3"}).principles_per_comparison == 3
    config.write_text("pairs: x.jsonl\nmax_new_tokens: 64\n")
    with pytest.raises(ConfigError, match="max_new_tokens: the rationale's length limit, used only with chain of"):
        stage_config(LabelerEvalConfig, str(config), {"chain_of_thought": False})


def test_an_ensemble_larger_than_the_constitution_is_reported_as_the_ensemble_measured(tmp_path, roomy_model_dir):
    import json

    from rlaif.constitution import load_constitution

    pairs = tmp_path / "pairs.jsonl"
    rows = [{"id": f"p{i}", "prompt": [{"role": "user", "content": f"Question {i}?"}], "chosen": "A careful answer.",
             "rejected": "No."} for i in range(2)]
    pairs.write_text("".join(json.dumps(row) + "\n" for row in rows))
    principles = len(load_constitution("judge").principles)
    result = CliRunner().invoke(cli, ["eval", "labeler", "--pairs", str(pairs), "-c", "judge", "--labeler",
                                      str(roomy_model_dir), "--ensemble", str(principles + 2), "--no-cot",
                                      "--injection-pairs", "0", "--out", str(tmp_path), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "labeler_report.json").read_text())
    assert set(report["modes"]) == {"single order", "both orders", f"ensemble of {principles}",
                                    "likelihood contrast", "score difference"}
    assert sum(m["pairs"] for m in report["per_principle"].values()) == 2 * principles


def test_a_set_value_that_is_not_yaml_is_a_usage_error_not_a_traceback():
    from pathlib import Path

    recipe = Path(__file__).resolve().parent.parent / "examples" / "quickstart" / "recipe.yaml"
    result = CliRunner().invoke(cli, ["run", str(recipe), "--dry-run", "--set", "ppo.steps=[1"])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)  # click's usage error, no traceback
    assert "Invalid value for --set: 'ppo.steps=[1': the value is not valid YAML" in result.output


# --------------------------------------------------------------------------------------------------------------------
# Text from users and models prints as written: no emoji codes, no markup


def test_model_replies_and_file_names_print_verbatim(tmp_path, monkeypatch):
    from rlaif import generate, models

    reply = ":smile: [bold]x[/bold] [/] :thumbs_up:"  # "[/]" alone would be a markup error
    monkeypatch.setattr(models, "load_model", lambda spec, device=None: (object(), object()))
    monkeypatch.setattr(generate, "generate", lambda lm, tokenizer, conversations, config, progress: [
        generate.Generation(text=reply, token_ids=[1], finish_reason="stop") for _ in conversations])
    result = CliRunner().invoke(cli, ["generate", "-p", "say :smile: [red]hi[/red]", "-p", "two"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == ["> say :smile: [red]hi[/red]", reply, "> two", reply]

    monkeypatch.chdir(tmp_path)
    for name in ("x:thumbs_up:.jsonl", "[bold]x[/bold].jsonl"):
        result = CliRunner().invoke(cli, ["sft", "--data", name])
        assert result.output == f"error: {name}: file not found\n"
    (tmp_path / "r.csv").write_text("prompt,response,rank\nq,a,1\nq,b,two:smile:\n")
    result = CliRunner().invoke(cli, ["rankings", "import", "r.csv", "--out", "o.jsonl"])
    assert result.output == "error: r.csv:3: rank: expected a number, not 'two:smile:'\n"


# ESC (an OSC that sets the window title, CSIs that clear the screen and turn text red), BEL, CR, DEL, and C1 controls:
# U+009B (a one-character CSI) and U+0085 (NEL).
HOSTILE = "ok\x1b]0;PWNED\x07\x1b[2J\x1b[31m red\r\x7f \x9b2J \x85end"
RAW_CONTROLS = ("\x1b", "\x07", "\x9b", "\x85", "\x7f", "\r")


def test_terminal_safe_shows_control_characters_as_escapes():
    from rlaif.cli import shown, terminal_safe

    assert terminal_safe(HOSTILE) == "ok\\x1b]0;PWNED\\x07\\x1b[2J\\x1b[31m red\\x0d\\x7f \\x9b2J \\x85end"
    assert terminal_safe("lines\n\tand tabs, ünïcode — kept\r\n") == "lines\n\tand tabs, ünïcode — kept\n"
    assert shown("\x1b[bold]x") == "\\x1b\\[bold]x"  # and rich markup escaped after
    assert terminal_safe("if admin\u202e\u2066 then") == "if admin\\u202e\\u2066 then"  # bidi overrides shown


def test_model_text_cannot_drive_the_terminal(tmp_path, monkeypatch, capsys):
    """A reply, a critique trace or a file name holding escape sequences prints them visibly, not raw."""
    from rlaif import generate, models
    from rlaif.cli.data import _show_trace

    monkeypatch.setattr(models, "load_model", lambda spec, device=None: (object(), object()))
    monkeypatch.setattr(generate, "generate", lambda lm, tokenizer, conversations, config, progress: [
        generate.Generation(text=HOSTILE, token_ids=[1], finish_reason="stop") for _ in conversations])
    result = CliRunner().invoke(cli, ["generate", "-p", f"say {HOSTILE}", "-p", "two"])
    assert result.exit_code == 0, result.output
    assert not any(c in result.output for c in RAW_CONTROLS) and result.output.count("\\x1b]0;PWNED") == 3

    _show_trace({"id": "x\x1b[2J", "prompt": [{"role": "user", "content": "q\x1b]0;PWNED\x07"}],
                 "initial": HOSTILE, "flags": ["retried"],
                 "rounds": [{"principle": "p\x9b1m", "critique": "c\x1b[31m", "revision": "r\x85"}]})
    printed = capsys.readouterr().out
    assert not any(c in printed for c in RAW_CONTROLS) and "\\x1b]0;PWNED\\x07" in printed
    assert all(shown in printed for shown in ("x\\x1b[2J", "p\\x9b1m", "c\\x1b[31m", "r\\x85"))

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["sft", "--data", "x\x1b]0;PWNED\x07.jsonl"])
    assert result.output == "error: x\\x1b]0;PWNED\\x07.jsonl: file not found\n"


@pytest.mark.parametrize("tail", ["one", "high", "1,5"])
def test_a_weight_that_is_not_a_number_is_named_as_a_weight(tmp_path, monkeypatch, tail):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "weight.jsonl").write_text('{"prompt": "q", "chosen": "a", "rejected": "b"}\n')
    result = CliRunner().invoke(cli, ["reward", "--data", f"weight.jsonl:{tail}"])
    assert result.output == f"error: command line: --data: weight.jsonl: weight: expected a number, not '{tail}'\n"
    result = CliRunner().invoke(cli, ["reward", "--data", "missing.jsonl:one"])  # no such file: that is the error
    assert result.exit_code == 1 and "missing.jsonl:one" in result.output and "weight" not in result.output


def test_config_files_name_the_line_of_weights_duplicates_and_settings_that_cannot_work(tmp_path):
    from rlaif.reward import RewardConfig
    from rlaif.sample import SampleConfig

    config = tmp_path / "c.yaml"
    config.write_text("data:\n  - a.jsonl\n  - x.jsonl:nan\n")
    with pytest.raises(DataError, match=r"c.yaml:3: data\[1\]: x.jsonl: weight: expected a finite number >= 0, got nan"):
        stage_config(RewardConfig, str(config), {})
    config.write_text("data: [a.jsonl]\nmargin: 1\nmargin: 2\n")
    with pytest.raises(DataError, match=r"c.yaml:3: margin: duplicate key 'margin' \(first on line 2\); YAML would "
                                        "keep only the last"):
        stage_config(RewardConfig, str(config), {})
    for steps in (0, -4):
        config.write_text(f"data: [a.jsonl]\nmax_steps: {steps}\n")
        with pytest.raises(DataError, match=rf"c.yaml:2: max_steps: expected a number of steps >= 1, or -1 to train "
                                            rf"for the epochs; got {steps}"):
            stage_config(RewardConfig, str(config), {})
    config.write_text("data: [a.jsonl]\nmax_steps: -1\n")
    assert stage_config(RewardConfig, str(config), {}).max_steps == -1
    config.write_text("prompts: p.txt\ntemperature: 0\n\nn: 3\n")
    with pytest.raises(ConfigError, match=r"c.yaml:4: n: temperature 0 \(greedy\) gives the 3 responses"):
        stage_config(SampleConfig, str(config), {})


@pytest.mark.parametrize("args, error", [
    (["-p", "hi", "--top-p", "0.5"], "error: top_p: no effect with temperature 0 (greedy)"),
    (["-p", "hi", "--seed", "3"], "error: seed: no effect with temperature 0 (greedy)"),
    (["-p", "hi", "-p", " "], "Invalid value for '-p' / '--prompt': a prompt is empty"),
])
def test_generate_refuses_what_would_do_nothing(args, error):
    result = CliRunner().invoke(cli, ["generate", *args])
    assert result.exit_code in (1, 2) and error in result.output, result.output


def test_a_command_that_succeeds_leaves_its_process_group_and_a_failing_one_leaves_at_once(tmp_path, monkeypatch,
                                                                                          capsys):
    """Under accelerate launch a process that exits with its gloo process group still up can abort in the
    interpreter's shutdown (SIGABRT after the work succeeded): each command ends the group once it has succeeded. One
    that fails (a user error, a bug) leaves at once with its exit status (os._exit, no shutdown), without a
    collective its peers may never join."""
    import os
    import sys

    import torch.distributed as dist

    from rlaif.cli import main

    def leave(code):
        raise RuntimeError(f"os._exit({code})")

    def run(*args):
        monkeypatch.setattr(sys, "argv", ["rlaif", *args])
        with pytest.raises((RuntimeError, SystemExit)) as left:
            main()
        return left.value

    monkeypatch.setattr(os, "_exit", leave)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert str(run("sft", "--data", str(tmp_path / "missing.jsonl"))) == "os._exit(1)"
        assert "missing.jsonl" in capsys.readouterr().err and dist.is_initialized()
        with monkeypatch.context() as bug:
            bug.setattr("rlaif.constitution.load_constitution", lambda *a, **k: 1 / 0)
            assert str(run("constitution", "show", "default")) == "os._exit(1)"
        assert "ZeroDivisionError" in capsys.readouterr().err and dist.is_initialized()
        left = run("constitution", "show", "default")
        assert isinstance(left, SystemExit) and left.code == 0
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
