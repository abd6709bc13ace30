"""Files that are never half-written, and output folders that one run writes at a time.

Every file fastadapt writes (checkpoints, caches, results) goes through here.

The bytes go to a temporary file beside the target, named for the writing process, are flushed to disk, and the
file is renamed over the target: a reader sees the old file or the new one, never a part; two processes writing
the same target do not share a temporary file; a process killed halfway leaves a temporary file only, which
:func:`remove_leftovers` clears (a run holding its output folder's lock calls it). A failed write (a full disk,
a read-only folder) leaves the target as it was and raises :class:`fastadapt.errors.OutputError`, one line.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from fastadapt.errors import OutputError


def temporary_name(path: Path) -> Path:
    """The temporary file beside ``path`` that this process writes before renaming."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def write_with(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    """``write(file)`` into a temporary file beside ``path``, flushed to disk, then renamed over ``path``."""
    path = Path(path)
    tmp = temporary_name(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as error:
        reason = error.strerror or error or type(error).__name__
        raise OutputError(
            f"could not write {path} ({reason}); what was there before is intact. Free space in {path.parent}, or "
            f"make it writable, or choose another output folder."
        ) from None
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: Path, data: bytes) -> None:
    write_with(path, lambda f: f.write(data))


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, record: Any) -> None:
    write_text(path, json.dumps(record, indent=2) + "\n")


def append_record(path: Path, record: Any) -> None:
    """Add one JSON line to a log (``metrics.jsonl``). A line cut short by a killed process is the only partial
    state possible; readers skip it, and a resumed run rewrites the log whole (:func:`write_text`)."""
    try:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")
    except OSError as error:
        raise OutputError(
            f"could not write {path} ({error.strerror or type(error).__name__}); the last checkpoint is intact. "
            f"Free space in {path.parent} or make it writable, then --resume."
        ) from None


def remove_leftovers(folder: Path) -> list[Path]:
    """Delete the temporary files that killed writers left in ``folder`` (only while no other writer can be there:
    the caller holds the folder's lock). Returns what was removed."""
    removed = []
    for tmp in Path(folder).glob(".*.tmp-*"):
        pid = tmp.name.rpartition(".tmp-")[2]
        if pid.isdigit() and int(pid) != os.getpid():
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


class FolderLock:
    """The output folder of one live run: a second run pointed at it is refused, while a run that was killed leaves
    nothing stuck. The lock is ``fcntl.flock`` on ``<folder>/.lock``, which the system releases when its holder
    exits, however it exits; the file records the holder's process id, host and start time, for the message, and is
    removed when the run ends. (A process that opened the file just before it was removed would lock a file no longer
    in the folder: the lock is taken only if the path still names the locked file.)"""

    NAME = ".lock"

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / self.NAME
        self._file: IO[str] | None = None

    def acquire(self) -> FolderLock:
        for _ in range(100):
            handle = self._locked_file()
            try:
                if os.fstat(handle.fileno()).st_ino == os.stat(self.path).st_ino:
                    break
            except FileNotFoundError:
                pass
            handle.close()  # the holder removed it as we locked it: take the new one
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(record))
        handle.flush()
        self._file = handle
        remove_leftovers(self.path.parent)  # no other writer can be here now
        return self

    def _locked_file(self) -> IO[str]:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(self.path, "a+")
        except OSError as error:
            raise OutputError(
                f"cannot write to the output folder {self.path.parent} ({error.strerror or type(error).__name__}); "
                f"choose a writable --out."
            ) from None
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise OutputError(
                f"{self.path.parent} is being written by a live run ({holder}); wait for it, or choose another --out."
            ) from None
        return handle

    def release(self) -> None:
        if self._file is not None:
            self.path.unlink(missing_ok=True)
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
