"""Sampling mini-ImageNet episodes from the decoded-image cache against decoding the JPEGs each time.

On a synthetic copy of realistic size, generated locally (Ravi & Larochelle's layout: 100 classes x 600 JPEGs of
84x84, the standard 64/16/20 class lists; written to --fixture, never committed), this measures:

- building the cache once (decode every JPEG, write the memory-mapped arrays): fastadapt.datasets.miniimagenet;
- an epoch of 5-way 5-shot training episodes with 15 queries per class (100 images each; 384 episodes = as many
  images as the 38400 of the training split), sampled by fastadapt's EpisodeSampler from the memory-mapped cache
  (it gathers an episode's rows with ``torch.index_select``, one call per support or query set);
- the same epoch from the cache with the rows gathered by advanced indexing (``images[rows]``), as
  ``EpisodeSampler`` did before (it copies uint8 images element by element, index_select row by row);
- the same episodes (same sampler, same seed, same rows) with every image decoded from its JPEG when sampled,
  as a loader without a cache does.

Each epoch is timed ``--repeats`` times, the three kinds taking turns, and the median is reported (the machine
is shared, so a burst of load falls on all three rather than on one).

The two paths' first episodes are checked to be identical, pixel for pixel. The JPEGs and the cache are in the
page cache during both timings (the generation and the cache build just read or wrote them), so disk speed is
not measured, only decoding against copying.

    python bench/miniimagenet_cache.py --fixture /tmp/fastadapt-mini-bench

Writes bench/results/miniimagenet_cache.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from common import RESULTS, machine, write_json

from fastadapt.datasets import miniimagenet as mi
from fastadapt.datasets.miniimagenet_fixture import write_fixture
from fastadapt.tasks.samplers import EpisodeSampler

WAYS, SHOTS, QUERY = 5, 5, 15


def ensure_fixture(root: Path, per_class: int) -> tuple[Path, float | None]:
    """The synthetic copy at ``root`` (generated unless a complete one is there) and the seconds generation took."""
    done = root / ".complete"
    if done.is_file() and done.read_text().strip() == str(per_class):
        return root, None
    shutil.rmtree(root, ignore_errors=True)
    started = time.perf_counter()
    write_fixture(root, "ravi", classes=mi.standard_split(), per_class=per_class)
    done.write_text(str(per_class))
    return root, time.perf_counter() - started


class AdvancedIndexingSampler(EpisodeSampler):
    """EpisodeSampler with its rows gathered by advanced indexing, as it did before it used torch.index_select."""

    def _images(self, rows: np.ndarray) -> torch.Tensor:
        tasks = rows.shape[0]
        x = self.split.images[torch.from_numpy(rows.reshape(-1))]
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        return x.reshape(tasks, -1, *x.shape[1:])


class JpegEpisodes:
    """The cached sampler's episodes, with each image decoded from its file when sampled."""

    def __init__(self, sampler: EpisodeSampler, files: list[Path], size: int) -> None:
        self.sampler, self.files, self.size = sampler, files, size

    def sample(self) -> torch.Tensor:
        support, query = self.sampler.sample_indices()
        rows = np.concatenate([support.reshape(-1), query.reshape(-1)])
        images = np.stack([mi._decode_image(self.files[r], self.size) for r in rows])
        return torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fixture", default="/tmp/fastadapt-mini-bench")
    parser.add_argument("--per-class", type=int, default=600)
    parser.add_argument("--episodes", type=int, default=0, help="episodes per epoch (0: training images / 100)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    root, generated_s = ensure_fixture(Path(args.fixture) / "mini-imagenet", args.per_class)
    cache = Path(args.fixture) / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    os.environ["FASTADAPT_CACHE"] = str(cache)

    started = time.perf_counter()
    splits = mi.load_miniimagenet(root, split="ravi", progress=False)
    build_s = time.perf_counter() - started
    started = time.perf_counter()
    splits = mi.load_miniimagenet(root, split="ravi")
    open_s = time.perf_counter() - started
    train = splits["train"]
    episodes = args.episodes or len(train.images) // (WAYS * (SHOTS + QUERY))

    # The files of the training split in the rows' order: the CSV's classes sorted, files in CSV order.
    parts = mi._scan("ravi", root)
    files = [Path(p) for p in parts["train"].sources[1:]]
    assert len(files) == len(train.images)

    def fresh() -> dict:
        return {
            "cache": EpisodeSampler(train, WAYS, SHOTS, QUERY, seed=args.seed),
            "cache_advanced_indexing": AdvancedIndexingSampler(train, WAYS, SHOTS, QUERY, seed=args.seed),
            "jpeg": JpegEpisodes(EpisodeSampler(train, WAYS, SHOTS, QUERY, seed=args.seed), files, mi.IMAGE_SIZE),
        }

    samplers = fresh()
    first = samplers["cache"].sample(1)
    indexed = samplers["cache_advanced_indexing"].sample(1)
    decoded = samplers["jpeg"].sample()
    together = torch.cat([first.support_x[0], first.query_x[0]])
    identical = bool(torch.equal(together, decoded) and torch.equal(first.query_x, indexed.query_x))

    times: dict[str, list[float]] = {name: [] for name in samplers}
    for _ in range(args.repeats):
        for name, sampler in fresh().items():
            draw = sampler.sample if name == "jpeg" else (lambda sampler=sampler: sampler.sample(1))
            started = time.perf_counter()
            for _ in range(episodes):
                draw()
            times[name].append(time.perf_counter() - started)
    median = {name: float(np.median(t)) for name, t in times.items()}

    record = {
        "name": "miniimagenet_cache",
        "command": f"python bench/miniimagenet_cache.py --fixture {args.fixture} --per-class {args.per_class} "
        f"--repeats {args.repeats}",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "fixture": f"synthetic, Ravi & Larochelle's layout, 100 classes x {args.per_class} JPEGs of 84x84",
        "fixture_generation_s": None if generated_s is None else round(generated_s, 1),
        "cache_build_s": round(build_s, 2),
        "cache_open_s": round(open_s, 3),
        "cache_bytes": sum(p.stat().st_size for p in cache.rglob("*.npy")),
        "episode": f"{WAYS}-way {SHOTS}-shot, {QUERY} queries per class ({WAYS * (SHOTS + QUERY)} images)",
        "epoch_episodes": episodes,
        "first_episode_identical": identical,
        "repeats": args.repeats,
        "epoch_s_median": {name: round(t, 3) for name, t in median.items()},
        "epoch_s_all": {name: [round(x, 3) for x in t] for name, t in times.items()},
        "speedup_cache": round(median["jpeg"] / median["cache"], 1),
        "speedup_cache_advanced_indexing": round(median["jpeg"] / median["cache_advanced_indexing"], 1),
        "target_speedup": 10,
    }
    write_json(RESULTS / "miniimagenet_cache.json", record)
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
