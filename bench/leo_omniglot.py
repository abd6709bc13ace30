"""LEO on Omniglot (Vinyals split unless --split), end to end through the CLI, with the paper's ablation.

    nice -n 5 python bench/leo_omniglot.py [--work runs/leo] [--steps 3000] [--pretrain-epochs 4] [--split maml]

1. ``fastadapt pretrain`` (Conv-4, plain classification of the 4112 training classes) and ``fastadapt embed``;
   both are skipped when their outputs are already in ``--work`` (their wall times are then read back
   from the files they wrote).
2. ``fastadapt train --algorithm leo --dataset embeddings`` at 5-way 1-shot and 5-way 5-shot; each run
   meta-tests its best checkpoint on 600 test episodes (mean and 95% CI).
3. The ablation on the same embeddings and the same 600 test episodes: full LEO, no latent inner loop
   (``--inner-steps 0``), no fine-tuning (``--leo-finetuning-steps 0``), and a multinomial logistic
   regression trained on each test task's support embeddings (its weight decay picked on validation tasks).
4. ``docs/leo_latent_codes.png``: a PCA projection of the class codes before (z) and after (z') the latent
   inner loop, for a few test tasks of the 1-shot model.

Raw results: ``bench/results/leo_omniglot.json``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from common import RESULTS, ROOT, machine, save_figure, write_json

from fastadapt.config import make_config
from fastadapt.datasets import load_splits, task_source
from fastadapt.evaluate import TEST_SEED_OFFSET, load_learner, mean_ci95
from fastadapt.train import VAL_SEED_OFFSET

PNG = ROOT / "docs" / "leo_latent_codes.png"


def run(command: list[str]) -> float:
    """Run a CLI command, return its wall time in seconds."""
    print("$", shlex.join(command), flush=True)
    started = time.time()
    subprocess.run(command, check=True)
    return round(time.time() - started, 1)


def last_elapsed(metrics: Path) -> float:
    return max(json.loads(line).get("elapsed_s", 0) for line in metrics.read_text().splitlines() if line)


def leo_run(work: Path, emb: Path, name: str, shots: int, steps: int, extra: list[str]) -> dict:
    out = work / name
    command = ["fastadapt", "train", "--algorithm", "leo", "--dataset", "embeddings", "--data-dir", str(emb)]
    command += ["--ways", "5", "--shots", str(shots), "--steps", str(steps), "--val-every", str(max(1, steps // 5))]
    command += ["--out", str(out), "--quiet", *extra]
    if not (out / "eval.json").is_file():
        wall = run(command)
    else:
        wall = None
    result = json.loads((out / "eval.json").read_text())
    return {
        "command": shlex.join(command),
        "wall_s": wall,
        "train_wall_s": last_elapsed(out / "metrics.jsonl"),
        "accuracy_mean": result["accuracy_mean"],
        "accuracy_ci95": result["accuracy_ci95"],
        "episodes": result["episodes"],
        "checkpoint": str(out / "best.pt"),
    }


def fit_logistic_regression(support_x, support_y, ways: int, weight_decay: float, steps: int = 100) -> tuple:
    """Multinomial logistic regression (weights + bias) per task, all tasks at once, full-batch L-BFGS-like
    Adam; features standardised with the support statistics of each task."""
    tasks, _, dim = support_x.shape
    weight = torch.zeros(tasks, ways, dim, requires_grad=True)
    bias = torch.zeros(tasks, ways, requires_grad=True)
    optimizer = torch.optim.Adam([weight, bias], lr=0.1)
    for _ in range(steps):
        logits = torch.einsum("ted,tnd->ten", support_x, weight) + bias.unsqueeze(1)
        loss = F.cross_entropy(logits.flatten(0, 1), support_y.flatten(), reduction="sum") / tasks
        loss = loss + weight_decay * weight.square().sum() / tasks
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return weight.detach(), bias.detach()


def logistic_regression_scores(source, episodes: int, weight_decay: float) -> np.ndarray:
    scores = []
    remaining = episodes
    while remaining > 0:
        batch = source.sample(min(50, remaining))
        mean = batch.support_x.mean(1, keepdim=True)
        scale = batch.support_x.std(1, keepdim=True).clamp_min(1e-3) if batch.support_x.shape[1] > 1 else 1.0
        weight, bias = fit_logistic_regression(
            (batch.support_x - mean) / scale, batch.support_y, batch.ways, weight_decay
        )
        logits = torch.einsum("ted,tnd->ten", (batch.query_x - mean) / scale, weight) + bias.unsqueeze(1)
        scores.append((logits.argmax(-1) == batch.query_y).float().mean(1).numpy())
        remaining -= batch.num_tasks
    return np.concatenate(scores)


def logistic_regression_baseline(emb: Path, shots: int) -> dict:
    """Same test episodes as `fastadapt eval` of a LEO run with default seed; weight decay chosen on val."""
    config = make_config("leo", "embeddings", data_dir=str(emb), ways=5, shots=shots)
    splits = load_splits(config)
    started = time.time()
    grid = (0.0, 1e-3, 1e-2, 1e-1, 1.0)
    val = {}
    for wd in grid:
        source = task_source(config, splits, "val", config.seed + VAL_SEED_OFFSET)
        val[wd] = float(logistic_regression_scores(source, 300, wd).mean())
    best = max(grid, key=lambda wd: val[wd])
    test_source = task_source(config, splits, "test", config.seed + TEST_SEED_OFFSET)
    mean, ci = mean_ci95(logistic_regression_scores(test_source, 600, best))
    return {
        "accuracy_mean": mean,
        "accuracy_ci95": ci,
        "episodes": 600,
        "weight_decay": best,
        "val_accuracy_by_weight_decay": {str(k): v for k, v in val.items()},
        "wall_s": round(time.time() - started, 1),
    }


def nearest_centroid_baseline(emb: Path, shots: int) -> dict:
    """Nearest class mean in Euclidean distance on the same test episodes (no training at all)."""
    config = make_config("leo", "embeddings", data_dir=str(emb), ways=5, shots=shots)
    source = task_source(config, load_splits(config), "test", config.seed + TEST_SEED_OFFSET)
    scores = []
    for _ in range(12):
        batch = source.sample(50)
        centroids = batch.support_x.view(50, 5, shots, -1).mean(2)
        predicted = torch.cdist(batch.query_x, centroids).argmin(-1)
        scores.append((predicted == batch.query_y).float().mean(1).numpy())
    mean, ci = mean_ci95(np.concatenate(scores))
    return {"accuracy_mean": mean, "accuracy_ci95": ci, "episodes": 600}


def plot_latent_codes(checkpoint: Path, png: Path, tasks: int = 4) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    learner, config = load_learner(checkpoint)
    splits = load_splits(config)
    batch = task_source(config, splits, "test", config.seed + TEST_SEED_OFFSET).sample(tasks)
    learner.eval()
    z, z_adapted = learner.latent_codes(batch)  # (tasks, ways, L)
    with torch.no_grad():
        accuracy = (learner.predict(batch).argmax(-1) == batch.query_y).float().mean(1)
    fig, axes = plt.subplots(1, tasks, figsize=(4 * tasks, 4))
    colours = plt.get_cmap("tab10")
    for t, ax in enumerate(np.atleast_1d(axes)):
        codes = torch.cat([z[t], z_adapted[t]]).numpy()
        centred = codes - codes.mean(0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)  # PCA of this task's 2N codes
        xy = centred @ vt[:2].T
        ways = z.shape[1]
        for n in range(ways):
            before, after = xy[n], xy[ways + n]
            ax.scatter(*before, marker="o", facecolors="none", edgecolors=colours(n), s=70)
            ax.scatter(*after, marker="*", color=colours(n), s=120)
            ax.annotate("", xy=after, xytext=before, arrowprops=dict(arrowstyle="->", color=colours(n), lw=1))
        ax.set_title(f"test task {t + 1} (query acc. {100 * accuracy[t]:.0f}%)", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(
        "LEO class codes, 5-way 1-shot Omniglot: encoder output z (o) -> after the latent inner loop z' (*), "
        "one colour per class; PCA of each task's codes",
        fontsize=10,
    )
    fig.tight_layout()
    save_figure(fig, png)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="runs/leo_omniglot", help="folder for checkpoints and embeddings")
    parser.add_argument("--pretrain-epochs", type=int, default=4)
    parser.add_argument("--split", default="vinyals", help="Omniglot split of pre-training, embeddings and LEO")
    parser.add_argument(
        "--name",
        default="leo_omniglot",
        help="record bench/results/NAME.json (and, unless the default, the figure docs/NAME_latent_codes.png)",
    )
    parser.add_argument("--steps", type=int, default=3000, help="LEO meta-training steps per run")
    parser.add_argument("--shots", default="1,5", help="shots of the full LEO runs")
    parser.add_argument("--ablation-shots", default="1,5", help="shots at which to run the ablation")
    parser.add_argument("--lr", type=float, help="outer learning rate of every LEO run (default: the preset's)")
    parser.add_argument("--head", default="linear", help="pre-training classifier: linear or cosine")
    parser.add_argument("--augment", action="store_true", help="pre-train on randomly rotated/scaled/shifted images")
    parser.add_argument("--network", default="conv4", help="pre-trained backbone: conv4, conv4-N (N filters)")
    parser.add_argument("--leo-args", default="", help="more `fastadapt train` options for every LEO run")
    args = parser.parse_args()
    work = Path(args.work)
    record_path = RESULTS / f"{args.name}.json"
    png = PNG if args.name == "leo_omniglot" else ROOT / "docs" / f"{args.name}_latent_codes.png"
    started = time.time()
    record: dict = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
    }

    pre, emb = work / "pretrain", work / "embeddings"
    pretrain_cmd = ["fastadapt", "pretrain", "--dataset", "omniglot", "--split", args.split]
    pretrain_cmd += ["--epochs", str(args.pretrain_epochs), "--head", args.head, "--network", args.network]
    pretrain_cmd += ["--augment"] if args.augment else []
    pretrain_cmd += ["--out", str(pre), "--quiet"]
    if not (pre / "pretrain.pt").is_file():
        run(pretrain_cmd)
    pretrain_epochs = [json.loads(line) for line in (pre / "pretrain_metrics.jsonl").read_text().splitlines()]
    record["pretrain"] = {"command": shlex.join(pretrain_cmd), "wall_s": last_elapsed(pre / "pretrain_metrics.jsonl"),
                          "epochs": pretrain_epochs}  # fmt: skip
    embed_cmd = ["fastadapt", "embed", "--checkpoint", str(pre / "pretrain.pt"), "--out", str(emb), "--quiet"]
    record["embed"] = {"command": shlex.join(embed_cmd)}
    if not (emb / "meta.json").is_file():
        record["embed"]["wall_s"] = run(embed_cmd)
    record["embed"]["meta"] = json.loads((emb / "meta.json").read_text())

    record["leo"], record["ablation"] = {}, {}
    lr = (["--lr", str(args.lr)] if args.lr else []) + shlex.split(args.leo_args)
    for shots in (int(s) for s in args.shots.split(",") if s):
        full = leo_run(work, emb, f"leo_5w{shots}s", shots, args.steps, lr)
        record["leo"][f"5w{shots}s"] = full
        write_json(record_path, record)
    for shots in (int(s) for s in args.ablation_shots.split(",") if s):
        key = f"5w{shots}s"
        record["ablation"][key] = {
            "full LEO": leo_run(work, emb, f"leo_5w{shots}s", shots, args.steps, lr),
            "no latent inner loop": leo_run(
                work, emb, f"leo_5w{shots}s_no_latent", shots, args.steps, ["--inner-steps", "0", *lr]
            ),
            "no fine-tuning": leo_run(
                work, emb, f"leo_5w{shots}s_no_finetuning", shots, args.steps, ["--leo-finetuning-steps", "0", *lr]
            ),
            "logistic regression on support embeddings": logistic_regression_baseline(emb, shots),
            "nearest class mean (no training, for reference)": nearest_centroid_baseline(emb, shots),
        }
        write_json(record_path, record)
    plot_latent_codes(Path(record["leo"]["5w1s"]["checkpoint"]), png)
    record["png"] = str(png.relative_to(ROOT))
    record["bench_wall_s"] = round(time.time() - started, 1)
    write_json(record_path, record)
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
