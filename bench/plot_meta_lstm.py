"""Meta-LSTM's Omniglot 5-way 1-shot validation accuracy over its two training stages:
docs/meta_lstm_omniglot_curve.png.

Stage 1 (runs/bench/meta_lstm_5w1s): the preset, Adam at a constant 1e-3, 13000 episodes (resumed with
``--resume``). Stage 2 (runs/bench/meta_lstm_5w1s_stage2): ``--init-from`` stage 1's last.pt, Adam from 3e-4
annealed to 0 by a cosine over 4000 episodes. The test accuracy of each stage's best-validation checkpoint
is marked when its record exists.

    python bench/plot_meta_lstm.py
"""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from common import ROOT, save_figure, validation_curve  # noqa: E402

STAGES = [
    ("stage 1: Adam 1e-3 constant", ROOT / "runs/bench/meta_lstm_5w1s", 0),
    ("stage 2: --init-from stage 1, Adam 3e-4 cosine to 0", ROOT / "runs/bench/meta_lstm_5w1s_stage2", 13000),
]
#: Test evaluations (600 episodes) of each stage's best checkpoint at 5-way 1-shot: (record, episode).
TESTS = [
    ("meta_lstm_5w1s/eval_5w1s_step12000/eval.json", 12000),
    ("meta_lstm_5w1s_stage2/eval.json", 17000),
]


def main() -> None:
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for i, (label, run, offset) in enumerate(STAGES):
        curve = validation_curve(run / "metrics.jsonl")
        episodes = [offset + s for s in curve["step"]]
        ax.plot(episodes, curve["accuracy"], marker="o", ms=3, color=f"C{i}", label=f"{label} (validation)")
    for path, episode in TESTS:
        full = ROOT / "runs/bench" / path
        if full.exists():
            result = json.loads(full.read_text())
            acc, ci = 100 * result["accuracy_mean"], 100 * result["accuracy_ci95"]
            ax.errorbar([episode], [acc], yerr=[ci], fmt="s", color="black", capsize=3)
            ax.annotate(f"test {acc:.2f}", (episode, acc), textcoords="offset points", xytext=(-60, -4), fontsize=8)
    ax.axhline(95, color="gray", ls=":", label="target: 95% at test")
    ax.set_xlabel("training episodes")
    ax.set_ylabel("5-way 1-shot accuracy (%)")
    ax.set_ylim(85, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("Meta-LSTM on Omniglot (200 validation / 600 test episodes, one CPU core)", fontsize=10)
    fig.tight_layout()
    target = ROOT / "docs" / "meta_lstm_omniglot_curve.png"
    save_figure(fig, target)
    print(f"wrote {target.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
