"""PPO cases (tests/cases/ppo-*/ and the PPO items of the code review): the value model on the PPO reward's scale,
collectives over uneven shards, gradient checkpointing with dropout off, a LoRA value model saved merged,
micro-batches that leave the gradient unchanged, whitening a single token, float32 master weights with bf16
autocast, and the LoRA reference equal to the base model."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from conftest import REPO, accelerate_launch, build_tiny_model

from rlaif.ppo import losses as L
from rlaif.ppo.build import build_models, build_reward
from rlaif.ppo.config import PPOConfig
from rlaif.ppo.rollout import CombinedReward, pack, response_logits
from rlaif.ppo.trainer import PPOTrainer, Rollout, run
from rlaif.records import ConfigError, DataError, read_jsonl

TESTS = Path(__file__).resolve().parent
CASES = TESTS / "cases"
CPU = torch.device("cpu")
PROMPTS = ["How do I bake bread?", "Which response is more helpful?", "Write a Python function.",
           "Tell me about travel.", "What is science?", "Critique the reply.", "Revise it to be kind.",
           "Mix flour and water."]


@pytest.fixture(autouse=True)
def _toy_rewards_importable(monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))


@pytest.fixture
def prompts(tmp_path) -> Path:
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n")
    return path


@pytest.fixture
def config(tiny_model_dir, prompts, tmp_path) -> PPOConfig:
    return PPOConfig(prompts=str(prompts), out=str(tmp_path / "ppo"), policy=str(tiny_model_dir),
                     reward_fn=["toy_rewards:fl"], steps=1, batch_size=8, minibatches=2, max_new_tokens=12,
                     learning_rate=1e-3, lr_schedule="constant", device="cpu", save_steps=1)


def reward_model(tiny_model_dir: Path, directory: Path, stats: dict | None) -> Path:
    """A reward model directory made from the tiny model: its new score head is random (not zero)."""
    from rlaif.reward import load_backbone

    classifier, tokenizer = load_backbone(str(tiny_model_dir), "cpu")
    classifier.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    if stats is not None:
        (directory / "reward_stats.json").write_text(json.dumps(stats))
    return directory


def zero_reward() -> CombinedReward:
    return CombinedReward([("zero", lambda prompts, responses: [0.0] * len(responses), 1.0)])


def with_context(tiny_model_dir: Path, directory: Path, **config_changes) -> Path:
    """A copy of the tiny model (same weights and tokenizer) with `config_changes` in its config.json."""
    shutil.copytree(tiny_model_dir, directory)
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, **config_changes}))
    return directory


# --------------------------------------------------------------------------------------------------------------------
# review 1: the value model starts at zero on the reward model's backbone


def trained_looking_reward_model(tmp_path: Path) -> Path:
    """A reward model on another backbone than the policy (the tiny model's tokenizer, other weights), with a random
    head and the reward_stats.json of a reward model whose scores sit in a narrow band far from 0 (the quickstart's:
    mean -2.03, std 0.058): normalising by them multiplies the head's output by 17."""
    return reward_model(build_tiny_model(tmp_path / "rm-base", seed=1), tmp_path / "rm",
                        {"mean": -2.03, "std": 0.058, "responses": 18})


def test_values_start_at_zero_on_the_reward_models_backbone(config, tiny_model_dir, tmp_path):
    """Every value PPO reads at the start (every response position of a packed batch) is 0, the mean of the
    normalised reward; the trunk it reads them from is the reward model's, not the policy's."""
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification

    rm = trained_looking_reward_model(tmp_path)
    _, _, value, _ = build_models(replace(config, reward_model=[str(rm)], reward_fn=[]), CPU)
    batch = pack([[5, 6, 7], [8], [9, 10, 11, 12]], [[13, 14], [15, 16, 17, 18, 19], [20]], pad_id=0)
    with torch.no_grad():
        assert torch.equal(value.values(batch), torch.zeros(3, 5))
    trunk = {k: v for k, v in value.classifier.state_dict().items() if not k.startswith("score.")}
    reward = AutoModelForSequenceClassification.from_pretrained(rm, num_labels=1).state_dict()
    base = load_file(tiny_model_dir / "model.safetensors")
    assert trunk and all(torch.equal(trunk[k], reward[k]) for k in trunk)
    assert not torch.equal(trunk["model.embed_tokens.weight"], base["model.embed_tokens.weight"])
    assert reward["score.weight"].abs().sum() > 0  # the reward model's own head was not zero


def test_explained_variance_at_the_first_step_is_zero(config, tmp_path):
    """With values 0 and returns that vary, 1 - Var(returns - values) / Var(returns) = 0 at the first step, not far
    below it (a head carried over from the reward model, normalised, reads 17 x its output at states it was never
    trained on)."""
    rm = trained_looking_reward_model(tmp_path)
    m = run(replace(config, reward_model=[str(rm)], reward_fn=[], steps=1), progress=False)
    assert m["explained_variance"] is not None  # defined: the returns vary
    assert abs(m["explained_variance"]) < 1e-6


def test_value_head_starts_at_zero_when_the_reward_model_reads_another_tokenizer(config, tiny_model_dir, tmp_path):
    """A reward model that reads another tokenizer cannot be the value model: the policy's backbone with a zero
    head."""
    other = build_tiny_model(tmp_path / "other", vocab_size=320, seed=1)
    rm = reward_model(other, tmp_path / "rm", {"mean": -2.0, "std": 0.2, "responses": 10})
    _, _, value, _ = build_models(replace(config, reward_model=[str(rm)]), CPU)
    batch = pack([[5, 6, 7], [8]], [[9, 10], [11, 12, 13]], pad_id=0)
    with torch.no_grad():
        assert torch.equal(value.values(batch), torch.zeros(2, 3))
    assert value.classifier.config.vocab_size == 384  # the policy's backbone


def test_reward_stats_with_a_std_of_zero_are_refused(config, tiny_model_dir, tmp_path):
    rm = reward_model(tiny_model_dir, tmp_path / "rm", {"mean": 1.0, "std": 0.0, "responses": 10})
    with pytest.raises(ConfigError, match="std 0.0.*divide by zero"):
        build_reward(replace(config, reward_model=[str(rm)]), CPU)


# --------------------------------------------------------------------------------------------------------------------
# review 3: collectives over uneven and empty shards


def test_evaluation_over_two_processes_with_uneven_and_empty_shards(tiny_model_dir, prompts, tmp_path):
    """1, 3 and 5 eval prompts in batches of 2 over two processes (shards of 1 and 0, 1 and 1, 3 and 2 prompts):
    it completes, and each logged mean equals one process's over the same samples, each prompt counted once."""
    script = CASES / "ppo-eval-shards" / "evaluate.py"
    env = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    args = [str(tiny_model_dir), str(prompts)]
    one, two = tmp_path / "one", tmp_path / "two"
    single = subprocess.run([sys.executable, str(script), *args, str(one)], env=env, capture_output=True,
                            text=True, timeout=300, check=False)
    assert single.returncode == 0, single.stderr[-3000:]
    launched = accelerate_launch(["--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision",
                                  "no", "--dynamo_backend", "no", str(script), *args, str(two)], env)
    assert launched.returncode == 0, launched.stderr[-3000:]
    for n in (1, 3, 5):
        [a], [b] = read_jsonl(one / f"eval-{n}.jsonl"), read_jsonl(two / f"eval-{n}.jsonl")
        assert a["prompts"] == b["prompts"] == n
        assert b["score"] == pytest.approx(a["score"], rel=1e-6, abs=1e-9)
        assert b["kl"] == pytest.approx(a["kl"], rel=1e-5, abs=1e-7)
    assert abs(a["kl"]) > 1e-3  # the policy was moved off the reference: the KL means something


# --------------------------------------------------------------------------------------------------------------------
# review 7: gradient checkpointing acts, and dropout stays off


def with_attention_dropout(tiny_model_dir: Path, directory: Path) -> Path:
    """The tiny model with attention dropout 0.5 in its config: left on in training mode, it would change the
    logits of every training pass."""
    build_tiny_model(directory)
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "attention_dropout": 0.5}))
    return directory


