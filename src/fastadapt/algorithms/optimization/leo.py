"""LEO: Latent Embedding Optimization (Rusu, Rao, Sygnowski, Vinyals, Pascanu, Osindero & Hadsell,
"Meta-Learning with Latent Embedding Optimization", ICLR 2019).

LEO works on fixed feature embeddings x (D values each, from a backbone pre-trained by plain
classification: ``fastadapt pretrain`` then ``fastadapt embed``). Instead of adapting the classifier's
weights directly, it encodes the support set into a low-dimensional latent code z_n per class, decodes
the code into that class's classifier weights w_n, and runs gradient descent on the codes (section 2.3,
Algorithm 1 of the paper). For an N-way K-shot task with support {(x^n_k, n)}:

- Encoder and relation network, eq. (3) -- every support example is compared with every other one,
  and the results are averaged per class into the parameters of a Gaussian over z_n::

      mu^e_n, sigma^e_n = 1 / (N K^2) * sum_{k=1..K} sum_{m=1..NK} g_phi_r(g_phi_e(x^n_k), g_phi_e(x_m))
      z_n ~ q(z_n | D^tr_n) = N(mu^e_n, diag(sigma^e_n^2))                       (reparameterised)

- Decoder, eq. (4): w_n ~ p(w | z_n) = N(mu^d_n, diag(sigma^d_n^2)),  (mu^d_n, sigma^d_n) = g_phi_d(z_n).
- Classifier, eq. (2): p(y = n | x) = softmax_n(x^T w_n).
- Latent inner loop, eq. (5): z'_n <- z'_n - alpha * grad_{z'_n} L^tr(f(w(z'))), ``inner_steps`` times,
  re-decoding the weights after every step; alpha is meta-learned (one rate per latent dimension).
  L^tr is the cross-entropy *summed* over the N*K support examples, as in the authors' code (its
  ``tf.gradients`` of the per-example losses), so alpha's initial value means what it means there.
- Fine-tuning inner loop (section 2.3, "fine-tuning"): after decoding w from z', ``finetuning_steps``
  steps directly on the weights, w' <- w' - eta * grad_w' L^tr, eta meta-learned (one rate per feature).
- Outer objective, eq. (7), over the query ("validation") set of each task::

      L^val(f(w')) + beta * D_KL(q(z_n | D^tr_n) || N(0, I)) + gamma * ||stopgrad(z'_n) - z_n||^2
                   + lambda_1 * ||phi||^2 + lambda_2 * R(phi_d)

  with R, eq. (8), the decoder's orthogonality penalty ||C_d - I||^2, C_d the correlation matrix of the
  rows of the decoder's weight matrix (one row per latent dimension). Dropout is applied to the
  embeddings in meta-training.

At test time nothing is sampled (z = mu^e, w = mu^d) and dropout is off, as in the authors' code.
Standard deviations are softplus(s) + 1e-6. The authors use max(exp(s) - 1 + offset, 1e-10) and
replace a NaN meta-gradient by an L2 pull; with the summed inner loss, that form diverged to NaN within
20 steps at 5-way 5-shot on Omniglot features (and at the first step on unscaled ones), softplus did not.

Reductions and defaults. KL, encoder penalty and orthogonality penalty are means over their elements
(latent dimension x class, and the L x L correlation entries), the L2 penalty is a sum of squares over the
encoder, relation-network and decoder parameters. Default weights follow the configuration the authors
released with the paper (github.com/deepmind/leo, config.py): latent size 64, 5 latent steps (alpha
initialised to 1), 5 fine-tuning steps (eta initialised to 1e-3), beta 1e-3, gamma 1e-9, lambda_1 1e-8,
lambda_2 1e-3, embedding dropout 0.5 and gradients clipped elementwise at 0.1; the paper's appendix reports
per-data-set values found by random search around these. The relation network has three layers of 2L
units with ReLU and, like the encoder and decoder (single linear layers), no biases: the paper's
mini-/tiered-ImageNet architecture. Two deviations. The authors sample a separate code and weight vector
for each of a class's K examples and average the K logits; here one code and one weight vector per class
are sampled (the same at K = 1 and at test time). And the authors also clip the global gradient norm at
0.1 after the elementwise clipping; with the Adam outer optimiser that rescaling has little effect and it
is left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastadapt.algorithms.base import MetaLearner, MetaOutput
from fastadapt.algorithms.registry import Algorithm, register
from fastadapt.datasets import DATASETS, input_features
from fastadapt.errors import ConfigError
from fastadapt.options import MethodOptions, option
from fastadapt.tasks.episodes import TaskBatch

#: Keeps standard deviations away from 0 (log sigma in the KL term).
SIGMA_FLOOR = 1e-6


def gaussian_kl_to_standard_normal(mu: Tensor, sigma: Tensor) -> Tensor:
    """Elementwise KL(N(mu, sigma^2) || N(0, 1)) = (sigma^2 + mu^2 - 1 - log sigma^2) / 2."""
    variance = sigma.square()
    return 0.5 * (variance + mu.square() - 1.0 - torch.log(variance))


def orthogonality_penalty(weight: Tensor) -> Tensor:
    """R of eq. (8): mean squared difference between the correlation matrix of the rows of ``weight``
    and the identity. ``weight`` is (rows, columns); rows are the vectors asked to be orthogonal."""
    gram = weight @ weight.T
    norms = weight.norm(dim=1, keepdim=True)
    correlation = gram / (norms @ norms.T).clamp_min(1e-12)
    identity = torch.eye(weight.shape[0], dtype=weight.dtype, device=weight.device)
    return (correlation - identity).square().mean()


def _gaussian_parameters(raw: Tensor) -> tuple[Tensor, Tensor]:
    """Split the last dimension into a mean and (softplus-positive) standard deviation."""
    mean, pre_sigma = raw.chunk(2, dim=-1)
    return mean, F.softplus(pre_sigma) + SIGMA_FLOOR


def _sample(mean: Tensor, sigma: Tensor, stochastic: bool) -> Tensor:
    """Reparameterisation trick: mean + sigma * eps, eps ~ N(0, I); the mean itself when not sampling."""
    return mean + sigma * torch.randn_like(sigma) if stochastic else mean


def linear_logits(x: Tensor, weights: Tensor) -> Tensor:
    """Eq. (2): (tasks, examples, D) x (tasks, ways, D) -> (tasks, examples, ways) logits x^T w_n."""
    return torch.einsum("ted,tnd->ten", x, weights)


def per_task_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """(tasks, examples, ways), (tasks, examples) -> (tasks,) mean cross-entropy of each task."""
    losses = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none")
    return losses.view(labels.shape).mean(1)


def support_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """L^tr of the inner loops: cross-entropy summed over every support example (of every task, which
    are independent, so each task's gradient is its own sum)."""
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="sum")


