"""OML: online-aware meta-learning of representations for continual learning (Javed & White, "Meta-Learning
Representations for Continual Learning", NeurIPS 2019; code: github.com/khurramjaved96/mrcl).

The network is split in two: a representation learning network (RLN) phi_theta, meta-learned and then
frozen, and a prediction learning network (PLN) g_W on top of it, the only part that learns online. For one
meta-training step (the paper's Algorithm 1; the OML objective of section 3)::

    sample a class c; S_traj = k of its images (x_1, y_1) ... (x_k, y_k); S_rand = r images of any classes
    W_0 = W
    W_j = W_{j-1} - alpha * grad_W loss(g_{W_{j-1}}(phi_theta(x_j)), y_j)          j = 1..k, batch size 1
    theta, W <- Adam step on  loss(g_{W_k}(phi_theta(X)), Y)   with (X, Y) = S_traj u S_rand

The meta-loss asks that, after learning class c online one image at a time, the PLN both knows c (S_traj)
and still knows everything else (S_rand): the RLN is pushed towards representations on which online SGD
learns fast and interferes little. The meta-gradient flows through the k inner updates into theta (second
order; ``first_order=True`` treats the inner gradients as constants). As in the reference code, the output
row of class c is re-initialised before each step (``reset_class_rows``): the PLN cannot already know c, so
the inner updates keep doing work; PLN and RLN have no batch norm; weights start Kaiming-normal, biases 0;
the meta-gradient is clipped elementwise (the reference clamps it at +-5).

At meta-test time (fastadapt.continual.protocol) the RLN is frozen and the PLN learns a class-sorted stream
of new classes online: :meth:`OML.online_updates`, one SGD step per image.

Here the RLN's features of a step's images are computed once, in one batch, and the k inner updates run on
the PLN from those features (the RLN does not change inside the inner loop, so this is the same function
as re-running the whole network for every inner step, which the reference code does).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastadapt.algorithms.base import MetaLearner, MetaOutput
from fastadapt.algorithms.registry import Algorithm, register
from fastadapt.engine.functional import Params, call, inner_sgd, inner_sgd_trajectory, parameters_of
from fastadapt.errors import ConfigError
from fastadapt.options import MethodOptions, option, require_positive
from fastadapt.tasks.episodes import TaskBatch


@dataclass
class OMLOptions(MethodOptions):
    """OML's network, inner loop and meta-training settings (defaults: the ``omniglot`` preset)."""

    image_size: int = option(28, "side of the square input images in pixels")
    channels: int = option(128, "filters of every RLN convolution (the paper: 256)")
    strides: tuple[int, ...] = option((2, 1, 2, 1), "stride of each 3x3 unpadded RLN convolution, one per layer")
    hidden: int = option(512, "units of the PLN's hidden layer (the paper: 1024)")
    num_outputs: int = option(1000, "PLN outputs: room for every class learned")
    inner_lr: float = option(0.03, "alpha: SGD step size of the online (inner) updates")
    meta_lr: float = option(1e-4, "Adam learning rate of the meta-update (beta)")
    trajectory: int = option(15, "k: images of one class learned online per step")
    remember: int = option(15, "images of random classes added to the meta-loss")
    first_order: bool = option(False, "drop second derivatives through the inner updates")
    reset_class_rows: bool = option(True, "re-initialise the sampled class's output row before each step")
    clip: float = option(5.0, "clamp each meta-gradient entry to [-clip, clip] (0: off)")
    steps: int = option(20000, "meta-training steps")
    seed: int = option(0, "seed of the initialisation and of the sampled steps")

    def validate(self) -> None:
        require_positive(self, "image_size", "channels", "hidden", "num_outputs", "trajectory", "steps")
        require_positive(self, "remember", minimum=0)  # 0: the meta-loss on the trajectory only
        if self.inner_lr <= 0 or self.meta_lr <= 0:
            raise ConfigError("OML options inner_lr and meta_lr must be positive learning rates.")
        if self.clip < 0:
            raise ConfigError(f"OML option clip must be >= 0 (0: no clipping), not {self.clip}.")
        if not self.strides or any(s < 1 for s in self.strides):
            raise ConfigError(f"OML option strides must list one stride >= 1 per RLN layer, not {self.strides}.")
        if rln_side(self.image_size, self.strides) < 1:
            raise ConfigError(
                f"{self.image_size}x{self.image_size} images shrink to nothing through the RLN's strides "
                f"{self.strides}; use fewer layers or larger images."
            )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "strides": list(self.strides)}