@pytest.mark.parametrize("lora", [False, True])
def test_gradient_checkpointing_checkpoints_every_decoder_layer(config, tiny_model_dir, tmp_path, lora):
    from transformers.modeling_layers import GradientCheckpointingLayer

    model = with_attention_dropout(tiny_model_dir, tmp_path / "dropout")
    rm = reward_model(model, tmp_path / "rm", None)
    policy, _, value, _ = build_models(replace(config, policy=str(model), reward_model=[str(rm)],
                                               gradient_checkpointing=True, lora=lora), CPU)
    with torch.no_grad():  # the head moved off zero, as after an update: the value's gradient then reaches the trunk
        for name, parameter in value.named_parameters():
            if "score" in name and parameter.requires_grad:
                parameter.normal_(generator=torch.Generator().manual_seed(0))
    calls = {"policy": 0, "value": 0}
    for name, module in (("policy", policy), ("value", value)):
        layers = [m for m in module.modules() if isinstance(m, GradientCheckpointingLayer)]
        assert len(layers) == 2
        for layer in layers:
            def counted(*args, _checkpoint=layer._gradient_checkpointing_func, _name=name, **kwargs):
                calls[_name] += 1
                return _checkpoint(*args, **kwargs)
            layer._gradient_checkpointing_func = counted
    batch = pack([[5, 6, 7], [8]], [[9, 10], [11, 12, 13]], pad_id=0)
    with torch.no_grad():
        assert policy.training and torch.equal(response_logits(policy, batch), response_logits(policy, batch))
    logits = response_logits(policy, batch)  # training mode, and no dropout: the same logits every pass
    (logits.square().mean() + value.values(batch).square().mean()).backward()
    assert calls == {"policy": 2, "value": 2}
    for module in (policy, value):  # the gradient reaches the first layer's trainable weights through both checkpoints
        first = [p for n, p in module.named_parameters() if "layers.0." in n and p.requires_grad and "lora_A" not in n]
        assert first and all(p.grad is not None and p.grad.abs().sum() > 0 for p in first)


