import torch

from fastadapt.rl.policy import kl_divergence, log_prob


def test_log_prob_and_kl_match_torch_distributions():
    torch.manual_seed(0)
    mean, log_std, actions = torch.randn(4, 3), torch.randn(3) * 0.3, torch.randn(4, 3)
    normal = torch.distributions.Normal(mean, log_std.exp())
    assert torch.allclose(log_prob(mean, log_std, actions), normal.log_prob(actions).sum(-1))
    mean_q, log_std_q = torch.randn(4, 3), torch.randn(3) * 0.3
    other = torch.distributions.Normal(mean_q, log_std_q.exp())
    expected = torch.distributions.kl_divergence(normal, other).sum(-1)
    assert torch.allclose(kl_divergence(mean, log_std, mean_q, log_std_q), expected, atol=1e-6)


def test_a_policy_in_units_of_the_action_bound_has_the_unscaled_policys_gradients():
    """mean = s * MLP, std starting at s * init_std: log-likelihood gradients equal the unscaled policy's on the
    actions divided by s (rllab's normalised action space), and KL divergences are the same."""
    import math

    from fastadapt.rl.policy import GaussianMLPPolicy

    torch.manual_seed(0)
    unscaled = GaussianMLPPolicy(2, 2, (8,), init_std=0.7).double()
    torch.manual_seed(0)
    scaled = GaussianMLPPolicy(2, 2, (8,), init_std=0.7, action_scale=0.1).double()
    assert torch.allclose(scaled.log_std, unscaled.log_std + math.log(0.1))
    observations, actions = torch.randn(5, 2, dtype=torch.float64), 0.1 * torch.randn(5, 2, dtype=torch.float64)
    grads = []
    for policy, acts in ((unscaled, actions / 0.1), (scaled, actions)):
        loss = log_prob(policy(observations), policy.log_std, acts).sum()
        grads.append(torch.autograd.grad(loss, list(policy.parameters())))
    for g_unscaled, g_scaled in zip(*grads):
        assert torch.allclose(g_unscaled, g_scaled, atol=1e-12)
    with torch.no_grad():
        shifted = 0.3 + unscaled(observations)
        kl_unscaled = kl_divergence(unscaled(observations), unscaled.log_std, shifted, unscaled.log_std - 0.2)
        kl_scaled = kl_divergence(scaled(observations), scaled.log_std, 0.1 * shifted, scaled.log_std - 0.2)
    assert torch.allclose(kl_unscaled, kl_scaled, atol=1e-12)
