"""Speed of one full MAML meta-training step: fastadapt beside learn2learn, higher, torchopt and a plain loop.

One step = the meta-loss of a meta-batch of 32 Omniglot-shaped (1x28x28) 5-way 1-shot tasks, its
meta-gradient, and the outer Adam step, on two workloads (issue 3, "Speed"):

- (a) ``stride``: MAML's Omniglot network (stride-2 Conv-4), 1 query per class;
- (b) ``pool``: the max-pool Conv-4 (batch statistics per episode), 15 queries per class;

each with 1 and 5 inner steps, second and first order. Implementations, each in its own process (so that
VmHWM, the peak resident memory, is per implementation): fastadapt ``loop``, ``vmap`` and ``auto`` (which
measures both on the first batch and keeps the faster), ``compile`` (``auto`` with ``compile=True``: each
strategy's meta-gradient through ``torch.compile``; its compile time is reported as set-up),
learn2learn's ``MAML`` (``clone()``/``adapt()``), higher's ``innerloop_ctx``, torchopt's functional API
(``torchopt.sgd`` + ``apply_updates``) and a plain per-task loop with ``torch.autograd.grad``. Every
implementation is given the same ``nn.Module``, from the same initial weights, and the same batch. By default
(``--model torch``) that network is built from torch's layers, as learn2learn's users write it (``TorchConv4``),
and each library runs it its own way: fastadapt swaps in its faster, exact equivalents (fastadapt.engine.fastlayers).
``--model fastadapt`` gives every implementation fastadapt's own ``Conv4``/``Conv4Stride`` and so its faster layers.

Before timing, every implementation's float32 meta-gradient on one batch is compared with the plain loop's
computed in float64 (the largest relative error per parameter tensor is printed). It must be within
``GRADIENT_TOLERANCE`` or within 3x the float32 plain loop's own error, whichever is larger (asserted):
float32 rounding grows with the inner steps, to 2e-3 for the plain loop itself at (b), 5 first-order steps.
Timing is interleaved: in each of ``--rounds`` rounds every implementation runs ``--steps`` steps in turn,
so all see the same machine load.
Reported: median seconds per step over all timed steps (after one warm-up step), the ratio of each peer's
time to fastadapt auto's (> 1: fastadapt is faster), and VmHWM.

    bash bench/setup_peers.sh     # bench/.venv-peers: torch 2.13.0 CPU, fastadapt, learn2learn, higher, torchopt
    nice -n -10 bench/.venv-peers/bin/python bench/speed_maml.py --rounds 2 --steps 5

Writes bench/results/speed_maml.json, bench/results/speed_maml.md (the table) and docs/speed_maml.png.
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import types
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F
from common import ROOT, save_figure, write_json
from torch import nn
from torch.func import functional_call

WAYS, SHOTS, META_BATCH, INNER_LR, OUTER_LR = 5, 1, 32, 0.4, 1e-3
WORKLOADS = {"stride": 1, "pool": 15}  # queries per class
#: fastadapt-vmap runs the meta-batch 8 tasks per vectorised call (the default); fastadapt-vmap-all all 32 at once;
#: fastadapt-fold folds tasks into the channels of one network pass (fastadapt.engine.folding; auto's vectorised
#: candidate for these networks, in place of vmap);
#: fastadapt-compile is auto with ``compile=True`` (its one-off compile time is reported as "setup");
#: fastadapt-auto-serial is auto with ``workers=1``: with more than one thread, tasks run one at a time and each
#: operation uses every thread, as the peers do (the others run one task per thread, fastadapt.engine.taskpool);
#: fastadapt-auto-torchlayers is auto with ``fast_layers=False``: it runs torch's layers as given;
#: fastadapt-auto-standard is auto with ``channels_last=False``: the images stay in the standard (NCHW) layout;
#: fastadapt-auto-nokernel is auto with FASTADAPT_NATIVE=0: torch's operations instead of fastadapt's C++ kernel
#: (fastadapt.engine.native) for batch norm + max pool + ReLU.
IMPLEMENTATIONS = (
    "fastadapt-auto",
    "fastadapt-auto-serial",
    "fastadapt-auto-torchlayers",
    "fastadapt-auto-standard",
    "fastadapt-auto-nokernel",
    "fastadapt-loop",
    "fastadapt-vmap",
    "fastadapt-vmap-all",
    "fastadapt-fold",
    "fastadapt-compile",
    "learn2learn",
    "higher",
    "torchopt",
    "parallel-metalearn",
    "parallel-metalearn-bn",
    "plain",
)
#: parallel-metalearn runs the network as given (torch's nn.BatchNorm2d under its vmap); parallel-metalearn-bn with
#: the library's own BatchNorm in its place (with_metalearn_batch_norm).
PEERS = ("learn2learn", "higher", "torchopt", "parallel-metalearn", "parallel-metalearn-bn", "plain")
#: A peer counts as correct where its float64 meta-gradient (first FLOAT64_TASKS tasks) is the plain loop's to this
#: relative error per parameter tensor (the tolerance of fastadapt's gradient guard; exact ones agree to ~1e-15).
FLOAT64_TOLERANCE, FLOAT64_TASKS = 1e-8, 4
#: The network every implementation is given: "torch", torch's layers as learn2learn users write the Conv-4 (each
#: library runs it its own way; fastadapt swaps in its faster equivalents, fastadapt.engine.fastlayers), or "fastadapt",
#: fastadapt.nets' Conv4/Conv4Stride (plain torch modules too; the older protocol, kept to compare with earlier
#: records). Set from --model.
MODELS = ("torch", "fastadapt")
MODEL = "torch"
#: --keep-freed-memory: every worker, peers included, first calls fastadapt.engine.taskpool.keep_freed_memory (as
#: ``fastadapt train`` once did): a setting of the process's C library, so every
#: implementation gets it or none.
KEEP_FREED_MEMORY = False
#: float32 meta-gradients of different but exact implementations agree to about this relative error.
GRADIENT_TOLERANCE = 1e-3


def float64_reference(workload: str, steps: int, first_order: bool) -> list[torch.Tensor]:
    """The plain loop's meta-gradient in float64, from the same weights and batch as every worker."""
    model = make_model(workload).double()
    batch = make_batch(workload)
    batch = type(batch)(batch.support_x.double(), batch.support_y, batch.query_x.double(), batch.query_y, batch.ways)
    plain_step_fn(model, steps, first_order)(batch)
    return [p.grad.float() for p in model.parameters()]


