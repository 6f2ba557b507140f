"""PPO trainer: batch layout, the first ratio, a toy task whose reward rises at bounded KL, the adaptive beta, exact
resume after a kill, guards, reward sources, LoRA, a value head shared with the policy, the reward-hacking monitors
(a reward paying for length warned about, a judge's gap), and two processes under accelerate launch."""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import accelerate_launch, build_tiny_model

from rlaif.ppo import monitors as M
from rlaif.ppo.config import PPOConfig, check_alone
from rlaif.ppo.rollout import CombinedReward, pack, response_logits
from rlaif.ppo.trainer import PPOStopped, prompt_order, run
from rlaif.records import ConfigError, DataError, Manifest, read_jsonl, split_weight

TESTS = Path(__file__).resolve().parent
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
                     reward_fn=["toy_rewards:fl"], steps=2, batch_size=8, minibatches=2, max_new_tokens=12,
                     learning_rate=1e-3, lr_schedule="constant", device="cpu", save_steps=1)


@pytest.fixture(scope="module")
def chatty_model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    from test_monitors import build_chatty_model

    return build_chatty_model(tiny_model_dir, tmp_path_factory.mktemp("chatty-model"))


def metrics(out: str) -> list[dict]:
    return list(read_jsonl(Path(out) / "metrics.jsonl"))


def test_pack_lays_prompts_left_and_responses_right():
    batch = pack([[5, 6, 7], [8]], [[1, 2], [3, 4, 9, 9]], pad_id=0)
    assert batch.input_ids.tolist() == [[5, 6, 7, 1, 2, 0, 0], [0, 0, 8, 3, 4, 9, 9]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1, 1]]
    assert batch.position_ids[1, 2:].tolist() == [0, 1, 2, 3, 4]  # real tokens only
    assert batch.response.tolist() == [[1, 2, 0, 0], [3, 4, 9, 9]]
    assert batch.mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
    one = batch.select(torch.tensor([1]))  # its prompt is short and its response long: nothing to cut but the left
    assert one.input_ids.tolist() == [[8, 3, 4, 9, 9]] and one.position_ids.tolist() == [[0, 1, 2, 3, 4]]
    zero = batch.select(torch.tensor([0]))
    assert zero.input_ids.tolist() == [[5, 6, 7, 1, 2]] and zero.mask.tolist() == [[1, 1]]


def test_prompt_order_is_a_function_of_the_step():
    first_epoch = prompt_order(10, 0, 5, seed=3) + prompt_order(10, 1, 5, seed=3)
    assert sorted(first_epoch) == list(range(10))  # an epoch visits every prompt once
    assert prompt_order(10, 1, 5, seed=3) == prompt_order(10, 1, 5, seed=3)
    assert prompt_order(10, 2, 5, seed=3) != prompt_order(10, 0, 5, seed=3)  # a new permutation each epoch
    assert len(prompt_order(3, 0, 7, seed=0)) == 7  # a batch larger than the prompt set wraps around


def test_split_weight_and_combined_reward():
    assert split_weight("runs/x/rm:2.5") == ("runs/x/rm", 2.5)
    assert split_weight("pkg.mod:fn") == ("pkg.mod:fn", 1.0)
    assert split_weight("pkg.mod:fn:0.5") == ("pkg.mod:fn", 0.5)
    assert split_weight("len:-0.1") == ("len", -0.1)  # a reward can be a penalty
    for spec in ("toy:nan", "toy:inf", "toy:-inf"):
        with pytest.raises(DataError, match=r"toy: weight: expected a finite number"):
            split_weight(spec)
    reward = CombinedReward([("len", lambda p, r: [len(x) for x in r], 0.5), ("one", lambda p, r: [1.0] * len(r), 2)])
    assert reward([[], []], ["ab", "abcd"]).tolist() == [3.0, 4.0]
    assert reward.last["len"].tolist() == [2.0, 4.0]
    with pytest.raises(ConfigError, match="returned"):
        CombinedReward([("bad", lambda p, r: [1.0], 1.0)])([[], []], ["a", "b"])


