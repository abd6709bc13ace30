"""Run configuration and the per-(algorithm, dataset) defaults that make ``fastadapt train`` sensible
out of the box. Every field can be overridden from the CLI or from Python."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from fastadapt.errors import ConfigError


@dataclass
class DataOptions:
    """Which images a run reads, with which seed, on which device: shared by meta-training (:class:`Config`)
    and pre-training (:class:`PretrainConfig`)."""

    dataset: str = "omniglot"
    split: str = "vinyals"
    image_size: int = 28
    channels: int = 1
    data_dir: str | None = None
    seed: int = 0
    device: str = "cpu"

    def data_options(self) -> dict[str, Any]:
        """The :class:`DataOptions` fields of this configuration, as keyword arguments."""
        return {f.name: getattr(self, f.name) for f in fields(DataOptions)}


@dataclass
class Config(DataOptions):
    algorithm: str = "protonet"
    # Test-time episode shape; training uses train_ways (default: ways) and query.
    ways: int = 5
    shots: int = 1
    query: int = 15
    train_ways: int | None = None
    train_shots: int | None = None
    eval_query: int | None = None
    meta_batch_size: int = 1
    # Optimisation-based methods.
    inner_lr: float = 0.4
    inner_steps: int = 1
    eval_inner_steps: int | None = None
    first_order: bool = False
    # MAML++ switches (Antoniou et al. 2019; maml/maml++ only): multi-step loss annealed over
    # multi_step_loss_steps outer steps, per-layer per-step inner learning rates, per-step batch-norm
    # weights and biases, first order for the first first_order_steps outer steps (derivative-order annealing).
    multi_step_loss: bool = False
    multi_step_loss_steps: int = 0
    per_step_lr: bool = False
    per_step_bn: bool = False
    first_order_steps: int = 0
    # Inner loops per task ("loop"), vectorised ("vmap"), or the faster of the two measured at the start.
    strategy: str = "auto"
    # Check that vmap/fold give the per-task loop's meta-gradient on the first meta-batch (fastadapt.gradient_guard).
    gradient_check: bool = True
    # With vmap: tasks per vectorised call, each chunk backpropagated before the next (0: all at once).
    vmap_chunk: int | None = None
    # Reptile's own inner optimiser, and mini-batches of the support set (None: the whole set).
    inner_optimizer: str = "sgd"
    # Reptile with Adam: "fresh" moments for every task, or moments "carried" across tasks (the authors' code).
    inner_adam_state: str = "fresh"
    inner_batch_size: int | None = None
    eval_inner_batch_size: int | None = None
    # Matching Networks: full context embeddings.
    fce: bool = False
    # torch.compile the MAML family's meta-gradient or Meta-LSTM's per-coordinate update: slower start, faster steps.
    compile: bool = False
    # The MAML family: tasks trained side by side on this many CPU threads, one core each (None: measured).
    workers: int | None = None
    # The MAML family: image batches in channels-last layout (None: measured on the first meta-batch).
    channels_last: bool | None = None
    # Matching Networks: initial value of a learned scale on the cosine similarities (None or 0: none).
    cosine_scale: float | None = None
    # Outer optimiser (Adam or SGD) and schedule: "step" multiplies lr by lr_decay every lr_decay_every
    # steps (0 = constant); "linear" decays it linearly to 0 over `steps` (Reptile's epsilon); "cosine"
    # anneals it from lr to lr_min over `steps` (MAML++).
    outer_optimizer: str = "adam"
    lr_schedule: str = "step"
    lr: float = 1e-3
    lr_decay: float = 0.5
    lr_decay_every: int = 0
    lr_min: float = 0.0
    steps: int = 2000
    val_every: int = 500
    val_episodes: int = 200
    test_episodes: int = 600
    # LEO (Rusu et al. 2019) on fixed embeddings (--dataset embeddings): inner_steps/inner_lr are its
    # latent-space loop; defaults are the authors' released configuration (see algorithms/optimization/leo.py).
    leo_latent_dim: int = 64
    leo_finetuning_steps: int = 5
    leo_finetuning_lr: float = 1e-3
    leo_dropout: float = 0.5
    leo_kl_weight: float = 1e-3
    leo_encoder_penalty: float = 1e-9
    leo_l2_penalty: float = 1e-8
    leo_orthogonality_penalty: float = 1e-3
    leo_grad_clip: float = 0.1
    network: str = "conv4"
    # Start from the model weights of another run's checkpoint (a fresh optimiser and schedule): a second,
    # lower-learning-rate stage after a run has plateaued, or fine-tuning a meta-learner on new data.
    init_from: str = ""
    out: str = "runs/latest"

    @property
    def train_ways_or_ways(self) -> int:
        return self.train_ways or self.ways

    @property
    def train_shots_or_shots(self) -> int:
        return self.train_shots or self.shots

    @property
    def eval_query_or_query(self) -> int:
        return self.eval_query or self.query

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


OUTER_OPTIMIZERS = ("adam", "sgd")
LR_SCHEDULES = ("step", "linear", "cosine")

#: Settings that may differ between a checkpoint and the run resuming it.
RUN_ONLY_FIELDS = frozenset(
    {
        "steps",
        "out",
        "device",
        "data_dir",
        "test_episodes",
        "strategy",
        "vmap_chunk",
        "val_every",
        "compile",
        "workers",
        "channels_last",
        "gradient_check",
    }
)

# fmt: off
PRESETS: dict[tuple[str, str], dict[str, Any]] = {
    # Snell et al. 2017: train with more ways (60) and 5 queries, Adam 1e-3 halved every 2000 episodes.
    ("protonet", "omniglot"): dict(network="conv4", train_ways=60, query=5, eval_query=15, meta_batch_size=1,
                                   lr=1e-3, lr_decay_every=2000, steps=5000, val_every=500),
    ("protonet", "folder"): dict(network="conv4", query=5, eval_query=15, steps=5000),
    # Vinyals et al. 2016 train on episodes shaped like the test ones; the paper gives no optimiser
    # settings, so Adam 1e-3 halved every 2000 episodes as for ProtoNet. No FCE on Omniglot (as in the paper).
    # Deviation: a learned scale on the cosines, starting at 10 (see algorithms/metric/matching.py).
    ("matching", "omniglot"): dict(network="conv4", query=5, eval_query=15, meta_batch_size=1, lr=1e-3,
                                   lr_decay_every=2000, steps=5000, val_every=500, cosine_scale=10.0),
    # Sung et al. 2018, Omniglot 5-way 1-shot: 19 queries per class, Adam 1e-3 halved every 100k episodes
    # (1M episodes in the paper; steps here is a CPU-sized budget).
    ("relation", "omniglot"): dict(network="conv4", query=19, eval_query=15, meta_batch_size=1, lr=1e-3,
                                   lr_decay_every=100000, steps=20000, val_every=1000),
    # Finn et al. 2017, Omniglot: stride-2 Conv-4, meta-batch 32, one inner step of 0.4, one query per
    # class in training; 3 inner steps at test.
    ("maml", "omniglot"): dict(network="conv4-stride", query=1, eval_query=15, meta_batch_size=32, inner_lr=0.4,
                               inner_steps=1, eval_inner_steps=3, lr=1e-3, steps=20000, val_every=1000,
                               val_episodes=300),
    ("maml", "folder"): dict(network="conv4", query=5, eval_query=15, meta_batch_size=4, inner_lr=0.01,
                             inner_steps=5, eval_inner_steps=10),
    # Finn et al. 2017, sinusoid: K=10, one inner step of 0.01, meta-batch 25, 70k iterations.
    ("maml", "sinusoid"): dict(network="mlp", shots=10, query=10, eval_query=100, meta_batch_size=25,
                               inner_lr=0.01, inner_steps=1, eval_inner_steps=1, lr=1e-3, steps=70000,
                               val_every=5000, val_episodes=300),
    # Reptile (Nichol et al. 2018, Table 3 and the authors' 5-way 1-shot Omniglot command): Adam inner loop
    # (lr 1e-3, beta1 0, its moments carried from task to task as in the authors' code), 5 steps on
    # mini-batches of 10 of 10 training shots per class; 5 tasks per outer step; outer SGD with epsilon 1
    # decayed linearly to 0 over 100k steps; at test 50 steps on mini-batches of 5 of the support set.
    ("reptile", "omniglot"): dict(network="conv4-stride", query=1, eval_query=15, meta_batch_size=5,
                                  inner_optimizer="adam", inner_adam_state="carried", inner_lr=1e-3,
                                  inner_steps=5, inner_batch_size=10,
                                  eval_inner_steps=50, eval_inner_batch_size=5, train_shots=10,
                                  outer_optimizer="sgd", lr=1.0, lr_schedule="linear", steps=100000,
                                  val_every=2000, val_episodes=300),
    # Reptile's sine demo: SGD 0.02 on 50 points in batches of 10 (5 steps), one task per outer step,
    # epsilon 0.1 decayed linearly, 30k steps; at test 32 full-batch steps on the support set.
    ("reptile", "sinusoid"): dict(network="mlp", shots=10, train_shots=50, query=10, eval_query=100,
                                  meta_batch_size=1, inner_optimizer="sgd", inner_lr=0.02, inner_steps=5,
                                  inner_batch_size=10, eval_inner_steps=32, outer_optimizer="sgd", lr=0.1,
                                  lr_schedule="linear", steps=30000, val_every=5000, val_episodes=300),
}
# fmt: on
# MAML++ (Antoniou et al. 2019; the authors' Omniglot 5-way 1-shot configuration): max-pool Conv-4, 5 inner
# steps (also at test) of initial size 0.1, meta-batch 8, one query per class, Adam 1e-3 cosine-annealed to
# 1e-5 over 100 epochs of 500 steps, multi-step loss annealed over the first 10 epochs, per-step learning
# rates and batch-norm weights, first order for the first 50 epochs (the paper's derivative-order annealing).
# fmt: off
PRESETS[("maml++", "omniglot")] = dict(
    network="conv4", query=1, eval_query=15, meta_batch_size=8, inner_lr=0.1, inner_steps=5, eval_inner_steps=5,
    lr=1e-3, lr_schedule="cosine", lr_min=1e-5, steps=50000, val_every=500, val_episodes=300,
    multi_step_loss=True, multi_step_loss_steps=5000, per_step_lr=True, per_step_bn=True, first_order_steps=25000,
)
PRESETS[("maml++", "folder")] = {**PRESETS[("maml", "folder")], **{
    k: PRESETS[("maml++", "omniglot")][k]
    for k in ("lr_schedule", "lr_min", "multi_step_loss", "multi_step_loss_steps", "per_step_lr", "per_step_bn")
}}
# The sinusoid MLP has no batch norm: the other switches on MAML's sinusoid setting.
PRESETS[("maml++", "sinusoid")] = dict(
    PRESETS[("maml", "sinusoid")], inner_steps=5, eval_inner_steps=5, lr_schedule="cosine", lr_min=1e-5,
    multi_step_loss=True, multi_step_loss_steps=5000, per_step_lr=True, first_order_steps=35000,
)
# fmt: on
# Meta-LSTM (Ravi & Larochelle 2017, the authors' 1-shot configuration): Conv-4 with 32 filters, 12 updates of
# the learner on the whole support set (pass --inner-steps 8 for 5-shot), 15 queries per class, one episode per
# meta-update, Adam 1e-3 (meta-gradient norm clipped to 0.25 by the learner itself), 75000 episodes.
# fmt: off
PRESETS[("meta-lstm", "omniglot")] = dict(
    network="conv4-32", query=15, eval_query=15, meta_batch_size=1, inner_steps=12, lr=1e-3, steps=75000,
    val_every=1000, val_episodes=200,
)
# fmt: on
PRESETS[("meta-lstm", "folder")] = dict(PRESETS[("meta-lstm", "omniglot")], query=5, steps=5000, val_every=500)
# ANIL (Raghu et al. 2020) uses MAML's hyper-parameters; Meta-SGD (Li et al. 2017) MAML's set-up with one
# adaptation step at test as well as in training.
for _dataset in ("omniglot", "sinusoid"):
    PRESETS[("anil", _dataset)] = PRESETS[("maml", _dataset)]
    PRESETS[("metasgd", _dataset)] = {**PRESETS[("maml", _dataset)], "eval_inner_steps": 1}


def make_config(algorithm: str = "protonet", dataset: str = "omniglot", **overrides: Any) -> Config:
    """A Config from the preset for (algorithm, dataset), then ``overrides`` (``None`` = keep)."""
    from fastadapt.algorithms import ALGORITHMS
    from fastadapt.datasets import DATASETS

    if algorithm not in ALGORITHMS:
        raise ConfigError(f"unknown algorithm {algorithm!r}; choose one of: {', '.join(sorted(ALGORITHMS))}.")
    if dataset not in DATASETS:
        raise ConfigError(f"unknown dataset {dataset!r}; choose one of: {', '.join(sorted(DATASETS))}.")
    known = {f.name for f in fields(Config)}
    unknown = set(overrides) - known
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}.")
    config = replace(Config(algorithm=algorithm, dataset=dataset), **PRESETS.get((algorithm, dataset), {}))
    config = replace(config, **{k: v for k, v in overrides.items() if v is not None})
    if config.inner_optimizer != "adam" and overrides.get("inner_adam_state") is None:
        config = replace(config, inner_adam_state="fresh")  # a preset's carried Adam state, then --inner-optimizer sgd
    validate(config)
    return config


def validate(config: Config) -> None:
    from fastadapt.algorithms import ALGORITHMS
    from fastadapt.datasets import DATASETS
    from fastadapt.functional import STRATEGIES

    if DATASETS[config.dataset].kind == "regression" and not ALGORITHMS[config.algorithm].supports_regression:
        raise ConfigError(
            f"{config.algorithm} is a classification method and {config.dataset} is a regression data set; "
            f"use one of the gradient-based methods (anil, maml, metasgd, reptile) for regression."
        )
    positive = ("ways", "shots", "query", "meta_batch_size", "steps", "val_every", "val_episodes", "test_episodes")
    for name in positive:
        if getattr(config, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1 (got {getattr(config, name)}).")
    if config.inner_steps < 0:
        raise ConfigError(f"--inner-steps must be >= 0 (got {config.inner_steps}).")
    from fastadapt.algorithms.optimization.reptile import ADAM_STATES, INNER_OPTIMIZERS

    if config.inner_optimizer not in INNER_OPTIMIZERS:
        raise ConfigError(
            f"unknown --inner-optimizer {config.inner_optimizer!r}; choose one of: {', '.join(INNER_OPTIMIZERS)}."
        )
    if config.inner_adam_state not in ADAM_STATES:
        raise ConfigError(
            f"unknown --inner-adam-state {config.inner_adam_state!r}; choose one of: {', '.join(ADAM_STATES)}."
        )
    if config.inner_adam_state == "carried" and config.inner_optimizer != "adam":
        raise ConfigError("--inner-adam-state carried needs --inner-optimizer adam (SGD has no state to carry).")
    if config.outer_optimizer not in OUTER_OPTIMIZERS:
        raise ConfigError(
            f"unknown --outer-optimizer {config.outer_optimizer!r}; choose one of: {', '.join(OUTER_OPTIMIZERS)}."
        )
    if config.lr_schedule not in LR_SCHEDULES:
        raise ConfigError(f"unknown --lr-schedule {config.lr_schedule!r}; choose one of: {', '.join(LR_SCHEDULES)}.")
    for name in ("inner_batch_size", "eval_inner_batch_size", "train_shots", "train_ways", "eval_query"):
        if getattr(config, name) is not None and getattr(config, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1 (got {getattr(config, name)}).")
    if config.strategy not in STRATEGIES:
        raise ConfigError(f"unknown --strategy {config.strategy!r}; choose one of: {', '.join(STRATEGIES)}.")
    check_device(config.device)
    if config.lr <= 0:
        raise ConfigError(f"--lr must be positive (got {config.lr}).")
    validate_maml_plus_plus(config)
    validate_leo(config)
    if config.compile and config.algorithm not in COMPILED_ALGORITHMS:
        raise ConfigError(
            f"--compile applies to --algorithm {', '.join(COMPILED_ALGORITHMS)}, not {config.algorithm}; "
            "drop --compile."
        )
    for option, flag in MAML_FAMILY_OPTIONS.items():
        if getattr(config, option) is not None and config.algorithm not in MAML_FAMILY:
            raise ConfigError(
                f"{flag} applies to --algorithm {', '.join(MAML_FAMILY)}, not {config.algorithm}; drop {flag}."
            )
    if config.cosine_scale is not None and config.cosine_scale < 0:
        raise ConfigError(f"--cosine-scale must be positive, or 0 for none (got {config.cosine_scale}).")


MAML_PLUS_PLUS_SWITCHES = ("multi_step_loss", "per_step_lr", "per_step_bn", "first_order_steps")
#: MAML and the methods built on it, which share its meta-gradient machinery (--workers, --vmap-chunk).
MAML_FAMILY = ("maml", "maml++", "metasgd", "anil")
#: Settings of that machinery alone (None: measured), and how the command line spells them.
MAML_FAMILY_OPTIONS = {"workers": "--workers", "channels_last": "--channels-last/--no-channels-last"}
#: The methods that --compile speeds up: the MAML family's meta-gradient, Meta-LSTM's update.
COMPILED_ALGORITHMS = (*MAML_FAMILY, "meta-lstm")


def validate_maml_plus_plus(config: Config) -> None:
    """MAML++'s switches: only on MAML, with the inner steps and schedules they need."""
    switched_on = [name for name in MAML_PLUS_PLUS_SWITCHES if getattr(config, name)]
    if switched_on and config.algorithm not in ("maml", "maml++"):
        flags = ", ".join(f"--{name.replace('_', '-')}" for name in switched_on)
        raise ConfigError(f"{flags}: MAML++ switches apply to --algorithm maml or maml++, not {config.algorithm}.")
    for name in ("multi_step_loss_steps", "first_order_steps"):
        if getattr(config, name) < 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 0 (got {getattr(config, name)}).")
    if config.multi_step_loss and config.multi_step_loss_steps < 1:
        raise ConfigError("--multi-step-loss anneals over --multi-step-loss-steps outer steps; give at least 1.")
    if (config.multi_step_loss or config.per_step_lr or config.per_step_bn) and config.inner_steps < 1:
        raise ConfigError("the multi-step loss and per-step settings need --inner-steps of at least 1.")
    if config.per_step_bn and config.network == "mlp":
        raise ConfigError("--per-step-bn needs a network with batch norm; --network mlp has none.")
    if not 0 <= config.lr_min < config.lr:
        raise ConfigError(f"--lr-min must be >= 0 and below --lr (got {config.lr_min} and {config.lr}).")


