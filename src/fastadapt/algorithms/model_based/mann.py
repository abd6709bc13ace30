"""MANN: a memory-augmented neural network with Least-Recently-Used Access (Santoro, Bartunov, Botvinick,
Wierstra & Lillicrap, "Meta-Learning with Memory-Augmented Neural Networks", ICML 2016).

The model itself is the learner: an LSTM controller reads a sequence of examples, each with the label of the
previous one, and keeps what it learns about the episode's classes in an external memory (128 slots x 40 values,
4 read heads; :mod:`fastadapt.nets.memory` holds the memory and eqs. 17-23). At step t::

    gates_t      = W_x [x_t; onehot(y_{t-1})] + W_h [h_{t-1}; r_{t-1}] + b        (LSTM controller, 200 units)
    h_t, c_t     = LSTM(gates_t, c_{t-1})
    w^lu_{t-1}   = the n least-used slots of w^u_{t-1}   (n = read heads)                         eq. (21)
    w^w_t        = sigmoid(alpha_t) w^r_{t-1} + (1 - sigmoid(alpha_t)) w^lu_{t-1}                  eq. (22)
    M_t          = M_{t-1} with its least-used slot zeroed, + sum_heads w^w_t a_t^T                eq. (23)
    w^r_t        = softmax_i cos(k_t, M_t(i)),   r_t = sum_i w^r_t(i) M_t(i)                       eqs. (17)-(18)
    w^u_t        = gamma w^u_{t-1} + sum_heads (w^r_t + w^w_t),   gamma = 0.95                     eq. (20)
    p(y_t | ...) = softmax(W_o [h_t; r_t] + b_o)

and the meta-loss is the cross-entropy of every step's prediction, averaged over the steps and the episodes of
a meta-batch (trained over many episodes whose classes and label assignments change each time, so the weights
cannot store classes: they must learn to bind labels to examples in memory). With ``memory=False`` the same
controller alone, predicting from h_t, is the paper's LSTM baseline (an ``nn.LSTM`` of the same size).

Two protocols: the paper's sequences (:mod:`fastadapt.tasks.sequences`, accuracy by instance) and the standard
N-way K-shot episodes (:meth:`MANN.predict`): the support set, in a shuffled order, is fed as a sequence with its
labels; then every query is one further step from the state after the support set, each query on its own (the
step's label input is the last support label, as in a sequence). Trained on N-way K-shot batches,
:meth:`MANN.meta_loss` presents an episode's support and query examples as one shuffled sequence.

Deviations, all from the public re-implementations the paper's numbers are usually compared with
(tristandeleu/ntm-one-shot in Theano, snowkylin/ntm in TensorFlow): a separate add vector a_t per head (the paper
writes the key, ``add_vector=False``), one head per least-used slot (see :mod:`fastadapt.nets.memory`), and
gamma = 0.95 (the paper gives no value).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastadapt.algorithms.base import MetaLearner, MetaOutput
from fastadapt.algorithms.registry import Algorithm, register
from fastadapt.errors import ConfigError
from fastadapt.nets.memory import DEFAULT_GAMMA, LRUAMemory, MemoryState
from fastadapt.options import MethodOptions, option, require_positive
from fastadapt.tasks.episodes import TaskBatch
from fastadapt.tasks.sequences import SequenceBatch, previous_labels


@dataclass
class MANNOptions(MethodOptions):
    """The network of MANN (or, with ``memory=False``, of the LSTM baseline); the number of labels is the
    episodes' ways."""

    controller_size: int = option(200, "LSTM controller units (paper: 200)")
    memory_slots: int = option(128, "memory rows (paper: 128)")
    memory_width: int = option(40, "values per memory row (paper: 40)")
    read_heads: int = option(4, "read heads, also the number of least-used slots written")
    gamma: float = option(DEFAULT_GAMMA, "usage decay of eq. (20), in [0, 1] (reference code: 0.95)")
    add_vector: bool = option(
        True, "write a separate add vector per head (--no-add-vector: write the key, as the paper)"
    )
    memory: bool = option(True, "use the external memory (--no-memory: the plain LSTM baseline of the same size)")
    support_order_seed: int = option(0, "seed of the order in which a test episode's support set is presented")

    def validate(self) -> None:
        """One line naming the first bad option and its fix (on the run's whole configuration when there is one)."""
        require_positive(self, "controller_size", "memory_slots", "memory_width", "read_heads")
        if self.memory and self.memory_slots < self.read_heads:
            raise ConfigError(
                f"--memory-slots {self.memory_slots} is fewer than --read-heads {self.read_heads}: LRUA writes to the "
                f"{self.read_heads} least-used slots; use at least {self.read_heads} slots or fewer heads."
            )
        if not 0.0 <= self.gamma <= 1.0:
            raise ConfigError(f"--gamma must lie in [0, 1] (got {self.gamma}); the reference value is 0.95.")
        train_ways = getattr(self, "train_ways", None)
        if train_ways is not None and train_ways != getattr(self, "ways", train_ways):
            raise ConfigError(
                f"MANN has one output per label, so its training and test episodes need the same number of classes "
                f"(--train-ways {train_ways}, --ways {self.ways}); drop --train-ways."
            )