@pytest.mark.parametrize("shared", [False, True])
def test_first_update_starts_at_ratio_one(config, shared):
    """With a learning rate of 0, the policy that is trained is the one that sampled: every ratio is 1 and the KL
    to the reference (the same weights) is 0. This checks that the sampling log-probabilities line up with the
    training forward pass token for token (also when that pass feeds a shared value head)."""
    m = run(replace(config, learning_rate=0.0, steps=1, shared_value_head=shared), progress=False)
    assert m["ratio_mean"] == pytest.approx(1.0, abs=1e-5) and m["ratio_max"] == pytest.approx(1.0, abs=1e-4)
    assert m["clipfrac"] == 0.0 and abs(m["approx_kl"]) < 1e-6 and abs(m["kl"]) < 1e-4
    assert m["response_length"] == 12 and m["samples_per_second"] > 0


@pytest.mark.parametrize("shared, steps", [(False, 24), (True, 36)])
def test_toy_reward_rises_at_bounded_kl_and_beta_adapts(config, shared, steps):
    """A scripted reward that counts the letters "fl" in a response: PPO on the tiny model raises it within a few
    dozen steps while the KL stays bounded, and beta rises because the KL runs above its (low) target. Also with
    the value as a head on the policy's trunk, which starts at zero and learns more slowly at first."""
    m = run(replace(config, steps=steps, kl_coef=0.05, kl_target=1.0, kl_horizon=200, save_steps=100,
                    shared_value_head=shared), progress=False)
    rows = metrics(config.out)
    assert [r["step"] for r in rows] == list(range(1, steps + 1))
    early = sum(r["score"] for r in rows[:6]) / 6
    late = sum(r["score"] for r in rows[-6:]) / 6
    assert late > early + 0.15, (early, late)
    assert max(r["kl"] for r in rows) < config.max_kl
    assert rows[0]["beta"] == 0.05 and m["beta"] > 0.05  # KL above target pushes beta up
    assert all(r["kl"] > 1.0 for r in rows[-6:])
    value = Path(config.out) / "value" / ("value_head.safetensors" if shared else "config.json")
    assert (Path(config.out) / "model.safetensors").is_file() and value.is_file()
    samples = list(read_jsonl(Path(config.out) / "samples.jsonl"))
    assert {s["step"] for s in samples} == {1, *range(10, steps + 1, 10)}
    assert all(isinstance(s["response"], str) for s in samples)


@pytest.mark.parametrize("shared, killed_at", [(False, 3), (True, 3), (False, 1)])
def test_resume_after_kill_repeats_the_same_steps(config, tmp_path, shared, killed_at):
    """Kill after step 3 (checkpoint at step 2) or after step 1 (no checkpoint yet, the eval before training
    written), rerun: the steps and evals redone come out as in an uninterrupted run, and every step and eval is
    written once. With a value model, or a value head on the policy's trunk."""
    eval_prompts = tmp_path / "eval.txt"
    eval_prompts.write_text("\n".join(PROMPTS[:3]) + "\n")
    full = replace(config, steps=4, save_steps=2, out=str(tmp_path / "full"), shared_value_head=shared,
                   eval_prompts=str(eval_prompts), eval_every=2)
    run(full, progress=False)

    killed = replace(full, out=str(tmp_path / "killed"))

    def kill(step, _metrics):
        if step == killed_at:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(killed, progress=False, on_step=kill)
    assert [r["step"] for r in metrics(killed.out)] == list(range(1, killed_at + 1))
    run(killed, progress=False)
    a, b = metrics(full.out), metrics(killed.out)
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    for name in ("policy_loss", "value_loss", "score", "kl", "entropy", "approx_kl", "beta"):
        for step in range(killed_at - 1, 4):
            assert b[step][name] == pytest.approx(a[step][name], abs=1e-6), (name, step + 1)
    evals = [list(read_jsonl(Path(c.out) / "eval.jsonl")) for c in (full, killed)]
    assert [e["step"] for e in evals[0]] == [e["step"] for e in evals[1]] == [0, 2, 4]
    for e, f in zip(*evals):
        assert f["score"] == pytest.approx(e["score"], abs=1e-6) and f["kl"] == pytest.approx(e["kl"], abs=1e-6)
    assert run(killed, progress=False)["step"] == 4  # finished: a rerun does nothing