# --- learn2learn imports modules its MAML never uses ---------------------------------------------------------
#: Imported by learn2learn at load time but not by its MAML; torchvision does not load beside the CPU torch
#: wheel, and gym and scipy are not installed. They are replaced by empty modules, in this process only.
UNUSED_BY_LEARN2LEARN_MAML = ("torchvision", "gym", "scipy")


class _EmptyModule(types.ModuleType):
    """A package whose every attribute is an inert class (enough for learn2learn's import-time code)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.__path__: list[str] = []

    def __getattr__(self, attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        inert = type(attr, (), {"__init__": lambda self, *a, **k: None, "__call__": lambda self, *a, **k: None})
        setattr(self, attr, inert)
        return inert


class _EmptyModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in UNUSED_BY_LEARN2LEARN_MAML:
            return importlib.util.spec_from_loader(name, self)
        return None

    def create_module(self, spec):
        return _EmptyModule(spec.name)

    def exec_module(self, module):
        pass


def import_learn2learn():
    sys.meta_path.insert(0, _EmptyModuleFinder())
    import learn2learn

    return learn2learn


# --- the workload -----------------------------------------------------------------------------------------------
class TorchConv4(nn.Module):
    """The Conv-4 as a user of learn2learn writes it (its ``OmniglotCNN``/``ConvBase``, MAML's reference code):
    4 x [conv3x3, ``nn.BatchNorm2d(track_running_stats=False)``, ``nn.ReLU``(, ``nn.MaxPool2d(2)``)], then a linear
    classifier on the flattened map (max-pool) or its spatial mean (stride 2). The same functions as
    ``fastadapt.nets``' ``Conv4``/``Conv4Stride``, from torch's own layers."""

    def __init__(self, workload: str, hidden: int = 64) -> None:
        super().__init__()
        self.strided = workload == "stride"
        layers: list[nn.Module] = []
        for i in range(4):
            layers += [
                nn.Conv2d(1 if i == 0 else hidden, hidden, 3, stride=2 if self.strided else 1, padding=1),
                nn.BatchNorm2d(hidden, track_running_stats=False),
                nn.ReLU(),
            ]
            layers += [] if self.strided else [nn.MaxPool2d(2)]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(hidden, WAYS)  # 28x28 -> 1x1 after four poolings

    def forward(self, x):
        features = self.features(x)
        return self.head(features.mean(dim=(2, 3)) if self.strided else features.flatten(1))


def make_model(workload: str) -> nn.Module:
    from fastadapt.nets import Conv4, Conv4Stride

    torch.manual_seed(0)
    if MODEL == "torch":
        return TorchConv4(workload)
    if workload == "stride":
        return Conv4Stride(1, 64, WAYS, norm="episode")
    return Conv4(1, 64, WAYS, norm="episode", image_size=28)


def make_batch(workload: str, seed: int = 1):
    from fastadapt.tasks.episodes import TaskBatch

    query = WORKLOADS[workload]
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(WAYS)
    return TaskBatch(
        torch.randn(META_BATCH, WAYS * SHOTS, 1, 28, 28, generator=g),
        labels.repeat_interleave(SHOTS).repeat(META_BATCH, 1),
        torch.randn(META_BATCH, WAYS * query, 1, 28, 28, generator=g),
        labels.repeat_interleave(query).repeat(META_BATCH, 1),
        WAYS,
    )


# --- one meta-gradient per implementation (accumulated into model.parameters().grad) ----------------------------
def fastadapt_step_fn(model, variant, steps, first_order, batch):
    from fastadapt.algorithms import MAML
    from fastadapt.engine.strategy import choose_strategy

    strategy, _, option = variant.partition("-")
    chunking = {"vmap_chunk": 0} if option == "all" else {}  # "vmap-all": the whole meta-batch in one vmap call
    options = {"workers": 1} if option == "serial" else {}  # "auto-serial": one task at a time, on all threads
    options |= {"fast_layers": False} if option == "torchlayers" else {}  # torch's layers as the user wrote them
    options |= {"channels_last": False} if option == "standard" else {}  # images in the standard layout
    if option == "nokernel":  # each implementation has its own process: this one never loads the kernel
        os.environ["FASTADAPT_NATIVE"] = "0"
    compile = strategy == "compile"  # "compile": auto, each strategy's meta-gradient through torch.compile
    strategy = "auto" if compile else strategy
    learner = MAML(
        model, INNER_LR, steps, first_order=first_order, strategy=strategy, compile=compile, **chunking, **options
    )
    info = choose_strategy(learner, batch)  # auto's strategy, and workers (one, or one per thread) unless fixed
    return learner.meta_backward, info  # what `fastadapt train` calls (per-task backward for loop)


def learn2learn_step_fn(model, steps, first_order):
    l2l = import_learn2learn()
    maml = l2l.algorithms.MAML(model, lr=INNER_LR, first_order=first_order)

    def step(batch):
        for i in range(batch.num_tasks):  # learn2learn's idiom: clone, adapt, backward per task
            learner = maml.clone()
            for _ in range(steps):
                learner.adapt(F.cross_entropy(learner(batch.support_x[i]), batch.support_y[i]))
            (F.cross_entropy(learner(batch.query_x[i]), batch.query_y[i]) / batch.num_tasks).backward()

    return step


def higher_step_fn(model, steps, first_order):
    import higher

    inner_opt = torch.optim.SGD(model.parameters(), lr=INNER_LR)
    # First order: the inner gradients are constants (FOMAML), as in the other implementations.
    callback = (lambda grads: [g.detach() for g in grads]) if first_order else None

    def step(batch):
        for i in range(batch.num_tasks):
            with higher.innerloop_ctx(model, inner_opt, copy_initial_weights=False) as (fmodel, diffopt):
                for _ in range(steps):
                    diffopt.step(
                        F.cross_entropy(fmodel(batch.support_x[i]), batch.support_y[i]), grad_callback=callback
                    )
                (F.cross_entropy(fmodel(batch.query_x[i]), batch.query_y[i]) / batch.num_tasks).backward()

    return step


def torchopt_step_fn(model, steps, first_order):
    import torchopt

    names = [n for n, _ in model.named_parameters()]
    inner_opt = torchopt.sgd(lr=INNER_LR)

    def step(batch):
        for i in range(batch.num_tasks):
            params = tuple(model.parameters())
            state = inner_opt.init(params)
            for _ in range(steps):
                logits = functional_call(model, dict(zip(names, params)), (batch.support_x[i],))
                grads = torch.autograd.grad(
                    F.cross_entropy(logits, batch.support_y[i]), params, create_graph=not first_order
                )
                updates, state = inner_opt.update(grads, state, inplace=False)
                params = torchopt.apply_updates(params, updates, inplace=False)
            logits = functional_call(model, dict(zip(names, params)), (batch.query_x[i],))
            (F.cross_entropy(logits, batch.query_y[i]) / batch.num_tasks).backward()

    return step


class _MetalearnBackbone(nn.Module):
    """The benchmark network's feature layers as parallel-metalearn's ``MAML_Model`` wants a backbone: its
    ``forward`` takes the keyword arguments MAML passes down (``training``, ``num_step``), which torch's
    ``nn.Sequential`` does not accept. Shares the network's modules and parameters."""

    def __init__(self, network: TorchConv4) -> None:
        super().__init__()
        self.features, self.strided = network.features, network.strided

    def forward(self, x, **context):
        features = self.features(x)
        return features.mean(dim=(2, 3)) if self.strided else features.flatten(1)


class _MetalearnHead(nn.Module):
    """The network's classifier with the keyword arguments MAML passes down (see ``_MetalearnBackbone``)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.linear = linear

    def forward(self, x, **context):
        return self.linear(x)


class _GradientOnly:
    """The outer optimiser given to parallel-metalearn's MAML: its ``step()`` calls ``zero_grad()``, computes the
    meta-gradient and calls ``step()``; here both calls do nothing, so that the meta-gradient can be checked
    before any update, and the benchmark's own Adam (the same for every implementation) takes the step."""

    def zero_grad(self, set_to_none: bool = True) -> None:
        pass

    def step(self) -> None:
        pass

    def add_param_group(self, group) -> None:
        raise AssertionError("MAML with a fixed inner learning rate has no inner-loop meta-parameters")


def share_parameters(copy: nn.Module, original: nn.Module) -> None:
    """Make ``copy``'s parameters the very tensors of ``original`` (same names), so that gradients reach it."""
    originals = dict(original.named_parameters())
    for name, _ in list(copy.named_parameters()):
        owner, _, attribute = name.rpartition(".")
        setattr(copy.get_submodule(owner), attribute, originals[name])


def with_metalearn_batch_norm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with each ``nn.BatchNorm2d`` replaced by parallel-metalearn's own ``BatchNorm`` (batch
    statistics written from means and variances), as the library's Conv-4 backbone (``CNN2D4L_Backbone``) is built,
    sharing ``model``'s parameters. The library's ``ModelTranslator.convert_to_functional``, meant to do this,
    raises in 0.5.6 (``TypeError: BatchNorm.__init__() got an unexpected keyword argument 'learn_gamma'``)."""
    import copy

    from metalearn.nn_models.basic_layers import BatchNorm

    converted = copy.deepcopy(model)
    for name, module in list(converted.named_modules()):
        if isinstance(module, nn.BatchNorm2d):
            owner, _, attribute = name.rpartition(".")
            replacement = BatchNorm(
                module.num_features, eps=module.eps, affine=module.affine, track_running_stats=False
            )
            setattr(converted.get_submodule(owner), attribute, replacement)
    share_parameters(converted, model)
    return converted


def parallel_metalearn_step_fn(model, steps, first_order, library_norm=False, chunk_size=None):
    """parallel-metalearn 0.5.6 (module ``metalearn``) as its README shows it: ``MAML_Model(backbone, head)``,
    ``InnerSGD`` (a fixed learning rate: ``learn_lr=False``, else it would learn one, as Meta-SGD does),
    ``CrossEntropy(metric_fn=CategoricalAccuracy())`` and ``MAML(...).step(task_iterator)`` with its default
    backend, ``vmap`` over the tasks, ``chunk_size`` tasks per vmap call (its default 80: the whole meta-batch of
    32). ``library_norm``: the network's batch norm becomes the library's own (``with_metalearn_batch_norm``)."""
    from metalearn.algorithms import MAML as MetalearnMAML
    from metalearn.inner_optimizers import InnerSGD
    from metalearn.loss import CategoricalAccuracy, CrossEntropy
    from metalearn.model_wrappers import MAML_Model

    network = with_metalearn_batch_norm(model) if library_norm else model
    wrapped = MAML_Model(backbone=_MetalearnBackbone(network), head=_MetalearnHead(network.head))
    dtype = next(model.parameters()).dtype
    inner = InnerSGD(
        wrapped.get_fast_weights(), first_order=first_order, inner_lr=INNER_LR, max_inner_steps=steps, learn_lr=False
    )
    inner.to(dtype)  # its learning rate in the network's precision (0.4 in float32 is 0.4 + 6e-9)
    options = {} if chunk_size is None else {"chunk_size": chunk_size}
    maml = MetalearnMAML(
        model=wrapped,
        optimizer=_GradientOnly(),
        inner_optimizer=inner,
        support_loss_fn=CrossEntropy(metric_fn=CategoricalAccuracy()),
        inner_steps=steps,
        device=torch.device("cpu"),
        **options,
    )

    def step(batch):
        maml.step(iter([(batch.support_x, {"labels": batch.support_y}, batch.query_x, {"labels": batch.query_y})]))

    return step


def plain_step_fn(model, steps, first_order):
    names = [n for n, _ in model.named_parameters()]

    def step(batch):
        for i in range(batch.num_tasks):
            fast = list(model.parameters())
            for _ in range(steps):
                logits = functional_call(model, dict(zip(names, fast)), (batch.support_x[i],))
                grads = torch.autograd.grad(
                    F.cross_entropy(logits, batch.support_y[i]), fast, create_graph=not first_order
                )
                fast = [w - INNER_LR * g for w, g in zip(fast, grads)]
            logits = functional_call(model, dict(zip(names, fast)), (batch.query_x[i],))
            (F.cross_entropy(logits, batch.query_y[i]) / batch.num_tasks).backward()

    return step


def peer_step_fn(implementation, model, steps, first_order):
    """A peer's meta-gradient function (accumulates into ``model``'s ``.grad``)."""
    builders = {
        "learn2learn": learn2learn_step_fn,
        "higher": higher_step_fn,
        "torchopt": torchopt_step_fn,
        "parallel-metalearn": parallel_metalearn_step_fn,
        "parallel-metalearn-bn": lambda *a: parallel_metalearn_step_fn(*a, library_norm=True),
        "plain": plain_step_fn,
    }
    return builders[implementation](model, steps, first_order)


def make_step_fn(implementation, model, steps, first_order, batch):
    if implementation.startswith("fastadapt-"):
        return fastadapt_step_fn(model, implementation.split("-", 1)[1], steps, first_order, batch)
    return peer_step_fn(implementation, model, steps, first_order), {}


def float64_meta_gradient(implementation, workload, steps, first_order, tasks=FLOAT64_TASKS):
    """A peer's meta-gradient in float64 on the first ``tasks`` tasks of the batch, from the same weights. torch's
    default dtype is float64 meanwhile: parallel-metalearn sums its meta-loss into ``torch.tensor(0.0)``, which would
    otherwise be float32 and round a float64 meta-gradient to ~1e-8."""
    model = make_model(workload).double()
    batch = make_batch(workload).tasks(0, tasks).with_dtype(torch.float64)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        peer_step_fn(implementation, model, steps, first_order)(batch)
    finally:
        torch.set_default_dtype(default)
    return [p.grad for p in model.parameters()]


def float64_errors(workload, steps, first_order, implementations) -> dict[str, float]:
    """Each peer's largest relative error per parameter tensor against the plain loop, all in float64."""
    reference = float64_meta_gradient("plain", workload, steps, first_order)
    return {
        name: max_relative_error(reference, float64_meta_gradient(name, workload, steps, first_order))
        for name in implementations
        if name in PEERS and name != "plain"
    }


