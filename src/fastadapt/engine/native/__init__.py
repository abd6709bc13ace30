"""fastadapt's C++ kernels for a CPU, compiled on first use and loaded with ctypes.

One source file per kernel sits beside this module. The first call compiles it with the system's C++ compiler
(``$CXX``, else ``c++``/``g++``/``clang++``; about a second) for this machine's CPU, into a cache directory
(``$FASTADAPT_CACHE_DIR``, else ``$XDG_CACHE_HOME/fastadapt`` or ``~/.cache/fastadapt``), keyed by the source, the
compiler and the CPU, so that later runs load it at once. Without a compiler, or with ``FASTADAPT_NATIVE=0``,
:func:`library` returns None and the layers that use a kernel run their torch operations instead (the same
function; a warning says why once).

ctypes releases the GIL during a call, so fastadapt's task workers (fastadapt.engine.taskpool) run kernels side by side.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("batch_norm_pool_relu.cpp")
FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-fno-exceptions")
_lock = threading.Lock()


def cache_dir() -> Path:
    """Where compiled kernels are kept: ``$FASTADAPT_CACHE_DIR``, else the user's cache directory."""
    if os.environ.get("FASTADAPT_CACHE_DIR"):
        return Path(os.environ["FASTADAPT_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fastadapt"


def compiler() -> str | None:
    """The C++ compiler to use: ``$CXX`` or the first of c++, g++, clang++ on the PATH."""
    if os.environ.get("CXX"):
        return os.environ["CXX"]
    return next((found for name in ("c++", "g++", "clang++") if (found := shutil.which(name))), None)


def _cpu_signature() -> str:
    # -march=native code must not be loaded on another CPU (a cache directory shared across machines).
    try:
        with open("/proc/cpuinfo") as info:
            return next((line for line in info if line.startswith(("flags", "Features"))), "")
    except OSError:
        return os.uname().machine


def _compile(cxx: str, source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(handle)
    try:
        subprocess.run([cxx, *FLAGS, "-o", temporary, str(source)], check=True, capture_output=True, text=True)
        os.replace(temporary, target)  # atomic: another process never loads a half-written library
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def _declare(lib: ctypes.CDLL) -> None:
    pointer, size = ctypes.c_void_p, ctypes.c_int64
    for suffix in ("f32", "f64"):
        forward = getattr(lib, f"fastadapt_bn_pool_relu_forward_{suffix}")
        forward.argtypes = [pointer] * 3 + [size] * 4 + [ctypes.c_double] + [pointer] * 4
        forward.restype = ctypes.c_int
        backward = getattr(lib, f"fastadapt_bn_pool_relu_backward_{suffix}")
        backward.argtypes = [pointer] * 7 + [size] * 4 + [pointer] * 3
        backward.restype = ctypes.c_int


@functools.cache
def library() -> ctypes.CDLL | None:
    """The compiled kernels, or None where they cannot be had (see the module docstring)."""
    if os.environ.get("FASTADAPT_NATIVE", "1") == "0":
        return None
    with _lock:
        cxx = compiler()
        if cxx is None:
            log.warning("fastadapt: no C++ compiler found ($CXX, c++, g++, clang++); using torch operations instead.")
            return None
        source = SOURCE.read_bytes()
        key = hashlib.sha256(b"\0".join([source, cxx.encode(), " ".join(FLAGS).encode(), _cpu_signature().encode()]))
        target = cache_dir() / f"fastadapt_native_{key.hexdigest()[:16]}.so"
        try:
            if not target.exists():
                _compile(cxx, SOURCE, target)
            lib = ctypes.CDLL(str(target))
            _declare(lib)
        except (OSError, subprocess.CalledProcessError, AttributeError) as error:
            detail = getattr(error, "stderr", None) or error
            log.warning("fastadapt: could not build %s (%s); using torch operations instead.", SOURCE.name, detail)
            return None
        return lib