def test_nan_reward_stops_with_checkpoint_and_advice(config):
    with pytest.raises(PPOStopped, match=r"step 1: a reward is NaN.*Checkpoint: .*step-0.*Try: check the reward"):
        run(replace(config, reward_fn=["toy_rewards:not_a_number"]), progress=False)
    assert (Path(config.out) / "checkpoints" / "step-0" / "trainer_state.json").is_file()


def test_runaway_kl_stops(config):
    with pytest.raises(PPOStopped, match="mean KL to the reference is .* past max_kl"):
        run(replace(config, steps=6, learning_rate=3e-3, max_kl=0.5, max_ratio=1e9), progress=False)


def test_exploding_ratio_stops_mid_step_and_keeps_that_state_apart(config):
    with pytest.raises(PPOStopped, match=r"probability ratio reached .* past max_ratio 0.5.*stopped-step-1"):
        run(replace(config, max_ratio=0.5), progress=False)
    checkpoints = Path(config.out) / "checkpoints"
    assert (checkpoints / "stopped-step-1" / "trainer_state.json").is_file()
    assert not (checkpoints / "step-1").exists()  # a rerun resumes from the last whole step, not from here


@pytest.mark.parametrize("setting, error", [
    ({"save_steps": 0}, "save_steps: expected a finite number >= 1, got 0"),
    ({"steps": 0}, "steps: expected a finite number >= 1, got 0"),
    ({"gamma": 2}, "gamma: expected a finite number between 0 and 1, got 2"),
    ({"lam": -1}, "lam: expected a finite number between 0 and 1, got -1"),
    ({"clip_range": -0.2}, "clip_range: expected a finite number > 0, got -0.2"),
    ({"kl_coef": -1}, "kl_coef: expected a finite number >= 0, got -1"),
    ({"max_grad_norm": 0}, "max_grad_norm: expected a finite number > 0, got 0"),
    ({"learning_rate": -1e-5}, "learning_rate: expected a finite number >= 0, got -1e-05"),
    ({"temperature": math.nan}, "temperature: expected a finite number > 0, got nan"),
    ({"temperature": 0.0}, "temperature: expected a finite number > 0, got 0"),
    ({"vf_coef": math.nan}, "vf_coef: expected a finite number >= 0, got nan"),
    ({"top_p": 0.0}, "top_p: expected a share in (0, 1], got 0"),
    ({"minibatches": 3}, "minibatches: 3 does not divide batch_size 8"),
    ({"micro_batch_size": 0}, "micro_batch_size: expected a finite number >= 1, got 0"),
    ({"kl_estimator": "k4"}, "kl_estimator: expected k1 or k2 or k3, not 'k4'"),
    ({"lora_r": 8}, "lora_r: used only with lora: true (--lora)"),
    ({"kl_target": None, "kl_horizon": 500}, "kl_horizon: the adaptive beta's horizon, not used with a fixed beta"),
    ({"shared_value_head": True, "value_model": "x"}, "value_model: a shared value head sits on the policy"),
    ({"monitor_length_corr": 1.5}, "monitor_length_corr: expected a finite number between 0 and 1, got 1.5"),
    ({"monitor_truncated": -0.1}, "monitor_truncated: expected a finite number between 0 and 1, got -0.1"),
    ({"monitor_min_replies": 0}, "monitor_min_replies: expected a finite number >= 1, got 0"),
    ({"monitor_gap_rise": 2.0}, "monitor_gap_rise: the judge gap's threshold, used only with a judge"),
])
def test_settings_out_of_range_or_without_effect_are_refused_when_the_config_is_built(setting, error):
    with pytest.raises((DataError, ConfigError)) as raised:
        PPOConfig(prompts="p.txt", **setting)
    assert error in str(raised.value)


def test_config_errors(config):
    with pytest.raises(ConfigError, match="no reward|reward:"):
        run(replace(config, reward_fn=[]), progress=False)
    with pytest.raises(ConfigError, match="cannot import"):
        run(replace(config, reward_fn=["toy_rewards:missing"]), progress=False)
    with pytest.raises(ConfigError, match="trainer uses the first visible GPU; select it with CUDA_VISIBLE_DEVICES=1"):
        run(replace(config, device="cuda:1"), progress=False)
    assert not Path(config.out).exists()  # every error before the stage directory is made


