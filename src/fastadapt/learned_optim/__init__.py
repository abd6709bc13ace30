"""Learned optimisers (Andrychowicz et al. 2016): an LSTM that outputs parameter updates, meta-trained on a
family of problems and then usable as a ``torch.optim.Optimizer``.

    net = LSTMOptimizerNet()
    meta_train(net, Quadratics(10), iterations=500, horizon=100, unroll=20, batch=128)
    save_net(net, "quadratic.pt")
    opt = LSTMOptimizer(model.parameters(), net=load_net("quadratic.pt"))
"""

from fastadapt.learned_optim.net import LSTMOptimizer, LSTMOptimizerNet, load_net, preprocess, save_net
from fastadapt.learned_optim.problems import MLPBatch, OmniglotMLPs, ProblemBatch, QuadraticBatch, Quadratics
from fastadapt.learned_optim.training import (
    BASELINES,
    meta_train,
    run_baseline,
    run_learned,
    tune_learning_rate,
)

__all__ = [
    "BASELINES",
    "LSTMOptimizer",
    "LSTMOptimizerNet",
    "MLPBatch",
    "OmniglotMLPs",
    "ProblemBatch",
    "QuadraticBatch",
    "Quadratics",
    "load_net",
    "meta_train",
    "preprocess",
    "run_baseline",
    "run_learned",
    "save_net",
    "tune_learning_rate",
]
