"""PPO math: each vectorised function against a plain Python loop over the same inputs (ragged masks, an empty row),
and against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from rlaif.ppo.losses import (
    AdaptiveKLController,
    FixedKLController,
    entropy_from_logits,
    explained_variance,
    gae,
    kl_penalty,
    logprobs_from_logits,
    masked_mean,
    masked_var,
    masked_whiten,
    per_token_rewards,
    policy_loss,
    sampler_weights,
    value_loss,
)

LENGTHS = [5, 0, 3, 8, 1]  # row 1 has no response token; row 3 fills the whole width
T = 8


def close(a, b, tol=1e-5):
    return torch.allclose(torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64), atol=tol)


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    mask = torch.tensor([[t < n for t in range(T)] for n in LENGTHS])
    rand = lambda: torch.randn(len(LENGTHS), T, generator=g)
    return mask, rand


def reference_stats(x, mask):
    xs = [x[b, t].item() for b in range(x.shape[0]) for t in range(x.shape[1]) if mask[b, t]]
    mean = sum(xs) / len(xs)
    return xs, mean, sum((v - mean) ** 2 for v in xs) / (len(xs) - 1)


# --- log-probabilities, entropy, KL -----------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_and_entropy_match_log_softmax(temperature):
    logits = torch.randn(2, 3, 11, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    tokens = torch.randint(0, 11, (2, 3), generator=torch.Generator().manual_seed(2))
    log_p = torch.log_softmax(logits.float() / temperature, dim=-1)
    got = logprobs_from_logits(logits, tokens, temperature)
    assert got.dtype == torch.float32 and got.shape == (2, 3)
    assert close(got, log_p.gather(-1, tokens.unsqueeze(-1)).squeeze(-1))
    entropy = entropy_from_logits(logits, temperature)
    assert entropy.dtype == torch.float32 and close(entropy, -(log_p.exp() * log_p).sum(-1))


def test_entropy_of_uniform_is_log_v():
    assert close(entropy_from_logits(torch.zeros(1, 2, 7)), torch.full((1, 2), math.log(7)))


def test_kl_estimators_by_hand():
    lp, ref = torch.tensor([[-1.0, -2.0, -0.5]]), torch.tensor([[-1.5, -1.0, -0.5]])  # log pi/pi_ref = 0.5, -1, 0
    assert close(kl_penalty(lp, ref, "k1"), [[0.5, -1.0, 0.0]])
    assert close(kl_penalty(lp, ref, "k2"), [[0.125, 0.5, 0.0]])
    assert close(kl_penalty(lp, ref), kl_penalty(lp, ref, "k1"))
    assert close(kl_penalty(lp, ref, "k3"), [[math.exp(-0.5) - 1 + 0.5, math.exp(1) - 1 - 1, 0.0]])


def test_k3_is_non_negative_and_near_k2_for_small_differences():
    lp = torch.randn(1000, generator=torch.Generator().manual_seed(3)) * 5
    ref = torch.randn(1000, generator=torch.Generator().manual_seed(4)) * 5
    assert (kl_penalty(lp, ref, "k3") >= 0).all()
    small = ref + 1e-3 * torch.randn(1000, generator=torch.Generator().manual_seed(5))
    k2, k3 = kl_penalty(small, ref, "k2"), kl_penalty(small, ref, "k3")
    assert (k3 >= 0).all() and torch.allclose(k3, k2, rtol=0.01, atol=1e-12)


def test_unknown_kl_estimator_names_the_valid_ones():
    with pytest.raises(ValueError, match="k1.*k2.*k3"):
        kl_penalty(torch.zeros(1, 1), torch.zeros(1, 1), "kl")


# --- masked statistics ------------------------------------------------------------------------------------------------


def test_masked_stats_match_loops(batch):
    mask, rand = batch
    x = rand()
    x[~mask] = float("inf")  # padding must not leak, whatever it holds
    xs, mean, var = reference_stats(x, mask)
    assert close(masked_mean(x, mask), mean)
    assert close(masked_mean(x, mask.float()), mean)
    assert close(masked_var(x, mask), var)
    assert close(masked_var(x, mask, unbiased=False), var * (len(xs) - 1) / len(xs))
    row_means = masked_mean(x, mask, dim=1)
    for b, n in enumerate(LENGTHS):
        if n:
            assert close(row_means[b], sum(x[b, :n].tolist()) / n)
        else:
            assert row_means[b].isnan()  # 0 / 0: a row with no tokens has no mean


@pytest.mark.parametrize("shift_mean", [True, False])
def test_masked_whiten_matches_loop(batch, shift_mean):
    mask, rand = batch
    x = rand() * 3 + 2
    _, mean, var = reference_stats(x, mask)
    got = masked_whiten(x, mask, shift_mean=shift_mean)
    for b in range(len(LENGTHS)):
        for t in range(T):
            want = (x[b, t].item() - mean) / math.sqrt(var + 1e-8) + (0 if shift_mean else mean) if mask[b, t] else 0
            assert close(got[b, t], want)
    whitened = masked_whiten(x, mask)
    assert close(masked_mean(whitened, mask), 0.0) and close(masked_var(whitened, mask), 1.0, tol=1e-4)


def test_variance_of_one_token_is_zero_and_whitening_it_is_finite():
    one = torch.ones(1, 1)
    assert masked_var(torch.tensor([[0.37]]), one).item() == 0.0  # Bessel's n / (n - 1) would make it 0 / 0
    assert masked_var(torch.tensor([[0.37]]), one, unbiased=False).item() == 0.0
    assert masked_whiten(torch.tensor([[0.37]]), torch.tensor([[1]])).tolist() == [[0.0]]
    assert close(masked_whiten(torch.tensor([[0.37]]), one, shift_mean=False), [[0.37]])
    x, mask = torch.tensor([[0.37, 5.0], [9.0, -3.0]]), torch.tensor([[1, 0], [0, 0]])  # one real token, padding
    assert masked_var(x, mask).item() == 0.0 and masked_whiten(x, mask).tolist() == [[0.0, 0.0], [0.0, 0.0]]
    assert close(masked_var(torch.tensor([[1.0, 3.0]]), torch.ones(1, 2)), 2.0)  # from two tokens on, unbiased
    assert masked_var(x, torch.zeros(2, 2)).isnan()  # no token: no variance
    assert explained_variance(torch.tensor([[0.1]]), torch.tensor([[0.7]]), one).isnan()  # undefined, not 1 or 0


# --- rewards and advantages -------------------------------------------------------------------------------------------


def test_per_token_rewards_match_loop(batch):
    mask, rand = batch
    kl, scores, beta = rand(), torch.randn(len(LENGTHS)), 0.05
    rewards, non_score = per_token_rewards(scores, kl, mask.float(), beta)
    for b, n in enumerate(LENGTHS):
        for t in range(T):
            penalty = -beta * kl[b, t].item() if t < n else 0.0
            assert close(non_score[b, t], penalty)
            assert close(rewards[b, t], penalty + (scores[b].item() if t == n - 1 else 0.0))
    assert (rewards[1] == 0).all()  # the empty row: no score anywhere, in particular not at index -1


def test_per_token_rewards_by_hand():
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    rewards, non_score = per_token_rewards(torch.tensor([2.0, -1.0]), torch.tensor([[1.0, 2.0, 9.0]] * 2), mask, 0.1)
    assert close(non_score, [[-0.1, -0.2, 0.0], [-0.1, 0.0, 0.0]])
    assert close(rewards, [[-0.1, 1.8, 0.0], [-1.1, 0.0, 0.0]])


def reference_gae(rewards, values, n, gamma, lam):
    advantages = [0.0] * n
    for t in reversed(range(n)):
        next_value = values[t + 1] if t + 1 < n else 0.0
        next_advantage = advantages[t + 1] if t + 1 < n else 0.0
        advantages[t] = rewards[t] + gamma * next_value - values[t] + gamma * lam * next_advantage
    return advantages


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8), (1.0, 1.0), (0.99, 0.0)])
def test_gae_matches_loop(batch, gamma, lam):
    mask, rand = batch
    rewards, values = rand(), rand()
    advantages, returns = gae(rewards, values, mask, gamma, lam)
    for b, n in enumerate(LENGTHS):
        want = reference_gae(rewards[b].tolist(), values[b].tolist(), n, gamma, lam)
        assert close(advantages[b, :n], want) and close(returns[b, :n], [a + values[b, t] for t, a in enumerate(want)])
        assert (advantages[b, n:] == 0).all() and (returns[b, n:] == 0).all()


def test_gae_by_hand():
    rewards, values = torch.tensor([[1.0, 2.0, 3.0, 7.0]]), torch.tensor([[0.5, 1.0, 2.0, 9.0]])
    mask = torch.tensor([[1, 1, 1, 0]])  # the last column is padding and must not be read
    # gamma = lam = 1: the advantage is reward-to-go minus value, the return is reward-to-go
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    assert close(advantages, [[6 - 0.5, 5 - 1, 3 - 2, 0]]) and close(returns, [[6, 5, 3, 0]])
    # gamma = lam = 0.5: deltas 1 + 0.5*1 - 0.5 = 1, 2 + 0.5*2 - 1 = 2, 3 + 0 - 2 = 1; A_t = delta_t + 0.25 A_{t+1}
    advantages, returns = gae(rewards, values, mask, gamma=0.5, lam=0.5)
    a2 = 1.0
    a1 = 2 + 0.25 * a2
    a0 = 1 + 0.25 * a1
    assert close(advantages, [[a0, a1, a2, 0]]) and close(returns, [[a0 + 0.5, a1 + 1, a2 + 2, 0]])


# --- losses -----------------------------------------------------------------------------------------------------------


def test_policy_loss_matches_loop(batch):
    mask, rand = batch
    old, advantages = rand(), rand()
    logprobs = (old + 0.3 * rand()).requires_grad_()
    loss, stats = policy_loss(logprobs, old, advantages, mask, clip_range=0.2)
    terms, clipped, kls, ratios = [], [], [], []
    for b, t in ((b, t) for b in range(len(LENGTHS)) for t in range(T) if mask[b, t]):
        ratio, a = math.exp(logprobs[b, t].item() - old[b, t].item()), advantages[b, t].item()
        plain, clip = -a * ratio, -a * min(max(ratio, 0.8), 1.2)
        terms.append(max(plain, clip))
        clipped.append(clip > plain)
        kls.append(ratio - 1 - math.log(ratio))
        ratios.append(ratio)
    assert close(loss, sum(terms) / len(terms))
    assert close(stats["clipfrac"], sum(clipped) / len(clipped)) and 0 < stats["clipfrac"] < 1
    assert close(stats["approx_kl"], sum(kls) / len(kls))
    assert close(stats["ratio_max"], max(ratios)) and close(stats["ratio_mean"], sum(ratios) / len(ratios))
    assert all(not s.requires_grad for s in stats.values())
    loss.backward()
    assert (logprobs.grad[~mask] == 0).all()


def test_policy_loss_clipping_by_hand():
    old = torch.zeros(1, 3)
    logprobs = torch.log(torch.tensor([[1.5, 0.5, 1.1]])).requires_grad_()  # ratios 1.5, 0.5 (outside), 1.1 (inside)
    advantages = torch.tensor([[1.0, 1.0, -2.0]])
    loss, stats = policy_loss(logprobs, old, advantages, torch.ones(1, 3), clip_range=0.2)
    # token 0: A > 0, ratio above 1 + eps: max(-1.5, -1.2) = -1.2, clipped, no gradient
    # token 1: A > 0, ratio below 1 - eps: max(-0.5, -0.8) = -0.5, the unclipped term is pessimistic, so it is kept
    # token 2: inside the range: both terms 2.2
    assert close(loss, (-1.2 - 0.5 + 2.2) / 3)
    assert close(stats["clipfrac"], 1 / 3) and close(stats["ratio_max"], 1.5) and close(stats["ratio_mean"], 3.1 / 3)
    loss.backward()
    assert logprobs.grad[0, 0] == 0 and logprobs.grad[0, 1] != 0 and logprobs.grad[0, 2] != 0


def test_sampler_weights_truncate_and_weigh_each_token():
    """min(pi_old / pi_sampler, cap) by hand, and each token's term of the surrogate multiplied by its weight."""
    old = torch.log(torch.tensor([[0.5, 0.2, 0.9]]))
    sampler = torch.log(torch.tensor([[0.5, 0.8, 0.1]]))
    weights = sampler_weights(old, sampler, cap=2.0)
    assert torch.allclose(weights, torch.tensor([[1.0, 0.25, 2.0]]))  # 0.9 / 0.1 = 9, truncated at 2
    logprobs = torch.log(torch.tensor([[0.5, 0.2, 0.99]]))  # ratios 1, 1, 1.1
    advantages = torch.tensor([[1.0, -1.0, 2.0]])
    loss, _ = policy_loss(logprobs, old, advantages, torch.ones(1, 3), 0.2, weights)
    assert close(loss, (-1.0 * 1.0 + 1.0 * 0.25 - 2.2 * 2.0) / 3)
    plain, _ = policy_loss(logprobs, old, advantages, torch.ones(1, 3), 0.2)
    assert close(plain, (-1.0 + 1.0 - 2.2) / 3)


