"""Fuzz cases for every file fastadapt reads and every value its command line takes (docs/reliability.md).

A *target* is one loader: a hypothesis strategy that draws a case (the files to put in a fresh folder, and the
settings to read them with) and a function that reads them the way fastadapt does. :func:`run_case` runs one case
and says how it ended:

- ``ok``: read (for a command line: accepted, it reached the point where training or evaluation would begin),
- ``clean``: refused with one :class:`~fastadapt.errors.FastAdaptError` line that names the file or the option
  (from the command line: ``fastadapt: error: ...`` and exit code 2),

or how it failed: ``traceback`` (any other exception), ``multiline`` (an error of more than one line), ``unnamed``
(the line names neither the file nor the option), ``warning`` (a warning reached the user), ``leftover`` (a
temporary or half-written file left behind), ``wrong`` (read, but not what the files hold: a damaged cache used
instead of rebuilt), ``hang`` (over the time bound).

Used by ``tests/test_fuzz.py`` (tens of examples per target, in the test process, an alarm as the time bound) and
``bench/fuzz_loaders.py`` (at least 1,000 per target, each in a worker process that is replaced when it overruns).
A valid command line is stopped where the run's work would begin (:func:`stop_before_work`), so that a large but
valid value does not start a long run: training when the outer optimiser is made (after the data are loaded and the
model is built), pre-training when its first epoch starts, evaluation when its episodes would be drawn.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import pickle
import re
import signal
import struct
import sys
import traceback
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import strategies as st
from PIL import Image

from fastadapt.errors import FastAdaptError

#: Seconds one case may take before it counts as a hang.
TIME_BOUND_S = 60.0

FAILURES = ("traceback", "multiline", "unnamed", "warning", "leftover", "wrong", "hang")


class Accepted(Exception):
    """A valid command line reached the point where the run's work begins (raised by :func:`stop_before_work`)."""


class Hang(BaseException):
    """A case ran past its time bound (raised by the alarm; a BaseException so that no ``except Exception`` in the
    code under test swallows it)."""


@dataclasses.dataclass
class Outcome:
    kind: str
    detail: str = ""

    @property
    def failed(self) -> bool:
        return self.kind in FAILURES


@dataclasses.dataclass
class Case:
    """Files to write (relative path -> bytes; None: a folder), and the settings of the load."""

    files: dict[str, bytes | None]
    params: dict[str, Any]

    def write(self, root: Path) -> None:
        for relative, data in self.files.items():
            path = root / relative
            if data is None:
                path.mkdir(parents=True, exist_ok=True)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)


@dataclasses.dataclass
class Target:
    name: str
    what: str
    strategy: st.SearchStrategy[Case]
    #: reads the case's files in ``root`` with fixtures ``fixtures``; returns what must hold for an "ok", or None
    run: Callable[[Case, Path, Fixtures], Any]
    #: the words of which the one error line must name one (file names, options), given the case
    names: Callable[[Case, Path], list[str]]
    #: a command line: naming any of its options (``--name``) counts as naming what is wrong
    command: bool = False


# --- byte-level damage --------------------------------------------------------------------------------------------

seeds = st.integers(0, 2**32 - 1)


