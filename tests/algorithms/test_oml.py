import pytest
import torch
import torch.nn.functional as F

from fastadapt.algorithms.continual.oml import OML, OMLOptions, build, oml_pln, oml_rln, options_from_preset
from fastadapt.continual.protocol import MetaTestOptions, meta_test
from fastadapt.errors import ConfigError
from fastadapt.tasks.episodes import TaskBatch

TINY = dict(image_size=12, channels=4, strides=(2, 1), hidden=6, num_outputs=5)  # 12 -> 5 -> 3: 36 features


def tiny_oml(first_order=False, seed=0) -> OML:
    torch.manual_seed(seed)
    return OML(oml_rln(4, 12, (2, 1)).double(), oml_pln(36, 6, 5).double(), inner_lr=0.3, first_order=first_order)


def trajectory_batch(k=3, r=2, seed=0) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)
    return TaskBatch(
        torch.rand(1, k, 1, 12, 12, generator=g, dtype=torch.float64),
        torch.full((1, k), 2),
        torch.rand(1, r, 1, 12, 12, generator=g, dtype=torch.float64),
        torch.tensor([[0, 4]]),
        5,
    )


def reference_meta_gradient(learner: OML, batch: TaskBatch, create_graph: bool) -> list[torch.Tensor]:
    """The reference code's loop: the whole network runs on each trajectory image, the PLN's weights (a plain
    list) take one autograd SGD step per image; the meta-loss on trajectory + remember set."""
    rln, pln = learner.rln, learner.pln
    w1, b1, w2, b2 = pln[0].weight, pln[0].bias, pln[2].weight, pln[2].bias
    weights = [w1, b1, w2, b2]

    def net(x, w):
        return F.linear(F.relu(F.linear(rln(x), w[0], w[1])), w[2], w[3])

    for j in range(batch.support_y.shape[1]):
        loss = F.cross_entropy(net(batch.support_x[0, j : j + 1], weights), batch.support_y[0, j : j + 1])
        grads = torch.autograd.grad(loss, weights, create_graph=create_graph)
        weights = [w - 0.3 * g for w, g in zip(weights, grads)]
    x = torch.cat([batch.support_x[0], batch.query_x[0]])
    y = torch.cat([batch.support_y[0], batch.query_y[0]])
    meta = F.cross_entropy(net(x, weights), y)
    return list(torch.autograd.grad(meta, list(learner.parameters())))


@pytest.mark.parametrize("first_order", [False, True])
def test_meta_gradient_through_the_online_updates_matches_a_reference_loop_in_float64(first_order):
    learner, batch = tiny_oml(first_order), trajectory_batch()
    expected = reference_meta_gradient(learner, batch, create_graph=not first_order)
    learner.meta_loss(batch).loss.backward()
    for p, e in zip(learner.parameters(), expected):
        assert torch.allclose(p.grad, e, atol=1e-12, rtol=1e-10)
    assert all(p.grad.abs().sum() > 0 for p in learner.rln.parameters())  # the RLN is meta-learned


def test_second_order_terms_matter():
    batch = trajectory_batch()
    exact = reference_meta_gradient(tiny_oml(), batch, create_graph=True)
    approx = reference_meta_gradient(tiny_oml(), batch, create_graph=False)
    assert not torch.allclose(exact[0], approx[0])


def test_only_the_pln_learns_online_and_the_rln_stays_bit_identical():
    learner = tiny_oml()
    rln_before = {k: v.clone() for k, v in learner.rln.state_dict().items()}
    pln_before = {k: v.clone() for k, v in learner.pln.state_dict().items()}
    batch = trajectory_batch(k=6)
    learner.learn_online(batch.support_x[0], batch.support_y[0], lr=0.1)
    assert all(torch.equal(rln_before[k], v) for k, v in learner.rln.state_dict().items())
    assert all(not torch.equal(pln_before[k], v) for k, v in learner.pln.state_dict().items())


def test_online_updates_are_plain_sgd_one_example_at_a_time():
    learner = tiny_oml()
    batch = trajectory_batch(k=4)
    x, y = batch.support_x[0], batch.support_y[0]
    plain = torch.nn.Sequential(learner.rln, learner.pln)
    import copy

    reference = copy.deepcopy(plain)
    optimizer = torch.optim.SGD(reference[1].parameters(), lr=0.1)
    for j in range(4):
        optimizer.zero_grad()
        F.cross_entropy(reference(x[j : j + 1]), y[j : j + 1]).backward()
        optimizer.step()
    learner.learn_online(x, y, lr=0.1)
    for a, b in zip(learner.pln.parameters(), reference[1].parameters()):
        assert torch.allclose(a, b, atol=1e-12)


def test_meta_test_leaves_the_learner_unchanged_and_scores_both_sets():
    learner = tiny_oml()
    state = {k: v.clone() for k, v in learner.state_dict().items()}
    images = torch.rand(8, 20, 1, 12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    options = MetaTestOptions(classes=(2, 5), runs=2, search_runs=2, learning_rates=(0.1, 0.01))
    record = meta_test(learner, images, options, progress=False)
    assert all(torch.equal(state[k], v) for k, v in learner.state_dict().items())
    assert [r["classes"] for r in record["results"]] == [2, 5]
    for r in record["results"]:
        assert r["lr"] in (0.1, 0.01) and len(r["runs"]) == 2 and 0 <= r["test_acc"]["mean"] <= 1


def test_bad_settings_are_one_line_errors():
    learner = tiny_oml()
    images = torch.rand(8, 20, 1, 12, 12, dtype=torch.float64)
    with pytest.raises(ConfigError) as err:
        meta_test(learner, images, MetaTestOptions(classes=(9,)), progress=False)
    assert "evaluation set has only 8" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="5 outputs"):
        meta_test(
            learner, torch.rand(30, 20, 1, 12, 12, dtype=torch.float64), MetaTestOptions(classes=(6,)), progress=False
        )
    with pytest.raises(ConfigError, match="shrink to nothing"):
        OMLOptions(image_size=12, strides=(2, 2, 2)).validate()
    with pytest.raises(ConfigError, match="unknown OML preset"):
        options_from_preset("mnist")


def test_build_from_options_and_reset_rows():
    learner = build(OMLOptions(**TINY, seed=3))
    assert learner.rln(torch.rand(2, 1, 12, 12)).shape == (2, 36)
    before = learner.output_layer.weight.clone()
    learner.reset_output_rows([1], torch.Generator().manual_seed(0))
    changed = (learner.output_layer.weight != before).any(1)
    assert changed.tolist() == [False, True, False, False, False]
    assert torch.equal(build(OMLOptions(**TINY, seed=3)).rln[0].weight, build(OMLOptions(**TINY, seed=3)).rln[0].weight)