def test_a_reward_model_is_not_a_value_model_and_its_scores_are_normalised_or_refused(tmp_path):
    from rlaif.ppo.build import reward_normalisation

    (tmp_path / "rm").mkdir()
    (tmp_path / "rm" / "reward_stats.json").write_text('{"mean": 1.0, "std": 2.0}')
    with pytest.raises(ConfigError, match="is a reward model .*Leave value_model out"):
        PPOConfig(prompts="p.txt", value_model=str(tmp_path / "rm"))
    assert reward_normalisation("rm", {"mean": 1.0, "std": 2.0}, True) == (1.0, 2.0)
    assert reward_normalisation("rm", None, False) == (0.0, 1.0)
    with pytest.raises(ConfigError, match="rm: no reward_stats.json .*normalize_reward: false"):
        reward_normalisation("rm", None, True)
    with pytest.raises(ConfigError, match="would divide by zero"):
        reward_normalisation("rm", {"mean": 0.0, "std": 0.0}, True)


def test_reward_model_with_another_tokenizer_weighted_sum_and_eos_penalty(config, tmp_path, prompts):
    """The reward model reads text, so one with its own tokenizer works; parts are weighted and summed; responses
    cut off before EOS lose missing_eos_penalty."""
    from rlaif.reward import load_backbone

    other = build_tiny_model(tmp_path / "other", vocab_size=320, seed=1)
    classifier, tokenizer = load_backbone(str(other), "cpu")
    classifier.save_pretrained(tmp_path / "rm", safe_serialization=True)
    tokenizer.save_pretrained(tmp_path / "rm")
    m = run(replace(config, steps=1, reward_model=[f"{tmp_path / 'rm'}:0.5"], normalize_reward=False, missing_eos_penalty=1.0,
                    eval_prompts=str(prompts)), progress=False)
    rm, fn = m["score/rm:rm"], m["score/toy_rewards:fl"]
    assert m["score"] == pytest.approx(0.5 * rm + fn - (1 - m["eos_rate"]), abs=1e-5)
    evals = list(read_jsonl(Path(config.out) / "eval.jsonl"))
    assert [e["step"] for e in evals] == [0, 1] and evals[0]["prompts"] == len(PROMPTS)


def test_monitors_in_every_row_and_a_reward_paying_for_length_warned_about_once(config, chatty_model_dir, capsys):
    """A reward that pays for characters: the score follows the reply's length in tokens. With windows of a step
    (monitor_min_replies 8, to keep the run short), step 1 is one window, too few to warn on; step 2 confirms it
    and warns, in its row, on stderr (once), in the manifest. One more step, resumed from step 2's checkpoint,
    replays the rows it keeps: the warning is not printed again, its tally goes on."""
    by_length = CombinedReward([("length", lambda p, r: [len(x) / 10 for x in r], 1.0)])
    chatty = replace(config, policy=str(chatty_model_dir), reward_fn=[], steps=2, monitor_min_replies=8)
    m = run(chatty, progress=False, reward=by_length)
    rows = metrics(chatty.out)
    for row in rows:
        assert {M.LENGTH, M.SCORE_STD, M.LENGTH_STD, M.KL, M.TRUNCATED, M.REPLIES, "warnings"} <= row.keys()
        assert row[M.REPLIES] == 8 and row[M.SCORE_STD] > 0 and row[M.LENGTH_STD] > 0
        assert row[M.LENGTH] > 0.5 and 0 < row[M.TRUNCATED] < 1  # some replies stop, some are cut off
        assert row[M.KL] is None or -1 <= row[M.KL] <= 1
    assert rows[0]["warnings"] == [] and [w.split(":")[0] for w in rows[1]["warnings"]] == ["score_length_corr"]
    err = capsys.readouterr().err
    assert err.count("score_length_corr:") == 1 and "ppo step 2: score_length_corr: the score rises with reply length" in err
    manifest = Manifest.load(chatty.out)
    assert manifest.counts["monitor_warnings"] == 1 and m["monitor_warnings"] == manifest.extra["monitor_warnings"]
    assert manifest.extra["monitor_warnings"]["score_length_corr"]["first_step"] == 2

    run(replace(chatty, steps=3), progress=False, reward=by_length)
    assert "score_length_corr" not in capsys.readouterr().err
    rows = metrics(chatty.out)
    assert [r["step"] for r in rows] == [1, 2, 3]
    tally = Manifest.load(chatty.out).extra["monitor_warnings"]["score_length_corr"]
    assert tally["first_step"] == 2 and tally["steps"] == sum(
        any(w.startswith("score_length_corr:") for w in r["warnings"]) for r in rows)