@st.composite
def damaged(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` cut short, with bytes flipped, or both."""
    out = bytearray(data)
    for _ in range(draw(st.integers(0, 8))):
        where = draw(st.integers(0, max(0, len(out) - 1)))
        if out:
            out[where] ^= draw(st.integers(1, 255))
    if draw(st.booleans()):
        out = out[: draw(st.integers(0, len(out)))]
    return bytes(out)


def random_bytes(max_size: int = 4000) -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(max_size=max_size),
        st.builds(lambda seed, n: np.random.default_rng(seed).bytes(n), seeds, st.integers(0, max_size)),
    )


def with_magic(magic: bytes) -> st.SearchStrategy[bytes]:
    """Random bytes behind a format's signature, so that the reader gets past its first check."""
    return st.builds(lambda tail: magic + tail, random_bytes(3000))


ZIP_MAGIC, PICKLE_MAGIC, NPY_MAGIC = b"PK\x03\x04", b"\x80\x02", b"\x93NUMPY\x01\x00"
#: What is done to a file's bytes: random bytes, random bytes behind its format's signature, a damaged copy.
BYTE_DAMAGE = ("random", "magic", "damaged")


def byte_damage(draw: st.DrawFn, kind: str, data: bytes, magic: bytes) -> bytes:
    """``data`` (a valid file) as one of :data:`BYTE_DAMAGE` makes it."""
    if kind == "random":
        return draw(random_bytes())
    if kind == "magic":
        return draw(with_magic(magic))
    return draw(damaged(data))


def npz_bytes(arrays: dict[str, np.ndarray], compressed: bool = False) -> bytes:
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buffer, **arrays)
    return buffer.getvalue()


DTYPES = ("uint8", "bool", "int8", "int16", "int64", "float16", "float32", "float64", "complex64", "<U7", "S3", "V2")


@st.composite
def arrays(draw: st.DrawFn, shapes: st.SearchStrategy | None = None, dtypes=DTYPES, words=None) -> np.ndarray:
    """An array of a drawn dtype and shape, its values from a seeded generator (fast for large shapes)."""
    dtype = np.dtype(draw(st.sampled_from(dtypes)))
    shape = draw(shapes if shapes is not None else st.lists(st.integers(0, 6), max_size=3).map(tuple))
    rng = np.random.default_rng(draw(seeds))
    count = int(np.prod(shape, dtype=np.int64))
    if dtype.kind in "US":
        pool = words or ["a", "b/c", "Alpha", "character01", "", "x-y-z", "ü", "n01532829"]
        chosen = [pool[i] for i in rng.integers(0, len(pool), count)]
        if dtype.kind == "S":
            chosen = [w.encode("utf-8") for w in chosen]
        return np.array(chosen, dtype=dtype).reshape(shape)
    if dtype.kind in "biu" and draw(st.booleans()):
        return rng.integers(0, 2, count).astype(dtype).reshape(shape)
    return np.frombuffer(rng.bytes(count * dtype.itemsize), dtype=dtype).reshape(shape).copy()


def junk_values() -> st.SearchStrategy[Any]:
    """Plain Python values of every kind, nested a little."""
    leaves = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.sampled_from([0, -1, 1, 2**63, -(2**63) - 1, 10**30]),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=20),
        st.binary(max_size=20),
    )
    return st.recursive(leaves, lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.text(max_size=8), children, max_size=4), max_leaves=12)  # fmt: skip


# --- fixtures: small valid data sets and checkpoints, made once per process ---------------------------------------


def omniglot_arrays(set_name: str, alphabets: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A tiny Omniglot file in the layout `fastadapt download` writes: one character per alphabet, 20 drawings."""
    rng = np.random.default_rng(seed)
    n = 20 * alphabets
    images = (rng.random((n, 105, 105)) < 0.05).astype(np.uint8)
    alphabet = np.array([f"{set_name.title()}_{a:02d}" for a in range(alphabets) for _ in range(20)])
    character = np.array(["character01"] * n)
    filename = np.array([f"{a + 1:04d}_{d + 1:02d}.png" for a in range(alphabets) for d in range(20)])
    return {
        "images": images,
        "alphabet": alphabet,
        "character": character,
        "character_id": np.repeat(np.arange(1, alphabets + 1), 20).astype(np.int16),
        "drawer": np.tile(np.arange(1, 21), alphabets).astype(np.int8),
        "filename": filename,
        "label": np.repeat(np.arange(alphabets), 20).astype(np.int16),
    }


#: Lake's split of the tiny Omniglot: 9 background alphabets (the last 4 validate) and 5 evaluation ones.
TINY_OMNIGLOT = {"images_background.npz": ("background", 9), "images_evaluation.npz": ("evaluation", 5)}


def tiny_omniglot_files() -> dict[str, bytes]:
    return {
        f"omniglot/{name}": npz_bytes(omniglot_arrays(set_name, count), compressed=True)
        for name, (set_name, count) in TINY_OMNIGLOT.items()
    }


def png_bytes(array: np.ndarray, mode: str | None = None, format: str = "PNG", **save: Any) -> bytes:
    buffer = io.BytesIO()
    image = Image.fromarray(array) if mode is None else Image.fromarray(array).convert(mode)
    image.save(buffer, format=format, **save)
    return buffer.getvalue()


def omniglot_zip(characters: int = 2) -> bytes:
    """A tiny zip in the layout of Lake's images_background.zip."""
    rng = np.random.default_rng(1)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for c in range(characters):
            for d in range(20):
                ink = rng.random((105, 105)) < 0.05
                member = f"images_background/Alpha_{c}/character01/{c + 1:04d}_{d + 1:02d}.png"
                archive.writestr(member, png_bytes(np.where(ink, 0, 255).astype(np.uint8), mode="1"))
    return buffer.getvalue()


@dataclasses.dataclass
class Fixtures:
    """Small valid inputs, in ``root``: an image folder, a tiny Omniglot, embeddings, and checkpoints of training
    (MAML on the sinusoid, ProtoNet on the image folder) and pre-training."""

    root: Path

    @property
    def folder(self) -> Path:
        return self.root / "folder"

    @property
    def omniglot(self) -> Path:
        return self.root / "omniglot-data"

    @property
    def embeddings(self) -> Path:
        return self.root / "embeddings"

    def checkpoint(self, name: str) -> Path:
        return self.root / "checkpoints" / name

    def make(self) -> Fixtures:
        if (self.root / "done").is_file():
            return self
        import contextlib as _contextlib

        from fastadapt.config import PretrainConfig, make_config
        from fastadapt.datasets.embeddings import write_embedding_split
        from fastadapt.pretrain import pretrain
        from fastadapt.train import train

        rng = np.random.default_rng(0)
        for c in range(20):
            d = self.folder / f"class{c:02d}"
            d.mkdir(parents=True, exist_ok=True)
            for k in range(6):
                Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(d / f"{k}.png")
        Case(tiny_omniglot_files(), {}).write(self.omniglot)
        for part, classes in (("train", 6), ("val", 5), ("test", 5)):
            labels = np.repeat(np.arange(classes), 6)
            write_embedding_split(self.embeddings / f"{part}.npz", rng.standard_normal((len(labels), 16)), labels,
                                  [f"{part}{c}" for c in range(classes)])  # fmt: skip
        short = dict(steps=2, val_every=2, val_episodes=2, test_episodes=2)
        with _contextlib.redirect_stdout(io.StringIO()), _contextlib.redirect_stderr(io.StringIO()):
            train(make_config("maml", "sinusoid", out=str(self.checkpoint("maml")), meta_batch_size=2,
                              strategy="loop", **short), progress=False)  # fmt: skip
            episodes = dict(ways=3, shots=1, query=2, eval_query=2, train_ways=3)
            train(make_config("protonet", "folder", out=str(self.checkpoint("protonet")), data_dir=str(self.folder),
                              **episodes, **short), progress=False)  # fmt: skip
            pretrain(PretrainConfig(dataset="folder", data_dir=str(self.folder), network="conv4-8", epochs=1,
                                    batch_size=16, val_episodes=2, out=str(self.checkpoint("pretrain"))),
                     progress=False)  # fmt: skip
        (self.root / "done").write_text("")
        return self


# --- running one case ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def time_bound(seconds: float) -> Iterator[None]:
    """Raise :class:`Hang` in this (main) thread after ``seconds``."""

    def alarm(signum: int, frame: Any) -> None:
        raise Hang(f"over {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


#: Files a reader or writer leaves only while it works: temporary files, partial downloads.
def leftovers(root: Path) -> list[str]:
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and (".tmp" in p.name or p.name.endswith(".part") or p.name == ".lock")
    )


def _last_frame(error: BaseException) -> str:
    frames = traceback.extract_tb(error.__traceback__)
    where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
    return f"{type(error).__name__}: {str(error)[:300]}{where}"


def run_case(target: Target, case: Case, root: Path, fixtures: Fixtures, bound: float = TIME_BOUND_S) -> Outcome:
    """Write ``case`` into ``root`` (a fresh folder), read it with ``target``, and judge how that ended."""
    root.mkdir(parents=True, exist_ok=True)
    case.write(root)
    before = set(leftovers(root))
    stderr = io.StringIO()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with time_bound(bound), contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
                expect = target.run(case, root, fixtures)
            outcome = Outcome("ok")
            if expect is not None and expect is not True:
                outcome = Outcome("wrong", str(expect)[:300])
        except Hang as error:
            return Outcome("hang", _last_frame(error))
        except Accepted:
            outcome = Outcome("ok", "accepted")
        except FastAdaptError as error:
            outcome = judge_line(str(error), target.names(case, root))
        except CommandLineError as error:
            argv = _resolve(case.params["argv"], fixtures, root)
            paths = [a for a in argv if "/" in a]
            names = [*target.names(case, root), *paths, *(Path(a).name for a in paths)]
            outcome = judge_line(str(error), names, prefix="fastadapt: error: ", any_flag=target.command)
        except BaseException as error:  # noqa: BLE001 - what the fuzzing looks for
            return Outcome("traceback", _last_frame(error))
    shown = [w for w in caught if not issubclass(w.category, (DeprecationWarning, PendingDeprecationWarning,
                                                               ResourceWarning))]  # fmt: skip
    if shown:
        return Outcome("warning", f"{shown[0].category.__name__}: {str(shown[0].message)[:200]}")
    left = sorted(set(leftovers(root)) - before)
    if left:
        return Outcome("leftover", ", ".join(left[:3]))
    return outcome


def judge_line(message: str, names: list[str], prefix: str = "", any_flag: bool = False) -> Outcome:
    """One line (from the command line: ``fastadapt: error: ...``) that names one of ``names`` (or, with
    ``any_flag``, any option): ``clean``; otherwise what is wrong with it."""
    if "\n" in message.strip() or not message.startswith(prefix):
        return Outcome("multiline", message[:400])

    def plain(text: str) -> str:
        return text.lower().replace("_", "-")

    named = any(plain(name) in plain(message) for name in names if name)
    if names and not named and not (any_flag and re.search(r"--[a-z]", message)):
        return Outcome("unnamed", message[:400])
    return Outcome("clean", message[:400])


class CommandLineError(Exception):
    """`fastadapt ...` exited with code 2: its stderr."""


def run_cli(argv: list[str]) -> None:
    """``fastadapt <argv>`` in this process; raises :class:`CommandLineError` with its stderr on exit code 2,
    :class:`Accepted` where :func:`stop_before_work` stopped it."""
    from fastadapt.cli import main

    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), stop_before_work():
        code = main(argv)
    if code == 2:
        raise CommandLineError(stderr.getvalue().strip())
    if code != 0:
        raise RuntimeError(f"exit code {code}: {stderr.getvalue()[-300:]}")


@contextlib.contextmanager
def stop_before_work() -> Iterator[None]:
    """Stop a valid command where its work would begin: `train` once the outer optimiser is made (data loaded, model
    built, nothing trained), `pretrain` when its first epoch starts, `eval` when its episodes would be drawn (a count
    of episodes that is not positive goes on, to be refused or not by evaluation itself)."""
    import fastadapt.evaluate as evaluate
    import fastadapt.pretrain as pretrain
    import fastadapt.train as train

    real_evaluate, real_optimizer = evaluate.evaluate, train.outer_optimizer

    def stop(*args: Any, **kwargs: Any) -> None:
        raise Accepted()

    def optimizer_then_stop(*args: Any, **kwargs: Any) -> None:
        real_optimizer(*args, **kwargs)  # its own checks too
        raise Accepted()

    def evaluate_or_stop(learner: Any, source: Any, episodes: int = 600, *args: Any, **kwargs: Any) -> Any:
        if isinstance(episodes, int) and episodes > 0:
            raise Accepted()
        return real_evaluate(learner, source, episodes, *args, **kwargs)

    saved = (train.outer_optimizer, pretrain.tqdm, evaluate.evaluate)
    train.outer_optimizer, pretrain.tqdm, evaluate.evaluate = optimizer_then_stop, stop, evaluate_or_stop
    try:
        yield
    finally:
        train.outer_optimizer, pretrain.tqdm, evaluate.evaluate = saved


# --- the targets: files -------------------------------------------------------------------------------------------


def _names(*words: str) -> Callable[[Case, Path], list[str]]:
    return lambda case, root: [str(root), *words]


@st.composite
def checkpoint_cases(draw: st.DrawFn) -> Case:
    kind = draw(st.sampled_from(["random", "magic", "damaged", "structure", "settings", "tensors"]))
    params: dict[str, Any] = {"kind": kind, "real": draw(st.sampled_from(["maml", "protonet", "pretrain"]))}
    if kind == "random":
        return Case({"model.pt": draw(random_bytes())}, params)
    if kind == "magic":
        return Case({"model.pt": draw(with_magic(ZIP_MAGIC))}, params)
    params["edits"] = draw(st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), max_size=8))
    params["cut"] = draw(st.none() | st.floats(0, 1))
    if kind == "structure":
        params["state"] = draw(st.dictionaries(st.sampled_from(["config", "model", "kind", "step", "format_version",
                                                                "optimizer"]), junk_values(), max_size=4))  # fmt: skip
    if kind == "settings":
        params["settings"] = draw(st.dictionaries(st.sampled_from(SETTING_NAMES), setting_values(), min_size=1,
                                                  max_size=3))  # fmt: skip
    if kind == "tensors":
        params["tensors"] = draw(st.lists(st.tuples(st.integers(0, 100), st.sampled_from(
            ["nan", "shape", "dtype", "drop", "extra", "int"])), min_size=1, max_size=3))  # fmt: skip
    return Case({}, params)


def _checkpoint_file(case: Case, root: Path, fixtures: Fixtures) -> Path:
    """The case's checkpoint file: drawn bytes, or a real checkpoint changed as drawn."""
    import torch

    path = root / "model.pt"
    kind = case.params["kind"]
    if kind in ("random", "magic"):
        return path
    real = fixtures.checkpoint(case.params["real"])
    real = real / ("pretrain.pt" if case.params["real"] == "pretrain" else "last.pt")
    if kind == "damaged":
        data = bytearray(real.read_bytes())
        for where, mask in case.params["edits"]:
            data[where % len(data)] ^= mask
        cut = case.params["cut"]
        path.write_bytes(bytes(data[: int(cut * len(data))] if cut is not None else data))
        return path
    state = torch.load(real, weights_only=True)
    if kind == "structure":
        state = {**state, **case.params["state"]}
    elif kind == "settings":
        state["config"] = {**state["config"], **case.params["settings"]}
    else:
        names = list(state["model"])
        for index, change in case.params["tensors"]:
            name = names[index % len(names)]
            tensor = state["model"].get(name, torch.zeros(1))
            state["model"][name] = {
                "nan": lambda t: torch.full_like(t, float("nan")) if t.is_floating_point() else t,
                "shape": lambda t: torch.zeros(t.numel() + 1),
                "dtype": lambda t: t.double(),
                "int": lambda t: t.long(),
                "drop": lambda t: None,
                "extra": lambda t: t,
            }[change](tensor)
            if change == "drop":
                del state["model"][name]
            if change == "extra":
                state["model"][name + ".extra"] = torch.zeros(2)
    try:
        torch.save(state, path)
    except Exception:  # a drawn value torch cannot save: nothing to read
        path.write_bytes(b"")
    return path


def run_checkpoint_file(case: Case, root: Path, fixtures: Fixtures) -> None:
    """What `eval --checkpoint` and --resume call on the file."""
    from fastadapt.checkpoint import load_checkpoint

    load_checkpoint(root / "model.pt")


def run_checkpoint(case: Case, root: Path, fixtures: Fixtures) -> None:
    """What `fastadapt eval --checkpoint` does first (load the checkpoint and rebuild its learner), or for a
    pre-training checkpoint what `fastadapt embed` does (rebuild its backbone)."""
    from fastadapt.evaluate import load_learner
    from fastadapt.pretrain import load_backbone

    path = _checkpoint_file(case, root, fixtures)
    if case.params["real"] == "pretrain" and case.params["kind"] not in ("random", "magic"):
        load_backbone(path)
    else:
        load_learner(path)


# Omniglot's npz files --------------------------------------------------------------------------------------------

OMNIGLOT_KEYS = ("images", "alphabet", "character", "character_id", "drawer", "filename", "label")


@st.composite
def omniglot_npz_cases(draw: st.DrawFn) -> Case:
    files = tiny_omniglot_files()
    which = draw(st.sampled_from(sorted(files)))
    kind = draw(st.sampled_from([*BYTE_DAMAGE, "arrays", "edited"]))
    if kind in BYTE_DAMAGE:
        files[which] = byte_damage(draw, kind, files[which], ZIP_MAGIC)
    elif kind == "arrays":
        image_shapes = st.sampled_from([(0, 105, 105), (20, 105, 105), (40, 105, 105), (20, 28, 28), (20, 105),
                                        (21, 105, 105), (20, 105, 105, 1), ()])  # fmt: skip
        chosen = draw(st.dictionaries(st.sampled_from([*OMNIGLOT_KEYS, "junk"]), arrays(), max_size=7))
        if draw(st.booleans()):
            chosen["images"] = draw(arrays(image_shapes))
        files[which] = npz_bytes(chosen)
    else:  # one array of a real file replaced
        with np.load(io.BytesIO(files[which])) as d:
            content = {k: d[k] for k in d.files}
        key = draw(st.sampled_from(OMNIGLOT_KEYS))
        n = len(content["images"])
        shapes = st.sampled_from([(n,), (n - 1,), (n, 2), (), (n + 20,), (n, 105, 105)])
        content[key] = draw(arrays(shapes))
        files[which] = npz_bytes(content)
    split = draw(st.sampled_from(["lake", "lake", "maml", "vinyals", "vinyals-trainval"]))
    return Case(files, {"split": split, "image_size": draw(st.sampled_from([28, 28, 1, 14])), "which": which})


def run_omniglot(case: Case, root: Path, fixtures: Fixtures) -> None:
    from fastadapt.datasets.omniglot import load_omniglot

    with environment(FASTADAPT_CACHE=str(root / "cache")):
        load_omniglot(root, case.params["split"], case.params["image_size"])


@contextlib.contextmanager
def environment(**values: str) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# the resized-image cache -------------------------------------------------------------------------------------------


@st.composite
def omniglot_cache_cases(draw: st.DrawFn) -> Case:
    kind = draw(st.sampled_from(["random", "magic", "damaged", "arrays", "edited"]))
    params: dict[str, Any] = {"kind": kind}
    if kind in ("random", "magic"):
        params["bytes"] = draw(random_bytes() if kind == "random" else with_magic(ZIP_MAGIC))
    elif kind == "damaged":
        params["edits"] = draw(st.lists(st.tuples(st.integers(0, 10**7), st.integers(1, 255)), max_size=8))
        params["cut"] = draw(st.none() | st.floats(0, 1))
    elif kind == "arrays":
        params["arrays"] = draw(st.dictionaries(st.sampled_from(["images", "names", "sets", "junk"]), arrays(),
                                                max_size=4))  # fmt: skip
    else:
        params["key"] = draw(st.sampled_from(["images", "names", "sets"]))
        params["replacement"] = draw(arrays(st.sampled_from([(14,), (13,), (14, 20, 28, 28), (14, 20, 28), (),
                                                             (14, 19, 28, 28), (15,)])))  # fmt: skip
    return Case(tiny_omniglot_files(), params)


_REFERENCE: dict[str, Any] = {}


def run_omniglot_cache(case: Case, root: Path, fixtures: Fixtures) -> Any:
    """A damaged cache in place of the resized arrays: it must be rebuilt (the result equals a clean load) or
    refused in one line."""
    from fastadapt.datasets.omniglot import cache_path, load_omniglot

    with environment(FASTADAPT_CACHE=str(root / "cache")):
        cached = cache_path(root, 28)
        if "clean" not in _REFERENCE:
            _REFERENCE["clean"] = {k: v.images.clone() for k, v in load_omniglot(root, "lake", 28).items()}
        elif cached.exists():
            cached.unlink()
        real = cached.read_bytes() if cached.exists() else None
        if real is None:
            load_omniglot(root, "lake", 28)
            real = cached.read_bytes()
        kind = case.params["kind"]
        if kind in ("random", "magic"):
            data = case.params["bytes"]
        elif kind == "damaged":
            data = bytearray(real)
            for where, mask in case.params["edits"]:
                data[where % len(data)] ^= mask
            cut = case.params["cut"]
            data = bytes(data[: int(cut * len(data))] if cut is not None else data)
        elif kind == "arrays":
            data = npz_bytes(case.params["arrays"])
        else:
            with np.load(io.BytesIO(real)) as d:
                content = {k: d[k] for k in d.files}
            content[case.params["key"]] = case.params["replacement"]
            data = npz_bytes(content)
        cached.write_bytes(data)
        splits = load_omniglot(root, "lake", 28)
    import torch

    for part, images in _REFERENCE["clean"].items():
        if not torch.equal(splits[part].images, images):
            return f"the {part} images differ from a clean load"
    return None


# Lake's zips, converted by `fastadapt download` ----------------------------------------------------------------------


@st.composite
def png_members(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["ok", "size", "mode", "random", "cut", "empty"]))
    rng = np.random.default_rng(draw(seeds))
    pixels = np.where(rng.random((105, 105)) < 0.05, 0, 255).astype(np.uint8)
    if kind == "ok":
        return png_bytes(pixels, mode="1")
    if kind == "size":
        side = draw(st.sampled_from([1, 28, 104, 106, 400]))
        return png_bytes(np.full((side, 105), 255, np.uint8))
    if kind == "mode":
        mode = draw(st.sampled_from(["L", "LA", "RGB", "RGBA", "P", "I", "I;16"]))
        try:
            return png_bytes(pixels, mode=mode)
        except OSError:  # a mode this Pillow cannot write as PNG
            return png_bytes(pixels, mode=mode, format="TIFF")
    if kind == "random":
        return draw(random_bytes(500))
    if kind == "cut":
        data = png_bytes(pixels, mode="1")
        return data[: draw(st.integers(0, len(data) - 1))]
    return b""


@st.composite
def zip_cases(draw: st.DrawFn) -> Case:
    kind = draw(st.sampled_from([*BYTE_DAMAGE, "members"]))
    if kind in BYTE_DAMAGE:
        data = byte_damage(draw, kind, _cached("zip", omniglot_zip), ZIP_MAGIC)
    else:
        names = st.one_of(
            st.builds(lambda a, c, f, d: f"images_background/Alpha_{a}/character{c:02d}/{f:04d}_{d:02d}.png",
                      st.integers(0, 2), st.integers(1, 2), st.integers(0, 10000), st.integers(0, 120)),
            st.sampled_from(["images_background/", "a/b/c/", "x.png", "a/b/c/.hidden.png", "__MACOSX/a/b/1_1.png",
                             "a/b/c/0001_01.PNG", "a/b/c/d/e.png", "../../evil/x/0001_01.png"]),
            st.text(min_size=1, max_size=30),
        )  # fmt: skip
        members = draw(st.lists(st.tuples(names, png_members(), st.sampled_from([zipfile.ZIP_STORED,
                       zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])), max_size=25))  # fmt: skip
        if draw(st.booleans()):  # a complete character among them
            members += [(f"images_background/Alpha_9/character01/0001_{d + 1:02d}.png", png_bytes(
                np.full((105, 105), 255, np.uint8), mode="1"), zipfile.ZIP_DEFLATED) for d in range(20)]  # fmt: skip
        buffer = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # duplicate names
            with zipfile.ZipFile(buffer, "w") as archive:
                for name, content, method in members:
                    with contextlib.suppress(ValueError, OSError):
                        archive.writestr(zipfile.ZipInfo(name), content, compress_type=method)
        data = buffer.getvalue()
    return Case({"raw/images_background.zip": data}, {"kind": kind})


def run_convert(case: Case, root: Path, fixtures: Fixtures) -> Any:
    from fastadapt.datasets.download import convert_omniglot_zip

    out = root / "out" / "images_background.npz"
    try:
        convert_omniglot_zip(root / "raw" / "images_background.zip", out)
    except FastAdaptError:
        left = [p.name for p in (root / "out").glob("*")] if (root / "out").exists() else []
        if left:
            raise AssertionError(f"an error left {left} behind") from None
        raise
    with np.load(out, allow_pickle=False) as d:
        if set(d.files) < set(OMNIGLOT_KEYS) or len(d["images"]) % 20:
            return f"wrote an incomplete {out.name}"
    return None


# image folders -----------------------------------------------------------------------------------------------------

FORMATS = {
    "PNG": ("1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16"),
    "JPEG": ("L", "RGB", "CMYK"),
    "BMP": ("1", "L", "P", "RGB"),
    "GIF": ("L", "P"),
    "WEBP": ("RGB", "RGBA"),
    "TIFF": ("1", "L", "RGB", "CMYK", "I", "F", "LA"),
    "PPM": ("L", "RGB"),
}


def _huge_png(width: int, height: int, with_pixels: bool) -> bytes:
    """A grey PNG of the given size: its header only, or with all its (zero) pixels compressed."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    pixels = b""
    if with_pixels:
        compressor = zlib.compressobj(9)
        row = b"\x00" * (width + 1)
        pixels = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    return b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


_CACHE: dict[str, bytes] = {}


def _cached(name: str, make: Callable[[], bytes]) -> bytes:
    if name not in _CACHE:
        _CACHE[name] = make()
    return _CACHE[name]


@st.composite
def image_files(draw: st.DrawFn, valid: bool) -> bytes:
    """A valid image of a drawn format, mode and size, or (``valid=False``) a damaged or odd one."""
    damage = ["cut", "zero", "random", "huge", "text", "transparent"]
    kind = "valid" if valid else draw(st.sampled_from(damage))
    if kind in ("valid", "cut"):
        fmt = draw(st.sampled_from(sorted(FORMATS)))
        mode = draw(st.sampled_from(FORMATS[fmt]))
        width, height = draw(st.sampled_from([1, 2, 3, 8, 29, 200])), draw(st.sampled_from([1, 2, 3, 8, 29, 200]))
        rng = np.random.default_rng(draw(seeds))
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        try:
            data = png_bytes(pixels, mode=mode, format=fmt)
        except (OSError, ValueError, KeyError):
            data = png_bytes(pixels)
        return data if kind == "valid" else data[: draw(st.integers(0, max(0, len(data) - 1)))]
    if kind == "zero":
        return b""
    if kind == "random":
        return draw(random_bytes(2000) | with_magic(b"\x89PNG\r\n\x1a\n") | with_magic(b"\xff\xd8\xff"))
    if kind == "text":
        return draw(st.text(max_size=200)).encode()
    if kind == "transparent":  # a palette image with transparency: Pillow warns when converting it
        return png_bytes(np.zeros((4, 4, 3), np.uint8), mode="P", transparency=0)
    size = draw(st.sampled_from([(70_000, 70_000), (2**31 - 1, 1), (1, 2**31 - 1), (9_500, 9_500), (20_000, 9_000)]))
    with_pixels = size == (9_500, 9_500) and draw(st.booleans())
    return _cached(f"huge{size}{with_pixels}", lambda: _huge_png(*size, with_pixels))


@st.composite
def folder_cases(draw: st.DrawFn) -> Case:
    """A folder of class folders of valid images in every format and mode, where one file in most cases is damaged
    (cut short, empty, random bytes, text, of huge dimensions) or named as an image without being one."""
    files: dict[str, bytes | None] = {}
    classes = draw(st.sampled_from([3, 3, 4, 5, 0, 1, 2]))
    suffixes = st.sampled_from([".png", ".jpg", ".JPEG", ".bmp", ".gif", ".webp", ".txt", ""])
    paths = []
    for c in range(classes):
        name = draw(st.sampled_from([f"class{c}", f"ü {c}", f"c#{c}", f"class{c}", f".hidden{c}"]))
        files[f"data/{name}"] = None
        for k in range(draw(st.integers(1, 3))):
            paths.append(f"data/{name}/{k}{draw(suffixes)}")
            files[paths[-1]] = draw(image_files(valid=True))
        if draw(st.integers(0, 19)) == 0:
            files[f"data/{name}/folder.png"] = None
    if paths and draw(st.integers(0, 4)):
        files[draw(st.sampled_from(paths))] = draw(image_files(valid=False))
    if draw(st.integers(0, 19)) == 0:
        files["data/stray.png"] = draw(image_files(valid=False))
    params = {"image_size": draw(st.sampled_from([28, 28, 1, 5])), "channels": draw(st.sampled_from([1, 3])),
              "seed": draw(st.integers(0, 3))}  # fmt: skip
    return Case(files, params)


def run_folder(case: Case, root: Path, fixtures: Fixtures) -> None:
    from fastadapt.datasets.folder import load_image_folder

    load_image_folder(root / "data", case.params["image_size"], case.params["channels"], None, case.params["seed"])


# split lists: a folder's train/val/test.txt and Omniglot's list -------------------------------------------------------

CLASS_WORDS = ["cat", "dog", "emu", "fox", "gnu", "cat ", " dog", "#cat", "cat # a comment", "", "unknown", "ü",
               "Cat", "cat\tdog", "\x00", "\ufeffcat", "\r"]  # fmt: skip


def split_text() -> st.SearchStrategy[bytes]:
    lines = st.lists(st.sampled_from(CLASS_WORDS) | st.text(max_size=12), max_size=8)
    return st.one_of(
        lines.map(lambda ls: "\n".join(ls).encode()),
        random_bytes(300),
        st.just(b"\xff\xfe" + "cat\n".encode("utf-16-le")),
    )


@st.composite
def folder_split_cases(draw: st.DrawFn) -> Case:
    files: dict[str, bytes | None] = {}
    image = png_bytes(np.zeros((4, 4), np.uint8))
    for name in ("cat", "dog", "emu", "fox", "gnu"):
        files[f"data/{name}/1.png"] = image
    damaged_part = draw(st.sampled_from(["train", "val", "test", None]))
    for part in ("train", "val", "test"):
        choice = "valid" if part != damaged_part else draw(st.sampled_from(["text", "text", "missing", "folder"]))
        valid = {"train": b"cat\ndog\n", "val": b"# validation\nemu\n", "test": b"fox\ngnu"}[part]
        if choice == "text":
            files[f"split/{part}.txt"] = draw(split_text())
        elif choice == "valid":
            files[f"split/{part}.txt"] = valid
        elif choice == "folder":
            files[f"split/{part}.txt"] = None
    return Case(files, {})


def run_folder_split(case: Case, root: Path, fixtures: Fixtures) -> None:
    from fastadapt.datasets.folder import load_image_folder

    load_image_folder(root / "data", 4, 1, root / "split")


@st.composite
def omniglot_list_cases(draw: st.DrawFn) -> Case:
    names = [f"Background_{a:02d}/character01" for a in range(9)] + ["Evaluation_00/character01"]
    words = [*names, "train", "val", "test", "#", "# comment", "", " ", "train x y", "Train", "\t", "\x00"]
    lines = st.lists(
        st.builds(lambda part, name: f"{part} {name}", st.sampled_from(["train", "val", "test", "dev", ""]),
                  st.sampled_from(names + ["Unknown/character99"]))
        | st.sampled_from(words) | st.text(max_size=20), max_size=12)  # fmt: skip
    valid = [
        "# part character",
        *(f"train {n}" for n in names[:5]),
        *(f"val {n}" for n in names[5:9]),
        f"test {names[9]}",
    ]
    edited = st.builds(lambda at, line: "\n".join(valid[:at] + [line] + valid[at + 1 :]).encode(),
                       st.integers(0, len(valid)), lines.map(lambda ls: ls[0] if ls else ""))  # fmt: skip
    data = draw(
        lines.map(lambda ls: "\n".join(ls).encode()) | random_bytes(400) | edited | st.just("\n".join(valid).encode())
    )
    return Case({"omniglot_vinyals.txt": data}, {})


def run_omniglot_list(case: Case, root: Path, fixtures: Fixtures) -> None:
    from fastadapt.datasets.omniglot import read_split_list

    names = [f"Background_{a:02d}/character01" for a in range(9)] + ["Evaluation_00/character01"]
    read_split_list(root / "omniglot_vinyals.txt", names)


# embeddings: the LEO authors' pickles and `fastadapt embed`'s npz files ----------------------------------------------


class _Calls:
    """An object whose pickle calls a function when unpickled (what SafeUnpickler must refuse)."""

    def __init__(self, function: Callable, *args: Any) -> None:
        self.function, self.args = function, args

    def __reduce__(self) -> tuple:
        return self.function, self.args


def leo_pickle(rng: np.random.Generator, protocol: int = 2, classes: int = 3, dim: int = 8) -> bytes:
    keys = [f"{i:05d}-n0{c}-n0{c}_{i:08d}.JPEG" for i, c in enumerate(np.repeat(np.arange(classes), 4))]
    data = {"embeddings": rng.standard_normal((len(keys), dim)).astype(np.float32), "keys": np.array(keys)}
    return pickle.dumps(data, protocol=protocol)


@st.composite
def leo_cases(draw: st.DrawFn) -> Case:
    rng = np.random.default_rng(draw(seeds))
    files = {f"{p}_embeddings.pkl": leo_pickle(rng) for p in ("train", "val", "test")}
    which = draw(st.sampled_from(sorted(files)))
    kind = draw(st.sampled_from([*BYTE_DAMAGE, "values", "arrays", "calls"]))
    protocol = draw(st.integers(0, pickle.HIGHEST_PROTOCOL))
    if kind in BYTE_DAMAGE:
        files[which] = byte_damage(draw, kind, leo_pickle(rng, protocol), PICKLE_MAGIC)
    elif kind == "values":
        value = draw(junk_values() | st.dictionaries(st.sampled_from(["embeddings", "keys", "labels"]),
                                                     junk_values(), max_size=3))  # fmt: skip
        files[which] = pickle.dumps(value, protocol=protocol)
    elif kind == "arrays":
        shapes = st.sampled_from([(12, 8), (12,), (0, 8), (12, 0), (11, 8), (12, 8, 1), (), (13, 8)])
        value = {
            "embeddings": draw(arrays(shapes)),
            "keys": draw(
                arrays(
                    st.sampled_from([(12,), (11,), (12, 2), ()]),
                    dtypes=("<U30", "S30", "int64", "float32"),
                    words=["1-a-b", "x", "1-b-c_2.JPEG", "---", ""],
                )
            ),
        }
        if draw(st.booleans()):
            value["labels"] = draw(arrays(st.sampled_from([(12,), (11,), (12, 1), ()])))  # fmt: skip
        files[which] = pickle.dumps(value, protocol=protocol)
    else:
        function = draw(st.sampled_from([os.getcwd, print, eval, np.load, np.frombuffer, dict]))
        files[which] = pickle.dumps({"embeddings": _Calls(function, "1")}, protocol=protocol)
    return Case(files, {"which": which})


@st.composite
def embedding_npz_cases(draw: st.DrawFn) -> Case:
    rng = np.random.default_rng(draw(seeds))

    def valid(classes: int) -> dict[str, np.ndarray]:
        labels = np.repeat(np.arange(classes), 4)
        names = np.array([f"c{i}" for i in range(classes)])
        return {"embeddings": rng.standard_normal((len(labels), 8)).astype(np.float32), "labels": labels,
                "class_names": names}  # fmt: skip

    files = {f"{p}.npz": npz_bytes(valid(3)) for p in ("train", "val", "test")}
    which = draw(st.sampled_from(sorted(files)))
    kind = draw(st.sampled_from([*BYTE_DAMAGE, "arrays", "edited"]))
    if kind in BYTE_DAMAGE:
        files[which] = byte_damage(draw, kind, files[which], ZIP_MAGIC)
    elif kind == "arrays":
        files[which] = npz_bytes(draw(st.dictionaries(st.sampled_from(["embeddings", "labels", "class_names", "x"]),
                                                      arrays(), max_size=4)))  # fmt: skip
    else:
        content = valid(3)
        key = draw(st.sampled_from(sorted(content)))
        content[key] = draw(arrays(st.sampled_from([(12,), (12, 8), (3,), (), (11,), (12, 0), (0,), (12, 9)])))
        files[which] = npz_bytes(content)
    return Case(files, {"which": which})


def run_embeddings(case: Case, root: Path, fixtures: Fixtures) -> None:
    from fastadapt.datasets.embeddings import load_embeddings

    load_embeddings(root)


# metrics.jsonl, read back on --resume and for the learning curve -----------------------------------------------------

METRIC_KEYS = ["step", "loss", "train_acc", "train_mse", "val_acc", "val_acc_ci95", "val_mse", "lr", "elapsed_s"]


@st.composite
def metrics_cases(draw: st.DrawFn) -> Case:
    record = st.dictionaries(st.sampled_from(METRIC_KEYS), st.integers(-5, 50) | st.floats() | junk_values(),
                             max_size=6).map(lambda r: json.dumps(r, default=repr))  # fmt: skip
    good = st.builds(lambda s, v: json.dumps({"step": s, "loss": v, "train_acc": 0.5, "lr": 1e-3, "elapsed_s": 1.0}),
                     st.integers(1, 40), st.floats(0, 10))  # fmt: skip
    lines = st.lists(good | record | st.text(max_size=40) | st.sampled_from(["[" * 5000, '{"step": 3, "loss"', "",
                     "NaN", '{"step": 1e400}', '{"step": true}', "null"]) | junk_values().map(
                         lambda v: json.dumps(v, default=repr)), max_size=12)  # fmt: skip
    data = draw(lines.map(lambda ls: "\n".join(ls).encode()) | random_bytes(2000))
    return Case({"run/metrics.jsonl": data}, {"step": draw(st.integers(0, 45))})


def run_metrics(case: Case, root: Path, fixtures: Fixtures) -> None:
    """--resume cuts the records after the checkpoint's step; the end of training plots them."""
    from fastadapt.train import _truncate_metrics, plot_learning_curve, read_metrics

    path = root / "run" / "metrics.jsonl"
    _truncate_metrics(path, case.params["step"])
    plot_learning_curve(path, root / "run" / "learning_curve.png")
    read_metrics(path)


# mini-ImageNet in its four layouts, and its decoded-image cache -------------------------------------------------

MINI_LAYOUTS = ("ravi", "learn2learn", "torchmeta", "folders")
_MINI_IMAGENET: dict[str, dict[str, bytes]] = {}


def mini_imagenet_files(layout: str) -> dict[str, bytes]:
    """A tiny synthetic copy in ``layout`` (fastadapt.datasets.miniimagenet_fixture): 2 classes per part, 3 images
    of 12 pixels each; paths relative to the data folder."""
    import tempfile

    from fastadapt.datasets.miniimagenet_fixture import small_split, write_fixture

    def make() -> dict[str, bytes]:
        with tempfile.TemporaryDirectory() as folder:
            write_fixture(folder, layout, small_split(2), per_class=3, image_size=12)
            return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}

    if layout not in _MINI_IMAGENET:
        _MINI_IMAGENET[layout] = make()
    return dict(_MINI_IMAGENET[layout])


@st.composite
def mini_imagenet_cases(draw: st.DrawFn) -> Case:
    layout = draw(st.sampled_from(MINI_LAYOUTS if _has_h5py() else tuple(x for x in MINI_LAYOUTS if x != "torchmeta")))
    files: dict[str, bytes | None] = dict(mini_imagenet_files(layout))
    which = draw(st.sampled_from(sorted(files)))
    kind = draw(st.sampled_from([*BYTE_DAMAGE, "removed", "text", "values", "cache"]))
    magic = {".pkl": PICKLE_MAGIC, ".hdf5": b"\x89HDF\r\n\x1a\n", ".jpg": b"\xff\xd8\xff", ".JPEG": b"\xff\xd8\xff"}
    if kind in BYTE_DAMAGE:
        files[which] = byte_damage(draw, kind, files[which], magic.get(Path(which).suffix, b""))
    elif kind == "removed":
        del files[which]
    elif kind == "text":  # a CSV or label list (or any file) replaced by lines of drawn text
        words = st.sampled_from(["filename,label", "n01532829", "x.jpg,n01532829", ",", "", "\x00", "a,b,c",
                                 "[]", '["n01532829", 3]', "{}", "n01532829/../../etc"])  # fmt: skip
        lines = draw(st.lists(words | st.text(max_size=30), max_size=8))
        files[which] = "\n".join(lines).encode("utf-8", "surrogatepass")
    elif kind == "values":  # a learn2learn pickle holding other values or arrays
        which = draw(st.sampled_from([w for w in files if w.endswith(".pkl")] or [which]))
        images = draw(arrays(st.sampled_from([(6, 12, 12, 3), (6, 12, 12), (0, 12, 12, 3), (6, 12, 12, 4),
                                              (6, 1, 1, 3), (), (6,)])))  # fmt: skip
        class_dict = draw(st.dictionaries(st.text(max_size=10), st.lists(st.integers(-3, 9), max_size=4)
                                          | junk_values(), max_size=3) | junk_values())  # fmt: skip
        value = draw(st.sampled_from(["both", "images", "junk"]))
        content = {"image_data": images, "class_dict": class_dict} if value == "both" else (
            {"image_data": images} if value == "images" else draw(junk_values()))  # fmt: skip
        files[which] = pickle.dumps(content, protocol=draw(st.integers(2, pickle.HIGHEST_PROTOCOL)))
    params = {"layout": layout, "which": which, "kind": kind, "image_size": draw(st.sampled_from([12, 8, 20]))}
    if kind == "cache":  # a valid copy whose cache entry is then damaged
        params["cache_file"] = draw(st.sampled_from(["meta.json", "train.npy", "val.npy", "test.npy"]))
        params["cache_damage"] = draw(st.sampled_from(BYTE_DAMAGE))
        params["cache_bytes"] = draw(random_bytes(2000))
        params["cache_cut"] = draw(st.floats(0, 1))
    return Case({f"data/{k}": v for k, v in files.items()}, params)


def _has_h5py() -> bool:
    try:
        import h5py  # noqa: F401
    except ImportError:
        return False
    return True


def run_mini_imagenet(case: Case, root: Path, fixtures: Fixtures) -> Any:
    """`--dataset mini-imagenet --split as-found` on the copy; a damaged cache entry must be decoded again (the
    images equal a load from scratch), never used."""
    from fastadapt.datasets.miniimagenet import load_miniimagenet

    def load() -> Any:
        return load_miniimagenet(root / "data", "as-found", case.params["image_size"])

    with environment(FASTADAPT_CACHE=str(root / "cache")):
        first = load()
        if case.params["kind"] != "cache":
            return None
        reference = {part: split.images.clone() for part, split in first.items()}
        del first
        entries = [p for p in (root / "cache" / "mini-imagenet").iterdir() if p.is_dir()]
        target = entries[0] / case.params["cache_file"]
        data = target.read_bytes()
        damage = case.params["cache_damage"]
        if damage == "random":
            data = case.params["cache_bytes"]
        elif damage == "magic":
            data = (b"\x93NUMPY\x01\x00" if target.suffix == ".npy" else b"{") + case.params["cache_bytes"]
        else:
            data = data[: int(case.params["cache_cut"] * len(data))]
        target.write_bytes(data)
        again = load()
    import torch

    for part, images in reference.items():
        if not torch.equal(again[part].images, images):
            return f"the {part} images differ from a load from scratch"
    return None


# --- the targets: settings -------------------------------------------------------------------------------------------

SETTING_NAMES = [
    "ways", "shots", "query", "train_ways", "train_shots", "eval_query", "meta_batch_size", "image_size", "channels",
    "seed", "lr", "lr_decay", "lr_decay_every", "lr_min", "steps", "val_every", "val_episodes", "test_episodes",
    "network", "split", "device", "outer_optimizer", "lr_schedule", "inner_lr", "inner_steps", "eval_inner_steps",
    "first_order", "strategy", "workers", "vmap_chunk", "dataset", "algorithm", "distance", "hidden", "unknown_x",
]  # fmt: skip

ABSURD_INTS = ["0", "-1", "1", "2", "3", "5", "-5", "100000", "2147483648", str(2**63), str(10**30), "-" + str(10**30)]
ABSURD_FLOATS = ["nan", "inf", "-inf", "0", "-0", "1e-320", "1e308", "1e309", "-1", "0.5", "3", "NaN", "-1e400"]
GARBAGE = ["", "five", "1e3", "0x10", "1_000", "\u0663", " 7 ", "+3", "9" * 40, "1.5", "None", "true", "[]", "-"]
NAMES = [
    "conv4",
    "conv4-0",
    "conv4--1",
    "conv4-99999999",
    "conv4-stride",
    "resnet12",
    "mlp",
    "x" * 300,
    "cpu",
    "cuda",
    "cuda:7",
    "meta",
    "mps",
    "",
    "vinyals",
    "lake",
    "nonexistent",
    "adam",
    "auto",
    "loop",
    "fold",
    "\x00",
]


def setting_values() -> st.SearchStrategy[Any]:
    """Values a config file may hold: absurd numbers of the right type, and every other type."""
    return st.one_of(
        st.sampled_from(ABSURD_INTS).map(int),
        st.sampled_from([float(v) for v in ABSURD_FLOATS]),
        st.sampled_from(NAMES),
        junk_values(),
    )


def flag_values(kind: type) -> st.SearchStrategy[str]:
    typed = {int: ABSURD_INTS, float: ABSURD_FLOATS + ABSURD_INTS, str: NAMES}.get(kind, ABSURD_INTS)
    return st.sampled_from(typed) | st.sampled_from(GARBAGE)


def option_fields(options: type) -> list[tuple[str, type, tuple | None]]:
    """(flag, type, choices) of each field of an options dataclass."""
    import typing

    from fastadapt.options import _scalar_type, flag_of

    hints = typing.get_type_hints(options)
    return [(flag_of(f), _scalar_type(hints[f.name]), f.metadata.get("choices")) for f in dataclasses.fields(options)
            if "help" in f.metadata]  # fmt: skip


@st.composite
def flags(draw: st.DrawFn, fields: list[tuple[str, type, tuple | None]], skip: tuple[str, ...]) -> list[str]:
    argv: list[str] = []
    chosen = draw(st.lists(st.sampled_from([f for f in fields if f[0] not in skip]), max_size=4, unique=True))
    for flag, kind, choices in chosen:
        if kind is bool:
            argv.append(draw(st.sampled_from([flag, "--no-" + flag[2:]])))
        elif choices and draw(st.booleans()):
            argv.append(f"{flag}={draw(st.sampled_from(choices))}")
        else:
            argv.append(f"{flag}={draw(flag_values(kind))}")
    return argv


#: Where a fuzzed command line finds its data: tiny fixtures (stood in for at run time).
DATASET_ARGS = {
    "sinusoid": [],
    "folder": ["--data-dir", "{folder}"],
    "omniglot": ["--data-dir", "{omniglot}", "--split", "lake"],
    "embeddings": ["--data-dir", "{embeddings}"],
}


def _resolve(argv: list[str], fixtures: Fixtures, root: Path) -> list[str]:
    places = {"{folder}": fixtures.folder, "{omniglot}": fixtures.omniglot, "{embeddings}": fixtures.embeddings,
              "{out}": root / "out", "{root}": root}  # fmt: skip
    for name in ("maml", "protonet", "pretrain"):
        places[f"{{{name}}}"] = fixtures.checkpoint(name)
    out = []
    for arg in argv:
        for key, value in places.items():
            arg = arg.replace(key, str(value))
        out.append(arg)
    return out


def _argv_names(case: Case, root: Path) -> list[str]:
    words = [str(root)]
    for arg in case.params["argv"]:
        if arg.startswith("--"):
            words.append(arg.split("=", 1)[0])
    return words + case.params.get("names", [])


@st.composite
def train_cases(draw: st.DrawFn) -> Case:
    from fastadapt.algorithms.registry import algorithms
    from fastadapt.config import config_class

    name = draw(st.sampled_from(sorted(algorithms())))
    spec = algorithms()[name]
    dataset = draw(st.sampled_from([*spec.presets, "sinusoid", "folder", "omniglot"]))
    dataset = "omniglot" if dataset not in DATASET_ARGS else dataset
    argv = ["train", "--algorithm", name, "--dataset", dataset, *DATASET_ARGS[dataset], "--out", "{out}", "--quiet"]
    skip = ("--out", "--data-dir", "--algorithm", "--dataset", "--init-from", "--compile")
    argv += draw(flags(option_fields(config_class(name)), skip))
    if draw(st.integers(0, 9)) == 0:
        argv += ["--init-from", draw(st.sampled_from(["{maml}/last.pt", "{protonet}/best.pt", "{root}/none.pt"]))]
    return Case({}, {"argv": argv})


@st.composite
def eval_cases(draw: st.DrawFn) -> Case:
    checkpoint = draw(st.sampled_from(["{maml}/best.pt", "{protonet}/best.pt", "{pretrain}/pretrain.pt",
                                       "{root}/none.pt", "{root}"]))  # fmt: skip
    argv = ["eval", "--checkpoint", checkpoint, "--quiet"]
    fields = [(f, int, None) for f in ("--episodes", "--ways", "--shots", "--eval-query", "--eval-inner-steps")]
    argv += draw(flags([*fields, ("--device", str, None), ("--split", str, ("test", "val"))], ()))
    argv += ["--out", draw(st.sampled_from(["{out}", "{root}/file/x", "{root}/a b/ü"]))]
    return Case({"file": b"a file"}, {"argv": argv})


@st.composite
def pretrain_cases(draw: st.DrawFn) -> Case:
    from fastadapt.config import PretrainConfig

    dataset = draw(st.sampled_from(["folder", "folder", "omniglot", "sinusoid", "embeddings"]))
    argv = ["pretrain", "--dataset", dataset, *DATASET_ARGS[dataset], "--out", "{out}", "--quiet"]
    argv += draw(flags(option_fields(PretrainConfig), ("--out", "--data-dir", "--dataset")))
    return Case({}, {"argv": argv})


@st.composite
def embed_cases(draw: st.DrawFn) -> Case:
    checkpoint = draw(st.sampled_from(["{pretrain}/pretrain.pt", "{pretrain}/pretrain.pt", "{maml}/last.pt",
                                       "{root}/none.pt", "{root}/file"]))  # fmt: skip
    argv = ["embed", "--checkpoint", checkpoint, "--quiet"]
    if draw(st.booleans()):
        argv += draw(flags([("--batch-size", int, None), ("--device", str, None)], ()))
    argv += ["--out", draw(st.sampled_from(["{out}", "{out}", "{root}/file/x", "{root}/file"]))]
    if draw(st.booleans()):
        argv += ["--data-dir", draw(st.sampled_from(["{folder}", "{root}/none", "{omniglot}"]))]
    files: dict[str, bytes | None] = {"file": b"a file"}
    if draw(st.booleans()):  # damaged outputs of an earlier embed, which a new one replaces whole
        files.update({"out/meta.json": draw(random_bytes(200)), "out/train.npz": draw(random_bytes(200))})
    return Case(files, {"argv": argv})


@st.composite
def config_cases(draw: st.DrawFn) -> Case:
    suffix = draw(st.sampled_from([".yaml", ".yml", ".toml", ".json", "", ".cfg"]))
    kind = draw(st.sampled_from(["random", "settings", "settings", "values"]))
    if kind == "random":
        data = draw(random_bytes(1000) | st.text(max_size=300).map(str.encode))
    else:
        settings = draw(st.dictionaries(st.sampled_from(SETTING_NAMES) | st.text(max_size=10), setting_values(),
                                        max_size=5)) if kind == "settings" else draw(junk_values())  # fmt: skip
        data = _serialise(settings, suffix)
    argv = ["train", "--config", f"{{root}}/run{suffix}", "--out", "{out}", "--quiet"]
    if draw(st.booleans()):
        argv += ["--algorithm", "maml", "--dataset", "sinusoid", "--strategy", "loop"]
    keys = list(settings) if kind == "settings" else []
    return Case({f"run{suffix}": data}, {"argv": argv, "names": [f"run{suffix}", *map(str, keys)]})


def _serialise(value: Any, suffix: str) -> bytes:
    try:
        if suffix == ".json":
            return json.dumps(value, default=repr).encode()
        if suffix == ".toml" and isinstance(value, dict):
            lines = []
            for key, item in value.items():
                text = (str(item).lower() if isinstance(item, bool) else json.dumps(item, default=repr)
                        .replace("NaN", "nan").replace("Infinity", "inf"))  # fmt: skip
                lines.append(f"{json.dumps(str(key))} = {text}")
            return "\n".join(lines).encode()
        import yaml

        return yaml.safe_dump(value, allow_unicode=True).encode()
    except Exception:  # a value a format cannot hold: its repr
        return repr(value).encode()


#: Paths the system refuses or that name the wrong kind of thing: a name longer than a file system allows, a path
#: longer than PATH_MAX, a path through a file, a folder where a file belongs, nothing, an empty string.
ODD_PATHS = ["{root}/" + "x" * 300, "{root}/" + "/".join(["y" * 200] * 25), "{root}/file/x", "{root}", "{root}/none",
             "{root}/file", ""]  # fmt: skip
#: Each path-valued option of each command, in a command line that is otherwise valid.
PATH_OPTIONS = {
    name: argv.split()
    for name, argv in {
        "train --data-dir": "train --algorithm protonet --dataset folder --out {out} --data-dir",
        "train --data-dir (omniglot)": "train --algorithm maml --dataset omniglot --out {out} --data-dir",
        "train --data-dir (mini-imagenet)": "train --algorithm protonet --dataset mini-imagenet --out {out} --data-dir",
        "train --config": "train --algorithm maml --dataset sinusoid --out {out} --config",
        "train --init-from": "train --algorithm maml --dataset sinusoid --out {out} --init-from",
        "train --out": "train --algorithm maml --dataset sinusoid --out",
        "train --split": "train --algorithm protonet --dataset folder --data-dir {folder} --out {out} --split",
        "eval --checkpoint": "eval --out {out} --checkpoint",
        "eval --out": "eval --checkpoint {protonet}/best.pt --out",
        "pretrain --data-dir": "pretrain --dataset folder --out {out} --data-dir",
        "pretrain --out": "pretrain --dataset folder --data-dir {folder} --out",
        "embed --checkpoint": "embed --out {out} --checkpoint",
        "embed --data-dir": "embed --checkpoint {pretrain}/pretrain.pt --out {out} --data-dir",
        "embed --out": "embed --checkpoint {pretrain}/pretrain.pt --out",
    }.items()
}


@st.composite
def path_cases(draw: st.DrawFn) -> Case:
    option = draw(st.sampled_from(sorted(PATH_OPTIONS)))
    # no control characters (a path holding a newline is printed as it is, on two lines) nor lone surrogates; no
    # ".." either, so that every path stays inside the case's folder
    names = st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=260)
    names = names.filter(lambda name: ".." not in name)
    path = draw(st.sampled_from(ODD_PATHS) | names.map(lambda name: "{root}/" + name))
    argv = [*PATH_OPTIONS[option], path, "--quiet"]
    if draw(st.booleans()) and argv[0] == "train":
        argv.append("--resume")
    return Case({"file": b"a file"}, {"argv": argv})


def run_paths(case: Case, root: Path, fixtures: Fixtures) -> Any:
    if case.params["argv"][0] == "embed":
        return run_embed(case, root, fixtures)
    run_cli(_resolve(case.params["argv"], fixtures, root))
    return None


def run_command(case: Case, root: Path, fixtures: Fixtures) -> None:
    run_cli(_resolve(case.params["argv"], fixtures, root))


def run_embed(case: Case, root: Path, fixtures: Fixtures) -> Any:
    argv = _resolve(case.params["argv"], fixtures, root)
    run_cli(argv)
    out = Path(argv[argv.index("--out") + 1])
    missing = [f for f in ("train.npz", "val.npz", "test.npz", "meta.json") if not (out / f).is_file()]
    if missing:
        return f"embed succeeded without writing {missing}"
    json.loads((out / "meta.json").read_text())
    from fastadapt.datasets.embeddings import load_embeddings

    load_embeddings(out)  # what it wrote reads back, whatever was there before
    return None


# --- every target -----------------------------------------------------------------------------------------------------

TARGETS: dict[str, Target] = {
    t.name: t
    for t in [
        Target(
            "checkpoint_file",
            "random bytes as a checkpoint (load_checkpoint)",
            st.builds(
                lambda data: Case({"model.pt": data}, {}), st.binary(min_size=3072, max_size=3072) | random_bytes()
            ),
            run_checkpoint_file,
            lambda case, root: [str(root / "model.pt")],
        ),
        Target(
            "checkpoint",
            "a checkpoint handed to `fastadapt eval` (load_learner)",
            checkpoint_cases(),
            run_checkpoint,
            lambda case, root: [str(root / "model.pt"), "model.pt"],
        ),
        Target(
            "omniglot_npz",
            "Omniglot's images_background/evaluation.npz",
            omniglot_npz_cases(),
            run_omniglot,
            lambda case, root: [case.params["which"], "Omniglot character"],
        ),
        Target(
            "omniglot_cache",
            "Omniglot's resized-image cache",
            omniglot_cache_cases(),
            run_omniglot_cache,
            _names("cache"),
        ),
        Target(
            "omniglot_zip",
            "Lake's zip, converted by `fastadapt download`",
            zip_cases(),
            run_convert,
            _names("images_background.zip"),
        ),
        Target("image_folder", "an image folder (--dataset folder)", folder_cases(), run_folder, _names()),
        Target("folder_split", "a folder's train/val/test.txt", folder_split_cases(), run_folder_split, _names()),
        Target(
            "omniglot_split_list",
            "Omniglot's split list",
            omniglot_list_cases(),
            run_omniglot_list,
            _names("omniglot_vinyals.txt"),
        ),
        Target(
            "leo_pickle",
            "the LEO authors' embedding pickles",
            leo_cases(),
            run_embeddings,
            lambda case, root: [case.params["which"], str(root)],
        ),
        Target(
            "embeddings_npz",
            "`fastadapt embed`'s train/val/test.npz",
            embedding_npz_cases(),
            run_embeddings,
            lambda case, root: [case.params["which"], str(root)],
        ),
        Target(
            "mini_imagenet",
            "mini-ImageNet in its four layouts, and its decoded-image cache",
            mini_imagenet_cases(),
            run_mini_imagenet,
            _names("mini-imagenet", "mini-ImageNet"),
        ),
        Target(
            "metrics_jsonl",
            "metrics.jsonl on --resume and for the learning curve",
            metrics_cases(),
            run_metrics,
            _names("metrics.jsonl"),
        ),
        Target(
            "config_file", "`fastadapt train --config FILE`", config_cases(), run_command, _argv_names, command=True
        ),
        Target("cli_train", "`fastadapt train` option values", train_cases(), run_command, _argv_names, command=True),
        Target("cli_eval", "`fastadapt eval` option values", eval_cases(), run_command, _argv_names, command=True),
        Target(
            "cli_pretrain",
            "`fastadapt pretrain` option values",
            pretrain_cases(),
            run_command,
            _argv_names,
            command=True,
        ),
        Target(
            "cli_paths", "every path-valued option, given odd paths", path_cases(), run_paths, _argv_names, command=True
        ),  # fmt: skip
        Target("cli_embed", "`fastadapt embed` option values", embed_cases(), run_embed, _argv_names, command=True),
    ]
}


def fixtures_for(root: Path) -> Fixtures:
    return Fixtures(root).make()


if __name__ == "__main__":  # pragma: no cover - a look at some drawn cases
    for name in sys.argv[1:]:
        print(name, TARGETS[name].strategy.example())
