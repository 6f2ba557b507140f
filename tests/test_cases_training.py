"""The training cases (tests/cases/): what the TRL-trained stages (sft, reward, dpo, grpo) train on, in what precision,
and with which settings.

Each stage tokenizes its rows as its TRL trainer will, so a row the trainer would drop or cannot learn from is left
out and counted (manifest, metrics and the closing line), and a stage with nothing left stops with a DataError
before it loads a model. Weights are finite, and weight 0 leaves a row out. The weights handed to a trainer are
float32 on any device (bf16 only as autocast). A setting that would do nothing is an error.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from click.testing import CliRunner

from rlaif.cli import cli
from rlaif.dpo import DPOConfig
from rlaif.grpo import GRPOConfig
from rlaif.models import load_model, load_tokenizer
from rlaif.records import ConfigError, DataError, Tally
from rlaif.reward import RewardConfig
from rlaif.sft import SFTConfig

CASES = Path(__file__).parent / "cases"
LONG = "The assistant answers questions about cooking, travel, science and code. " * 8


def pref(i: int, prompt: str, chosen: str, rejected: str, **extra) -> dict:
    return {"id": f"p{i}", "prompt": [{"role": "user", "content": prompt}],
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}], "p_chosen": 0.9, "source": "ai", **extra}


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def chat_ids(tokenizer, messages: list[dict]) -> list[int]:
    return tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]


def chat_length(tokenizer, messages: list[dict]) -> int:
    return len(chat_ids(tokenizer, messages))


class Stop(Exception):
    """Raised by a stand-in trainer once it has seen what the stage hands it."""


def intercept(monkeypatch, config_name: str, trainer_name: str) -> dict:
    """Stand-ins for a TRL config class and trainer class. The trainer records what the stage gives it (`args`: the
    config's settings as attributes), wraps the model in its `peft_config` as TRL 1.16's trainers do on one device
    (peft.get_peft_model with its defaults), and stops when told to train, recording the model it would train as
    `trained`."""
    import trl
    from peft import get_peft_model

    seen: dict = {}

    class Trainer:
        def __init__(self, model, args, peft_config=None, **kwargs):
            seen.update(model=model, args=args, peft_config=peft_config, **kwargs)
            self.model, self.args = get_peft_model(model, peft_config) if peft_config else model, args

        def train(self, resume_from_checkpoint=None):
            seen["trained"] = self.model
            raise Stop

    monkeypatch.setattr(trl, config_name, lambda **kwargs: SimpleNamespace(**kwargs))
    monkeypatch.setattr(trl, trainer_name, Trainer)
    return seen


@pytest.fixture
def no_model(monkeypatch):
    """Fails the test if a stage loads its model."""
    import rlaif.models
    import rlaif.reward

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(rlaif.models, "load_model", refuse)
    monkeypatch.setattr(rlaif.reward, "load_backbone", refuse)


@pytest.fixture
def bf16_gpu(monkeypatch):
    """A machine that rlaif's device and precision choices take for a GPU with bf16 (nothing runs on it)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)


# --------------------------------------------------------------------------------------------------------------------
# reward-all-pairs-too-long


def long_pairs(path: Path) -> Path:
    return write(path, [pref(i, f"Question {i}: how do I bake bread?", LONG[: 200 + 60 * i], "No.") for i in range(4)])


def pair_lengths(tokenizer, path: Path) -> list[int]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [max(chat_length(tokenizer, r["prompt"] + r[side]) for side in ("chosen", "rejected")) for r in rows]


def test_reward_stops_before_the_model_when_max_length_leaves_no_pair(tmp_path, tiny_model_dir, no_model):
    from rlaif.reward import run

    data = long_pairs(tmp_path / "prefs_long.jsonl")
    shortest = min(pair_lengths(load_tokenizer(tiny_model_dir), data))
    out = tmp_path / "rm"
    with pytest.raises(DataError) as error:
        run(RewardConfig(data=[str(data)], out=str(out), model=str(tiny_model_dir), max_length=shortest - 1,
                         eval_fraction=0.0, device="cpu"), progress=False)
    assert str(error.value) == (f"{data}: all 4 training pairs are longer than max_length {shortest - 1} tokens "
                                f"(shortest pair {shortest} tokens, chat template included); raise --max-length")
    assert not out.exists()  # no model, no reward_stats.json, no stage left "running"


def test_reward_trains_on_the_pairs_that_fit_and_counts_the_others(tmp_path, tiny_model_dir):
    data = long_pairs(tmp_path / "prefs_long.jsonl")
    lengths = pair_lengths(load_tokenizer(tiny_model_dir), data)
    out = tmp_path / "rm"
    result = CliRunner().invoke(cli, ["reward", "--data", str(data), "--out", str(out), "--model", str(tiny_model_dir),
                                      "--max-length", str(max(lengths) - 1), "--max-steps", "1", "--batch-size", "2",
                                      "--eval-fraction", "0", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "read 4 training pairs, used 3, left out 1 (too_long 1)" in result.output
    counts = json.loads((out / "manifest.json").read_text())["counts"]
    assert (counts["read"], counts["used"], counts["left_out_too_long"], counts["steps"]) == (4, 3, 1, 1)
    assert json.loads((out / "metrics.json").read_text())["train"]["pairs"] == 3


@pytest.mark.slow
def test_the_case_with_the_embedded_model(tmp_path):
    data = CASES / "reward-all-pairs-too-long" / "prefs_long.jsonl"
    base = ["reward", "--data", str(data), "--max-steps", "2", "--batch-size", "2", "--lora", "--eval-fraction", "0",
            "--device", "cpu"]
    result = CliRunner().invoke(cli, base + ["--out", str(tmp_path / "rm"), "--max-length", "64"])
    assert result.exit_code == 1
    assert ("prefs_long.jsonl: all 4 training pairs are longer than max_length 64 tokens (shortest pair 89 tokens, "
            "chat template included); raise --max-length") in result.output
    assert not (tmp_path / "rm").exists()
    result = CliRunner().invoke(cli, base + ["--out", str(tmp_path / "rm92"), "--max-length", "92"])
    assert result.exit_code == 0, result.output
    counts = json.loads((tmp_path / "rm92" / "manifest.json").read_text())["counts"]
    assert (counts["used"], counts["left_out_too_long"]) == (3, 1)


def test_held_out_pairs_that_say_nothing_or_are_too_long_are_left_out_and_counted(tmp_path, tiny_model_dir):
    from rlaif.reward import fitting_pairs

    tokenizer = load_tokenizer(tiny_model_dir)
    rows = [pref(0, "Hi?", "Hello!", "Go."), pref(1, "Hi?", " Same. ", "Same."), pref(2, "Hi?", "", "Go."),
            pref(3, "Hi?", LONG, "Go."), pref(4, "Hi?", "Hello!", "No.", weight=0.0)]
    limit = chat_length(tokenizer, rows[0]["prompt"] + rows[0]["chosen"]) + 5
    tally = Tally("held-out pairs")
    kept, shortest = fitting_pairs(rows, tokenizer, limit, tally, weighted=False)
    assert [row["id"] for row, _, _ in kept] == ["p0", "p4"]  # weight is for training only
    assert tally.left_out == {"identical_replies": 1, "empty_reply": 1, "too_long": 1}
    assert shortest == chat_length(tokenizer, rows[3]["prompt"] + rows[3]["chosen"])
    # The ids are those the trainer reads: prompt + reply through the chat template.
    _, chosen, rejected = kept[0]
    assert chosen == chat_ids(tokenizer, rows[0]["prompt"] + rows[0]["chosen"])
    assert rejected == chat_ids(tokenizer, rows[0]["prompt"] + rows[0]["rejected"])


def test_reward_counts_the_labels_it_reads_and_those_left_out_as_they_are_read(tmp_path, tiny_model_dir):
    ai = write(tmp_path / "ai.jsonl", [pref(0, "Hi?", "Hello!", "Go."), pref(1, "Bye?", "Bye!", "No."),
                                       pref(2, "Hi?", "Same.", " Same. ")])
    human = write(tmp_path / "human.jsonl", [pref(3, "Hi?", "Go.", "Hello!", p_chosen=1.0, source="human")])
    out = tmp_path / "rm"
    result = CliRunner().invoke(cli, ["reward", "--data", str(ai), "--data", str(human), "--out", str(out),
                                      "--model", str(tiny_model_dir), "--max-steps", "1", "--eval-fraction", "0",
                                      "--reliability", "off", "--device", "cpu"])  # counting, not weighing
    assert result.exit_code == 0, result.output
    summary = "read 4 labels, used 3, left out 1 (identical_replies 1); read 2 training pairs, used 2"
    assert summary in " ".join(result.output.split())
    counts = json.loads((out / "manifest.json").read_text())["counts"]
    assert {k: counts[k] for k in ("labels_read", "labels_used", "labels_left_out_identical_replies", "read")} == {
        "labels_read": 4, "labels_used": 3, "labels_left_out_identical_replies": 1, "read": 2}


# --------------------------------------------------------------------------------------------------------------------
# non-finite-numbers: weights on reward.run itself


def test_reward_refuses_a_nan_weight_before_the_model(tmp_path, tiny_model_dir, no_model):
    from rlaif.reward import run

    data = CASES / "non-finite-numbers" / "prefs_weight_nan.jsonl"
    with pytest.raises(DataError, match=r"prefs_weight_nan.jsonl:1: weight: expected a finite number >= 0"):
        run(RewardConfig(data=[str(data)], out=str(tmp_path / "rm"), model=str(tiny_model_dir), eval_fraction=0.0))
    assert not (tmp_path / "rm").exists()


def test_reward_refuses_a_file_of_weight_zero(tmp_path, tiny_model_dir, no_model):
    from rlaif.reward import run

    data = CASES / "non-finite-numbers" / "prefs_ai.jsonl"
    with pytest.raises(DataError) as error:
        run(RewardConfig(data=[f"{data}:0"], out=str(tmp_path / "rm"), model=str(tiny_model_dir), eval_fraction=0.0))
    assert str(error.value) == f"{data}: every pair has weight 0: nothing to train on; give a file a weight above 0 " \
                               "(FILE:WEIGHT), or its rows a weight above 0"
    assert not (tmp_path / "rm").exists()


def test_reward_leaves_out_weight_zero_rows_and_scales_the_rest_by_their_mean(tmp_path, tiny_model_dir, monkeypatch):
    import rlaif.reward
    from rlaif.reward import run

    seen = {}

    def trainer(**kwargs):
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(rlaif.reward, "_trainer_classes", lambda: (trainer, lambda **kwargs: None))
    data = write(tmp_path / "prefs.jsonl", [pref(0, "Hi?", "Hello!", "Go.", weight=0.0),
                                            pref(1, "Bye?", "Bye!", "No.", weight=1.0),
                                            pref(2, "Thanks?", "Thank you!", "Whatever.", weight=3.0)])
    with pytest.raises(Stop):
        run(RewardConfig(data=[f"{data}:2"], out=str(tmp_path / "rm"), model=str(tiny_model_dir), eval_fraction=0.0,
                         device="cpu"))
    # Mixed weights 0, 2 and 6: the 0 is left out, the others divided by their mean, 4.
    assert seen["train_dataset"]["weight"] == [0.5, 1.5]


# --------------------------------------------------------------------------------------------------------------------
# Precision: float32 weights in every trainer, bf16 only as autocast (review #2)


@pytest.fixture
def stage_inputs(tmp_path):
    sft = write(tmp_path / "sft.jsonl", [{"id": "1", "messages": [{"role": "user", "content": "Hi?"},
                                                                  {"role": "assistant", "content": "Hello!"}]}])
    prefs = write(tmp_path / "prefs.jsonl", [pref(0, "Hi?", "Hello!", "Go.")])
    (tmp_path / "prompts.txt").write_text("Hi?\n")
    return SimpleNamespace(sft=sft, prefs=prefs, prompts=tmp_path / "prompts.txt", out=tmp_path / "out")


def start_stage(stage: str, lora: bool, inputs, model: Path, monkeypatch) -> dict:
    """Run `stage` up to its trainer on a machine that looks like a bf16 GPU; returns what the trainer got."""
    if stage == "sft":
        from rlaif.sft import run

        seen = intercept(monkeypatch, "SFTConfig", "SFTTrainer")
        config = SFTConfig(data=str(inputs.sft), out=str(inputs.out), model=str(model), lora=lora)
    elif stage == "reward":
        import trl

        import rlaif.reward
        from rlaif.reward import run

        seen = intercept(monkeypatch, "RewardConfig", "RewardTrainer")
        monkeypatch.setattr(rlaif.reward, "_trainer_classes", lambda: (trl.RewardTrainer, lambda **kwargs: None))
        config = RewardConfig(data=[str(inputs.prefs)], out=str(inputs.out), model=str(model), lora=lora,
                              eval_fraction=0.0)
    elif stage == "dpo":
        from rlaif.dpo import run

        seen = intercept(monkeypatch, "DPOConfig", "DPOTrainer")
        config = DPOConfig(data=[str(inputs.prefs)], out=str(inputs.out), policy=str(model), lora=lora)
    else:
        import rlaif.grpo
        from rlaif.grpo import run

        seen = intercept(monkeypatch, "GRPOConfig", "GRPOTrainer")
        monkeypatch.setattr(rlaif.grpo, "RewardModels", lambda specs, device: None)
        config = GRPOConfig(prompts=str(inputs.prompts), out=str(inputs.out), policy=str(model), lora=lora,
                            reward_model=["rm"])
    with pytest.raises(Stop):
        run(config, progress=False)
    return seen


@pytest.mark.parametrize("stage", ["sft", "reward", "dpo", "grpo"])
def test_trainers_get_float32_weights_and_bf16_autocast_on_a_bf16_gpu(stage, stage_inputs, tiny_model_dir,
                                                                        bf16_gpu, monkeypatch):
    seen = start_stage(stage, False, stage_inputs, tiny_model_dir, monkeypatch)
    params = dict(seen["trained"].named_parameters())
    assert all(p.requires_grad for p in params.values()) and {p.dtype for p in params.values()} == {torch.float32}
    assert seen["args"].bf16 is True and seen["args"].use_cpu is False


@pytest.mark.parametrize("stage", ["sft", "reward", "dpo", "grpo"])
def test_lora_adapters_and_heads_train_in_float32_on_a_bf16_base_on_a_bf16_gpu(stage, stage_inputs, tiny_model_dir,
                                                                                bf16_gpu, monkeypatch):
    seen = start_stage(stage, True, stage_inputs, tiny_model_dir, monkeypatch)
    params = dict(seen["trained"].named_parameters())
    trainable = {name: p.dtype for name, p in params.items() if p.requires_grad}
    frozen = {name: p.dtype for name, p in params.items() if not p.requires_grad}
    assert any("lora_" in name for name in trainable) and set(trainable.values()) == {torch.float32}
    assert all("lora_" in name or ".modules_to_save." in name for name in trainable)  # the base stays frozen...
    assert set(frozen.values()) == {torch.bfloat16}  # ... in bf16
    assert stage != "reward" or any("score.modules_to_save" in name for name in trainable)  # the head trains too
    assert seen["args"].bf16 is True and seen["args"].use_cpu is False


@pytest.mark.parametrize("stage", ["reward", "dpo"])
def test_lora_on_a_bf16_base_trains_under_bf16_autocast_and_merges_in_float32(stage, tmp_path, tiny_model_dir,
                                                                             monkeypatch):
    """A real training run on the CPU taken for a bf16 GPU (CPU autocast supports bf16): a float32 adapter fed bf16
    activations, or a float32 head fed bf16 hidden states, would fail here."""
    import transformers
    from safetensors.torch import load_file

    import rlaif.models

    monkeypatch.setattr(rlaif.models, "device_dtype", lambda device: "bfloat16")
    seen = {}
    train = transformers.Trainer.train

    def spy(self, *args, **kwargs):
        seen["mixed_precision"] = self.accelerator.mixed_precision
        seen["dtypes"] = {(p.requires_grad, p.dtype) for p in self.model.parameters()}
        return train(self, *args, **kwargs)

    monkeypatch.setattr(transformers.Trainer, "train", spy)
    data = write(tmp_path / "prefs.jsonl", [pref(i, f"Question {i}?", "A kind, careful answer.", "No.")
                                            for i in range(4)])
    args = [stage, "--data", str(data), "--out", str(tmp_path / stage), "--lora", "--max-steps", "2",
            "--batch-size", "2", "--max-length", "64", "--device", "cpu"]
    args += ["--model", str(tiny_model_dir), "--eval-fraction", "0"] if stage == "reward" else \
        ["--policy", str(tiny_model_dir)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert seen == {"mixed_precision": "bf16", "dtypes": {(True, torch.float32), (False, torch.bfloat16)}}
    assert json.loads((tmp_path / stage / "manifest.json").read_text())["counts"]["steps"] == 2
    # The adapter merged into the bf16 base in float32: a bf16 merge would round its small change to bf16 steps.
    name = "model.layers.0.self_attn.q_proj.weight"
    base = load_file(tiny_model_dir / "model.safetensors")[name].to(torch.bfloat16).float()
    merged = load_file(tmp_path / stage / "model.safetensors")[name]
    assert merged.dtype == torch.float32 and 0 < (merged - base).abs().max() < 0.01
    assert not torch.equal(merged.to(torch.bfloat16).float(), merged)


# --------------------------------------------------------------------------------------------------------------------
# Rows that say nothing, as each trainer would see them


def test_sft_leaves_out_what_sfttrainer_would_drop_and_tokenizes_as_it_does(tmp_path, tiny_model_dir):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from rlaif.sft import to_prompt_completion, training_examples

    def row(prompt: str, reply: str) -> dict:
        return to_prompt_completion({"messages": [{"role": "user", "content": prompt},
                                                  {"role": "assistant", "content": reply}]}, tmp_path, 1)

    rows = [row("Hi?", "Hello there!"), row("Hi?", "  "), row(LONG, "Fine."), row("Tell me more.", LONG)]
    tokenizer = load_tokenizer(tiny_model_dir)
    limit = chat_length(tokenizer, rows[0]["prompt"] + rows[0]["completion"]) + 8
    tally = Tally("examples")
    examples, truncated = training_examples(rows, tokenizer, limit, tally)
    assert (tally.used, tally.left_out, truncated) == (2, {"empty_reply": 1, "prompt_too_long": 1}, 1)

    # TRL tokenizing the same rows itself: it drops the long prompt silently (and would train on the empty reply's
    # end-of-turn tokens), and keeps exactly our ids.
    model, _ = load_model(str(tiny_model_dir), device="cpu")
    args = SFTConfig(output_dir=str(tmp_path / "trl"), max_length=limit, completion_only_loss=True, use_cpu=True,
                     report_to="none")
    trainer = SFTTrainer(model=model, args=args, processing_class=tokenizer,
                         train_dataset=Dataset.from_list([rows[0], rows[2], rows[3]]))
    assert trainer.train_dataset["input_ids"] == [e["input_ids"] for e in examples]
    labels = [[t if m else -100 for t, m in zip(e["input_ids"], e["completion_mask"])] for e in examples]
    assert trainer.train_dataset["labels"] == labels


def test_sft_stops_before_the_model_when_no_reply_is_left_and_counts_in_its_closing_line(tmp_path, tiny_model_dir,
                                                                                         monkeypatch):
    def messages(prompt: str, reply: str) -> dict:
        return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}]}

    data = write(tmp_path / "sft.jsonl", [messages("Hi?", ""), messages(LONG, "Fine.")])
    args = ["sft", "--data", str(data), "--model", str(tiny_model_dir), "--max-length", "32", "--device", "cpu"]
    result = CliRunner().invoke(cli, args + ["--out", str(tmp_path / "none")])
    assert result.exit_code == 1 and not (tmp_path / "none").exists()
    assert "read 2 examples, used 0, left out 2 (empty_reply 1, prompt_too_long 1)" in result.output

    write(tmp_path / "sft.jsonl", [messages("Hi?", ""), messages(LONG, "Fine."), messages("Hi?", "Hello!")])
    result = CliRunner().invoke(cli, args + ["--out", str(tmp_path / "sft"), "--max-steps", "1"])
    assert result.exit_code == 0, result.output
    assert "read 3 examples, used 1, left out 2 (empty_reply 1, prompt_too_long 1)" in result.output


def test_dpo_counts_what_dpotrainer_drops_or_cannot_learn_from(tmp_path, tiny_model_dir):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from rlaif.dpo import fitting_pairs, load_pairs

    tokenizer = load_tokenizer(tiny_model_dir)
    shared = LONG[:300]
    rows = [pref(0, "Hi?", "Hello there!", "Go."), pref(1, LONG, "Yes.", "No."),
            pref(2, "Hi?", shared + " Yes.", shared + " No."), pref(3, "Hi?", LONG, "Go."),
            pref(4, "Hi?", "Hello!", "No.", p_chosen=0.5), pref(5, "Hi?", "Hey!", "No.", weight=0.0),
            pref(6, "Hi?", "Go.", "Hello!", p_chosen=0.2)]
    limit = chat_length(tokenizer, rows[0]["prompt"] + rows[0]["chosen"]) + 12
    labels, tally = Tally("labels"), Tally("pairs")
    pairs = load_pairs([str(write(tmp_path / "prefs.jsonl", rows))], 0.5, labels, tally)
    assert pairs[-1]["chosen"][0]["content"] == "Hello!" and pairs[-1]["p_chosen"] == pytest.approx(0.8)  # faced
    kept, truncated = fitting_pairs(pairs, tokenizer, limit, tally)
    assert [r["id"] for r in kept] == ["p0", "p3", "p6"] and truncated == 1
    assert tally.left_out == {"tie": 1, "zero_weight": 1, "prompt_too_long": 1, "identical_after_truncation": 1}
    assert (labels.read, labels.used, tally.read, tally.used) == (7, 7, 7, 3)

    # TRL on rows 0-3: it drops the prompt that fills max_length without a word, and cuts row 2 to one sequence.
    model, _ = load_model(str(tiny_model_dir), device="cpu")
    args = DPOConfig(output_dir=str(tmp_path / "trl"), max_length=limit, use_cpu=True, report_to="none")
    trainer = DPOTrainer(model=model, args=args, processing_class=tokenizer,
                         train_dataset=Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")}
                                                          for r in rows[:4]]))
    assert len(trainer.train_dataset) == 3
    batch = trainer.data_collator([trainer.train_dataset[1]])  # row 2
    assert torch.equal(batch["input_ids"][0], batch["input_ids"][1])


