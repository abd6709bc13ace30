"""Beyond MAML: other methods' meta-training steps beside the peers that have them, and fastadapt's evaluation speed.

Each method on its Omniglot setting (fastadapt's preset, from its paper), synthetic 1x28x28 episodes, every
implementation given the same network (torch's layers, as the peers' users write it), the same weights and the same
episodes:

- **ProtoNet** (Snell et al. 2017): one 60-way 1-shot episode with 5 queries per class per step, Conv-4 with max
  pooling and ``nn.BatchNorm2d`` (running statistics, as in the paper's code), a 64-d embedding; Adam. Peers:
  learn2learn's example procedure (``examples/vision/protonet_miniimagenet.py``: support and query embedded in one
  pass, prototypes by a mean, negative squared distances) and easyfsl 1.5.0's ``PrototypicalNetworks``
  (``process_support_set`` then ``forward``, as its training notebook does).
- **Meta-SGD** (Li et al. 2017): MAML's Omniglot step (workload (a) of bench/speed_maml.py: 32 tasks, 5-way 1-shot, 1
  query per class, stride-2 Conv-4), one second-order inner step, alpha starting at 0.4; Adam on theta and alpha.
  Peer: learn2learn's ``MetaSGD`` (``clone()``/``adapt()``, backward per task).
- **ANIL** (Raghu et al. 2020): the same workload, one second-order inner step of 0.4 on the head. Peer: learn2learn's
  ANIL example (``examples/vision/anil_fc100.py``: the body as a plain module, ``l2l.algorithms.MAML`` on the head,
  ``clone()``/``adapt()`` on the task's features, backward per task). The example embeds a task's support and query
  images in one pass; here the support and the query set each get their own pass, as in MAML and fastadapt's ANIL, so
  that batch norm's statistics, and so the function, are the same.
- **Reptile** (Nichol et al. 2018): 5 tasks per step, 5-way with 10 training shots per class, 5 Adam steps (lr 1e-3,
  beta1 0) on mini-batches of 10 support images, the Adam state carried from task to task, outer SGD with step 1.
  Peer: learn2learn's example procedure (``examples/vision/reptile_miniimagenet.py``: a ``deepcopy`` of the model
  per task, ``torch.optim.Adam`` loaded with the carried state, mini-batches drawn with ``torch.randint``; the outer
  gradient theta - mean(phi)). fastadapt carries the state its own way (each task of a meta-batch starts from the
  carried moments; after it, their mean): the same work per step, not the same numbers.

**Checked first**, in float64, from the same weights on the same episodes: each peer's loss (or predictions) and
meta-gradient against fastadapt's (relative error of the whole gradient, and per parameter tensor). Where the peer
computes another function, what differs is said and what can be compared is: easyfsl's logits are negative
*Euclidean* distances, not squared (the paper's), and in training it embeds the support and the query set in two
passes, so its logits are compared with fastadapt's in evaluation mode (batch norm's running statistics), as
-(easyfsl)^2 = fastadapt; for Reptile, both with fresh Adam states and the same mini-batches.

**Timed**: each implementation in its own process (VmHWM is its peak memory), ``--threads`` torch threads, a warm-up
step, then ``--rounds`` interleaved rounds of ``--steps`` training steps (meta-gradient and the outer step); median
seconds per step. fastadapt runs as ``fastadapt train`` does: ``auto`` measures its strategy, workers and layout on
the first batch where the method has them.

**Evaluation throughput**: fastadapt's ``evaluate`` on 600 test episodes (5-way 1-shot, 15 queries per class, the
Omniglot test protocol) for every method with an Omniglot preset, each built from its preset (``make_config``,
``build_algorithm``) and measured by ``auto`` on a training batch first, as in training's validation.

    bench/.venv-peers/bin/python bench/speed_methods.py --threads 2 --rounds 3 --steps 5

Writes bench/results/speed_methods.json and the tables as markdown beside it.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import speed_maml as bench
import torch
import torch.nn.functional as F
from common import RESULTS, ROOT, write_json
from torch import nn

#: The methods, their Omniglot training episodes and the implementations timed.
METHODS = {
    "protonet": dict(ways=60, shots=1, query=5, tasks=1, implementations=("fastadapt", "learn2learn", "easyfsl")),
    "metasgd": dict(ways=5, shots=1, query=1, tasks=32, implementations=("fastadapt", "learn2learn")),
    "anil": dict(ways=5, shots=1, query=1, tasks=32, implementations=("fastadapt", "learn2learn")),
    "reptile": dict(ways=5, shots=10, query=1, tasks=5, implementations=("fastadapt", "learn2learn")),
}
INNER_LR, INNER_STEPS, OUTER_LR = 0.4, 1, 1e-3  # MAML's Omniglot preset (Meta-SGD: alpha's start; ANIL: the head's)
REPTILE = dict(inner_lr=1e-3, inner_steps=5, inner_batch=10, betas=(0.0, 0.999), outer_lr=1.0)
#: Methods with an Omniglot preset whose evaluation is timed; "fomaml" is MAML's preset with --first-order.
EVALUATED = (
    "maml",
    "fomaml",
    "maml++",
    "metasgd",
    "anil",
    "reptile",
    "protonet",
    "matching",
    "relation",
    "meta-lstm",
    "mann",
    "hypernet",
)
EVAL_EPISODES, EVAL_WAYS, EVAL_SHOTS, EVAL_QUERY = 600, 5, 1, 15


# --- the networks and episodes ------------------------------------------------------------------------------------
class ProtoEncoder(nn.Module):
    """The Conv-4 embedding of Prototypical Networks as learn2learn's example writes it: 4 x [conv3x3, BatchNorm2d
    (running statistics), ReLU, MaxPool2d(2)], flattened (64-d for 28x28 images)."""

    def __init__(self, hidden: int = 64) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(4):
            layers += [nn.Conv2d(1 if i == 0 else hidden, hidden, 3, padding=1), nn.BatchNorm2d(hidden), nn.ReLU()]
            layers += [nn.MaxPool2d(2)]
        self.encoder = nn.Sequential(*layers)

    def forward(self, x):
        return self.encoder(x).flatten(1)


def make_model(method: str) -> nn.Module:
    torch.manual_seed(0)
    return ProtoEncoder() if method == "protonet" else bench.TorchConv4("stride")


def make_batch(method: str, seed: int = 1):
    """One training step's episodes: (tasks, ways*shots, 1, 28, 28) support sets, labels 0..ways-1 in class order
    within each shot (class k at k, ways + k, ...), the same for the query sets."""
    from fastadapt.tasks.episodes import TaskBatch

    s = METHODS[method]
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(s["ways"])
    return TaskBatch(
        torch.randn(s["tasks"], s["ways"] * s["shots"], 1, 28, 28, generator=g),
        labels.repeat(s["shots"]).repeat(s["tasks"], 1),
        torch.randn(s["tasks"], s["ways"] * s["query"], 1, 28, 28, generator=g),
        labels.repeat(s["query"]).repeat(s["tasks"], 1),
        s["ways"],
    )


class Body(nn.Module):
    """TorchConv4's layers before its head: the features ANIL's head adapts on (spatial mean of the last map)."""

    def __init__(self, network: bench.TorchConv4) -> None:
        super().__init__()
        self.features = network.features

    def forward(self, x):
        return self.features(x).mean(dim=(2, 3))


# --- each implementation: a meta-gradient (into .grad) and the outer optimiser --------------------------------------
def fastadapt_learner(method: str, model: nn.Module, strategy: str = "auto"):
    from fastadapt.algorithms import ANIL, MetaSGD, ProtoNet, Reptile

    if method == "protonet":  # as fastadapt.algorithms.metric.protonet.build: the encoder's weights channels-last
        return ProtoNet(model.to(memory_format=torch.channels_last))
    if method == "metasgd":
        return MetaSGD(model, INNER_LR, INNER_STEPS, strategy=strategy)
    if method == "anil":
        return ANIL(model, INNER_LR, INNER_STEPS, strategy=strategy, head="head.")
    return Reptile(
        model,
        inner_lr=REPTILE["inner_lr"],
        inner_steps=REPTILE["inner_steps"],
        inner_optimizer="adam",
        inner_batch_size=REPTILE["inner_batch"],
        adam_betas=REPTILE["betas"],
        adam_state="carried" if strategy == "auto" else "fresh",
        strategy=strategy,
    )


def fastadapt_step(method: str, model: nn.Module, batch, strategy: str = "auto"):
    from fastadapt.engine.strategy import choice_label, choose_strategy

    learner = fastadapt_learner(method, model, strategy)
    info = choose_strategy(learner, batch) if strategy == "auto" else {}  # what `fastadapt train` does first
    label = choice_label(info["strategy"], info.get("workers"), info.get("channels_last")) if info else None
    return learner, (lambda b: learner.meta_backward(b).loss), label


def learn2learn_protonet(model: nn.Module, ways: int, shots: int):
    """learn2learn's example: support and query in one pass, prototypes as means, negative squared distances."""

    def loss_of(batch):
        total = 0.0
        for i in range(batch.num_tasks):
            n_support = batch.support_x.shape[1]
            embeddings = model(torch.cat([batch.support_x[i], batch.query_x[i]]))
            support, query = embeddings[:n_support], embeddings[n_support:]
            prototypes = support.reshape(shots, ways, -1).mean(dim=0)
            n, m = query.shape[0], prototypes.shape[0]
            logits = -((query.unsqueeze(1).expand(n, m, -1) - prototypes.unsqueeze(0).expand(n, m, -1)) ** 2).sum(2)
            loss = F.cross_entropy(logits, batch.query_y[i]) / batch.num_tasks
            loss.backward()
            total += loss.detach()
        return total

    return loss_of