class LEO(MetaLearner):
    """Latent Embedding Optimization over ``embedding_dim``-dimensional features (see module docstring)."""

    supports_regression = False

    def __init__(
        self,
        embedding_dim: int,
        latent_dim: int = 64,
        inner_steps: int = 5,
        inner_lr: float = 1.0,
        finetuning_steps: int = 5,
        finetuning_lr: float = 1e-3,
        dropout: float = 0.5,
        kl_weight: float = 1e-3,
        encoder_penalty_weight: float = 1e-9,
        l2_penalty_weight: float = 1e-8,
        orthogonality_penalty_weight: float = 1e-3,
        grad_clip: float | None = 0.1,
        eval_inner_steps: int | None = None,
    ) -> None:
        super().__init__()
        if embedding_dim < 1 or latent_dim < 1:
            raise ValueError(f"embedding_dim and latent_dim must be positive, got {embedding_dim}, {latent_dim}")
        if inner_steps < 0 or finetuning_steps < 0:
            raise ValueError("inner_steps and finetuning_steps must be >= 0")
        self.embedding_dim, self.latent_dim = embedding_dim, latent_dim
        self.inner_steps, self.finetuning_steps = inner_steps, finetuning_steps
        self.eval_inner_steps = inner_steps if eval_inner_steps is None else eval_inner_steps
        self.kl_weight = kl_weight
        self.encoder_penalty_weight = encoder_penalty_weight
        self.l2_penalty_weight = l2_penalty_weight
        self.orthogonality_penalty_weight = orthogonality_penalty_weight

        self.dropout = nn.Dropout(dropout)
        # g_phi_e: embedding -> latent (one linear layer).
        self.encoder = nn.Linear(embedding_dim, latent_dim, bias=False)
        # g_phi_r: a pair of latent encodings -> (mean, pre-sigma) of the class code, 3 layers of 2L units.
        width = 2 * latent_dim
        self.relation = nn.Sequential(
            nn.Linear(2 * latent_dim, width, bias=False),
            nn.ReLU(),
            nn.Linear(width, width, bias=False),
            nn.ReLU(),
            nn.Linear(width, 2 * latent_dim, bias=False),
        )
        # g_phi_d: latent code -> (mean, pre-sigma) of the class's classifier weights.
        self.decoder = nn.Linear(latent_dim, 2 * embedding_dim, bias=False)
        # alpha and eta of the two inner loops, meta-learned per latent dimension / per feature.
        self.inner_lr = nn.Parameter(torch.full((latent_dim,), float(inner_lr)))
        self.finetuning_lr = nn.Parameter(torch.full((embedding_dim,), float(finetuning_lr)))
        # Read by the training loop (fastadapt.train.clip_meta_gradient): the authors clip every entry of the
        # meta-gradient to [-0.1, 0.1]. Clipping there, after gradients are averaged over processes, keeps a
        # multi-process update equal to a single-process one.
        self.max_grad_value = grad_clip  # each meta-gradient entry clipped to +-this (clip_meta_gradient)

    # -- the generative model --------------------------------------------------------------------------
    def encode(self, support_x: Tensor, support_y: Tensor, ways: int) -> tuple[Tensor, Tensor]:
        """Eq. (3): (tasks, N*K, D) support embeddings -> mean and sigma of q(z_n), each (tasks, N, L)."""
        codes = self.encoder(support_x)  # (T, M, L), M = N*K
        tasks, m, latent = codes.shape
        pairs = torch.cat(
            [codes.unsqueeze(2).expand(tasks, m, m, latent), codes.unsqueeze(1).expand(tasks, m, m, latent)], dim=-1
        )
        per_example = self.relation(pairs).mean(dim=2)  # average over all NK partners m: (T, M, 2L)
        one_hot = F.one_hot(support_y, ways).to(per_example.dtype)  # (T, M, N)
        per_class = (one_hot.transpose(1, 2) @ per_example) / one_hot.sum(1).unsqueeze(-1)  # mean over k
        return _gaussian_parameters(per_class)

    def decode(self, z: Tensor) -> Tensor:
        """Eq. (4): codes (tasks, N, L) -> classifier weights (tasks, N, D), sampled in meta-training."""
        mean, sigma = _gaussian_parameters(self.decoder(z))
        return _sample(mean, sigma, self.training)

    # -- the two inner loops ---------------------------------------------------------------------------
    def latent_inner_loop(self, z: Tensor, support_x: Tensor, support_y: Tensor, steps: int) -> Tensor:
        """Eq. (5): ``steps`` gradient steps on the codes, each on the support loss of freshly decoded weights."""
        create_graph = self.training and torch.is_grad_enabled()
        with torch.enable_grad():
            if not z.requires_grad:  # at test time the codes are leaves
                z = z.detach().requires_grad_(True)
            for _ in range(steps):
                loss = support_loss(linear_logits(support_x, self.decode(z)), support_y)
                (grad,) = torch.autograd.grad(loss, z, create_graph=create_graph)
                z = z - self.inner_lr * grad
        return z

    def finetuning_inner_loop(self, weights: Tensor, support_x: Tensor, support_y: Tensor, steps: int) -> Tensor:
        """Gradient steps directly on the decoded classifier weights (the paper's fine-tuning stage)."""
        create_graph = self.training and torch.is_grad_enabled()
        with torch.enable_grad():
            if not weights.requires_grad:
                weights = weights.detach().requires_grad_(True)
            for _ in range(steps):
                loss = support_loss(linear_logits(support_x, weights), support_y)
                (grad,) = torch.autograd.grad(loss, weights, create_graph=create_graph)
                weights = weights - self.finetuning_lr * grad
        return weights

    # -- the regularisers of eq. (7) -----------------------------------------------------------------
    def clip_meta_gradient(self) -> None:
        if self.max_grad_value:
            nn.utils.clip_grad_value_(self.parameters(), self.max_grad_value)

    def l2_penalty(self) -> Tensor:
        """||phi||^2 over encoder, relation network and decoder (not the inner learning rates)."""
        modules = (self.encoder, self.relation, self.decoder)
        return sum(p.square().sum() for m in modules for p in m.parameters())

    def decoder_orthogonality(self) -> Tensor:
        """R(phi_d), eq. (8): one row per latent dimension (torch stores the decoder as (2D, L))."""
        return orthogonality_penalty(self.decoder.weight.T)

    # -- MetaLearner interface ----------------------------------------------------------------------
    def adapt(self, batch: TaskBatch, steps: int | None = None) -> dict[str, Tensor]:
        """Run LEO on the support sets: initial codes and their distribution, adapted codes, final weights."""
        if not batch.is_classification:
            raise ValueError("LEO is a classification method; regression batches are not supported")
        steps = (self.inner_steps if self.training else self.eval_inner_steps) if steps is None else steps
        support_x = self.dropout(batch.support_x)
        mean, sigma = self.encode(support_x, batch.support_y, batch.ways)
        z = _sample(mean, sigma, self.training)
        z_adapted = self.latent_inner_loop(z, support_x, batch.support_y, steps)
        weights = self.finetuning_inner_loop(self.decode(z_adapted), support_x, batch.support_y, self.finetuning_steps)
        return {"mean": mean, "sigma": sigma, "z": z, "z_adapted": z_adapted, "weights": weights}

    def meta_loss(self, batch: TaskBatch) -> MetaOutput:
        state = self.adapt(batch)
        logits = linear_logits(self.dropout(batch.query_x), state["weights"])
        query_loss = per_task_cross_entropy(logits, batch.query_y).mean()
        kl = gaussian_kl_to_standard_normal(state["mean"], state["sigma"]).mean()
        encoder_penalty = (state["z_adapted"].detach() - state["z"]).square().mean()
        loss = (
            query_loss
            + self.kl_weight * kl
            + self.encoder_penalty_weight * encoder_penalty
            + self.l2_penalty_weight * self.l2_penalty()
            + self.orthogonality_penalty_weight * self.decoder_orthogonality()
        )
        return MetaOutput(loss, logits)

    def predict(self, batch: TaskBatch, steps: int | None = None) -> Tensor:
        weights = self.adapt(batch, steps)["weights"]
        return linear_logits(batch.query_x, weights).detach()

    def latent_codes(self, batch: TaskBatch, steps: int | None = None) -> tuple[Tensor, Tensor]:
        """Class codes before and after the latent inner loop, (tasks, N, L) each (for plots)."""
        state = self.adapt(batch, steps)
        return state["z"].detach(), state["z_adapted"].detach()

    def extra_repr(self) -> str:
        return (
            f"embedding_dim={self.embedding_dim}, latent_dim={self.latent_dim}, inner_steps={self.inner_steps}, "
            f"finetuning_steps={self.finetuning_steps}, kl_weight={self.kl_weight}, "
            f"encoder_penalty_weight={self.encoder_penalty_weight}, l2_penalty_weight={self.l2_penalty_weight}, "
            f"orthogonality_penalty_weight={self.orthogonality_penalty_weight}"
        )


