"""The two stages before LEO (Rusu et al. 2019, section 4.1): pre-train a backbone by plain
classification on the meta-training classes only, then write the embeddings of every split once.

``pretrain``: backbone (Conv-4 for 28x28 Omniglot, ResNet-12 for 84x84 images) + a linear layer (or, with
``--head cosine``, scaled cosine similarities, Chen et al. 2019) over all training classes, cross-entropy,
Adam with a cosine schedule; ``--augment`` jitters the training images. After every epoch the backbone
is scored by nearest-centroid 5-way 1-shot episodes on the *validation* classes, and the best epoch is
kept in ``<out>/pretrain.pt`` (atomic). Validation and test classes are never trained on.

``embed``: the kept backbone, in eval mode, maps every image of train/val/test to its feature vector,
divided by one scale (the mean length of the training vectors, so they have unit length on average);
``<out>/{train,val,test}.npz`` and ``meta.json`` are what ``--dataset embeddings --data-dir <out>`` reads.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from fastadapt import atomic
from fastadapt.checkpoint import load_checkpoint, load_weights, save_checkpoint
from fastadapt.config import Config, PretrainConfig, check_network_memory
from fastadapt.datasets import image_format, load_splits
from fastadapt.datasets.embeddings import PARTS, write_embedding_split, write_json_atomically
from fastadapt.device import resolve_device
from fastadapt.engine.fastlayers import with_fast_layers
from fastadapt.errors import ConfigError, DataError, OutputError
from fastadapt.nets import build_network
from fastadapt.nets.conv import conv4_filters
from fastadapt.options import require_finite, require_positive, require_seed, require_types
from fastadapt.tasks.augment import random_affine
from fastadapt.tasks.samplers import ClassSplit, EpisodeSampler

HEADS = ("linear", "cosine")
IMAGE_DATASETS = ("omniglot", "mini-imagenet", "folder")
CHECKPOINT_NAME = "pretrain.pt"


def default_network(config: PretrainConfig) -> str:
    """The paper's choice: ResNet-12 for mini-ImageNet-sized images, Conv-4 for small ones."""
    return config.network or ("resnet12" if config.image_size >= 64 else "conv4")


def _data_config(config: PretrainConfig) -> Config:
    """The parts of a run configuration that say which images to load."""
    # protonet: running batch-norm statistics, as for any plain classifier
    return Config(algorithm="protonet", network=default_network(config), **config.data_options())


def _require_image_dataset(config: PretrainConfig) -> None:
    if config.dataset not in IMAGE_DATASETS:
        choices = ", ".join(IMAGE_DATASETS)
        raise ConfigError(f"--dataset {config.dataset}: pretrain needs an image data set ({choices}).")


def settled(config: PretrainConfig) -> PretrainConfig:
    """``config`` with what it leaves open filled in: the data set's image size and colour (omniglot 28x28
    grayscale, mini-ImageNet 84x84 colour; a folder's chosen from its images) and the device ("auto")."""
    _require_image_dataset(config)
    chosen, _ = image_format(config)
    return replace(config, **chosen, device=str(resolve_device(config.device)))


def validate_pretrain(config: PretrainConfig) -> None:
    """Refuse impossible settings before any work starts: one line naming the option and the fix."""
    require_types(config)
    require_finite(config)
    _require_image_dataset(config)
    require_positive(config, "epochs", "batch_size", "val_episodes", "image_size", "channels")
    require_seed(config)
    network = default_network(config)
    if network != "resnet12" and conv4_filters(network) is None:
        raise ConfigError(
            f"unknown --network {config.network!r} for pretrain; choose conv4, conv4-N (N filters) or resnet12."
        )
    check_network_memory(network, config.channels)
    if config.head not in HEADS:
        raise ConfigError(f"unknown --head {config.head!r}; choose one of: {', '.join(HEADS)}.")
    if not config.lr > 0:
        raise ConfigError(f"--lr must be positive (got {config.lr}).")
    if not config.weight_decay >= 0:
        raise ConfigError(f"--weight-decay must be at least 0 (got {config.weight_decay}).")
    resolve_device(config.device)


def build_backbone(config: PretrainConfig) -> nn.Module:
    network = default_network(config)
    backbone = build_network(network, config.channels, config.image_size, None, norm="running")
    return with_fast_layers(backbone)  # exact, faster pooling on a CPU (fastadapt.engine.fastlayers)


