"""Few-shot text classification on CLINC150 (docs/text.md): both settings, resumable, results as JSON.

    # 150-way K-shot intent detection (5 draws), frozen encoder and fine-tuned encoder
    python bench/text_clinc150.py fewshot --shots 5 --out runs/text/fewshot5
    python bench/text_clinc150.py fewshot --shots 5 --finetune --out runs/text/fewshot5-ft
    # episodic N-way K-shot across intents (meta-test domains), every learner vs per-episode logistic regression
    python bench/text_clinc150.py episodic --out runs/text/episodic
    # collect into bench/results/text_clinc150.json and docs/img/text_clinc150_shots.png
    python bench/text_clinc150.py report --runs runs/text

Every command can be interrupted and run again with the same arguments: finished parts are kept, fine-tuning
and meta-training resume from their last checkpoints. Set FASTADAPT_DATA (or --data-dir) to the data root
holding clinc150/data_full.json, and HF_HUB_OFFLINE=1.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path

import torch

from fastadapt.config import Config
from fastadapt.datasets.embeddings import write_json_atomically
from fastadapt.text.finetune import FinetuneOptions
from fastadapt.text.intent import PUBLISHED, FewShotTextOptions, run_fewshot_text, summarise_draws

EPISODIC_SHAPES = ((5, 1), (5, 5), (10, 1), (10, 5))
META_LEARNERS = ("protonet", "maml", "leo")
LOGISTIC_C = (0.1, 1.0, 10.0, 100.0)
RESULTS = Path(__file__).resolve().parent / "results" / "text_clinc150.json"
PLOT = Path(__file__).resolve().parents[1] / "docs" / "img" / "text_clinc150_shots.png"


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "")
    cpu = cpu or platform.processor() or platform.machine()
    return f"{cpu}, torch {torch.__version__}, {torch.get_num_threads()} thread(s)"


def fewshot(args: argparse.Namespace) -> None:
    options = FewShotTextOptions(
        data_dir=args.data_dir,
        encoder=args.encoder,
        shots=args.shots,
        draws=args.draws,
        seed=args.seed,
        C=args.C,
        finetune=args.finetune,
        finetune_options=FinetuneOptions(steps=args.steps, lr=args.lr, batch_size=args.batch_size),
        out=args.out,
    )
    started = time.time()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    write_json_atomically(Path(args.out) / "options.json", asdict(options))
    result = run_fewshot_text(options, resume=True, progress=not args.quiet)
    result["run"] = {"machine": machine(), "wall_s_this_process": round(time.time() - started, 1)}
    result["run"]["date"] = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    write_json_atomically(Path(args.out) / "eval.json", result)
    for classifier, summary in result["summary"].items():
        print(
            f"{options.shots}-shot {'fine-tuned' if options.finetune else 'frozen'} {classifier}: "
            f"{100 * summary['accuracy_mean']:.2f} ± {100 * summary['accuracy_std']:.2f}  "
            f"OOS F1 {summary['oos_f1_mean']:.3f}"
        )


# --- episodic: fastadapt's trainer on text embeddings ------------------------------------------------


def register_text_datasets() -> None:
    """Let fastadapt.train / fastadapt.evaluate load ``--dataset clinc150`` and build learners on it.

    This is the wiring the lead adds to the registries (see docs/text.md, "What the trainer needs"); until
    then the benchmark points the two modules' names at the text entry points."""
    import fastadapt.evaluate as evaluate_module
    import fastadapt.train as train_module
    from fastadapt.datasets import DATASETS, DatasetInfo
    from fastadapt.text.episodic import TEXT_DATASETS, build_text_learner, embedding_dim_of, text_load_splits

    DATASETS.setdefault("clinc150", DatasetInfo("clinc150", "classification", "CLINC150 intents (text)"))
    original_load, original_build = train_module.load_splits, train_module.build_algorithm
    loaded: dict[tuple, dict] = {}

    def load_splits(config):
        if config.dataset not in TEXT_DATASETS:
            return original_load(config)
        key = (config.dataset, config.data_dir, config.split, config.seed)
        if key not in loaded:
            loaded[key] = text_load_splits(config, progress=False)
        return loaded[key]

    def build_algorithm(config):
        if config.dataset not in TEXT_DATASETS:
            return original_build(config)
        return build_text_learner(config, embedding_dim_of(load_splits(config)))

    for module in (train_module, evaluate_module):
        module.load_splits, module.build_algorithm = load_splits, build_algorithm