def test_dpo_trains_each_pair_once_facing_the_weighted_mean_of_its_labels(tmp_path):
    from rlaif.dpo import load_pairs

    def labels_of(*specs: str, min_p_chosen: float = 0.5):
        labels, pairs = Tally("labels"), Tally("pairs")
        rows = load_pairs(list(specs), min_p_chosen, labels, pairs)
        return [(r["chosen"][0]["content"], round(r["p_chosen"], 6), r["weight"]) for r in rows], labels, pairs

    ai = write(tmp_path / "ai.jsonl", [pref(0, "Hi?", "Hello!", "Go.", p_chosen=0.9)])
    human = write(tmp_path / "human.jsonl", [pref(1, "Hi?", "Go.", "Hello!", p_chosen=1.0, source="human")])
    # Opposite labels of one pair: one row, facing the weighted majority, p the weighted mean.
    rows, labels, pairs = labels_of(f"{ai}:3", str(human))
    assert rows == [("Hello!", 0.675, 4.0)]  # (3 * 0.9 + 1 * 0) / 4
    assert labels.counts() == {"read": 2, "used": 2, "left_out": 0} and (pairs.read, pairs.left_out) == (1, {})
    assert labels_of(str(ai), f"{human}:2")[0] == [("Go.", 0.7, 3.0)]  # (2 * 1 + 1 * 0.1) / 3
    assert labels_of(f"{ai}:0", str(human))[0] == [("Go.", 1.0, 1.0)]  # a file of weight 0 does not vote
    # Equal and opposite: a tie, left out and counted (0.9 and 1 - 0.9 average to 0.5 only up to float rounding).
    other_ai = write(tmp_path / "other_ai.jsonl", [pref(2, "Hi?", "Go.", "Hello!", p_chosen=0.9)])
    rows, labels, pairs = labels_of(str(ai), str(other_ai))
    assert rows == [] and (labels.read, pairs.read, pairs.left_out) == (2, 1, {"tie": 1})
    # Two annotators who agree, in one file: one row of weight 2.
    both = write(tmp_path / "both.jsonl", [pref(3, "Hi?", "Hello!", "Go.", p_chosen=1.0, source="human",
                                                annotator=who) for who in ("ann-1", "ann-2")])
    rows, labels, pairs = labels_of(str(both))
    assert rows == [("Hello!", 1.0, 2.0)] and (labels.read, pairs.read) == (2, 1)
    # A label with repeated replies is counted where it is read.
    same = write(tmp_path / "same.jsonl", [pref(4, "Hi?", "Same.", "Same."), pref(5, "Hi?", "Yes.", "No.")])
    rows, labels, pairs = labels_of(str(same), min_p_chosen=0.95)
    assert rows == [] and labels.left_out == {"identical_replies": 1} and pairs.left_out == {"low_confidence": 1}
    # DPO trains on AI labels as given: a note says they are unmeasured, or, beside human pairs, unweighed.
    from rlaif.dpo import unweighed_note

    note = lambda *specs: unweighed_note(load_pairs(list(specs), 0.5, Tally("labels"), Tally("pairs")))
    assert note(str(ai))["unmeasured"].startswith(f"the AI labels of {ai} train as given, unmeasured")
    assert note(str(ai))["unmeasured"].endswith("; DPO does not weigh labels by it, a reward model does: rlaif reward "
                                                "--data HUMAN.jsonl --calibration CHECK/labels.jsonl, then PPO or GRPO "
                                                "on that reward model (in a recipe: human: files, policy_trainer ppo)")
    assert note(f"{ai}:3", str(human))["unmeasured"].startswith(f"DPO trains on the AI labels of {ai} as given: it "
                                                               "neither measures them against the human pairs")
    assert note(f"{ai}:0", str(human)) == {} and note(str(human)) == {}  # no AI label trains


