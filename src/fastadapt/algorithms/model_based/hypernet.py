"""Weight-generating hypernetworks: the model-based family's phi_i = f_theta(D_i^train).

A permutation-invariant set encoder reads a task's support set and writes the weights of the network that
solves the task; nothing is optimised per task unless test-time steps are asked for.

**Classification** (Gidaris & Komodakis, CVPR 2018, "Dynamic Few-Shot Visual Learning without Forgetting";
Qiao, Liu, Shen & Yuille, CVPR 2018, "Few-Shot Image Recognition by Predicting Parameters from Activations").
A Conv-4 embeds every image, z = f(x), with its last ReLU removed so that features take both signs (as Gidaris
& Komodakis do for their cosine-similarity classifier). For each class c of the support set, with z_bar = z / ||z||::

    a_c = pool_{i: y_i = c} z_bar_i                        class summary: mean (DeepSets) or attention pooling
    g   = mean_c rho(a_c)                                   task context, whatever the order of the classes
    w_c = phi_avg * a_c + G_w([a_c, g]),  b_c = G_b([a_c, g])
    p(y = c | x) = softmax_c( s * cos(f(x), w_c) + b_c )    cosine classifier with a learned scale s

``phi_avg * a_c`` is the feature-averaging term of Gidaris & Komodakis's weight generator (phi_avg * w_avg;
their attention over base-class weights needs base classes, which episodic training does not have) and the
learned map G is Qiao et al.'s parameter predictor phi(a_y), here given the task context too. G's last layer
starts at zero, so an untrained model is a cosine prototype classifier.

**Regression** (HyperMAML, Przewiezlikowski et al. 2022; HyperShot, Sendera et al. 2022). Every support point
(x_i, y_i) is encoded, the codes are pooled, and the pooled code is decoded into an update of every weight of
the task network (the 1-40-40-1 MLP of MAML's sinusoid experiment)::

    e = pool_i h([x_i, y_i]),    theta_i = theta + Delta(e)          HyperMAML's theta' = theta + Delta theta

with theta the network's own (universal) weights and Delta's last layer starting at zero.

**Test-time steps** (HyperMAML's optional fine-tuning): ``eval_inner_steps`` gradient-descent steps of size
``inner_lr`` on the generated weights, on the support loss, by :func:`fastadapt.engine.functional.inner_sgd`;
``inner_steps`` does the same during meta-training (differentiated through unless ``first_order``).

Both are trained end to end over tasks on the query loss; every task of a meta-batch is generated and run in
one batched pass (no Python loop over tasks).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import vmap

from fastadapt.algorithms.base import MetaLearner, MetaOutput, per_task_losses, task_loss
from fastadapt.algorithms.metric.common import embed_episodes
from fastadapt.algorithms.registry import Algorithm, register
from fastadapt.engine.functional import Params, call, inner_sgd
from fastadapt.errors import ConfigError
from fastadapt.nets import MLP, Conv4
from fastadapt.nets.conv import conv4_filters
from fastadapt.options import DEEPEST_MLP, MethodOptions, option, require_positive
from fastadapt.tasks.episodes import TaskBatch

POOLINGS = ("mean", "attention")
#: The sinusoid task network, MAML's 1-40-40-1 regressor (Finn et al. 2017, section 5.1).
SINUSOID_HIDDEN = (40, 40)


@dataclass
class HypernetOptions(MethodOptions):
    """The hypernetwork's settings (the task network is the trainer's ``--network``: conv4 or conv4-N for images,
    mlp for regression); see :data:`PRESETS` for each data set."""

    hypernet_hidden: int = option(128, "width of the set encoder and weight generator")
    hypernet_layers: int = option(2, "linear layers in each MLP of the set encoder and the weight generator")
    hypernet_pooling: str = option(
        "mean", "how the set encoder pools support examples: mean (DeepSets) or attention", choices=POOLINGS
    )
    cosine_scale: float = option(10.0, "initial value of the learned scale s on the cosine logits (classification)")
    signed_features: bool = option(
        True, "drop the embedding's last ReLU so that features take both signs (Gidaris & Komodakis)"
    )
    inner_steps: int = option(0, "gradient steps on the generated weights in meta-training (0: none)")
    eval_inner_steps: int | None = option(
        None, "gradient steps on the generated weights at test time (default: as in meta-training)"
    )
    inner_lr: float = option(0.01, "step size of those gradient steps")
    first_order: bool = option(False, "do not differentiate through the meta-training gradient steps")

    def validate(self) -> None:
        """Raise :class:`ConfigError` with one line naming the first bad option and its fix (runs on the run's whole
        configuration, its ``network`` too)."""
        if self.network != "mlp" and conv4_filters(self.network) is None:
            raise ConfigError(
                f"--network {self.network} is not a hypernetwork task network; use conv4, conv4-N or mlp."
            )
        require_positive(self, "hypernet_hidden")
        require_positive(self, "hypernet_layers", maximum=DEEPEST_MLP)
        if not self.cosine_scale > 0:
            raise ConfigError(f"--cosine-scale must be positive (got {self.cosine_scale}); 10 is a good start.")
        for name in ("inner_steps", "eval_inner_steps"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be 0 or more (got {value}).")
        if (self.inner_steps or self.eval_inner_steps) and not self.inner_lr > 0:
            raise ConfigError(f"--inner-lr must be positive for gradient steps (got {self.inner_lr}).")


# Per data set: the hypernetwork's options and the trainer's settings (fastadapt.config.Config fields).
# fmt: off
PRESETS: dict[str, dict[str, Any]] = {
    # Episodes and optimiser as for ProtoNet (Snell et al. 2017, fastadapt's protonet preset): train with more
    # ways (60) and 5 queries per class, Adam 1e-3; test with 15 queries. 4800 episodes with the rate halved
    # every 1600: the budget at which fastadapt's ProtoNet met the Omniglot targets (docs/results.md).
    "omniglot": dict(network="conv4", hypernet_hidden=128, hypernet_layers=2, hypernet_pooling="mean",
                     cosine_scale=10.0, signed_features=True, train_ways=60, query=5, eval_query=15,
                     meta_batch_size=1, lr=1e-3, lr_decay_every=1600, steps=4800, val_every=800),
    # MAML's sinusoid set-up (Finn et al. 2017, section 5.1): K = 10 support and 10 query points, meta-batch 25,
    # Adam 1e-3, 70000 meta-batches; test-time steps, when asked for, of MAML's inner step 0.01.
    "sinusoid": dict(network="mlp", hypernet_hidden=128, hypernet_layers=3, hypernet_pooling="mean",
                     shots=10, query=10, eval_query=100, meta_batch_size=25, lr=1e-3, steps=70000,
                     val_every=5000, val_episodes=300, inner_lr=0.01),
}
# fmt: on


class SetPool(nn.Module):
    """Permutation-invariant pooling of set elements into groups: the mean of each group's members, or an
    attention-weighted mean with one learned query (pooling by attention, Lee et al. 2019, one head)."""

    def __init__(self, dim: int, mode: str = "mean") -> None:
        super().__init__()
        self.mode = mode
        if mode == "attention":
            self.key = nn.Linear(dim, dim)
            self.query = nn.Parameter(torch.zeros(dim))  # uniform weights, the mean, at the start

    def forward(self, elements: Tensor, members: Tensor) -> Tensor:
        """``elements`` (tasks, n, dim), ``members`` (tasks, groups, n) of 0/1 -> (tasks, groups, dim)."""
        if self.mode == "mean":
            weights = members / members.sum(-1, keepdim=True)
        else:
            scores = self.key(elements) @ self.query / math.sqrt(elements.shape[-1])  # (tasks, n)
            scores = scores.unsqueeze(1).masked_fill(members == 0, float("-inf"))
            weights = scores.softmax(-1)
        return weights @ elements


def _zero_last_layer(net: nn.Sequential) -> nn.Sequential:
    nn.init.zeros_(net[-1].weight)
    nn.init.zeros_(net[-1].bias)
    return net


def _mlp(inputs: int, hidden: int, outputs: int, layers: int) -> nn.Sequential:
    return MLP(inputs, (hidden,) * (layers - 1), outputs)


class Hypernetwork(MetaLearner):
    """What both task kinds share: ``forward(batch, steps)`` generates each task's weights from its support set,
    takes ``steps`` gradient steps on them and runs them on the query set; training minimises the query loss."""

    def __init__(self, options: Any) -> None:
        """``options``: :class:`HypernetOptions`, or a run's configuration holding them."""
        super().__init__()
        self.inner_steps, self.inner_lr, self.first_order = options.inner_steps, options.inner_lr, options.first_order
        self.eval_inner_steps = options.inner_steps if options.eval_inner_steps is None else options.eval_inner_steps

    def forward(self, batch: TaskBatch, steps: int) -> Tensor:
        raise NotImplementedError

    def meta_loss(self, batch: TaskBatch) -> MetaOutput:
        predictions = self(batch, self.inner_steps)
        return MetaOutput(task_loss(predictions, batch.query_y), predictions)

    def predict(self, batch: TaskBatch, steps: int | None = None) -> Tensor:
        """Query predictions after ``steps`` test-time gradient steps (default: ``eval_inner_steps``)."""
        return self(batch, self.eval_inner_steps if steps is None else steps)

    def fine_tune(self, support_loss: Callable[[Params], Tensor], params: Params, steps: int) -> Params:
        """``steps`` gradient steps on the generated weights. ``support_loss`` sums the tasks' losses, so each
        task's weights follow the gradient of its own loss. Without autograd (evaluation) the weights start as
        new leaves and the steps are not differentiated through."""
        if steps == 0:
            return params
        differentiable = torch.is_grad_enabled()
        if not differentiable:
            params = {k: p.detach().requires_grad_() for k, p in params.items()}
        return inner_sgd(support_loss, params, steps, self.inner_lr, first_order=self.first_order or not differentiable)