def test_value_loss_matches_loop(batch):
    mask, rand = batch
    old, returns = rand(), rand()
    values = old + 0.4 * rand()
    loss, stats = value_loss(values, old, returns, mask, clip_range=0.2)
    terms, clipped = [], []
    for b, t in ((b, t) for b in range(len(LENGTHS)) for t in range(T) if mask[b, t]):
        v, o, r = values[b, t].item(), old[b, t].item(), returns[b, t].item()
        plain, clip = (v - r) ** 2, (o + min(max(v - o, -0.2), 0.2) - r) ** 2
        terms.append(max(plain, clip))
        clipped.append(clip > plain)
    assert close(loss, 0.5 * sum(terms) / len(terms))
    assert close(stats["vf_clipfrac"], sum(clipped) / len(clipped)) and 0 < stats["vf_clipfrac"] < 1


def test_value_loss_clipping_by_hand():
    old, returns = torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, -1.0]])
    values = torch.tensor([[0.5, 0.5]])  # both moved 0.5 from the rollout, clipped back to 0.2
    loss, stats = value_loss(values, old, returns, torch.ones(1, 2), clip_range=0.2)
    # token 0 moved toward its return: max(0.5^2, 0.8^2) = 0.64 (clipped); token 1 away: max(1.5^2, 1.2^2) = 2.25
    assert close(loss, 0.5 * (0.64 + 2.25) / 2) and close(stats["vf_clipfrac"], 0.5)