def peak_resident_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# --- a worker: one implementation, one configuration, commands on stdin ------------------------------------------
def worker(implementation: str, workload: str, steps: int, first_order: bool, threads: int) -> None:
    torch.set_num_threads(threads)
    if KEEP_FREED_MEMORY:
        from fastadapt.engine.taskpool import keep_freed_memory

        assert keep_freed_memory(), "--keep-freed-memory needs glibc"
    model = make_model(workload)
    batch = make_batch(workload)
    optimizer = torch.optim.Adam(model.parameters(), lr=OUTER_LR)
    started = time.perf_counter()
    meta_gradient, info = make_step_fn(implementation, model, steps, first_order, batch)

    def training_step():
        optimizer.zero_grad(set_to_none=True)
        meta_gradient(batch)
        optimizer.step()

    optimizer.zero_grad(set_to_none=True)
    meta_gradient(batch)  # the gradient check, on the initial weights, before any update
    setup_seconds = time.perf_counter() - started  # auto's trials, compiling, the first step
    grad_file = Path(tempfile.mkdtemp()) / "grad.pt"
    torch.save([p.grad for p in model.parameters()], grad_file)
    training_step()  # warm-up
    from fastadapt.engine.strategy import choice_label

    reply = {
        "ready": True,
        "grad_file": str(grad_file),
        "strategy": choice_label(info["strategy"], info.get("workers"), info.get("channels_last"))
        if "strategy" in info
        else None,
        "auto": info,
        "setup_s": setup_seconds,
    }
    print(json.dumps(reply), flush=True)
    serve_timing(training_step)


