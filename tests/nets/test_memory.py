"""LRUA memory (Santoro et al. 2016): least-used weights, write weights, the zeroed slot, usage decay, content reads,
batching over episodes and gradients end to end."""

import pytest
import torch
import torch.nn.functional as F

from fastadapt.nets.memory import (
    LRUAMemory,
    MemoryState,
    content_read_weights,
    least_used_slots,
    least_used_weights,
    lrua_write,
    update_usage,
    write_weights,
)


def test_least_used_weights_mark_the_n_smallest_usages_least_used_first():
    usage = torch.tensor([[0.9, 0.1, 0.5, 0.05, 0.7], [0.0, 1.0, 0.0, 2.0, 0.0]])
    assert least_used_slots(usage, 2).tolist() == [[3, 1], [0, 2]]  # ties go to the lower slot
    expected = torch.tensor([[[0, 0, 0, 1, 0], [0, 1, 0, 0, 0]], [[1, 0, 0, 0, 0], [0, 0, 1, 0, 0]]]).float()
    assert torch.equal(least_used_weights(usage, 2), expected)
    # Over the heads together: exactly the paper's w^lu, 1 on the n smallest usages and 0 elsewhere.
    assert least_used_weights(usage, 3).sum(1).tolist() == [[0, 1, 1, 1, 0], [1, 0, 1, 0, 1]]


def test_write_weights_sum_to_one_and_go_to_the_least_used_slots():
    g = torch.Generator().manual_seed(0)
    previous_read = torch.softmax(torch.randn(3, 2, 6, generator=g), -1)
    usage = torch.rand(3, 6, generator=g)
    least_used = least_used_weights(usage, 2)
    alpha = torch.randn(3, 2, generator=g)
    weights = write_weights(alpha, previous_read, least_used)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 2))
    gate = torch.sigmoid(alpha).unsqueeze(-1)  # eq. (22) by hand
    torch.testing.assert_close(weights, gate * previous_read + (1 - gate) * least_used)
    # alpha -> -inf: all of each head's write lands on its least-used slot; alpha -> +inf: on the previous read.
    assert torch.equal(write_weights(torch.full((3, 2), -100.0), previous_read, least_used), least_used)
    torch.testing.assert_close(write_weights(torch.full((3, 2), 100.0), previous_read, least_used), previous_read)
    to_least_used = write_weights(torch.full((3, 2), -100.0), previous_read, least_used).sum(1)
    smallest_two = usage.argsort(-1)[:, :2]
    assert torch.equal(to_least_used.gather(1, smallest_two), torch.ones(3, 2))
    assert to_least_used.sum().item() == 6.0


def test_the_least_used_slot_is_zeroed_before_the_additive_write():
    memory = torch.arange(12.0).view(1, 3, 4) + 1
    weights = torch.tensor([[[0.5, 0.25, 0.25]]])
    add = torch.tensor([[[1.0, -1.0, 2.0, 0.0]]])
    written = lrua_write(memory, weights, add, torch.tensor([1]))
    expected = memory.clone()
    expected[0, 1] = 0.0  # the old content of the least-used slot is gone
    expected = expected + weights[0, 0].view(3, 1) * add[0, 0]
    assert torch.equal(written, expected)
    assert torch.equal(written[0, 1], 0.25 * add[0, 0])


def test_content_reads_are_a_softmax_of_cosine_similarities():
    g = torch.Generator().manual_seed(1)
    memory = torch.randn(2, 5, 3, generator=g)
    keys = torch.randn(2, 4, 3, generator=g)
    weights = content_read_weights(keys, memory)
    cosine = torch.stack([F.cosine_similarity(keys[e].unsqueeze(1), memory[e].unsqueeze(0), dim=-1) for e in range(2)])
    torch.testing.assert_close(weights, torch.softmax(cosine, -1))
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4))
    # A key pointing exactly at a slot's content weighs that slot most (cosine 1, the largest possible).
    assert content_read_weights(memory[:, 2:3] * 3.0, memory).argmax(-1).flatten().tolist() == [2, 2]


def test_usage_decays_with_gamma():
    usage = torch.tensor([[1.0, 0.5, 0.0, 2.0]])
    nothing = torch.zeros(1, 2, 4)
    assert torch.equal(update_usage(usage, nothing, nothing, 0.95), 0.95 * usage)
    decayed = usage
    for _ in range(10):
        decayed = update_usage(decayed, nothing, nothing, 0.5)
    torch.testing.assert_close(decayed, usage * 0.5**10)
    read = torch.tensor([[[0.1, 0.2, 0.3, 0.4], [0.0, 0.0, 1.0, 0.0]]])
    write = torch.tensor([[[0.0, 1.0, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]]])
    torch.testing.assert_close(update_usage(usage, read, write, 0.9), 0.9 * usage + read.sum(1) + write.sum(1))


