"""Where each method registers itself: its name, its options, how it is built, and its presets.

A method is one file under ``fastadapt/algorithms/`` that ends with ``register(Algorithm(...))``. The files are
found by walking the package (:func:`algorithms`), so adding a method edits no other file: the trainer, the
checkpoints and the command line (generated from the options dataclass) take it from here. A method that needs an
optional package imports it inside its functions, so that listing the methods works without it.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastadapt.errors import ConfigError


@dataclass(frozen=True)
class Algorithm:
    """A registered method."""

    name: str
    #: "optimization", "metric" or "model-based": where it stands among meta-learning's three families
    family: str
    #: one line for listings (`fastadapt presets`, `--help`)
    summary: str
    #: a dataclass of the method's own options (fields made with fastadapt.options.option), with a ``validate()``
    options: type
    #: the learner for a run configuration (the method's options and the trainer's, flat)
    build: Callable[[Any], Any]
    #: per data set, the settings of the paper's configuration (the method's options and the trainer's)
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: whether the method handles regression tasks (the sinusoid)
    supports_regression: bool = True
    #: where the method comes in listings and messages (lower first; the classic methods lead, new ones follow)
    listing: int = 100
    #: the command that runs it: "train" (episodic meta-training) or "continual" (a stream, `fastadapt continual`)
    command: str = "train"


_REGISTRY: dict[str, Algorithm] = {}
_discovered = False


def register(algorithm: Algorithm) -> Algorithm:
    """Add a method to the registry (called at the end of its file)."""
    if algorithm.name in _REGISTRY and _REGISTRY[algorithm.name] is not algorithm:
        raise ValueError(f"two methods are registered as {algorithm.name!r}")
    _REGISTRY[algorithm.name] = algorithm
    return algorithm


def algorithms(command: str = "train") -> dict[str, Algorithm]:
    """Every registered method that ``command`` runs, by name; the first call imports each module under
    fastadapt.algorithms."""
    global _discovered
    if not _discovered:
        package = Path(__file__).parent  # fastadapt/algorithms: every module below it, subpackages included
        for module in pkgutil.walk_packages([str(package)], prefix="fastadapt.algorithms."):
            importlib.import_module(module.name)
        _discovered = True
    return dict(sorted((name, a) for name, a in _REGISTRY.items() if a.command == command))


def algorithm(name: str, command: str = "train") -> Algorithm:
    """The registered method ``name`` that ``command`` runs; one line naming the choices otherwise."""
    found = algorithms(command)
    if name not in found:
        elsewhere = [a.command for n, a in _REGISTRY.items() if n == name]
        if elsewhere:
            raise ConfigError(f"{name} runs with `fastadapt {elsewhere[0]} --algorithm {name}`, not `{command}`.")
        raise ConfigError(f"unknown algorithm {name!r}; choose one of: {', '.join(found)}.")
    return found[name]