def serve_timing(training_step) -> None:
    """A worker's loop: each ``{"op": "time", "steps": n}`` on stdin is answered with the n steps' times; any other
    command ends it, answered with the process's peak memory."""
    for line in sys.stdin:
        command = json.loads(line)
        if command["op"] != "time":
            print(json.dumps({"vmhwm_mib": peak_resident_mib()}), flush=True)
            return
        times = []
        for _ in range(command["steps"]):
            started = time.perf_counter()
            training_step()
            times.append(time.perf_counter() - started)
        print(json.dumps({"times": times}), flush=True)


class Worker:
    def __init__(self, implementation, workload, steps, first_order, threads):
        command = [sys.executable, __file__, "--worker", implementation, workload, str(steps), str(int(first_order))]
        command += ["--threads", str(threads), "--model", MODEL] + ["--keep-freed-memory"] * KEEP_FREED_MEMORY
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)

    def wait_ready(self):
        self.ready = self._read()

    def _read(self):
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.process.args} ended without answering")
        return json.loads(line)

    def ask(self, **command):
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        return self._read()

    def close(self):
        reply = self.ask(op="quit")
        self.process.wait()
        return reply["vmhwm_mib"]


def max_relative_error(expected, got) -> float:
    """max over parameter tensors of ||got_t - expected_t|| / ||expected||, the norm of the whole gradient: a
    tensor's own norm would not do, since the conv biases before batch norm have an exactly zero meta-gradient
    (the normalisation removes them), so their float32 values are rounding noise in every implementation."""
    total = torch.sqrt(sum(e.square().sum() for e in expected))
    return max(((g - e).norm() / total).item() for e, g in zip(expected, got))