@dataclass
class LEOOptions(MethodOptions):
    """LEO's settings; ``inner_steps``/``inner_lr`` are its latent-space loop. Defaults: the authors' released
    configuration."""

    inner_lr: float = option(1.0, "initial step size of the latent-space inner loop (meta-learned)")
    inner_steps: int = option(5, "latent-space inner steps")
    eval_inner_steps: int | None = option(None, "latent-space steps at test time (default: as in meta-training)")
    leo_latent_dim: int = option(64, "size of the latent code per class")
    leo_finetuning_steps: int = option(5, "steps on the decoded weights after the latent loop")
    leo_finetuning_lr: float = option(1e-3, "initial fine-tuning step size, meta-learned")
    leo_dropout: float = option(0.5, "dropout on the embeddings in meta-training")
    leo_kl_weight: float = option(1e-3, "beta: weight of KL(q(z|support) || N(0, I))")
    leo_encoder_penalty: float = option(1e-9, "gamma: weight of ||stopgrad(z') - z||^2")
    leo_l2_penalty: float = option(1e-8, "lambda_1: L2 weight on encoder/relation/decoder")
    leo_orthogonality_penalty: float = option(1e-3, "lambda_2: decoder orthogonality penalty weight")
    leo_grad_clip: float = option(0.1, "clip each meta-gradient entry to +-this (0: off)")

    def validate(self) -> None:
        dataset = getattr(self, "dataset", None)  # on a run's whole configuration: refused before any data is read
        if dataset in DATASETS and DATASETS[dataset].inputs != "vectors":
            raise ConfigError(_NEEDS_VECTORS.format(dataset=dataset))
        if self.inner_steps < 0:
            raise ConfigError(f"--inner-steps must be >= 0 (got {self.inner_steps}).")
        if self.leo_latent_dim < 1 or self.leo_finetuning_steps < 0:
            raise ConfigError("--leo-latent-dim must be >= 1 and --leo-finetuning-steps >= 0.")
        if not 0 <= self.leo_dropout < 1:
            raise ConfigError(f"--leo-dropout must be in [0, 1) (got {self.leo_dropout}).")
        weights = (
            "leo_kl_weight",
            "leo_encoder_penalty",
            "leo_l2_penalty",
            "leo_orthogonality_penalty",
            "leo_grad_clip",
        )
        for name in weights:
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 0 (got {getattr(self, name)}).")


