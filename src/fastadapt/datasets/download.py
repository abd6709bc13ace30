"""Fetch Omniglot from its public source and convert it to the ``.npz`` layout that
:mod:`fastadapt.datasets.omniglot` reads.

The source is Brenden Lake's repository https://github.com/brendenlake/omniglot, files
``python/images_background.zip`` (964 characters) and ``python/images_evaluation.zip`` (659 characters).

Checksums: every download is verified against its **sha256**, which is known for both zips; the md5
is kept as well and is only used for a source that has no sha256. The values are not computed here;
they are the ones published by other projects that download these exact URLs:

- sha256 (and sizes 9464212 / 6462886 bytes): TensorFlow Datasets,
  ``tensorflow_datasets/url_checksums/omniglot.txt``; the same two sha256 values are pinned in
  torchvision's prototype Omniglot dataset.
- md5: torchvision ``torchvision/datasets/omniglot.py`` (``zips_md5``).

Each ``.npz`` written by :func:`convert_omniglot_zip` holds, in rows sorted by
(alphabet, character, filename): ``images`` uint8 (N, 105, 105) with 1 = ink, ``alphabet``,
``character``, ``filename`` (str), ``character_id`` int16 and ``drawer`` int8 (from ``XXXX_YY.png``),
and ``label`` int16 (0-based character index). It is written with ``np.savez_compressed``, no pickles.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import numpy as np
from PIL import Image

from fastadapt.errors import DataError

__all__ = [
    "RemoteFile",
    "OMNIGLOT_SOURCES",
    "download_file",
    "convert_omniglot_zip",
    "download_omniglot",
    "omniglot_present",
    "ensure_omniglot",
    "download_miniimagenet",
]

IMAGE_SIZE = 105
DRAWINGS_PER_CHARACTER = 20
TIMEOUT_S = 60.0
_CHUNK = 1 << 16
_NPZ_KEYS = ("images", "alphabet", "character", "character_id", "drawer", "filename", "label")
_FILENAME = re.compile(r"^(\d{4})_(\d{2})\.png$")


@dataclass(frozen=True)
class RemoteFile:
    """A file to download and the checksums it must match (sha256 preferred, md5 as a fallback)."""

    url: str
    sha256: str | None = None
    md5: str | None = None


_LAKE = "https://github.com/brendenlake/omniglot/raw/master/python"
OMNIGLOT_SOURCES: dict[str, RemoteFile] = {
    "images_background": RemoteFile(
        url=f"{_LAKE}/images_background.zip",
        sha256="ad41ab679c8b5d90b271ef46be6987cc81211774a695c29dcc5367b2b26ee640",
        md5="68d2efa1b9178cc56df9314c21c6e718",
    ),
    "images_evaluation": RemoteFile(
        url=f"{_LAKE}/images_evaluation.zip",
        sha256="1f61a8f3366785b057fc117d9228e78a16e3d976c8953b2a10fcc74cf0609cee",
        md5="6b91aef0f799c5bb55b94e3f2daec811",
    ),
}


def _expected(sha256: str | None, md5: str | None) -> tuple[str, str] | None:
    """(algorithm, lower-case hex digest) to check: sha256 when known, else md5, else None."""
    if sha256:
        return "sha256", sha256.lower()
    if md5:
        return "md5", md5.lower()
    return None


def _file_digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _progress_bar(total: int | None, desc: str, enabled: bool):
    """A tqdm bar when wanted and available, else None."""
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, leave=False)


def download_file(
    url: str,
    dest: Path,
    sha256: str | None = None,
    md5: str | None = None,
    progress: bool = True,
) -> Path:
    """Download ``url`` to ``dest`` and verify it (sha256 if given, else md5); return ``dest``.

    Nothing is downloaded when ``dest`` already exists with the right checksum (or exists and no
    checksum is given). The data is streamed into a temporary file beside ``dest`` that is renamed
    into place only after it passed the check, so a failed or interrupted download leaves no file.
    """
    dest = Path(dest)
    check = _expected(sha256, md5)
    stale = False
    if dest.is_file():
        if check is None or _file_digest(dest, check[0]) == check[1]:
            return dest
        stale = True
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    except OSError as exc:
        raise DataError(f"cannot write to {dest.parent} ({exc}); choose another --data-dir.") from exc
    tmp = Path(tmp_name)
    try:
        hasher = hashlib.new(check[0]) if check else None
        with os.fdopen(fd, "wb") as out:
            try:
                request = urllib.request.Request(url, headers={"User-Agent": "fastadapt"})
                with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
                    length = response.headers.get("Content-Length")
                    total = int(length) if length and length.isdigit() else None
                    bar = _progress_bar(total, dest.name, progress)
                    try:
                        for chunk in iter(lambda: response.read(_CHUNK), b""):
                            out.write(chunk)
                            if hasher is not None:
                                hasher.update(chunk)
                            if bar is not None:
                                bar.update(len(chunk))
                    finally:
                        if bar is not None:
                            bar.close()
                    if total is not None and out.tell() != total:
                        raise OSError(f"connection closed after {out.tell()} of {total} bytes")
            except urllib.error.HTTPError as exc:
                raise _network_error(url, dest, f"HTTP {exc.code} {exc.reason}", stale) from exc
            except urllib.error.URLError as exc:
                raise _network_error(url, dest, str(exc.reason), stale) from exc
            except (OSError, ValueError) as exc:  # timeouts, resets, malformed URLs
                raise _network_error(url, dest, f"{type(exc).__name__}: {exc}", stale) from exc
        if check is not None and hasher is not None:
            actual = hasher.hexdigest()
            if actual != check[1]:
                raise DataError(
                    f"checksum mismatch for {dest.name} downloaded from {url}: expected {check[0]} "
                    f"{check[1]}, got {actual}. The download was corrupted or the file changed upstream; "
                    f"try again, or place a verified copy at {dest} by hand."
                )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def _network_error(url: str, dest: Path, reason: str, stale: bool) -> DataError:
    note = f" (the existing {dest} does not match its checksum)" if stale else ""
    return DataError(
        f"could not download {url}: {reason}{note}; check your connection or place the files by hand in {dest.parent}."
    )


def _decode_png(data: bytes, name: str, zip_path: Path) -> np.ndarray:
    """PNG bytes -> uint8 (105, 105) with 1 = ink (the PNGs have white background, black ink)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            gray = np.asarray(img.convert("L"))
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot decode {name} in {zip_path} ({exc}); delete the zip and download it again.") from exc
    if gray.shape != (IMAGE_SIZE, IMAGE_SIZE):
        raise DataError(
            f"{name} in {zip_path} is {gray.shape[1]}x{gray.shape[0]}, not {IMAGE_SIZE}x{IMAGE_SIZE}; "
            f"this is not Lake's Omniglot zip. Delete it and download it again."
        )
    return (gray < 128).astype(np.uint8)