PRESETS: dict[str, dict[str, Any]] = {
    # Sized for a 2-core CPU (docs/continual.md gives what it costs): 28x28 images (the library's Omniglot
    # size), 128 filters and a 512-unit PLN (half the paper's widths), strides 2,1,2,1 bring 28x28 to the
    # same 3x3 final map as the paper's six layers do 84x84. inner_lr 0.03 and meta_lr 1e-4 are the reference
    # code's README command (--update_lr 0.03, --meta_lr default 1e-4); trajectory 15 and remember 15 follow
    # numenta's description of the OML paper's step (15 inner images, 15 new + 15 replay in the meta-loss).
    "omniglot": {},
    # The reference network: 84x84 images, six 3x3 convolutions of 256 filters with strides 2,1,2,1,2,2
    # (mrcl model/modelfactory.py), a 2304 -> 1024 -> 1000 PLN; far too slow for a CPU.
    "omniglot-paper": {"image_size": 84, "channels": 256, "strides": (2, 1, 2, 1, 2, 2), "hidden": 1024},
}


def options_from_preset(name: str, **overrides: Any) -> OMLOptions:
    """An :class:`OMLOptions` from a preset of :data:`PRESETS` with some fields changed."""
    if name not in PRESETS:
        raise ConfigError(f"unknown OML preset {name!r}; choose one of {', '.join(PRESETS)}.")
    options = OMLOptions(**{**PRESETS[name], **overrides})
    options.validate()
    return options


def rln_side(image_size: int, strides: Sequence[int]) -> int:
    """Side of the RLN's last feature map: each unpadded 3x3 convolution maps s to (s - 3) // stride + 1."""
    side = image_size
    for stride in strides:
        side = (side - 3) // stride + 1 if side >= 3 else 0
    return side


def kaiming_init_(module: nn.Module) -> nn.Module:
    """The reference code's initialisation: Kaiming-normal weights (fan in, ReLU gain), zero biases."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight)
            nn.init.zeros_(m.bias)
    return module


def oml_rln(channels: int, image_size: int, strides: Sequence[int]) -> nn.Sequential:
    """The RLN: 3x3 unpadded convolutions with ReLU, then flatten (channels * side^2 features)."""
    layers: list[nn.Module] = []
    for i, stride in enumerate(strides):
        layers += [nn.Conv2d(1 if i == 0 else channels, channels, 3, stride=stride), nn.ReLU()]
    return kaiming_init_(nn.Sequential(*layers, nn.Flatten()))


def oml_pln(in_features: int, hidden: int, outputs: int) -> nn.Sequential:
    """The PLN: linear -> ReLU -> linear (the reference code's two fully connected layers)."""
    return kaiming_init_(nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, outputs)))


