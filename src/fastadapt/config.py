"""A run's configuration: the trainer's options (one shared dataclass) and the method's own (declared beside it).

``make_config(algorithm, dataset, **overrides)`` builds it in layers: the dataclass defaults, the data set's own
settings (its images' size and colour, its standard protocol: ``fastadapt.datasets.DATASETS``), the method's preset
for the data set (its paper's configuration, from the method's file), then the overrides (the command line, a config
file, or Python). The result is one flat dataclass per method (``config.inner_lr``,
``config.steps``), so checkpoints store it as one dict and ``dataclasses.replace`` works on it.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from fastadapt.algorithms.registry import algorithm as registered_algorithm
from fastadapt.algorithms.registry import algorithms
from fastadapt.datasets import DATASETS
from fastadapt.device import PRECISIONS, check_precision, resolve_device
from fastadapt.errors import ConfigError
from fastadapt.options import (
    MethodOptions,
    flag_of,
    option,
    require_finite,
    require_memory,
    require_positive,
    require_seed,
    require_types,
    validate_choices,
)
from fastadapt.tasks.augment import AugmentOptions


@dataclass
class DataOptions:
    """Which data a run reads, with which seed, on which device: shared by meta-training and pre-training."""

    dataset: str = option("omniglot", "the data set (`fastadapt datasets` lists them)")
    split: str = option(
        "vinyals",
        "omniglot: vinyals, vinyals-trainval, maml or lake; mini-imagenet: ravi (checked) or as-found; "
        "folder: a folder with train/val/test.txt; clinc150: domains-v1; text: random or a folder of label lists",
    )
    image_size: int | None = option(
        None,
        "images are resized to this square size (default: omniglot 28, mini-imagenet 84; folder: the images' "
        "median shorter side within 16..84)",
    )
    channels: int | None = option(
        None, "1 (grayscale) or 3 (RGB) (default: omniglot 1, mini-imagenet 3; folder: 3 when the images have colour)"
    )
    # The encoder is to texts what the size and colour are to images: it makes the examples the learners see (and
    # keys their cache), so it is a setting of the data, and a checkpoint holds only with the same encoder.
    encoder: str | None = option(
        None,
        "clinc150, text: the sentence encoder that turns each text into a vector: all-MiniLM-L6-v2 (default), a "
        "sentence-transformers model folder (e.g. a fine-tuned one), or a model name in the local cache",
    )
    data_dir: str | None = option(
        None,
        "folder holding the data sets (default: $FASTADAPT_DATA, else shared/data); --dataset text: the .csv or "
        ".jsonl file",
        run_only=True,
    )
    download: bool = option(
        False, "omniglot: download it when absent (about 16 MB, sha256-checked) into the data folder", run_only=True
    )
    seed: int = option(0, "seed of everything random")
    device: str = option("cpu", "auto (a GPU when torch sees one), cpu, cuda, cuda:1, ...", run_only=True)

    def data_options(self) -> dict[str, Any]:
        """The :class:`DataOptions` fields of this configuration, as keyword arguments."""
        return {f.name: getattr(self, f.name) for f in fields(DataOptions)}


OUTER_OPTIMIZERS = ("adam", "sgd")
LR_SCHEDULES = ("step", "linear", "cosine")


@dataclass
class TrainOptions(DataOptions):
    """The trainer's options: episodes, network, outer optimisation, validation and output (every method)."""

    algorithm: str = option("protonet", "the meta-learning method (`fastadapt presets` lists them)")
    ways: int = option(5, "classes per test episode (N in N-way)")
    shots: int = option(1, "labelled examples per class in the support set (K)")
    query: int = option(15, "query examples per class in training episodes")
    train_ways: int | None = option(None, "classes per training episode (default: --ways)")
    train_shots: int | None = option(None, "support examples per class in training episodes (default: --shots)")
    eval_query: int | None = option(None, "query examples per class in validation/test episodes (default: --query)")
    meta_batch_size: int = option(1, "tasks per outer update")
    network: str = option(
        "conv4",
        "conv4 (max-pool, 64 filters), conv4-N (N filters; conv4-32: mini-ImageNet MAML/Meta-LSTM learner), "
        "conv4-stride (MAML's Omniglot net), resnet12 (TADAM/MetaOptNet, 64-160-320-640) or mlp; over vectors "
        "(clinc150, text): identity, residual-H, linear or mlp-H (H hidden units)",
    )
    outer_optimizer: str = option("adam", "the outer optimiser", choices=OUTER_OPTIMIZERS)
    lr_schedule: str = option(
        "step",
        "step (decay by --lr-decay every --lr-decay-every steps), linear (to 0) or cosine (to --lr-min)",
        choices=LR_SCHEDULES,
    )
    lr: float = option(1e-3, "outer learning rate (Reptile: epsilon)")
    lr_decay: float = option(0.5, "outer lr decay factor of the step schedule")
    lr_decay_every: int = option(0, "multiply the outer lr by --lr-decay every N steps (0: never)")
    lr_min: float = option(0.0, "--lr-schedule cosine: the outer lr it anneals to")
    steps: int = option(2000, "outer updates (meta-training steps)", run_only=True)
    val_every: int = option(500, "meta-validate every N steps", run_only=True)
    val_episodes: int = option(200, "validation episodes")
    test_episodes: int = option(600, "meta-test episodes after training", run_only=True)
    init_from: str = option(
        "",
        "start from the model weights of this checkpoint (fresh optimiser and schedule), e.g. a second stage at a "
        "lower --lr after a run has plateaued; the model's settings must match",
    )
    out: str = option("runs/latest", "output folder for checkpoints, metrics and plots", run_only=True)
    augment: str = option(
        "none",
        "augment training episodes (never validation or test): all (crop, flip, jitter), none, or a comma list of "
        "affine, crop, flip, jitter (affine: rotation up to 30 degrees and shift up to 10%, for characters; crop: "
        "random crop with 8 pixels of padding; flip: horizontal; jitter: colour 0.4)",
    )
    precision: str = option(
        "fp32",
        "bf16: forward passes under bfloat16 autocast, refused unless the first meta-batch's meta-loss is within 1% "
        "and its meta-gradient's cosine to float32's at least 0.99",
        choices=PRECISIONS,
    )
    tensorboard: bool = option(
        False,
        "also write TensorBoard event files to <out>/tensorboard/, as metrics.jsonl (pip install "
        "'fastadapt[tensorboard]')",
        run_only=True,
    )