def episodic(args: argparse.Namespace) -> None:
    from fastadapt.evaluate import TEST_SEED_OFFSET, evaluate, evaluate_checkpoint, mean_ci95
    from fastadapt.tasks.samplers import EpisodeSampler
    from fastadapt.text.classifiers import SupportLogisticRegression
    from fastadapt.text.episodic import PRESETS, build_head
    from fastadapt.train import VAL_SEED_OFFSET, train

    register_text_datasets()
    import fastadapt.train as train_module
    from fastadapt.algorithms.metric.protonet import ProtoNet

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "episodic.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    for ways, shots in EPISODIC_SHAPES:
        shape = f"{ways}-way {shots}-shot"
        row = results.setdefault(shape, {})
        base = Config(dataset="clinc150", data_dir=args.data_dir, ways=ways, shots=shots, seed=args.seed)
        splits = train_module.load_splits(base)
        test_config = replace(base, eval_query=15)
        test_seed = base.seed + TEST_SEED_OFFSET

        def test_source(config=test_config, split=splits["test"], seed=test_seed):
            return EpisodeSampler(split, config.ways, config.shots, config.eval_query_or_query, seed)

        if "logistic" not in row:  # C chosen on the meta-validation domains
            val = {
                c: mean_ci95(
                    evaluate(
                        SupportLogisticRegression(C=c),
                        EpisodeSampler(splits["val"], ways, shots, 15, base.seed + VAL_SEED_OFFSET),
                        args.val_episodes,
                    )
                )[0]
                for c in LOGISTIC_C
            }
            best_c = max(val, key=val.get)
            started = time.time()
            scores = evaluate(SupportLogisticRegression(C=best_c), test_source(), args.episodes)
            mean, ci = mean_ci95(scores)
            row["logistic"] = {"accuracy_mean": mean, "accuracy_ci95": ci, "C": best_c, "val_by_C": val,
                               "eval_wall_s": round(time.time() - started, 1)}  # fmt: skip
        if "prototypes (no training)" not in row:
            mean, ci = mean_ci95(evaluate(ProtoNet(build_head("identity", 0, None)), test_source(), args.episodes))
            row["prototypes (no training)"] = {"accuracy_mean": mean, "accuracy_ci95": ci}
        write_json_atomically(results_path, results)
        for algorithm in args.algorithms:
            if algorithm in row:
                continue
            run_dir = out / f"{algorithm}_{ways}w{shots}s"
            config = replace(base, algorithm=algorithm, out=str(run_dir), **PRESETS[(algorithm, "clinc150")])
            config = replace(config, ways=ways, shots=shots, eval_query=15)
            if args.steps:
                config = replace(config, steps=args.steps, val_every=min(config.val_every, args.steps))
            started = time.time()
            trained = train(config, resume=True, progress=not args.quiet)
            train_wall = time.time() - started
            evaluation = evaluate_checkpoint(run_dir / "best.pt", episodes=args.episodes, progress=False)
            row[algorithm] = {
                "accuracy_mean": evaluation["accuracy_mean"],
                "accuracy_ci95": evaluation["accuracy_ci95"],
                "best_val": trained.best_val,
                "steps": config.steps,
                "train_wall_s_this_process": round(train_wall, 1),
                "config": {k: getattr(config, k) for k in ("network", "lr", "meta_batch_size", "inner_lr",
                                                           "inner_steps", "eval_inner_steps", "query")},
            }  # fmt: skip
            write_json_atomically(results_path, results)
        print(shape, {k: f"{100 * v['accuracy_mean']:.2f} ± {100 * v['accuracy_ci95']:.2f}" for k, v in row.items()})
    results["_run"] = {"machine": machine(), "date": datetime.now(timezone.utc).strftime("%Y-%m-%d")}
    write_json_atomically(results_path, results)


# --- worker: the units above in order of importance, shared by several bench slots ----------------------


def work_units() -> list[tuple[str, int | None]]:
    """Fine-tuned 150-way draws of both settings interleaved, then the episodic benchmark (after three draws each,
    so that an interrupted session still has a few of every kind), then the remaining draws."""
    interleaved = [(f"fewshot{k}-ft", d) for d in range(5) for k in (5, 10)]
    return interleaved[:6] + [("episodic", None)] + interleaved[6:]


