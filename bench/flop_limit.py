"""How close each implementation of MAML's meta-training step comes to this machine's arithmetic limit.

For each of bench/speed_maml.py's eight configurations (workload (a) stride-2 Conv-4 with 1 query per class and
(b) max-pool Conv-4 with 15, 1 or 5 inner steps, second or first order; 32 tasks, 5-way 1-shot, 1x28x28):

1. **Count** the floating-point operations of one meta-step, the plain per-task loop of ``torch.autograd.grad``
   (bench/speed_maml.py ``plain``, torch's layers) with ``torch.utils.flop_counter.FlopCounterMode``: every
   convolution and matrix product of the inner loops (support forward and gradient), the query forward and the
   meta-gradient's backward pass (the counter counts convolutions and matrix products, which is where the
   arithmetic is; batch norm, ReLU, pooling, the SGD updates and Adam are memory-bound and not counted). Each
   counted call is recorded with its shapes, strides and arguments, and the recorded FLOPs must add up to the
   counter's total (asserted).
2. **Measure** what this CPU sustains on exactly those calls: each distinct call (the same aten operation, shapes and
   arguments) is run alone on random data, in the layout recorded and in channels-last, (i) with 2 intra-op threads
   and (ii) as two one-thread copies at once on two Python threads (how fastadapt's task workers use the cores), and
   the fastest of the four is that call's time (both cores busy). Once measured, a call is kept for the
   configurations that share it.
3. **The limit** of a configuration is the sum over its calls of those times: the step's convolutions and matrix
   products alone, each at this machine's best measured speed at its shapes, with nothing else. An
   implementation's **fraction of the limit** is limit / its median step time (from a speed_maml results file):
   1.0 would mean nothing but that arithmetic, at full speed.

Folded or vectorised implementations run the same arithmetic at other shapes (a grouped convolution over a chunk of
tasks); the limit is that of the per-task shapes, so a strategy can in principle beat it by finding faster shapes.

    bench/.venv-peers/bin/python bench/flop_limit.py --speed bench/results/speed_maml_parallel_metalearn.json

Writes bench/results/flop_limit.json and the table as markdown beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import speed_maml as bench
import torch
import torch.nn.functional as F
from common import RESULTS, machine, write_json
from torch.func import functional_call
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, flop_registry

PHASES = ("inner loops", "query forward", "meta-backward")


def describe(value):
    """A hashable description of an argument: a tensor's shape, strides and dtype; anything else as it is."""
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape), tuple(value.stride()), str(value.dtype).removeprefix("torch."))
    if isinstance(value, (list, tuple)):
        return tuple(describe(v) for v in value)
    return value


class CallRecorder(TorchDispatchMode):
    """Records each call of an operation that FlopCounterMode counts: (operation, arguments described) -> how many
    times, and its FLOPs per phase of the step."""

    def __init__(self) -> None:
        super().__init__()
        self.phase = PHASES[0]
        self.calls: Counter = Counter()
        self.flops_per_call: dict = {}
        self.flops_by_phase: Counter = Counter()
        self.functions: dict = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        counter = flop_registry.get(func._overloadpacket)
        if counter is not None:
            key = (str(func), describe(args), describe(tuple(sorted(kwargs.items()))))
            flops = counter(*args, **kwargs, out_val=out)
            self.calls[key] += 1
            self.flops_per_call[key] = flops
            self.functions[key] = (func, args, kwargs)
            self.flops_by_phase[self.phase] += flops
        return out


def record_step(workload: str, steps: int, first_order: bool):
    """One meta-step of the plain loop (speed_maml's ``plain``, phase by phase) under FlopCounterMode and the
    recorder; returns the counter's total and the recorder."""
    model = bench.make_model(workload)
    batch = bench.make_batch(workload)
    names = [n for n, _ in model.named_parameters()]
    recorder = CallRecorder()
    counter = FlopCounterMode(display=False)
    with counter, recorder:
        for i in range(batch.num_tasks):
            fast = list(model.parameters())
            recorder.phase = "inner loops"
            for _ in range(steps):
                logits = functional_call(model, dict(zip(names, fast)), (batch.support_x[i],))
                grads = torch.autograd.grad(
                    F.cross_entropy(logits, batch.support_y[i]), fast, create_graph=not first_order
                )
                fast = [w - bench.INNER_LR * g for w, g in zip(fast, grads)]
            recorder.phase = "query forward"
            logits = functional_call(model, dict(zip(names, fast)), (batch.query_x[i],))
            loss = F.cross_entropy(logits, batch.query_y[i]) / batch.num_tasks
            recorder.phase = "meta-backward"
            loss.backward()
    total = counter.get_total_flops()
    recorded = sum(n * recorder.flops_per_call[k] for k, n in recorder.calls.items())
    assert recorded == total, f"recorded {recorded} FLOPs, FlopCounterMode counted {total}"
    by_operation = {str(op): flops for op, flops in counter.get_flop_counts()["Global"].items()}
    return total, by_operation, recorder


