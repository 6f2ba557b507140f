"""PPO's alternatives through TRL: DPO on the preference files, GRPO and RLOO against our reward model, and a recipe
that selects one of them instead of PPO."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlaif.records import DataError, read_jsonl

PROMPTS = ["How do I bake bread?", "Tell me about travel.", "What is science?", "Write a Python function."]


@pytest.fixture
def preferences(tmp_path) -> Path:
    rows = [{"id": f"p{i}", "prompt": [{"role": "user", "content": p}],
             "chosen": [{"role": "assistant", "content": "A kind, careful answer."}],
             "rejected": [{"role": "assistant", "content": "No."}], "p_chosen": 0.8 if i % 2 else 0.9,
             "source": "ai"} for i, p in enumerate(PROMPTS)]
    rows.append({**rows[0], "id": "second", "p_chosen": 0.5})  # a second label of p0's pair
    path = tmp_path / "preferences.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def reward_dir(tmp_path, tiny_model_dir) -> Path:
    from rlaif.reward import load_backbone

    classifier, tokenizer = load_backbone(str(tiny_model_dir), "cpu")
    classifier.save_pretrained(tmp_path / "rm", safe_serialization=True)
    tokenizer.save_pretrained(tmp_path / "rm")
    return tmp_path / "rm"


def changed(before: Path, after: Path) -> bool:
    a, b = load_file(before / "model.safetensors"), load_file(after / "model.safetensors")
    return any(not torch.equal(a[k], b[k]) for k in a if k in b)


def test_dpo_trains_on_confident_pairs_with_robust_loss_from_soft_labels(tmp_path, tiny_model_dir, preferences):
    from rlaif.dpo import DPOConfig, run

    config = DPOConfig(data=[str(preferences)], out=str(tmp_path / "dpo"), policy=str(tiny_model_dir),
                       loss_type="robust", max_steps=2, batch_size=2, learning_rate=1e-3, max_length=64,
                       device="cpu")
    metrics = run(config, progress=False)
    assert metrics["pairs"] == 4 and metrics["steps"] == 2  # p0's two labels train once, at their mean 0.7
    assert metrics["label_smoothing"] == pytest.approx(0.2)  # mean 1 - p_chosen of 0.7, 0.8, 0.9, 0.8
    assert metrics["summary"] == "read 5 labels, used 5; read 4 pairs, used 4"
    manifest = json.loads((tmp_path / "dpo" / "manifest.json").read_text())["counts"]
    assert {k: manifest[k] for k in ("labels_read", "labels_used", "read", "used")} == {
        "labels_read": 5, "labels_used": 5, "read": 4, "used": 4}
    assert changed(tiny_model_dir, tmp_path / "dpo")
    assert run(config, progress=False) == metrics  # finished: a rerun is a no-op

    with pytest.raises(DataError, match=r"read 4 pairs, used 0, left out 4 \(low_confidence 4\); lower "
                                        r"--min-p-chosen \(0.9\)$"):
        run(DPOConfig(data=[str(preferences)], min_p_chosen=0.9, out=str(tmp_path / "x"), policy=str(tiny_model_dir)))
    with pytest.raises(DataError, match=r"every pair has weight 0: nothing to train on; give a file a weight above 0"):
        run(DPOConfig(data=[f"{preferences}:0"], out=str(tmp_path / "x"), policy=str(tiny_model_dir)))
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("algorithm", ["grpo", "rloo"])
def test_grpo_and_rloo_against_our_reward_model(tmp_path, tiny_model_dir, reward_dir, algorithm):
    from rlaif.grpo import GRPOConfig, run

    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    config = GRPOConfig(prompts=str(tmp_path / "prompts.txt"), out=str(tmp_path / algorithm),
                        policy=str(tiny_model_dir), reward_model=[str(reward_dir)], algorithm=algorithm, steps=2,
                        prompts_per_step=2, group_size=2, max_new_tokens=8, learning_rate=1e-3, device="cpu")
    run(config, progress=False)
    rows = list(read_jsonl(tmp_path / algorithm / "metrics.jsonl"))
    assert [r["step"] for r in rows] == [1, 2]
    assert all(isinstance(r["score"], float) and r["beta"] == 0.05 and r["response_length"] > 0 for r in rows)
    assert changed(tiny_model_dir, tmp_path / algorithm)
    with pytest.raises(DataError, match="group_size: advantages are relative to the group"):
        run(GRPOConfig(prompts=config.prompts, reward_model=[str(reward_dir)], group_size=1))


def test_recipe_selects_dpo_instead_of_ppo(tmp_path, tiny_model_dir):
    from rlaif.pipeline import plan
    from rlaif.recipe import load_recipe

    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    (tmp_path / "human.jsonl").write_text(json.dumps({"prompt": "Hi?", "chosen": "Hello!", "rejected": "Go."}) + "\n")
    text = f"name: alt\nout: {tmp_path / 'runs'}\nmodel: {tiny_model_dir}\nprompts: prompts.txt\nhuman: [human.jsonl:3]\n"
    (tmp_path / "recipe.yaml").write_text(text + "rounds: 2\npolicy_trainer: dpo\ndpo: {lora: true}\n")
    steps = {(s.round, s.stage): s for s in plan(load_recipe(tmp_path / "recipe.yaml"))}
    assert (2, "ppo") not in steps and steps[2, "dpo"].config.policy == str(tmp_path / "runs" / "round-1" / "dpo")
    # The labels at the reward model's weights: DPO mixes them as it does.
    assert steps[2, "dpo"].config.data == steps[2, "reward"].config.data == [
        f"{tmp_path / 'runs' / f'round-{k}' / 'label' / 'preferences.jsonl'}:1.0" for k in (1, 2)] + [
        f"{steps[1, 'rankings'].config.out}:3.0"]
    # Before it runs, the recipe says that DPO does not weigh the AI labels, and without human files that nothing
    # measures them.
    from rlaif.recipe import label_notes

    assert label_notes(load_recipe(tmp_path / "recipe.yaml")) == [(
        "policy_trainer dpo trains on the AI labels of smollm2-135m-instruct at ai_weight 1.0, whatever the labeler "
        "check finds: DPO neither calibrates them nor weighs them by their agreement with the human pairs. The reward "
        "stage does, under policy_trainer ppo, grpo or rloo")]
    plain = label_notes(load_recipe(tmp_path / "recipe.yaml", {"human": []}))
    assert len(plain) == 1 and plain[0].startswith("the AI labels of smollm2-135m-instruct train as given, unmeasured")
    assert label_notes(load_recipe(tmp_path / "recipe.yaml", {"policy_trainer": "ppo"})) == []
    (tmp_path / "recipe.yaml").write_text(text + "policy_trainer: rloo\n")
    steps = {(s.round, s.stage): s for s in plan(load_recipe(tmp_path / "recipe.yaml"))}
    assert steps[1, "grpo"].config.algorithm == "rloo" and steps[1, "grpo"].directory.name == "rloo"
    (tmp_path / "recipe.yaml").write_text(text + "policy_trainer: a2c\n")
    with pytest.raises(DataError, match="recipe.yaml:6: policy_trainer: expected one of ppo, dpo, grpo, rloo"):
        load_recipe(tmp_path / "recipe.yaml")
