"""PPO with a KL penalty to a frozen reference policy (Ziegler et al. 2019; Ouyang et al. 2022), on accelerate.

    rlaif ppo --policy runs/x/sft --reward-model runs/x/rm --prompts prompts.jsonl --out runs/x/ppo
    accelerate launch --num_processes 2 -m rlaif ppo ...        # one process per device, gradients all-reduced

Each step:
  1. rollout: B prompts, one sampled response each (rlaif.generate, keeping the sampling log-probabilities), cut at
     EOS; prompts that do not fit in the policy's context with `max_new_tokens` are left out and counted;
  2. the frozen reference's log-probabilities (the LoRA adapter switched off, or a copy), the values (a value model:
     the reward model's backbone with a zero head, so values start at 0, the normalised reward's mean; or with
     `shared_value_head` a zero head on the policy's own trunk), and the reward: reward models (normalised with
     their reward_stats.json), the labeler's direct score, Python functions, or a weighted sum; a penalty for
     responses cut off before EOS;
  3. per-token reward -beta * KL_t, plus the score on the last token; GAE; whitened advantages (losses.py);
  4. `ppo_epochs` passes over the rollout in `minibatches` minibatches: clipped policy loss, clipped value loss,
     entropy bonus, each a mean over the minibatch's tokens however it is split into micro-batches; one optimizer
     step per minibatch;
  5. beta follows the adaptive controller toward `kl_target` (or stays fixed).

Trainable weights are float32 on every device. In float32 the sampling log-probabilities are the old ones and the
policy is not run again for them, except that a shared value head reads its hidden states from one more forward
pass. accelerate's mixed precision (`accelerate launch --mixed_precision bf16`) only autocasts, and decoding from
a KV cache then rounds otherwise than a full pass: the old log-probabilities come from one full forward pass under
the same autocast as the reference's, so the first KL is 0; the first ratio is 1 when the training pass has the
same shape (the whole rollout as one minibatch, no micro-batches), else within bf16's rounding of 1 (about 1e-3).
The models train in training mode with every dropout off (gradient checkpointing acts only in training mode).
Numbers from several processes are combined by all-reducing (sum, count), so shards of any size, empty ones
included, are safe; with micro-batches, gradients are all-reduced once per minibatch.

OUT holds the policy (safetensors; a LoRA adapter merged in), OUT/value/ (the value model, LoRA merged, a plain
sequence classifier whose output is the value; or the shared head), lines per step in `metrics.jsonl`, sample
responses in `samples.jsonl`, held-out rewards in `eval.jsonl` (before training, every `eval_every` steps and at
the end), and `checkpoints/step-N/`: policy, value model or head, optimizers, schedulers, RNG states (accelerate's
`save_state`, safetensors weights) plus beta and the step in `trainer_state.json`, written under a temporary name
and renamed, so a checkpoint is whole or absent, and written after every row of its step. Prompts are drawn in an
order fixed by the seed and sampling is seeded per step, so a rerun of the same command resumes from the newest
checkpoint and computes what the uninterrupted run would have.

Guards stop the run with a message, keeping a checkpoint: rewards or losses that are not finite, a mean KL past
`max_kl`, a mean probability ratio past `max_ratio`.

Reward-hacking monitors, explained in rlaif/ppo/monitors.py: score-length and score-KL correlations, the share of
replies cut off, a second reward model's score on the eval replies (`monitor/*` in metrics.jsonl and eval.jsonl);
a row past a threshold lists it in `warnings`, the first of each kind is printed and the manifest counts them.
"""

from __future__ import annotations

import time
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from rlaif.generate import progress_bar
from rlaif.loaders import load_prompts
from rlaif.ppo import fsdp
from rlaif.ppo import losses as L
from rlaif.ppo import monitors as M
from rlaif.ppo.build import build_judge, build_models, build_reward
from rlaif.ppo.checkpoints import (
    checkpoints,
    finished_metrics,
    load_checkpoint,
    save_checkpoint,
    save_final,
    save_state,
    truncate_log,
)
from rlaif.ppo.config import PPOConfig, check, check_processes, default_lr, schedule
from rlaif.ppo.rollout import Batch, CombinedReward, pack, response_logits
from rlaif.records import (
    ConfigError,
    JsonlWriter,
    Message,
    Tally,
    open_stage,
    read_jsonl,
)


