"""The math of PPO with a KL penalty to a frozen reference model, as pure tensor functions (no model, config or I/O).

One rollout batch is B responses padded on the right to T tokens; `mask` (B, T) is 1 on real response tokens. In the
order the trainer uses them:

| step | function |
|---|---|
| token log-probabilities and entropy from logits | `logprobs_from_logits`, `entropy_from_logits` |
| per-token KL to the reference (k1, k2, k3) | `kl_penalty` |
| reward: -beta * KL on every token, plus the reward model's score on the last one | `per_token_rewards` |
| advantages and returns | `gae`, then `masked_whiten` on the advantages |
| the losses and their diagnostics | `policy_loss`, `value_loss`, `explained_variance` |
| beta between rollouts | `AdaptiveKLController`, `FixedKLController` |

Masked statistics divide by the number of real tokens, so an all-padding mask gives nan (0/0), as in TRL; the trainer
never builds one (every response has at least one token). One real token is a valid sample: its variance is 0, so
whitening it gives 0, not nan.
"""

from __future__ import annotations

import torch
from torch import Tensor


def logprobs_from_logits(logits: Tensor, tokens: Tensor, temperature: float = 1.0) -> Tensor:
    """log softmax(logits / temperature) at `tokens`. logits (B, T, V) any float dtype, tokens (B, T) long ->
    (B, T) float32. Uses logit - logsumexp so no (B, T, V) log-softmax is kept beside the float32 logits."""
    logits = logits.float()
    if temperature != 1.0:  # sampling divided by it, so the policy being scored is softmax(logits / temperature)
        logits = logits / temperature
    return logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def entropy_from_logits(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Entropy of softmax(logits / temperature). logits (B, T, V) any float dtype -> (B, T) float32."""
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    # H = -sum p log p = logsumexp(z) - sum p z, since log p = z - logsumexp(z)
    return torch.logsumexp(logits, dim=-1) - (torch.softmax(logits, dim=-1) * logits).sum(-1)


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, estimator: str = "k1") -> Tensor:
    """Per-token estimate of KL(pi || pi_ref) from tokens sampled from pi. logprobs, ref_logprobs (B, T) float ->
    (B, T) float. Estimators from Schulman 2020, "Approximating KL Divergence": k1 = log pi/pi_ref (unbiased, can be
    negative), k2 = (log pi/pi_ref)^2 / 2 (biased, >= 0), k3 = (r - 1) - log r with r = pi_ref/pi (unbiased, >= 0)."""
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio.square()
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio  # expm1 keeps k3 >= 0 and accurate when pi ~ pi_ref
    raise ValueError(f"unknown KL estimator {estimator!r}; valid: 'k1', 'k2', 'k3'")


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of x over the entries where mask is set. x float, mask bool or 0/1 float, same shape -> a scalar, or x
    with `dim` reduced. Entries outside the mask are ignored even when they are inf or nan."""
    mask = mask.bool()
    return torch.where(mask, x, 0).sum(dim) / mask.sum(dim)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of x over the mask, a float scalar; x float, mask bool or 0/1 float, same shape. `unbiased` applies
    Bessel's n / (n - 1) as TRL's masked_var does, but only for n >= 2: one real token has variance 0 (TRL's 0 * 1 / 0
    is nan, which whitening would spread to every advantage). An empty mask gives nan."""
    variance = masked_mean((x - masked_mean(x, mask)).square(), mask)
    if unbiased:
        n = mask.bool().sum()
        variance = variance * n / (n - 1).clamp(min=1)  # n = 1: the biased variance is exactly 0 already
    return variance


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True) -> Tensor:
    """x scaled to unit variance over the mask, and centred unless shift_mean=False (rewards are whitened that way so
    their sign survives: Huang et al. 2024, "The N Implementation Details of RLHF with PPO", after lm-human-preferences).
    x float, mask bool or 0/1 float, same shape -> same shape as x, 0 outside the mask. A single real token has
    variance 0 and whitens to 0 (or to itself with shift_mean=False)."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask.bool(), whitened, 0)


def per_token_rewards(scores: Tensor, kl: Tensor, mask: Tensor, beta: float) -> tuple[Tensor, Tensor]:
    """The KL-shaped reward R = r - beta * KL(pi || pi_ref) of Ziegler et al. 2019 sec 2.2, spread over tokens: the
    penalty on every real token, the reward model's score on the last real one.

    scores (B,) float, kl (B, T) float, mask (B, T) bool or 0/1 float, right-padded (a row's real tokens come first).
    Returns (rewards, non_score), both (B, T) in kl's dtype and 0 outside the mask; a row with no real token gets
    no score."""
    mask = mask.bool()
    non_score = torch.where(mask, -beta * kl, 0)
    lengths = mask.sum(-1)
    last = (lengths - 1).clamp(min=0).unsqueeze(-1)
    score = torch.where(lengths > 0, scores.to(kl.dtype), 0).unsqueeze(-1)
    return non_score.scatter_add(-1, last, score), non_score


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 0.95) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, eq. 16) over each row's response.

    rewards, values (B, T) float, mask (B, T) bool or 0/1 float, right-padded. Returns (advantages, returns), both
    (B, T) float and 0 outside the mask. The episode ends at a row's last real token, so V beyond it is 0."""
    mask = mask.bool()
    # Zeroing padding makes V = 0 past the end and stops the recursion there: padded deltas and advantages are all 0.
    rewards, values = torch.where(mask, rewards, 0), torch.where(mask, values, 0)
    next_values = torch.cat([values[:, 1:], torch.zeros_like(values[:, :1])], dim=1)
    deltas = rewards + gamma * next_values - values  # the TD residual delta_t of GAE sec. 3
    advantages, running = torch.zeros_like(deltas), torch.zeros_like(deltas[:, 0])
    for t in reversed(range(deltas.shape[1])):
        running = deltas[:, t] + gamma * lam * running  # GAE eq. 16 as a recursion: A_t = delta_t + gamma lam A_{t+1}
        advantages[:, t] = running
    advantages = torch.where(mask, advantages, 0)
    return advantages, torch.where(mask, advantages + values, 0)


