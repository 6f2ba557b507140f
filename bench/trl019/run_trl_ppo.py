"""Peer side of the PPO benchmark: run TRL 0.19.1's PPOTrainer on CPU and write timings as JSON.

Run with the TRL venv's interpreter (made by bench/trl019/setup_venv.py), not the main venv:

    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 bench/.venv-trl019/bin/python bench/trl019/run_trl_ppo.py \
        --policy DIR --reward-model DIR --prompts FILE.jsonl --steps 3 --out trl.json

Models are built the way TRL's examples/scripts/ppo/ppo.py builds them: policy and ref policy from
the policy dir, value model and reward model both from the reward-model dir (value head initialised
from the reward head), tokenizer from the policy dir with a dedicated "[PAD]" pad token added (TRL
masks pad ids to 0 before every forward, so no embedding resize is needed; a pad equal to EOS would
make TRL mask every <|im_end|> of the chat template and drop the EOS from the trained response).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_DISABLED", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
import transformers
import trl
from datasets import Dataset
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedTokenizerFast,
    TrainerCallback,
)
from trl import PPOConfig, PPOTrainer

LOGGED_KEYS = (
    "objective/scores",
    "objective/kl",
    "objective/non_score_reward",
    "objective/rlhf_reward",
    "objective/entropy",
    "policy/entropy_avg",
    "policy/approxkl_avg",
    "policy/clipfrac_avg",
    "loss/policy_avg",
    "loss/value_avg",
    "val/clipfrac_avg",
    "val/ratio",
    "val/ratio_var",
    "val/num_eos_tokens",
    "lr",
    "episode",
    "eps",
)


def load_config(path: str, **kwargs):
    """AutoConfig that also reads checkpoints written by transformers 5.x.

    transformers 5 stores RoPE settings as ``rope_parameters`` ({"rope_theta", "rope_type", ...}); 4.5x
    ignores that key and silently falls back to its default rope_theta (10000), which changes the model.
    """
    config = AutoConfig.from_pretrained(path, **kwargs)
    with open(os.path.join(path, "config.json")) as fh:
        raw = json.load(fh)
    rope = raw.get("rope_parameters")
    if isinstance(rope, dict) and "rope_theta" not in raw:
        if "rope_theta" in rope:
            config.rope_theta = rope["rope_theta"]
        scaling = {k: v for k, v in rope.items() if k != "rope_theta"}
        if scaling.get("rope_type", "default") != "default" and raw.get("rope_scaling") is None:
            config.rope_scaling = scaling
    return config


def load_tokenizer(path: str):
    """AutoTokenizer, falling back to PreTrainedTokenizerFast for a tokenizer.json saved by transformers 5.x
    (whose tokenizer_config names the class "TokenizersBackend", unknown to 4.5x)."""
    try:
        return AutoTokenizer.from_pretrained(path, padding_side="left")
    except ValueError:
        return PreTrainedTokenizerFast.from_pretrained(path, padding_side="left")


class PhaseTimer:
    """Wall-clock per phase of TRL's loop, by wrapping the module-level helpers train() calls (looked up at
    call time, so patching the module's globals works) plus accelerator.backward and optimizer.step.
    Everything runs synchronously on CPU, so these times are exact; the wrappers cost microseconds."""

    def __init__(self, trainer) -> None:
        import trl.trainer.ppo_trainer as ppo_mod

        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self.generated_lengths: list[int] = []  # new tokens per rollout batch (generate may stop early)
        self.response_tokens: list[int] = []  # tokens up to and including the first EOS, summed over batch
        ref_policy, reward_model = trainer.ref_model, trainer.reward_model
        pad_id = trainer.processing_class.pad_token_id

        def add(name: str, dt: float) -> None:
            self.seconds[name] = self.seconds.get(name, 0.0) + dt
            self.calls[name] = self.calls.get(name, 0) + 1

        orig_gen, orig_fwd, orig_rew, orig_trunc = (
            ppo_mod.batch_generation, ppo_mod.forward, ppo_mod.get_reward, ppo_mod.truncate_response
        )

        def batch_generation(model, queries, *a, **k):
            t = time.perf_counter()
            out = orig_gen(model, queries, *a, **k)
            add("generate", time.perf_counter() - t)
            self.generated_lengths.append(int(out[0].shape[1] - queries.shape[1]))
            return out

        def forward(model, *a, **k):
            t = time.perf_counter()
            out = orig_fwd(model, *a, **k)
            add("ref_forward" if model is ref_policy else "train_forward(policy+value)", time.perf_counter() - t)
            return out

        def get_reward(model, *a, **k):
            t = time.perf_counter()
            out = orig_rew(model, *a, **k)
            add("reward_forward" if model is reward_model else "value_forward(rollout)", time.perf_counter() - t)
            return out

        def truncate_response(stop_id, pad, responses):
            out = orig_trunc(stop_id, pad, responses)
            self.response_tokens.append(int((out != pad_id).sum()))
            return out

        ppo_mod.batch_generation, ppo_mod.forward = batch_generation, forward
        ppo_mod.get_reward, ppo_mod.truncate_response = get_reward, truncate_response

        acc_backward = trainer.accelerator.backward

        def backward(loss, **k):
            t = time.perf_counter()
            acc_backward(loss, **k)
            add("backward", time.perf_counter() - t)

        trainer.accelerator.backward = backward
        opt_step = trainer.optimizer.step

        def step(*a, **k):
            t = time.perf_counter()
            out = opt_step(*a, **k)
            add("optimizer_step", time.perf_counter() - t)
            return out

        trainer.optimizer.step = step


class RecordCallback(TrainerCallback):
    """Captures TRL's per-update log dicts and wall-clock time at each update's end."""

    def __init__(self) -> None:
        self.logs: list[dict] = []
        self.step_end_times: list[float] = []
        self.train_begin: float | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.train_begin = time.perf_counter()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is not None:
            self.logs.append({k: v for k, v in logs.items() if isinstance(v, (int, float, str))})

    def on_step_end(self, args, state, control, **kwargs):
        self.step_end_times.append(time.perf_counter())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--policy", required=True, help="local HF causal-LM dir (safetensors)")
    p.add_argument("--reward-model", required=True, help="local dir for AutoModelForSequenceClassification")
    p.add_argument("--prompts", required=True, help='JSONL rows with a "prompt" string field')
    p.add_argument("--steps", type=int, default=3, help="PPO updates (rollout batches)")
    p.add_argument("--batch-size", type=int, default=8, help="rollouts per update")
    p.add_argument("--response-length", type=int, default=48)
    p.add_argument("--ppo-epochs", type=int, default=4)
    p.add_argument("--minibatches", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    # Optional knobs (defaults are TRL 0.19.1's own), for aligning with the other trainer.
    p.add_argument("--learning-rate", type=float, default=None, help="default: TrainingArguments' 5e-5")
    p.add_argument("--temperature", type=float, default=None, help="default: TRL's 0.7")
    p.add_argument("--kl-coef", type=float, default=None, help="default: TRL's 0.05")
    p.add_argument("--output-dir", default=None, help="Trainer output_dir (nothing is saved); default: a temp dir")
    p.add_argument("--out", required=True, help="JSON results file")
    args = p.parse_args(argv)

    if args.batch_size % args.minibatches:
        p.error("--batch-size must be a multiple of --minibatches")

    transformers.set_seed(args.seed)

    # ---- tokenizer + prompts -------------------------------------------------------------------
    tokenizer = load_tokenizer(args.policy)
    tokenizer.add_special_tokens({"pad_token": "[PAD]"})  # as in TRL's examples/scripts/ppo/ppo.py
    if tokenizer.chat_template is None:
        raise SystemExit(f"{args.policy}: tokenizer has no chat template")
    prompts: list[str] = []
    with open(args.prompts) as fh:
        for line in fh:
            line = line.strip()
            if line:
                prompts.append(json.loads(line)["prompt"])
    if len(prompts) < args.batch_size:
        raise SystemExit(f"{args.prompts}: {len(prompts)} prompts < batch size {args.batch_size}")
    input_ids = [
        tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)
        for text in prompts
    ]
    train_dataset = Dataset.from_dict({"input_ids": input_ids})
    eval_dataset = train_dataset.select(range(args.batch_size))  # required by the ctor, unused (no sample gens)

    # ---- models ---------------------------------------------------------------------------------
    dtype = torch.float32
    policy_cfg = load_config(args.policy)
    rm_cfg = load_config(args.reward_model, num_labels=1)
    policy = AutoModelForCausalLM.from_pretrained(args.policy, config=policy_cfg, torch_dtype=dtype)
    ref_policy = AutoModelForCausalLM.from_pretrained(args.policy, config=policy_cfg, torch_dtype=dtype)
    value_model = AutoModelForSequenceClassification.from_pretrained(
        args.reward_model, config=rm_cfg, torch_dtype=dtype
    )
    reward_model = AutoModelForSequenceClassification.from_pretrained(
        args.reward_model, config=rm_cfg, torch_dtype=dtype
    )

    # ---- config ---------------------------------------------------------------------------------
    output_dir = args.output_dir
    if output_dir is None:
        import tempfile

        output_dir = tempfile.mkdtemp(prefix="trl019-ppo-")
    extra = {}
    if args.learning_rate is not None:
        extra["learning_rate"] = args.learning_rate
    if args.temperature is not None:
        extra["temperature"] = args.temperature
    if args.kl_coef is not None:
        extra["kl_coef"] = args.kl_coef
    # per_device_train_batch_size = whole rollout batch and gradient_accumulation_steps = 1: TRL's loop then
    # uses one micro-batch per mini-batch and an optimizer step per mini-batch. (Splitting the batch with
    # gradient_accumulation_steps = minibatches would make accelerate accumulate across all mini-batches of a
    # PPO epoch, i.e. one optimizer step per epoch whatever --minibatches says.)
    config = PPOConfig(
        output_dir=output_dir,
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=1,
        per_device_eval_batch_size=args.batch_size,
        num_mini_batches=args.minibatches,
        num_ppo_epochs=args.ppo_epochs,
        response_length=args.response_length,
        total_episodes=args.steps * args.batch_size,
        local_rollout_forward_batch_size=args.batch_size,
        stop_token="eos",
        num_sample_generations=0,
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        seed=args.seed,
        logging_steps=1,
        disable_tqdm=True,
        **extra,
    )

    recorder = RecordCallback()
    trainer = PPOTrainer(
        args=config,
        processing_class=tokenizer,
        model=policy,
        ref_model=ref_policy,
        reward_model=reward_model,
        train_dataset=train_dataset,
        value_model=value_model,
        eval_dataset=eval_dataset,
        callbacks=[recorder],
    )

    phases = PhaseTimer(trainer)
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0

    peak_rss_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    samples = args.steps * args.batch_size

    step_seconds = []
    prev = recorder.train_begin if recorder.train_begin is not None else t0
    for t in recorder.step_end_times:
        step_seconds.append(t - prev)
        prev = t
    steps = []
    for i, log in enumerate(recorder.logs):
        row = {k: log[k] for k in LOGGED_KEYS if k in log}
        row["step"] = i + 1
        if i < len(step_seconds):
            row["seconds"] = step_seconds[i]
        steps.append(row)

    result = {
        "trainer": "trl.PPOTrainer",
        "trl_version": trl.__version__,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "torch_num_threads": torch.get_num_threads(),
        "seconds": seconds,
        "first_step_seconds": step_seconds[0] if step_seconds else None,
        "step_seconds": step_seconds,
        "samples": samples,
        "samples_per_second": samples / seconds if seconds > 0 else None,
        "peak_rss_bytes": peak_rss_bytes,
        "phase_seconds": phases.seconds,
        "phase_calls": phases.calls,
        "generated_lengths": phases.generated_lengths,
        "response_tokens": phases.response_tokens,
        "steps": steps,
        "config": {
            "policy": os.path.abspath(args.policy),
            "reward_model": os.path.abspath(args.reward_model),
            "prompts": os.path.abspath(args.prompts),
            "num_prompts": len(prompts),
            "steps": args.steps,
            "batch_size": config.batch_size,
            "per_device_train_batch_size": config.per_device_train_batch_size,
            "gradient_accumulation_steps": config.gradient_accumulation_steps,
            "num_mini_batches": config.num_mini_batches,
            "mini_batch_size": config.mini_batch_size,
            "num_ppo_epochs": config.num_ppo_epochs,
            "response_length": config.response_length,
            "total_episodes": config.total_episodes,
            "num_total_batches": config.num_total_batches,
            "learning_rate": config.learning_rate,
            "lr_scheduler_type": str(config.lr_scheduler_type),
            "temperature": config.temperature,
            "kl_coef": config.kl_coef,
            "kl_estimator": config.kl_estimator,
            "cliprange": config.cliprange,
            "cliprange_value": config.cliprange_value,
            "vf_coef": config.vf_coef,
            "gamma": config.gamma,
            "lam": config.lam,
            "whiten_rewards": config.whiten_rewards,
            "missing_eos_penalty": config.missing_eos_penalty,
            "stop_token": config.stop_token,
            "pad_token": tokenizer.pad_token,
            "pad_token_id": tokenizer.pad_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "dtype": "float32",
            "seed": args.seed,
            "device": str(trainer.accelerator.device),
            "rope_theta": getattr(policy.config, "rope_theta", None),
        },
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=2)
        fh.write("\n")
    print(
        f"trl {trl.__version__}: {args.steps} steps x {args.batch_size} in {seconds:.1f}s "
        f"({result['samples_per_second']:.3f} samples/s), peak RSS {peak_rss_bytes / 2**30:.2f} GiB -> {args.out}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
