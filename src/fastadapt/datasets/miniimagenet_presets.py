"""Presets for every method on mini-ImageNet (5-way, 84x84 RGB, Ravi & Larochelle's class split), from the papers
and the authors' released code, and the accuracies those papers publish.

``PRESETS[algorithm][shots]`` are :class:`fastadapt.config.Config` settings for 5-way ``shots``-shot episodes (1
or 5). Every value carries its source. Where a method's paper uses something fastadapt has no option for, it is
listed in ``NOT_EXPRESSIBLE`` rather than approximated silently. ``steps`` is the paper's number of outer steps
(episodes or meta-batches); all of them are GPU-scale runs.

``PUBLISHED`` holds the mean test accuracy ± 95% confidence interval each paper reports (5-way, Ravi &
Larochelle's split unless noted). None of these runs has been made with fastadapt: mini-ImageNet is not on the
machines fastadapt is developed on, so every row of the docs' table says "not measured here".

Sources (all numbers read from the papers' tables or the authors' released configurations):

- MAML: Finn et al. 2017, "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks", section 5.2 and
  Table 1 (mini-ImageNet), appendix A.1.
- ANIL: Raghu et al. 2020, "Rapid Learning or Feature Reuse?" (MiniImageNet-5way); MAML's settings.
- Meta-SGD: Li et al. 2017, "Meta-SGD: Learning to Learn Quickly for Few-Shot Learning" (miniImagenet).
- MAML++: Antoniou et al. 2019, "How to train your MAML" (Mini-Imagenet); settings from the authors' released
  ``experiment_config/mini-imagenet_maml++-mini-imagenet_{1,5}_2_0.01_48_5_0.json``
  (github.com/AntreasAntoniou/HowToTrainYourMAMLPytorch).
- ProtoNet: Snell et al. 2017, "Prototypical Networks for Few-shot Learning", section 3.2 and its miniImageNet
  table.
- ProtoNet with ResNet-12: Lee et al. 2019, "Meta-Learning with Differentiable Convex Optimization"
  (MetaOptNet), Table 3 (their Prototypical Networks with ResNet-12); settings from their ``train.py`` defaults
  (github.com/kjunelee/MetaOptNet).
- Matching Networks: Vinyals et al. 2016; the numbers on Ravi & Larochelle's split are Ravi & Larochelle's
  re-implementation (their Table 1), settings from their ``config/baselines/train-matching-net.lua``
  (github.com/twitter-research/meta-learning-lstm).
- Relation Network: Sung et al. 2018, "Learning to Compare" (miniImageNet); settings from the authors'
  ``miniimagenet/miniimagenet_train_{one,few}_shot.py`` (github.com/floodsung/LearningToCompare_FSL).
- Reptile: Nichol et al. 2018, "On First-Order Meta-Learning Algorithms", Table 1; settings from the commands
  in the authors' README (github.com/openai/supervised-reptile), the non-transductive ones.
- Meta-LSTM: Ravi & Larochelle 2017, "Optimization as a Model for Few-Shot Learning", Table 1; settings from
  ``config/lstm/train-imagenet-{1,5}shot.lua`` and ``config/{1,5}-shot-5-class.lua`` of their code.
- LEO: Rusu et al. 2019, "Meta-Learning with Latent Embedding Optimization", Table 1; it trains on the released
  WRN-28-10 embeddings (``--dataset embeddings``; its preset is fastadapt's ``("leo", "embeddings")``).
"""

from __future__ import annotations

from typing import Any

#: What every mini-ImageNet preset shares: Ravi & Larochelle's split, 84x84 colour images, 5-way test episodes
#: with 15 queries per class over 600 episodes (the protocol of Ravi & Larochelle, Finn et al., Snell et al.);
#: 300 validation episodes (fastadapt's choice, as in its Omniglot presets).
COMMON: dict[str, Any] = dict(
    split="ravi", image_size=84, channels=3, ways=5, eval_query=15, test_episodes=600, val_episodes=300
)


def _preset(shots: int, **settings: Any) -> dict[str, Any]:
    return {**COMMON, "shots": shots, **settings}


