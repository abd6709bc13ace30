"""Episodic ProtoNet fine-tuning of a sentence encoder: the loss against a loop, learning, exact resume."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from text_fixtures import FakeSentenceModel

from fastadapt.errors import ConfigError, DataError
from fastadapt.text.finetune import FinetuneOptions, SentenceEmbedder, finetune_encoder, leave_one_out_prototype_loss


def loop_reference(embeddings: torch.Tensor, labels: torch.Tensor, ways: int, scale: float) -> torch.Tensor:
    """Each example in turn as the query against prototypes of all other examples (float64, plain loops)."""
    losses = []
    for i in range(len(labels)):
        logits = []
        for k in range(ways):
            members = [j for j in range(len(labels)) if labels[j] == k and j != i]
            centre = embeddings[members].mean(0)
            logits.append(scale * F.cosine_similarity(embeddings[i], centre, dim=0))
        losses.append(F.cross_entropy(torch.stack(logits).unsqueeze(0), labels[i : i + 1]))
    return torch.stack(losses).mean()


def test_leave_one_out_loss_matches_the_loop():
    g = torch.Generator().manual_seed(0)
    embeddings = torch.randn(9, 5, dtype=torch.float64, generator=g, requires_grad=True)
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    loss, logits = leave_one_out_prototype_loss(embeddings, labels, 3, scale=7.0)
    reference = loop_reference(embeddings, labels, 3, 7.0)
    assert torch.allclose(loss, reference, atol=1e-12)
    (grad,) = torch.autograd.grad(loss, embeddings)
    (grad_reference,) = torch.autograd.grad(reference, embeddings)
    assert torch.allclose(grad, grad_reference, atol=1e-12)
    with pytest.raises(DataError, match="at least 2 examples per class"):
        leave_one_out_prototype_loss(embeddings[:4], labels[:4], 2, 1.0)


TEXTS = [
    f"{w} {k} request about {w} item{k % 2}" for w in ("alarm", "bank", "music", "weather", "recipe") for k in range(4)
]
LABELS = [c for c in range(5) for _ in range(4)]


def run(tmp_path, steps=6, resume=False, stop_after_calls=None, seed=0):
    embedder = SentenceEmbedder(FakeSentenceModel())
    calls = {"n": 0}
    if stop_after_calls is not None:
        original = embedder.forward

        def interrupted(texts):
            calls["n"] += 1
            if calls["n"] > stop_after_calls:
                raise KeyboardInterrupt
            return original(texts)

        embedder.forward = interrupted
    options = FinetuneOptions(steps=steps, batch_size=12, lr=0.05, checkpoint_every=3, seed=seed, warmup=0.2)
    summary = finetune_encoder(embedder, TEXTS, LABELS, options, tmp_path, resume=resume, progress=False)
    return embedder, summary


def test_finetuning_lowers_the_loss(tmp_path):
    _, summary = run(tmp_path, steps=40)
    losses = torch.load(tmp_path / "last.pt", weights_only=True)["losses"]
    assert summary["steps"] == 40 and summary["ways_per_step"] == 3  # 12 texts // 4 shots
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5
    assert (tmp_path / "finetune.json").is_file() and not list(tmp_path.glob(".*tmp*"))


def test_resume_is_exact(tmp_path):
    whole, _ = run(tmp_path / "whole")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "cut", stop_after_calls=4)  # dies in step 5, after the checkpoint of step 3
    assert torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["step"] == 3
    resumed, summary = run(tmp_path / "cut", resume=True)
    assert summary["steps"] == 6
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(ConfigError) as exc:
        run(tmp_path / "cut", resume=True, seed=1)
    assert "different fine-tuning configuration" in str(exc.value) and "\n" not in str(exc.value)


def test_options_are_validated():
    with pytest.raises(ConfigError, match="--finetune-steps must be at least 1"):
        FinetuneOptions(steps=0).validate()
    with pytest.raises(ConfigError, match="warmup"):
        FinetuneOptions(warmup=1.0).validate()