# Per data set: MANN's options and the trainer's settings (fastadapt.config.Config fields).
# fmt: off
PRESETS: dict[str, dict[str, Any]] = {
    # Santoro et al. 2016, section 4.1 and appendix: LSTM controller of 200 units, memory 128 x 40, 4 read heads,
    # episodes of 5 classes x 10 instances (here 1 support + 9 query examples per class, all presented as one
    # shuffled sequence with every step in the loss), 20x20 images, the 1200 training characters in four rotations
    # and the 423 test characters; gamma 0.95 from the reference code. Adam 1e-3 and 16 episodes per update
    # (the paper: RMSprop 1e-4), 25000 updates: the CPU budget of docs/mann.md.
    "omniglot": dict(controller_size=200, memory_slots=128, memory_width=40, read_heads=4, gamma=0.95,
                     add_vector=True, memory=True, image_size=20, ways=5, shots=1, query=9, eval_query=15,
                     meta_batch_size=16, lr=1e-3, steps=25000, val_every=1000),
}
# fmt: on


class MANN(MetaLearner):
    """MANN (``options.memory``) or its plain LSTM baseline over flattened ``input_size``-value examples."""

    supports_regression = False

    def __init__(self, input_size: int, ways: int, options: MANNOptions | None = None) -> None:
        super().__init__()
        self.options = options = options or MANNOptions()
        MANNOptions.validate(options)  # options may be a run's whole configuration
        if ways < 2:
            raise ConfigError(f"--ways must be at least 2 for MANN's classifier (got {ways}).")
        self.input_size, self.ways, hidden = input_size, ways, options.controller_size
        if options.memory:
            self.memory = LRUAMemory(
                hidden,
                options.memory_slots,
                options.memory_width,
                options.read_heads,
                options.gamma,
                options.add_vector,
            )
            read = self.memory.read_size
            self.input_gates = nn.Linear(input_size + ways, 4 * hidden)  # W_x, b
            self.recurrent_gates = nn.Linear(hidden + read, 4 * hidden, bias=False)  # W_h on [h_{t-1}; r_{t-1}]
        else:
            self.memory = None
            self.lstm = nn.LSTM(input_size + ways, hidden, batch_first=True)
            read = 0
        self.output = nn.Linear(hidden + read, ways)  # W_o, b_o
        self._compiled_step = None

    def compile_step(self) -> MANN:
        """torch.compile the per-step function (fused elementwise work: ~20% faster training steps on CPU, after
        about a minute of compiling per batch shape). Returns ``self``."""
        if self.memory is not None:
            self._compiled_step = torch.compile(self.step, dynamic=False)
        return self

    # -- the recurrence -------------------------------------------------------------------------------------------

    def initial_state(self, episodes: int, like: Tensor) -> tuple[Tensor, Tensor, MemoryState | None]:
        zeros = like.new_zeros(episodes, self.options.controller_size)
        memory = self.memory.initial_state(episodes, like.device, like.dtype) if self.memory is not None else None
        return zeros, zeros.clone(), memory

    def run(
        self, inputs: Tensor, label_inputs: Tensor, state: tuple | None = None
    ) -> tuple[Tensor, tuple[Tensor, Tensor, MemoryState | None]]:
        """Logits of every step and the final state. ``inputs`` (episodes, steps, input_size), ``label_inputs``
        (episodes, steps, ways): the previous step's one-hot label."""
        episodes = inputs.shape[0]
        h, c, memory = state if state is not None else self.initial_state(episodes, inputs)
        joined = torch.cat([inputs, label_inputs], dim=-1)
        if self.memory is None:
            out, (h, c) = self.lstm(joined, (h.unsqueeze(0), c.unsqueeze(0)))
            return self.output(out), (h.squeeze(0), c.squeeze(0), None)
        # W_x [x_t; y_{t-1}] + b of every step in one product (the inputs do not depend on the recurrence); unbind,
        # not indexing, so that backward stacks the steps' gradients instead of filling a zero tensor per step.
        step = self._compiled_step or self.step
        features = []
        for step_gates in self.input_gates(joined).unbind(1):
            h, c, memory = step(step_gates, h, c, memory)
            features.append(torch.cat([h, memory.reads], dim=-1))
        return self.output(torch.stack(features, dim=1)), (h, c, memory)

    def step(
        self, input_gates: Tensor, h: Tensor, c: Tensor, memory: MemoryState
    ) -> tuple[Tensor, Tensor, MemoryState]:
        """One step of the controller and the memory, given W_x [x_t; y_{t-1}] + b."""
        gates = input_gates + self.recurrent_gates(torch.cat([h, memory.reads], dim=-1))
        i, f, g, o = gates.chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, c, self.memory(h, memory)  # eqs. (20)-(23), then the reads r_t

    def sequence_logits(self, images: Tensor, labels: Tensor) -> Tensor:
        """(episodes, steps, ...) examples in presentation order and their labels -> (episodes, steps, ways)
        logits, step t seeing the label of step t - 1 only."""
        self._check_ways(self.ways if labels.numel() == 0 else int(labels.max()) + 1, exact=False)
        inputs = self._flatten(images)
        return self.run(inputs, previous_labels(labels, self.ways, inputs.dtype))[0]

    # -- MetaLearner ----------------------------------------------------------------------------------------------

    def sequence_loss(self, batch: SequenceBatch) -> MetaOutput:
        """The paper's objective: cross-entropy of every step, mean over steps and episodes."""
        self._check_ways(batch.ways)
        logits = self.sequence_logits(batch.images, batch.labels)
        return MetaOutput(F.cross_entropy(logits.flatten(0, 1), batch.labels.flatten()), logits)

    def meta_loss(self, batch: TaskBatch | SequenceBatch) -> MetaOutput:
        """A :class:`SequenceBatch` as it is; a :class:`TaskBatch`'s support and query examples as one sequence in
        a random order (the loss of every step), with the query examples' logits as predictions."""
        if isinstance(batch, SequenceBatch):
            return self.sequence_loss(batch)
        self._check_task_batch(batch)
        images = torch.cat([batch.support_x, batch.query_x], dim=1)
        labels = torch.cat([batch.support_y, batch.query_y], dim=1)
        order = torch.argsort(torch.rand(labels.shape, device=labels.device), dim=1)
        images, labels = _gather_steps(images, order), labels.gather(1, order)
        logits = self.sequence_logits(images, labels)
        position = torch.argsort(order, dim=1)[:, batch.support_y.shape[1] :]  # where each query was presented
        loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten())
        return MetaOutput(loss, _gather_steps(logits, position))

    def predict(self, batch: TaskBatch) -> Tensor:
        """N-way K-shot: the support set (shuffled with ``eval_seed``) as a sequence, then each query as one
        further step from the state after it -> (tasks, query, ways) logits."""
        self._check_task_batch(batch)
        tasks, shots = batch.support_y.shape
        generator = torch.Generator().manual_seed(self.options.support_order_seed)
        order = torch.argsort(torch.rand(tasks, shots, generator=generator), dim=1).to(batch.support_y.device)
        support_y = batch.support_y.gather(1, order)
        support = self._flatten(_gather_steps(batch.support_x, order))
        _, (h, c, memory) = self.run(support, previous_labels(support_y, self.ways, support.dtype))
        queries = batch.query_y.shape[1]
        repeat = lambda x: x.repeat_interleave(queries, dim=0)  # one copy of the state per query
        state = (repeat(h), repeat(c), None if memory is None else MemoryState(*map(repeat, memory)))
        query = self._flatten(batch.query_x).reshape(tasks * queries, 1, -1)
        last_label = F.one_hot(support_y[:, -1], self.ways).to(query.dtype)
        logits, _ = self.run(query, repeat(last_label).unsqueeze(1), state)
        return logits.view(tasks, queries, self.ways)

    # -- checks ---------------------------------------------------------------------------------------------------

    def _flatten(self, images: Tensor) -> Tensor:
        inputs = images.flatten(2)
        if inputs.shape[-1] != self.input_size:
            raise ConfigError(
                f"MANN was built for inputs of {self.input_size} values but got {inputs.shape[-1]} "
                f"({tuple(images.shape[2:])}); use the image size it was trained with."
            )
        return inputs

    def _check_ways(self, ways: int, exact: bool = True) -> None:
        if ways > self.ways or (exact and ways != self.ways):
            raise ConfigError(
                f"MANN has {self.ways} outputs (one per label) but the episodes have {ways} classes; "
                f"use --ways {self.ways} or build it with ways={ways}."
            )

    def _check_task_batch(self, batch: TaskBatch) -> None:
        if batch.ways is None:
            raise ConfigError("MANN classifies: it cannot learn regression tasks; use a classification data set.")
        self._check_ways(batch.ways)


def _gather_steps(x: Tensor, order: Tensor) -> Tensor:
    """``x`` (episodes, steps, ...) with each episode's steps taken in ``order`` (episodes, new_steps)."""
    index = order.view(*order.shape, *([1] * (x.dim() - 2))).expand(*order.shape, *x.shape[2:])
    return x.gather(1, index)


def build(config: Any) -> MANN:
    """The MANN a run's configuration describes: one output per class of its episodes, over flattened
    ``channels x image_size x image_size`` images."""
    if config.image_size is None or config.channels is None:
        raise ConfigError("MANN reads images; this data set has none (MANN does not learn regression tasks).")
    return MANN(config.channels * config.image_size**2, config.ways, config)


register(
    Algorithm(
        name="mann",
        family="model-based",
        summary="a memory-augmented network: an LSTM controller with an LRUA external memory (Santoro et al. 2016)",
        options=MANNOptions,
        build=build,
        presets=PRESETS,
        supports_regression=False,
        listing=21,
    )
)
