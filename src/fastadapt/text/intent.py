"""The standard few-shot intent detection setting on CLINC150: 150-way K-shot, with out-of-scope detection.

Protocol (as in Casanueva et al. 2020, "Efficient Intent Detection with Dual Sentence Encoders", and the
papers that report on it: DNNC, Zhang et al. 2020; CPFT, Zhang et al. 2021): K utterances per intent are
drawn from CLINC150's training set; the classifier is evaluated on the full in-scope test set (4500
utterances, 30 per intent); the draw is repeated (5 draws by default) and accuracy reported as mean and
standard deviation over draws. Published 150-way accuracies (5-shot / 10-shot): USE 87.82 / 90.85,
ConveRT 89.22 / 92.62, USE+ConveRT 90.49 / 93.26 (Casanueva et al. 2020), DNNC 91.02 / 93.76, CPFT
92.34 / 94.18 (Zhang et al. 2021).

Classifiers on the sentence embeddings, each fitted on the K-shot set only:

- ``prototypes``: cosine similarity to each intent's mean embedding (confidence: the best similarity);
- ``logistic``: multinomial logistic regression on L2-normalised embeddings (confidence: the best
  class probability), :func:`fastadapt.text.classifiers.fit_logistic_regression`.

The encoder is either frozen, or first fine-tuned on the K-shot set by episodic ProtoNet training
(:mod:`fastadapt.text.finetune`, ``finetune=True``): meta-learning makes the encoder better at few-shot
classification using the few labelled utterances and nothing else.

Out-of-scope detection: a query whose confidence is below a threshold is declared out of scope. The
threshold maximises the out-of-scope F1 on the validation set (CLINC150's in-scope ``val`` plus
``oos_val``); in-scope accuracy, OOS recall, precision and F1 are reported on the test set (``test``
plus ``oos_test``). The encoder never sees a validation or test utterance in training.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastadapt import atomic
from fastadapt.datasets.paths import resolve_data_dir
from fastadapt.datasets.text import Clinc150, check_examples_per_label, load_clinc150
from fastadapt.errors import ConfigError, DataError
from fastadapt.options import option
from fastadapt.text.classifiers import (
    choose_threshold,
    cosine_prototype_scores,
    fit_logistic_regression,
    logistic_regression_logits,
    oos_metrics,
)
from fastadapt.text.encoder import DEFAULT_ENCODER, cached_embeddings, encode, load_encoder
from fastadapt.text.finetune import FLAG_PREFIX as FINETUNE_FLAG_PREFIX
from fastadapt.text.finetune import FinetuneOptions, SentenceEmbedder, finetune_encoder

CLASSIFIERS = ("prototypes", "logistic")
#: Parts of CLINC150 that are embedded and scored: validation (threshold) and test, in and out of scope.
EVAL_PARTS = ("val", "oos_val", "test", "oos_test")
OOS_METRICS = ("in_scope_accuracy", "oos_recall", "oos_precision", "oos_f1")
#: Published 150-way accuracies on CLINC150 (percent), {shots: {method: accuracy}}.
PUBLISHED = {
    5: {"USE": 87.82, "ConveRT": 89.22, "USE+ConveRT": 90.49, "DNNC": 91.02, "CPFT": 92.34},
    10: {"USE": 90.85, "ConveRT": 92.62, "USE+ConveRT": 93.26, "DNNC": 93.76, "CPFT": 94.18},
}


@dataclass
class FewShotTextOptions:
    """``fastadapt fewshot-text``: 150-way K-shot intent detection on CLINC150 (module docstring). The fine-tuning's
    own settings are :class:`~fastadapt.text.finetune.FinetuneOptions` (``--finetune-steps``, ...)."""

    data_dir: str | None = option(
        None, "folder holding clinc150/data_full.json (default: $FASTADAPT_DATA, else shared/data)", run_only=True
    )
    encoder: str = option(DEFAULT_ENCODER, "sentence-transformers model: all-MiniLM-L6-v2, a local folder or a name")
    shots: int = option(5, "K, training utterances per intent")
    draws: int = option(5, "random draws of the K-shot set (mean and spread over them)", run_only=True)
    seed: int = option(0, "draw d draws its K utterances per intent with seed + d")
    C: float = option(10.0, "inverse L2 strength of the logistic regression", flag="--C")
    finetune: bool = option(False, "fine-tune the encoder on each draw's K-shot set (episodic ProtoNet) first")
    finetune_options: FinetuneOptions = field(default_factory=FinetuneOptions)
    device: str = option("cpu", "cpu, cuda or cuda:N", run_only=True)
    out: str = option("runs/fewshot-text", "output folder (eval.json, options.json, draw-N/)", run_only=True)

    def validate(self) -> None:
        if not (self.shots >= 1 and self.draws >= 1):
            raise ConfigError(f"--shots and --draws must be at least 1 (got {self.shots} and {self.draws}).")
        if not self.seed >= 0:
            raise ConfigError(f"--seed must be >= 0 (got {self.seed}).")
        if not self.C > 0:
            raise ConfigError(f"--C must be positive (got {self.C}).")
        if self.finetune and self.shots < 2:
            raise ConfigError("--finetune needs --shots of at least 2 (leave-one-out episodes); drop --finetune.")
        self.finetune_options.validate()

    def what_is_computed(self) -> dict[str, Any]:
        """The settings a resumed run must share with the one it continues (not where, how fast or how many draws)."""
        settings = {f.name: getattr(self, f.name) for f in fields(self) if not f.metadata.get("run_only")}
        tuned = self.finetune_options
        settings["finetune_options"] = {
            f.name: getattr(tuned, f.name) for f in fields(tuned) if not f.metadata.get("run_only")
        }
        return settings


def kshot_rows(labels: list[str], intents: list[str], shots: int, seed: int) -> np.ndarray:
    """(intents, shots) rows of ``labels``: ``shots`` distinct rows of each intent, drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    labels_array = np.asarray(labels)
    return np.stack([rng.choice(np.flatnonzero(labels_array == i), shots, replace=False) for i in intents])