def test_one_step_of_the_memory_follows_the_equations():
    torch.manual_seed(0)
    mem = LRUAMemory(controller_size=6, slots=7, width=3, heads=2, gamma=0.8)
    state = mem.initial_state(2, dtype=torch.float64)
    mem = mem.double()
    g = torch.Generator().manual_seed(3)
    state = MemoryState(
        torch.randn(2, 7, 3, generator=g, dtype=torch.float64),
        torch.softmax(torch.randn(2, 2, 7, generator=g, dtype=torch.float64), -1),
        torch.rand(2, 7, generator=g, dtype=torch.float64),
        torch.zeros(2, 6, dtype=torch.float64),
    )
    h = torch.randn(2, 6, generator=g, dtype=torch.float64)
    new = mem(h, state)
    raw = mem.interface(h).view(2, 2, 7)
    keys, add, alpha = torch.tanh(raw[..., :3]), torch.tanh(raw[..., 3:6]), raw[..., 6]
    order = state.usage.argsort(-1)
    least_used = F.one_hot(order[:, :2], 7).double()
    gate = torch.sigmoid(alpha).unsqueeze(-1)
    weights = gate * state.read_weights + (1 - gate) * least_used
    memory = state.memory.clone()
    memory[torch.arange(2), order[:, 0]] = 0.0
    memory = memory + torch.einsum("ehs,ehw->esw", weights, add)
    torch.testing.assert_close(new.memory, memory)
    read_weights = torch.softmax(F.normalize(keys, dim=-1) @ F.normalize(memory, dim=-1).transpose(1, 2), -1)
    torch.testing.assert_close(new.read_weights, read_weights)
    torch.testing.assert_close(new.reads, (read_weights @ memory).flatten(1))
    torch.testing.assert_close(new.usage, 0.8 * state.usage + read_weights.sum(1) + weights.sum(1))
    assert not new.usage.requires_grad  # usage only selects slots


def test_initial_state_is_the_reference_codes():
    state = LRUAMemory(4, slots=6, width=2, heads=3).initial_state(2)
    assert torch.equal(state.memory, torch.full((2, 6, 2), 1e-6))
    assert torch.equal(state.usage, F.one_hot(torch.zeros(2, dtype=torch.long), 6).float())
    assert state.read_weights.shape == (2, 3, 6) and torch.equal(state.read_weights[:, :, 0], torch.ones(2, 3))
    assert torch.equal(state.reads, torch.zeros(2, 6))
    # The first write goes to slots 1, 2, 3 (usage 0, the lowest indices) and zeroes slot 1.
    assert least_used_slots(state.usage, 3).tolist() == [[1, 2, 3], [1, 2, 3]]


def test_episodes_are_batched_and_independent():
    torch.manual_seed(0)
    mem = LRUAMemory(controller_size=5, slots=6, width=3, heads=2)
    outputs = torch.randn(4, 3, 5)  # episodes, steps, controller units

    def run(h):
        state = mem.initial_state(h.shape[0])
        for t in range(h.shape[1]):
            state = mem(h[:, t], state)
        return state

    together = run(outputs)
    for e in range(4):
        alone = run(outputs[e : e + 1])
        for a, b in zip(together, alone):
            torch.testing.assert_close(a[e : e + 1], b)


def test_reads_are_differentiable_end_to_end():
    torch.manual_seed(0)
    mem = LRUAMemory(controller_size=3, slots=5, width=4, heads=2, gamma=0.95).double()
    h = torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True)  # episodes, steps, controller units
    start = torch.randn(2, 5, 4, dtype=torch.float64, requires_grad=True)

    def reads_after_four_steps(h, start):
        state = mem.initial_state(2, dtype=torch.float64)._replace(memory=start)
        reads = []
        for t in range(4):
            state = mem(h[:, t], state)
            reads.append(state.reads)
        return torch.stack(reads, 1)

    assert torch.autograd.gradcheck(reads_after_four_steps, (h, start), eps=1e-6, atol=1e-5)
    # The interface's weights (keys, add vectors, gates) get gradients too.
    reads_after_four_steps(h, start).sum().backward()
    assert mem.interface.weight.grad is not None and mem.interface.weight.grad.abs().sum() > 0


def test_the_paper_variant_writes_the_key():
    torch.manual_seed(0)
    mem = LRUAMemory(controller_size=4, slots=5, width=3, heads=1, add_vector=False)
    assert mem.interface.out_features == 3 + 1
    h = torch.randn(1, 4)
    keys, add, _ = mem.head_parameters(h)
    assert torch.equal(keys, add)


@pytest.mark.parametrize("kwargs", [dict(slots=3, heads=4), dict(gamma=1.5), dict(heads=0)])
def test_impossible_memories_are_refused(kwargs):
    with pytest.raises(ValueError):
        LRUAMemory(4, **kwargs)