def test_gradient_checkpointing_with_dropout_in_the_model_keeps_the_first_ratio_at_one(config, tiny_model_dir,
                                                                                       tmp_path):
    model = with_attention_dropout(tiny_model_dir, tmp_path / "dropout")
    m = run(replace(config, policy=str(model), gradient_checkpointing=True, learning_rate=0.0), progress=False)
    assert m["ratio_mean"] == pytest.approx(1.0, abs=1e-5) and m["ratio_max"] == pytest.approx(1.0, abs=1e-4)
    assert m["clipfrac"] == 0.0 and abs(m["kl"]) < 1e-4


def test_lora_dropout_is_refused(config):
    with pytest.raises(ConfigError, match="lora_dropout"):
        run(replace(config, lora=True, lora_dropout=0.1), progress=False)


# --------------------------------------------------------------------------------------------------------------------
# prompts longer than the context: left out and counted, as GRPO does


def chat_lengths(model: Path, texts: list[str]) -> list[int]:
    """Each prompt's tokens as the rollout feeds them: the chat template with the generation prompt."""
    from rlaif.generate import encode_chat
    from rlaif.models import load_tokenizer

    tokenizer = load_tokenizer(model)
    return [len(encode_chat(tokenizer, [{"role": "user", "content": text}])) for text in texts]