def easyfsl_protonet(model: nn.Module):
    """easyfsl's PrototypicalNetworks as its training loop uses it: process_support_set, then forward on the query."""
    from easyfsl.methods import PrototypicalNetworks

    classifier = PrototypicalNetworks(model)

    def loss_of(batch):
        total = 0.0
        for i in range(batch.num_tasks):
            classifier.process_support_set(batch.support_x[i], batch.support_y[i])
            loss = F.cross_entropy(classifier(batch.query_x[i]), batch.query_y[i]) / batch.num_tasks
            loss.backward()
            total += loss.detach()
        return total

    return classifier, loss_of


def learn2learn_metasgd(model: nn.Module, first_order: bool = False):
    l2l = bench.import_learn2learn()
    meta = l2l.algorithms.MetaSGD(model, lr=INNER_LR, first_order=first_order)

    def loss_of(batch):
        total = 0.0
        for i in range(batch.num_tasks):
            learner = meta.clone()
            for _ in range(INNER_STEPS):
                learner.adapt(F.cross_entropy(learner(batch.support_x[i]), batch.support_y[i]))
            loss = F.cross_entropy(learner(batch.query_x[i]), batch.query_y[i]) / batch.num_tasks
            loss.backward()
            total += loss.detach()
        return total

    return meta, loss_of