def random_like(value, channels_last: bool):
    """Random data with the described tensor's shape, strides (or channels-last strides) and dtype."""
    if not isinstance(value, torch.Tensor):
        return value
    if channels_last and value.dim() == 4:
        return torch.randn(value.shape, dtype=value.dtype).contiguous(memory_format=torch.channels_last)
    size = 1 + sum((n - 1) * s for n, s in zip(value.shape, value.stride()) if n > 0)
    return torch.randn(size, dtype=value.dtype).as_strided(value.shape, value.stride())


def arguments(args, kwargs, channels_last: bool):
    def convert(value):
        if isinstance(value, (list, tuple)) and any(isinstance(v, torch.Tensor) for v in value):
            return type(value)(random_like(v, channels_last) for v in value)
        return random_like(value, channels_last)

    return [convert(a) for a in args], {k: convert(v) for k, v in kwargs.items()}


def seconds_per_call(func, args, kwargs, channels_last: bool, copies: int, threads: int, budget: float) -> float:
    """Seconds per call of ``func`` on random arguments: ``copies`` one-thread copies at once on Python threads
    (``threads`` must be 1 then), or one copy on ``threads`` intra-op threads. The best of three windows of about
    ``budget`` seconds each, after a warm-up."""
    torch.set_num_threads(threads)
    copies_args = [arguments(args, kwargs, channels_last) for _ in range(copies)]
    for a, k in copies_args:  # warm-up, and how many calls fill the window
        func(*a, **k)
    started = time.perf_counter()
    func(*copies_args[0][0], **copies_args[0][1])
    reps = max(3, int(budget / max(time.perf_counter() - started, 1e-6)))
    best = float("inf")
    for _ in range(3):
        barrier = threading.Barrier(copies + 1)

        def run(a, k, barrier=barrier):
            barrier.wait()
            for _ in range(reps):
                func(*a, **k)

        workers = [threading.Thread(target=run, args=ak) for ak in copies_args]
        for w in workers:
            w.start()
        barrier.wait()
        started = time.perf_counter()
        for w in workers:
            w.join()
        best = min(best, (time.perf_counter() - started) / (reps * copies))
    return best


def measure_call(key, function, cores: int, budget: float) -> dict:
    func, args, kwargs = function
    layouts = (False, True) if any(isinstance(a, torch.Tensor) and a.dim() == 4 for a in args) else (False,)
    timings = {}
    for channels_last in layouts:
        layout = "channels-last" if channels_last else "as recorded"
        timings[f"{layout}, {cores} threads"] = seconds_per_call(func, args, kwargs, channels_last, 1, cores, budget)
        timings[f"{layout}, {cores} one-thread copies"] = seconds_per_call(
            func, args, kwargs, channels_last, cores, 1, budget
        )
        timings[f"{layout}, 1 thread"] = seconds_per_call(func, args, kwargs, channels_last, 1, 1, budget)
    both_cores = {k: v for k, v in timings.items() if "1 thread" not in k}
    best = min(both_cores, key=both_cores.get)
    return {"seconds": both_cores[best], "how": best, "timings": timings}


def fractions(speed: dict, limits: dict) -> list[dict]:
    """For each configuration of a speed_maml results record, each implementation's median step time and limit / it."""
    rows = []
    for result in speed["results"]:
        key = (result["workload"], result["inner_steps"], result["order"])
        if key not in limits:
            continue
        limit = limits[key]
        row = {"workload": key[0], "inner_steps": key[1], "order": key[2], "limit_s": limit, "implementations": {}}
        for name, record in result["implementations"].items():
            row["implementations"][name] = {
                "median_s": record["median_s"],
                "fraction_of_limit": limit / record["median_s"],
                "correct": record.get("correct", True),
            }
        rows.append(row)
    return rows


