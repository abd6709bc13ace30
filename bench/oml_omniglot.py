"""OML on Omniglot (Javed & White 2019) with its baselines, through fastadapt's Python API, resumable.

    FASTADAPT_DATA=/work/shared/data /work/bin/bench-slot .venv/bin/python bench/oml_omniglot.py train --work runs/oml
    ... bench/oml_omniglot.py pretrain --work runs/oml
    ... bench/oml_omniglot.py evaluate --work runs/oml [--classes 10 50 100 200 600 --runs 10]
    ... bench/oml_omniglot.py report --work runs/oml

``train``: OML meta-training on the 964 background characters (``--preset omniglot``, options overridable
with ``--set key=value``); resumes from ``<work>/oml/checkpoint.pt``. ``pretrain``: the pretrained-representation
baseline (the same network, ordinary classification of the background characters). ``evaluate``: OML's
meta-test protocol (fastadapt.continual.protocol.meta_test) on the 659 evaluation characters for each
representation: OML, pretrained, random (an untrained network), and the offline i.i.d. upper bound on OML's
and the pretrained representation; one JSON per method under ``<work>/eval`` (a finished method is skipped).
``report``: ``bench/results/oml_omniglot.json`` and the figures under ``docs/img/``.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from common import RESULTS, ROOT, machine, write_json

from fastadapt.algorithms.continual.oml import build, options_from_preset
from fastadapt.continual.protocol import MetaTestOptions, meta_test
from fastadapt.continual.runner import load_learner, meta_train, plot_meta_test, plot_training_log, pretrain
from fastadapt.tasks.streams import load_omniglot_characters

IMG = ROOT / "docs" / "img"
#: numenta/nupic.research's replication of the reference code (meta-test held-out / meta-test train), as the
#: issue quotes it; classes -> (test, train).
NUMENTA = {
    "OML": {10: (0.91, 0.98), 50: (0.82, 0.96), 100: (0.76, 0.96), 200: (0.69, 0.94), 600: (0.55, 0.91)},
    "ANML": {10: (0.84, 0.92), 50: (0.84, 0.97), 100: (0.81, 0.98), 200: (0.77, 0.97), 600: (0.64, 0.92)},
}
TARGET_TEST = {10: 0.85, 50: 0.75, 100: 0.65}


def parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def options(args):
    overrides = {}
    for item in args.set or []:
        key, _, value = item.partition("=")
        value = parse_value(value)
        overrides[key] = tuple(value) if isinstance(value, list) else value
    if args.steps is not None:
        overrides["steps"] = args.steps
    return options_from_preset(args.preset, **overrides)


def cmd_train(args) -> None:
    opts = options(args)
    data = load_omniglot_characters(args.data_dir, opts.image_size)
    record = meta_train(build(opts), opts, data.background, Path(args.work) / "oml",
                        log_every=args.log_every, checkpoint_every=args.checkpoint_every,
                        stop_after=args.stop_after)  # fmt: skip
    print(json.dumps(record["log"][-1] if record["log"] else {}, indent=1))


def cmd_pretrain(args) -> None:
    opts = options(args)
    data = load_omniglot_characters(args.data_dir, opts.image_size)
    record = pretrain(build(opts), opts, data.background, Path(args.work) / "pretrained", epochs=args.epochs,
                      lr=args.lr, batch_size=args.batch_size)  # fmt: skip
    print(json.dumps(record["log"][-1], indent=1))


def learners(args):
    work = Path(args.work)
    finished = work / "oml" / "model.pt"
    oml = load_learner(finished if finished.is_file() else work / "oml" / "checkpoint.pt")  # a stopped run: its latest
    yield "oml", oml, "online"
    if (work / "pretrained" / "model.pt").is_file():
        yield "pretrained", load_learner(work / "pretrained" / "model.pt"), "online"
    opts = options(args)
    yield "random", build(opts.__class__(**{**opts.__dict__, "seed": 12345})), "online"
    yield "oml-iid", oml, "iid"
    if args.methods and "pretrained-iid" in args.methods:  # only on request: not one of the baselines
        yield "pretrained-iid", load_learner(work / "pretrained" / "model.pt"), "iid"


def cmd_evaluate(args) -> None:
    torch.set_num_threads(1)
    opts = options(args)
    data = load_omniglot_characters(args.data_dir, opts.image_size)
    out = Path(args.work) / "eval"
    for name, learner, mode in learners(args):
        if args.methods and name not in args.methods:
            continue
        path = out / f"{name}.json"
        if path.is_file():
            print(f"{name}: done ({path})")
            continue
        test_options = MetaTestOptions(classes=tuple(args.classes), runs=args.runs, search_runs=args.search_runs,
                                       mode=mode, optimizer=args.optimizer, reset=args.reset)  # fmt: skip
        before = {k: v.clone() for k, v in learner.rln.state_dict().items()}
        record = meta_test(learner, data.evaluation, test_options)
        unchanged = all(torch.equal(before[k], v) for k, v in learner.rln.state_dict().items())
        record.update(method=name, rln_unchanged=unchanged,
                      date=datetime.now(timezone.utc).strftime("%Y-%m-%d"), machine=machine())  # fmt: skip
        write_json(path, record)
        summary = ", ".join(f"{r['classes']}: {r['test_acc']['mean']:.3f}/{r['train_acc']['mean']:.3f}"
                            for r in record["results"])  # fmt: skip
        print(f"{name} ({record['seconds']:.0f} s): {summary}", flush=True)


def cmd_report(args) -> None:
    work = Path(args.work)
    evals = {p.stem: json.loads(p.read_text()) for p in sorted((work / "eval").glob("*.json"))}
    training = json.loads((work / "oml" / "metrics.json").read_text())
    record = {
        "benchmark": "oml_omniglot",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "machine": machine(),
        "meta_training": {k: training[k] for k in ("options", "step", "elapsed_s")} | {"log": training["log"]},
        "meta_test": evals,
        "reference_numenta": {m: {str(n): v for n, v in rows.items()} for m, rows in NUMENTA.items()},
        "targets_test": {str(k): v for k, v in TARGET_TEST.items()},
    }
    pre = work / "pretrained" / "metrics.json"
    if pre.is_file():
        p = json.loads(pre.read_text())
        record["pretraining"] = {k: p.get(k) for k in ("options", "elapsed_s", "best_epoch", "log")}
    write_json(RESULTS / f"{args.name}.json", record)
    names = {"oml": "OML", "pretrained": "pretrained", "random": "random RLN", "oml-iid": "OML, i.i.d. (upper bound)",
             "pretrained-iid": "pretrained, i.i.d."}  # fmt: skip
    plot_meta_test({names.get(k, k): v for k, v in evals.items()}, IMG / f"{args.name}_meta_test.png",
                   "Omniglot, class-sorted stream, one SGD step per image on the PLN (mean, 95% CI)")  # fmt: skip
    plot_training_log(training["log"], IMG / f"{args.name}_meta_training.png", "OML meta-training on Omniglot")
    for name, ev in evals.items():
        print(name, [(r["classes"], round(r["test_acc"]["mean"], 3), round(r["test_acc"]["ci95"], 3),
                      round(r["train_acc"]["mean"], 3), r["lr"]) for r in ev["results"]])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("train", "pretrain", "evaluate", "report"))
    parser.add_argument("--work", default="runs/oml")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--preset", default="omniglot")
    parser.add_argument("--set", nargs="*", help="OMLOptions overrides, key=value (JSON values)")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--stop-after", type=int, default=None)
    parser.add_argument("--log-every", type=int, default=100)
    parser.add_argument("--checkpoint-every", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--classes", type=int, nargs="+", default=[10, 50, 100, 200, 600])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--search-runs", type=int, default=5)
    parser.add_argument("--optimizer", default="sgd", choices=("sgd", "adam"))
    parser.add_argument("--reset", default="output", choices=("output", "pln", "none"))
    parser.add_argument("--methods", nargs="*")
    parser.add_argument("--name", default="oml_omniglot")
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.time()
    {"train": cmd_train, "pretrain": cmd_pretrain, "evaluate": cmd_evaluate, "report": cmd_report}[args.command](args)
    print(f"{args.command}: {time.time() - started:.0f} s wall", flush=True)


if __name__ == "__main__":
    main()
