"""LEO: its regularisers against hand computations, its encoder against a naive eq. (3), its two inner
loops, and where the meta-gradient goes."""

import math

import pytest
import torch
from helpers import vector_batch

from fastadapt.algorithms.optimization.leo import (
    LEO,
    gaussian_kl_to_standard_normal,
    linear_logits,
    orthogonality_penalty,
    per_task_cross_entropy,
)


def small_leo(**kwargs) -> LEO:
    torch.manual_seed(0)
    defaults = dict(embedding_dim=6, latent_dim=4, inner_steps=3, inner_lr=0.5, finetuning_steps=2, dropout=0.0)
    return LEO(**{**defaults, **kwargs}).double()


def test_kl_term_equals_the_hand_computation():
    mu = torch.tensor([[0.5, -1.0]])
    sigma = torch.tensor([[1.0, 0.5]])
    # 0.5 * (sigma^2 + mu^2 - 1 - log sigma^2): 0.5 * (1 + 0.25 - 1 - 0) and 0.5 * (0.25 + 1 - 1 + log 4)
    expected = torch.tensor([[0.125, 0.5 * (0.25 + math.log(4.0))]])
    torch.testing.assert_close(gaussian_kl_to_standard_normal(mu, sigma), expected)
    reference = torch.distributions.kl_divergence(
        torch.distributions.Normal(mu, sigma), torch.distributions.Normal(0.0, 1.0)
    )
    torch.testing.assert_close(gaussian_kl_to_standard_normal(mu, sigma), reference)


def test_orthogonality_penalty_equals_the_hand_computation():
    # rows (1, 0) and (1, 1): correlation 1/sqrt(2) off the diagonal; mean of (C - I)^2 = (0.5 + 0.5) / 4
    assert orthogonality_penalty(torch.tensor([[1.0, 0.0], [1.0, 1.0]])).item() == pytest.approx(0.25)
    # orthogonal rows of any length: no penalty
    assert orthogonality_penalty(torch.tensor([[3.0, 0.0, 0.0], [0.0, 0.0, -2.0]])).item() == pytest.approx(0.0)
    # LEO applies it to the decoder with one row per latent dimension
    leo = small_leo()
    torch.testing.assert_close(leo.decoder_orthogonality(), orthogonality_penalty(leo.decoder.weight.T))


def test_each_regulariser_enters_the_meta_loss_with_its_weight():
    batch = vector_batch(tasks=2, ways=3, shots=2, query=2, dim=6)
    off = dict(kl_weight=0.0, encoder_penalty_weight=0.0, l2_penalty_weight=0.0, orthogonality_penalty_weight=0.0)

    def loss(**weights):
        leo = small_leo(**{**off, **weights})
        torch.manual_seed(1)  # the same samples of z and w in every call
        return leo, leo.meta_loss(batch).loss

    leo, base = loss()
    _, with_l2 = loss(l2_penalty_weight=0.1)
    torch.testing.assert_close(with_l2 - base, 0.1 * leo.l2_penalty())
    _, with_orth = loss(orthogonality_penalty_weight=0.3)
    torch.testing.assert_close(with_orth - base, 0.3 * leo.decoder_orthogonality())
    torch.manual_seed(1)
    state = leo.adapt(batch)
    kl = gaussian_kl_to_standard_normal(state["mean"], state["sigma"]).mean()
    encoder_penalty = (state["z_adapted"] - state["z"]).square().mean()
    _, with_kl = loss(kl_weight=0.2)
    torch.testing.assert_close(with_kl - base, 0.2 * kl)
    _, with_encoder = loss(encoder_penalty_weight=0.7)
    torch.testing.assert_close(with_encoder - base, 0.7 * encoder_penalty)


def test_encoder_averages_the_relation_network_over_all_support_pairs():
    """Eq. (3) written naively: for class n, the mean over its K examples and all N*K partners."""
    leo = small_leo()
    batch = vector_batch(tasks=2, ways=3, shots=2, query=1, dim=6)
    mean, sigma = leo.encode(batch.support_x, batch.support_y, batch.ways)
    for t in range(2):
        codes = leo.encoder(batch.support_x[t])
        for n in range(3):
            outputs = [
                leo.relation(torch.cat([codes[k], codes[m]]))
                for k in range(len(codes))
                if batch.support_y[t, k] == n
                for m in range(len(codes))
            ]
            raw = torch.stack(outputs).mean(0)
            torch.testing.assert_close(mean[t, n], raw[:4])
            torch.testing.assert_close(sigma[t, n], torch.nn.functional.softplus(raw[4:]) + 1e-6)


