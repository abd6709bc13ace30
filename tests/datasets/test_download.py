"""Downloading and converting Omniglot, against a tiny fixture zip served from 127.0.0.1."""

from __future__ import annotations

import hashlib
import http.server
import io
import socket
import threading
import zipfile
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fastadapt.datasets.download import (
    OMNIGLOT_SOURCES,
    RemoteFile,
    convert_omniglot_zip,
    download_file,
    download_omniglot,
)
from fastadapt.errors import DataError

# (alphabet, [character_id of character01, character02]); ids deliberately not in alphabet order.
BACKGROUND = [("Zeta_script", [3, 4]), ("Alpha_(test)", [1, 2])]
EVALUATION = [("Omega", [5, 6]), ("Beta", [7, 8])]


def _png(row: int, col: int) -> bytes:
    """A 105x105 1-bit PNG like Lake's: white background, one black (ink) 2x3 block at (row, col)."""
    img = Image.new("1", (105, 105), 1)
    for r in range(row, row + 2):
        for c in range(col, col + 3):
            img.putpixel((c, r), 0)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _make_zip(path: Path, split: str, alphabets: list[tuple[str, list[int]]]) -> bytes:
    """Lake's layout ``<split>/<alphabet>/<character>/XXXX_YY.png``; members written in reverse order."""
    members = [(f"{split}/", None)]
    for alphabet, ids in alphabets:
        members.append((f"{split}/{alphabet}/", None))
        for c, cid in enumerate(ids, start=1):
            members.append((f"{split}/{alphabet}/character{c:02d}/", None))
            for d in range(1, 21):
                members.append((f"{split}/{alphabet}/character{c:02d}/{cid:04d}_{d:02d}.png", _png(cid, d)))
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in reversed(members):
            if data is None:
                zf.writestr(name, b"")
            else:
                zf.writestr(name, data)
    return path.read_bytes()