@dataclass
class Config(TrainOptions, MethodOptions):
    """A run: the trainer's options; :func:`config_class` adds a method's own."""

    @property
    def train_ways_or_ways(self) -> int:
        return self.train_ways or self.ways

    @property
    def train_shots_or_shots(self) -> int:
        return self.train_shots or self.shots

    @property
    def eval_query_or_query(self) -> int:
        return self.eval_query or self.query

    @property
    def regression(self) -> bool:
        """Whether the data set is a regression one (the sinusoid)."""
        return DATASETS[self.dataset].kind == "regression"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        """The configuration a checkpoint stored (settings it does not know are left out)."""
        target = config_class(data["algorithm"]) if cls is Config and "algorithm" in data else cls
        known = {f.name for f in fields(target)}
        return target(**{k: v for k, v in data.items() if k in known})


@functools.cache
def config_class(name: str) -> type[Config]:
    """The flat configuration dataclass of method ``name``: the trainer's options and the method's."""
    options = registered_algorithm(name).options
    return dataclasses.make_dataclass(f"{options.__name__.removesuffix('Options')}Config", [], bases=(Config, options))


def presets(name: str, dataset: str) -> dict[str, Any]:
    """The settings of method ``name``'s preset for ``dataset`` (empty where it has none)."""
    return dict(registered_algorithm(name).presets.get(dataset, {}))