def run_configuration(workload, steps, first_order, implementations, rounds, steps_per_round, threads):
    label = f"{workload} {steps}-step {'first' if first_order else 'second'} order"
    print(f"\n== {label}", flush=True)
    started = time.perf_counter()
    workers = {}
    for name in implementations:  # one at a time: auto's measurement must not share the CPU with set-ups
        workers[name] = Worker(name, workload, steps, first_order, threads)
        workers[name].wait_ready()
    print(f"  {len(workers)} workers ready in {time.perf_counter() - started:.1f}s", flush=True)
    reference = float64_reference(workload, steps, first_order)
    errors = {}
    for name, w in workers.items():
        errors[name] = max_relative_error(reference, torch.load(w.ready["grad_file"]))
        print(f"  gradient check {name:<21} relative error vs the plain loop in float64 {errors[name]:.2e}", flush=True)
    exact = float64_errors(workload, steps, first_order, implementations)
    incorrect = {n: e for n, e in exact.items() if not e < FLOAT64_TOLERANCE}
    for name, error in exact.items():
        verdict = "NOT a correct peer" if name in incorrect else "correct"
        print(f"  float64 check  {name:<21} {FLOAT64_TASKS} tasks, relative error {error:.2e}: {verdict}", flush=True)
    tolerance = max(GRADIENT_TOLERANCE, 3 * errors["plain"])
    bad = {n: e for n, e in errors.items() if not e < tolerance and n not in incorrect}
    assert not bad, f"{label}: meta-gradients differ from the plain loop's (tolerance {tolerance:.1e}): {bad}"
    times = {name: [] for name in workers}
    for _ in range(rounds):  # interleaved: every implementation in turn, so all see the same load
        for name, w in workers.items():
            times[name] += w.ask(op="time", steps=steps_per_round)["times"]
    memory = {name: w.close() for name, w in workers.items()}
    result = {
        "workload": workload,
        "queries_per_class": WORKLOADS[workload],
        "inner_steps": steps,
        "order": "first" if first_order else "second",
        "auto_chose": workers.get("fastadapt-auto").ready["strategy"] if "fastadapt-auto" in workers else None,
        "auto_measured_s": workers["fastadapt-auto"].ready["auto"].get("seconds")
        if "fastadapt-auto" in workers
        else None,
        "implementations": {
            name: {
                "median_s": statistics.median(times[name]),
                "times_s": times[name],
                "vmhwm_mib": memory[name],
                "max_relative_gradient_error": errors[name],
                "float64_relative_gradient_error": exact.get(name),
                "correct": name not in incorrect,
                "setup_s": workers[name].ready["setup_s"],
                "strategy": workers[name].ready["strategy"],
            }
            for name in workers
        },
    }
    for name, r in result["implementations"].items():
        print(
            f"  {name:<17} {r['median_s']:.3f} s/step  VmHWM {r['vmhwm_mib']:.0f} MiB  set-up {r['setup_s']:.1f} s",
            flush=True,
        )
    return result