# fmt: off
PRESETS: dict[str, dict[int, dict[str, Any]]] = {
    # Finn et al. 2017, sec. 5.2: Conv-4 with 32 filters and max-pooling "to reduce overfitting"; 5 inner steps of
    # 0.01 in training, 10 at test; meta-batch 4 tasks (1-shot) and 2 (5-shot); 15 queries per class; Adam 1e-3
    # (beta in appendix A.1); 60000 meta-iterations.
    "maml": {
        1: _preset(1, network="conv4-32", query=15, meta_batch_size=4, inner_lr=0.01, inner_steps=5,
                   eval_inner_steps=10, lr=1e-3, steps=60000, val_every=1000),
        5: _preset(5, network="conv4-32", query=15, meta_batch_size=2, inner_lr=0.01, inner_steps=5,
                   eval_inner_steps=10, lr=1e-3, steps=60000, val_every=1000),
    },
    # Antoniou et al. 2019, released config (..._{shots}_2_0.01_48_5_0.json): Conv-4 with 48 filters and
    # max-pooling; 5 inner steps in training and at test, initial inner step 0.01 learned per layer and step;
    # per-step batch-norm statistics and weights; meta-batch 2; 15 targets per class; Adam 1e-3 (the config's
    # cosine schedule has min_learning_rate = meta_learning_rate = 0.001, i.e. constant); 100 epochs of 500 steps;
    # the multi-step loss annealed over the first 15 epochs; second order throughout
    # (first_order_to_second_order_epoch -1).
    "maml++": {
        shots: _preset(shots, network="conv4-48", query=15, meta_batch_size=2, inner_lr=0.01, inner_steps=5,
                       eval_inner_steps=5, lr=1e-3, steps=50000, val_every=500, multi_step_loss=True,
                       multi_step_loss_steps=7500, per_step_lr=True, per_step_bn=True, first_order_steps=0)
        for shots in (1, 5)
    },
    # Snell et al. 2017, sec. 3.2: Conv-4 with 64 filters; trained with 30-way episodes for 1-shot and 20-way for
    # 5-shot, 15 queries per class; Adam 1e-3 halved every 2000 episodes. The paper stops on validation loss and
    # gives no episode count: 30000 here, with the best validation checkpoint kept (fastadapt's choice).
    "protonet": {
        1: _preset(1, network="conv4", train_ways=30, query=15, meta_batch_size=1, lr=1e-3, lr_decay=0.5,
                   lr_decay_every=2000, steps=30000, val_every=1000),
        5: _preset(5, network="conv4", train_ways=20, query=15, meta_batch_size=1, lr=1e-3, lr_decay=0.5,
                   lr_decay_every=2000, steps=30000, val_every=1000),
    },
    # Ravi & Larochelle's Matching Networks baseline (config/baselines/train-matching-net.lua): Adam 1e-4, 75000
    # episodes of the test shape (5-way, 15 queries: config/{1,5}-shot-5-class.lua), no FCE by default (their
    # FCE row is --fce). Deviation, as on Omniglot: a learned scale on the cosines starting at 10
    # (algorithms/metric/matching.py).
    "matching": {
        shots: _preset(shots, network="conv4", query=15, meta_batch_size=1, lr=1e-4, steps=75000, val_every=1000,
                       cosine_scale=10.0)
        for shots in (1, 5)
    },
    # Sung et al. 2018, authors' miniimagenet_train_{one,few}_shot.py: 15 queries per class for 1-shot, 10 for
    # 5-shot; Adam 1e-3 for both modules, halved every 100000 episodes; 500000 episodes.
    "relation": {
        1: _preset(1, network="conv4", query=15, meta_batch_size=1, lr=1e-3, lr_decay=0.5, lr_decay_every=100000,
                   steps=500000, val_every=5000),
        5: _preset(5, network="conv4", query=10, meta_batch_size=1, lr=1e-3, lr_decay=0.5, lr_decay_every=100000,
                   steps=500000, val_every=5000),
    },
    # Nichol et al. 2018, the authors' README commands "1-shot 5-way Mini-ImageNet" and "5-shot 5-way
    # Mini-ImageNet" (non-transductive): Conv-4 with 32 filters and max-pooling (supervised_reptile/models.py);
    # Adam inner loop with beta1 0 whose moments carry from task to task (the authors' code); outer SGD step
    # decayed linearly to 0 (--meta-step-final 0) over 200000 iterations.
    "reptile": {
        # --shots 1 --inner-batch 3 --inner-iters 19 --meta-step 0.235 --meta-batch 2 --eval-batch 3
        # --eval-iters 55 --learning-rate 0.0012 --train-shots 12
        1: _preset(1, network="conv4-32", query=1, train_shots=12, meta_batch_size=2, inner_optimizer="adam",
                   inner_adam_state="carried", inner_lr=0.0012, inner_steps=19, inner_batch_size=3,
                   eval_inner_steps=55, eval_inner_batch_size=3, outer_optimizer="sgd", lr=0.235,
                   lr_schedule="linear", steps=200000, val_every=5000),
        # --inner-batch 10 --inner-iters 8 --meta-step 1 --meta-batch 5 --eval-batch 15 --eval-iters 88
        # --learning-rate 0.00022 --train-shots 15
        5: _preset(5, network="conv4-32", query=1, train_shots=15, meta_batch_size=5, inner_optimizer="adam",
                   inner_adam_state="carried", inner_lr=0.00022, inner_steps=8, inner_batch_size=10,
                   eval_inner_steps=88, eval_inner_batch_size=15, outer_optimizer="sgd", lr=1.0,
                   lr_schedule="linear", steps=200000, val_every=5000),
    },
    # Ravi & Larochelle 2017 (config/lstm/train-imagenet-1shot.lua, -5shot.lua): the learner is Conv-4 with 32
    # filters; 1-shot: 12 updates on the whole 5-example support set, 75000 episodes; 5-shot: 8 updates on the
    # whole 25-example set, 50000 episodes; Adam 1e-3; 15 queries per class; one episode per meta-update.
    "meta-lstm": {
        1: _preset(1, network="conv4-32", query=15, meta_batch_size=1, inner_steps=12, lr=1e-3, steps=75000,
                   val_every=1000),
        5: _preset(5, network="conv4-32", query=15, meta_batch_size=1, inner_steps=8, lr=1e-3, steps=50000,
                   val_every=1000),
    },
}
# ANIL (Raghu et al. 2020) is trained with MAML's mini-ImageNet hyper-parameters, only the head adapting.
PRESETS["anil"] = {shots: dict(settings) for shots, settings in PRESETS["maml"].items()}
# Meta-SGD (Li et al. 2017) meta-learns a learning rate per weight and adapts in one step, in training and at
# test. Its paper builds on MAML's mini-ImageNet protocol; the remaining values here (Conv-4 with 32 filters,
# meta-batch, 15 queries, Adam 1e-3, 60000 steps) are MAML's, not restated from the Meta-SGD paper.
PRESETS["metasgd"] = {
    shots: {**settings, "inner_steps": 1, "eval_inner_steps": 1} for shots, settings in PRESETS["maml"].items()
}
# ResNet-12 variant of ProtoNet, as MetaOptNet trains it (train.py defaults with --head ProtoNet --network ResNet):
# 5-way training episodes with 15 shots and 6 queries per class, 8 episodes per batch, 60 epochs of 1000 batches,
# SGD from 0.1. One model serves both test shots (MetaOptNet's Figure 2).
RESNET12_PRESETS: dict[str, dict[int, dict[str, Any]]] = {
    "protonet": {
        shots: _preset(shots, network="resnet12", train_ways=5, train_shots=15, query=6, meta_batch_size=8,
                       outer_optimizer="sgd", lr=0.1, lr_schedule="step", lr_decay_every=20000, lr_decay=0.06,
                       steps=60000, val_every=1000)
        for shots in (1, 5)
    },
}
# fmt: on

