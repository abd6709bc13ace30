"""What the gradient guard costs on the first meta-batch, beside what ``auto`` already spends measuring.

For each preset, a fresh learner measures its strategy on the preset's first training batch, with the guard and
without it; the guard's own time is the sum of its checks. Writes a JSON record.

    python bench/gradient_guard_cost.py --out bench/results/gradient_guard_cost.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import date
from pathlib import Path

import torch

from fastadapt.algorithms import build_algorithm
from fastadapt.config import make_config
from fastadapt.datasets import load_splits, task_source
from fastadapt.engine.strategy import choose_strategy, describe_choice

PRESETS = {
    "maml omniglot 5-way 1-shot": ("maml", {}),
    "first-order maml omniglot 5-way 1-shot": ("maml", {"first_order": True}),
    "maml++ omniglot 5-way 1-shot": ("maml++", {}),
}


def measure(algorithm: str, overrides: dict, gradient_check: bool) -> dict:
    config = make_config(algorithm, "omniglot", **overrides)
    torch.manual_seed(config.seed)
    batch = task_source(config, load_splits(config), "train", config.seed).sample(config.meta_batch_size)
    learner = build_algorithm(config)
    started = time.perf_counter()
    measured = choose_strategy(learner, batch, gradient_check=gradient_check)
    return {
        "seconds": time.perf_counter() - started,
        "guard_seconds": sum(check["seconds"] for check in measured.get("gradient_checks", [])),
        "choice": describe_choice(measured),
        "checks": measured.get("gradient_checks", []),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/gradient_guard_cost.json"))
    args = parser.parse_args()
    rows = []
    for name, (algorithm, overrides) in PRESETS.items():
        without = measure(algorithm, overrides, gradient_check=False)
        with_guard = measure(algorithm, overrides, gradient_check=True)
        share = with_guard["guard_seconds"] / without["seconds"]
        rows.append(
            {
                "preset": name,
                "auto_without_guard_s": without["seconds"],
                "guard_s": with_guard["guard_seconds"],
                "guard_share_of_auto": share,
                "auto_with_guard_s": with_guard["seconds"],
                "choice": with_guard["choice"],
                "checks": with_guard["checks"],
            }
        )
        print(
            f"{name}: auto {without['seconds']:.2f} s without the guard; guard {with_guard['guard_seconds']:.3f} s "
            f"({100 * share:.1f}% of it); {with_guard['choice']}"
        )
    record = {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "torch": torch.__version__,
        "command": "python bench/gradient_guard_cost.py",
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(args.out)


if __name__ == "__main__":
    main()