def learn2learn_anil(model: bench.TorchConv4, first_order: bool = False):
    l2l = bench.import_learn2learn()
    body, head = Body(model), l2l.algorithms.MAML(model.head, lr=INNER_LR, first_order=first_order)

    def loss_of(batch):
        total = 0.0
        for i in range(batch.num_tasks):
            support, query = body(batch.support_x[i]), body(batch.query_x[i])
            learner = head.clone()
            for _ in range(INNER_STEPS):
                learner.adapt(F.cross_entropy(learner(support), batch.support_y[i]))
            loss = F.cross_entropy(learner(query), batch.query_y[i]) / batch.num_tasks
            loss.backward()
            total += loss.detach()
        return total

    return loss_of


def learn2learn_reptile(model: nn.Module, indices=None, carry: bool = True):
    """learn2learn's Reptile example: per task a deepcopy, Adam (beta1 0) loaded with the carried state, steps on
    mini-batches drawn with torch.randint (or the given ``indices``, (tasks, steps, batch)); theta's gradient is
    theta - mean_i(phi_i), for an outer SGD step. ``carry=False``: a fresh Adam per task."""
    state = torch.optim.Adam(model.parameters(), lr=REPTILE["inner_lr"], betas=REPTILE["betas"]).state_dict()

    def loss_of(batch):
        nonlocal state
        for p in model.parameters():
            p.grad = torch.zeros_like(p.data)
        for i in range(batch.num_tasks):
            learner = copy.deepcopy(model)
            adapt_opt = torch.optim.Adam(learner.parameters(), lr=REPTILE["inner_lr"], betas=REPTILE["betas"])
            if carry:
                adapt_opt.load_state_dict(state)
            support_x, support_y = batch.support_x[i], batch.support_y[i]
            for step in range(REPTILE["inner_steps"]):
                if indices is None:
                    chosen = torch.randint(support_x.size(0), size=(REPTILE["inner_batch"],))
                else:
                    chosen = indices[i, step]
                adapt_opt.zero_grad()
                F.cross_entropy(learner(support_x[chosen]), support_y[chosen]).backward()
                adapt_opt.step()
            with torch.no_grad():  # the example's evaluation of the adapted model on the query set
                F.cross_entropy(learner(batch.query_x[i]), batch.query_y[i])
            if carry:
                state = adapt_opt.state_dict()
            for p, adapted in zip(model.parameters(), learner.parameters()):
                p.grad.data.add_(adapted.data, alpha=-1.0)
        for p in model.parameters():
            p.grad.data.mul_(1.0 / batch.num_tasks).add_(p.data)

    return loss_of