def test_judge_scores_the_eval_replies_and_the_gap_compares_normalised_scores(config, tiny_model_dir, prompts,
                                                                             tmp_path):
    """The judge is the training reward model with reward_stats.json one std higher: normalised, each of its scores
    is the training reward's minus 1, so the gap is exactly 1 at every eval, and it does not widen: no warning."""
    from rlaif.reward import load_backbone

    classifier, tokenizer = load_backbone(str(tiny_model_dir), "cpu")
    classifier.save_pretrained(tmp_path / "rm", safe_serialization=True)
    tokenizer.save_pretrained(tmp_path / "rm")
    shutil.copytree(tmp_path / "rm", tmp_path / "judge")
    (tmp_path / "rm" / "reward_stats.json").write_text('{"mean": 0.5, "std": 2.0}')
    (tmp_path / "judge" / "reward_stats.json").write_text('{"mean": 2.5, "std": 2.0}')
    judged = replace(config, steps=1, reward_fn=[], reward_model=[str(tmp_path / "rm")],
                     monitor_judge=str(tmp_path / "judge"), eval_prompts=str(prompts))
    run(judged, progress=False)
    evals = list(read_jsonl(Path(config.out) / "eval.jsonl"))
    assert [e["step"] for e in evals] == [0, 1]
    for e in evals:
        assert e[M.GAP] == pytest.approx(1.0, abs=1e-5) and e[M.JUDGE] == pytest.approx(e["score"] - 1, abs=1e-5)
    row = metrics(config.out)[0]
    assert row[M.GAP] == evals[1][M.GAP] and row[M.JUDGE] == evals[1][M.JUDGE] and row["warnings"] == []
    with pytest.raises(ConfigError, match=r"monitor_judge: used only with eval prompts"):
        check_alone(replace(judged, eval_prompts=None))


def test_direct_score_reward_tensorboard_and_value_from_reward_model(config, tiny_model_dir, tmp_path):
    """The labeler's 1-10 score as a reward (in [-1, 1]); metrics also go to TensorBoard; the value model is the
    reward model's backbone with a zero head (saved unchanged at learning rate 0), a plain classifier."""
    from safetensors.torch import load_file

    from rlaif.reward import load_backbone

    classifier, tokenizer = load_backbone(str(tiny_model_dir), "cpu")
    classifier.save_pretrained(tmp_path / "rm", safe_serialization=True)
    tokenizer.save_pretrained(tmp_path / "rm")
    (tmp_path / "rm" / "reward_stats.json").write_text('{"mean": 0.5, "std": 2.0, "responses": 4}')  # as rlaif reward
    labeler = tmp_path / "labeler"  # the tiny model with room for the rubric, which its byte-level tokens make long
    shutil.copytree(tiny_model_dir, labeler)
    settings = json.loads((labeler / "config.json").read_text())
    (labeler / "config.json").write_text(json.dumps({**settings, "max_position_embeddings": 8192}))
    m = run(replace(config, steps=1, learning_rate=0.0, reward_fn=[], reward_model=[f"{tmp_path / 'rm'}:0"],
                    reward_score=str(labeler), log_with="tensorboard"), progress=False)
    score = m[f"score/score:{labeler}"]
    assert -1.0 <= score <= 1.0 and m["score"] == pytest.approx(score, abs=1e-6)  # the reward model weighs 0
    assert list((Path(config.out) / "ppo").glob("events.out.tfevents.*"))
    value = load_file(Path(config.out) / "value" / "model.safetensors")
    reward = load_file(tmp_path / "rm" / "model.safetensors")
    assert value.keys() == reward.keys() and reward["score.weight"].abs().sum() > 0
    assert all(torch.equal(value[k], reward[k]) for k in value if k != "score.weight")  # lr 0: unchanged
    assert torch.equal(value["score.weight"], torch.zeros_like(reward["score.weight"]))
    assert "value_bias" not in json.loads((Path(config.out) / "value" / "config.json").read_text())