def convert_omniglot_zip(zip_path: Path, out_npz: Path) -> None:
    """Convert one of Lake's zips (``<split>/<alphabet>/<character>/XXXX_YY.png``) to ``out_npz``."""
    zip_path, out_npz = Path(zip_path), Path(out_npz)
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{zip_path} is not a readable zip ({exc}); delete it and download it again.") from exc
    with archive:
        entries: list[tuple[str, str, str, str]] = []  # (alphabet, character, filename, member)
        for member in archive.namelist():
            parts = member.split("/")
            if len(parts) != 4 or not parts[3] or parts[0].startswith("__MACOSX"):
                continue
            if parts[3].startswith(".") or not parts[3].lower().endswith(".png"):
                continue
            entries.append((parts[1], parts[2], parts[3], member))
        if not entries:
            raise DataError(
                f"{zip_path} holds no <split>/<alphabet>/<character>/*.png images; "
                f"it is not Lake's Omniglot zip. Delete it and download it again."
            )
        entries.sort()

        n = len(entries)
        images = np.empty((n, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
        character_id = np.empty(n, dtype=np.int16)
        drawer = np.empty(n, dtype=np.int8)
        label = np.empty(n, dtype=np.int16)
        counts: dict[tuple[str, str], int] = {}
        for i, (alphabet, character, filename, member) in enumerate(entries):
            match = _FILENAME.match(filename)
            if match is None:
                raise DataError(
                    f"unexpected file name {member} in {zip_path} (expected XXXX_YY.png); "
                    f"delete the zip and download it again."
                )
            key = (alphabet, character)
            if key not in counts:
                counts[key] = 0
            counts[key] += 1
            label[i] = len(counts) - 1
            character_id[i] = int(match.group(1))
            drawer[i] = int(match.group(2))
            images[i] = _decode_png(archive.read(member), member, zip_path)
    wrong = [f"{a}/{c} ({k})" for (a, c), k in counts.items() if k != DRAWINGS_PER_CHARACTER]
    if wrong:
        raise DataError(
            f"{zip_path} has characters without {DRAWINGS_PER_CHARACTER} drawings: {', '.join(wrong[:5])}; "
            f"delete the zip and download it again."
        )

    out_npz.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=out_npz.parent, prefix=f".{out_npz.stem}.", suffix=".npz")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        np.savez_compressed(
            tmp,
            images=images,
            alphabet=np.array([e[0] for e in entries]),
            character=np.array([e[1] for e in entries]),
            character_id=character_id,
            drawer=drawer,
            filename=np.array([e[2] for e in entries]),
            label=label,
        )
        os.replace(tmp, out_npz)
    finally:
        tmp.unlink(missing_ok=True)


def _as_remote(name: str, source: RemoteFile | Mapping[str, str] | str) -> RemoteFile:
    if isinstance(source, RemoteFile):
        return source
    if isinstance(source, str):
        return RemoteFile(url=source)
    if isinstance(source, Mapping) and "url" in source:
        return RemoteFile(url=source["url"], sha256=source.get("sha256"), md5=source.get("md5"))
    raise TypeError(f"source for {name} must be a RemoteFile or a mapping with 'url', got {source!r}")


def _npz_ok(path: Path) -> bool:
    """True when ``path`` is a readable ``.npz`` with all the arrays of the layout."""
    try:
        with np.load(path, allow_pickle=False) as d:
            return set(_NPZ_KEYS) <= set(d.files)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, zlib.error):
        return False