def step_function(method: str, implementation: str, model: nn.Module, batch):
    """(parameters of the outer optimiser, meta-gradient function, auto's choice or None)."""
    s = METHODS[method]
    if implementation == "fastadapt":
        learner, loss_of, label = fastadapt_step(method, model, batch)
        return list(learner.parameters()), loss_of, label
    if method == "protonet" and implementation == "learn2learn":
        return list(model.parameters()), learn2learn_protonet(model, s["ways"], s["shots"]), None
    if method == "protonet":
        classifier, loss_of = easyfsl_protonet(model)
        return list(classifier.parameters()), loss_of, None
    if method == "metasgd":
        meta, loss_of = learn2learn_metasgd(model)
        return list(meta.parameters()), loss_of, None
    if method == "anil":
        return list(model.parameters()), learn2learn_anil(model), None
    return list(model.parameters()), learn2learn_reptile(model), None


def outer_optimizer(method: str, parameters):
    if method == "reptile":
        return torch.optim.SGD(parameters, lr=REPTILE["outer_lr"])
    return torch.optim.Adam(parameters, lr=OUTER_LR)


# --- the checks (float64) -----------------------------------------------------------------------------------------
def relative_errors(reference: dict[str, torch.Tensor], got: dict[str, torch.Tensor]) -> dict[str, float]:
    total = torch.sqrt(sum(g.square().sum() for g in reference.values()))
    whole = torch.sqrt(sum((got[k] - g).square().sum() for k, g in reference.items())) / total
    per_tensor = max(((got[k] - g).norm() / total).item() for k, g in reference.items())
    return {"gradient": whole.item(), "gradient_max_tensor": per_tensor}


def float64_case(method: str):
    return make_model(method).double(), make_batch(method).with_dtype(torch.float64)