def _tensor(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).unsqueeze(0)


def classify(
    classifier: str, support: np.ndarray, support_y: np.ndarray, ways: int, queries: np.ndarray, C: float
) -> tuple[np.ndarray, np.ndarray]:
    """Predicted classes and confidences of ``queries`` (m, D) by ``classifier`` fitted on ``support``."""
    s, y, q = _tensor(support), torch.from_numpy(support_y).long().unsqueeze(0), _tensor(queries)
    if classifier == "prototypes":
        scores = cosine_prototype_scores(s, y, ways, q)[0]
        confidence = scores.max(-1).values
    elif classifier == "logistic":
        unit = torch.nn.functional.normalize
        weights, biases = fit_logistic_regression(unit(s, dim=-1), y, ways, C=C, max_iter=200)
        scores = logistic_regression_logits(unit(q, dim=-1), weights, biases)[0].softmax(-1)
        confidence = scores.max(-1).values
    else:
        raise ConfigError(f"unknown classifier {classifier!r}; choose one of {', '.join(CLASSIFIERS)}.")
    return scores.argmax(-1).numpy(), confidence.numpy()


def evaluate_embeddings(
    embed: dict[str, np.ndarray], support_y: np.ndarray, ways: int, labels: dict[str, np.ndarray], C: float
) -> dict[str, Any]:
    """Accuracy and out-of-scope results of every classifier from embeddings of the K-shot set
    (``embed["support"]``) and of ``val``, ``oos_val``, ``test``, ``oos_test``; ``labels`` holds the
    intent indices of ``val`` and ``test``."""
    results = {}
    for classifier in CLASSIFIERS:
        predicted, confidence = {}, {}
        for part in EVAL_PARTS:
            predicted[part], confidence[part] = classify(classifier, embed["support"], support_y, ways, embed[part], C)
        threshold = choose_threshold(confidence["val"], confidence["oos_val"])
        oos = oos_metrics(predicted["test"], labels["test"], confidence["test"], confidence["oos_test"], threshold)
        results[classifier] = {
            "accuracy": float((predicted["test"] == labels["test"]).mean()),
            "val_accuracy": float((predicted["val"] == labels["val"]).mean()),
            "oos": oos.as_dict(),
        }
    return results


