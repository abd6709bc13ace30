"""ANIL: Almost No Inner Loop (Raghu, Raghu, Bengio & Vinyals, "Rapid Learning or Feature Reuse?
Towards Understanding the Effectiveness of MAML", ICLR 2020).

The network is split into a body ``phi`` (every parameter outside the head) and a head ``w`` (the
parameters of the submodule named by ``head``, by default ``head.``). Only the head is adapted, section
4 of the paper::

    w'_i = w - alpha * grad_w L_{T_i}^{support}(w; phi)               (repeated ``inner_steps`` times)
    (phi, w) <- (phi, w) - beta * grad_{phi, w} sum_i L_{T_i}^{query}(w'_i; phi)

Since the body does not change in the inner loop, its features are computed once per task (one pass
over the support set, one over the query set) and the inner loop runs on the head alone; the body's
meta-gradient flows through those features (and, second order, through the inner head updates that
depend on the support features). ``first_order=True`` treats the inner gradients as constants. The
paper uses MAML's hyper-parameters. The head must be the network's last module: its output is the
network's output (checked), its input the "features".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from fastadapt.algorithms.optimization.maml import MAML, InnerLoopOptions, inner_loop_settings, network_for
from fastadapt.algorithms.optimization.maml import PRESETS as MAML_PRESETS
from fastadapt.algorithms.registry import Algorithm, register
from fastadapt.engine.functional import Params, call, parameters_of


class ANIL(MAML):
    """MAML whose inner loop adapts only the head, on features computed once per set."""

    def __init__(
        self,
        model: nn.Module,
        inner_lr: float = 0.4,
        inner_steps: int = 1,
        first_order: bool = False,
        eval_inner_steps: int | None = None,
        strategy: str = "loop",
        head: str = "head.",
        **execution: Any,
    ) -> None:
        """``execution``: the engine's settings (``vmap_chunk``, ``workers``, ``channels_last``, ``compile``,
        ``fast_layers``), which change the meta-gradient's cost, not its value."""
        self.head_name = head.rstrip(".")
        try:
            model.get_submodule(self.head_name)
        except AttributeError:
            raise ValueError(
                f"ANIL's head {head!r} is not a submodule of the network; pass head=<name of its last layer> "
                f"(e.g. head='4.' for MLP(1, (40, 40), 1))."
            ) from None
        self.head_prefix = self.head_name + "."
        if not any(name.startswith(self.head_prefix) for name in parameters_of(model)):
            raise ValueError(f"ANIL's head {head!r} has no trainable parameters to adapt.")
        super().__init__(model, inner_lr, inner_steps, first_order, eval_inner_steps, strategy, **execution)

    def fold_problem(self) -> str | None:
        return "ANIL adapts the head alone, on features computed once (its loop and vmap are cheap already)"

    @property
    def head(self) -> nn.Module:
        # Looked up, not stored: an attribute would register the head twice in the state dict.
        return self.model.get_submodule(self.head_name)

    def split(self, params: Mapping[str, Tensor]) -> tuple[Params, Params]:
        """(body, head) parameters; head names are relative to the head module (``weight``, ``bias``)."""
        body = {k: v for k, v in params.items() if not k.startswith(self.head_prefix)}
        head = {k[len(self.head_prefix) :]: v for k, v in params.items() if k.startswith(self.head_prefix)}
        return body, head

    def features(self, params: Mapping[str, Tensor], x: Tensor) -> Tensor:
        """The head's input when the network runs on ``x`` with ``params`` (one pass of the body)."""
        seen: dict[str, Tensor] = {}

        def record(module, inputs, output):
            seen["input"], seen["output"] = inputs[0], output

        handle = self.head.register_forward_hook(record)
        try:
            output = call(self.model, params, x)
        finally:
            handle.remove()
        if seen.get("output") is not output:
            raise ValueError(
                f"ANIL needs the head {self.head_name!r} to be the network's last module (its output the "
                f"network's output); it adapts the head on precomputed features."
            )
        return seen["input"]

    def adapt_head(self, features: Tensor, support_y: Tensor, steps: int, first_order: bool) -> Params:
        """w'_i: ``steps`` gradient steps of the head alone on the support set's features."""
        _, head = self.split(self.theta())
        support_loss = lambda w, step: self.loss(call(self.head, w, features), support_y)
        return self.inner_loop(support_loss, head, steps, self.inner_learning_rate, first_order)[-1]

    def adapt(self, support_x: Tensor, support_y: Tensor, steps: int, first_order: bool) -> Params:
        """All adapted parameters of one task: the body's are theta's own tensors, the head's are w'_i."""
        theta = self.theta()
        body, _ = self.split(theta)
        fast_head = self.adapt_head(self.features(theta, support_x), support_y, steps, first_order)
        return {**body, **{self.head_prefix + k: v for k, v in fast_head.items()}}

    def task_loss(
        self,
        support_x: Tensor,
        support_y: Tensor,
        query_x: Tensor,
        query_y: Tensor,
        *,
        steps: int,
        first_order: bool,
    ) -> tuple[Tensor, Tensor]:
        theta = self.theta()
        support_features = self.features(theta, support_x)  # the body runs once per set, not per step
        query_features = self.features(theta, query_x)
        fast_head = self.adapt_head(support_features, support_y, steps, first_order)
        predictions = call(self.head, fast_head, query_features)
        return self.loss(predictions, query_y), predictions

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, head={self.head_name!r}"


class ANILOptions(InnerLoopOptions):
    """ANIL takes MAML's settings; its head is the network's classifier."""


def build(config: Any) -> ANIL:
    model = network_for(config)
    # Conv4/Conv4Stride call their classifier "head"; an MLP is an nn.Sequential ending in it.
    head = f"{len(model) - 1}." if config.network == "mlp" else "head."
    return ANIL(model, head=head, **inner_loop_settings(config))


register(
    Algorithm(
        name="anil",
        listing=3,
        family="optimization",
        summary="ANIL (Raghu et al. 2020): MAML's inner loop on the head only",
        options=ANILOptions,
        build=build,
        # The paper uses MAML's hyper-parameters (on mini-ImageNet too: Raghu et al. 2020, MiniImageNet-5way).
        presets={dataset: MAML_PRESETS[dataset] for dataset in ("omniglot", "sinusoid", "mini-imagenet", "linear")},
    )
)
