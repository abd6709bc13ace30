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