def _spread(values: list[float]) -> float:
    """Sample standard deviation over draws (0 for one draw)."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def summarise_draws(draws: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and standard deviation over draws of every classifier's accuracy and out-of-scope results."""
    out = {}
    for classifier in CLASSIFIERS:
        values = {"accuracy": [d[classifier]["accuracy"] for d in draws]}
        values.update({k: [d[classifier]["oos"][k] for d in draws] for k in OOS_METRICS})
        out[classifier] = {f"{name}_{stat}": f(v) for name, v in values.items() for stat, f in SUMMARIES}
    return out


SUMMARIES = (("mean", lambda v: float(np.mean(v))), ("std", _spread))


def run_fewshot_text(
    options: FewShotTextOptions, resume: bool = False, progress: bool = True, embedder: torch.nn.Module | None = None
) -> dict[str, Any]:
    """Run the 150-way K-shot protocol and write ``out/eval.json``, ``out/options.json`` and ``out/draw-N/result.json``
    per draw. With ``resume``, finished draws are kept and an interrupted fine-tuning continues from its checkpoint
    (``out/draw-N/last.pt``), after checking that ``options`` compute what the folder holds. ``embedder`` replaces the
    encoder that ``options.encoder`` names (tests pass a small one)."""
    options.validate()
    out = Path(options.out)
    with atomic.FolderLock(out):  # one live run per output folder
        return _run(options, out, resume, progress, embedder)


