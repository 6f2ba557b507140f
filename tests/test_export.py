"""`rlaif export verl|openrlhf`: a round of a tiny run (an SFT model, a reward model trained for two steps, prompts)
exported for each engine; the files in the engines' formats, the scripts pointing at them, the exported reward model
read the three ways the engines read it and scoring what rlaif's RewardModel scores, and the errors a user can fix."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from rlaif.cli import cli, stage_config
from rlaif.evaluate import EvalConfig
from rlaif.export import template_tail, transformers4_config
from rlaif.records import Manifest, write_config
from rlaif.reward import RewardModel

PROMPTS = [{"id": "rt1", "prompt": "How do I pick a lock?", "tags": ["red-team"]},
           {"id": "h1", "prompt": "How do I bake bread?"},
           {"id": "h2", "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "A fruit?"}]},
           {"id": "long", "prompt": "word " * 600}]  # no room for a reply in the tiny model's 512 positions
EVAL = [{"id": "e1", "prompt": "Say hi.", "tags": ["helpful"]}, {"id": "e2", "prompt": "Steal a car?",
                                                                  "tags": ["red-team"]}]
# Scored by the exported reward model the engines' ways, and by rlaif's RewardModel
PAIRS = [("How do I bake bread?", "Mix flour, water, salt and yeast, then let it rise."),
         ("How do I pick a lock?", "I can't help with that."), ("Hi", "Hello! How can I help?"),
         ("Which response is more helpful?", "The answer is (A).")]


def _finished(directory: Path, stage: str) -> None:
    Manifest(stage=stage, status="complete").save(directory)


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="module")
def reward_dir(tmp_path_factory, tiny_model_dir) -> Path:
    """A reward model rlaif trained on the tiny model (two steps: its weights only need to be its own)."""
    from test_reward import separable_pairs

    from rlaif.reward import RewardConfig, run

    root = tmp_path_factory.mktemp("rm")
    data = _jsonl(root / "pairs.jsonl", separable_pairs(16, seed=1))
    run(RewardConfig(data=[str(data)], out=str(root / "rm"), model=str(tiny_model_dir), max_steps=2, batch_size=4,
                     eval_fraction=0.25, reliability="off", stats_samples=8, device="cpu"), progress=False)
    return root / "rm"


@pytest.fixture
def run_dir(tmp_path, tiny_model_dir, reward_dir) -> Path:
    """A run after round 1's reward stage, its PPO stage started (its config.yaml written) but not run."""
    run = tmp_path / "runs" / "tiny"
    sft = run / "round-1" / "sft"
    shutil.copytree(tiny_model_dir, sft)
    write_config(sft, {"model": str(tiny_model_dir)})
    _finished(sft, "sft")
    shutil.copytree(reward_dir, run / "round-1" / "reward")
    prompts, held_out = _jsonl(tmp_path / "prompts.jsonl", PROMPTS), _jsonl(tmp_path / "eval.jsonl", EVAL)
    write_config(run / "round-1" / "sample", {"prompts": str(prompts)})
    write_config(run / "round-1" / "ppo", {"prompts": str(prompts), "eval_prompts": str(held_out), "policy": str(sft),
                                           "kl_estimator": "k3", "kl_coef": 0.1, "steps": 20, "batch_size": 2,
                                           "max_new_tokens": 48, "eval_every": 5})
    return run


def export(*args: str):
    return CliRunner().invoke(cli, ["export", *map(str, args)])


def _overrides(script: str) -> list[str]:
    """The engine's arguments in a launch script: the lines of its args=( ... ) that are not comments."""
    body = script.split("args=(\n", 1)[1].split("\n)\n", 1)[0]
    return [line.strip() for line in body.splitlines() if not line.strip().startswith("#")]


# --------------------------------------------------------------------------------------------------------------------
# verl


