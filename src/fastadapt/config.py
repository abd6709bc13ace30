"""Run configuration and the per-(algorithm, dataset) defaults that make ``fastadapt train`` sensible
out of the box. Every field can be overridden from the CLI or from Python."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from fastadapt.errors import ConfigError


@dataclass
class Config:
    algorithm: str = "protonet"
    dataset: str = "omniglot"
    # Test-time episode shape; training uses train_ways (default: ways) and query.
    ways: int = 5
    shots: int = 1
    query: int = 15
    train_ways: int | None = None
    eval_query: int | None = None
    meta_batch_size: int = 1
    # Optimisation-based methods.
    inner_lr: float = 0.4
    inner_steps: int = 1
    eval_inner_steps: int | None = None
    first_order: bool = False
    strategy: str = "loop"
    # Outer optimiser (Adam) and schedule: lr * lr_decay every lr_decay_every steps (0 = constant).
    lr: float = 1e-3
    lr_decay: float = 0.5
    lr_decay_every: int = 0
    steps: int = 2000
    val_every: int = 500
    val_episodes: int = 200
    test_episodes: int = 600
    network: str = "conv4"
    # Data.
    split: str = "vinyals"
    image_size: int = 28
    channels: int = 1
    data_dir: str | None = None
    seed: int = 0
    device: str = "cpu"
    out: str = "runs/latest"

    @property
    def train_ways_or_ways(self) -> int:
        return self.train_ways or self.ways

    @property
    def eval_query_or_query(self) -> int:
        return self.eval_query or self.query

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


#: Settings that may differ between a checkpoint and the run resuming it.
RUN_ONLY_FIELDS = frozenset({"steps", "out", "device", "data_dir", "test_episodes", "strategy", "val_every"})

PRESETS: dict[tuple[str, str], dict[str, Any]] = {
    # Snell et al. 2017: train with more ways (60) and 5 queries, Adam 1e-3 halved every 2000 episodes.
    ("protonet", "omniglot"): dict(
        network="conv4", train_ways=60, query=5, eval_query=15, meta_batch_size=1,
        lr=1e-3, lr_decay_every=2000, steps=5000, val_every=500,
    ),
    ("protonet", "folder"): dict(network="conv4", query=5, eval_query=15, steps=5000),
    # Finn et al. 2017, Omniglot: stride-2 Conv-4, meta-batch 32, one inner step of 0.4, one query per
    # class in training; 3 inner steps at test.
    ("maml", "omniglot"): dict(
        network="conv4-stride", query=1, eval_query=15, meta_batch_size=32, inner_lr=0.4,
        inner_steps=1, eval_inner_steps=3, lr=1e-3, steps=20000, val_every=1000, val_episodes=300,
    ),
    ("maml", "folder"): dict(network="conv4", query=5, eval_query=15, meta_batch_size=4, inner_lr=0.01,
                             inner_steps=5, eval_inner_steps=10),
    # Finn et al. 2017, sinusoid: K=10, one inner step of 0.01, meta-batch 25, 70k iterations.
    ("maml", "sinusoid"): dict(
        network="mlp", shots=10, query=10, eval_query=100, meta_batch_size=25, inner_lr=0.01,
        inner_steps=1, eval_inner_steps=1, lr=1e-3, steps=70000, val_every=5000, val_episodes=300,
    ),
}


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
    validate(config)
    return config


def validate(config: Config) -> None:
    from fastadapt.algorithms import ALGORITHMS
    from fastadapt.datasets import DATASETS
    from fastadapt.functional import STRATEGIES

    if DATASETS[config.dataset].kind == "regression" and not ALGORITHMS[config.algorithm].supports_regression:
        raise ConfigError(
            f"{config.algorithm} is a classification method and {config.dataset} is a regression data set; "
            f"use --algorithm maml for regression."
        )
    positive = ("ways", "shots", "query", "meta_batch_size", "steps", "val_every", "val_episodes", "test_episodes")
    for name in positive:
        if getattr(config, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1 (got {getattr(config, name)}).")
    if config.inner_steps < 0:
        raise ConfigError(f"--inner-steps must be >= 0 (got {config.inner_steps}).")
    if config.strategy not in STRATEGIES:
        raise ConfigError(f"unknown --strategy {config.strategy!r}; choose one of: {', '.join(STRATEGIES)}.")
    if config.lr <= 0:
        raise ConfigError(f"--lr must be positive (got {config.lr}).")


def config_differences(saved: Config, current: Config) -> list[str]:
    """Fields (other than RUN_ONLY_FIELDS) on which two configurations disagree, as 'name: a != b'."""
    a, b = saved.to_dict(), current.to_dict()
    return [f"{k}: checkpoint {a[k]!r} != now {b[k]!r}" for k in a if k not in RUN_ONLY_FIELDS and a[k] != b.get(k)]
