"""The models and rewards PPO trains with, built from its config: the policy, the frozen reference (or the LoRA
adapter switched off), the value model (the reward model's backbone with a zero head, or a head on the policy's
trunk), the combined reward, and the monitors' judge. The trainer (rlaif/ppo/trainer.py) calls `build_models`,
`build_reward` and `build_judge`."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from rlaif.ppo.config import PPOConfig
from rlaif.ppo.rollout import CombinedReward, ValueHead, ValueModel, import_function
from rlaif.records import ConfigError, split_weight


def build_reward(config: PPOConfig, device) -> CombinedReward:
    from rlaif.reward import RewardModel

    parts = []
    for spec in config.reward_model:
        path, weight = split_weight(spec)
        model = RewardModel.load(path, device=str(device), dtype="float32" if device.type == "cpu" else "auto")
        reward_normalisation(path, model.stats, config.normalize_reward)  # refuses missing or degenerate stats
        parts.append((f"rm:{Path(path).name}", lambda p, r, m=model: m.score(p, r, normalize=config.normalize_reward),
                      weight))
    for spec in config.reward_fn:
        target, weight = split_weight(spec)
        parts.append((target, import_function(target), weight))
    if config.reward_score:
        from rlaif.constitution import load_constitution
        from rlaif.models import load_model
        from rlaif.score import DirectScore

        labeler, weight = split_weight(config.reward_score)
        model, tokenizer = load_model(labeler, device=str(device))
        parts.append((f"score:{labeler}", DirectScore(model, tokenizer, load_constitution(config.constitution)), weight))
    return CombinedReward(parts)


def build_judge(config: PPOConfig, device):
    """The monitors' second reward model (`monitor_judge`, rlaif/ppo/monitors.py), or None. It scores normalised by
    its reward_stats.json when it has one (a degenerate one is refused), raw otherwise."""
    from rlaif.reward import RewardModel

    if not config.monitor_judge:
        return None
    judge = RewardModel.load(config.monitor_judge, device=str(device),
                             dtype="float32" if device.type == "cpu" else "auto")
    if judge.stats:
        reward_normalisation(config.monitor_judge, judge.stats, True)
    return judge


def reward_normalisation(path: str, stats: dict | None, normalize: bool) -> tuple[float, float]:
    """(mean, std) that a reward model's raw score r is mapped by, (r - mean) / std: its reward_stats.json when
    `normalize`, else (0, 1). With `normalize`, no reward_stats.json, or a std that is not a positive number (it
    would divide by zero), is an error: raw scores would reach PPO on another scale than the value's."""
    if not normalize:
        return 0.0, 1.0
    if not stats:
        raise ConfigError(f"reward model {path}: no reward_stats.json to normalise its scores by (rlaif reward writes "
                          "one); set normalize_reward: false to use its raw scores")
    mean, std = float(stats["mean"]), float(stats["std"])
    if not (std > 0 and math.isfinite(std) and math.isfinite(mean)):
        raise ConfigError(f"reward model {path}: reward_stats.json has mean {mean}, std {std}; normalising by it would "
                          "divide by zero. Retrain the reward model or set normalize_reward: false")
    return mean, std


def build_models(config: PPOConfig, device):
    """(policy, reference or None, value model or head, tokenizer). With LoRA the reference is the policy, adapter
    off. Trainable weights are float32 whatever the device (mixed precision is accelerate's autocast; the reference
    stays float32 too, so it computes exactly what the policy computes under the same autocast). Policy and value
    are returned in training mode with every dropout off: transformers checkpoints a layer only in training mode, and
    the ratio pi/pi_old must be 1 before any update."""
    from rlaif.models import load_model

    policy, tokenizer = load_model(config.policy, device=str(device), dtype="float32")
    classifier = None if config.shared_value_head else _value_classifier(config, device, tokenizer)
    reference, adapter = None, None
    if config.lora:
        policy = _lora(config, policy, "CAUSAL_LM")
        if classifier is not None:
            adapter = _lora(config, classifier, "SEQ_CLS")
            classifier = adapter.base_model.model
    else:
        reference, _ = load_model(config.policy, device=str(device), dtype="float32")
        reference.requires_grad_(False)
    for model in (policy, classifier) if config.gradient_checkpointing else ():
        if model is not None:
            _checkpoint(model, config.lora)
    value = ValueHead(policy.config.get_text_config().hidden_size) if classifier is None \
        else ValueModel(classifier, adapter)
    value = value.to(device)
    for model in (policy, value):
        disable_dropout(model)
        model.train()
    return policy, reference, value, tokenizer


def disable_dropout(model: torch.nn.Module) -> None:
    """Every dropout probability in `model` to 0: nn.Dropout modules (as TRL's disable_dropout_in_model), LoRA's among
    them, and the float rates attention implementations read from their module (Llama's `attention_dropout`)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        for name, value in list(vars(module).items()):
            if "dropout" in name and isinstance(value, float):
                setattr(module, name, 0.0)


def _checkpoint(model, lora: bool) -> None:
    """Gradient checkpointing on every decoder layer. With LoRA the frozen embeddings' output must require grad, or a
    reentrant checkpoint would cut the adapters inside it off from the loss (transformers' default is non-reentrant;
    a model or version that uses the reentrant one still trains)."""
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()
    if lora:
        model.enable_input_require_grads()


def _value_classifier(config: PPOConfig, device, tokenizer):
    """The value model's sequence classifier:
    - `value_model`: as saved (e.g. a PPO run's value/), head included, when it is a sequence classifier;
    - else the first reward model's backbone, or (no reward model, or one that reads another tokenizer) the
      policy's, with its head zeroed.
    A zero head makes every value 0 at the start, the mean of a normalised reward, so the value is on the PPO
    reward's scale from the first step, while the reward model's features are kept (lm-human-preferences starts its
    value head, on the policy's trunk, at zero: `fc_layer(..., scale=0 if head_name == 'value' ...)` in
    lm_human_preferences/language/model.py). The reward model's own head would not do: it is trained on the state
    after the whole templated conversation, a state PPO never reads; at the states before each response token that
    PPO reads, its output is on no scale of the reward."""
    from rlaif.reward import load_backbone

    def load(spec: str):
        classifier, value_tokenizer = load_backbone(spec, str(device), dtype="float32")
        trained = any(a.endswith("ForSequenceClassification") for a in classifier.config.architectures or [])
        return classifier, value_tokenizer.get_vocab() == tokenizer.get_vocab(), trained

    if config.value_model:
        classifier, same_tokens, trained = load(config.value_model)
        if not same_tokens:
            raise ConfigError(f"value_model: {config.value_model} has another tokenizer than the policy; the value "
                              "model reads the policy's tokens")
        if trained:
            return classifier
    else:
        classifier, same_tokens, _ = load(split_weight(config.reward_model[0])[0]) if config.reward_model \
            else load(config.policy)
        if not same_tokens:
            classifier, _ = load_backbone(config.policy, str(device), dtype="float32")  # the reward model can't be used
    torch.nn.init.zeros_(classifier.score.weight)
    return classifier


def _lora(config: PPOConfig, model, task_type: str):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(task_type=task_type, r=config.lora_r, lora_alpha=config.lora_alpha,
                                            lora_dropout=config.lora_dropout, target_modules="all-linear"))
