"""Supervised fine-tuning through TRL: loss falls, LoRA merges, a crash resumes from the last checkpoint exactly."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from rlaif.models import load_model
from rlaif.records import DataError
from rlaif.sft import SFTConfig, run, to_prompt_completion


@pytest.fixture
def sft_data(tmp_path):
    path = tmp_path / "sft.jsonl"
    with open(path, "w") as f:
        for i in range(16):
            messages = [{"role": "user", "content": f"Question {i}: which is better?"},
                        {"role": "assistant", "content": "The answer is (A), the kinder reply."}]
            f.write(json.dumps({"id": str(i), "messages": messages}) + "\n")
    return path


def tiny_config(sft_data, out, model, **overrides):
    settings = {"data": str(sft_data), "out": str(out), "model": str(model), "max_steps": 6, "batch_size": 4,
                "save_steps": 3, "learning_rate": 1e-2, "device": "cpu"}
    return SFTConfig(**{**settings, **overrides})


def test_messages_become_prompt_and_completion(tmp_path):
    row = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
    assert to_prompt_completion(row, tmp_path, 1) == {"prompt": row["messages"][:1], "completion": row["messages"][1:]}
    with pytest.raises(DataError, match=r"sft.jsonl:3: messages\[1\].role: the last message must be the assistant's"):
        to_prompt_completion({"messages": [{"role": "user", "content": "Hi"}, {"role": "user", "content": "x"}]},
                             tmp_path / "sft.jsonl", 3)
    with pytest.raises(DataError, match="expected a list of at least two"):
        to_prompt_completion({"text": "x"}, tmp_path, 1)


def test_full_fine_tuning_lowers_the_loss_and_writes_a_model(sft_data, tmp_path, tiny_model_dir):
    metrics = run(tiny_config(sft_data, tmp_path / "out", tiny_model_dir), progress=False)
    assert metrics["steps"] == 6 and metrics["last_loss"] < metrics["first_loss"] / 2
    model, _ = load_model(str(tmp_path / "out"), device="cpu")
    before = load_file(str(tiny_model_dir / "model.safetensors"))
    after = model.state_dict()
    assert not torch.equal(before["model.layers.0.mlp.up_proj.weight"], after["model.layers.0.mlp.up_proj.weight"])
    assert (tmp_path / "out" / "checkpoints" / "checkpoint-3" / "model.safetensors").is_file()
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert manifest["counts"] == {"read": 16, "used": 16, "left_out": 0, "truncated": 0, "steps": 6}


def test_lora_adapter_is_merged_into_a_plain_model(sft_data, tmp_path, tiny_model_dir):
    out = tmp_path / "lora"
    metrics = run(tiny_config(sft_data, out, tiny_model_dir, lora=True, lora_r=4), progress=False)
    assert metrics["last_loss"] < metrics["first_loss"]
    assert not (out / "adapter_config.json").exists()
    weights = load_file(str(out / "model.safetensors"))
    assert not any("lora" in name for name in weights)
    before = load_file(str(tiny_model_dir / "model.safetensors"))
    assert not torch.equal(before["model.layers.0.self_attn.q_proj.weight"], weights["model.layers.0.self_attn.q_proj.weight"])


def test_rerunning_a_finished_run_trains_nothing_more(sft_data, tmp_path, tiny_model_dir):
    config = tiny_config(sft_data, tmp_path / "out", tiny_model_dir)
    first = run(config, progress=False)
    weights = (tmp_path / "out" / "model.safetensors").read_bytes()
    again = run(config, progress=False)
    assert again == first and again["steps"] == 6
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == weights


def test_a_crash_resumes_from_the_last_checkpoint_exactly(sft_data, tmp_path, tiny_model_dir):
    whole = run(tiny_config(sft_data, tmp_path / "whole", tiny_model_dir), progress=False)
    crashed = tmp_path / "crashed"
    run(tiny_config(sft_data, crashed, tiny_model_dir), progress=False)
    # What a crash between step 3 and step 6 leaves behind: checkpoint-3 and nothing after it.
    shutil.rmtree(crashed / "checkpoints" / "checkpoint-6")
    for name in ("model.safetensors", "metrics.json"):
        (crashed / name).unlink()
    resumed = run(tiny_config(sft_data, crashed, tiny_model_dir), progress=False)
    assert resumed["resumed_from"].endswith("checkpoint-3") and resumed["steps"] == 6
    assert resumed["last_loss"] == pytest.approx(whole["last_loss"], abs=1e-5)
    a = load_file(str(tmp_path / "whole" / "model.safetensors"))
    b = load_file(str(crashed / "model.safetensors"))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


@pytest.mark.slow
def test_embedded_model_trains_a_few_steps_on_cpu(sft_data, tmp_path):
    metrics = run(SFTConfig(data=str(sft_data), out=str(tmp_path / "smol"), max_steps=2, batch_size=2,
                            max_length=64, device="cpu"), progress=False)
    assert metrics["steps"] == 2 and metrics["first_loss"] > 0
    model, tokenizer = load_model(str(tmp_path / "smol"), device="cpu")
    assert model.config.vocab_size == 49152 and tokenizer.eos_token == "<|im_end|>"
