"""Typed options: a dataclass field per option, its help beside it, and the command line made from them.

Every option of fastadapt is a dataclass field declared with :func:`option`, next to the code it configures: the
trainer's in ``fastadapt.config.TrainOptions``, each method's in its own file (``MAMLOptions`` in
``algorithms/optimization/maml.py``). :func:`add_arguments` turns such a dataclass into argparse arguments, so
``--help``, the defaults and the presets cannot drift apart. A few dozen lines of our own instead of tyro or
jsonargparse: options are overridden in three layers (dataclass default, the method's preset for the data set,
the command line or a config file), and a flag must be able to say "not given" (None) to keep the preset, which
plain argparse does and the generators do not; errors must also stay one line with exit code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import types
import typing
from pathlib import Path
from typing import Any

from fastadapt.errors import ConfigError


def option(
    default: Any,
    help: str,
    *,
    choices: tuple[str, ...] | None = None,
    flag: str | None = None,
    run_only: bool = False,
) -> Any:
    """A dataclass field with its command-line help, its allowed values, a flag name other than the field's, and
    ``run_only``: whether a resumed run may change it (how fast, where, how long; not what is learned)."""
    metadata = {"help": help, "choices": choices, "flag": flag, "run_only": run_only}
    return dataclasses.field(default=default, metadata=metadata)


class MethodOptions:
    """Base of a method's options dataclass: the checks and adjustments every method may define."""

    def settle(self, given: set[str]) -> None:
        """Adjust settings a preset made inconsistent with those ``given`` explicitly (none by default)."""

    def validate(self) -> None:
        """Refuse impossible settings in one line each, naming the option and the fix (none by default)."""


def flag_of(field: dataclasses.Field) -> str:
    """``--inner-lr`` for the field ``inner_lr`` (or the flag the field declares)."""
    return field.metadata.get("flag") or "--" + field.name.replace("_", "-")