class PPOStopped(Exception):
    """A guard stopped training; the message says what happened, where the checkpoint is and what to try."""


# --------------------------------------------------------------------------------------------------------------------
# Rollouts


@dataclass
class Rollout:
    prompts: list[list[Message]]
    texts: list[str]
    batch: Batch
    logprobs: torch.Tensor  # (B, T) under the policy that sampled them
    ref_logprobs: torch.Tensor  # (B, T)
    values: torch.Tensor  # (B, T)
    scores: torch.Tensor  # (B,) the reward, penalty included
    parts: dict[str, torch.Tensor]  # each reward's own scores
    eos: torch.Tensor  # (B,) bool: the response ended with EOS
    paid: torch.Tensor | None = None  # (B,) what the rewards paid, before the missing-EOS penalty (the monitors')
    weights: torch.Tensor | None = None  # (B, T) engine vllm: truncated importance weights (losses.sampler_weights)


class PPOTrainer:
    def __init__(self, config: PPOConfig, accelerator, reward: CombinedReward | None = None):
        self.config, self.accelerator = config, accelerator
        device = accelerator.device
        # under FSDP loaded on the CPU, each unit moved to this process's device as it is sharded (rlaif/ppo/fsdp.py)
        policy, self.reference, value, self.tokenizer = build_models(config, torch.device("cpu") if config.fsdp
                                                                     else device)
        if config.fsdp:  # sharded before the optimizers are built on their (sharded) parameters
            policy, value = fsdp.shard(policy, accelerator), fsdp.shard(value, accelerator)
            if self.reference is not None:
                self.reference = fsdp.shard(self.reference, accelerator)
        self.reward = reward or build_reward(config, device)
        lr = default_lr(config)
        fused = device.type in ("cpu", "cuda")  # one kernel for the whole update: several times faster on CPU
        trainable = lambda m: [p for p in m.parameters() if p.requires_grad]
        opt_policy = torch.optim.AdamW(trainable(policy), lr=lr, eps=1e-5, weight_decay=0.0, fused=fused)
        value_lr = lr if config.value_learning_rate is None else config.value_learning_rate
        opt_value = torch.optim.AdamW(trainable(value), lr=value_lr, eps=1e-5, weight_decay=0.0, fused=fused)
        sched_policy = torch.optim.lr_scheduler.LambdaLR(opt_policy, schedule(config))
        sched_value = torch.optim.lr_scheduler.LambdaLR(opt_value, schedule(config))
        objects = (policy, value, opt_policy, opt_value, sched_policy, sched_value)
        # under FSDP, the models are sharded already, and their checkpoints are fsdp.save's, not accelerate's
        (self.policy, self.value, self.opt_policy, self.opt_value, self.sched_policy,
         self.sched_value) = objects if config.fsdp else accelerator.prepare(*objects)
        self.kl_ctl = (L.AdaptiveKLController(config.kl_coef, config.kl_target, config.kl_horizon)
                       if config.kl_target else L.FixedKLController(config.kl_coef))
        self.step = 0
        self.timing: dict[str, float] = {}  # seconds per phase of the last step
        self.engine = None  # engine vllm: rollouts sampled by vLLM, which gets the policy's weights after each step
        self.logprob_gap = None  # engine vllm: the last rollout's mean |log p(vLLM) - log p(full pass)| per token
        if config.engine == "vllm":
            from rlaif.engines import VLLMModel

            self.engine = VLLMModel(config.policy, seed=config.seed, in_process=True,
                                    gpu_memory_utilization=config.vllm_gpu_memory_utilization,
                                    logprobs_mode="processed_logprobs")  # after temperature, as PPO's are

    # -- rollout -----------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def rollout(self, prompts: list[list[Message]], seed: int) -> Rollout:
        from rlaif.generate import GenerationConfig, encode_chat, generate

        config, accelerator, device = self.config, self.accelerator, self.accelerator.device
        policy, value = accelerator.unwrap_model(self.policy), accelerator.unwrap_model(self.value)
        generation = GenerationConfig(max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                                      top_p=config.top_p, seed=seed, batch_size=len(prompts), logprobs=True)
        started = time.perf_counter()
        # Eval mode while generating: a layer checkpointed in training mode may drop the KV cache generation reads.
        # Dropout is off in both modes, so the numbers are those of training mode.
        with _eval_mode(policy, value), accelerator.autocast():
            if self.engine is not None:
                done = dict(self.engine.complete(prompts, generation))
                replies = [done[i] for i in range(len(prompts))]
                if any(r.finish_reason == "too_long" for r in replies):
                    raise ConfigError(f"engine: a prompt and max_new_tokens ({config.max_new_tokens}) do not fit in "
                                      f"vLLM's context ({self.engine.config.max_position_embeddings + 1} tokens); "
                                      "lower max_new_tokens or shorten the prompts")
            else:
                with fsdp.gathered(policy) if config.fsdp else nullcontext():
                    replies = generate(policy, self.tokenizer, prompts, generation)
            self.timing["generate"] = time.perf_counter() - started
            queries = [encode_chat(self.tokenizer, p) for p in prompts]
            batch = pack(queries, [r.token_ids for r in replies], self.tokenizer.pad_token_id).to(device)
            width = batch.response.shape[1]
            logprobs = torch.tensor([r.logprobs + [0.0] * (width - len(r.logprobs)) for r in replies], device=device)
            hidden = weights = None
            # In bf16 or fp16, decoding token by token from a KV cache rounds otherwise than a full forward pass, by
            # more than a ratio that must start at 1 allows, and another engine's kernels differ more: the old
            # log-probabilities are then those of a full pass, as the reference's below and the training pass's are.
            recompute = accelerator.mixed_precision != "no" or self.engine is not None
            if recompute or config.shared_value_head:  # the hidden states only for the head
                logits, hidden = response_logits(policy, batch, hidden=True) if config.shared_value_head \
                    else (response_logits(policy, batch), None)
                if recompute:
                    full = L.logprobs_from_logits(logits, batch.response, config.temperature)
                    if self.engine is not None:
                        self.logprob_gap = ((full - logprobs).abs() * batch.mask).sum() / batch.mask.sum()
                        if config.vllm_importance_sampling_cap is not None:
                            weights = L.sampler_weights(full, logprobs, config.vllm_importance_sampling_cap)
                    logprobs = full
                del logits
            if self.reference is None:
                with policy.disable_adapter():
                    ref_logits = response_logits(policy, batch)
            else:
                ref_logits = response_logits(self.reference, batch)
            ref_logprobs = L.logprobs_from_logits(ref_logits, batch.response, config.temperature)
            del ref_logits
            values = value(hidden) if config.shared_value_head else value.values(batch)
        texts = [r.text for r in replies]
        paid = scores = self.reward(prompts, texts).to(device)
        eos = torch.tensor([r.finish_reason == "stop" for r in replies], device=device)
        if config.missing_eos_penalty:
            scores = scores - config.missing_eos_penalty * (~eos).float()
        parts = {name: part.to(device) for name, part in self.reward.last.items()}
        self.timing["score"] = time.perf_counter() - started - self.timing["generate"]
        return Rollout(prompts, texts, batch, logprobs * batch.mask, ref_logprobs * batch.mask, values * batch.mask,
                       scores, parts, eos, paid, None if weights is None else weights * batch.mask)

    # -- one PPO step ------------------------------------------------------------------------------------------------

    def train_step(self, prompts: list[list[Message]], seed: int) -> tuple[dict, Rollout]:
        config, accelerator = self.config, self.accelerator
        started = time.perf_counter()
        ro = self.rollout(prompts, seed)
        trained = time.perf_counter()
        mask = ro.batch.mask
        kl = L.kl_penalty(ro.logprobs, ro.ref_logprobs, config.kl_estimator) * mask
        beta = self.kl_ctl.value
        rewards, non_score = L.per_token_rewards(ro.scores, kl, mask, beta)
        advantages, returns = L.gae(rewards, ro.values, mask, config.gamma, config.lam)
        if config.whiten_advantages:
            advantages = L.masked_whiten(advantages, mask)
        kl_sum = ((ro.logprobs - ro.ref_logprobs) * mask).sum(1)  # the k1 estimate of KL(pi || ref) per response
        rows = len(prompts)
        kl_total, not_finite, all_rows = self.all_sum([kl_sum.sum(), (~torch.isfinite(ro.scores)).sum(), rows])
        mean_kl = kl_total / all_rows
        if not_finite:
            raise _Stop("rewards", "a reward is NaN or infinite", "check the reward function and the reward "
                        "model's reward_stats.json (a std of 0 makes normalised rewards infinite)")
        if not mean_kl <= config.max_kl:  # also when it is nan
            raise _Stop("kl", f"the mean KL to the reference is {mean_kl:.1f} nats per response, past max_kl "
                        f"{config.max_kl}", "raise kl_coef or lower kl_target, lower the learning rate, or raise "
                        "max_kl if this is expected")

        stats: dict[str, list[torch.Tensor]] = {}
        size = rows // config.minibatches
        micro = config.micro_batch_size or size
        generator = torch.Generator().manual_seed(seed)
        for _ in range(config.ppo_epochs):
            for minibatch in torch.randperm(rows, generator=generator).split(size):
                minibatch_stats = self.minibatch_backward(ro, advantages, returns, minibatch, micro)
                self._guard(minibatch_stats)
                accelerator.clip_grad_norm_(self.policy.parameters(), config.max_grad_norm)
                accelerator.clip_grad_norm_(self.value.parameters(), config.max_grad_norm)
                for optimizer in (self.opt_policy, self.opt_value):
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                for name, value in minibatch_stats.items():
                    stats.setdefault(name, []).append(value)
        self.sched_policy.step()
        self.sched_value.step()
        self.kl_ctl.update(mean_kl, all_rows)
        if self.engine is not None:  # the next rollout samples from the policy as it is now
            self.engine.push_weights(accelerator.unwrap_model(self.policy))

        # name: (sum, count) on this process; the logged mean is the sum over all processes over their count
        lengths = mask.sum(1)
        explained = L.explained_variance(ro.values, returns, mask)  # nan when the returns do not vary
        attended = ro.batch.attention_mask.bool()
        local = {
            **{name: (torch.stack(values).mean(), 1) for name, values in stats.items() if name != "ratio_max"},
            "score": (ro.scores.sum(), rows),
            **{f"score/{name}": (part.sum(), rows) for name, part in ro.parts.items()},
            "non_score_reward": (non_score.sum(), rows),
            "explained_variance": (explained.nan_to_num(0.0), explained.isfinite()),  # where it is defined
            "response_length": (lengths.sum(), rows),
            "tokens": (attended.sum(), 1),  # prompt + response tokens, per process
            "response_tokens": (mask.sum(), 1),
            "mean_context": ((ro.batch.position_ids[attended] + 1).sum(), attended.sum()),
            "eos_rate": (ro.eos.sum(), rows),
            **({"rollout/logprob_gap": (self.logprob_gap, 1)} if self.engine is not None else {}),
            **({"rollout/sampler_weight": (ro.weights.sum(), mask.sum())} if ro.weights is not None else {}),
        }
        totals = self.all_sum([x for pair in local.values() for x in pair])
        metrics = {name: totals[2 * i] / totals[2 * i + 1] if totals[2 * i + 1] else None
                   for i, name in enumerate(local)}
        ratio_max = accelerator.reduce(torch.stack(stats["ratio_max"]).max().float(), reduction="max")
        metrics.update({"ratio_max": ratio_max.item(), "kl": mean_kl, "beta": beta,
                        "lr": self.sched_policy.get_last_lr()[0]})
        seconds = time.perf_counter() - started
        self.timing["train"] = time.perf_counter() - trained
        metrics["samples_per_second"] = all_rows / seconds
        metrics["seconds"] = seconds
        metrics.update({f"time/{phase}": t for phase, t in self.timing.items()})
        # every process's replies (each has batch_size of them: a plain gather does)
        paid, tokens, kls, ended = accelerator.gather(torch.stack([ro.paid, lengths, kl_sum, ro.eos.float()], 1)).T
        metrics.update(M.step_monitors(paid.tolist(), tokens.tolist(), ended.bool().tolist(), config.max_new_tokens,
                                       kls.tolist()))
        return metrics, ro

    def minibatch_backward(self, ro: Rollout, advantages: torch.Tensor, returns: torch.Tensor, minibatch: torch.Tensor,
                           micro: int) -> dict[str, torch.Tensor]:
        """Accumulate the gradients of one minibatch's losses, `micro` rows per forward and backward pass, and return
        its statistics (detached scalars). advantages, returns (B, T) over the rollout; minibatch (M,) row indices.

        Every term (policy loss, value loss, entropy) is a mean over the minibatch's tokens. A micro-batch's token
        mean weighs its share of those tokens, so that sum_k (n_k / N) mean_k = sum of token losses / N whatever the
        split: weighing by rows would count a short response's tokens more in a smaller micro-batch, and
        micro_batch_size would change the gradient."""
        config, accelerator = self.config, self.accelerator
        device = ro.batch.mask.device
        tokens = ro.batch.mask[minibatch.to(device)].sum()
        totals: dict[str, torch.Tensor] = {}
        parts = minibatch.split(micro)
        for k, part in enumerate(parts):
            with ExitStack() as unsynced:
                if k < len(parts) - 1:  # under DDP, gradients are all-reduced once, by the last backward (under
                    # FSDP reduce-scattered after each: rlaif/ppo/fsdp.py)
                    for model in (self.policy, self.value):
                        unsynced.enter_context(accelerator.no_sync(model))
                index = part.to(device)
                batch = ro.batch.select(index)
                width = batch.response.shape[1]
                share = batch.mask.sum() / tokens
                if config.shared_value_head:
                    logits, hidden = response_logits(self.policy, batch, hidden=True)
                else:
                    logits = response_logits(self.policy, batch)
                logprobs = L.logprobs_from_logits(logits, batch.response, config.temperature)
                entropy = L.entropy_from_logits(logits if config.entropy_coef else logits.detach(), config.temperature)
                del logits
                pg_loss, pg_stats = L.policy_loss(logprobs, ro.logprobs[index, :width], advantages[index, :width],
                                                  batch.mask, config.clip_range,
                                                  None if ro.weights is None else ro.weights[index, :width])
                mean_entropy = L.masked_mean(entropy, batch.mask)
                policy_part = (pg_loss - config.entropy_coef * mean_entropy) * share
                if config.shared_value_head:  # one graph: one backward for both losses
                    values = self.value(hidden)
                else:
                    # The policy's graph is freed by its backward before the value model runs: the two models'
                    # activations are never held at once (their gradients are disjoint: nothing else changes).
                    accelerator.backward(policy_part)
                    values = self.value(batch.input_ids, batch.attention_mask, batch.position_ids, width)
                vf_loss, vf_stats = L.value_loss(values, ro.values[index, :width], returns[index, :width],
                                                 batch.mask, config.clip_range_value)
                accelerator.backward(config.vf_coef * vf_loss * share
                                     + (policy_part if config.shared_value_head else 0))
                ratio_max = pg_stats.pop("ratio_max")
                totals["ratio_max"] = torch.maximum(totals.get("ratio_max", ratio_max), ratio_max)
                for name, value in [("policy_loss", pg_loss), ("value_loss", vf_loss), ("entropy", mean_entropy),
                                    *pg_stats.items(), *vf_stats.items()]:
                    totals[name] = totals.get(name, 0) + value.detach() * share
        return totals

    def all_sum(self, values: list) -> list[float]:
        """Each value (a number or a one-element tensor) summed over the processes, in one all-reduce of a float64
        vector. Every process passes the same number of values whatever its share of the data, zeros for an empty
        share, so the collective matches however unevenly the data is split (a gather of per-row tensors would not)."""
        device = self.accelerator.device
        local = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=device).reshape(()) for v in values])
        return self.accelerator.reduce(local, reduction="sum").tolist()

    def _guard(self, stats: dict[str, torch.Tensor]) -> None:
        """Stop on a non-finite loss or a runaway ratio over a minibatch, decided on every process's values alike (one
        process stopping alone would leave the others waiting for its gradients): the maximum over processes of a
        fixed-size vector."""
        losses = torch.stack([stats["policy_loss"], stats["value_loss"]])
        worst = torch.stack([(~torch.isfinite(losses)).any().float(), stats["ratio_mean"].float()])
        worst = self.accelerator.reduce(worst, reduction="max")
        if worst[0] > 0:
            raise _Stop("loss", "the loss is NaN or infinite", "lower the learning rate, check the rewards' scale "
                        "(normalize_reward), or lower max_grad_norm")
        if worst[1] > self.config.max_ratio:
            raise _Stop("ratio", f"the mean probability ratio reached {worst[1]:.2f}, past max_ratio "
                        f"{self.config.max_ratio}: the policy moved far from the one that sampled",
                        "lower the learning rate or ppo_epochs, or use more minibatches")