#: What the papers use that fastadapt has no option for (yet); each preset above runs without them.
NOT_EXPRESSIBLE: dict[str, list[str]] = {
    "protonet-resnet12": [
        "SGD with Nesterov momentum 0.9 and weight decay 5e-4 (fastadapt's outer SGD has neither)",
        "learning-rate factors 1 / 0.06 / 0.012 / 0.0024 at epochs 0 / 20 / 40 / 50 (the preset applies only the "
        "first decay, at step 20000)",
        "label smoothing 0.1 on the query loss",
        "DropBlock in the ResNet-12",
        "data augmentation of the training images (random crop, colour jitter, horizontal flip): fastadapt.tasks."
        "augment provides these; pass --augment once it is wired",
    ],
    "relation": ["gradient-norm clipping at 0.5 for both modules"],
    "meta-lstm": ["batch-norm momentum 0.9 (1-shot) / 0.95 (5-shot) in the learner"],
    "matching": ["dropout in the embedding (useDropout = true in the authors' baseline config)"],
}

#: (1-shot, 5-shot) published test accuracy in percent, as "mean ± 95% CI" strings, and where it is printed.
PUBLISHED: dict[str, tuple[str, str, str]] = {
    "maml": ("48.70 ± 1.84", "63.11 ± 0.92", "Finn et al. 2017, Table 1"),
    "maml (first order)": ("48.07 ± 1.75", "63.15 ± 0.91", "Finn et al. 2017, Table 1"),
    "anil": ("46.7 ± 0.4", "61.5 ± 0.5", "Raghu et al. 2020 (their MAML: 46.9 ± 0.2, 63.1 ± 0.4)"),
    "metasgd": ("50.47 ± 1.87", "64.03 ± 0.94", "Li et al. 2017"),
    "maml++": ("52.15 ± 0.26", "68.32 ± 0.44", "Antoniou et al. 2019"),
    "protonet": ("49.42 ± 0.78", "68.20 ± 0.66", "Snell et al. 2017 (30-way / 20-way training)"),
    "protonet (ResNet-12)": ("59.25 ± 0.64", "75.60 ± 0.48", "Lee et al. 2019 (MetaOptNet), Table 3"),
    "matching": ("43.40 ± 0.78", "51.09 ± 0.71", "Ravi & Larochelle 2017, Table 1 (re-implementation)"),
    "matching (FCE)": ("43.56 ± 0.84", "55.31 ± 0.73", "Ravi & Larochelle 2017, Table 1 (re-implementation)"),
    "relation": ("50.44 ± 0.82", "65.32 ± 0.70", "Sung et al. 2018"),
    "reptile": ("47.07 ± 0.26", "62.74 ± 0.37", "Nichol et al. 2018, Table 1 (49.97 / 65.99 with transduction)"),
    "meta-lstm": ("43.44 ± 0.77", "60.60 ± 0.71", "Ravi & Larochelle 2017, Table 1"),
    "leo": ("61.76 ± 0.08", "77.59 ± 0.12", "Rusu et al. 2019, Table 1 (WRN-28-10 embeddings)"),
}


def preset(algorithm: str, shots: int = 1, network: str | None = None) -> dict[str, Any]:
    """The settings for ``algorithm`` on 5-way ``shots``-shot mini-ImageNet (``network="resnet12"``: the ResNet-12
    variant, where one is listed). A copy: changing it changes nothing here."""
    table = RESNET12_PRESETS if network == "resnet12" else PRESETS
    if algorithm not in table:
        known = ", ".join(sorted(table))
        raise KeyError(
            f"no mini-ImageNet preset for {algorithm!r}{' with ResNet-12' if network else ''}; known: {known}"
        )
    if shots not in table[algorithm]:
        raise KeyError(f"mini-ImageNet presets are for 1 or 5 shots, not {shots}")
    return dict(table[algorithm][shots])


def published_table() -> str:
    """The published accuracies as a markdown table, with the "measured here" column the docs carry."""
    rows = [
        "| method | 5-way 1-shot (published) | 5-way 5-shot (published) | measured here | source |",
        "|---|---|---|---|---|",
    ]
    rows += [
        f"| {name} | {one} | {five} | not measured here | {source} |" for name, (one, five, source) in PUBLISHED.items()
    ]
    return "\n".join(rows)
