"""Shared fixtures. The tiny model is built here, offline, in a temp dir, and loaded through rlaif.models like any
real model: random weights, and a real byte-level BPE tokenizer trained on a few sentences, with a ChatML template."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
HH_DATA = REPO.parent / "shared" / "data" / "hh-harmless-dev.jsonl"

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

CORPUS = [
    "The assistant answers questions about cooking, travel, science and code.",
    "How do I bake bread? Mix flour, water, salt and yeast, then let it rise.",
    "I can't help with that, but here is a safer way to think about it.",
    "Which response is more helpful, honest and harmless? The answer is (A) or (B).",
    "Critique the reply: it is rude and gives dangerous advice. Revise it to be kind and safe.",
    "def add(a, b): return a + b  # Python functions, loops, lists and dictionaries",
] * 20


def build_tiny_model(directory: Path, vocab_size: int = 384, seed: int = 0) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(CORPUS, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                        pad_token="<|endoftext|>", unk_token="<|endoftext|>")
    tokenizer.chat_template = CHATML

    # Large initial weights make greedy replies varied rather than one token repeated, so comparisons of
    # batched and unbatched output mean something.
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True, initializer_range=0.3, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(config)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tiny(tiny_model_dir):
    """(model, tokenizer) of the tiny model, loaded through the same path as real models."""
    from rlaif.models import load_model

    return load_model(str(tiny_model_dir), device="cpu")


@pytest.fixture(scope="session")
def roomy_model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model (same weights and tokenizer) with 8192 positions, as SmolLM2's. Its byte-level tokens make the
    shipped constitutions' few-shot blocks (1,400 to 1,800 tokens) and the default score rubric (4,700) longer than
    its 512, and the stages leave out what does not fit in a model's context: tests that read them use this copy."""
    import json
    import shutil

    directory = tmp_path_factory.mktemp("roomy-model") / "model"
    shutil.copytree(tiny_model_dir, directory)
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 8192}))
    return directory


@pytest.fixture(scope="session")
def embedded():
    """The embedded SmolLM2-135M-Instruct (converted once into the rlaif cache)."""
    from rlaif.models import load_model

    return load_model("smollm2-135m-instruct", device="cpu")


@pytest.fixture
def hh_data() -> Path:
    if not HH_DATA.is_file():
        pytest.skip(f"{HH_DATA} not present")
    return HH_DATA


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def accelerate_launch(arguments: list[str], env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    """`accelerate launch ARGUMENTS` (this venv's), its output captured, as subprocess.run would; but on a timeout
    the launcher is stopped with its workers (rlaif.launch.stop_launcher) before the test fails: killed alone, it
    would leave them running (in sessions of their own), loading the machine for the tests after."""
    from rlaif.launch import stop_launcher

    command = [str(Path(sys.executable).with_name("accelerate")), "launch", *arguments]
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as launcher:
        try:
            out, err = launcher.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop_launcher(launcher, patience=30)
            try:
                out, err = launcher.communicate(timeout=30)
            except subprocess.TimeoutExpired:  # workers left holding the pipes
                out, err = "", ""
            pytest.fail(f"accelerate launch did not end within {timeout:g} s; its output:\n{err[-3000:]}")
    return subprocess.CompletedProcess(command, launcher.returncode, out, err)


@contextlib.contextmanager
def running_server(command: list[str], ready_url: str, log_path: Path, env: dict | None = None, timeout: float = 120):
    """A server started by `command` in a subprocess, its output to `log_path`, yielded once `ready_url` answers
    HTTP 200 (the test fails with the log's end when it exits first or does not answer within `timeout` seconds),
    and stopped when the block ends."""
    import subprocess
    import time
    import urllib.request

    from rlaif.launch import tied_to_this_process

    with open(log_path, "wb") as log:  # tied to pytest: a test run killed outright stops its servers too
        server = subprocess.Popen(tied_to_this_process(command), stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(ready_url, timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                state = f"no answer at {ready_url} in {timeout:g} s" if server.returncode is None \
                    else f"exit {server.returncode}"
                pytest.fail(f"{command[0]} did not start ({state}); its log:\n{log_path.read_text()[-4000:]}")
            time.sleep(0.2)
        yield server
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