def test_prompts_that_do_not_fit_in_the_context_are_left_out_and_counted(config, tiny_model_dir, tmp_path):
    """A context of (a middle prompt length) + max_new_tokens: a prompt of exactly that length is kept, a longer one
    left out; training and eval prompts alike, in the manifest's counts and the summary."""
    texts = PROMPTS + ["Critique the reply: it is rude and gives dangerous advice. Revise it to be kind and safe."]
    lengths = chat_lengths(tiny_model_dir, texts)
    edge = sorted(set(lengths))[len(set(lengths)) // 2]
    fit = [text for text, n in zip(texts, lengths) if n <= edge]
    assert edge in lengths and 0 < len(fit) < len(texts)
    model = with_context(tiny_model_dir, tmp_path / "short", max_position_embeddings=edge + config.max_new_tokens)
    (tmp_path / "train.txt").write_text("\n".join(texts) + "\n")
    (tmp_path / "eval.txt").write_text("\n".join(texts[::2]) + "\n")
    eval_fit = [text for text in texts[::2] if text in fit]
    m = run(replace(config, policy=str(model), prompts=str(tmp_path / "train.txt"), steps=1, minibatches=1,
                    eval_prompts=str(tmp_path / "eval.txt")), progress=False)
    left, eval_left = len(texts) - len(fit), len(texts[::2]) - len(eval_fit)
    counts = json.loads((Path(config.out) / "manifest.json").read_text())["counts"]
    assert {k: v for k, v in counts.items() if "read" in k or "used" in k or "left_out" in k} == {
        "read": len(texts), "used": len(fit), "left_out": left, "left_out_too_long": left,
        "eval_read": len(texts[::2]), "eval_used": len(eval_fit), "eval_left_out": eval_left,
        "eval_left_out_too_long": eval_left}
    assert m["summary"] == (f"read {len(texts)} prompts, used {len(fit)}, left out {left} (too_long {left}); read "
                            f"{len(texts[::2])} eval prompts, used {len(eval_fit)}, left out {eval_left} "
                            f"(too_long {eval_left})")
    sampled = {row["prompt"][0]["content"] for row in read_jsonl(Path(config.out) / "samples.jsonl")}
    assert sampled and sampled <= set(fit)
    assert [row["prompts"] for row in read_jsonl(Path(config.out) / "eval.jsonl")] == [len(eval_fit)] * 2


@pytest.mark.parametrize("which", ["prompts", "eval_prompts"])
def test_no_prompt_that_fits_stops_before_any_model_loads(config, tiny_model_dir, tmp_path, monkeypatch, which):
    import rlaif.models

    texts = PROMPTS[:4]
    lengths = chat_lengths(tiny_model_dir, texts)
    long = tmp_path / "long.txt"
    long.write_text("\n".join(t for t, n in zip(texts, lengths) if n > min(lengths)) + "\n")
    short = tmp_path / "short.txt"
    short.write_text("\n".join(t for t, n in zip(texts, lengths) if n == min(lengths)) + "\n")
    context = min(lengths) + config.max_new_tokens
    model = with_context(tiny_model_dir, tmp_path / "short-context", max_position_embeddings=context)
    monkeypatch.setattr(rlaif.models, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    config = replace(config, policy=str(model), prompts=str(long if which == "prompts" else short),
                     eval_prompts=str(long if which == "eval_prompts" else short))
    n = sum(n > min(lengths) for n in lengths)
    noun = "prompts" if which == "prompts" else "eval prompts"
    with pytest.raises(DataError, match=rf"long.txt: nothing left to use: read {n} {noun}, used 0, left out {n} "
                                        rf"\(too_long {n}\); each prompt and max_new_tokens \(12\) must fit in the "
                                        rf"policy's context of {context} tokens"):
        run(config, progress=False)
    assert not Path(config.out).exists()


# --------------------------------------------------------------------------------------------------------------------
# review 10: with LoRA the value model is saved merged


def test_lora_value_model_saves_as_a_plain_classifier_with_the_same_values(config, tiny_model_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification

    rm = reward_model(tiny_model_dir, tmp_path / "rm", {"mean": 0.4, "std": 2.0, "responses": 10})
    config = replace(config, reward_model=[str(rm)], lora=True)
    _, _, value, tokenizer = build_models(config, CPU)
    with torch.no_grad():  # as if trained: adapters and head moved
        for name, parameter in value.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                parameter.add_(0.3 * torch.randn(parameter.shape, generator=torch.Generator().manual_seed(0)))
    batch = pack([[5, 6, 7], [8]], [[9, 10], [11, 12, 13]], pad_id=0)
    with torch.no_grad():
        trained = value.values(batch)
    assert trained.abs().min() > 0
    value.save_pretrained(tmp_path / "value")
    tokenizer.save_pretrained(tmp_path / "value")  # as _save_final does

    plain, info = AutoModelForSequenceClassification.from_pretrained(tmp_path / "value", num_labels=1,
                                                                     output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    with torch.no_grad():
        hidden = plain.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                             position_ids=batch.position_ids).last_hidden_state
        logits = plain.score(hidden[:, -4:-1]).squeeze(-1)
    assert torch.allclose(logits, trained, atol=1e-5)  # the classifier's output is the value: nothing to add
    assert "value_bias" not in json.loads((tmp_path / "value" / "config.json").read_text())
    _, _, reloaded, _ = build_models(replace(config, reward_model=[], value_model=str(tmp_path / "value"),
                                             lora=False), CPU)
    with torch.no_grad():
        assert torch.allclose(reloaded.values(batch), trained, atol=1e-5)  # value_model: OUT/value starts from it


# --------------------------------------------------------------------------------------------------------------------
# review 12: micro_batch_size is result-neutral


@pytest.mark.parametrize("shared", [False, True])
def test_micro_batch_size_leaves_the_gradient_unchanged(config, shared):
    """One PPO minibatch from the same state, responses of 1, 3, 6 and 10 tokens: one row per micro-batch and the
    whole minibatch at once give the same gradients (each term a mean over the minibatch's tokens)."""
    config = replace(config, shared_value_head=shared, entropy_coef=0.01, reward_fn=["toy_rewards:fl"])
    trainer = PPOTrainer(config, Accelerator(cpu=True), reward=zero_reward())
    g = torch.Generator().manual_seed(0)
    lengths = [1, 3, 6, 10]
    batch = pack([[5, 6, 7], [8], [9, 10], [11, 12, 13, 14]],
                 [torch.randint(20, 300, (n,), generator=g).tolist() for n in lengths], pad_id=0)
    mask = batch.mask
    with torch.no_grad():
        if shared:
            logits, hidden = response_logits(trainer.policy, batch, hidden=True)
            values = trainer.value(hidden)
        else:
            logits = response_logits(trainer.policy, batch)
            values = trainer.value.values(batch)
    logprobs = L.logprobs_from_logits(logits, batch.response, config.temperature)
    noise = lambda: torch.randn(mask.shape, generator=g)
    ro = Rollout([[]] * 4, [""] * 4, batch, (logprobs + 0.2 * noise()) * mask, logprobs * mask,
                 (values + 0.3 * noise()) * mask, torch.zeros(4), {}, torch.ones(4, dtype=torch.bool))
    advantages, returns = noise() * mask, (values + noise()) * mask
    grads, stats, unsynced = {}, {}, {}
    for micro in (1, 4):
        unsynced[micro] = []
        trainer.accelerator.no_sync = lambda model, seen=unsynced[micro]: seen.append(model) or contextlib.nullcontext()
        stats[micro] = trainer.minibatch_backward(ro, advantages, returns, torch.tensor([2, 0, 3, 1]), micro)
        grads[micro] = {name: p.grad.clone() for model in (trainer.policy, trainer.value)
                        for name, p in model.named_parameters() if p.grad is not None}
        for model in (trainer.policy, trainer.value):
            model.zero_grad(set_to_none=True)
    assert mask.sum(1).tolist() == lengths and grads[1].keys() == grads[4].keys()
    # Under DDP the gradients are all-reduced by the last micro-batch's backward only, not once per micro-batch.
    assert unsynced == {1: [trainer.policy, trainer.value] * 3, 4: []}
    for model in (trainer.policy, trainer.value):
        assert any(grads[4][n].abs().sum() > 0 for n, p in model.named_parameters() if p.requires_grad)
    for name, grad in grads[4].items():
        assert (grads[1][name] - grad).norm() <= 1e-5 * grad.norm() + 1e-9, name  # float32 summation order
    for name, value in stats[4].items():
        assert stats[1][name].item() == pytest.approx(value.item(), rel=1e-5, abs=1e-7), name
    assert 0 < stats[4]["clipfrac"] < 1 and 0 < stats[4]["vf_clipfrac"] < 1  # the clipped branches are exercised


# --------------------------------------------------------------------------------------------------------------------
# ppo-whiten-single-token


def test_whitening_a_single_token_is_finite():
    result = subprocess.run([sys.executable, str(CASES / "ppo-whiten-single-token" / "check.py")], cwd=REPO,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert L.masked_whiten(torch.tensor([[0.37]]), torch.tensor([[1]])).tolist() == [[0.0]]


def test_one_prompt_per_rollout_with_one_token_replies_trains(tiny_model_dir, tmp_path, monkeypatch):
    """The case's command (batch_size 1, max_new_tokens 1, LoRA): two steps with finite losses, and metrics.jsonl
    holds no nan (explained_variance is undefined over one token: null)."""
    case = CASES / "ppo-whiten-single-token"
    monkeypatch.syspath_prepend(str(case))
    out = tmp_path / "ppo"
    m = run(PPOConfig(prompts=str(case / "prompts.jsonl"), out=str(out), policy=str(tiny_model_dir),
                      reward_fn=["case_rewards:length"], batch_size=1, max_new_tokens=1, steps=2, lora=True,
                      device="cpu"), progress=False)
    rows = list(read_jsonl(out / "metrics.jsonl"))
    assert [r["step"] for r in rows] == [1, 2] and m["step"] == 2
    for row in rows:
        assert row["response_length"] == 1 and row["explained_variance"] is None
        assert math.isfinite(row["policy_loss"]) and math.isfinite(row["value_loss"])
        assert all(math.isfinite(v) for v in row.values() if isinstance(v, float))
    assert (out / "model.safetensors").is_file()


# --------------------------------------------------------------------------------------------------------------------
# precision: float32 master weights, bf16 only as autocast


def test_trainable_weights_are_float32_where_auto_would_pick_bf16(config, tiny_model_dir, tmp_path, monkeypatch):
    """The loaders' "auto" dtype made bf16 (as on a bf16 GPU): every trainable weight PPO builds is still float32,
    and so is the reference copy, which must compute what the policy computes."""
    import rlaif.models
    import rlaif.reward

    load_model, load_backbone = rlaif.models.load_model, rlaif.reward.load_backbone
    monkeypatch.setattr(rlaif.models, "load_model", lambda spec, *, dtype="auto", **kw: load_model(
        spec, dtype="bfloat16" if dtype == "auto" else dtype, **kw))
    monkeypatch.setattr(rlaif.reward, "load_backbone", lambda spec, device, dtype="auto": load_backbone(
        spec, device, "bfloat16" if dtype == "auto" else dtype))
    assert rlaif.models.load_model(str(tiny_model_dir), device="cpu")[0].dtype == torch.bfloat16
    rm = reward_model(tiny_model_dir, tmp_path / "rm", None)
    for lora in (False, True):
        for shared in (False, True):
            policy, reference, value, _ = build_models(replace(config, reward_model=[str(rm)], lora=lora,
                                                               shared_value_head=shared), CPU)
            trainable = [p for m in (policy, value) for p in m.parameters() if p.requires_grad]
            assert trainable and all(p.dtype == torch.float32 for p in trainable), (lora, shared)
            assert reference is None or all(p.dtype == torch.float32 for p in reference.parameters())


@pytest.fixture
def bf16_autocast(monkeypatch):
    """accelerate's mixed_precision bf16 (autocast, which works on the CPU), as `accelerate launch --mixed_precision
    bf16` sets it."""
    from accelerate.state import AcceleratorState

    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    AcceleratorState._reset_state(True)
    yield
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION")
    AcceleratorState._reset_state(True)


def test_fp16_mixed_precision_is_refused_before_the_run_starts(config, monkeypatch):
    """fp16's loss scaler, shared by the policy's and the value's optimizers, would unscale twice per minibatch."""
    from accelerate.state import AcceleratorState

    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")  # as `accelerate launch --mixed_precision fp16` sets it
    AcceleratorState._reset_state(True)
    try:
        with pytest.raises(ConfigError, match="fp16 mixed precision is not supported.*--mixed_precision bf16"):
            run(config, progress=False)
    finally:
        monkeypatch.delenv("ACCELERATE_MIXED_PRECISION")
        AcceleratorState._reset_state(True)
    assert not Path(config.out).exists()


@pytest.mark.parametrize("lora", [False, True])
def test_bf16_autocast_first_step_has_kl_zero_and_ratio_one(config, bf16_autocast, lora):
    """With learning rate 0 the policy is the reference: under bf16 autocast their log-probabilities come from the
    same computation, so the KL is 0, and with the rollout as one minibatch the training pass is that computation
    too: the ratio is 1. (The log-probabilities of decoding, bf16 from a KV cache, give a KL of 0.02-0.05 here; a
    minibatch of other rows is a tensor of another shape, which bf16 rounds otherwise, by about 1e-3 in the ratio.)"""
    m = run(replace(config, learning_rate=0.0, lora=lora, minibatches=1), progress=False)
    assert m["kl"] == 0.0 and m["approx_kl"] == 0.0
    assert m["ratio_mean"] == pytest.approx(1.0, abs=1e-6) and m["ratio_max"] == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("shared", [False, True])
def test_bf16_autocast_rollout_reads_hidden_states_only_for_a_shared_head(config, bf16_autocast, monkeypatch, shared):
    """Under mixed precision the rollout runs the policy once more for the old log-probabilities; the hidden states
    of that pass are kept only when a shared value head reads them."""
    import rlaif.ppo.trainer

    calls = []

    def spy(model, batch, hidden=False):
        calls.append(hidden)
        return response_logits(model, batch, hidden=hidden)

    monkeypatch.setattr(rlaif.ppo.trainer, "response_logits", spy)
    trainer = PPOTrainer(replace(config, shared_value_head=shared), Accelerator(cpu=True), reward=zero_reward())
    assert trainer.accelerator.mixed_precision == "bf16"
    trainer.rollout([[{"role": "user", "content": p}] for p in PROMPTS[:2]], seed=0)
    assert calls == [shared, False]  # the policy's pass, then the reference's


# --------------------------------------------------------------------------------------------------------------------
# review, not a defect: with LoRA the reference (adapter off) is the base model


def test_lora_reference_with_the_adapter_off_is_the_base_model(config, tiny_model_dir):
    from rlaif.models import load_model

    policy, reference, _, _ = build_models(replace(config, lora=True, shared_value_head=True), CPU)
    base, _ = load_model(str(tiny_model_dir), device="cpu", dtype="float32")
    batch = pack([[5, 6, 7], [8]], [[9, 10], [11, 12, 13]], pad_id=0)
    with torch.no_grad():
        for name, parameter in policy.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.5, generator=torch.Generator().manual_seed(0))
        on = response_logits(policy, batch)
        with policy.disable_adapter():
            off = response_logits(policy, batch)
        plain = response_logits(base, batch)
    assert reference is None and (on - off).abs().max() > 0.1
    assert torch.equal(off, plain)