def test_dpo_hands_its_trainer_one_row_per_pair_facing_its_weighted_winner(tmp_path, tiny_model_dir, monkeypatch):
    from rlaif.dpo import run

    seen = intercept(monkeypatch, "DPOConfig", "DPOTrainer")
    ai = write(tmp_path / "ai.jsonl", [pref(0, "Hi?", "Hello!", "Go."), pref(1, "Bye?", "Bye!", "No.")])
    human = write(tmp_path / "human.jsonl", [pref(2, "Hi?", "Go.", "Hello!", p_chosen=1.0, source="human")])
    with pytest.raises(Stop):
        run(DPOConfig(data=[str(ai), f"{human}:2"], out=str(tmp_path / "dpo"), policy=str(tiny_model_dir),
                      device="cpu"), progress=False)
    assert [(r["prompt"][0]["content"], r["chosen"][0]["content"]) for r in seen["train_dataset"]] == [
        ("Hi?", "Go."), ("Bye?", "Bye!")]


def test_grpo_leaves_out_prompts_that_do_not_fit_the_context(tmp_path, tiny_model_dir, monkeypatch, no_model):
    from rlaif.grpo import run

    (tmp_path / "prompts.txt").write_text(LONG * 8 + "\n")  # over the tiny model's 512 positions
    config = GRPOConfig(prompts=str(tmp_path / "prompts.txt"), out=str(tmp_path / "grpo"), policy=str(tiny_model_dir),
                        reward_model=["rm"], max_new_tokens=8, device="cpu")
    with pytest.raises(DataError, match=r"read 1 prompt, used 0, left out 1 \(too_long 1\); each prompt and "
                                        r"max_new_tokens \(8\) must fit in the policy's context of 512 tokens"):
        run(config, progress=False)
    assert not (tmp_path / "grpo").exists()