@contextmanager
def _eval_mode(*modules: torch.nn.Module):
    """The modules in eval mode inside the block, in the mode each had before after it."""
    modes = [module.training for module in modules]
    try:
        for module in modules:
            module.eval()
        yield
    finally:
        for module, training in zip(modules, modes):
            module.train(training)


class _Stop(Exception):
    def __init__(self, what: str, message: str, advice: str):
        super().__init__(message)
        self.what, self.message, self.advice = what, message, advice


# --------------------------------------------------------------------------------------------------------------------
# The run


def prompt_order(n: int, step: int, batch: int, seed: int) -> list[int]:
    """Indices of the prompts for `step`: consecutive slices of per-epoch permutations fixed by the seed, so the data
    position is a function of the step (nothing to save, nothing to drift on resume)."""
    indices = []
    for position in range(step * batch, (step + 1) * batch):
        epoch, offset = divmod(position, n)
        if offset == 0 or not indices:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()
        indices.append(order[offset])
    return indices


def run(config: PPOConfig, progress: bool = True, reward: CombinedReward | None = None, on_step=None) -> dict:
    """Train (or resume training) with PPO; returns the last step's metrics, with `summary`: the prompts read, used
    and left out (also in the manifest's counts). `reward` replaces the configured rewards (a Python object);
    `on_step(step, metrics)` is called after each step.

    A prompt whose tokens (chat template included) and `max_new_tokens` do not fit in the policy's context is left
    out and counted, training and eval prompts alike; with no training prompt left (or no eval prompt, when eval
    prompts are given), a DataError before any model is loaded or OUT is created."""
    from accelerate import Accelerator
    from accelerate.utils import broadcast_object_list, set_seed

    from rlaif.models import context_length, fitting_prompts, load_tokenizer, trainer_device

    check(config, reward_given=reward is not None)
    out = Path(config.out)
    context = context_length(config.policy)
    room = None if context is None else context - config.max_new_tokens
    advice = f"each prompt and max_new_tokens ({config.max_new_tokens}) must fit in the policy's context of " \
             f"{context} tokens"
    tokenizer = load_tokenizer(config.policy)
    tally, eval_tally = Tally("prompts"), Tally("eval prompts")
    prompts = fitting_prompts(load_prompts(config.prompts), tokenizer, room, tally)
    tally.require_some(config.prompts, advice)
    eval_prompts = []
    if config.eval_prompts:
        eval_prompts = fitting_prompts(load_prompts(config.eval_prompts), tokenizer, room, eval_tally)
        eval_tally.require_some(config.eval_prompts, advice)
    summary = "; ".join(t.summary() for t in (tally, eval_tally) if t.read)
    done = finished_metrics(out, config.steps)
    if done is not None:
        return {**done, "summary": summary}
    device = trainer_device(config.device)  # accelerate places each process on its own GPU: cuda:N is refused
    # The schedules count PPO steps: one scheduler step per PPO step, however many processes (accelerate would step
    # a prepared scheduler once per process otherwise, running it num_processes times too fast).
    accelerator = Accelerator(cpu=device == "cpu", log_with=config.log_with, project_dir=str(out),
                              step_scheduler_with_optimizer=False)
    if accelerator.mixed_precision == "fp16":
        raise ConfigError("ppo: fp16 mixed precision is not supported (its loss scaler is shared by the policy's and "
                          "the value's optimizers); use accelerate launch --mixed_precision bf16, or no")
    check_processes(config, accelerator.num_processes)
    reward = reward or build_reward(config, accelerator.device)  # a reward that cannot load fails before OUT is made
    judge = build_judge(config, accelerator.device) if eval_prompts else None
    lr = default_lr(config)
    manifest = None
    if accelerator.is_main_process:
        manifest = open_stage(out, "ppo", {**asdict(config), "learning_rate": lr, "processes":
                                           accelerator.num_processes}, volatile=PPOConfig.VOLATILE,
                              added=PPOConfig.ADDED)
        manifest.add_input(config.prompts)
        manifest.status = "running"  # also when more steps extend a finished run
        manifest.save(out)
    accelerator.wait_for_everyone()
    set_seed(config.seed)
    trainer = PPOTrainer(config, accelerator, reward)
    main = accelerator.is_main_process
    # Every process resumes from the checkpoint the main process sees, and what is redone follows from it alone.
    newest = checkpoints(out)[-1:] if main else []
    resumed = broadcast_object_list([str(newest[0]) if newest else None])[0]
    if resumed:
        load_checkpoint(trainer, Path(resumed))
    if main:
        # A checkpoint at step N comes after every row up to N, evals included (each is written before the save of
        # its step); without one, nothing is done. The rows after that are work the resumed run redoes.
        for name in ("metrics.jsonl", "samples.jsonl", "eval.jsonl"):
            truncate_log(out / name, trainer.step if resumed else -1)
    watch = M.Watch.of(config)
    kept = lambda name: list(read_jsonl(out / name)) if main and (out / name).is_file() else []
    for row in kept("eval.jsonl")[:1] + kept("metrics.jsonl"):  # the rows kept, replayed: warned as before
        watch.observe(row)
    if config.log_with:
        accelerator.init_trackers("ppo", config={k: v for k, v in asdict(config).items()
                                                 if isinstance(v, (int, float, str, bool))})
    rank, world = accelerator.process_index, accelerator.num_processes
    names = ["metrics", "samples"] + (["eval"] if eval_prompts else [])
    logs = {name: JsonlWriter(out / f"{name}.jsonl") if main else None for name in names}
    metrics: dict = {}
    started = time.time()
    try:
        if eval_prompts and not resumed:
            watch.observe(_evaluate(trainer, eval_prompts, logs.get("eval"), judge))
        with progress_bar(progress and main, config.steps, "ppo", trainer.step, transient=False) as bar:
            while trainer.step < config.steps:
                step = trainer.step + 1
                order = prompt_order(len(prompts), step - 1, config.batch_size * world, config.seed)
                mine = order[rank * config.batch_size : (rank + 1) * config.batch_size]
                try:
                    metrics, ro = trainer.train_step([prompts[i]["prompt"] for i in mine],
                                                     seed=config.seed * 1_000_003 + step * 1_009 + rank)
                except _Stop as stop:
                    raise _stopped(trainer, out, step, stop) from None
                trainer.step = step
                metrics = {"id": f"step-{step:06d}", "step": step, **metrics}
                if eval_prompts and (step == config.steps or (config.eval_every and step % config.eval_every == 0)):
                    evaluated = _evaluate(trainer, eval_prompts, logs.get("eval"), judge)
                    metrics.update({k: v for k, v in evaluated.items() if k.startswith("monitor/")})
                metrics["warnings"], fresh = watch.observe(metrics)
                if main:
                    M.announce("ppo", step, fresh)
                    logs["metrics"].write(metrics)
                    if config.sample_every and (step % config.sample_every == 0 or step == 1):
                        for i, (prompt, text) in enumerate(zip(ro.prompts, ro.texts)):
                            logs["samples"].write({"id": f"step-{step:06d}-{i}", "step": step, "prompt": prompt,
                                                   "response": text, "score": ro.scores[i].item()})
                if config.log_with:
                    accelerator.log({k: v for k, v in metrics.items() if isinstance(v, float)}, step=step)
                if step % config.save_steps == 0 or step == config.steps:
                    save_checkpoint(trainer, out, config.save_total_limit)
                bar(1, f"reward {metrics['score']:+.3f}  kl {metrics['kl']:.3f}  beta {metrics['beta']:.4f}  "
                       f"len {metrics['response_length']:.0f}")
                if on_step:
                    on_step(step, metrics)
    finally:  # a stop too: the tracker's last steps are flushed (not accelerator.end_training, which would also
        for log in logs.values():  # end the process group that save_final's collectives need)
            if log:
                log.close()
        for tracker in accelerator.trackers:
            tracker.finish()
    save_final(trainer, out)
    if main:
        manifest.counts.update(tally.counts(), **(eval_tally.counts("eval_") if eval_tally.read else {}),
                               steps=trainer.step, processes=world, monitor_warnings=watch.total())
        manifest.extra["monitor_warnings"] = watch.fired
        manifest.seconds += time.time() - started
        manifest.outputs = ["model.safetensors", "value/", "metrics.jsonl", "samples.jsonl", "checkpoints/"] + (
            ["eval.jsonl"] if eval_prompts else [])
        manifest.status = "complete"
        manifest.save(out)
    return {**metrics, "summary": summary, "monitor_warnings": watch.fired}