def test_verl_export_writes_the_documented_parquet_columns_and_a_script_on_the_exported_files(run_dir):
    import pyarrow.parquet as pq
    from datasets import load_dataset

    result = export("verl", run_dir)
    assert result.exit_code == 0, result.output
    out = run_dir / "export-verl-round-1"
    assert "read 4 prompts, used 3, left out 1 (too_long 1)" in result.output
    assert "read 2 eval prompts, used 2" in result.output

    train = pq.read_table(out / "train.parquet")
    assert train.column_names == ["data_source", "prompt", "ability", "reward_model", "extra_info"]
    rows = train.to_pylist()
    assert [r["extra_info"] for r in rows] == [{"split": "train", "index": i, "id": id_}
                                               for i, id_ in enumerate(["rt1", "h1", "h2"])]
    assert rows[0]["prompt"] == [{"role": "user", "content": "How do I pick a lock?"}]
    assert rows[2]["prompt"] == PROMPTS[2]["prompt"]  # a chat list, the system turn kept
    assert [r["data_source"] for r in rows] == ["rlaif/red-team", "rlaif/helpful", "rlaif/helpful"]
    assert all(r["reward_model"] == {"style": "model", "ground_truth": ""} and r["ability"] == "alignment"
               for r in rows)
    # verl's RLHFDataset reads the files with datasets' parquet loader
    val = load_dataset("parquet", data_files=str(out / "val.parquet"))["train"]
    assert val.num_rows == 2 and val[1]["prompt"] == [{"role": "user", "content": "Steal a car?"}]
    assert val[1]["data_source"] == "rlaif/red-team" and val[0]["extra_info"]["split"] == "val"

    script = (out / "run_verl.sh").read_text()
    subprocess.run(["bash", "-n", str(out / "run_verl.sh")], check=True)
    assert os.access(out / "run_verl.sh", os.X_OK)
    args = _overrides(script)
    for path in ("train.parquet", "val.parquet", "reward-model", "start-policy"):
        assert f'"$HERE/{path}"' in script and (out / path).exists(), path
    assert 'actor_rollout_ref.model.path="$HERE/start-policy"' in args
    assert {"reward_model.enable=True", 'reward_model.model.path="$HERE/reward-model"',
            'reward_model.model.input_tokenizer="$HERE/start-policy"', "algorithm.kl_penalty=low_var_kl",
            "data.max_response_length=48", "trainer.val_before_train=True trainer.test_freq=5"} <= set(args)
    # verl does not normalise a model's reward: beta scaled by the reward's std keeps rlaif's objective's optimum
    std = json.loads((run_dir / "round-1" / "reward" / "reward_stats.json").read_text())["std"]
    beta = float(re.search(r"algorithm\.kl_ctrl\.kl_coef=(\S+)", script).group(1))
    assert beta == pytest.approx(0.1 * std, rel=1e-5)
    assert "algorithm.use_kl_in_reward=True" in script and "kl_target 6" in script  # what is not carried over
    longest = int(re.search(r"data\.max_prompt_length=(\d+)", script).group(1))
    tokenizer = RewardModel.load(out / "reward-model", device="cpu").tokenizer
    assert longest == max(len(tokenizer.apply_chat_template(p["prompt"], add_generation_prompt=True)["input_ids"])
                          for p in [*rows, *val])

    # the way back: eval.yaml for `rlaif eval RUN --config`, one policy per round
    config = stage_config(EvalConfig, str(out / "eval.yaml"), {"run": str(run_dir)})
    assert (config.policies, config.out) == ([str(out / "trained-policy")], str(run_dir / "eval-verl-round-1"))
    readme = (out / "README.txt").read_text()
    assert f"--local_dir {out}/checkpoints/global_step_20/actor" in readme
    assert f"rlaif eval {run_dir} --config {out}/eval.yaml" in readme
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["counts"]["prompts_left_out_too_long"] == 1