def named_gradients(module: nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    return {prefix + n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}


def check_method(method: str) -> dict:
    """Each peer against fastadapt in float64 (see the module docstring)."""
    from fastadapt.algorithms.optimization.reptile import minibatch_indices
    from fastadapt.engine.functional import parameter_key

    checks = {}
    model, batch = float64_case(method)
    if method == "reptile":  # fresh Adam states and the same mini-batches in both
        torch.manual_seed(5)
        indices = minibatch_indices(
            batch.num_tasks, batch.support_x.shape[1], REPTILE["inner_batch"], REPTILE["inner_steps"]
        )
        torch.manual_seed(5)
        fastadapt_step("reptile", model, batch, strategy="loop")[1](batch)
        reference = named_gradients(model)
        peer, _ = float64_case(method)
        learn2learn_reptile(peer, indices=indices, carry=False)(batch)
        return {"learn2learn": relative_errors(reference, named_gradients(peer))}
    learner, loss_of, _ = fastadapt_step(method, model, batch)
    loss = float(loss_of(batch))
    reference = named_gradients(model)
    if method == "metasgd":
        reference |= {
            f"lr:{n}": learner.inner_lrs[parameter_key(n)].grad.clone() for n in dict(model.named_parameters())
        }
    peer, _ = float64_case(method)
    if method == "protonet":
        peer_loss = float(learn2learn_protonet(peer, METHODS[method]["ways"], METHODS[method]["shots"])(batch))
        checks["learn2learn"] = {
            "loss": abs(peer_loss - loss) / abs(loss),
            **relative_errors(reference, named_gradients(peer)),
        }
        # easyfsl: another function in training; its evaluation-mode logits against fastadapt's
        learner.eval()
        with torch.no_grad():
            ours = learner.predict(batch)[0]
            easy, _ = easyfsl_protonet(copy.deepcopy(model).eval())
            easy.process_support_set(batch.support_x[0], batch.support_y[0])
            theirs = -easy(batch.query_x[0]).square()
        checks["easyfsl"] = {"eval_logits_as_squared": ((theirs - ours).norm() / ours.norm()).item()}
        return checks
    if method == "metasgd":
        meta, peer_loss_of = learn2learn_metasgd(peer)
        peer_loss = float(peer_loss_of(batch))
        got = named_gradients(peer) | {f"lr:{n}": lr.grad for (n, _), lr in zip(peer.named_parameters(), meta.lrs)}
    else:
        peer_loss = float(learn2learn_anil(peer)(batch))
        got = named_gradients(peer)
    checks["learn2learn"] = {"loss": abs(peer_loss - loss) / abs(loss), **relative_errors(reference, got)}
    return checks


# --- a worker process: one implementation of one method -----------------------------------------------------------
def worker(method: str, implementation: str, threads: int) -> None:
    torch.set_num_threads(threads)
    if implementation == "easyfsl":
        sys.meta_path.insert(
            0, bench._EmptyModuleFinder()
        )  # easyfsl imports torchvision, which its ProtoNet never uses
    model = make_model(method)
    batch = make_batch(method)
    started = time.perf_counter()
    parameters, loss_of, label = step_function(method, implementation, model, batch)
    optimizer = outer_optimizer(method, parameters)

    def training_step():
        optimizer.zero_grad(set_to_none=True)
        loss_of(batch)
        optimizer.step()

    training_step()  # warm-up
    print(json.dumps({"ready": True, "setup_s": time.perf_counter() - started, "auto_chose": label}), flush=True)
    bench.serve_timing(training_step)


class Worker(bench.Worker):
    def __init__(self, method: str, implementation: str, threads: int) -> None:
        command = [sys.executable, __file__, "--worker", method, implementation, "--threads", str(threads)]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)