def test_grpo_trains_on_the_prompts_that_fit(tmp_path, tiny_model_dir, monkeypatch):
    import rlaif.grpo
    from rlaif.grpo import run

    seen = intercept(monkeypatch, "GRPOConfig", "GRPOTrainer")
    monkeypatch.setattr(rlaif.grpo, "RewardModels", lambda specs, device: None)
    (tmp_path / "prompts.txt").write_text("Hi?\n" + LONG * 8 + "\n")
    with pytest.raises(Stop):
        run(GRPOConfig(prompts=str(tmp_path / "prompts.txt"), out=str(tmp_path / "grpo"), policy=str(tiny_model_dir),
                       reward_model=["rm"], max_new_tokens=8, device="cpu"), progress=False)
    assert seen["train_dataset"]["prompt"] == [[{"role": "user", "content": "Hi?"}]]


# --------------------------------------------------------------------------------------------------------------------
# Settings that do nothing or mean something else (review #11)


def test_label_smoothing_is_an_error_with_a_loss_that_ignores_it():
    from rlaif.dpo import DPOConfig

    with pytest.raises(ConfigError, match="label_smoothing: the sigmoid loss does not use it"):
        DPOConfig(data=["x.jsonl"], label_smoothing=0.1)
    with pytest.raises(ConfigError, match="loss_type: expected one of sigmoid"):
        DPOConfig(data=["x.jsonl"], loss_type="sigmod")
    assert DPOConfig(data=["x.jsonl"], loss_type="robust", label_smoothing=0.1).label_smoothing == 0.1


