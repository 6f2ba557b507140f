"""The command line's settings: flags and --config files go through the same checks as recipes (a number must be
finite, then the stage's own range checks), and the error names the flag or the file's line, before any model or
data is loaded."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from rlaif.cli import cli, stage_config
from rlaif.records import DataError


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
    from rlaif.ppo.trainer import PPOConfig
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