class HypernetClassifier(Hypernetwork):
    """Generates the weights and biases of a cosine classifier on a Conv-4 embedding from the support set."""

    supports_regression = False

    def __init__(self, embedding: nn.Module, features: int, options: Any) -> None:
        super().__init__(options)
        hidden, layers = options.hypernet_hidden, options.hypernet_layers
        self.embedding = embedding
        self.pool = SetPool(features, options.hypernet_pooling)
        self.context = _mlp(features, hidden, hidden, layers)  # rho
        self.generator = _zero_last_layer(_mlp(features + hidden, hidden, features + 1, layers))  # G_w, G_b
        self.phi_avg = nn.Parameter(torch.ones(features))
        self.scale = nn.Parameter(torch.tensor(float(options.cosine_scale)))

    def generate(self, support: Tensor, support_y: Tensor, ways: int) -> Params:
        """Classifier weights (tasks, ways, dim) and biases (tasks, ways) from support features (tasks, n, dim)."""
        members = F.one_hot(support_y, ways).transpose(1, 2).to(support.dtype)
        summaries = self.pool(F.normalize(support, dim=-1), members)  # a_c
        context = self.context(summaries).mean(1, keepdim=True).expand(-1, ways, -1)  # g
        generated = self.generator(torch.cat([summaries, context], -1))
        return {"weight": self.phi_avg * summaries + generated[..., :-1], "bias": generated[..., -1]}

    def classify(self, params: Params, features: Tensor) -> Tensor:
        """Logits s * cos(f(x), w_c) + b_c: (tasks, n, dim) -> (tasks, n, ways)."""
        cosines = F.normalize(features, dim=-1) @ F.normalize(params["weight"], dim=-1).transpose(1, 2)
        return self.scale * cosines + params["bias"].unsqueeze(1)

    def forward(self, batch: TaskBatch, steps: int) -> Tensor:
        support, query = embed_episodes(self.embedding, batch)
        params = self.generate(support, batch.support_y, batch.ways)

        def support_loss(weights: Params) -> Tensor:
            return per_task_losses(self.classify(weights, support), batch.support_y).sum()

        return self.classify(self.fine_tune(support_loss, params, steps), query)


