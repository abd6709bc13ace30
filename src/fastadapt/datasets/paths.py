"""Where data sets live: ``--data-dir``, else ``$FASTADAPT_DATA``, else ``../shared/data`` when present."""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "FASTADAPT_DATA"
DEFAULT_DATA_DIR = Path.home() / ".cache" / "fastadapt" / "data"


def shared_data_candidates() -> list[Path]:
    """``shared/data`` folders beside the working directory or beside this source checkout."""
    here = Path(__file__).resolve()
    roots = [Path.cwd(), *Path.cwd().parents[:2], *here.parents[2:6]]
    seen, out = set(), []
    for root in roots:
        for cand in (root / "shared" / "data", root.parent / "shared" / "data"):
            if cand not in seen:
                seen.add(cand)
                out.append(cand)
    return out


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The data root to use, in order: the argument, the environment variable, a ``shared/data``
    folder beside this checkout, then ``~/.cache/fastadapt/data`` (where downloads go)."""
    if data_dir:
        return Path(data_dir).expanduser()
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    for cand in shared_data_candidates():
        if cand.is_dir():
            return cand
    return DEFAULT_DATA_DIR


def cache_dir() -> Path:
    """Where derived files (resized image arrays) are cached; ``$FASTADAPT_CACHE`` overrides."""
    return Path(os.environ.get("FASTADAPT_CACHE", Path.home() / ".cache" / "fastadapt")).expanduser()
