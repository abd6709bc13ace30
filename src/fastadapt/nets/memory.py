"""External memory with Least-Recently-Used Access (LRUA) heads, the memory of Santoro, Bartunov, Botvinick,
Wierstra & Lillicrap, "Meta-Learning with Memory-Augmented Neural Networks", ICML 2016 (section 3.1).

One memory ``M`` of ``slots`` rows of ``width`` values per episode, batched over episodes (every tensor has a
leading episode dimension; nothing loops over episodes). Each of the ``heads`` heads reads by content and writes
by LRUA; at step t, from the controller's output h_t:

- keys k_t and add vectors a_t (tanh of linear maps of h_t), one interpolation gate alpha_t per head;
- least-used weights from the previous usage: w^lu_{t-1} marks the n smallest entries of w^u_{t-1}, n = heads.
  Head i takes the i-th least-used slot (a one-hot row), so each head's write weights sum to 1 and the heads
  together cover exactly the n least-used slots, the paper's w^lu (eq. 21; the public references do the same);
- write weights, eq. (22): w^w_t = sigmoid(alpha_t) * w^r_{t-1} + (1 - sigmoid(alpha_t)) * w^lu_{t-1};
- the least-used slot (the smallest entry of w^u_{t-1}) is set to zero, then the additive write, eq. (23):
  M_t(i) = M_{t-1}(i) + sum_heads w^w_t(i) a_t;
- content reads from the written memory, eqs. (17)-(18): K(k, M(i)) = k . M(i) / (|k| |M(i)|),
  w^r_t(i) = softmax_i K(k_t, M_t(i)), r_t = sum_i w^r_t(i) M_t(i);
- usage, eq. (20): w^u_t = gamma * w^u_{t-1} + sum_heads w^r_t + sum_heads w^w_t.

The paper writes the read key itself (a_t = k_t in eq. 23); ``add_vector=True`` (the default) gives each head a
separate add vector a_t, as both public re-implementations do (tristandeleu/ntm-one-shot, snowkylin/ntm).

gamma: the paper gives no value; the usage decay 0.95 is the one of the public reference code (both
re-implementations above). With gamma = 0.95 a slot written or read once keeps a usage above that of a fresh
slot for ~60 steps (0.95^60 ~ 0.05), longer than a 50-step episode, so a stored class is not reclaimed as
"least used" while the episode can still ask for it, whereas gamma = 1 would never forget and gamma << 1 would
make every old slot look unused after a few steps.

Usage only picks slots (a sort), so it carries no gradient; everything else is differentiable end to end.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Usage decay of the public reference code (the paper gives none); see the module docstring.
DEFAULT_GAMMA = 0.95
#: Initial memory value of the reference code: small and non-zero, so every slot has a direction for cosine reads.
INITIAL_MEMORY = 1e-6


class MemoryState(NamedTuple):
    """What the memory carries from one step to the next, each with a leading episode dimension."""

    memory: Tensor  # (episodes, slots, width)
    read_weights: Tensor  # (episodes, heads, slots): w^r_{t-1}
    usage: Tensor  # (episodes, slots): w^u_{t-1}, no gradient
    reads: Tensor  # (episodes, heads * width): r_{t-1}, fed to the controller


def least_used_slots(usage: Tensor, heads: int) -> Tensor:
    """(episodes, slots) -> (episodes, heads): the ``heads`` slots of smallest usage, least used first (a stable
    sort: ties go to the lower slot index)."""
    return torch.sort(usage, dim=-1, stable=True).indices[:, :heads]


def least_used_weights(usage: Tensor, heads: int) -> Tensor:
    """w^lu of eq. (21), one row per head: (episodes, slots) -> (episodes, heads, slots) one-hot rows, head i at
    the slot with the i-th smallest usage."""
    return F.one_hot(least_used_slots(usage, heads), usage.shape[-1]).to(usage.dtype)


def write_weights(alpha: Tensor, previous_read_weights: Tensor, previous_least_used: Tensor) -> Tensor:
    """Eq. (22): w^w_t = sigmoid(alpha) w^r_{t-1} + (1 - sigmoid(alpha)) w^lu_{t-1}; ``alpha`` (episodes, heads)."""
    gate = torch.sigmoid(alpha).unsqueeze(-1)
    return gate * previous_read_weights + (1.0 - gate) * previous_least_used


def lrua_write(memory: Tensor, weights: Tensor, add: Tensor, least_used_slot: Tensor) -> Tensor:
    """Zero the least-used slot (``least_used_slot``: (episodes,) indices), then eq. (23): add w^w(i) a to every
    slot, summed over heads. ``weights`` (episodes, heads, slots), ``add`` (episodes, heads, width)."""
    keep = 1.0 - F.one_hot(least_used_slot, memory.shape[1]).to(memory.dtype)
    return memory * keep.unsqueeze(-1) + torch.einsum("ehs,ehw->esw", weights, add)


def content_read_weights(keys: Tensor, memory: Tensor) -> Tensor:
    """Eqs. (17)-(18): softmax over slots of the cosine similarity of each key with each slot.
    ``keys`` (episodes, heads, width), ``memory`` (episodes, slots, width) -> (episodes, heads, slots)."""
    # Dot products first, then one division of the (heads x slots) result: dividing the whole memory by its row
    # norms each step cost twice as much time (forward and backward) for the same numbers.
    norms = keys.norm(dim=-1).unsqueeze(-1) * memory.norm(dim=-1).unsqueeze(1)
    return torch.softmax((keys @ memory.transpose(1, 2)) / norms.clamp_min(1e-8), dim=-1)


def update_usage(usage: Tensor, read_weights: Tensor, weights: Tensor, gamma: float) -> Tensor:
    """Eq. (20): w^u_t = gamma w^u_{t-1} + sum_heads w^r_t + sum_heads w^w_t (detached: usage only selects)."""
    return gamma * usage + (read_weights.detach() + weights.detach()).sum(1)


class LRUAMemory(nn.Module):
    """The memory and its heads: maps the controller's output h_t and the previous :class:`MemoryState` to the
    new state, whose ``reads`` are r_t (see the module docstring for the equations)."""

    def __init__(
        self,
        controller_size: int,
        slots: int = 128,
        width: int = 40,
        heads: int = 4,
        gamma: float = DEFAULT_GAMMA,
        add_vector: bool = True,
    ) -> None:
        super().__init__()
        if heads < 1 or slots < heads or width < 1:
            raise ValueError(f"need 1 <= heads <= slots and width >= 1 (got heads={heads}, slots={slots})")
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"gamma must lie in [0, 1] (got {gamma})")
        self.slots, self.width, self.heads, self.gamma = slots, width, heads, gamma
        self.add_vector = add_vector
        # Per head: a key (width), an add vector (width, if separate) and the gate alpha (1).
        self.per_head = width * (2 if add_vector else 1) + 1
        self.interface = nn.Linear(controller_size, heads * self.per_head)

    @property
    def read_size(self) -> int:
        return self.heads * self.width

    def initial_state(self, episodes: int, device: torch.device | str = "cpu", dtype=torch.float32) -> MemoryState:
        """The reference code's start: memory 1e-6 everywhere, every head's previous read weights and the usage
        one-hot on slot 0, reads zero."""
        first_slot = torch.zeros(episodes, self.slots, device=device, dtype=dtype)
        first_slot[:, 0] = 1.0
        return MemoryState(
            memory=torch.full((episodes, self.slots, self.width), INITIAL_MEMORY, device=device, dtype=dtype),
            read_weights=first_slot.unsqueeze(1).expand(-1, self.heads, -1).clone(),
            usage=first_slot,
            reads=torch.zeros(episodes, self.read_size, device=device, dtype=dtype),
        )

    def head_parameters(self, controller_output: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Keys k_t, add vectors a_t (each (episodes, heads, width)) and gates alpha_t (episodes, heads)."""
        raw = self.interface(controller_output).view(-1, self.heads, self.per_head)
        keys = torch.tanh(raw[..., : self.width])
        add = torch.tanh(raw[..., self.width : 2 * self.width]) if self.add_vector else keys
        return keys, add, raw[..., -1]

    def forward(self, controller_output: Tensor, state: MemoryState) -> MemoryState:
        keys, add, alpha = self.head_parameters(controller_output)
        slots = least_used_slots(state.usage, self.heads)
        least_used = F.one_hot(slots, self.slots).to(state.usage.dtype)  # w^lu_{t-1}, eq. (21)
        weights = write_weights(alpha, state.read_weights, least_used)  # w^w_t, eq. (22)
        memory = lrua_write(state.memory, weights, add, slots[:, 0])  # zero the least-used slot, eq. (23)
        read_weights = content_read_weights(keys, memory)  # w^r_t, eqs. (17)-(18)
        reads = (read_weights @ memory).flatten(1)  # r_t
        usage = update_usage(state.usage, read_weights, weights, self.gamma)  # eq. (20)
        return MemoryState(memory, read_weights, usage, reads)

    def extra_repr(self) -> str:
        return (
            f"slots={self.slots}, width={self.width}, heads={self.heads}, gamma={self.gamma}, "
            f"add_vector={self.add_vector}"
        )
