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

PPO's reward-hacking monitors (rlaif/ppo/monitors.py), where TRL lets us see them: `monitor/score_length_corr`, the
reward's correlation with reply length in tokens over the step's replies (each centred on its process's means), from
the covariance and variances the reward function computes from the completion ids TRL hands it and logs through
TRL's `log_metric` (which averages them over the processes), with `monitor/score_std` and `monitor/length_std`; and
`monitor/truncated`, TRL's own share of replies cut at max_new_tokens (`completions/clipped_ratio`). No score-KL
correlation: the reward function never sees a reply's KL. Warnings as PPO's: in each row's `warnings`, the first of
each kind printed as it is logged, the tally in the manifest.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

from rlaif.loaders import load_prompts
from rlaif.models import check_engine, check_numbers, fitting_prompts, lora_unused
from rlaif.ppo import monitors as M
from rlaif.rankings import parse_weighted
from rlaif.records import ConfigError, DataError, JsonlWriter, Tally, open_stage

# what the reward function logs through TRL for the score-length monitors (RewardModels, _length_monitors)
COMOMENTS = ("monitor/score_length_cov", "monitor/score_var", "monitor/length_var")


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
    monitor_length_corr: float = 0.5  # warn past this |r(reward, reply length)| (why: rlaif/ppo/monitors.py, as PPO's)
    monitor_truncated: float = 0.5  # warn when more than this share of replies hit max_new_tokens without stopping
    monitor_min_replies: int = 32  # replies (per process) in each of the two windows a warning needs
    # (why, and the false-alarm rate it gives: rlaif/ppo/monitors.py)
    seed: int = 0
    device: str | None = None  # cpu or cuda; default: a GPU if there is one
    engine: str = "rlaif"  # where replies are sampled: rlaif (TRL's trainer generates with the policy) or vllm (TRL's
    # use_vllm in colocate mode: vLLM on the same GPU, given the policy's weights after every step, with TRL's
    # importance-sampling correction for the engines' differing log-probabilities)
    vllm_gpu_memory_utilization: float = 0.3  # engine vllm: the share of the GPU's memory vLLM takes

    VOLATILE = ("device", "monitor_length_corr", "monitor_truncated", "monitor_min_replies",
                "vllm_gpu_memory_utilization")
    ADDED: ClassVar[dict] = {"engine": "rlaif"}  # settings added later, each with the value that reproduces old runs

    def __post_init__(self):
        check_numbers(self, "grpo", positive=["steps", "prompts_per_step", "max_new_tokens", "temperature", "learning_rate",
                                              "save_steps", "lora_r", "lora_alpha"],
                      finite=["group_size"], nonnegative=["beta"], at_least_one=["monitor_min_replies"],
                      within={"monitor_length_corr": (0.0, 1.0), "monitor_truncated": (0.0, 1.0)})
        if self.algorithm not in ("grpo", "rloo"):
            raise DataError("grpo settings", None, "algorithm", f"expected grpo or rloo, not {self.algorithm!r}")
        if self.group_size < 2:
            raise DataError("grpo settings", None, "group_size", f"advantages are relative to the group; use at "
                            f"least 2, not {self.group_size}")
        idle = [spec for spec in self.reward_model if parse_weighted(spec)[1] == 0]
        if idle:
            raise ConfigError(f"reward_model: {', '.join(idle)}: a reward model of weight 0 does nothing; leave it out")
        lora_unused(self)
        check_engine(self, "grpo", memory=True)


class RewardModels:
    """Our reward models as a TRL reward function: f(prompts, completions) -> one float per completion."""

    __name__ = "reward_model"

    def __init__(self, specs: list[str], device: str):
        from rlaif.reward import RewardModel

        self.models = [(RewardModel.load(path, device=device), weight) for path, weight in map(parse_weighted, specs)]

    def __call__(self, prompts: list, completions: list, completion_ids: list | None = None, log_metric=None,
                 **_) -> list[float]:
        """The weighted sum of the reward models' scores; with TRL's `completion_ids` and `log_metric`, also logs the
        covariance and variances of the scores and the replies' lengths in tokens (monitors.comoments; none where a
        value is not finite). TRL averages each over the step's calls and processes: their ratio, r in `_row`, is
        then the r of the step's pooled replies, each centred on its call's means, not a mean of r's."""
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        total = sum(weight * model.score(prompts, texts, normalize=bool(model.stats)) for model, weight in self.models)
        if completion_ids is not None and log_metric is not None:
            moments = M.comoments(total.tolist(), [len(ids) for ids in completion_ids])
            for name, value in zip(COMOMENTS, moments or ()):
                log_metric(name, value)
        return total.tolist()


def monitored_rows(history: list[dict], config: GRPOConfig) -> tuple[list[dict], M.Watch]:
    """metrics.jsonl's rows from TRL's log history, in PPO's names, each with its monitors' `warnings`; and the
    Watch that saw them (its tally)."""
    watch, rows = M.Watch.of(config), [_row(entry, config) for entry in history if "reward" in entry]
    for row in rows:
        row["warnings"] = watch.observe(row)[0]
    return rows, watch


def _row(entry: dict, config: GRPOConfig) -> dict:
    step = int(entry["step"])
    return {"id": f"step-{step:06d}", "step": step, "score": entry["reward"], "kl": entry.get("kl", 0.0),
            "beta": config.beta, "entropy": entry.get("entropy"),
            "response_length": entry.get("completions/mean_length"), "loss": entry.get("loss"),
            **_length_monitors(entry), M.TRUNCATED: entry.get("completions/clipped_ratio"),
            M.REPLIES: config.prompts_per_step * config.group_size}


def _length_monitors(entry: dict) -> dict:
    """PPO's score-length keys from the comoments the reward function logged (None where it logged none)."""
    cov, var_score, var_length = (entry.get(name) for name in COMOMENTS)
    if cov is None or var_score is None or var_length is None:
        return {M.LENGTH: None, M.SCORE_STD: None, M.LENGTH_STD: None}
    r = cov / math.sqrt(var_score * var_length) if var_score > 0 and var_length > 0 else None
    return {M.LENGTH: r if r is None else max(-1.0, min(1.0, r)), M.SCORE_STD: math.sqrt(var_score),
            M.LENGTH_STD: math.sqrt(var_length)}


def _announcer(config: GRPOConfig):
    """A TRL callback that prints the first warning of each kind as its step is logged."""
    from transformers import TrainerCallback

    class Announcer(TrainerCallback):
        def __init__(self):
            self.watch, self.seen = M.Watch.of(config), 0

        def on_log(self, args, state, control, **kwargs):
            entries = [e for e in state.log_history if "reward" in e]
            fresh = []
            for entry in entries[self.seen :]:  # after a resume, the restored history first: warned about before
                fresh = self.watch.observe(_row(entry, config))[1]
            if entries[self.seen :] and state.is_world_process_zero:
                M.announce(config.algorithm, int(entries[-1]["step"]), fresh)
            self.seen = len(entries)

    return Announcer()


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
                          volatile=GRPOConfig.VOLATILE, added=GRPOConfig.ADDED)
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
        **({"use_vllm": True, "vllm_mode": "colocate",
            "vllm_gpu_memory_utilization": config.vllm_gpu_memory_utilization} if config.engine == "vllm" else {}),
    )
    trainer = Trainer(model=model, reward_funcs=RewardModels(config.reward_model, device), args=args,
                      train_dataset=Dataset.from_list([{"prompt": p["prompt"]} for p in prompts]),
                      processing_class=tokenizer, callbacks=[_announcer(config)],
                      peft_config=lora_config(config.lora_r, config.lora_alpha) if config.lora else None)
    started = time.time()
    train_and_save(trainer, tokenizer, out, config.lora)
    (out / "metrics.jsonl").unlink(missing_ok=True)
    rows, watch = monitored_rows(trainer.state.log_history, config)
    with JsonlWriter(out / "metrics.jsonl") as writer:
        for row in rows:
            writer.write(row)
    last = {**next((e for e in reversed(trainer.state.log_history) if "reward" in e), {}), "summary": tally.summary(),
            "monitor_warnings": watch.fired}
    manifest.counts.update(tally.counts(), steps=trainer.state.global_step, monitor_warnings=watch.total())
    manifest.extra["last"] = last
    manifest.extra["monitor_warnings"] = watch.fired
    manifest.seconds += time.time() - started
    manifest.outputs = ["model.safetensors", "metrics.jsonl", "checkpoints/"]
    manifest.status = "complete"
    manifest.save(out)
    return last