def time_method(method: str, rounds: int, steps: int, threads: int) -> dict:
    workers = {}
    for name in METHODS[method]["implementations"]:  # one at a time: auto's measuring has the CPU to itself
        workers[name] = Worker(method, name, threads)
        workers[name].wait_ready()
    times = {name: [] for name in workers}
    for _ in range(rounds):
        for name, w in workers.items():
            times[name] += w.ask(op="time", steps=steps)["times"]
    memory = {name: w.close() for name, w in workers.items()}
    return {
        name: {
            "median_s": statistics.median(times[name]),
            "times_s": times[name],
            "vmhwm_mib": memory[name],
            "setup_s": workers[name].ready["setup_s"],
            "auto_chose": workers[name].ready["auto_chose"],
        }
        for name in workers
    }


# --- evaluation throughput ----------------------------------------------------------------------------------------
class Episodes:
    """A task source of fixed synthetic episodes, drawn once (so that drawing them is not timed)."""

    def __init__(self, episodes: int, ways: int, shots: int, query: int, seed: int = 2, size: int = 28) -> None:
        from fastadapt.tasks.episodes import TaskBatch

        g = torch.Generator().manual_seed(seed)
        labels = torch.arange(ways)
        self.batch = TaskBatch(
            torch.randn(episodes, ways * shots, 1, size, size, generator=g),
            labels.repeat(shots).repeat(episodes, 1),
            torch.randn(episodes, ways * query, 1, size, size, generator=g),
            labels.repeat(query).repeat(episodes, 1),
            ways,
        )
        self.next = 0

    def sample(self, num_tasks: int):
        part = self.batch.tasks(self.next, self.next + num_tasks)
        self.next += num_tasks
        return part


def evaluation_worker(method: str, threads: int) -> None:
    """fastadapt's evaluate() on EVAL_EPISODES episodes for ``method``'s Omniglot preset, after auto's measuring on a
    training batch (as training's validation runs)."""
    from fastadapt.algorithms import build_algorithm
    from fastadapt.config import make_config
    from fastadapt.engine.strategy import choice_label, choose_strategy, needs_measuring
    from fastadapt.evaluate import evaluate

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    name, overrides = ("maml", {"first_order": True}) if method == "fomaml" else (method, {})
    config = make_config(name, "omniglot", **overrides)
    learner = build_algorithm(config)
    size = config.image_size or 28  # the preset's image size (MANN's 20x20), else Omniglot's 28x28
    label = None
    if needs_measuring(learner):
        train = Episodes(
            config.meta_batch_size, config.train_ways_or_ways, config.train_shots_or_shots, config.query, size=size
        )
        info = choose_strategy(learner, train.sample(config.meta_batch_size))
        label = choice_label(learner.strategy, learner.workers, learner.channels_last)
        del info
    source = Episodes(EVAL_EPISODES, EVAL_WAYS, EVAL_SHOTS, EVAL_QUERY, size=size)
    evaluate(learner, Episodes(10, EVAL_WAYS, EVAL_SHOTS, EVAL_QUERY, seed=3, size=size), 10)  # warm-up
    started = time.perf_counter()
    scores = evaluate(learner, source, EVAL_EPISODES)
    seconds = time.perf_counter() - started
    print(
        json.dumps(
            {
                "seconds": seconds,
                "episodes_per_s": EVAL_EPISODES / seconds,
                "episodes": len(scores),
                "auto_chose": label,
                "eval_inner_steps": getattr(learner, "eval_inner_steps", None),
                "vmhwm_mib": bench.peak_resident_mib(),
            }
        ),
        flush=True,
    )


def time_evaluation(method: str, threads: int) -> dict:
    command = [sys.executable, __file__, "--evaluation-worker", method, "--threads", str(threads)]
    output = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=True).stdout
    return json.loads(output.strip().splitlines()[-1])