def _scalar_type(annotation: Any) -> type:
    """int, float, str or bool from a field's resolved annotation (``int | None`` -> int)."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        (annotation,) = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is typing.Literal:
        annotation = type(typing.get_args(annotation)[0])
    return annotation


def add_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    options: type,
    *,
    skip: tuple[str, ...] = (),
    prefix: str = "",
) -> None:
    """One argument per field of the dataclass ``options`` (except ``skip``). Every argument defaults to None, "not
    given", so that presets apply; the help shows the dataclass default. Booleans get ``--x/--no-x``; a
    ``tuple[int, ...]`` takes one or more values (``--hidden 100 100``, parsed as a list). ``prefix`` names the
    options of a nested dataclass: ``prefix="finetune"`` makes the field ``steps`` ``--finetune-steps``, read back
    as ``finetune_steps`` (:func:`given_values`)."""
    hints = typing.get_type_hints(options)  # annotations are strings under `from __future__ import annotations`
    for field in dataclasses.fields(options):
        if field.name in skip or "help" not in field.metadata:
            continue
        flag, dest = flag_of(field), field.name
        if prefix:
            flag, dest = f"--{prefix}-{field.name.replace('_', '-')}", f"{prefix}_{field.name}"
        kind = _scalar_type(hints[field.name])
        default = field.default
        if isinstance(default, tuple):  # a tuple is given as its items: --hidden 100 100
            default = " ".join(map(str, default)) or "none"
        shown = f" (default: {default})" if default not in (None, "", False) else ""
        help_text = field.metadata["help"] + shown
        if typing.get_origin(kind) is tuple:  # tuple[int, ...]: one or more items after the flag
            item = typing.get_args(kind)[0]
            parser.add_argument(
                flag,
                dest=dest,
                type=item,
                nargs="+",
                default=None,
                metavar=item.__name__.upper(),
                help=help_text.replace("%", "%%"),
            )
        elif kind is bool:
            parser.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            parser.add_argument(
                flag,
                dest=dest,
                type=kind,
                default=None,
                choices=field.metadata.get("choices"),
                metavar=kind.__name__.upper() if not field.metadata.get("choices") else None,
                help=help_text.replace("%", "%%"),
            )


def given_values(namespace: argparse.Namespace, options: type, *, prefix: str = "") -> dict[str, Any]:
    """The fields of ``options`` that a command line made with :func:`add_arguments` gave (not None), by field name."""
    names = [field.name for field in dataclasses.fields(options)]
    found = {name: getattr(namespace, f"{prefix}_{name}" if prefix else name, None) for name in names}
    return {name: value for name, value in found.items() if value is not None}


def mistyped(options: Any) -> list[str]:
    """The fields of ``options`` whose value is not of the field's type (None where the field allows it): settings
    read from a file rather than through argparse."""
    hints = typing.get_type_hints(type(options))
    wrong = []
    for field in dataclasses.fields(options):
        value = getattr(options, field.name)
        annotation = hints[field.name]
        optional = isinstance(annotation, types.UnionType) and type(None) in typing.get_args(annotation)
        if value is None and (optional or field.default is None):
            continue
        kind = _scalar_type(annotation)
        if typing.get_origin(kind) is tuple:
            item = typing.get_args(kind)[0]
            ok = isinstance(value, (tuple, list)) and all(
                isinstance(v, item) and not isinstance(v, bool) for v in value
            )
            if not ok:
                wrong.append(field.name)
            continue
        ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
        if kind is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok:
            wrong.append(field.name)
    return wrong


def require_types(options: Any) -> None:
    """Every option holds a value of its type: one line naming the first that does not (settings from a config file
    or from Python do not pass through argparse's conversion)."""
    wrong = mistyped(options)
    if wrong:
        field = next(f for f in dataclasses.fields(options) if f.name == wrong[0])
        kind = _scalar_type(typing.get_type_hints(type(options))[field.name])
        shown = repr(getattr(options, field.name))
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise ConfigError(f"{flag_of(field)} must be {'a' if kind is not int else 'an'} {kind.__name__} (got {shown}).")


#: The largest --seed: torch and numpy take it, with room for the offsets added to it (validation, test, ranks).
MAX_SEED = 2**62


def require_seed(options: Any) -> None:
    if not 0 <= options.seed <= MAX_SEED:
        raise ConfigError(f"--seed must be between 0 and 2**62 (got {options.seed}).")


def available_memory() -> int | None:
    """Bytes of memory the system can give this process now (None where it does not say)."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def require_memory(needed: float, what: str, fix: str) -> None:
    """Refuse, in one line, work whose arrays alone would take more than half the memory available now (absurd
    sizes would otherwise allocate until the system stops the process)."""
    available = available_memory()
    if available is not None and needed > available // 2:
        raise ConfigError(
            f"{what} needs {needed / 2**30:.1f} GiB and {available / 2**30:.1f} GiB are available; {fix}."
        )


def require_finite(options: Any) -> None:
    """Every real-valued option is a finite number: one line naming the first that is not."""
    for field in dataclasses.fields(options):
        value = getattr(options, field.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{flag_of(field)} must be a finite number (got {value}).")


def validate_choices(options: Any) -> None:
    """Refuse a value outside a field's declared choices (Python callers bypass argparse's own check)."""
    for field in dataclasses.fields(options):
        choices = field.metadata.get("choices")
        value = getattr(options, field.name)
        if choices and value is not None and value not in choices:
            raise ConfigError(f"unknown {flag_of(field)} {value!r}; choose one of: {', '.join(choices)}.")


#: The largest count or size an option may hold: torch sizes are 64-bit, and a product of two beyond 2**31 overflows.
LARGEST_COUNT = 2**31 - 1
#: The deepest plain MLP an option may ask for: without residual connections or normalisation, deeper ones do not
#: train (and one of 10**5 layers takes minutes to build).
DEEPEST_MLP = 32


def require_positive(options: Any, *names: str, minimum: int | float = 1, maximum: int = LARGEST_COUNT) -> None:
    """Each named option, where given, is at least ``minimum`` (and, an integer, at most ``maximum``): one line
    naming the flag otherwise."""
    by_name = {f.name: f for f in dataclasses.fields(options)}
    for name in names:
        value = getattr(options, name)
        if value is not None and not value >= minimum:  # NaN fails too
            raise ConfigError(f"{flag_of(by_name[name])} must be at least {minimum} (got {value}).")
        if isinstance(value, int) and value > maximum:
            raise ConfigError(f"{flag_of(by_name[name])} must be at most {maximum} (got {value}).")


def read_config_file(path: Path) -> dict[str, Any]:
    """Settings from a YAML, TOML or JSON file: a flat mapping of option names (``inner_lr`` or ``inner-lr``) to
    values, as ``fastadapt presets`` prints them."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}; pass a YAML, TOML or JSON file of option: value lines.")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read config file {path} ({type(error).__name__}); pass a UTF-8 text file.") from None
    try:
        if path.suffix == ".toml":
            try:
                import tomllib
            except ImportError:  # Python 3.10: the same parser, as a package
                import tomli as tomllib

            data = tomllib.loads(text)
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as error:  # each parser raises its own error types; all mean the same to the user
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ConfigError(f"config file {path} does not parse ({detail}); fix its syntax.") from None
    if data is None:
        data = {}
    if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
        raise ConfigError(f"config file {path} must hold a mapping of option names to values, e.g. `inner_lr: 0.4`.")
    return {key.replace("-", "_"): value for key, value in data.items()}