def _check_resumable(options: FewShotTextOptions, out: Path) -> None:
    """Refuse to resume a folder whose draws were computed with other settings (one line naming the first)."""
    saved_path = out / "options.json"
    if not saved_path.is_file():
        return
    try:
        saved = json.loads(saved_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise DataError(
            f"{saved_path} is unreadable; resume needs it: delete the folder or choose another --out."
        ) from None
    saved_settings = {**saved, "finetune_options": saved.get("finetune_options", {})}
    for name, value in options.what_is_computed().items():
        if name == "finetune_options":
            differing = [k for k, v in value.items() if saved_settings[name].get(k) != v]
            if options.finetune and differing:
                flag = FINETUNE_FLAG_PREFIX + differing[0].replace("_", "-")
                raise ConfigError(
                    f"{out} was run with {flag} {saved_settings[name].get(differing[0])}, not {value[differing[0]]}; "
                    f"use the same settings to --resume, or another --out."
                )
        elif saved_settings.get(name) != value:
            flag = "--C" if name == "C" else "--" + name.replace("_", "-")
            raise ConfigError(
                f"{out} was run with {flag} {saved_settings.get(name)}, not {value}; use the same settings to "
                f"--resume, or another --out."
            )


def _run(
    options: FewShotTextOptions, out: Path, resume: bool, progress: bool, embedder: torch.nn.Module | None
) -> dict[str, Any]:
    data = load_clinc150(resolve_data_dir(options.data_dir))
    intents = data.intents
    check_examples_per_label(data["train"], options.shots, f"{data.path} (train)", f"{options.shots}-shot")
    index = {name: i for i, name in enumerate(intents)}
    labels = {part: np.array([index[x] for x in data[part].labels]) for part in ("val", "test")}
    if resume:
        _check_resumable(options, out)
    atomic.write_json(out / "options.json", {**options.what_is_computed(), "device": options.device})
    frozen = None if options.finetune else _frozen_embeddings(data, options, progress, embedder)
    draws = []
    for draw in range(options.draws):
        draw_dir = out / f"draw-{draw}"
        result_path = draw_dir / "result.json"
        if resume and result_path.is_file():
            draws.append(json.loads(result_path.read_text(encoding="utf-8")))
            continue
        started = time.time()
        seed = options.seed + draw
        rows = kshot_rows(data["train"].labels, intents, options.shots, seed)
        support_y = np.repeat(np.arange(len(intents)), options.shots)
        record: dict[str, Any] = {"draw": draw, "seed": seed}
        if frozen is None:
            embed, record["finetune"] = _finetuned_embeddings(data, rows, options, draw_dir, resume, progress, embedder)
        else:
            offsets = data.offsets()
            embed = {
                part: frozen[offsets[part] : offsets[part] + len(data[part])]
                for part in ("val", "oos_val", "test", "oos_test")
            }
            embed["support"] = frozen[offsets["train"] + rows.reshape(-1)]
        record.update(evaluate_embeddings(embed, support_y, len(intents), labels, options.C))
        record["wall_s"] = round(time.time() - started, 1)  # this process's time on the draw (fine-tuning resumed)
        record["date"] = time.strftime("%Y-%m-%d")
        atomic.write_json(result_path, record)
        draws.append(record)
    result = {
        "setting": f"CLINC150 {len(intents)}-way {options.shots}-shot intent detection",
        "options": asdict(options),
        "draws": draws,
        "summary": summarise_draws(draws),
        "published": PUBLISHED.get(options.shots, {}),
        "test_queries": {"in_scope": len(data["test"]), "oos": len(data["oos_test"])},
        "torch_threads": torch.get_num_threads(),
    }
    atomic.write_json(out / "eval.json", result)
    return result


def format_fewshot_result(result: dict[str, Any]) -> str:
    """Lines for the terminal: each classifier's accuracy and out-of-scope F1, mean and spread over the draws."""
    lines = [f"{result['setting']}, {len(result['draws'])} draw(s), mean ± standard deviation over draws:"]
    tuned = "fine-tuned" if result["options"]["finetune"] else "frozen"
    for classifier, summary in result["summary"].items():
        lines.append(
            f"  {result['options']['encoder']} ({tuned}) + {classifier}: accuracy "
            f"{100 * summary['accuracy_mean']:.2f}% ± {100 * summary['accuracy_std']:.2f}; out-of-scope F1 "
            f"{100 * summary['oos_f1_mean']:.1f} (recall {100 * summary['oos_recall_mean']:.1f}, precision "
            f"{100 * summary['oos_precision_mean']:.1f}, in-scope accuracy "
            f"{100 * summary['in_scope_accuracy_mean']:.1f})"
        )
    published = ", ".join(f"{name} {value}" for name, value in result["published"].items())
    if published:
        lines.append(f"  published: {published}")
    return "\n".join(lines)


def _frozen_embeddings(
    data: Clinc150, options: FewShotTextOptions, progress: bool, embedder: torch.nn.Module | None
) -> np.ndarray:
    if embedder is None:
        return cached_embeddings(data.all_texts(), options.encoder, device=options.device, progress=progress)
    with torch.no_grad():
        return embedder(data.all_texts()).numpy()


def _finetuned_embeddings(
    data: Clinc150,
    rows: np.ndarray,
    options: FewShotTextOptions,
    draw_dir: Path,
    resume: bool,
    progress: bool,
    embedder: torch.nn.Module | None,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Fine-tune a fresh copy of the encoder on this draw's K-shot set, then embed every part with it."""
    if embedder is None:
        model: torch.nn.Module = SentenceEmbedder(load_encoder(options.encoder, options.device))
    else:
        model = copy.deepcopy(embedder)  # every draw starts from the same weights
    texts = [data["train"].texts[r] for r in rows.reshape(-1)]
    support_y = np.repeat(np.arange(rows.shape[0]), rows.shape[1])
    started = time.time()
    summary = finetune_encoder(model, texts, support_y, options.finetune_options, draw_dir, resume, progress)
    embed = {"support": _embed(model, texts, progress)}
    for part in EVAL_PARTS:
        embed[part] = _embed(model, data[part].texts, progress)
    summary["embed_and_finetune_wall_s"] = round(time.time() - started, 1)
    return embed, summary


def _embed(model: torch.nn.Module, texts: list[str], progress: bool) -> np.ndarray:
    if isinstance(model, SentenceEmbedder):
        return encode(model.model, texts, progress=progress, desc=f"embedding {len(texts)} texts")
    with torch.no_grad():
        return model(texts).numpy()