# --- reporting ----------------------------------------------------------------------------------------------------
def markdown(record: dict) -> str:
    lines = []
    if record["steps"]:
        lines += [
            "| method | setting | fastadapt | learn2learn | easyfsl | fastadapt vs fastest peer "
            "| VmHWM fastadapt / learn2learn |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
    for method, r in record["steps"].items():
        s = METHODS[method]
        t = r["timings"]
        cells = []
        for name in ("fastadapt", "learn2learn", "easyfsl"):
            text = f"{t[name]['median_s']:.3f}" if name in t else "-"
            if name in t and t[name]["auto_chose"]:
                text += f" ({t[name]['auto_chose']})"
            cells.append(text)
        peers = {n: v["median_s"] for n, v in t.items() if n != "fastadapt"}
        fastest = min(peers, key=peers.get)
        setting = f"{s['tasks']} x {s['ways']}-way {s['shots']}-shot, {s['query']} q/class"
        memory = t["fastadapt"]["vmhwm_mib"] / t["learn2learn"]["vmhwm_mib"]
        lines.append(
            f"| {method} | {setting} | "
            + " | ".join(cells)
            + f" | {peers[fastest] / t['fastadapt']['median_s']:.2f}x vs {fastest} | {memory:.2f} |"
        )
    if record.get("evaluation"):
        lines += [
            "",
            "| method | auto chose | 600 episodes (s) | episodes/s | VmHWM (MiB) |",
            "| --- | --- | --- | --- | --- |",
        ]
        for method, e in record["evaluation"].items():
            lines.append(
                f"| {method} | {e['auto_chose'] or '-'} | {e['seconds']:.2f} | {e['episodes_per_s']:.0f} | "
                f"{e['vmhwm_mib']:.0f} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", nargs=2, metavar=("METHOD", "IMPLEMENTATION"), help=argparse.SUPPRESS)
    parser.add_argument("--evaluation-worker", metavar="METHOD", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads per process")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per method")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per implementation per round")
    parser.add_argument(
        "--methods", nargs="*", default=list(METHODS), choices=list(METHODS), help="none: evaluation only"
    )
    parser.add_argument(
        "--evaluate", nargs="*", default=list(EVALUATED), choices=EVALUATED, help="methods to meta-test"
    )
    parser.add_argument("--check-only", action="store_true", help="the float64 checks only, nothing timed")
    parser.add_argument("--out", default=str(RESULTS / "speed_methods.json"))
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker, args.threads)
        return
    if args.evaluation_worker:
        evaluation_worker(args.evaluation_worker, args.threads)
        return
    sys.meta_path.insert(0, bench._EmptyModuleFinder())  # learn2learn's and easyfsl's unused imports (speed_maml)
    started = time.time()
    steps = {}
    for method in args.methods:
        torch.set_num_threads(1)
        checks = check_method(method)
        print(f"== {method}: float64 checks {json.dumps(checks)}", flush=True)
        steps[method] = {"checks": checks}
        if not args.check_only:
            steps[method]["timings"] = time_method(method, args.rounds, args.steps, args.threads)
            for name, t in steps[method]["timings"].items():
                print(f"  {name:<12} {t['median_s']:.3f} s/step  VmHWM {t['vmhwm_mib']:.0f} MiB ({t['auto_chose']})")
    evaluation = {}
    for method in [] if args.check_only else args.evaluate:
        evaluation[method] = time_evaluation(method, args.threads)
        print(f"  evaluate {method:<10} {evaluation[method]['seconds']:.2f} s for {EVAL_EPISODES} episodes", flush=True)
    from importlib.metadata import version

    record = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()} {platform.release()}",
        "torch": torch.__version__,
        "peers": {name: version(name) for name in ("learn2learn", "easyfsl")},
        "threads": args.threads,
        "niceness": os.nice(0),
        "load_average_at_end": os.getloadavg(),
        "rounds": args.rounds,
        "steps_per_round": args.steps,
        "wall_s": round(time.time() - started, 1),
        "steps": steps,
        "evaluation": evaluation,
    }
    out = Path(args.out)
    write_json(out, record)
    if not args.check_only:
        out.with_suffix(".md").write_text(markdown(record) + "\n")
        print("\n" + markdown(record))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