def test_the_exported_models_are_linked_and_readable_by_transformers_4(run_dir):
    result = export("verl", run_dir, "--out", run_dir / "handoff")
    assert result.exit_code == 0, result.output
    out = run_dir / "handoff"
    for exported, source in (("reward-model", "reward"), ("start-policy", "sft")):
        weights = out / exported / "model.safetensors"
        assert weights.stat().st_ino == (run_dir / "round-1" / source / "model.safetensors").stat().st_ino
        config = json.loads((out / exported / "config.json").read_text())
        assert config["rope_theta"] == config["rope_parameters"]["rope_theta"]
        assert json.loads((out / exported / "tokenizer_config.json").read_text())["tokenizer_class"] == \
            "PreTrainedTokenizerFast"
    assert not (out / "start-policy" / "manifest.json").exists()  # rlaif's bookkeeping stays behind
    # an export again replaces the models and keeps what the engine wrote
    (out / "checkpoints").mkdir()
    assert export("verl", run_dir, "--out", out).exit_code == 0 and (out / "checkpoints").is_dir()


def test_transformers4_config_copies_rope_settings_where_transformers_4_reads_them():
    llama3 = {"rope_type": "llama3", "factor": 8.0, "rope_theta": 500000.0}
    assert transformers4_config({"rope_parameters": llama3}) == {
        "rope_parameters": llama3, "rope_theta": 500000.0, "rope_scaling": {"rope_type": "llama3", "factor": 8.0}}
    assert transformers4_config({"rope_parameters": {"rope_type": "default", "rope_theta": 1e6}})["rope_theta"] == 1e6
    written_by_4 = {"rope_theta": 1e6, "rope_scaling": None}
    assert transformers4_config(written_by_4) is written_by_4


# --------------------------------------------------------------------------------------------------------------------
# OpenRLHF


def test_openrlhf_export_writes_chat_lists_and_the_current_dotted_flags(run_dir):
    from datasets import load_dataset

    result = export("openrlhf", run_dir)
    assert result.exit_code == 0, result.output
    out = run_dir / "export-openrlhf-round-1"
    lines = [json.loads(line) for line in (out / "prompts.jsonl").read_text().splitlines()]
    assert lines[0] == {"input": [{"role": "user", "content": "How do I pick a lock?"}], "id": "rt1",
                        "tags": ["red-team"]}
    assert [row["id"] for row in lines] == ["rt1", "h1", "h2"] and lines[2]["input"] == PROMPTS[2]["prompt"]
    assert load_dataset("json", data_files=str(out / "prompts.jsonl"))["train"]["input"][1] == \
        [{"role": "user", "content": "How do I bake bread?"}]

    script = (out / "run_openrlhf.sh").read_text()
    subprocess.run(["bash", "-n", str(out / "run_openrlhf.sh")], check=True)
    args = " ".join(_overrides(script))
    for flag in ('--actor.model_name_or_path "$HERE/start-policy"', '--reward.model_name_or_path "$HERE/reward-model"',
                 '--data.prompt_dataset "$HERE/prompts.jsonl"', "--data.input_key input", "--data.apply_chat_template",
                 "--reward.normalize_enable", "--algo.kl.init_coef 0.1", "--algo.kl.estimator k3",
                 "--rollout.max_new_tokens 48", '--ckpt.output_dir "$HERE/trained-policy"'):
        assert flag in args, flag
    assert "#   --actor.model_name_or_path -> --pretrain" in script  # the names before 0.10.2
    assert "#   --data.prompt_dataset -> --prompt_data" in script
    # --reward.normalize_enable reads mean and std from config.json (openrlhf/models/model.py)
    stats = json.loads((run_dir / "round-1" / "reward" / "reward_stats.json").read_text())
    config = json.loads((out / "reward-model" / "config.json").read_text())
    assert (config["mean"], config["std"], config["value_head_prefix"]) == (stats["mean"], stats["std"], "score")
    # ChatML closes a reply with '<|im_end|>\n', one token past the EOS OpenRLHF reads the reward at: said
    assert "'<|im_end|>\\n'" in result.output and "Note: OpenRLHF reads the reward" in (out / "README.txt").read_text()


def test_template_tail_is_what_the_chat_template_writes_after_a_reply(tiny):
    assert template_tail(tiny[1]) == "<|im_end|>\n"


# --------------------------------------------------------------------------------------------------------------------
# The exported reward model, read the engines' ways, scores what rlaif's RewardModel scores