def test_auto_label_smoothing_is_zero_for_the_sigmoid_loss(tmp_path, tiny_model_dir, monkeypatch):
    from rlaif.dpo import run

    seen = intercept(monkeypatch, "DPOConfig", "DPOTrainer")
    data = write(tmp_path / "prefs.jsonl", [pref(0, "Hi?", "Hello!", "Go.", p_chosen=0.7)])
    with pytest.raises(Stop):
        run(DPOConfig(data=[str(data)], out=str(tmp_path / "dpo"), policy=str(tiny_model_dir), device="cpu"))
    assert seen["args"].label_smoothing == 0.0 and seen["args"].loss_type == ["sigmoid"]


def test_label_smoothing_changes_the_loss_it_is_recorded_for(tmp_path, tiny_model_dir):
    from rlaif.dpo import run

    data = write(tmp_path / "prefs.jsonl", [pref(i, f"Question {i}?", "A kind, careful answer.", "No.")
                                            for i in range(4)])
    losses = []
    for smoothing in (0.1, 0.3):
        metrics = run(DPOConfig(data=[str(data)], out=str(tmp_path / f"dpo-{smoothing}"), policy=str(tiny_model_dir),
                                loss_type="robust", label_smoothing=smoothing, max_steps=2, batch_size=2,
                                learning_rate=1e-3, max_length=64, device="cpu"), progress=False)
        assert metrics["label_smoothing"] == smoothing
        losses.append(metrics["last_loss"])
    assert losses[0] != pytest.approx(losses[1], abs=1e-4)