def download_omniglot(
    data_dir: str | os.PathLike,
    sources: Mapping[str, RemoteFile | Mapping[str, str]] = OMNIGLOT_SOURCES,
    progress: bool = True,
) -> Path:
    """Download Lake's zips into ``<data_dir>/omniglot/raw/``, verify them and convert them to
    ``<data_dir>/omniglot/<name>.npz``; return ``<data_dir>/omniglot``.

    ``sources`` maps ``images_background`` / ``images_evaluation`` to where to fetch each zip. A
    ``.npz`` that is already present and readable is kept; a verified zip is not downloaded again.
    """
    root = Path(data_dir).expanduser() / "omniglot"
    raw = root / "raw"
    for name, source in sources.items():
        out = root / f"{name}.npz"
        if out.is_file() and _npz_ok(out):
            continue
        remote = _as_remote(name, source)
        zip_path = download_file(remote.url, raw / f"{name}.zip", remote.sha256, remote.md5, progress)
        convert_omniglot_zip(zip_path, out)
    return root


OMNIGLOT_PAGE = "https://github.com/brendenlake/omniglot/tree/master/python"


def omniglot_present(data_dir: str | os.PathLike) -> bool:
    """Whether ``<data_dir>/omniglot/`` holds both readable ``.npz`` files (their listings only are read)."""
    root = Path(data_dir).expanduser() / "omniglot"
    return all((root / f"{name}.npz").is_file() and _npz_ok(root / f"{name}.npz") for name in OMNIGLOT_SOURCES)


def ensure_omniglot(
    data_dir: str | os.PathLike,
    download: bool = False,
    sources: Mapping[str, RemoteFile | Mapping[str, str]] = OMNIGLOT_SOURCES,
    progress: bool = True,
) -> Path:
    """``<data_dir>/omniglot``, downloading it first (sha256-checked, :func:`download_omniglot`) when it is absent
    and ``download`` is set. Absent without ``download``, or when the download fails, one line says what to fetch
    and where to put it: zips placed in ``<data_dir>/omniglot/raw/`` by hand are verified and converted without
    a network."""
    data_dir = Path(data_dir).expanduser()
    root = data_dir / "omniglot"
    if omniglot_present(data_dir):
        return root
    raw = root / "raw"
    by_hand = (
        f"fetch images_background.zip and images_evaluation.zip from {OMNIGLOT_PAGE} into {raw}/ "
        f"(they are checked against their sha256 and converted)"
    )
    if not download:
        raise DataError(
            f"Omniglot is not in {root}; pass --download to fetch it (about 16 MB, sha256-checked), run "
            f"`fastadapt download omniglot`, or {by_hand}."
        )
    placed = all((raw / f"{name}.zip").is_file() for name in sources)
    try:
        return download_omniglot(data_dir, sources, progress)
    except DataError as exc:
        if placed or "checksum mismatch" in str(exc) or "cannot write" in str(exc):
            raise
        reason = str(exc).split("; check your connection", 1)[0]  # the URL and why, without download_file's advice
        raise DataError(
            f"Omniglot is not in {root} and the download failed ({reason}); {by_hand}, then run again."
        ) from exc


def download_miniimagenet(*args: object, **kwargs: object) -> NoReturn:
    """``fastadapt download mini-imagenet``: there is no stable public URL to fetch, so this only says which
    layouts :mod:`fastadapt.datasets.miniimagenet` reads and where to put one."""
    from fastadapt.datasets.miniimagenet import NO_DOWNLOAD

    raise DataError(NO_DOWNLOAD)


def main(argv: list[str] | None = None) -> int:
    """``python -m fastadapt.datasets.download omniglot [--data-dir DIR] [...]``: Omniglot where training will look
    for it (``--data-dir``, else ``$FASTADAPT_DATA``, else ``shared/data``, else ``~/.cache/fastadapt/data``),
    downloaded when absent. Other arguments are ignored, so a script can pass its own through. Errors are one
    line on stderr and exit status 2."""
    import argparse
    import sys

    from fastadapt.datasets.paths import resolve_data_dir

    parser = argparse.ArgumentParser(prog="python -m fastadapt.datasets.download")
    parser.add_argument("name", choices=["omniglot"])
    parser.add_argument("--data-dir")
    args, _ = parser.parse_known_args(argv)
    try:
        root = ensure_omniglot(resolve_data_dir(args.data_dir), True, OMNIGLOT_SOURCES, progress=sys.stderr.isatty())
    except DataError as exc:
        print(f"fastadapt: error: {exc}", file=sys.stderr)
        return 2
    print(f"Omniglot ready in {root}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