class _Server:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[str] = []
        requests = self.requests

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self) -> None:
                requests.append(self.path)
                super().do_GET()

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A local HTTP server with the two fixture zips; yields (server, {name: sha256})."""
    root = tmp_path_factory.mktemp("srv")
    sums = {}
    for name, alphabets in (("images_background", BACKGROUND), ("images_evaluation", EVALUATION)):
        data = _make_zip(root / f"{name}.zip", name, alphabets)
        sums[name] = hashlib.sha256(data).hexdigest()
    server = _Server(root)
    yield server, sums
    server.close()


def _sources(server: _Server, sums: dict[str, str]) -> dict[str, RemoteFile]:
    return {name: RemoteFile(f"{server.url}/{name}.zip", sha256=sha) for name, sha in sums.items()}


def _expected_rows(alphabets: list[tuple[str, list[int]]]) -> list[tuple[str, str, int, int]]:
    rows = []
    for alphabet, ids in sorted(alphabets):
        for c, cid in enumerate(ids, start=1):
            rows += [(alphabet, f"character{c:02d}", cid, d) for d in range(1, 21)]
    return rows


def test_official_sources_are_pinned():
    assert set(OMNIGLOT_SOURCES) == {"images_background", "images_evaluation"}
    for name, src in OMNIGLOT_SOURCES.items():
        assert src.url == f"https://github.com/brendenlake/omniglot/raw/master/python/{name}.zip"
        assert src.sha256 is not None and len(src.sha256) == 64 and int(src.sha256, 16) >= 0
        assert src.md5 is not None and len(src.md5) == 32


def test_download_and_convert(served, tmp_path):
    server, sums = served
    root = download_omniglot(tmp_path, sources=_sources(server, sums), progress=False)
    assert root == tmp_path / "omniglot"
    assert (root / "raw" / "images_background.zip").is_file()
    assert not [p for p in (root / "raw").iterdir() if p.name.startswith(".")]  # no temp files left

    for name, alphabets in (("images_background", BACKGROUND), ("images_evaluation", EVALUATION)):
        with np.load(root / f"{name}.npz", allow_pickle=False) as d:
            arrays = {k: d[k] for k in d.files}
        keys = {"images", "alphabet", "character", "character_id", "drawer", "filename", "label"}
        assert set(arrays) == keys
        rows = _expected_rows(alphabets)
        images = arrays["images"]
        assert images.dtype == np.uint8 and images.shape == (80, 105, 105)
        assert arrays["character_id"].dtype == np.int16 and arrays["label"].dtype == np.int16
        assert arrays["drawer"].dtype == np.int8
        assert arrays["alphabet"].dtype.kind == "U"
        assert list(arrays["alphabet"]) == [r[0] for r in rows]
        assert list(arrays["character"]) == [r[1] for r in rows]
        assert arrays["character_id"].tolist() == [r[2] for r in rows]
        assert arrays["drawer"].tolist() == [r[3] for r in rows]
        assert list(arrays["filename"]) == [f"{r[2]:04d}_{r[3]:02d}.png" for r in rows]
        assert arrays["label"].tolist() == np.repeat(np.arange(4), 20).tolist()
        # 1 = ink: exactly the 2x3 black block of each PNG, everything else 0.
        assert set(np.unique(images).tolist()) == {0, 1}
        assert (images.reshape(80, -1).sum(axis=1) == 6).all()
        for img, (_, _, cid, d) in zip(images, rows, strict=True):
            assert img[cid : cid + 2, d : d + 3].all()


def test_second_call_does_not_download_again(served, tmp_path):
    server, sums = served
    sources = _sources(server, sums)
    before = len(server.requests)
    download_omniglot(tmp_path, sources=sources, progress=False)
    assert len(server.requests) == before + 2
    download_omniglot(tmp_path, sources=sources, progress=False)
    assert len(server.requests) == before + 2
    # A lost .npz is rebuilt from the verified zip, still without a download.
    (tmp_path / "omniglot" / "images_evaluation.npz").unlink()
    download_omniglot(tmp_path, sources=sources, progress=False)
    assert len(server.requests) == before + 2
    assert (tmp_path / "omniglot" / "images_evaluation.npz").is_file()


def test_download_file_skips_verified_file(served, tmp_path):
    server, sums = served
    url, dest = f"{server.url}/images_background.zip", tmp_path / "bg.zip"
    before = len(server.requests)
    download_file(url, dest, sha256=sums["images_background"], progress=True)
    download_file(url, dest, sha256=sums["images_background"], progress=True)
    assert len(server.requests) == before + 1


def test_md5_is_checked_when_no_sha256(served, tmp_path):
    server, _ = served
    url = f"{server.url}/images_background.zip"
    with pytest.raises(DataError, match="expected md5"):
        download_file(url, tmp_path / "a.zip", md5="0" * 32, progress=False)
    assert not (tmp_path / "a.zip").exists()
    md5 = hashlib.md5((server.root / "images_background.zip").read_bytes()).hexdigest()
    assert download_file(url, tmp_path / "b.zip", md5=md5, progress=False).is_file()


def test_wrong_checksum_raises_and_leaves_nothing(served, tmp_path):
    server, sums = served
    dest = tmp_path / "raw" / "images_background.zip"
    wrong = "0" * 64
    with pytest.raises(DataError) as info:
        download_file(f"{server.url}/images_background.zip", dest, sha256=wrong, progress=False)
    message = str(info.value)
    assert "images_background.zip" in message and wrong in message and sums["images_background"] in message
    assert list(dest.parent.iterdir()) == []


def test_wrong_checksum_in_download_omniglot(served, tmp_path):
    server, sums = served
    sources = _sources(server, {**sums, "images_evaluation": "f" * 64})
    with pytest.raises(DataError, match="checksum mismatch"):
        download_omniglot(tmp_path, sources=sources, progress=False)
    assert not (tmp_path / "omniglot" / "images_evaluation.npz").exists()
    assert not (tmp_path / "omniglot" / "raw" / "images_evaluation.zip").exists()


def test_404_raises(served, tmp_path):
    server, _ = served
    dest = tmp_path / "missing.zip"
    with pytest.raises(DataError, match=r"could not download .*missing\.zip: HTTP 404"):
        download_file(f"{server.url}/missing.zip", dest, sha256="0" * 64, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_unreachable_raises(tmp_path):
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DataError, match="could not download .*check your connection"):
        download_file(f"http://127.0.0.1:{port}/x.zip", tmp_path / "x.zip", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_convert_rejects_bad_zip(tmp_path):
    bad = tmp_path / "images_background.zip"
    bad.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a readable zip"):
        convert_omniglot_zip(bad, tmp_path / "out.npz")
    empty = tmp_path / "empty.zip"
    with zipfile.ZipFile(empty, "w") as zf:
        zf.writestr("readme.txt", "hello")
    with pytest.raises(DataError, match="no <split>"):
        convert_omniglot_zip(empty, tmp_path / "out.npz")
    assert not (tmp_path / "out.npz").exists()


# --- Omniglot when absent: the quickstart's path ---------------------------------------------------------------


def test_ensure_omniglot_downloads_when_absent(served, tmp_path):
    from fastadapt.datasets.download import ensure_omniglot, omniglot_present

    server, sums = served
    assert not omniglot_present(tmp_path)
    root = ensure_omniglot(tmp_path, download=True, sources=_sources(server, sums), progress=False)
    assert root == tmp_path / "omniglot" and omniglot_present(tmp_path)
    before = len(server.requests)
    assert ensure_omniglot(tmp_path, download=True, sources=_sources(server, sums), progress=False) == root
    assert ensure_omniglot(tmp_path, download=False) == root  # present: nothing to fetch, no flag needed
    assert len(server.requests) == before


def test_ensure_omniglot_without_download_says_how(tmp_path):
    from fastadapt.datasets.download import ensure_omniglot

    with pytest.raises(DataError) as info:
        ensure_omniglot(tmp_path, download=False)
    message = str(info.value)
    assert "\n" not in message
    assert f"Omniglot is not in {tmp_path / 'omniglot'}; pass --download" in message
    assert (
        "images_background.zip and images_evaluation.zip" in message and str(tmp_path / "omniglot" / "raw") in message
    )


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ensure_omniglot_offline_says_what_to_fetch_and_where(tmp_path):
    from fastadapt.datasets.download import OMNIGLOT_PAGE, ensure_omniglot

    port = _dead_port()
    sources = {name: RemoteFile(f"http://127.0.0.1:{port}/{name}.zip", sha256="0" * 64) for name in OMNIGLOT_SOURCES}
    with pytest.raises(DataError) as info:
        ensure_omniglot(tmp_path, download=True, sources=sources, progress=False)
    message = str(info.value)
    assert "\n" not in message
    assert "the download failed" in message and OMNIGLOT_PAGE in message
    assert f"into {tmp_path / 'omniglot' / 'raw'}/" in message
    assert not (tmp_path / "omniglot" / "raw").exists() or list((tmp_path / "omniglot" / "raw").iterdir()) == []


def test_zips_placed_by_hand_are_used_offline(served, tmp_path):
    """Following the offline message: the two zips put in raw/ by hand are verified and converted, no network."""
    from fastadapt.datasets.download import ensure_omniglot

    server, sums = served
    raw = tmp_path / "omniglot" / "raw"
    raw.mkdir(parents=True)
    for name in sums:
        (raw / f"{name}.zip").write_bytes((server.root / f"{name}.zip").read_bytes())
    port = _dead_port()
    offline = {name: RemoteFile(f"http://127.0.0.1:{port}/{name}.zip", sha256=sha) for name, sha in sums.items()}
    assert ensure_omniglot(tmp_path, download=True, sources=offline, progress=False) == tmp_path / "omniglot"
    with np.load(tmp_path / "omniglot" / "images_evaluation.npz") as d:
        assert d["images"].shape == (80, 105, 105)


def test_quickstart_entry_point(served, tmp_path, monkeypatch, capsys):
    """`python -m fastadapt.datasets.download omniglot --data-dir DIR [train options]`, as scripts/demo.sh runs it."""
    from fastadapt.datasets import download

    server, sums = served
    monkeypatch.setattr(download, "OMNIGLOT_SOURCES", _sources(server, sums))
    assert download.main(["omniglot", "--data-dir", str(tmp_path), "--steps", "300", "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == f"Omniglot ready in {tmp_path / 'omniglot'}"
    port = _dead_port()
    dead = {name: RemoteFile(f"http://127.0.0.1:{port}/{name}.zip") for name in sums}
    monkeypatch.setattr(download, "OMNIGLOT_SOURCES", dead)
    assert download.main(["omniglot", "--data-dir", str(tmp_path / "elsewhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("fastadapt: error: Omniglot is not in")


def test_demo_script_fetches_omniglot():
    script = (Path(__file__).resolve().parents[2] / "scripts" / "demo.sh").read_text()
    train = script[script.index("exec .venv/bin/fastadapt train") :]
    assert "--dataset omniglot --download" in train


def test_train_download_flag_fetches_omniglot_where_training_reads_it(served, tmp_path, monkeypatch):
    """`fastadapt train --dataset omniglot --download` (load_splits with config.download): fetched when absent into
    the data folder training reads, then loaded from there; without the flag, one line naming it; present files are
    read without a request."""
    from fastadapt.config import make_config
    from fastadapt.datasets import download, load_splits, omniglot

    server, sums = served
    monkeypatch.setattr(download, "OMNIGLOT_SOURCES", _sources(server, sums))
    monkeypatch.setenv("FASTADAPT_CACHE", str(tmp_path / "cache"))
    loaded = []  # the fixture's 8 characters make no Vinyals split: record what training would load
    monkeypatch.setattr(omniglot, "load_omniglot", lambda *args: loaded.append(args) or "splits")
    data = tmp_path / "data"
    with pytest.raises(DataError, match="pass --download to fetch it"):
        load_splits(make_config("protonet", "omniglot", data_dir=str(data)))
    before = len(server.requests)
    assert load_splits(make_config("protonet", "omniglot", data_dir=str(data), download=True)) == "splits"
    assert len(server.requests) == before + 2 and loaded == [(data, "vinyals", 28)]
    images, names, _ = omniglot.load_characters(data, 28)
    assert len(names) == 8 and images.shape[1:] == (20, 28, 28)
    load_splits(make_config("protonet", "omniglot", data_dir=str(data)))
    assert len(server.requests) == before + 2 and len(loaded) == 2