class OML(MetaLearner):
    """RLN + PLN with OML's meta-loss. ``meta_loss(batch)``: ``batch.support_*`` is the trajectory (tasks, k, ...)
    learned one example at a time, ``batch.query_*`` the random remember set (tasks, r, ...); labels index the
    PLN's outputs. The meta-loss is on trajectory and remember set together (``meta_loss_on_trajectory``)."""

    supports_regression = False

    def __init__(
        self,
        rln: nn.Module,
        pln: nn.Module,
        inner_lr: float = 0.03,
        first_order: bool = False,
        meta_loss_on_trajectory: bool = True,
    ) -> None:
        super().__init__()
        self.rln = rln
        self.pln = pln
        self.inner_lr = inner_lr
        self.first_order = first_order
        self.meta_loss_on_trajectory = meta_loss_on_trajectory

    # ------------------------------------------------------------------------------------------- the update rule
    def online_trajectory(self, features: Tensor, labels: Tensor, params: Params | None = None) -> Params:
        """W_k: one differentiable SGD step of the PLN per (feature, label) row, in order, from ``params``
        (the PLN's own weights by default). Second order unless ``first_order``."""
        params = parameters_of(self.pln) if params is None else params

        def loss_at_step(p: Params, j: int) -> Tensor:
            return F.cross_entropy(call(self.pln, p, features[j : j + 1]), labels[j : j + 1])

        steps = len(labels)
        trajectory = inner_sgd_trajectory(
            loss_at_step, params, steps, lambda _: self.inner_lr, first_order=self.first_order
        )
        return trajectory[-1]

    def task_meta_loss(
        self, support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor
    ) -> tuple[Tensor, Tensor]:
        """The OML meta-loss of one trajectory and its logits on the meta-loss set."""
        k = len(support_y)
        features = self.rln(torch.cat([support_x, query_x]))  # one RLN pass for every image of the step
        fast = self.online_trajectory(features[:k], support_y)
        if self.meta_loss_on_trajectory:
            meta_features, meta_labels = features, torch.cat([support_y, query_y])
        else:
            meta_features, meta_labels = features[k:], query_y
        logits = call(self.pln, fast, meta_features)
        return F.cross_entropy(logits, meta_labels), logits

    def meta_loss(self, batch: TaskBatch) -> MetaOutput:
        losses, predictions = [], []
        for t in range(batch.num_tasks):
            loss, logits = self.task_meta_loss(
                batch.support_x[t], batch.support_y[t], batch.query_x[t], batch.query_y[t]
            )
            losses.append(loss)
            predictions.append(logits)
        return MetaOutput(torch.stack(losses).mean(), torch.stack(predictions))

    # ------------------------------------------------------------------------------------------------ meta-test
    @torch.no_grad()
    def representation(self, x: Tensor, batch_size: int = 256) -> Tensor:
        """The frozen RLN's features of ``x`` (no graph), in chunks of ``batch_size`` images."""
        return torch.cat([self.rln(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])

    def online_updates(self, features: Tensor, labels: Tensor, params: Params, lr: float) -> Params:
        """Meta-test learning: one plain SGD step of the PLN per example, in stream order (batch size 1), from
        ``params``; nothing is differentiated through (each step starts from detached weights)."""
        for j in range(len(labels)):
            start = {k: v.detach().requires_grad_() for k, v in params.items()}
            x, y = features[j : j + 1], labels[j : j + 1]
            params = inner_sgd(
                lambda p, x=x, y=y: F.cross_entropy(call(self.pln, p, x), y), start, 1, lr, first_order=True
            )
        return {k: v.detach() for k, v in params.items()}

    def learn_online(self, x: Tensor, y: Tensor, lr: float) -> None:
        """Learn a stream online in place: the RLN stays as it is, the PLN takes one SGD step per example."""
        adapted = self.online_updates(self.representation(x), y, parameters_of(self.pln), lr)
        with torch.no_grad():
            for name, p in self.pln.named_parameters():
                p.copy_(adapted[name])

    def predict(self, batch: TaskBatch) -> Tensor:
        """Learn each task's support set online (one step per example, in order) and predict its query set."""
        out = []
        for t in range(batch.num_tasks):
            fast = self.online_updates(
                self.representation(batch.support_x[t]), batch.support_y[t], parameters_of(self.pln), self.inner_lr
            )
            with torch.no_grad():
                out.append(call(self.pln, fast, self.representation(batch.query_x[t])))
        return torch.stack(out)

    # ---------------------------------------------------------------------------------------------- resetting
    @property
    def output_layer(self) -> nn.Linear:
        last = [m for m in self.pln.modules() if isinstance(m, nn.Linear)][-1]
        return last

    @torch.no_grad()
    def reset_output_rows(self, classes: Sequence[int], generator: torch.Generator | None = None) -> None:
        """Re-initialise the output rows of ``classes`` (Kaiming-normal, as the reference's reset_classifer)."""
        weight = self.output_layer.weight
        std = math.sqrt(2.0 / weight.shape[1])
        for c in classes:
            weight[c] = torch.randn(weight.shape[1], generator=generator, dtype=weight.dtype) * std


def build(options: OMLOptions | None = None) -> OML:
    """The OML learner for ``options`` (defaults: the ``omniglot`` preset), seeded by ``options.seed``."""
    options = options or OMLOptions()
    options.validate()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(options.seed)
        rln = oml_rln(options.channels, options.image_size, options.strides)
        side = rln_side(options.image_size, options.strides)
        pln = oml_pln(options.channels * side * side, options.hidden, options.num_outputs)
    return OML(rln, pln, options.inner_lr, options.first_order)


register(
    Algorithm(
        name="oml",
        family="continual",
        summary="OML (Javed & White 2019): a representation meta-learned so that online SGD forgets little",
        options=OMLOptions,
        build=build,
        presets=PRESETS,
        supports_regression=False,
        command="continual",
    )
)