def check_device(device: str) -> None:
    """Refuse a device this torch cannot use, before any work starts."""
    import torch

    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown --device {device!r}; use cpu, cuda or cuda:N.") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"--device {device} asked for a GPU but torch {torch.__version__} sees no CUDA device; use --device cpu."
        )
    if (
        kind == "cuda"
        and torch.device(device).index is not None
        and torch.device(device).index >= torch.cuda.device_count()
    ):
        raise ConfigError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here.")


def config_differences(saved: Config, current: Config) -> list[str]:
    """Fields (other than RUN_ONLY_FIELDS) on which two configurations disagree, as 'name: a != b'."""
    a, b = saved.to_dict(), current.to_dict()
    return [f"{k}: checkpoint {a[k]!r} != now {b[k]!r}" for k in a if k not in RUN_ONLY_FIELDS and a[k] != b.get(k)]


# LEO (Rusu et al. 2019) trains on embeddings (fastadapt pretrain, then fastadapt embed): the authors'
# released configuration -- meta-batch 12, 15 queries per class, Adam 1e-4, 5 latent steps (alpha from 1.0),
# 5 fine-tuning steps (eta from 1e-3). They train 100k steps; steps here is a CPU-sized budget.
PRESETS[("leo", "embeddings")] = dict(
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


def validate_leo(config: Config) -> None:
    """LEO and the embeddings data set go together; its weights and step counts must be sensible."""
    if config.algorithm == "leo" and config.dataset != "embeddings":
        raise ConfigError(
            f"LEO trains on fixed embeddings, not on {config.dataset} images: run `fastadapt pretrain`, then "
            f"`fastadapt embed --checkpoint RUN/pretrain.pt --out EMB`, then train with --dataset embeddings "
            f"--data-dir EMB."
        )
    if config.dataset == "embeddings" and config.algorithm != "leo":
        raise ConfigError(f"--dataset embeddings holds feature vectors for --algorithm leo, not {config.algorithm}.")
    if config.algorithm != "leo":
        return
    if config.leo_latent_dim < 1 or config.leo_finetuning_steps < 0:
        raise ConfigError("--leo-latent-dim must be >= 1 and --leo-finetuning-steps >= 0.")
    if not 0 <= config.leo_dropout < 1:
        raise ConfigError(f"--leo-dropout must be in [0, 1) (got {config.leo_dropout}).")
    weights = ("leo_kl_weight", "leo_encoder_penalty", "leo_l2_penalty", "leo_orthogonality_penalty", "leo_grad_clip")
    for name in weights:
        if getattr(config, name) < 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 0 (got {getattr(config, name)}).")


@dataclass
class PretrainConfig(DataOptions):
    """``fastadapt pretrain``: plain classification of the meta-training classes (LEO's first stage)."""

    # conv4 / conv4-N (N filters) / resnet12; None: resnet12 for images of 64 pixels or more, conv4 below.
    network: str | None = None
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 5e-4
    # "linear": softmax over w.f + b; "cosine": softmax over s * cos(w, f) with a learned scale s (Chen et al.
    # 2019, "Baseline++"), which shapes the features for the distance rules used on them afterwards.
    head: str = "linear"
    # Random affine jitter of the training images (rotation, scale, shift), as pre-training usually has.
    augment: bool = False
    # Nearest-centroid 5-way 1-shot episodes on the validation classes after each epoch (keeps the best).
    val_episodes: int = 300
    out: str = "runs/pretrain"