def openrlhf_reward_model(path: Path):
    """The reward model as OpenRLHF builds it to load a directory (openrlhf/models/model.py,
    get_llm_for_sequence_regression and _get_reward_model at 0.11.0), without DeepSpeed, LoRA or packing: AutoModel's
    body, a `score` head without bias, mean and std from config.json, the reward at the last attended token."""
    from torch import nn
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(path)
    config.normalize_reward = True
    prefix = getattr(config, "value_head_prefix", "score")
    body = AutoModel._model_mapping[type(config)]

    class RewardModel(body.__base__):
        def __init__(self, config):
            super().__init__(config)
            setattr(self, self.base_model_prefix, body(config))
            setattr(self, prefix, nn.Linear(config.hidden_size, 1, bias=False))
            self.register_buffer("mean", torch.zeros(1), persistent=False)
            self.register_buffer("std", torch.ones(1), persistent=False)
            if hasattr(config, "mean"):
                self.mean[0], self.std[0] = config.mean, config.std
            self.post_init()

        def forward(self, input_ids, attention_mask):
            eos = attention_mask.size(1) - 1 - attention_mask.long().fliplr().argmax(dim=1, keepdim=True)
            position_ids = (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 1)
            hidden = getattr(self, self.base_model_prefix)(input_ids, attention_mask=attention_mask,
                                                           position_ids=position_ids)["last_hidden_state"]
            reward = getattr(self, prefix)(hidden).squeeze(-1).gather(1, eos).squeeze(1)
            return (reward - self.mean) / self.std

    model = RewardModel.from_pretrained(path, config=config).eval()
    # Under DeepSpeed ZeRO-3 transformers builds the model off the meta device and the values __init__ wrote stay;
    # without it (here) it leaves non-persistent buffers uninitialised after loading, so they are written again.
    model.mean[0], model.std[0] = config.mean, config.std
    return model


def _right_padded(ids: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, ids))
    return (torch.tensor([row + [pad] * (width - len(row)) for row in ids]),
            torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in ids]))


@torch.inference_mode()
def test_the_exported_reward_model_scores_as_rlaif_in_each_engines_loader(run_dir):
    """The weights are rlaif's own file, so the scores agree up to float32 rounding: each loader here batches and
    pads differently from RewardModel.score (which sorts by length), and a matrix product over another shape may
    round its last bits differently. 1e-5 on rewards of order 1 allows that and nothing else."""
    from transformers import (
        AutoConfig,
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
        AutoTokenizer,
    )

    assert export("openrlhf", run_dir).exit_code == 0
    exported = run_dir / "export-openrlhf-round-1" / "reward-model"
    rlaif = RewardModel.load(run_dir / "round-1" / "reward", device="cpu", dtype="float32")
    prompts, replies = [p for p, _ in PAIRS], [r for _, r in PAIRS]
    expected = rlaif.score(prompts, replies)
    tokenizer = AutoTokenizer.from_pretrained(exported)
    chats = [[{"role": "user", "content": p}, {"role": "assistant", "content": r}] for p, r in PAIRS]
    # verl renders each chat to text with the reward model's template and tokenizes it (_switch_chat_template)
    ids = [tokenizer(tokenizer.apply_chat_template(chat, tokenize=False), add_special_tokens=False)["input_ids"]
           for chat in chats]
    assert ids == [rlaif.tokenize(p, r) for p, r in PAIRS]

    # transformers' sequence classifier (OpenRLHF's README; verl's reward loop serves it with vLLM), one at a time
    classifier = AutoModelForSequenceClassification.from_pretrained(exported).eval()
    alone = torch.tensor([classifier(input_ids=torch.tensor([row])).logits[0, 0].item() for row in ids])
    torch.testing.assert_close(alone, expected, atol=1e-5, rtol=0)

    # verl's FSDP reward worker: a token classifier (its score bias, absent from the file, initialised to 0), read
    # at the last attended token of right-padded rows
    config = AutoConfig.from_pretrained(exported)
    config.num_labels, config.classifier_dropout = 1, 0.0  # as verl's RewardModelWorker._build_model sets them
    tokens = AutoModelForTokenClassification.from_pretrained(exported, config=config).eval()
    assert tokens.score.bias.abs().max().item() == 0
    input_ids, mask = _right_padded(ids, tokenizer.pad_token_id)
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = tokens(input_ids=input_ids, attention_mask=mask, position_ids=position_ids).logits.squeeze(-1)
    last = torch.argmax(position_ids * mask, dim=-1)
    torch.testing.assert_close(logits[torch.arange(len(ids)), last], expected, atol=1e-5, rtol=0)

    # OpenRLHF's reward model with --reward.normalize_enable: (r - mean) / std from config.json, as rlaif normalises
    openrlhf = openrlhf_reward_model(exported)
    torch.testing.assert_close(openrlhf(input_ids, mask), rlaif.score(prompts, replies, normalize=True),
                               atol=1e-5, rtol=0)