class CosineHead(nn.Module):
    """Logits s * cos(w_c, f) (Chen et al. 2019, "A Closer Look at Few-shot Classification", Baseline++).

    Every class competes on direction alone, so the backbone learns features whose angles separate the
    classes, which is what nearest-centroid and LEO's classifiers use later. The scale s is learned.
    """

    def __init__(self, in_features: int, classes: int, scale: float = 10.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, in_features) / math.sqrt(in_features))
        self.log_scale = nn.Parameter(torch.tensor(math.log(scale)))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        cosines = F.normalize(features, dim=1) @ F.normalize(self.weight, dim=1).T
        return self.log_scale.exp() * cosines


def build_head(config: PretrainConfig, in_features: int, classes: int) -> nn.Module:
    return CosineHead(in_features, classes) if config.head == "cosine" else nn.Linear(in_features, classes)


def _labels(split: ClassSplit) -> torch.Tensor:
    labels = torch.empty(len(split.images), dtype=torch.long)
    for c, rows in enumerate(split.class_indices):
        labels[torch.from_numpy(rows)] = c
    return labels


def _as_float(images: torch.Tensor) -> torch.Tensor:
    return images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()


@torch.no_grad()
def embed_split(backbone: nn.Module, split: ClassSplit, batch_size: int = 512, device: str = "cpu") -> np.ndarray:
    """(n, D) float32 features of every example of ``split``, in its row order (eval mode)."""
    backbone.eval()
    out = []
    for start in range(0, len(split.images), batch_size):
        x = _as_float(split.images[start : start + batch_size]).to(device)
        out.append(backbone(x).flatten(1).cpu())
    return torch.cat(out).numpy().astype(np.float32)


def nearest_centroid_accuracy(features: np.ndarray, split: ClassSplit, episodes: int, seed: int) -> float:
    """Mean 5-way 1-shot accuracy of nearest class centroid on ``features`` (a quick backbone check)."""
    ways = min(5, split.num_classes)
    query = max(1, min(15, split.min_examples_per_class - 1))
    sampler = EpisodeSampler(split, ways, 1, query, seed=seed)
    scores = []
    table = torch.from_numpy(features)
    for _ in range(episodes):
        support_rows, query_rows = sampler.sample_indices()
        centroids = table[torch.from_numpy(support_rows)].mean(1)  # (ways, D)
        queries = table[torch.from_numpy(query_rows.reshape(-1))]
        predicted = torch.cdist(queries, centroids).argmin(1)
        truth = torch.arange(ways).repeat_interleave(query_rows.shape[1])
        scores.append((predicted == truth).float().mean().item())
    return float(np.mean(scores))


def pretrain(config: PretrainConfig, progress: bool = True) -> dict[str, Any]:
    """Train the backbone; returns the record of the kept epoch (also in ``<out>/pretrain_metrics.jsonl``)."""
    config = settled(config)
    validate_pretrain(config)
    out = Path(config.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"cannot create the output folder {out} ({error.strerror}); choose another --out.") from None
    torch.manual_seed(config.seed)
    splits = load_splits(_data_config(config), progress=progress)
    assert splits is not None
    train_split = splits["train"]
    labels = _labels(train_split)
    backbone = build_backbone(config).to(config.device)
    feature_dim = getattr(backbone, "out_features", None)
    if feature_dim is None:
        raise ConfigError(f"--network {default_network(config)} does not report its feature size.")
    head = build_head(config, feature_dim, train_split.num_classes).to(config.device)
    params = list(backbone.parameters()) + list(head.parameters())
    optimizer = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(labels) / config.batch_size)
    total = config.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total))
    )
    metrics_path = out / "pretrain_metrics.jsonl"
    metrics_path.unlink(missing_ok=True)
    generator = torch.Generator().manual_seed(config.seed)
    best: dict[str, Any] | None = None
    started = time.time()
    for epoch in range(1, config.epochs + 1):
        backbone.train()
        head.train()
        order = torch.randperm(len(labels), generator=generator)
        loss_sum, correct = 0.0, 0
        bar = tqdm(range(steps_per_epoch), desc=f"pretrain epoch {epoch}", disable=not progress, leave=False)
        for i in bar:
            rows = order[i * config.batch_size : (i + 1) * config.batch_size]
            x = _as_float(train_split.images[rows])
            if config.augment:
                x = random_affine(x, generator)
            x = x.to(config.device)
            y = labels[rows].to(config.device)
            logits = head(backbone(x).flatten(1))
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += loss.item() * len(rows)
            correct += (logits.argmax(1) == y).sum().item()
        features = embed_split(backbone, splits["val"], device=config.device)
        val_acc = nearest_centroid_accuracy(features, splits["val"], config.val_episodes, config.seed + 1)
        record = {
            "epoch": epoch,
            "loss": loss_sum / len(labels),
            "train_acc": correct / len(labels),
            "val_5w1s_nearest_centroid": val_acc,
            "elapsed_s": round(time.time() - started, 2),
        }
        atomic.append_record(metrics_path, record, then="")
        if progress:
            print(
                f"epoch {epoch}: loss {record['loss']:.3f}, train acc {record['train_acc']:.3f}, "
                f"val 5-way 1-shot (nearest centroid) {val_acc:.4f}"
            )
        if best is None or val_acc > best["val_5w1s_nearest_centroid"]:
            best = record
            state = {
                "kind": "pretrain",
                "config": asdict(config),
                "network": default_network(config),
                "feature_dim": feature_dim,
                "epoch": epoch,
                "val_acc": val_acc,
                "model": backbone.state_dict(),
                "head": head.state_dict(),
            }
            save_checkpoint(out / CHECKPOINT_NAME, state)
    assert best is not None
    return {**best, "checkpoint": str(out / CHECKPOINT_NAME)}


