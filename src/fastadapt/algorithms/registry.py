"""Where each method registers itself: its name, its options, how it is built, and its presets.

A method is one file under ``fastadapt/algorithms/`` that ends with ``register(Algorithm(...))``. The files are
found by walking the package (:func:`algorithms`), so adding a method edits no other file: the trainer, the
checkpoints and the command line (generated from the options dataclass) take it from here. A method that needs an
optional package imports it inside its functions, so that listing the methods works without it.

Most methods train on episodes through ``fastadapt.train``. A method with a training loop of its own (meta-RL samples
trajectories, not episodes) gives ``run``, ``evaluate`` and ``owns_checkpoint``: its options dataclass and the output
folder are then its whole configuration, and ``fastadapt train`` / ``fastadapt eval`` call those hooks instead of the
episodic trainer (:func:`own_loop_options` builds its options from a preset).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastadapt.errors import ConfigError
from fastadapt.options import mistyped, require_finite, validate_choices


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
    #: a training loop of its own: ``run(options, out, resume, progress) -> summary`` trains into the folder ``out``
    #: (``options``: an instance of ``options``, its whole configuration: no TrainOptions, no fastadapt.train)
    run: Callable[..., dict[str, Any]] | None = None
    #: with ``run``: ``evaluate(checkpoint, **overrides) -> table``, a checkpoint ``run`` wrote, meta-tested, printable
    evaluate: Callable[..., str] | None = None
    #: with ``run``: whether a file is a checkpoint of this method (``fastadapt eval --checkpoint`` dispatches on it)
    owns_checkpoint: Callable[[Path], bool] | None = None
    #: with ``run``: the option whose value names the preset (the episodic methods' presets are per ``dataset``)
    preset_option: str = "dataset"
    #: the command that runs it: "train" (episodic meta-training) or "continual" (a stream, `fastadapt continual`)
    command: str = "train"

    @property
    def has_own_loop(self) -> bool:
        return self.run is not None


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
    if not isinstance(name, str) or name not in found:  # a config file may hold any value
        elsewhere = [a.command for n, a in _REGISTRY.items() if n == name]
        if elsewhere:
            raise ConfigError(f"{name} runs with `fastadapt {elsewhere[0]} --algorithm {name}`, not `{command}`.")
        raise ConfigError(f"unknown algorithm {name!r}; choose one of: {', '.join(found)}.")
    return found[name]


def own_loop_options(spec: Algorithm, preset: str | None = None, **overrides: Any) -> Any:
    """The options of ``spec`` (a method with its own loop): the dataclass defaults, then its preset named ``preset``
    (default: its first), then ``overrides`` (``None``: keep); validated. Lists become tuples where the field is one."""
    import dataclasses
    import typing

    preset = preset or next(iter(spec.presets), None)
    if preset is not None and (not isinstance(preset, str) or preset not in spec.presets):  # a file's value
        option = spec.preset_option.replace("_", "-")
        raise ConfigError(f"unknown {option} {preset!r} for {spec.name}; choose one of: {', '.join(spec.presets)}.")
    hints = typing.get_type_hints(spec.options)
    known = {f.name for f in dataclasses.fields(spec.options)}
    values = {**spec.presets.get(preset, {}), **{k: v for k, v in overrides.items() if v is not None}}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(
            f"{spec.name} has no option(s) {', '.join(unknown)}; `fastadapt train --algorithm "
            f"{spec.name} --help` lists them."
        )
    for name, value in values.items():
        if typing.get_origin(hints[name]) is tuple and isinstance(value, list):
            values[name] = tuple(value)
    options = spec.options(**values)
    wrong = mistyped(options)  # settings from a file do not pass through argparse's types
    if wrong:
        shown = {name: hints[name].__name__ if isinstance(hints[name], type) else str(hints[name]) for name in wrong}
        kinds = ", ".join(f"{name} ({kind})" for name, kind in shown.items())
        raise ConfigError(f"{spec.name}: wrong type for {kinds}; give each the type shown.")
    validate_choices(options)
    require_finite(options)
    options.validate()
    return options


def checkpoint_owner(path: Path) -> Algorithm | None:
    """The method with its own loop whose ``owns_checkpoint`` accepts ``path`` (None: an episodic checkpoint)."""
    for spec in algorithms().values():
        if spec.owns_checkpoint is not None and spec.owns_checkpoint(Path(path)):
            return spec
    return None