# --------------------------------------------------------------------------------------------------------------------
# Later rounds, and what a user can fix


def test_a_later_round_starts_from_the_policy_before_it(run_dir, tiny_model_dir):
    round2 = run_dir / "round-2"
    shutil.copytree(run_dir / "round-1" / "reward", round2 / "reward")
    write_config(round2 / "sample", {"prompts": str(run_dir.parent.parent / "prompts.jsonl")})
    result = export("verl", run_dir)  # the last round with a reward model
    assert result.exit_code == 1 and "round-1: no finished policy" in result.output and "--policy" in result.output
    ppo = run_dir / "round-1" / "ppo"
    shutil.copytree(tiny_model_dir, ppo, dirs_exist_ok=True)
    _finished(ppo, "ppo")

    result = export("openrlhf", round2)  # a round directory names its round
    assert result.exit_code == 0, result.output
    out = run_dir / "export-openrlhf-round-2"
    assert f"start policy: {ppo}" in " ".join(result.output.split())
    assert f"PPO settings from {ppo / 'config.yaml'}" in " ".join(result.output.split())  # round 1's: the newest
    policies = json.loads("".join(line for line in (out / "eval.yaml").read_text().splitlines()
                                  if not line.startswith("#")))["policies"]
    assert policies == [str(ppo), str(out / "trained-policy")]
    result = export("verl", run_dir, "--round", "1")
    assert result.exit_code == 0 and (run_dir / "export-verl-round-1" / "train.parquet").is_file()


@pytest.mark.parametrize("args, message", [
    (["--round", "3"], r"round: \S+ has no round 3 \(its rounds: 1\)"),
    (["--prompts", "missing.jsonl"], r"missing\.jsonl: file not found"),
    (["--policy", "nowhere"], r"policy: \S+nowhere is not a model directory"),
])
def test_errors_name_what_to_fix_without_a_traceback(run_dir, args, message):
    result = export("verl", run_dir, *args)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert re.search(message, " ".join(result.output.split())) and "Traceback" not in result.output


def test_a_run_without_a_reward_model_is_refused(run_dir, tmp_path):
    shutil.rmtree(run_dir / "round-1" / "reward")
    for args, message in ((["verl", run_dir], "no round has a finished reward model"),
                          (["openrlhf", run_dir, "--round", "1"],
                           "round-1/reward is not a finished reward model (no round has one yet)"),
                          (["verl", tmp_path / "nowhere"], "no such run directory")):
        result = export(*args)
        assert result.exit_code == 1 and message in " ".join(result.output.split()), result.output
        assert "Traceback" not in result.output


def test_help_reads_like_a_guide():
    result = CliRunner().invoke(cli, ["export", "--help"])
    assert result.exit_code == 0 and "rlaif eval runs/gpu --config runs/gpu/export-verl-round-1/eval.yaml" in \
        result.output
    for engine in ("verl", "openrlhf"):
        result = CliRunner().invoke(cli, ["export", engine, "--help"])
        assert result.exit_code == 0 and f"rlaif export {engine} runs/gpu" in result.output
        assert all(option in result.output for option in ("--round", "--out", "--prompts", "--policy"))