def load_backbone(checkpoint: Path, device: str = "cpu") -> tuple[nn.Module, PretrainConfig, dict[str, Any]]:
    """The backbone kept by :func:`pretrain`, its configuration and the checkpoint's record."""
    state = load_checkpoint(checkpoint, kind="pretrain")
    config = PretrainConfig(**{k: v for k, v in state["config"].items() if k in PretrainConfig.__dataclass_fields__})
    unsettled = [name for name in ("image_size", "channels") if getattr(config, name) is None]
    if unsettled:  # pre-training settles them from the data before it writes a checkpoint
        raise DataError(f"{checkpoint} holds no {' or '.join(unsettled)}; it was changed after pre-training.")
    try:  # its settings, checked as a command line's are
        validate_pretrain(replace(config, device="cpu"))
    except ConfigError as error:
        raise ConfigError(f"{checkpoint}: {error}") from None
    record = {"feature_dim": int, "network": str, "epoch": int, "val_acc": (int, float)}
    missing = [k for k, kind in record.items() if not isinstance(state.get(k), kind) or isinstance(state.get(k), bool)]
    if missing:
        raise DataError(f"{checkpoint} is not a `fastadapt pretrain` checkpoint (no {', '.join(missing)}).")
    backbone = build_backbone(config)
    load_weights(
        backbone,
        state["model"],
        lambda mismatch: DataError(
            f"{checkpoint}: its weights do not fit the backbone of its own configuration ({mismatch}); it was "
            f"changed or damaged after pre-training. Pre-train again."
        ),
    )
    return backbone.to(device).eval(), config, state


def embed(
    checkpoint: Path, out: Path, data_dir: str | None = None, batch_size: int = 512, device: str | None = None
) -> dict[str, Any]:
    """Write ``<out>/{train,val,test}.npz`` and ``meta.json`` from a pretrain checkpoint."""
    device = str(resolve_device(device or "cpu"))
    if type(batch_size) is not int or batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1 (got {batch_size!r}).")
    backbone, config, state = load_backbone(Path(checkpoint), device)
    if data_dir:
        config.data_dir = data_dir
    out = Path(out)
    try:  # before the work, not after it
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"cannot create the output folder {out} ({error.strerror}); choose another --out.") from None
    splits = load_splits(_data_config(config))
    assert splits is not None
    features = {part: embed_split(backbone, splits[part], batch_size, device) for part in PARTS}
    # One scale for every split, from the training images only: LEO's step sizes and initialisations
    # (the authors') assume features of about unit length; raw Conv-4 features are ~40 long, and LEO at
    # 5-way 5-shot then scored 96.2% on them against 98.8% on the rescaled ones (docs/results.md).
    scale = float(np.linalg.norm(features["train"], axis=1).mean())
    counts = {part: {"examples": len(splits[part].images), "classes": splits[part].num_classes} for part in PARTS}
    meta = {
        "checkpoint": str(checkpoint),
        "network": state["network"],
        "dataset": config.dataset,
        "split": config.split,
        "image_size": config.image_size,
        "embedding_dim": int(state["feature_dim"]),
        # the backbone's features were divided by this, the mean L2 norm of the training ones
        "feature_scale": scale,
        "pretrain_epoch": state["epoch"],
        "pretrain_val_5w1s_nearest_centroid": state["val_acc"],
        "parts": counts,
    }
    written: list[Path] = []
    try:  # the set of files, or none of them: a failed write removes what this call wrote
        for part in PARTS:
            split = splits[part]
            path = out / f"{part}.npz"
            write_embedding_split(path, features[part] / scale, _labels(split).numpy(), split.class_names)
            written.append(path)
        write_json_atomically(out / "meta.json", meta)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return meta