class HypernetRegressor(Hypernetwork):
    """Generates every weight of a regression network from the support points (x_i, y_i)."""

    def __init__(self, target: nn.Module, options: Any, in_features: int = 1, out_features: int = 1):
        super().__init__(options)
        hidden, layers = options.hypernet_hidden, options.hypernet_layers
        self.target = target  # its own weights are HyperMAML's universal theta
        self.shapes = {name: p.shape for name, p in target.named_parameters()}
        total = sum(shape.numel() for shape in self.shapes.values())
        self.encoder = _mlp(in_features + out_features, hidden, hidden, layers)  # h
        self.pool = SetPool(hidden, options.hypernet_pooling)
        self.decoder = _zero_last_layer(_mlp(hidden, hidden, total, layers))  # Delta

    def generate(self, support_x: Tensor, support_y: Tensor) -> Params:
        """theta + Delta(e) for every task: each of the target's parameters with a leading task dimension."""
        codes = self.encoder(torch.cat([support_x, support_y], -1))  # (tasks, n, hidden)
        members = codes.new_ones(codes.shape[0], 1, codes.shape[1])
        updates = self.decoder(self.pool(codes, members)).squeeze(1)  # (tasks, total)
        params, start = {}, 0
        for (name, theta), shape in zip(self.target.named_parameters(), self.shapes.values()):
            params[name] = theta + updates[:, start : start + shape.numel()].view(-1, *shape)
            start += shape.numel()
        return params

    def regress(self, params: Params, x: Tensor) -> Tensor:
        """The target network with each task's weights on that task's inputs: (tasks, n, in) -> (tasks, n, out)."""
        return vmap(lambda p, inputs: call(self.target, p, inputs))(params, x)

    def forward(self, batch: TaskBatch, steps: int) -> Tensor:
        params = self.generate(batch.support_x, batch.support_y)

        def support_loss(weights: Params) -> Tensor:
            return per_task_losses(self.regress(weights, batch.support_x), batch.support_y).sum()

        return self.regress(self.fine_tune(support_loss, params, steps), batch.query_x)