_NEEDS_VECTORS = (
    "LEO trains on fixed embeddings, not on {dataset} images: run `fastadapt pretrain`, then `fastadapt embed "
    "--checkpoint RUN/pretrain.pt --out EMB`, then train with --dataset embeddings --data-dir EMB (texts: --dataset "
    "clinc150 or text)."
)


def build(config: Any) -> LEO:
    """LEO over the data set's vectors: `fastadapt embed`'s or the authors' image features (--dataset embeddings), or
    sentence embeddings (--dataset clinc150, text)."""
    features = input_features(config)
    if features is None:
        raise ConfigError(_NEEDS_VECTORS.format(dataset=config.dataset))
    return LEO(
        features,
        latent_dim=config.leo_latent_dim,
        inner_steps=config.inner_steps,
        inner_lr=config.inner_lr,
        finetuning_steps=config.leo_finetuning_steps,
        finetuning_lr=config.leo_finetuning_lr,
        dropout=config.leo_dropout,
        kl_weight=config.leo_kl_weight,
        encoder_penalty_weight=config.leo_encoder_penalty,
        l2_penalty_weight=config.leo_l2_penalty,
        orthogonality_penalty_weight=config.leo_orthogonality_penalty,
        grad_clip=config.leo_grad_clip or None,
        eval_inner_steps=config.eval_inner_steps,
    )


# The authors' released configuration: meta-batch 12, 15 queries per class, Adam 1e-4, 5 latent steps (alpha from
# 1.0), 5 fine-tuning steps (eta from 1e-3). They train 100k steps; steps here is a CPU-sized budget.
EMBEDDINGS_PRESET = dict(
    query=15,
    eval_query=15,
    meta_batch_size=12,
    inner_lr=1.0,
    inner_steps=5,
    lr=1e-4,
    steps=20000,
    val_every=1000,
    val_episodes=300,
)
#: Over sentence embeddings (clinc150, text; docs/text.md): the same, 1000 steps (CPU-sized: validation accuracy on
#: CLINC150's meta-validation domains had stopped rising).
TEXT_PRESET = dict(EMBEDDINGS_PRESET, steps=1000, val_every=250)

register(
    Algorithm(
        name="leo",
        listing=6,
        family="optimization",
        summary="LEO (Rusu et al. 2019) on fixed embeddings (--dataset embeddings, or texts: clinc150, text)",
        options=LEOOptions,
        build=build,
        presets={
            "embeddings": EMBEDDINGS_PRESET,
            "clinc150": TEXT_PRESET,
            "text": TEXT_PRESET,
        },
        supports_regression=False,
    )
)
