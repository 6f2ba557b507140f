"""GRPO or RLOO against our reward models, with TRL's trainers: PPO's alternatives without a value model.

    rlaif grpo --policy runs/x/round-1/sft --reward-model runs/x/round-1/reward --prompts prompts.jsonl --out runs/x/grpo
    rlaif grpo --algorithm rloo ...

Each step samples `group_size` replies to each of `prompts_per_step` prompts and scores them with the reward
models (normalised with their reward_stats.json, weighted, summed). GRPO (Shao et al. 2024) takes each reply's
advantage relative to its group's mean reward; RLOO (Ahmadian et al. 2024) relative to the mean of the other
replies to the same prompt. Both keep a KL penalty of weight `beta` to the starting policy. TRL does not cut
prompts, so a prompt whose tokens (chat template included) and `max_new_tokens` do not fit in the policy's context
is left out and counted (manifest and closing line); with none left, `run` stops before loading the model. The
weights being trained are float32 (bf16 only as autocast on a GPU, where LoRA's frozen base is bf16); the reward
models only score, in bf16 on a GPU.
OUT holds the policy (a LoRA adapter merged in), `metrics.jsonl` in PPO's names (score, kl, beta, entropy,
response_length) so the report plots it alike, and checkpoints/ (safetensors); a rerun resumes from the latest.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rlaif.loaders import load_prompts
from rlaif.models import check_numbers, fitting_prompts, lora_unused
from rlaif.rankings import parse_weighted
from rlaif.records import ConfigError, DataError, JsonlWriter, Tally, open_stage


@dataclass
class GRPOConfig:
    prompts: str = ""  # training prompts: JSONL, CSV, text or hh-rlhf transcripts
    out: str = "runs/grpo"
    policy: str = "smollm2-135m-instruct"  # the model to train and the KL reference (usually a run's sft/)
    reward_model: list[str] = field(default_factory=list)  # reward model directories, "DIR[:WEIGHT]"
    algorithm: str = "grpo"  # grpo or rloo
    steps: int = 100  # optimizer steps
    prompts_per_step: int = 4  # prompts per step, per device
    group_size: int = 4  # replies sampled per prompt (at least 2: advantages are relative to the group)
    max_new_tokens: int = 128
    temperature: float = 0.7
    beta: float = 0.05  # weight of the KL penalty to the starting policy
    lora: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    learning_rate: float | None = None  # derived when unset: 5e-5 with LoRA, 1e-6 without
    save_steps: int = 50
    seed: int = 0
    device: str | None = None  # cpu or cuda; default: a GPU if there is one

    VOLATILE = ("device",)

    def __post_init__(self):
        check_numbers(self, "grpo", positive=["steps", "prompts_per_step", "max_new_tokens", "temperature", "learning_rate",
                                              "save_steps", "lora_r", "lora_alpha"],
                      finite=["group_size"], nonnegative=["beta"])
        if self.algorithm not in ("grpo", "rloo"):
            raise DataError("grpo settings", None, "algorithm", f"expected grpo or rloo, not {self.algorithm!r}")
        if self.group_size < 2:
            raise DataError("grpo settings", None, "group_size", f"advantages are relative to the group; use at "
                            f"least 2, not {self.group_size}")
        idle = [spec for spec in self.reward_model if parse_weighted(spec)[1] == 0]
        if idle:
            raise ConfigError(f"reward_model: {', '.join(idle)}: a reward model of weight 0 does nothing; leave it out")
        lora_unused(self)


class RewardModels:
    """Our reward models as a TRL reward function: f(prompts, completions) -> one float per completion."""

    __name__ = "reward_model"

    def __init__(self, specs: list[str], device: str):
        from rlaif.reward import RewardModel

        self.models = [(RewardModel.load(path, device=device), weight) for path, weight in map(parse_weighted, specs)]

    def __call__(self, prompts: list, completions: list, **_) -> list[float]:
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        total = sum(weight * model.score(prompts, texts, normalize=bool(model.stats)) for model, weight in self.models)
        return total.tolist()


def run(config: GRPOConfig, progress: bool = True) -> dict:
    """Train (or resume training); returns the last logged metrics, with `summary`: the prompts read, used and left
    out (also in the manifest's counts).

    Raises DataError before loading the model (and before creating OUT) when no prompt fits in the context."""
    import datasets
    from datasets import Dataset
    from transformers import set_seed

    from rlaif.models import (
        context_length,
        load_model,
        load_tokenizer,
        lora_config,
        precision_args,
        train_and_save,
        trainer_device,
        training_dtype,
    )

    if not config.reward_model:
        raise ConfigError("reward_model: at least one reward model directory is required")
    tally = Tally("prompts")
    context = context_length(config.policy)
    room = None if context is None else context - config.max_new_tokens
    prompts = fitting_prompts(load_prompts(config.prompts), load_tokenizer(config.policy), room, tally)
    tally.require_some(config.prompts, f"each prompt and max_new_tokens ({config.max_new_tokens}) must fit in the "
                                       f"policy's context of {context} tokens")
    device = trainer_device(config.device)
    out = Path(config.out)
    learning_rate = config.learning_rate or (5e-5 if config.lora else 1e-6)
    manifest = open_stage(out, config.algorithm, {**asdict(config), "learning_rate": learning_rate},
                          volatile=GRPOConfig.VOLATILE)
    if manifest.status == "complete" and (out / "model.safetensors").is_file():
        return manifest.extra.get("last", {})
    manifest.add_input(config.prompts)
    set_seed(config.seed)  # before LoRA's adapters draw their initial weights
    model, tokenizer = load_model(config.policy, dtype=training_dtype(device, config.lora), device="cpu")
    datasets.disable_progress_bars()
    if config.algorithm == "grpo":
        from trl import GRPOConfig as TRLConfig
        from trl import GRPOTrainer as Trainer
    else:
        from trl import RLOOConfig as TRLConfig
        from trl import RLOOTrainer as Trainer
    args = TRLConfig(
        output_dir=str(out / "checkpoints"), max_steps=config.steps, learning_rate=learning_rate,
        per_device_train_batch_size=config.prompts_per_step * config.group_size, num_generations=config.group_size,
        max_completion_length=config.max_new_tokens, temperature=config.temperature, beta=config.beta,
        save_steps=config.save_steps, save_total_limit=2, logging_steps=1, report_to="none", seed=config.seed,
        disable_tqdm=not progress, **precision_args(device),
    )
    trainer = Trainer(model=model, reward_funcs=RewardModels(config.reward_model, device), args=args,
                      train_dataset=Dataset.from_list([{"prompt": p["prompt"]} for p in prompts]),
                      processing_class=tokenizer,
                      peft_config=lora_config(config.lora_r, config.lora_alpha) if config.lora else None)
    started = time.time()
    train_and_save(trainer, tokenizer, out, config.lora)
    (out / "metrics.jsonl").unlink(missing_ok=True)
    with JsonlWriter(out / "metrics.jsonl") as writer:
        for entry in trainer.state.log_history:
            if "reward" in entry:
                step = int(entry["step"])
                writer.write({"id": f"step-{step:06d}", "step": step, "score": entry["reward"],
                              "kl": entry.get("kl", 0.0), "beta": config.beta, "entropy": entry.get("entropy"),
                              "response_length": entry.get("completions/mean_length"), "loss": entry.get("loss")})
    last = {**next((e for e in reversed(trainer.state.log_history) if "reward" in e), {}), "summary": tally.summary()}
    manifest.counts.update(tally.counts(), steps=trainer.state.global_step)
    manifest.extra["last"] = last
    manifest.seconds += time.time() - started
    manifest.outputs = ["model.safetensors", "metrics.jsonl", "checkpoints/"]
    manifest.status = "complete"
    manifest.save(out)
    return last