# --- reporting ----------------------------------------------------------------------------------------------------
def present(results) -> list[str]:
    """The implementations that ran in any of ``results``, in the order of IMPLEMENTATIONS."""
    return [n for n in IMPLEMENTATIONS if any(n in r["implementations"] for r in results)]


def is_correct(record: dict) -> bool:
    """Whether an implementation's float64 meta-gradient was the plain loop's (records before that check: yes)."""
    return record.get("correct", True)


def fastest_correct_peer(result) -> str:
    impl = result["implementations"]
    peers = {n: impl[n]["median_s"] for n in PEERS if n in impl and is_correct(impl[n])}
    return min(peers, key=peers.get)


def markdown_table(results) -> str:
    names = present(results)
    head = (
        "| workload | inner steps | order | "
        + " | ".join(names)
        + " | fastadapt auto: speed-up over the fastest correct peer | VmHWM fastadapt auto / learn2learn |"
    )
    lines = [head, "| " + " | ".join(["---"] * (len(names) + 5)) + " |"]
    for r in results:
        impl = r["implementations"]
        cells = []
        for name in names:
            text = f"{impl[name]['median_s']:.3f}" if name in impl else "-"
            if name in impl and not is_correct(impl[name]):
                text += f" (wrong meta-gradient: {impl[name]['float64_relative_gradient_error']:.0e})"
            if name == "fastadapt-auto" and r.get("auto_chose"):
                text += f" ({r['auto_chose']})"
            if name == "fastadapt-compile" and name in impl:
                text += f" ({impl[name]['strategy']}; compiled in {impl[name]['setup_s']:.0f} s)"
            cells.append(text)
        fastest = fastest_correct_peer(r)
        speedup = impl[fastest]["median_s"] / impl["fastadapt-auto"]["median_s"]
        reference = impl.get("learn2learn")  # the memory target's reference; a run may leave it out
        memory = f"{impl['fastadapt-auto']['vmhwm_mib'] / reference['vmhwm_mib']:.2f}" if reference else "-"
        workload = f"({'a' if r['workload'] == 'stride' else 'b'}) {r['workload']}, {r['queries_per_class']} q/class"
        lines.append(
            f"| {workload} | {r['inner_steps']} | {r['order']} | "
            + " | ".join(cells)
            + f" | {speedup:.2f}x vs {fastest} | {memory} |"
        )
    return "\n".join(lines)


