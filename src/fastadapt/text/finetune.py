"""Meta-training a sentence encoder on a few-shot training set: episodic Prototypical-Network fine-tuning.

The encoder f (all of MiniLM's weights) is trained on the K labelled examples per class that a few-shot
task gives, and nothing else, with the Prototypical Networks objective (Snell et al. 2017, eq. 1-2) on
episodes drawn from those examples. Each step draws ``ways`` classes and takes all K examples of each;
every example is in turn the query and the others its support (leave-one-out episodes), so that one
forward pass scores K episodes of (K-1)-shot support::

    c_k        = 1/K sum_{j in S_k} f(x_j)                         (prototype, eq. 1)
    c_k^(-i)   = (K c_k - f(x_i)) / (K - 1)                        (x_i's own class without x_i)
    logit_i,k  = s * cos(f(x_i), c_k)  for k != y_i,   s * cos(f(x_i), c_{y_i}^(-i))  for k = y_i
    L          = mean_i CE(logit_i, y_i)                            (eq. 2, cosine with scale s)

The cosine form with a fixed scale s (20 by default) matches an encoder trained for cosine similarity
(all-MiniLM-L6-v2) and the prototype classifier used afterwards. AdamW with linear warm-up and decay.

Training is checkpointed to ``out/last.pt`` every ``checkpoint_every`` steps (atomically: temporary file
and rename) with the model, optimiser, schedule and random states, so ``resume=True`` continues exactly
where the last checkpoint left off: the same steps, the same weights as an uninterrupted run.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from fastadapt import atomic
from fastadapt.errors import ConfigError, DataError, TrainingDiverged
from fastadapt.options import option


@dataclass
class FinetuneOptions:
    """Episodic ProtoNet fine-tuning of the sentence encoder on the few-shot training examples. On the command line
    (``fastadapt fewshot-text``) each is ``--finetune-<name>``."""

    steps: int = option(30, "optimiser steps (5-shot: 30 x 51 classes = 10 epochs)")
    batch_size: int = option(256, "texts per step: batch_size // shots classes with all their examples")
    lr: float = option(3e-5, "AdamW learning rate (peak, after warm-up)")
    weight_decay: float = option(0.01, "AdamW weight decay")
    warmup: float = option(0.1, "fraction of the steps with a linearly rising rate")
    scale: float = option(20.0, "s, the scale of the cosine logits")
    checkpoint_every: int = option(25, "steps between checkpoints (draw-N/last.pt)", run_only=True)
    seed: int = option(0, "seed of the fine-tuning episodes and of dropout (the same for every draw)")

    def validate(self) -> None:
        for name in ("steps", "batch_size", "checkpoint_every"):
            if not getattr(self, name) >= 1:
                raise ConfigError(
                    f"{FLAG_PREFIX}{name.replace('_', '-')} must be at least 1 (got {getattr(self, name)})."
                )
        if not (self.lr > 0 and self.scale > 0):
            raise ConfigError(
                f"{FLAG_PREFIX}lr and {FLAG_PREFIX}scale must be positive (got {self.lr} and {self.scale})."
            )
        if not 0 <= self.warmup < 1:
            raise ConfigError(f"{FLAG_PREFIX}warmup is a fraction of the steps in [0, 1) (got {self.warmup}).")
        if not self.weight_decay >= 0:
            raise ConfigError(f"{FLAG_PREFIX}weight-decay must be >= 0 (got {self.weight_decay}).")


#: The command line's prefix for these options (``--finetune-steps``).
FLAG_PREFIX = "--finetune-"


class SentenceEmbedder(nn.Module):
    """A sentence-transformers model as a module from a list of texts to (n, D) embeddings with gradients."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, texts: Sequence[str]) -> Tensor:
        device = next(self.model.parameters()).device
        # sentence-transformers 5.2+ calls it preprocess (tokenize is deprecated there)
        tokenize = getattr(self.model, "preprocess", None) or self.model.tokenize
        features = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in tokenize(list(texts)).items()}
        return self.model(features)["sentence_embedding"]

    def save(self, folder: Path) -> None:
        self.model.save(str(folder))


def leave_one_out_prototype_loss(embeddings: Tensor, labels: Tensor, ways: int, scale: float) -> tuple[Tensor, Tensor]:
    """The module docstring's loss and logits for (n, D) embeddings of ``ways`` classes, each with at
    least two examples (labels in ``0..ways-1``)."""
    one_hot = F.one_hot(labels, ways).to(embeddings.dtype)  # (n, ways)
    counts = one_hot.sum(0)  # (ways,)
    if bool((counts < 2).any()):
        raise DataError("leave-one-out prototypes need at least 2 examples per class; use 2 or more shots.")
    sums = one_hot.T @ embeddings  # (ways, D)
    centres = sums / counts.unsqueeze(1)
    own = (sums[labels] - embeddings) / (counts[labels] - 1).unsqueeze(1)  # c_{y_i}^(-i)
    unit = F.normalize(embeddings, dim=-1)
    logits = unit @ F.normalize(centres, dim=-1).T
    own_cosine = (unit * F.normalize(own, dim=-1)).sum(-1)
    logits = torch.where(one_hot.bool(), own_cosine.unsqueeze(1), logits) * scale
    return F.cross_entropy(logits, labels), logits