def worker(args: argparse.Namespace) -> None:
    """Run every unfinished unit that no other worker holds (a lock file per unit); one draw of the fine-tuned
    150-way setting is one run with its own seed (draw d: ``--seed d --draws 1``, folder ``fewshotK-ft-dD``)."""
    import fcntl

    runs = Path(args.runs)
    locks = runs / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    for name, draw in work_units():
        unit = name if draw is None else f"{name}-d{draw}"
        handle = open(locks / f"{unit}.lock", "w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue  # another worker runs it
        try:
            if draw is None:
                if (runs / name / "done").is_file():
                    continue
                settings = {"out": str(runs / name), "algorithms": list(META_LEARNERS), "episodes": 600,
                            "val_episodes": 300, "steps": 0, "seed": 0}  # fmt: skip
                episodic(argparse.Namespace(**{**vars(args), **settings}))
                (runs / name / "done").touch()
            else:
                if (runs / unit / "eval.json").is_file():
                    continue
                shots = int(name[len("fewshot") : -len("-ft")])
                fewshot(argparse.Namespace(**{**vars(args), "out": str(runs / unit), "shots": shots, "draws": 1,
                                              "seed": draw, "C": 10.0, "finetune": True, "steps": args.steps,
                                              "lr": args.lr, "batch_size": FinetuneOptions.batch_size,
                                              "encoder": "all-MiniLM-L6-v2"}))  # fmt: skip
        finally:
            handle.close()


# --- report -------------------------------------------------------------------------------------------


def report(args: argparse.Namespace) -> None:
    runs = Path(args.runs)
    record: dict = {"published_150way": PUBLISHED, "fewshot": {}, "episodic": None}
    groups: dict[str, list[Path]] = {}
    for run_dir in sorted(p for p in runs.glob("fewshot*") if p.is_dir()):
        base = run_dir.name.rsplit("-d", 1)[0] if run_dir.name.rsplit("-d", 1)[-1].isdigit() else run_dir.name
        groups.setdefault(base, []).append(run_dir)
    for name, run_dirs in groups.items():
        draws, runs_info, options = [], [], None
        for run_dir in run_dirs:
            for f in sorted(run_dir.glob("draw-*/result.json")):
                draws.append(json.loads(f.read_text()))
            if (run_dir / "options.json").is_file():
                options = json.loads((run_dir / "options.json").read_text())
            if (run_dir / "eval.json").is_file():
                runs_info.append(json.loads((run_dir / "eval.json").read_text()).get("run"))
        if not draws or options is None:
            continue
        draws.sort(key=lambda d: d["seed"])
        record["fewshot"][name] = {
            "shots": options["shots"],
            "finetune": options["finetune"],
            "options": options,
            "draws": len(draws),
            "seeds": [d["seed"] for d in draws],
            "summary": summarise_draws(draws),
            "per_draw_accuracy": {c: [d[c]["accuracy"] for d in draws] for c in ("prototypes", "logistic")},
            "finetune_wall_s": [d["finetune"]["wall_s"] for d in draws if "finetune" in d],
            "embed_and_finetune_wall_s": [d["finetune"]["embed_and_finetune_wall_s"] for d in draws if "finetune" in d],
            "runs": runs_info,
        }
    episodic_path = runs / "episodic" / "episodic.json"
    if episodic_path.is_file():
        record["episodic"] = json.loads(episodic_path.read_text())
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomically(RESULTS, record)
    plot(record)
    print(f"wrote {RESULTS} and {PLOT}")


def plot(record: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    series: dict[str, list[tuple[int, float, float]]] = {}
    for entry in record["fewshot"].values():
        for classifier, summary in entry["summary"].items():
            label = f"MiniLM {'fine-tuned (episodic ProtoNet)' if entry['finetune'] else 'frozen'} + {classifier}"
            series.setdefault(label, []).append(
                (entry["shots"], 100 * summary["accuracy_mean"], 100 * summary["accuracy_std"])
            )
    for label, points in sorted(series.items()):
        points.sort()
        ax.errorbar([p[0] for p in points], [p[1] for p in points], yerr=[p[2] for p in points], marker="o",
                    capsize=3, label=label)  # fmt: skip
    for method, style in (("USE", ":"), ("CPFT", "--")):
        shots = sorted(record["published_150way"])
        ax.plot(shots, [record["published_150way"][s][method] for s in shots], style, color="grey",
                label=f"{method} (published)")  # fmt: skip
    ax.set(xlabel="examples per intent (K)", ylabel="150-way test accuracy (%)", xticks=[5, 10],
           title="CLINC150 150-way K-shot intent detection (5 draws)")  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    tmp = PLOT.with_name(f".{PLOT.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(PLOT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    few = commands.add_parser("fewshot", help="150-way K-shot intent detection")
    few.add_argument("--shots", type=int, default=5)
    few.add_argument("--draws", type=int, default=5)
    few.add_argument("--C", type=float, default=10.0)
    few.add_argument("--finetune", action="store_true")
    few.add_argument("--steps", type=int, default=FinetuneOptions.steps)
    few.add_argument("--lr", type=float, default=FinetuneOptions.lr)
    few.add_argument("--batch-size", type=int, default=FinetuneOptions.batch_size)
    few.add_argument("--encoder", default="all-MiniLM-L6-v2")
    few.add_argument("--seed", type=int, default=0, help="draw d uses seed + d")
    work = commands.add_parser("worker", help="run the unfinished fine-tuning draws and the episodic benchmark")
    work.add_argument("--runs", default="runs/text")
    work.add_argument("--steps", type=int, default=FinetuneOptions.steps)
    work.add_argument("--lr", type=float, default=FinetuneOptions.lr)
    work.add_argument("--data-dir", default=None)
    work.add_argument("--quiet", action="store_true")
    epi = commands.add_parser("episodic", help="N-way K-shot episodes on the meta-test domains")
    epi.add_argument("--algorithms", nargs="*", default=list(META_LEARNERS))
    epi.add_argument("--episodes", type=int, default=600)
    epi.add_argument("--val-episodes", type=int, default=300)
    epi.add_argument("--steps", type=int, default=0, help="override every preset's number of steps")
    epi.add_argument("--seed", type=int, default=0)
    rep = commands.add_parser("report", help="collect results and plot")
    rep.add_argument("--runs", default="runs/text")
    for sub in (few, epi):
        sub.add_argument("--out", required=True)
        sub.add_argument("--data-dir", default=None)

        sub.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    {"fewshot": fewshot, "episodic": episodic, "report": report, "worker": worker}[args.command](args)


if __name__ == "__main__":
    main()