def policy_loss(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, clip_range: float = 0.2,
    weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The clipped surrogate of PPO (Schulman et al. 2017, eq. 7), negated to be minimised, averaged over real tokens.

    logprobs (B, T) float under the policy being trained, old_logprobs and advantages (B, T) float from the rollout,
    mask (B, T) bool or 0/1 float; weights (B, T) float, optional: each token's term multiplied by it (the sampler
    correction, `sampler_weights`). Returns (loss scalar, stats): detached scalars "clipfrac" (share of tokens where
    the clipped term won), "approx_kl" (k3 estimate of KL(old || new)), "ratio_max" and "ratio_mean"."""
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip_range, 1 + clip_range)
    terms = torch.maximum(unclipped, clipped)  # PPO eq. 7: min of the two, as a loss a max
    loss = masked_mean(terms if weights is None else terms * weights, mask)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((clipped > unclipped).float(), mask),
            "approx_kl": masked_mean(ratio - 1 - log_ratio, mask),  # k3 of Schulman 2020, samples from the old policy
            "ratio_max": torch.where(mask.bool(), ratio, 0).max(),  # ratio > 0, so 0 never wins over a real token
            "ratio_mean": masked_mean(ratio, mask),
        }
    return loss, stats


def sampler_weights(old_logprobs: Tensor, sampler_logprobs: Tensor, cap: float) -> Tensor:
    """Truncated importance-sampling weights for replies sampled by another engine than the one PPO's ratio is taken
    against: min(pi_old(y_t) / pi_sampler(y_t), cap) per token, which makes the expectation over the sampler's
    tokens one over the old policy's, with the variance bounded by `cap` (Yao et al. 2025, "Your Efficient RL
    Framework Secretly Brings You Off-Policy RL Training", truncated importance sampling; TRL's GRPOTrainer applies
    the same to vLLM's samples, vllm_importance_sampling_cap). old_logprobs, sampler_logprobs (B, T) float -> (B, T)
    float, not differentiated."""
    return torch.exp(old_logprobs - sampler_logprobs).clamp(max=cap).detach()


def value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip_range: float = 0.2
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped value loss: the value head may move at most clip_range from its rollout prediction before the squared
    error stops rewarding it (OpenAI baselines ppo2; detail 9 of Huang et al. 2022, "The 37 Implementation Details of
    PPO", kept in "The N Implementation Details of RLHF with PPO").

    values (B, T) float from the value head being trained, old_values and returns (B, T) float from the rollout,
    mask (B, T) bool or 0/1 float. Returns (loss scalar, stats): "vf_clipfrac", the share of tokens where the clipped
    error was the larger one (detached)."""
    values_clipped = old_values + (values - old_values).clamp(-clip_range, clip_range)
    unclipped, clipped = (values - returns).square(), (values_clipped - returns).square()
    loss = 0.5 * masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {"vf_clipfrac": masked_mean((clipped > unclipped).float(), mask)}
    return loss, stats


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> Tensor:
    """1 - Var[returns - values] / Var[returns] over the mask (OpenAI baselines' explained_variance): 1 for a perfect
    value head, 0 for one that predicts the mean, negative for worse. values, returns (B, T) float, mask (B, T) bool
    or 0/1 float -> float scalar, nan when the returns do not vary (a single real token, say): it is undefined there,
    as in baselines, and the trainer logs it as null."""
    var_returns = masked_var(returns, mask, unbiased=False)
    ratio = masked_var(returns - values, mask, unbiased=False) / var_returns
    return torch.where(var_returns > 0, 1 - ratio, torch.nan)  # where, not `if`: no host sync on GPU


class AdaptiveKLController:
    """The KL coefficient beta of Ziegler et al. 2019 sec 2.2, steered so the measured KL tracks `target`:
    beta <- beta * (1 + K_beta * e), e = clip(KL / target - 1, -0.2, 0.2), with K_beta = n_steps / horizon as in
    their lm-human-preferences code (a rollout of n_steps episodes moves beta by at most 0.2 * n_steps / horizon)."""

    def __init__(self, init_kl_coef: float, target: float, horizon: int):
        self.value, self.target, self.horizon = float(init_kl_coef), float(target), int(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(current_kl / self.target - 1, -0.2), 0.2)
        self.value *= 1 + error * n_steps / self.horizon

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


class FixedKLController:
    """A constant beta, with the same interface as AdaptiveKLController."""

    def __init__(self, kl_coef: float):
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        pass

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])