def memory_table(results) -> str:
    names = present(results)
    lines = ["| workload | inner steps | order | " + " | ".join(names) + " |"]
    lines.append("| " + " | ".join(["---"] * (len(names) + 3)) + " |")
    for r in results:
        impl = r["implementations"]
        cells = [f"{impl[n]['vmhwm_mib']:.0f}" if n in impl else "-" for n in names]
        lines.append(f"| {r['workload']} | {r['inner_steps']} | {r['order']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(2.4 * len(results) + 1, 4.2), squeeze=False)
    axes = axes[0]
    for ax, r in zip(axes, results):
        names = [n for n in IMPLEMENTATIONS if n in r["implementations"]]
        values = [r["implementations"][n]["median_s"] for n in names]
        colors = ["tab:blue" if n.startswith("fastadapt") else "tab:gray" for n in names]
        ax.bar(range(len(names)), values, color=colors)
        ax.set_xticks(range(len(names)), [n.replace("fastadapt-", "fa-") for n in names], rotation=70, fontsize=7)
        ax.set_title(f"{r['workload']} {r['inner_steps']}-step\n{r['order']} order", fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
    axes[0].set_ylabel("seconds per meta-training step (median)")
    fig.suptitle("One MAML meta-training step, 32 tasks 5-way 1-shot 28x28 (lower is better)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def main() -> None:
    global MODEL, KEEP_FREED_MEMORY
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--worker", nargs=4, metavar=("IMPL", "WORKLOAD", "STEPS", "FIRST_ORDER"), help=argparse.SUPPRESS
    )
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads per process")
    parser.add_argument("--model", default=MODEL, choices=MODELS, help="the network given to every implementation")
    parser.add_argument(
        "--keep-freed-memory", action="store_true", help="glibc keeps freed memory, in every implementation's process"
    )
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds per configuration")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per implementation per round")
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--inner-steps", nargs="+", type=int, default=[1, 5])
    parser.add_argument("--orders", nargs="+", default=["second", "first"], choices=["second", "first"])
    parser.add_argument("--implementations", nargs="+", default=list(IMPLEMENTATIONS), choices=IMPLEMENTATIONS)
    parser.add_argument("--out", default=str(ROOT / "bench/results/speed_maml.json"))
    parser.add_argument("--plot", default=str(ROOT / "docs/speed_maml.png"))
    parser.add_argument("--combine", nargs="+", metavar="JSON", help="merge the results of earlier runs, run nothing")
    args = parser.parse_args()
    MODEL, KEEP_FREED_MEMORY = args.model, args.keep_freed_memory
    if args.combine:
        records = [json.loads(Path(f).read_text()) for f in args.combine]
        record = {**records[0], "runs": [{k: v for k, v in r.items() if k != "results"} for r in records]}
        record["results"] = [result for r in records for result in r["results"]]
        write_outputs(record, Path(args.out), Path(args.plot))
        return
    if args.worker:
        implementation, workload, steps, first_order = args.worker
        worker(implementation, workload, int(steps), first_order == "1", args.threads)
        return
    if "plain" not in args.implementations:
        parser.error("the plain loop is the gradient reference; keep it in --implementations")
    started = time.time()
    results = [
        run_configuration(w, s, o == "first", args.implementations, args.rounds, args.steps, args.threads)
        for w in args.workloads
        for s in args.inner_steps
        for o in args.orders
    ]
    record = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()} {platform.release()}",
        "torch": torch.__version__,
        "threads": args.threads,
        "model": args.model,
        "keep_freed_memory": args.keep_freed_memory,
        "niceness": os.nice(0),
        "setting": f"{META_BATCH} tasks, {WAYS}-way {SHOTS}-shot, 1x28x28, inner lr {INNER_LR}, outer Adam {OUTER_LR}",
        "rounds": args.rounds,
        "steps_per_round": args.steps,
        "wall_s": round(time.time() - started, 1),
        "results": results,
    }
    write_outputs(record, Path(args.out), Path(args.plot))


def write_outputs(record, out: Path, plot_path: Path) -> None:
    results = record["results"]
    table, memory = markdown_table(results), memory_table(results)
    write_json(out, record)
    out.with_suffix(".md").write_text(
        "Median seconds per meta-training step\n\n" + table + "\n\nVmHWM (MiB)\n\n" + memory + "\n"
    )
    plot(results, plot_path)
    print("\n" + table + "\n\n" + memory + f"\n\nwrote {out}, {out.with_suffix('.md')}, {plot_path}")


if __name__ == "__main__":
    main()