@pytest.mark.parametrize(("config", "settings", "message"), [
    (SFTConfig, {"learning_rate": float("nan")}, "sft settings: learning_rate: expected a finite number > 0, got nan"),
    (RewardConfig, {"margin": float("inf")}, "reward settings: margin: expected a finite number >= 0, got inf"),
    (DPOConfig, {"beta": 0.0}, "dpo settings: beta: expected a finite number > 0"),
    (GRPOConfig, {"temperature": float("nan")}, "grpo settings: temperature: expected a finite number > 0, got nan"),
    (RewardConfig, {"learning_rate": "1e-5"}, "reward settings: learning_rate: expected a number, not '1e-5'"),
    (SFTConfig, {"lora_r": 8}, r"lora_r: used only with lora: true \(--lora\)"),
    (DPOConfig, {"lora_alpha": 8}, "lora_alpha: used only with lora: true"),
    (RewardConfig, {"eval_data": ["h.jsonl"], "eval_fraction": 0.3},
     "eval_fraction: not used when eval_data gives the held-out pairs"),
    (GRPOConfig, {"reward_model": ["rm:1", "other:0"]},
     "reward_model: other:0: a reward model of weight 0 does nothing"),
])
def test_settings_that_do_nothing_or_are_not_numbers_are_refused(config, settings, message):
    with pytest.raises((ConfigError, DataError), match=message):
        config(**settings)