def test_explained_variance(batch):
    mask, rand = batch
    returns = rand()
    assert close(explained_variance(returns, returns, mask), 1.0)
    assert close(explained_variance(torch.full_like(returns, masked_mean(returns, mask).item()), returns, mask), 0.0)
    values = rand()
    _, _, var_returns = reference_stats(returns, mask)
    _, _, var_residual = reference_stats(returns - values, mask)
    assert close(explained_variance(values, returns, mask), 1 - var_residual / var_returns)
    assert explained_variance(values, torch.ones_like(returns), mask).isnan()


# --- KL controllers ---------------------------------------------------------------------------------------------------


def test_adaptive_kl_controller_direction_and_clip():
    up, down = AdaptiveKLController(0.1, target=6.0, horizon=10000), AdaptiveKLController(0.1, 6.0, 10000)
    up.update(current_kl=6.6, n_steps=100)  # error 0.1
    down.update(current_kl=5.4, n_steps=100)  # error -0.1
    assert close(up.value, 0.1 * (1 + 0.1 * 100 / 10000)) and close(down.value, 0.1 * (1 - 0.1 * 100 / 10000))
    far_up, far_down = AdaptiveKLController(0.1, 6.0, 10000), AdaptiveKLController(0.1, 6.0, 10000)
    far_up.update(current_kl=60.0, n_steps=500)  # error 9 clipped to 0.2
    far_down.update(current_kl=0.0, n_steps=500)  # error -1 clipped to -0.2
    assert close(far_up.value, 0.1 * (1 + 0.2 * 500 / 10000)) and close(far_down.value, 0.1 * (1 - 0.2 * 500 / 10000))


def test_adaptive_kl_controller_moves_kl_toward_target():
    # a toy policy whose KL is inversely proportional to beta: the controller should settle where KL = target
    controller, kl = AdaptiveKLController(0.01, target=1.0, horizon=1000), None
    for _ in range(300):
        kl = 0.05 / controller.value
        controller.update(kl, n_steps=100)
    assert abs(kl - 1.0) < 0.05 and close(controller.value, 0.05, tol=0.005)


def test_kl_controller_state_round_trip():
    controller = AdaptiveKLController(0.2, target=3.0, horizon=100)
    controller.update(10.0, n_steps=10)
    restored = AdaptiveKLController(0.2, target=3.0, horizon=100)
    restored.load_state_dict(controller.state_dict())
    assert restored.value == controller.value != 0.2
    assert all(isinstance(v, float) for v in controller.state_dict().values())
    fixed = FixedKLController(0.05)
    for kl in (0.0, 1.0, 100.0):
        fixed.update(kl, n_steps=64)
    assert fixed.value == 0.05 and fixed.state_dict() == {"value": 0.05}
    other = FixedKLController(1.0)
    other.load_state_dict(fixed.state_dict())
    assert other.value == 0.05
