"""Meta-learners, grouped by family, behind one interface (:class:`~fastadapt.algorithms.base.MetaLearner`).

Each method is one file that registers itself (fastadapt.algorithms.registry): ``algorithms()`` lists them.
"""

from __future__ import annotations

from fastadapt.algorithms.base import InnerLoopLearner, MetaLearner, MetaOutput, per_task_score, task_loss
from fastadapt.algorithms.metric.matching import MatchingNet
from fastadapt.algorithms.metric.protonet import ProtoNet
from fastadapt.algorithms.metric.relation import RelationNet
from fastadapt.algorithms.optimization.anil import ANIL
from fastadapt.algorithms.optimization.leo import LEO
from fastadapt.algorithms.optimization.maml import MAML
from fastadapt.algorithms.optimization.maml_plus_plus import MAMLPlusPlus
from fastadapt.algorithms.optimization.meta_lstm import MetaLSTM
from fastadapt.algorithms.optimization.metasgd import MetaSGD
from fastadapt.algorithms.optimization.reptile import Reptile
from fastadapt.algorithms.registry import Algorithm, algorithm, algorithms


def build_algorithm(config) -> MetaLearner:
    """The meta-learner (with its network) that a run configuration describes."""
    return algorithm(config.algorithm).build(config)


__all__ = [
    "ANIL",
    "Algorithm",
    "InnerLoopLearner",
    "LEO",
    "MAML",
    "MAMLPlusPlus",
    "MatchingNet",
    "MetaLSTM",
    "MetaLearner",
    "MetaOutput",
    "MetaSGD",
    "ProtoNet",
    "Reptile",
    "RelationNet",
    "algorithm",
    "algorithms",
    "build_algorithm",
    "per_task_score",
    "task_loss",
]