def build(config: Any) -> Hypernetwork:
    """The hypernetwork a run's configuration describes: a generated cosine classifier on a Conv-4 for images, or a
    generated 1-40-40-1 MLP for (one-dimensional) regression."""
    if config.regression:
        if config.network != "mlp":
            raise ConfigError(f"--network {config.network} is for images; regression tasks need --network mlp.")
        return HypernetRegressor(MLP(1, SINUSOID_HIDDEN, 1), config)
    filters = conv4_filters(config.network)
    if filters is None:
        raise ConfigError(f"--network {config.network} is for regression; image tasks need --network conv4.")
    if config.image_size < 16:
        raise ConfigError(
            f"--network {config.network} halves the image four times and needs --image-size of at least 16 "
            f"(got {config.image_size}); use a larger --image-size."
        )
    embedding = Conv4(config.channels, filters, norm="running", image_size=config.image_size)
    if config.signed_features:
        embedding.features[-2] = nn.Identity()  # the last ReLU, before the flatten
    return HypernetClassifier(embedding.to(memory_format=torch.channels_last), embedding.out_features, config)


register(
    Algorithm(
        name="hypernet",
        family="model-based",
        summary="a hypernetwork that generates each task's weights from its support set (Gidaris & Komodakis, "
        "Qiao et al.; HyperMAML for regression)",
        options=HypernetOptions,
        build=build,
        presets=PRESETS,
        listing=20,
    )
)