def _owners(setting: str) -> list[str]:
    """The methods that have ``setting``, in listing order."""
    found = [spec for spec in algorithms().values() if setting in {f.name for f in fields(spec.options)}]
    return [spec.name for spec in sorted(found, key=lambda spec: (spec.listing, spec.name))]


def not_an_option(setting: str, name: str) -> str:
    """The one-line message for a setting that method ``name`` does not have."""
    flag = "--" + setting.replace("_", "-")
    spec = registered_algorithm(name)
    trainer = {f.name: f for f in fields(TrainOptions)}
    if spec.has_own_loop and setting in trainer:  # --steps, --dataset, ... to a method with its own loop
        flag = flag_of(trainer[setting])
        return (
            f"{flag} is a setting of the episodic trainer, and {name} trains with its own loop; drop {flag} "
            f"(`fastadapt train --algorithm {name} --help` lists its options)."
        )
    owners = _owners(setting)
    if owners:
        field = next(f for f in fields(registered_algorithm(owners[0]).options) if f.name == setting)
        flag = flag_of(field)
        if field.type in ("bool | None", bool | None):  # a setting left open: both forms are a choice
            flag = f"{flag}/--no-{flag[2:]}"
        return f"{flag} applies to --algorithm {', '.join(owners)}, not {name}; drop {flag}."
    return f"unknown setting {flag}."


def make_config(algorithm: str = "protonet", dataset: str = "omniglot", **overrides: Any) -> Config:
    """The configuration of method ``algorithm`` on ``dataset``: its preset, then ``overrides`` (``None``: keep)."""
    spec = registered_algorithm(algorithm)
    if dataset not in DATASETS:
        raise ConfigError(f"unknown dataset {dataset!r}; choose one of: {', '.join(sorted(DATASETS))}.")
    cls = config_class(algorithm)
    known = {f.name for f in fields(cls)}
    given = {k: v for k, v in overrides.items() if v is not None}
    unknown = sorted(set(given) - known)
    if unknown:
        raise ConfigError(" ".join(not_an_option(setting, algorithm) for setting in unknown))
    config = replace(cls(algorithm=spec.name, dataset=dataset), **DATASETS[dataset].settings)
    config = replace(config, **presets(spec.name, dataset))
    config = replace(config, **given)
    config.settle(set(given))
    validate(config)
    return config


def validate(config: Config) -> None:
    """Refuse impossible settings before any work starts: one line naming the option and the fix."""
    spec = registered_algorithm(config.algorithm)
    require_types(config)
    if config.dataset not in DATASETS:
        raise ConfigError(f"unknown --dataset {config.dataset!r}; choose one of: {', '.join(sorted(DATASETS))}.")
    if config.regression and not spec.supports_regression:
        regression_methods = [name for name, s in algorithms().items() if s.supports_regression]
        raise ConfigError(
            f"--algorithm {config.algorithm} is a classification method and --dataset {config.dataset} a regression "
            f"data set; use one of the methods that regress ({', '.join(regression_methods)})."
        )
    if config.dataset == "embeddings" and config.algorithm not in ("leo", "logistic"):
        raise ConfigError(f"--dataset embeddings holds feature vectors for --algorithm leo, not {config.algorithm}.")
    if config.encoder is not None and "encoder" not in DATASETS[config.dataset].settings:
        texts = ", ".join(name for name, info in DATASETS.items() if "encoder" in info.settings)
        raise ConfigError(f"--encoder applies to the text data sets ({texts}), not {config.dataset}; drop --encoder.")
    validate_choices(config)
    require_finite(config)
    require_positive(config, "ways", "shots", "query", "meta_batch_size", "steps", "val_every", "val_episodes")
    require_positive(config, "test_episodes", "train_shots", "train_ways", "eval_query", "image_size")
    require_seed(config)
    if config.channels not in (None, 1, 3):
        raise ConfigError(f"--channels must be 1 (grayscale) or 3 (RGB) (got {config.channels}).")
    check_episode_memory(config)
    check_network_memory(config.network, config.channels or 3)
    check_precision(config.precision, resolve_device(config.device))
    augment = AugmentOptions.from_flag(config.augment)
    if augment.active and DATASETS[config.dataset].inputs != "images":
        raise ConfigError(f"--augment applies to images, and {config.dataset} has none; drop --augment.")
    if not config.lr > 0:
        raise ConfigError(f"--lr must be positive (got {config.lr}).")
    if not 0 <= config.lr_min < config.lr:
        raise ConfigError(f"--lr-min must be >= 0 and below --lr (got {config.lr_min} and {config.lr}).")
    config.validate()