def test_lora_settings_are_taken_with_lora():
    assert SFTConfig(lora=True, lora_r=8).lora_r == 8 and DPOConfig(lora=True, lora_alpha=8).lora_alpha == 8


def test_a_gpu_index_the_trainer_would_not_use_is_refused():
    from rlaif.models import trainer_device

    assert (trainer_device("cpu"), trainer_device("cuda"), trainer_device("cuda:0")) == ("cpu", "cuda", "cuda")
    with pytest.raises(ConfigError, match="CUDA_VISIBLE_DEVICES=1 and --device cuda"):
        trainer_device("cuda:1")


# --------------------------------------------------------------------------------------------------------------------
# Same seed, same weights: every stage seeds before it creates new weights (a reward head, LoRA adapters)


def train_once(stage: str, seed: int, inputs, model: Path, out: Path) -> bytes:
    """One optimizer step of `stage` on the tiny model (LoRA for the policy trainers: its adapters start random; a
    reward model's new head does); the bytes of the model file it writes."""
    if stage == "reward":
        from rlaif.reward import run

        config = RewardConfig(data=[str(inputs.prefs)], out=str(out), model=str(model), eval_fraction=0.0,
                              max_steps=1, batch_size=1, seed=seed, device="cpu")
    elif stage == "sft":
        from rlaif.sft import run

        config = SFTConfig(data=str(inputs.sft), out=str(out), model=str(model), lora=True, max_steps=1,
                           batch_size=1, seed=seed, device="cpu")
    elif stage == "dpo":
        from rlaif.dpo import run

        config = DPOConfig(data=[str(inputs.prefs)], out=str(out), policy=str(model), lora=True, max_steps=1,
                           batch_size=1, seed=seed, device="cpu")
    else:
        from rlaif.grpo import run

        config = GRPOConfig(prompts=str(inputs.prompts), out=str(out), policy=str(model), lora=True, steps=1,
                            reward_model=[str(inputs.reward)], prompts_per_step=1, group_size=2, max_new_tokens=4,
                            seed=seed, device="cpu")
    run(config, progress=False)
    return (out / "model.safetensors").read_bytes()


@pytest.mark.parametrize("stage", ["reward", "sft", "dpo", "grpo"])
def test_two_runs_with_the_same_seed_write_the_same_model(stage, stage_inputs, tiny_model_dir):
    """A killed and a clean run of one recipe must write the same reward model, and so the same PPO scores: the
    stage seeds before the new weights are drawn, not only its trainer's data order and sampling after them."""
    if stage == "grpo":
        from rlaif.reward import load_backbone

        classifier, tokenizer = load_backbone(str(tiny_model_dir), "cpu", dtype="float32")
        classifier.save_pretrained(stage_inputs.out.parent / "rm", safe_serialization=True)
        tokenizer.save_pretrained(stage_inputs.out.parent / "rm")
        stage_inputs.reward = stage_inputs.out.parent / "rm"
    runs = [train_once(stage, seed, stage_inputs, tiny_model_dir, stage_inputs.out.parent / f"{stage}-{i}")
            for i, seed in enumerate((0, 0, 1))]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]