def markdown(configurations: list[dict], rows: list[dict]) -> str:
    lines = [
        "| workload | inner steps | order | GFLOP per step | limit (s) | sustained GFLOP/s at these shapes |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for c in configurations:
        lines.append(
            f"| ({'a' if c['workload'] == 'stride' else 'b'}) | {c['inner_steps']} | {c['order']} | "
            f"{c['flops'] / 1e9:.2f} | {c['limit_s']:.3f} | {c['flops'] / c['limit_s'] / 1e9:.1f} |"
        )
    if rows:
        names = [n for n in bench.IMPLEMENTATIONS if any(n in r["implementations"] for r in rows)]
        lines += ["", "| workload | inner steps | order | " + " | ".join(names) + " |"]
        lines.append("| " + " | ".join(["---"] * (len(names) + 3)) + " |")
        for r in rows:
            cells = []
            for name in names:
                record = r["implementations"].get(name)
                text = f"{record['median_s']:.3f} s ({100 * record['fraction_of_limit']:.0f}%)" if record else "-"
                cells.append(text + ("" if not record or record["correct"] else " (wrong meta-gradient)"))
            lines.append(
                f"| ({'a' if r['workload'] == 'stride' else 'b'}) | {r['inner_steps']} | {r['order']} | "
                + " | ".join(cells)
                + " |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cores", type=int, default=2, help="cores to measure the calls on")
    parser.add_argument("--budget", type=float, default=0.1, help="seconds per timing window of one call")
    parser.add_argument("--workloads", nargs="+", default=list(bench.WORKLOADS), choices=list(bench.WORKLOADS))
    parser.add_argument("--inner-steps", nargs="+", type=int, default=[1, 5])
    parser.add_argument("--orders", nargs="+", default=["second", "first"], choices=["second", "first"])
    parser.add_argument("--speed", help="a speed_maml results JSON: each implementation's fraction of the limit")
    parser.add_argument("--out", default=str(RESULTS / "flop_limit.json"))
    args = parser.parse_args()
    started = time.time()
    measured: dict = {}
    configurations, limits = [], {}
    for workload in args.workloads:
        for steps in args.inner_steps:
            for order in args.orders:
                torch.set_num_threads(1)
                total, by_operation, recorder = record_step(workload, steps, order == "first")
                for key in recorder.calls:
                    if key not in measured:
                        measured[key] = measure_call(key, recorder.functions[key], args.cores, args.budget)
                limit = sum(n * measured[k]["seconds"] for k, n in recorder.calls.items())
                one_thread = sum(n * measured[k]["timings"]["as recorded, 1 thread"] for k, n in recorder.calls.items())
                calls = sorted(recorder.calls, key=lambda k: -recorder.calls[k] * measured[k]["seconds"])
                configurations.append(
                    {
                        "workload": workload,
                        "inner_steps": steps,
                        "order": order,
                        "flops": total,
                        "flops_by_phase": dict(recorder.flops_by_phase),
                        "flops_by_operation": by_operation,
                        "calls": sum(recorder.calls.values()),
                        "distinct_calls": len(recorder.calls),
                        "limit_s": limit,
                        "one_thread_as_recorded_s": one_thread,
                        "largest_calls": [
                            {
                                "operation": k[0],
                                "arguments": repr(k[1]),
                                "count": recorder.calls[k],
                                "flops_per_call": recorder.flops_per_call[k],
                                **measured[k],
                            }
                            for k in calls[:8]
                        ],
                    }
                )
                limits[(workload, steps, order)] = limit
                print(
                    f"{workload:<6} {steps} step(s) {order:<6} order: {total / 1e9:7.2f} GFLOP in "
                    f"{sum(recorder.calls.values())} calls ({len(recorder.calls)} distinct); limit {limit:.3f} s "
                    f"({total / limit / 1e9:.1f} GFLOP/s; one thread, as recorded: {one_thread:.3f} s)",
                    flush=True,
                )
    rows = fractions(json.loads(Path(args.speed).read_text()), limits) if args.speed else []
    record = {
        "command": " ".join(["python", *sys.argv]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "load_average_at_end": os.getloadavg(),
        "cores": args.cores,
        "speed_record": args.speed,
        "wall_s": round(time.time() - started, 1),
        "configurations": configurations,
        "fractions": rows,
    }
    out = Path(args.out)
    write_json(out, record)
    table = markdown(configurations, rows)
    out.with_suffix(".md").write_text(table + "\n")
    print("\n" + table + f"\n\nwrote {out}, {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
