"""The PPO stage's settings (`rlaif ppo` flags, a recipe's `ppo:` section), their checks and the values derived from
them. No torch here: a recipe's settings are checked without loading it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from rlaif.models import check_engine, check_numbers, lora_unused, unused_settings
from rlaif.ppo import fsdp
from rlaif.records import ConfigError, DataError


@dataclass
class PPOConfig:
    prompts: str = ""  # training prompts: JSONL, CSV, text or hh-rlhf transcripts (see docs/data-contract.md)
    out: str = "runs/ppo"  # the trained policy, logs and checkpoints go here
    policy: str = "smollm2-135m-instruct"  # the model to train (any model spec; usually a run's sft/ directory)
    reward_model: list[str] = field(default_factory=list)  # reward model directories (rlaif reward), "DIR[:WEIGHT]"
    reward_fn: list[str] = field(default_factory=list)  # Python rewards "module:function[:WEIGHT]", f(prompts, responses)
    reward_score: str | None = None  # a labeler whose direct 1-10 score (rlaif score) is a reward, "MODEL[:WEIGHT]"
    constitution: str = "default"  # the rubric of reward_score
    normalize_reward: bool = True  # (r - mean) / std with each reward model's reward_stats.json
    value_model: str | None = None  # initial value model, as saved (e.g. a PPO run's value/); default: the first reward
    # model's backbone with a zero head (values start at 0, the normalised reward's mean), else the policy's
    shared_value_head: bool = False  # value = a head on the policy's own trunk: one forward/backward per minibatch, not two
    eval_prompts: str | None = None  # held-out prompts, scored before training, every eval_every steps and at the end
    eval_every: int = 0  # 0: only before and after training
    monitor_judge: str | None = None  # a second reward model directory (rlaif reward), never optimised against,
    # scoring the eval replies at each eval: monitor/judge_score and monitor/reward_judge_gap (monitors.py)
    monitor_length_corr: float = 0.5  # warn when |r(score, reply length)| passes this: length then explains a
    # quarter of the score's variance, more than a reward for quality should (Singhal et al. 2023)
    monitor_truncated: float = 0.5  # warn when more than this share of replies hit max_new_tokens without stopping
    monitor_min_replies: int = 32  # the two warnings above read two windows of the latest steps, each of at least
    # this many replies pooled, and warn only when both are past: by chance in 0.05% of 100-step runs (monitors.py)
    monitor_gap_rise: float = 1.0  # warn when the reward-judge gap has grown by more than this since the first eval
    # while the training reward rose: one std of rewards normalised by their reward_stats.json (Gao et al. 2023)
    steps: int = 100  # PPO updates (rollout + epochs); raise it and rerun to train on (a linear lr_schedule then
    # decays over the new total from where it was, so the extended run differs from one started with that total)
    batch_size: int = 8  # prompts (one response each) per rollout, per process
    minibatches: int = 1  # minibatches per PPO epoch, one optimizer step each
    micro_batch_size: int | None = None  # rows per forward/backward, gradients accumulated (weighted by tokens, so the
    # result does not depend on it); default: the minibatch
    ppo_epochs: int = 4  # passes over each rollout
    max_new_tokens: int = 64  # response length limit
    temperature: float = 0.7  # sampling temperature; log-probabilities are those of the tempered policy
    top_p: float = 1.0  # below 1 the sampler is not the policy being optimised: keep 1 unless you know why
    missing_eos_penalty: float | None = None  # subtracted from the score of responses cut off before EOS
    learning_rate: float | None = None  # policy; derived when unset: 1e-4 with LoRA, 1e-5 without
    value_learning_rate: float | None = None  # value model; default: learning_rate
    lr_schedule: str = "linear"  # linear (decay to 0 at `steps`) or constant
    max_grad_norm: float = 1.0  # gradient clipping, per model
    kl_coef: float = 0.05  # beta: weight of the per-token KL penalty (its initial value when adaptive)
    kl_target: float | None = 6.0  # adaptive beta (Ziegler et al. 2019): target KL per response, nats; None: fixed
    kl_horizon: int = 10000  # adaptive beta: responses over which the error is corrected
    kl_estimator: str = "k1"  # per-token KL estimate in the penalty: k1, k2 or k3 (Schulman 2020)
    gamma: float = 1.0  # discount
    lam: float = 0.95  # GAE lambda
    clip_range: float = 0.2  # policy ratio clip
    clip_range_value: float = 0.2  # value clip around the rollout's values
    vf_coef: float = 0.1  # weight of the value loss
    entropy_coef: float = 0.0  # entropy bonus
    whiten_advantages: bool = True
    lora: bool = False  # train LoRA adapters on policy and value; the reference is the policy with its adapter off
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0  # must stay 0: PPO turns every dropout off (the first ratio to the sampler must be 1)
    gradient_checkpointing: bool = False  # less activation memory for more compute (every decoder layer)
    fsdp: bool = False  # shard policy, value model and reference across the processes (PyTorch FSDP2, rlaif/ppo/fsdp.py):
    # each GPU keeps 1/N of the weights, gradients and optimizer state, for a policy too large to train on one
    max_kl: float = 50.0  # guard: stop when the mean KL per response passes this
    max_ratio: float = 5.0  # guard: stop when a minibatch's mean probability ratio passes this
    save_steps: int = 10  # checkpoint every N steps (and at the end)
    save_total_limit: int = 2  # checkpoints kept
    sample_every: int = 10  # write the rollout's responses to samples.jsonl at step 1 and every N steps; 0: never
    log_with: str | None = None  # also log to an accelerate tracker: tensorboard, wandb, ...
    seed: int = 0
    device: str | None = None  # cpu, cuda, ...; default: a GPU if there is one (one per process under accelerate)
    engine: str = "rlaif"  # where rollouts are sampled: rlaif (rlaif.generate, here) or vllm (vLLM on the same GPU,
    # the policy's weights pushed to it after every step, as TRL's GRPO colocate mode does; the log-probabilities
    # PPO uses are recomputed by a full forward pass, and their gap to vLLM's logged as rollout/logprob_gap)
    vllm_gpu_memory_utilization: float = 0.3  # engine vllm: the share of the GPU's memory vLLM takes (its weights
    # and KV cache); training keeps the rest
    vllm_importance_sampling_cap: float | None = 2.0  # engine vllm: each token's policy-gradient term weighed by
    # min(pi_old / pi_vLLM, cap), truncated importance sampling for vLLM's rounding (losses.sampler_weights); null: off

    VOLATILE = ("steps", "micro_batch_size", "save_steps", "save_total_limit", "sample_every", "eval_every",
                "log_with", "device", "monitor_length_corr", "monitor_truncated", "monitor_min_replies",
                "monitor_gap_rise", "vllm_gpu_memory_utilization")  # the thresholds only decide what is warned about
    # Settings added after the first runs, each with the value that reproduces them (rlaif.records.added_default)
    ADDED: ClassVar[dict] = {"monitor_judge": None, "engine": "rlaif", "fsdp": False,
                             "vllm_importance_sampling_cap": 2.0}

    def __post_init__(self):
        """Every setting in its range, and no setting that would do nothing: a DataError naming the field, or a
        ConfigError (the checks that need the reward, the prompts or the model are `check` and `run`'s)."""
        check_numbers(self, "ppo", at_least_one=["steps", "batch_size", "minibatches", "micro_batch_size", "ppo_epochs",
                                                 "max_new_tokens", "kl_horizon", "save_steps", "lora_r",
                                                 "monitor_min_replies"],
                      positive=["temperature", "max_grad_norm", "clip_range", "clip_range_value", "lora_alpha",
                                "max_kl", "max_ratio", "monitor_gap_rise"],
                      nonnegative=["missing_eos_penalty", "learning_rate", "value_learning_rate", "kl_coef",
                                   "kl_target", "vf_coef", "entropy_coef", "save_total_limit", "sample_every",
                                   "eval_every"],
                      within={"gamma": (0.0, 1.0), "lam": (0.0, 1.0), "lora_dropout": (0.0, 1.0),
                              "monitor_length_corr": (0.0, 1.0), "monitor_truncated": (0.0, 1.0)})
        if not 0 < self.top_p <= 1:
            raise DataError("ppo settings", None, "top_p", f"expected a share in (0, 1], got {self.top_p:g}")
        if self.batch_size % self.minibatches:
            raise DataError("ppo settings", None, "minibatches", f"{self.minibatches} does not divide batch_size "
                            f"{self.batch_size}")
        for name, choices in (("lr_schedule", ("linear", "constant")), ("kl_estimator", ("k1", "k2", "k3"))):
            if getattr(self, name) not in choices:
                raise DataError("ppo settings", None, name, f"expected {' or '.join(choices)}, not "
                                f"{getattr(self, name)!r}")
        lora_unused(self)
        check_engine(self, "ppo", memory=True)
        fsdp.check(self)
        cap = self.vllm_importance_sampling_cap
        if cap is not None and not cap >= 1:
            raise DataError("ppo settings", None, "vllm_importance_sampling_cap", "expected a number >= 1 (the "
                            f"weights' upper bound; null turns the correction off), got {cap:g}")
        if self.engine == "rlaif":
            unused_settings(self, ["vllm_importance_sampling_cap"], "used only with engine: vllm", ("engine",))
        if self.lora_dropout:
            raise ConfigError("lora_dropout: PPO turns every dropout off, so that the policy being trained computes "
                              "what the policy that sampled did (a ratio of 1 before the first update); leave it at 0")
        if self.kl_target is None:
            unused_settings(self, ["kl_horizon"], "the adaptive beta's horizon, not used with a fixed beta "
                                                  "(kl_target: null, --fixed-kl)")
        if not self.monitor_judge:
            unused_settings(self, ["monitor_gap_rise"], "the judge gap's threshold, used only with a judge "
                                                        "(monitor_judge, --monitor-judge)")
        if self.shared_value_head and self.value_model:
            raise ConfigError("value_model: a shared value head sits on the policy; there is no value model to load")
        if self.value_model and (Path(self.value_model) / "reward_stats.json").is_file():
            raise ConfigError(f"value_model: {self.value_model} is a reward model (it has reward_stats.json): its head "
                              "scores a whole conversation on the reward model's scale, not the value of each state "
                              "PPO reads. Leave value_model out: the value model then starts as the first reward "
                              "model's backbone with a zero head")


def check(config: PPOConfig, reward_given: bool = False) -> None:
    """The settings a config built alone cannot check: some reward to optimise (`reward_given`: the caller passes
    one, or the pipeline wires in its reward model)."""
    if not (reward_given or config.reward_model or config.reward_fn or config.reward_score):
        raise ConfigError("reward: give a reward model (reward_model), a labeler (reward_score) or a Python function "
                          "(reward_fn)")


def check_processes(config: PPOConfig, processes: int) -> None:
    """ConfigError for what PPO does not do on `processes` processes: vLLM rollouts on more than one (vLLM samples
    in one process, on its own share of the GPU), and FSDP's rules (rlaif.ppo.fsdp.check). Checked by the run
    before anything loads, and by `rlaif run` when it plans."""
    fsdp.check(config, processes)
    if config.engine == "vllm" and processes > 1:
        raise ConfigError("engine: vllm samples PPO's rollouts in one process (its own GPU share, "
                          "vllm_gpu_memory_utilization); run with one process, or engine: rlaif under "
                          "accelerate launch", ["engine"])


def check_alone(config: PPOConfig) -> None:
    """Settings that do nothing in a run of the stage by itself (`rlaif ppo`): a ConfigError. A recipe wires in the
    eval prompts, the reward model and the rubric itself, and warns about these instead (recipe.unused_settings)."""
    if not config.eval_prompts:
        unused_settings(config, ["eval_every", "monitor_judge"], "used only with eval prompts (eval_prompts, "
                                                                 "--eval-prompts)")
    if not config.reward_score:
        unused_settings(config, ["constitution"], "the rubric of reward_score (--reward-score), which is not set")
    if not config.reward_model:
        unused_settings(config, ["normalize_reward"], "used only with reward models (reward_model, --reward-model)")


def default_lr(config: PPOConfig) -> float:
    if config.learning_rate is not None:
        return config.learning_rate
    return 1e-4 if config.lora else 1e-5


def schedule(config: PPOConfig):
    if config.lr_schedule == "constant":
        return lambda step: 1.0
    return lambda step: max(0.0, 1.0 - step / max(config.steps, 1))
