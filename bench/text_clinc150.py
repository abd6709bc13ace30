"""Few-shot text classification on CLINC150 (docs/text.md): both settings through fastadapt's command line.

    # 150-way K-shot intent detection, 5 draws each: frozen MiniLM, then MiniLM fine-tuned on each draw
    fastadapt fewshot-text --shots 5 --out runs/text/fewshot5
    fastadapt fewshot-text --shots 5 --finetune --resume --out runs/text/fewshot5-ft
    fastadapt fewshot-text --shots 10 --out runs/text/fewshot10
    fastadapt fewshot-text --shots 10 --finetune --resume --out runs/text/fewshot10-ft
    # episodic N-way K-shot across intents (5/10-way, 1/5-shot): `fastadapt train --dataset clinc150` for ProtoNet,
    # MAML, LEO, the per-episode logistic regression (C chosen on the meta-validation domains) and plain prototypes
    python bench/text_clinc150.py episodic --runs runs/text/episodic
    # each method minus the logistic regression, episode by episode (paired 95% CI)
    python bench/text_clinc150.py paired --runs runs/text/episodic
    # collect into bench/results/text_clinc150.json and docs/img/text_clinc150_shots.png
    python bench/text_clinc150.py report --runs runs/text

Every command can be interrupted and run again with the same arguments: finished runs are kept, and training and
fine-tuning continue from their last checkpoints (--resume). Set FASTADAPT_DATA (or --data-dir) to the data root
holding clinc150/data_full.json, and HF_HUB_OFFLINE=1.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from fastadapt import atomic
from fastadapt.cli import main as fastadapt
from fastadapt.text.intent import PUBLISHED, summarise_draws

SHAPES = ((5, 1), (5, 5), (10, 1), (10, 5))
META_LEARNERS = ("protonet", "maml", "matching", "leo")
#: The logistic regression's C, chosen per shape on the meta-validation domains (as the bench always has).
LOGISTIC_C = (0.1, 1.0, 10.0, 100.0)
RESULTS = Path(__file__).resolve().parent / "results" / "text_clinc150.json"
PLOT = Path(__file__).resolve().parents[1] / "docs" / "img" / "text_clinc150_shots.png"


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "")
    cpu = cpu or platform.processor() or platform.machine()
    return f"{cpu}, torch {torch.__version__}, {torch.get_num_threads()} thread(s)"


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _train(run: Path, args: argparse.Namespace, flags: list[str], record: dict) -> dict:
    """``fastadapt train ... --out run --resume`` unless ``run/eval.json`` exists; its results and wall times."""
    if not (run / "eval.json").is_file():
        started = time.time()
        command = ["train", "--dataset", "clinc150", *flags, "--out", str(run), "--resume", "--quiet"]
        if args.data_dir:
            command += ["--data-dir", args.data_dir]
        code = fastadapt(command)
        if code != 0:
            raise SystemExit(f"fastadapt {' '.join(command)} failed ({code})")
        atomic.write_json(run / "bench_wall.json", {"wall_s": round(time.time() - started, 1), "date": _today()})
    evaluation = _read(run / "eval.json")
    state = torch.load(run / "best.pt", map_location="cpu", weights_only=True)
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    wall = _read(run / "bench_wall.json") or {}
    return {
        **record,
        "command": "fastadapt train --dataset clinc150 " + " ".join(flags),
        "accuracy_mean": evaluation["accuracy_mean"],
        "accuracy_ci95": evaluation["accuracy_ci95"],
        "episodes": evaluation["episodes"],
        "best_val": state["best_val"],
        "best_step": state["step"],
        "steps": state["config"]["steps"],
        "train_s": max((m.get("elapsed_s", 0.0) for m in metrics), default=None),
        "train_and_test_wall_s": wall.get("wall_s"),
        "date": wall.get("date"),
        "config": {k: state["config"].get(k) for k in ("network", "lr", "meta_batch_size", "inner_lr", "inner_steps",
                                                       "eval_inner_steps", "query", "logistic_c")},
    }  # fmt: skip


def _today() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d")


def episodic(args: argparse.Namespace) -> None:
    """The episodic benchmark, cheapest first: per shape the logistic regression for each C and plain prototypes,
    then the meta-learners with their clinc150 presets. Results go to <runs>/episodic.json as they come."""
    runs = Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    results_path = runs / "episodic.json"
    results = _read(results_path) or {}
    for ways, shots in SHAPES:
        shape = f"{ways}-way {shots}-shot"
        row = results.setdefault(shape, {})
        common = ["--ways", str(ways), "--shots", str(shots), "--seed", str(args.seed)]
        sweep = {}
        for c in LOGISTIC_C:
            flags = ["--algorithm", "logistic", *common, "--logistic-c", str(c)]
            sweep[c] = _train(runs / f"logistic-c{c:g}_{ways}w{shots}s", args, flags, {"C": c})
        best = max(sweep.values(), key=lambda r: r["best_val"])  # chosen on the meta-validation episodes only
        row["logistic"] = {**best, "val_by_C": {str(c): r["best_val"] for c, r in sweep.items()}}
        flags = ["--algorithm", "protonet", *common, "--network", "identity", "--steps", "1", "--val-every", "1"]
        row["prototypes (no training)"] = _train(runs / f"prototypes_{ways}w{shots}s", args, flags, {})
        atomic.write_json(results_path, results)
    for ways, shots in SHAPES:
        shape = f"{ways}-way {shots}-shot"
        common = ["--ways", str(ways), "--shots", str(shots), "--seed", str(args.seed)]
        for algorithm in args.algorithms:
            flags = ["--algorithm", algorithm, *common]
            results[shape][algorithm] = _train(runs / f"{algorithm}_{ways}w{shots}s", args, flags, {})
            results["_run"] = {"machine": machine(), "date": _today()}
            atomic.write_json(results_path, results)
            row = results[shape]
            print(shape, {k: round(100 * v["accuracy_mean"], 2) for k, v in row.items()})


def paired(args: argparse.Namespace) -> None:
    """Each method minus the logistic regression, episode by episode: every run's best checkpoint scored again on
    the same 600 meta-test episodes (the same seed and shape give the same episodes; each mean is checked against the
    run's eval.json), then the mean difference and its 95% CI. Writes <runs>/paired.json."""
    from fastadapt.datasets import load_splits, task_source
    from fastadapt.evaluate import TEST_SEED_OFFSET, evaluate, load_learner, mean_ci95

    runs = Path(args.runs)
    results = _read(runs / "episodic.json") or {}
    paired_results = {}
    for ways, shots in SHAPES:
        shape = f"{ways}-way {shots}-shot"
        if "logistic" not in results.get(shape, {}):
            continue
        folders = {
            "logistic": f"logistic-c{results[shape]['logistic']['C']:g}",
            "prototypes (no training)": "prototypes",
        }
        folders.update({name: name for name in results[shape] if name not in folders})
        scores = {}
        for name, folder in folders.items():
            run = runs / f"{folder}_{ways}w{shots}s"
            learner, config = load_learner(run / "best.pt", data_dir=args.data_dir)
            source = task_source(config, load_splits(config), "test", seed=config.seed + TEST_SEED_OFFSET)
            scores[name] = evaluate(learner, source, config.test_episodes)
            recorded = _read(run / "eval.json")["accuracy_mean"]
            if abs(float(scores[name].mean()) - recorded) > 1e-6:
                raise SystemExit(f"{run}: {scores[name].mean():.6f} is not eval.json's {recorded:.6f}")
        paired_results[shape] = {}
        for name, values in scores.items():
            if name != "logistic":
                mean, ci = mean_ci95(values - scores["logistic"])
                paired_results[shape][name] = {"minus_logistic_mean": mean, "minus_logistic_ci95": ci}
        print(shape, {k: f"{100 * v['minus_logistic_mean']:+.2f} ± {100 * v['minus_logistic_ci95']:.2f}"
                      for k, v in paired_results[shape].items()})  # fmt: skip
        atomic.write_json(runs / "paired.json", paired_results)


def report(args: argparse.Namespace) -> None:
    runs = Path(args.runs)
    episodic_results = _read(runs / "episodic" / "episodic.json")
    record: dict = {"published_150way": PUBLISHED, "fewshot": {}, "episodic": episodic_results}
    record["episodic_paired"] = _read(runs / "episodic" / "paired.json")
    for name in ("fewshot5", "fewshot10", "fewshot5-ft", "fewshot10-ft"):
        options = _read(runs / name / "options.json")
        draws = [json.loads(f.read_text()) for f in sorted((runs / name).glob("draw-*/result.json"))]
        if not draws or options is None:
            continue
        draws.sort(key=lambda d: d["seed"])
        record["fewshot"][name] = {
            "command": f"fastadapt fewshot-text --shots {options['shots']}"
            + (" --finetune" if options["finetune"] else "")
            + f" --out runs/text/{name}",
            "shots": options["shots"],
            "finetune": options["finetune"],
            "options": options,
            "draws": len(draws),
            "seeds": [d["seed"] for d in draws],
            "summary": summarise_draws(draws),
            "per_draw_accuracy": {c: [d[c]["accuracy"] for d in draws] for c in ("prototypes", "logistic")},
            "finetune_wall_s": [d["finetune"]["wall_s"] for d in draws if "finetune" in d],
            "embed_and_finetune_wall_s": [d["finetune"]["embed_and_finetune_wall_s"] for d in draws if "finetune" in d],
            "draw_wall_s": [d.get("wall_s") for d in draws],
            "dates": sorted({d["date"] for d in draws if "date" in d}),
        }
    record["machine"] = machine()
    atomic.write_json(RESULTS, record)
    plot(record)
    print(f"wrote {RESULTS} and {PLOT}")


def plot(record: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    series: dict[str, list[tuple[int, float, float, int]]] = {}
    for entry in record["fewshot"].values():
        for classifier, summary in entry["summary"].items():
            label = f"MiniLM {'fine-tuned (episodic ProtoNet)' if entry['finetune'] else 'frozen'} + {classifier}"
            series.setdefault(label, []).append(
                (entry["shots"], 100 * summary["accuracy_mean"], 100 * summary["accuracy_std"], entry["draws"])
            )
    for label, points in sorted(series.items()):
        points.sort()
        label += " (draws: " + ", ".join(f"{p[3]} at {p[0]}-shot" for p in points) + ")"
        ax.errorbar([p[0] for p in points], [p[1] for p in points], yerr=[p[2] for p in points], marker="o",
                    capsize=3, label=label)  # fmt: skip
    for method, style in (("USE", ":"), ("CPFT", "--")):
        shots = sorted(record["published_150way"])
        ax.plot(shots, [record["published_150way"][s][method] for s in shots], style, color="grey",
                label=f"{method} (published)")  # fmt: skip
    ax.set(xlabel="examples per intent (K)", ylabel="150-way test accuracy (%)", xticks=[5, 10],
           title="CLINC150 150-way K-shot intent detection (mean ± std over draws)")  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic.write_with(PLOT, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    epi = commands.add_parser("episodic", help="N-way K-shot episodes on the meta-test domains, every method")
    epi.add_argument("--runs", default="runs/text/episodic")
    epi.add_argument("--algorithms", nargs="*", default=list(META_LEARNERS))
    epi.add_argument("--seed", type=int, default=0)
    epi.add_argument("--data-dir", default=None)
    pair = commands.add_parser("paired", help="each method minus the logistic regression on the same episodes")
    pair.add_argument("--runs", default="runs/text/episodic")
    pair.add_argument("--data-dir", default=None)
    rep = commands.add_parser("report", help="collect results and plot")
    rep.add_argument("--runs", default="runs/text")
    args = parser.parse_args()
    {"episodic": episodic, "paired": paired, "report": report}[args.command](args)


if __name__ == "__main__":
    main()