def check_episode_memory(config: Config) -> None:
    """Refuse a meta-batch whose inputs alone would not fit in memory (absurd --ways/--shots/--query/--image-size/
    --meta-batch-size would otherwise allocate until the system stops the process)."""
    per_example = DATASETS[config.dataset].values_per_example(config)
    if per_example is None:
        return
    ways = 1 if config.regression else max(config.ways, config.train_ways_or_ways)
    shots = max(config.shots, config.train_shots_or_shots)
    examples = ways * (shots + max(config.query, config.eval_query_or_query))
    needed = 4 * per_example * examples * config.meta_batch_size
    require_memory(
        needed,
        f"a meta-batch of {config.meta_batch_size} such episodes, its inputs alone,",
        "lower --meta-batch-size, --ways, --shots, --query or --image-size",
    )


def check_network_memory(network: str | None, channels: int) -> None:
    """Refuse a --network conv4-N too wide to hold in memory: its weights, their gradients and Adam's two moments
    (the other networks have a fixed size)."""
    from fastadapt.nets.conv import conv4_filters

    filters = conv4_filters(network)
    if filters:
        weights = 9 * filters * (channels + 3 * filters)
        require_memory(16 * weights, f"--network {network}, its weights, gradients and optimiser state,",
                       "use fewer filters (conv4 has 64)")  # fmt: skip


def run_only_fields(config: Config) -> set[str]:
    """Settings that may differ between a checkpoint and the run resuming it (how fast, where, how long)."""
    return {f.name for f in fields(config) if f.metadata.get("run_only")}


#: Settings that a configuration may leave open (None) for the data to settle when a run starts (--dataset folder:
#: from its images); the run's checkpoints store the settled values.
LEFT_TO_THE_DATA = ("image_size", "channels")


def config_differences(saved: Config, current: Config) -> list[str]:
    """Settings (other than :func:`run_only_fields`) on which two configurations disagree, as 'name: a != b'. A
    setting ``current`` leaves to the data (:data:`LEFT_TO_THE_DATA`, None) agrees with what the checkpoint settled."""
    a, b = saved.to_dict(), current.to_dict()
    free = run_only_fields(current) | {k for k in LEFT_TO_THE_DATA if b.get(k) is None}
    return [f"{k}: checkpoint {a[k]!r} != now {b.get(k)!r}" for k in a if k not in free and a[k] != b.get(k)]


@dataclass
class PretrainConfig(DataOptions):
    """``fastadapt pretrain``: plain classification of the meta-training classes (LEO's first stage)."""

    network: str | None = option(None, "conv4, conv4-N (N filters) or resnet12 (default: resnet12 from 64 pixels)")
    epochs: int = option(10, "passes over the training classes' images")
    batch_size: int = option(128, "images per step")
    lr: float = option(1e-3, "Adam learning rate, cosine-annealed to 0")
    weight_decay: float = option(5e-4, "Adam weight decay")
    # "linear": softmax over w.f + b; "cosine": softmax over s * cos(w, f) with a learned scale s (Chen et al.
    # 2019, "Baseline++"), which shapes the features for the distance rules used on them afterwards.
    head: str = option("linear", "classifier over the features: linear, or cosine similarity with a learned scale")
    augment: bool = option(False, "jitter each training image: rotation up to 10 degrees, scale 0.9-1.1, shift 10%")
    val_episodes: int = option(300, "nearest-centroid 5-way 1-shot validation episodes after each epoch")
    out: str = option("runs/pretrain", "output folder")