def test_latent_inner_loop_lowers_the_support_loss():
    leo = small_leo(inner_lr=0.3).eval()
    batch = vector_batch(tasks=3, ways=4, shots=2, query=2, dim=6)
    with torch.no_grad():
        mean, _ = leo.encode(batch.support_x, batch.support_y, batch.ways)

    def support_loss(z):
        return per_task_cross_entropy(linear_logits(batch.support_x, leo.decode(z)), batch.support_y)

    before = support_loss(mean)
    after = support_loss(leo.latent_inner_loop(mean, batch.support_x, batch.support_y, steps=5))
    assert (after < before).all(), (before, after)
    # and the fine-tuning loop lowers it further from the decoded weights
    weights = leo.decode(leo.latent_inner_loop(mean, batch.support_x, batch.support_y, steps=5))
    tuned = leo.finetuning_inner_loop(weights, batch.support_x, batch.support_y, steps=5)
    finetuned = per_task_cross_entropy(linear_logits(batch.support_x, tuned), batch.support_y)
    assert (finetuned < after).all()


def test_one_latent_step_follows_the_support_loss_summed_over_examples():
    """As the authors' tf.gradients of per-example losses: alpha multiplies the gradient of the sum."""
    leo = small_leo(inner_lr=0.3).eval()
    batch = vector_batch(tasks=2, ways=3, shots=2, query=1, dim=6)
    with torch.no_grad():
        mean, _ = leo.encode(batch.support_x, batch.support_y, batch.ways)
    z = mean.clone().requires_grad_(True)
    logits = linear_logits(batch.support_x, leo.decode(z))
    summed = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch.support_y.flatten(), reduction="sum")
    (grad,) = torch.autograd.grad(summed, z)
    stepped = leo.latent_inner_loop(mean, batch.support_x, batch.support_y, steps=1)
    torch.testing.assert_close(stepped, mean - 0.3 * grad)


def test_meta_gradient_reaches_encoder_relation_decoder_and_learning_rates():
    leo = small_leo(dropout=0.3, grad_clip=None)
    leo.meta_loss(vector_batch(tasks=2, ways=3, shots=2, query=2, dim=6)).loss.backward()
    for name in ("encoder", "relation", "decoder"):
        grads = [p.grad for p in getattr(leo, name).parameters()]
        assert all(g is not None and g.abs().sum() > 0 for g in grads), name
    assert leo.inner_lr.grad.abs().sum() > 0  # alpha is meta-learned through the latent loop
    assert leo.finetuning_lr.grad.abs().sum() > 0  # and eta through the fine-tuning loop


def test_training_clips_gradients_entrywise():
    leo = small_leo(grad_clip=1e-4)
    leo.meta_loss(vector_batch(tasks=2, ways=3, shots=2, query=2, dim=6)).loss.backward()
    assert max(p.grad.abs().max().item() for p in leo.parameters()) > 1e-4  # something to clip
    leo.clip_meta_gradient()  # what the training loop does before each outer step
    assert max(p.grad.abs().max().item() for p in leo.parameters()) <= 1e-4 + 1e-12


def test_prediction_is_deterministic_any_way_and_invariant_to_support_order():
    leo = small_leo(dropout=0.5).eval()
    batch = vector_batch(tasks=2, ways=5, shots=2, query=3, dim=6)
    with torch.no_grad():
        first, second = leo.predict(batch), leo.predict(batch)
    assert first.shape == (2, 15, 5)
    torch.testing.assert_close(first, second)  # no sampling, no dropout at test time
    order = torch.randperm(10)
    shuffled = type(batch)(batch.support_x[:, order], batch.support_y[:, order], batch.query_x, batch.query_y, 5)
    with torch.no_grad():
        torch.testing.assert_close(leo.predict(shuffled), first)


def test_ablations_switch_off_each_inner_loop():
    batch = vector_batch(tasks=2, ways=3, shots=1, query=2, dim=6)
    no_latent = small_leo(inner_steps=0).eval()
    z, z_adapted = no_latent.latent_codes(batch)
    torch.testing.assert_close(z, z_adapted)
    no_finetuning = small_leo(finetuning_steps=0).eval()
    state = no_finetuning.adapt(batch)
    torch.testing.assert_close(state["weights"], no_finetuning.decode(state["z_adapted"]))