def _evaluate(trainer: PPOTrainer, rows: list[dict], log: JsonlWriter | None, judge=None) -> dict:
    """The eval row (on every process): mean reward and KL (k1, nats per response) of sampled responses to the
    held-out prompts, and a `judge`'s monitors. The prompts go in batches of batch_size, each sampled with a seed fixed
    by its place in the list, dealt to the processes in turn: each prompt is scored once, by one process, its sample
    the one a single process would draw. Means are all-reduced (sum, count): shards of any size, empty ones, hold."""
    config, accelerator = trainer.config, trainer.accelerator
    starts = list(range(0, len(rows), config.batch_size))
    mine = starts[accelerator.process_index :: accelerator.num_processes]
    if config.fsdp:  # the same number of rollouts on every process: a process with fewer batches repeats its first
        # (or the first) and scores nothing from it (`None` below)
        rounds = -(-len(starts) // accelerator.num_processes)
        mine = mine + [None] * (rounds - len(mine))
    score = kl = count = paid = judged = 0.0
    for start in mine:
        ro = trainer.rollout([r["prompt"] for r in rows[start or 0 : (start or 0) + config.batch_size]],
                             seed=config.seed + (start or 0))
        if start is None:
            continue
        score = score + ro.scores.sum()
        kl = kl + ((ro.logprobs - ro.ref_logprobs) * ro.batch.mask).sum()
        count += len(ro.scores)
        if judge is not None:
            paid = paid + ro.paid.sum()
            judged = judged + judge.score(ro.prompts, ro.texts, normalize=bool(judge.stats)).sum()
    score, kl, count, paid, judged = trainer.all_sum([score, kl, count, paid, judged])
    row = {"id": f"step-{trainer.step:06d}", "step": trainer.step, "score": score / count, "kl": kl / count,
           "prompts": int(count)}
    if judge is not None:
        row.update({M.JUDGE: judged / count, M.GAP: (paid - judged) / count})
    if log is not None:
        log.write(row)
    return row


def _stopped(trainer: PPOTrainer, out: Path, step: int, stop: _Stop) -> PPOStopped:
    """Keep a checkpoint and explain. A rollout guard fires before any update, so the state is that after the last
    finished step: a regular checkpoint to resume from. A loss guard fires mid-step: that state goes to
    checkpoints/stopped-step-N for inspection, and the last regular checkpoint stays the one a rerun resumes."""
    if stop.what in ("rewards", "kl"):
        save_checkpoint(trainer, out, trainer.config.save_total_limit)
        where = out / "checkpoints" / f"step-{trainer.step}"
    else:
        where = out / "checkpoints" / f"stopped-step-{step}"
        save_state(trainer, where)
    return PPOStopped(f"PPO stopped at step {step}: {stop.message}. Checkpoint: {where}. Try: {stop.advice}.")