def test_shared_value_head_reads_the_hidden_states_of_the_language_model_head(tiny):
    """response_logits(hidden=True) hands back the states the LM head turned into those logits, so a value head on
    them sits on exactly the policy's trunk."""
    model, _ = tiny
    batch = pack([[5, 6, 7], [8]], [[9, 10], [11, 12, 13]], pad_id=0)
    logits, hidden = response_logits(model, batch, hidden=True)
    assert hidden.shape == (*batch.response.shape, model.config.hidden_size)
    assert torch.allclose(model.get_output_embeddings()(hidden), logits, atol=1e-5)
    assert torch.equal(response_logits(model, batch), logits)


def test_shared_value_head_trains_with_lora_and_is_saved(config):
    from safetensors.torch import load_file

    m = run(replace(config, lora=True, shared_value_head=True, steps=2), progress=False)
    assert m["step"] == 2 and math.isfinite(m["value_loss"])
    head = load_file(Path(config.out) / "value" / "value_head.safetensors")["score.weight"]
    assert head.abs().sum() > 0  # it started at zero: the value loss trained it


def test_lora_reference_is_the_adapter_off(config):
    m = run(replace(config, lora=True, steps=2, learning_rate=0.0), progress=False)
    assert abs(metrics(config.out)[0]["kl"]) < 1e-4 and m["ratio_mean"] == pytest.approx(1.0, abs=1e-5)
    from rlaif.models import load_model

    model, _ = load_model(config.out, device="cpu")  # the adapter is merged: a plain model directory
    assert not any("lora" in name for name, _ in model.named_parameters())