def _resumable(config: dict[str, Any]) -> dict[str, Any]:
    """What a resumed fine-tuning must share with its checkpoint: all but how often it checkpoints."""
    options = {k: v for k, v in config["options"].items() if k != "checkpoint_every"}
    return {**config, "options": options}


def _save_state(path: Path, state: dict[str, Any]) -> None:
    """Write the fine-tuning state atomically (fastadapt.atomic): a killed run leaves the previous one intact."""
    atomic.write_with(path, lambda f: torch.save(state, f))


def _load_state(path: Path) -> dict[str, Any]:
    """The fine-tuning state at ``path`` (weights-only unpickling), or one DataError line."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # the weights-only unpickler raises many types on damaged bytes; all mean the same
        raise DataError(
            f"{path} is corrupt or truncated ({type(error).__name__}); delete it to start the draw again."
        ) from None
    keys = ("config", "model", "optimizer", "scheduler", "rng", "torch_rng", "step", "elapsed_s", "losses")
    if not isinstance(state, dict) or any(key not in state for key in keys):
        raise DataError(f"{path} is not a fine-tuning checkpoint of fastadapt; delete it to start the draw again.")
    return state


def _classes_by_label(labels: Sequence[int]) -> list[np.ndarray]:
    labels = np.asarray(labels)
    return [np.flatnonzero(labels == c) for c in range(int(labels.max()) + 1)]


def finetune_encoder(
    embedder: nn.Module,
    texts: Sequence[str],
    labels: Sequence[int],
    options: FinetuneOptions,
    out: Path,
    resume: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Fine-tune ``embedder`` (a module from texts to embeddings, e.g. :class:`SentenceEmbedder`) in place on
    ``texts`` with integer ``labels`` 0..C-1; checkpoints in ``out``. Returns what was done (steps, final
    loss, wall time across resumes), also written to ``out/finetune.json``. With ``resume`` and a checkpoint
    in ``out``, training continues from it exactly."""
    options.validate()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    classes = _classes_by_label(labels)
    shots = min(len(rows) for rows in classes)
    if shots < 2:
        raise DataError("encoder fine-tuning needs at least 2 examples per class; use 2 or more shots.")
    ways = max(2, min(len(classes), options.batch_size // shots))
    config = {"options": asdict(options), "texts": len(texts), "classes": len(classes), "ways": ways}

    torch.manual_seed(options.seed)
    rng = np.random.default_rng(options.seed)
    parameters = [p for p in embedder.parameters() if p.requires_grad]
    decay = [p for p in parameters if p.dim() >= 2]
    no_decay = [p for p in parameters if p.dim() < 2]  # biases and layer norms, as usual for BERT
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": options.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=options.lr,
    )
    warmup_steps = int(options.warmup * options.steps)

    def rate(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return max(0.0, (options.steps - step) / max(1, options.steps - warmup_steps))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, rate)
    step, elapsed_before, losses = 0, 0.0, []
    checkpoint = out / "last.pt"
    if resume and checkpoint.is_file():
        state = _load_state(checkpoint)
        if _resumable(state["config"]) != _resumable(config):
            raise ConfigError(
                f"{checkpoint} is from a different fine-tuning configuration; use the same settings to resume, "
                f"or a new output folder."
            )
        embedder.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        step, elapsed_before, losses = state["step"], state["elapsed_s"], list(state["losses"])
    started = time.time() - elapsed_before

    def save() -> None:
        _save_state(
            checkpoint,
            {
                "config": config,
                "model": embedder.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": rng.bit_generator.state,
                "torch_rng": torch.get_rng_state(),
                "step": step,
                "elapsed_s": time.time() - started,
                "losses": losses,
            },
        )

    embedder.train()
    with tqdm(total=options.steps, initial=step, desc="fine-tuning encoder", unit="step", disable=not progress) as bar:
        while step < options.steps:
            chosen = rng.choice(len(classes), size=ways, replace=False)
            rows = np.concatenate([classes[c] for c in chosen])
            episode_labels = torch.from_numpy(np.repeat(np.arange(ways), [len(classes[c]) for c in chosen]))
            optimizer.zero_grad(set_to_none=True)
            loss, _ = leave_one_out_prototype_loss(
                embedder([texts[r] for r in rows]), episode_labels, ways, options.scale
            )
            if not torch.isfinite(loss):
                raise TrainingDiverged(f"fine-tuning loss became {loss.item()} at step {step + 1}; lower the lr.")
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            losses.append(round(loss.item(), 5))
            bar.set_postfix(loss=f"{loss.item():.3f}")
            bar.update(1)
            if step % options.checkpoint_every == 0 or step == options.steps:
                save()
    embedder.eval()
    summary = {
        "steps": step,
        "ways_per_step": ways,
        "final_loss": float(np.mean(losses[-10:])) if losses else None,
        "wall_s": round(time.time() - started, 1),
        "threads": torch.get_num_threads(),
    }
    atomic.write_json(out / "finetune.json", {**config, **summary})
    return summary


def save_encoder(embedder: SentenceEmbedder, folder: Path) -> Path:
    """Write the fine-tuned sentence-transformers model to ``folder`` (a temporary folder renamed into
    place), usable afterwards as ``encoder=str(folder)``."""
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    embedder.save(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder
