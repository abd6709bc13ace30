import torch
from helpers import adam_meta_losses, vector_batch

from fastadapt.algorithms.metric.matching import MatchingNet, cosine_attention
from fastadapt.tasks.episodes import TaskBatch


def naive_log_probs(embed, batch, scale=1.0):
    """Eqs. (1)-(2) one query at a time: softmax of (scaled) cosine similarities, summed per class."""
    out = []
    for t in range(batch.num_tasks):
        zs, zq = embed(batch.support_x[t]), embed(batch.query_x[t])
        rows = []
        for q in zq:
            sims = scale * torch.stack([torch.dot(q, s) / (q.norm() * s.norm()) for s in zs])
            a = sims.exp() / sims.exp().sum()
            rows.append(torch.stack([a[batch.support_y[t] == k].sum().log() for k in range(batch.ways)]))
        out.append(torch.stack(rows))
    return torch.stack(out)


def lstm_step(x, h, c, w_ih, w_hh, b_ih, b_hh):
    i, f, g, o = (w_ih @ x + b_ih + w_hh @ h + b_hh).chunk(4)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def naive_fce_embeddings(learner, support_x, query_x):
    """Appendix A.1-A.2 for one episode, one example and one time step at a time."""
    lstm, att = learner.support_lstm, learner.query_lstm
    zs, zq = learner.encoder(support_x), learner.encoder(query_x)
    d = zs.shape[1]

    def run(order, suffix):
        weights = [getattr(lstm, f"{name}_l0{suffix}") for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        h, c, hs = zs.new_zeros(d), zs.new_zeros(d), {}
        for i in order:
            h, c = lstm_step(zs[i], h, c, *weights)
            hs[i] = h
        return hs

    n = len(zs)
    fwd, bwd = run(range(n), ""), run(reversed(range(n)), "_reverse")
    g = torch.stack([fwd[i] + bwd[i] + zs[i] for i in range(n)])
    fs = []
    for q in zq:
        h, c = q.new_zeros(d), q.new_zeros(d)
        for _ in range(learner.fce_steps):
            a = torch.softmax(torch.stack([torch.dot(h, gi) for gi in g]), 0)
            r = (a.unsqueeze(1) * g).sum(0)
            i, f, gg, o = (att.gates.weight @ torch.cat([q, h, r]) + att.gates.bias).chunk(4)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(gg)
            h = torch.sigmoid(o) * torch.tanh(c) + q
        fs.append(h)
    return g, torch.stack(fs)


def test_batched_attention_equals_naive_per_episode_computation():
    torch.manual_seed(0)
    encoder = torch.nn.Linear(6, 5).double()
    batch = vector_batch(ways=3, shots=2)
    log_probs = MatchingNet(encoder, 5).predict(batch)
    torch.testing.assert_close(log_probs, naive_log_probs(encoder, batch))
    torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(2, 6, dtype=torch.float64))


def test_batched_attention_equals_naive_with_a_conv_encoder_on_images():
    torch.manual_seed(0)
    encoder = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3), torch.nn.ReLU(), torch.nn.Flatten()).double()
    g = torch.Generator().manual_seed(2)
    labels = torch.arange(3).repeat_interleave(2).repeat(2, 1)
    images = lambda: torch.randn(2, 6, 1, 8, 8, generator=g, dtype=torch.float64)
    batch = TaskBatch(images(), labels, images(), labels, 3)
    embed = lambda x: encoder(x).flatten(1)
    torch.testing.assert_close(MatchingNet(encoder, 108).predict(batch), naive_log_probs(embed, batch))


def test_batched_fce_equals_naive_per_episode_computation():
    torch.manual_seed(0)
    learner = MatchingNet(torch.nn.Linear(6, 4), 4, fce=True, fce_steps=3).double()
    batch = vector_batch(ways=3, shots=2)
    support, query = learner.embed(batch)
    for t in range(batch.num_tasks):
        g, f = naive_fce_embeddings(learner, batch.support_x[t], batch.query_x[t])
        torch.testing.assert_close(support[t], g)
        torch.testing.assert_close(query[t], f)


def test_prediction_is_invariant_to_support_order():
    torch.manual_seed(0)
    learner = MatchingNet(torch.nn.Linear(6, 5).double(), 5)
    batch = vector_batch(ways=3, shots=2)
    perm = torch.randperm(batch.support_x.shape[1])
    shuffled = TaskBatch(batch.support_x[:, perm], batch.support_y[:, perm], batch.query_x, batch.query_y, batch.ways)
    torch.testing.assert_close(learner.predict(batch), learner.predict(shuffled))


def test_fce_changes_embeddings_and_its_lstms_get_gradients():
    torch.manual_seed(0)
    encoder = torch.nn.Linear(6, 4).double()
    plain, fce = MatchingNet(encoder, 4), MatchingNet(encoder, 4, fce=True, fce_steps=2).double()
    batch = vector_batch(ways=3, shots=2)
    for a, b in zip(plain.embed(batch), fce.embed(batch)):
        assert a.shape == b.shape and not torch.allclose(a, b)
    output = fce.meta_loss(batch)
    assert output.predictions.shape == (2, 6, 3)
    output.loss.backward()
    for module in (fce.support_lstm, fce.query_lstm):
        for name, p in module.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_meta_loss_is_nll_of_predictions():
    torch.manual_seed(0)
    learner = MatchingNet(torch.nn.Linear(6, 5).double(), 5)
    batch = vector_batch(ways=3, shots=2)
    output = learner.meta_loss(batch)
    expected = -output.predictions.gather(-1, batch.query_y.unsqueeze(-1)).mean()
    torch.testing.assert_close(output.loss, expected)


def test_adam_steps_lower_the_meta_loss():
    for fce in (False, True):
        torch.manual_seed(0)
        learner = MatchingNet(torch.nn.Linear(6, 8), 8, fce=fce, fce_steps=2).double()
        batch = vector_batch(ways=4, shots=2, query=3, seed=1)
        losses = adam_meta_losses(learner, batch, steps=30)
        assert losses[-1] < 0.9 * losses[0], (fce, losses[0], losses[-1])


def test_cosine_scale_multiplies_the_similarities_and_is_learned():
    torch.manual_seed(0)
    encoder = torch.nn.Linear(6, 5).double()
    batch = vector_batch(ways=3, shots=2)
    scaled = MatchingNet(encoder, 5, cosine_scale=4.0).double()
    torch.testing.assert_close(scaled.predict(batch), naive_log_probs(encoder, batch, scale=4.0))
    assert not torch.allclose(scaled.predict(batch), MatchingNet(encoder, 5).predict(batch))
    scaled.meta_loss(batch).loss.backward()
    assert scaled.cosine_scale.grad is not None and scaled.cosine_scale.grad.abs() > 0


def test_cosine_scale_lifts_the_bound_on_attention():
    # Identical query and support embeddings: the plain cosine softmax over 5 examples tops out at
    # e / (e + 4) when the others are orthogonal; a scale of 10 nearly saturates it.
    eye = torch.eye(5, dtype=torch.float64).unsqueeze(0)
    plain = cosine_attention(eye, eye)
    torch.testing.assert_close(
        plain.diagonal(dim1=1, dim2=2), torch.full((1, 5), torch.e / (torch.e + 4), dtype=torch.float64)
    )
    assert (cosine_attention(eye, eye, 10.0).diagonal(dim1=1, dim2=2) > 0.99).all()
