import pytest
import torch

from fastadapt.rl.trpo import conjugate_gradient


def test_conjugate_gradient_solves_a_positive_definite_system():
    torch.manual_seed(0)
    a = torch.randn(6, 6, dtype=torch.float64)
    a = a @ a.T + 0.5 * torch.eye(6, dtype=torch.float64)
    b = torch.randn(6, dtype=torch.float64)
    x = conjugate_gradient(lambda v: a @ v, b, iterations=6)
    assert torch.allclose(x, torch.linalg.solve(a, b), atol=1e-8)


def test_trpo_step_lands_on_the_kl_boundary_of_a_quadratic_model():
    # surrogate g.theta, KL 0.5 theta^T A theta around theta_old = 0: the step is sqrt(2 delta / g^T A^-1 g) A^-1 g
    from fastadapt.rl.trpo import hessian_vector_product, trpo_step

    torch.manual_seed(1)
    a = torch.randn(4, 4, dtype=torch.float64)
    a = a @ a.T + torch.eye(4, dtype=torch.float64)
    g = torch.randn(4, dtype=torch.float64)
    theta = torch.zeros(4, dtype=torch.float64, requires_grad=True)

    def evaluate():
        return g.dot(theta), 0.5 * theta @ a @ theta

    surrogate, kl = evaluate()
    stats = trpo_step([theta], surrogate, hessian_vector_product(kl, [theta]), evaluate, max_kl=0.01, cg_iterations=4)
    direction = torch.linalg.solve(a, g)
    expected = (2 * 0.01 / g.dot(direction)).sqrt() * direction
    assert stats.accepted and stats.backtracks == 0
    assert torch.allclose(theta.detach(), expected, atol=1e-10)
    assert stats.kl == pytest.approx(0.01, rel=1e-8)


def test_trpo_step_backtracks_until_the_exact_kl_is_within_the_bound():
    # the exact KL is 4x its quadratic model: the full step is rejected, 0.8^k shrinks until 4 * 0.01 * 0.64^k <= 0.01
    from fastadapt.rl.trpo import hessian_vector_product, trpo_step

    g = torch.tensor([1.0, 2.0], dtype=torch.float64)
    theta = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    surrogate = g.dot(theta)
    fisher = hessian_vector_product(0.5 * theta.dot(theta), [theta])
    stats = trpo_step([theta], surrogate, fisher, lambda: (g.dot(theta), 2.0 * theta.dot(theta)), max_kl=0.01)
    assert stats.accepted and stats.backtracks == 4  # 0.64^3 = 0.262 > 0.25 >= 0.64^4 = 0.168
    assert stats.kl <= 0.01