def test_cli_under_accelerate_launch_with_two_processes(tiny_model_dir, prompts, tmp_path):
    """Also with 3 eval prompts in batches of 4: all of them on one process, none on the other; and a tracker
    (tensorboard), which the main process alone writes and ends before the final save's collectives."""
    out = tmp_path / "ddp"
    eval_prompts = tmp_path / "eval.txt"
    eval_prompts.write_text("\n".join(PROMPTS[:3]) + "\n")
    env = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    command = ["--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "rlaif", "ppo", "--policy",
               str(tiny_model_dir), "--reward-fn", "toy_rewards:fl", "--prompts", str(prompts), "--out", str(out),
               "--steps", "2", "--batch-size", "4", "--max-new-tokens", "8", "--save-steps", "1", "--device", "cpu",
               "--eval-prompts", str(eval_prompts), "--log-with", "tensorboard"]
    result = accelerate_launch(command, env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("✓ step 2") == 1  # one process reports
    assert len(list(out.glob("ppo/events.out.tfevents.*"))) == 1
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["counts"]["processes"] == 2
    assert {p.name for p in (out / "checkpoints" / "step-2").glob("random_states_*")} == {
        "random_states_0.pkl", "random_states_1.pkl"}
    assert [r["step"] for r in metrics(str(out))] == [1, 2]
    # the linear schedule counts PPO steps, not processes: halfway after step 1 of 2 (accelerate would step a
    # prepared scheduler once per process, 0 already)
    assert [r["lr"] for r in metrics(str(out))] == pytest.approx([0.5e-5, 0.0])
    evals = list(read_jsonl(out / "eval.jsonl"))
    assert [e["step"] for e in evals] == [0, 2] and all(e["prompts"] == 3 for e in evals)


def test_fsdp_trains_as_ddp_does_and_resumes_from_its_sharded_checkpoints(tiny_model_dir, prompts, tmp_path):
    """fsdp: true with two CPU processes (torch's FSDP2 over gloo): three steps, the first two in one run and the
    third after a resume from the sharded checkpoint, give the metrics and the final policy of three steps under DDP.
    The 5 eval prompts in batches of 2 are three batches, two on the first process and one on the second: under FSDP
    the second repeats one, so that the processes' all-gathers match, and scores nothing from it."""
    eval_prompts = tmp_path / "eval.txt"
    eval_prompts.write_text("\n".join(PROMPTS[:5]) + "\n")
    env = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    settings = tmp_path / "ppo.yaml"
    settings.write_text("lr_schedule: constant\n")  # the same learning rate at step 3 whether 2 or 3 are planned

    def launch(out: Path, steps: int, *extra: str) -> None:
        command = ["--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                   "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "rlaif", "ppo", "--policy",
                   str(tiny_model_dir), "--reward-fn", "toy_rewards:fl", "--prompts", str(prompts), "--out", str(out),
                   "--steps", str(steps), "--batch-size", "2", "--max-new-tokens", "8", "--save-steps", "1",
                   "--learning-rate", "1e-3", "--device", "cpu", "--eval-prompts", str(eval_prompts),
                   "--eval-every", "1", "--config", str(settings), *extra]
        result = accelerate_launch(command, env)
        assert result.returncode == 0, "\n".join(line for line in result.stderr.splitlines() if "Warning" not in line)[-3000:]

    launch(tmp_path / "ddp", 3)
    launch(tmp_path / "fsdp", 2, "--fsdp")
    checkpoint = tmp_path / "fsdp" / "checkpoints" / "step-2"
    assert (checkpoint / "fsdp" / "__1_0.distcp").is_file()
    schedulers = json.loads((checkpoint / "trainer_state.json").read_text())["schedulers"]
    assert [s["last_epoch"] for s in schedulers] == [2, 2]  # restored on resume, with the optimizers' shards
    launch(tmp_path / "fsdp", 3, "--fsdp")  # resumed at step 2
    ddp, sharded = metrics(str(tmp_path / "ddp")), metrics(str(tmp_path / "fsdp"))
    assert [r["step"] for r in sharded] == [1, 2, 3]
    for a, b in zip(ddp, sharded):
        for key in ("score", "kl", "policy_loss", "value_loss", "response_length"):
            assert b[key] == pytest.approx(a[key], rel=1e-3, abs=1e-4), (a["step"], key)
    evals = [list(read_jsonl(tmp_path / name / "eval.jsonl")) for name in ("ddp", "fsdp")]
    assert [e["prompts"] for e in evals[1]] == [5, 5, 5, 5]
    assert [e["score"] for e in evals[1]] == pytest.approx([e["score"] for e in evals[0]], rel=1e-3, abs=1e-4)
    from safetensors.torch import load_file

    want, got = load_file(tmp_path / "ddp" / "model.safetensors"), load_file(tmp_path / "fsdp" / "model.safetensors")
    start = load_file(tiny_model_dir / "model.safetensors")
    assert want.keys() == got.keys()
    assert max((want[k] - start[k]).abs().max() for k in want) > 1e-3  # trained
    assert max((want[k] - got[k]).abs().max() for k in want) < 1e-4
    config = json.loads((tmp_path / "fsdp" / "config.json").read_text())
    assert config["architectures"] == json.loads((tmp_path / "ddp" / "config.json").read_text())["architectures"]
    assert (tmp_path / "fsdp" / "value" / "model.safetensors").is_file()


def test_fsdp_refuses_what_it_does_not_do(config, tmp_path):
    with pytest.raises(ConfigError, match=r"^fsdp, lora: "):
        replace(config, fsdp=True, lora=True)
    with pytest.raises(ConfigError, match=r"^fsdp: shards the models across processes, and this run has one"):
        run(replace(config, fsdp=True, out=str(tmp_path / "one")), progress=False)
    assert not (tmp_path / "one").exists()  # refused before anything is written


def test_vllm_rollouts_are_refused_on_several_processes_and_allowed_on_one():
    """One rule for the run (before anything loads) and for `rlaif run`'s plan: vLLM samples in one process."""
    from types import SimpleNamespace

    from rlaif.ppo.config import check_processes

    vllm = SimpleNamespace(engine="vllm", fsdp=False, lora=False)
    check_processes(vllm, 1)
    with pytest.raises(ConfigError, match=r"^engine: vllm samples PPO's rollouts in one process") as refused:
        check_processes(vllm, 2)
    assert refused.value.fields == ["engine"]
    check_processes(SimpleNamespace(engine="rlaif", fsdp=False, lora=False), 4)
