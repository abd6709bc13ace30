"""Is parallel-metalearn's MAML meta-gradient the plain loop's? float64, the speed benchmark's networks.

parallel-metalearn 0.5.6 (PyPI; module ``metalearn``) runs MAML's inner loops over the tasks of a meta-batch with
``torch.func.vmap`` of ``torch.func.grad``. With torch 2.13, vmap differentiates the affine weights of
``nn.BatchNorm2d`` wrongly twice (bench/vmap_double_backward.py). This script computes its meta-gradient on the
eight configurations of bench/speed_maml.py (workload (a) stride-2 Conv-4 with 1 query per class and (b) max-pool
Conv-4 with 15, 1 or 5 inner steps, first or second order), on the first ``--tasks`` tasks of the benchmark's batch,
in float64, in two forms:

- ``torch-bn``: the benchmark's network as given (torch's ``nn.BatchNorm2d(track_running_stats=False)``);
- ``library-bn``: with the library's own ``BatchNorm`` in its place (how its Conv-4 backbone is built; its
  ``ModelTranslator.convert_to_functional``, meant to make that swap, raises ``TypeError`` in 0.5.6: tried here too);

and compares each with a per-task loop of ``torch.autograd.grad`` (bench/speed_maml.py's ``plain``), from the same
weights: the relative error of the whole meta-gradient, ||g - g_loop|| / ||g_loop||, and of each parameter tensor
against the whole gradient's norm (the tensors worst off are listed).

    bench/.venv-peers/bin/python bench/parallel_metalearn_gradients.py

Writes bench/results/parallel_metalearn_gradients.json.
"""

from __future__ import annotations

import argparse
import time
from datetime import datetime, timezone
from pathlib import Path

import speed_maml as bench
import torch
from common import RESULTS, machine, write_json

VARIANTS = {"torch-bn": "parallel-metalearn", "library-bn": "parallel-metalearn-bn"}


def named_float64_gradient(implementation: str, workload: str, steps: int, first_order: bool, tasks: int):
    names = [name for name, _ in bench.make_model(workload).named_parameters()]
    return dict(zip(names, bench.float64_meta_gradient(implementation, workload, steps, first_order, tasks)))


def compare(reference: dict[str, torch.Tensor], got: dict[str, torch.Tensor]) -> dict:
    total = torch.sqrt(sum(g.square().sum() for g in reference.values()))
    whole = torch.sqrt(sum((got[k] - g).square().sum() for k, g in reference.items())) / total
    per_tensor = {k: ((got[k] - g).norm() / total).item() for k, g in reference.items()}
    worst = sorted(per_tensor, key=per_tensor.get, reverse=True)[:3]
    return {
        "relative_error": whole.item(),
        "max_tensor_relative_error": per_tensor[worst[0]],
        "worst_tensors": {k: per_tensor[k] for k in worst},
    }


def translator_result() -> str:
    """What the library's own converter does with the benchmark's network."""
    from metalearn.nn_models import ModelTranslator

    try:
        ModelTranslator.convert_to_functional(bench.make_model("stride"))
    except Exception as error:  # noqa: BLE001 - reported as found
        return f"{type(error).__name__}: {error}"
    return "converted"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=bench.FLOAT64_TASKS, help="tasks of the benchmark's batch")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(RESULTS / "parallel_metalearn_gradients.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from importlib.metadata import version

    started = time.time()
    rows = []
    for workload in bench.WORKLOADS:
        for steps in (1, 5):
            for order in ("second", "first"):
                first_order = order == "first"
                reference = named_float64_gradient("plain", workload, steps, first_order, args.tasks)
                row = {"workload": workload, "inner_steps": steps, "order": order}
                for variant, implementation in VARIANTS.items():
                    got = named_float64_gradient(implementation, workload, steps, first_order, args.tasks)
                    row[variant] = compare(reference, got)
                rows.append(row)
                print(
                    f"{workload:<6} {steps} step(s) {order:<6} order: torch-bn {row['torch-bn']['relative_error']:.1e}"
                    f"  library-bn {row['library-bn']['relative_error']:.1e}",
                    flush=True,
                )
    record = {
        "command": "bench/.venv-peers/bin/python bench/parallel_metalearn_gradients.py",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "parallel_metalearn": version("parallel-metalearn"),
        "tasks": args.tasks,
        "dtype": "float64 (torch's default dtype float64 meanwhile: the library sums its meta-loss into "
        "torch.tensor(0.0), which would round a float64 meta-gradient through float32, ~1e-8)",
        "reference": "per-task loop of torch.autograd.grad (bench/speed_maml.py plain), same weights and tasks",
        "model_translator": translator_result(),
        "wall_s": round(time.time() - started, 1),
        "results": rows,
    }
    write_json(Path(args.out), record)
    print(f"ModelTranslator.convert_to_functional: {record['model_translator']}\nwrote {args.out}")


if __name__ == "__main__":
    main()
