"""``fastadapt``: meta-train, meta-test and inspect data from the command line.

Examples::

    fastadapt train --algorithm protonet --dataset omniglot --ways 5 --shots 1 --out runs/proto
    fastadapt train --config my_run.yaml --steps 500       # a saved configuration, a flag overriding it
    fastadapt eval --checkpoint runs/proto/best.pt
    fastadapt train --algorithm maml-rl --env navigation-2d --out runs/nav   # meta-RL: a loop of its own
    fastadapt eval --checkpoint runs/nav/checkpoint.pt                       # its return table
    fastadapt presets                                      # every method's presets; `presets maml omniglot` prints one
    fastadapt continual --algorithm oml --out runs/oml      # continual learning: OML, La-MAML (docs/continual.md)
    fastadapt datasets
    fastadapt train --algorithm protonet --dataset clinc150 --ways 5 --shots 1   # text: sentence embeddings
    fastadapt fewshot-text --shots 5 --finetune --out runs/clinc5-ft             # CLINC150 150-way 5-shot

``train``'s options are generated from the dataclasses that declare them (fastadapt.config.TrainOptions and each
method's options beside its code, fastadapt.options), so the help, the defaults and the presets cannot drift apart.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

from fastadapt.errors import ConfigError, FastAdaptError

EPILOG = """\
Defaults come from a preset for each (algorithm, dataset) pair, e.g. ProtoNet on Omniglot trains
60-way episodes as in Snell et al.; MAML on Omniglot uses Finn et al.'s network and step sizes
(`fastadapt presets` lists them). Any option given on the command line overrides the preset, and a
--config file sits between the two. Data is found through --data-dir, then $FASTADAPT_DATA, then a
shared/data folder beside this checkout.
"""

#: Options of `train` that are not settings of the run.
_TRAIN_FLAGS = ("algorithm", "dataset", "config", "resume", "quiet", "command")


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors as fastadapt's: one line, exit code 2."""

    def error(self, message: str):
        raise ConfigError(f"{message}; see `{self.prog} --help`.")


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


def _method_groups(parser: argparse.ArgumentParser, only: str | None) -> None:
    """One argument group per method (or only ``only``'s), each with the options its dataclass adds."""
    from fastadapt.algorithms.registry import algorithms
    from fastadapt.config import TrainOptions
    from fastadapt.options import add_arguments

    seen = {f.name for f in fields(TrainOptions)}
    for name, spec in algorithms().items():
        if only is not None and name != only:
            continue
        new = [f.name for f in fields(spec.options) if f.name not in seen]
        if not new:
            continue
        group = parser.add_argument_group(f"--algorithm {name}: {spec.summary}")
        add_arguments(group, spec.options, skip=tuple(n for n in (f.name for f in fields(spec.options)) if n in seen))
        seen.update(new)


def _own_loop_train_parser(sub: argparse._SubParsersAction, name: str) -> argparse.ArgumentParser:
    """`train --algorithm NAME --help` for a method with a training loop of its own (meta-RL): its options only."""
    from fastadapt.algorithms.registry import algorithm
    from fastadapt.options import add_arguments

    spec = algorithm(name)
    t = sub.add_parser(
        "train",
        help="meta-train, then meta-test",
        description=f"{spec.summary}. It trains with a loop of its own, so the episodic trainer's settings (--steps, "
        f"--dataset, ...) do not apply. Its preset for --{spec.preset_option.replace('_', '-')} "
        f"({', '.join(spec.presets)}) sets the paper's values; a flag or --config file overrides them.",
        formatter_class=_formatter,
    )
    t.add_argument("--algorithm", help="the meta-learning method; `fastadapt presets` lists them")
    t.add_argument("--config", help="a YAML, TOML or JSON file of settings (flags given here override it)")
    t.add_argument("--out", help=f"output folder (default: runs/{name}-<{spec.preset_option}>)")
    t.add_argument("--resume", action="store_true", help="continue from <out>'s checkpoint exactly where it stopped")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    add_arguments(t.add_argument_group(f"--algorithm {name}"), spec.options)
    return t


def _train_parser(sub: argparse._SubParsersAction, only: str | None) -> argparse.ArgumentParser:
    from fastadapt.algorithms.registry import algorithms
    from fastadapt.config import DataOptions, TrainOptions
    from fastadapt.datasets import DATASETS
    from fastadapt.options import add_arguments

    if only is not None and only in algorithms() and algorithms()[only].has_own_loop:
        return _own_loop_train_parser(sub, only)
    t = sub.add_parser(
        "train",
        help="meta-train, then meta-test the best checkpoint",
        description="Meta-train on the training classes, keep the checkpoint that does best on the validation "
        "classes, then report meta-test accuracy on the test classes. `fastadapt train --algorithm NAME --help` "
        "shows only that method's options.",
        epilog=EPILOG,
        formatter_class=_formatter,
    )
    t.add_argument("--algorithm", help="the meta-learning method (default: protonet); `fastadapt presets` lists them")
    t.add_argument("--dataset", help=f"{', '.join(DATASETS)} (default: omniglot); `fastadapt datasets` lists them")
    t.add_argument("--config", help="a YAML, TOML or JSON file of settings (flags given here override it)")
    data = t.add_argument_group("data")
    add_arguments(data, DataOptions, skip=("dataset",))
    training = t.add_argument_group("training")
    data_fields = tuple(f.name for f in fields(DataOptions))
    add_arguments(training, TrainOptions, skip=(*data_fields, "algorithm"))
    training.add_argument("--resume", action="store_true", help="continue from <out>/last.pt exactly where it stopped")
    training.add_argument("--quiet", action="store_true", help="no progress bars")
    _method_groups(t, only)
    return t


def _continual_parser(sub: argparse._SubParsersAction) -> None:
    """`continual`: its run options and each continual method's own (fastadapt.continual.run)."""
    from fastadapt.algorithms.registry import algorithms
    from fastadapt.continual.run import ContinualOptions
    from fastadapt.options import add_arguments

    methods = algorithms("continual")
    c = sub.add_parser(
        "continual",
        help="continual learning: OML meta-training + meta-test, or La-MAML on a task stream (ACC/BWT/FWT)",
        description="oml: meta-train on Omniglot's background characters, then learn class-sorted streams of new "
        "characters one image at a time. la-maml: learn a stream of tasks online, several runs, and report the "
        "accuracy matrix with ACC/BWT/FWT. Writes <out>/results.json and plots (docs/continual.md).",
        formatter_class=_formatter,
    )
    c.add_argument("--algorithm", required=True, choices=tuple(methods), help="the continual method")
    c.add_argument("--preset", help="; ".join(f"{n}: {', '.join(m.presets)}" for n, m in methods.items()))
    c.add_argument("--resume", action="store_true", help="oml: continue meta-training from <out> exactly")
    c.add_argument("--quiet", action="store_true", help="no progress bars")
    add_arguments(c.add_argument_group("run"), ContinualOptions)
    seen = {f.name for f in fields(ContinualOptions)}
    for name, spec in methods.items():
        own = tuple(f.name for f in fields(spec.options) if f.name in seen)
        add_arguments(c.add_argument_group(f"--algorithm {name}: {spec.summary}"), spec.options, skip=own)
        seen.update(f.name for f in fields(spec.options))


def build_parser(algorithm: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; ``algorithm`` narrows `train`'s method options to that method's."""
    from fastadapt.config import PretrainConfig
    from fastadapt.options import add_arguments

    parser = _Parser(
        prog="fastadapt",
        description="Meta-learning for PyTorch: train a model that adapts from a few examples.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _train_parser(sub, algorithm)
    _continual_parser(sub)

    e = sub.add_parser("eval", help="meta-test a checkpoint: accuracy mean and 95%% CI over >= 600 episodes")
    e.add_argument("--checkpoint", required=True, help="a best.pt or last.pt written by train (maml-rl: checkpoint.pt)")
    e.add_argument("--episodes", type=int, help="number of test episodes (default 600)")
    e.add_argument("--ways", type=int, help="classes per test episode (default: as trained)")
    e.add_argument("--shots", type=int, help="support examples per class (default: as trained)")
    e.add_argument("--eval-query", type=int, help="query examples per class")
    e.add_argument("--eval-inner-steps", type=int, help="inner-loop steps at test time (MAML; maml-rl: 0..N steps)")
    e.add_argument("--tasks", type=int, help="maml-rl: new tasks to adapt to (default: as trained, 40)")
    e.add_argument(
        "--split",
        choices=("test", "val"),
        default="test",
        help="classes to evaluate on (default test); val writes eval_val.json, for choosing test-time settings "
        "such as --eval-inner-steps without touching the test classes (not after --split vinyals-trainval, "
        "which trains on the validation classes)",
    )
    e.add_argument("--out", help="folder for eval.json (default: the checkpoint's folder)")
    _add_common(e)

    p = sub.add_parser(
        "pretrain",
        help="LEO stage 1: train a backbone by plain classification of the meta-training classes",
        description="Train a backbone (Conv-4 for 28x28 images, ResNet-12 for 84x84) with a linear layer over "
        "all training classes; keep the epoch whose features do best on the validation classes (nearest "
        "centroid, 5-way 1-shot). Writes <out>/pretrain.pt and pretrain_metrics.jsonl.",
        formatter_class=_formatter,
    )
    add_arguments(p, PretrainConfig, skip=("encoder",))  # pre-training classifies images
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    _fewshot_text_parser(sub)

    em = sub.add_parser(
        "embed",
        help="LEO stage 2: write the embeddings of every split once (then train --dataset embeddings)",
    )
    em.add_argument("--checkpoint", required=True, help="the pretrain.pt written by `fastadapt pretrain`")
    em.add_argument("--out", required=True, help="folder for train.npz, val.npz, test.npz and meta.json")
    em.add_argument("--batch-size", type=int, default=512, help="images per forward pass (default 512)")
    _add_common(em)

    pr = sub.add_parser(
        "presets",
        help="list every method's presets, or print one as a config file to copy and edit",
        description="Without arguments: each method, its family and the data sets it has a preset for. With a "
        "method and a data set: that run's full configuration as YAML (or --format toml/json), ready for "
        "`fastadapt train --config FILE`.",
    )
    pr.add_argument("algorithm", nargs="?", help="a method, e.g. maml")
    pr.add_argument("dataset", nargs="?", help="a data set, e.g. omniglot (maml-rl: an env, e.g. navigation-2d)")
    pr.add_argument("--format", choices=("yaml", "toml", "json"), default="yaml", help="output format (default yaml)")

    d = sub.add_parser("datasets", help="list the data sets, where they are found and (mini-ImageNet) what was found")
    d.add_argument("--data-dir", help="folder holding the data sets")

    dl = sub.add_parser("download", help="download a data set (needs internet), checking its sha256")
    dl.add_argument("name", help="omniglot (mini-imagenet has no public download: it says where to put a copy)")
    dl.add_argument("--data-dir", help="where to put it (default: $FASTADAPT_DATA or ~/.cache/fastadapt/data)")
    return parser


def _fewshot_text_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from fastadapt.options import add_arguments
    from fastadapt.text.finetune import FinetuneOptions
    from fastadapt.text.intent import FewShotTextOptions

    f = sub.add_parser(
        "fewshot-text",
        help="CLINC150 150-way K-shot intent detection with out-of-scope detection (5 draws of K per intent)",
        description="K utterances per intent from CLINC150's training set, all 150 intents at once, scored on the "
        "full test set; the K-shot draw repeated --draws times (mean and standard deviation). Classifiers: "
        "prototypes (cosine) and logistic regression over the sentence embeddings, each with an out-of-scope "
        "threshold chosen on the validation set. --finetune first meta-trains the encoder on each draw's K-shot set "
        "(episodic ProtoNet, fastadapt.text.finetune). Writes <out>/eval.json, options.json and draw-N/. Needs "
        "`pip install fastadapt[text]` and <data-dir>/clinc150/data_full.json.",
        formatter_class=_formatter,
    )
    add_arguments(f, FewShotTextOptions)
    tuning = f.add_argument_group("--finetune: the encoder's episodic fine-tuning on each draw")
    add_arguments(tuning, FinetuneOptions, prefix="finetune")
    f.add_argument("--resume", action="store_true", help="keep finished draws; continue an interrupted fine-tuning")
    f.add_argument("--quiet", action="store_true", help="no progress bars")
    return f


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="folder holding the data sets (default: $FASTADAPT_DATA or ../shared/data)")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cpu)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _requested_algorithm(argv: list[str]) -> str | None:
    """The method named by ``--algorithm`` on the command line, if any (to narrow `train --help`)."""
    probe = argparse.ArgumentParser(add_help=False)
    probe.add_argument("--algorithm")
    known, _ = probe.parse_known_args(argv)
    return known.algorithm


def train_settings(args: argparse.Namespace) -> tuple[str, str, dict[str, Any]]:
    """The method, the data set and the settings a `train` command line gives: the --config file's, then the flags'.
    A flag of another method is refused by name (fastadapt.config.not_an_option)."""
    from fastadapt.config import config_class, not_an_option
    from fastadapt.options import read_config_file

    settings = read_config_file(Path(args.config)) if args.config else {}
    flags = {k: v for k, v in vars(args).items() if k not in _TRAIN_FLAGS and v is not None}
    if not isinstance(settings.get("dataset", ""), str):
        raise ConfigError(
            f"{args.config}: dataset must be a name (got {settings['dataset']!r}); e.g. `dataset: omniglot`."
        )
    algorithm = args.algorithm or settings.pop("algorithm", None) or "protonet"
    dataset = args.dataset or settings.pop("dataset", None) or "omniglot"
    settings.pop("algorithm", None), settings.pop("dataset", None)
    known = {f.name for f in fields(config_class(algorithm))}
    unknown = sorted(set(flags) - known)
    if unknown:
        raise ConfigError(" ".join(not_an_option(name, algorithm) for name in unknown))
    unknown = sorted(set(settings) - known)
    if unknown:
        names = ", ".join(name if name.isprintable() else repr(name) for name in unknown)
        raise ConfigError(
            f"{args.config}: {algorithm} has no setting(s) {names}; `fastadapt presets` shows its options."
        )
    return algorithm, dataset, {**settings, **flags}


def own_loop_settings(args: argparse.Namespace, spec: Any) -> tuple[str | None, dict[str, Any]]:
    """The preset and the settings a `train` command line gives a method with its own loop: the --config file's,
    then the flags'. The episodic trainer's flags are refused by name (fastadapt.config.not_an_option)."""
    from fastadapt.config import not_an_option
    from fastadapt.options import read_config_file

    settings = read_config_file(Path(args.config)) if args.config else {}
    settings.pop("algorithm", None)
    flags = {k: v for k, v in vars(args).items() if k not in _TRAIN_FLAGS and v is not None}
    if args.dataset is not None:
        flags["dataset"] = args.dataset
    known = {f.name for f in fields(spec.options)} | {"out"}
    unknown = sorted(set(flags) - known)
    if unknown:
        raise ConfigError(" ".join(not_an_option(name, spec.name) for name in unknown))
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ConfigError(
            f"{args.config}: {spec.name} has no setting(s) {', '.join(unknown)}; "
            f"`fastadapt train --algorithm {spec.name} --help` shows its options."
        )
    settings = {**settings, **flags}
    return settings.get(spec.preset_option), settings


def cmd_train_own_loop(args: argparse.Namespace, spec: Any) -> None:
    """`train` for a method with a training loop of its own: its ``run`` hook, then its ``evaluate``."""
    from fastadapt.algorithms.registry import own_loop_options

    preset, settings = own_loop_settings(args, spec)
    preset = preset or next(iter(spec.presets), None)
    out = Path(settings.pop("out", None) or f"runs/{spec.name}-{preset}")
    options = own_loop_options(spec, preset, **settings)
    summary = spec.run(options, out, resume=args.resume, progress=not args.quiet)
    print(summary["summary"])
    print(spec.evaluate(Path(summary["checkpoint"])))
    print(f"wrote {summary['checkpoint']}, {out / 'metrics.jsonl'}, {out / 'eval.json'}")


def cmd_train(args: argparse.Namespace) -> None:
    from fastadapt.algorithms.registry import algorithm as registered_algorithm
    from fastadapt.config import make_config
    from fastadapt.evaluate import evaluate_checkpoint, format_result
    from fastadapt.options import read_config_file
    from fastadapt.train import train

    named = args.algorithm or (read_config_file(args.config).get("algorithm") if args.config else None)
    if named is not None and registered_algorithm(named).has_own_loop:
        cmd_train_own_loop(args, registered_algorithm(named))
        return
    algorithm, dataset, settings = train_settings(args)
    settings.setdefault("out", f"runs/{algorithm}-{dataset}")
    config = make_config(algorithm, dataset, **settings)
    result = train(config, resume=args.resume, progress=not args.quiet)
    if result.rank != 0:  # under torchrun, rank 0 reports and meta-tests
        return
    print(f"trained {result.step} steps; best validation score {result.best_val:.4f}; outputs in {result.out}")
    evaluation = evaluate_checkpoint(
        result.out / "best.pt", progress=not args.quiet, data_dir=config.data_dir, device=config.device
    )
    print(format_result(evaluation))
    print(f"wrote {result.out / 'eval.json'}, {result.out / 'metrics.jsonl'}, {result.out / 'learning_curve.png'}")


#: `eval` flags and their defaults: one that differs from its default is passed to a method's own evaluation
_EVAL_DEFAULTS = {
    "episodes": None,
    "ways": None,
    "shots": None,
    "eval_query": None,
    "eval_inner_steps": None,
    "tasks": None,
    "split": "test",
    "out": None,
    "data_dir": None,
    "device": None,
}


def cmd_eval(args: argparse.Namespace) -> None:
    from fastadapt.algorithms.registry import checkpoint_owner
    from fastadapt.evaluate import evaluate_checkpoint, format_result

    owner = checkpoint_owner(Path(args.checkpoint))
    if owner is not None:  # a method with its own loop wrote it (maml-rl): its evaluation
        given = {k: getattr(args, k) for k, default in _EVAL_DEFAULTS.items() if getattr(args, k) != default}
        print(owner.evaluate(Path(args.checkpoint), **given))
        return
    if args.tasks is not None:
        raise ConfigError("--tasks applies to maml-rl checkpoints; for episodes use --episodes.")
    result = evaluate_checkpoint(
        Path(args.checkpoint),
        episodes=args.episodes,
        out=args.out,
        progress=not args.quiet,
        data_dir=args.data_dir,
        device=args.device,
        eval_query=args.eval_query,
        ways=args.ways,
        shots=args.shots,
        eval_inner_steps=args.eval_inner_steps,
        split=args.split,
    )
    print(format_result(result))
    print(json.dumps(result))


def cmd_pretrain(args: argparse.Namespace) -> None:
    from fastadapt.config import PretrainConfig
    from fastadapt.pretrain import pretrain

    known = {f.name for f in fields(PretrainConfig)}
    config = PretrainConfig(**{k: v for k, v in vars(args).items() if k in known and v is not None})
    best = pretrain(config, progress=not args.quiet)
    print(
        f"kept epoch {best['epoch']} (validation 5-way 1-shot, nearest centroid: "
        f"{100 * best['val_5w1s_nearest_centroid']:.2f}%); wrote {best['checkpoint']}"
    )


def cmd_embed(args: argparse.Namespace) -> None:
    from fastadapt.pretrain import embed

    meta = embed(Path(args.checkpoint), Path(args.out), args.data_dir, args.batch_size, args.device)
    sizes = ", ".join(
        f"{part} {c['examples']} x {meta['embedding_dim']} ({c['classes']} classes)"
        for part, c in meta["parts"].items()
    )
    print(f"wrote embeddings to {args.out}: {sizes}")


def cmd_fewshot_text(args: argparse.Namespace) -> None:
    from fastadapt.options import given_values, require_finite
    from fastadapt.text.finetune import FinetuneOptions
    from fastadapt.text.intent import FewShotTextOptions, format_fewshot_result, run_fewshot_text

    tuning = FinetuneOptions(**given_values(args, FinetuneOptions, prefix="finetune"))
    options = FewShotTextOptions(**given_values(args, FewShotTextOptions), finetune_options=tuning)
    require_finite(options), require_finite(tuning)
    result = run_fewshot_text(options, resume=args.resume, progress=not args.quiet)
    print(format_fewshot_result(result))
    print(f"wrote {Path(options.out) / 'eval.json'} and {Path(options.out) / 'draw-N'}/result.json")


def cmd_presets(args: argparse.Namespace) -> None:
    from fastadapt.algorithms.registry import algorithm, algorithms
    from fastadapt.config import make_config

    if args.algorithm is None:
        print(f"{'method':<10} {'family':<13} {'presets for':<50} description")
        for name, spec in algorithms().items():
            presets = ", ".join(spec.presets) or "-"
            if spec.has_own_loop:  # its presets are per env, not per data set
                presets = f"--{spec.preset_option.replace('_', '-')} {presets}"
            print(f"{name:<10} {spec.family:<13} {presets:<50} {spec.summary}")
        print("\n`fastadapt presets METHOD DATASET` prints one as a file for `fastadapt train --config FILE`.")
        return
    spec = algorithm(args.algorithm)
    if spec.has_own_loop:  # its options are its whole configuration
        from dataclasses import asdict

        from fastadapt.algorithms.registry import own_loop_options

        preset = args.dataset or next(iter(spec.presets), None)
        options = asdict(own_loop_options(spec, preset))
        settings = {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}
        title = f"{spec.name} with --{spec.preset_option.replace('_', '-')} {preset}: {spec.summary}"
        print(format_settings({"algorithm": spec.name, **settings}, args.format, title))
        return
    dataset = args.dataset or next(iter(spec.presets), "omniglot")
    config = make_config(spec.name, dataset)
    settings = {k: v for k, v in config.to_dict().items() if k not in ("data_dir", "init_from")}
    print(format_settings(settings, args.format, f"{spec.name} on {dataset}: {spec.summary}"))


def format_settings(settings: dict[str, Any], kind: str, title: str) -> str:
    """``settings`` as a config file of ``kind`` (yaml, toml or json); None values are left out."""
    settings = {k: v for k, v in settings.items() if v is not None}
    if kind == "json":
        return json.dumps(settings, indent=2)
    if kind == "toml":

        def toml_value(value: Any) -> str:
            return str(value).lower() if isinstance(value, bool) else json.dumps(value)

        return "\n".join([f"# {title}", *(f"{k} = {toml_value(v)}" for k, v in settings.items())])
    import yaml

    return f"# {title}\n" + yaml.safe_dump(settings, sort_keys=False)


def cmd_continual(args: argparse.Namespace) -> None:
    from fastadapt.continual.run import ContinualOptions, run_continual

    run_fields = {f.name for f in fields(ContinualOptions)}
    given = {k: v for k, v in vars(args).items() if v is not None and k not in ("command", "preset", "algorithm")}
    given.pop("resume"), given.pop("quiet")
    run = ContinualOptions(**{k: v for k, v in given.items() if k in run_fields})
    settings = {k: v for k, v in given.items() if k not in run_fields}
    result = run_continual(args.algorithm, args.preset, settings, run, resume=args.resume, progress=not args.quiet)
    print(json.dumps({k: v for k, v in result.items() if k not in ("meta_test", "matrices", "runs")}, indent=1))


def cmd_datasets(args: argparse.Namespace) -> None:
    from fastadapt.datasets import DATASETS, resolve_data_dir

    root = resolve_data_dir(args.data_dir)
    print(f"data directory: {root}  (--data-dir, else $FASTADAPT_DATA, else shared/data, else ~/.cache)")
    for info in DATASETS.values():
        report = []
        if info.name == "omniglot":
            found = all((root / "omniglot" / f).is_file() for f in ("images_background.npz", "images_evaluation.npz"))
            where = f"found in {root / 'omniglot'}" if found else "missing: fastadapt download omniglot (or --download)"
        elif info.name == "mini-imagenet":
            from fastadapt.datasets.miniimagenet import inspect_miniimagenet

            inspected = inspect_miniimagenet(root)
            where = f"found in {inspected.folder}" if inspected.layout else "missing (no public download)"
            report = inspected.lines()
        elif info.name == "clinc150":
            from fastadapt.datasets.text import clinc150_file

            found = clinc150_file(root).is_file()
            where = f"found in {root / 'clinc150'}" if found else "missing: put data_full.json in <data-dir>/clinc150/"
        elif info.name in ("folder", "embeddings"):
            where = "pass --data-dir DIR"
        elif info.name == "text":
            where = "pass --data-dir FILE"
        else:
            where = "generated"
        print(f"  {info.name:<13} {info.kind:<15} {where}\n                {info.description}")
        for line in report:
            print(f"                {line}")


def cmd_download(args: argparse.Namespace) -> None:
    from fastadapt.datasets.download import download_omniglot
    from fastadapt.datasets.paths import resolve_data_dir

    if args.name == "mini-imagenet":
        from fastadapt.datasets.download import download_miniimagenet

        download_miniimagenet()  # one line: there is no public source, and where to put a copy
    if args.name != "omniglot":
        raise ConfigError(f"no download for {args.name!r}; available: omniglot.")
    print(f"Omniglot ready in {download_omniglot(resolve_data_dir(args.data_dir))}")


COMMANDS = {
    "train": cmd_train,
    "eval": cmd_eval,
    "datasets": cmd_datasets,
    "download": cmd_download,
    "pretrain": cmd_pretrain,
    "embed": cmd_embed,
    "presets": cmd_presets,
    "fewshot-text": cmd_fewshot_text,
    "continual": cmd_continual,
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        asks_help = "train" in argv[:1] and ("-h" in argv or "--help" in argv)
        parser = build_parser(_requested_algorithm(argv) if asks_help else None)
        args = parser.parse_args(argv)
        for name in ("out", "checkpoint", "data_dir", "config", "init_from"):
            if getattr(args, name, None) == "":  # Path("") is the working directory: never what an empty value meant
                raise ConfigError(f"--{name.replace('_', '-')} '' names no path; give one.")
        COMMANDS[args.command](args)
    except FastAdaptError as exc:
        print(f"fastadapt: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a path given that the system refuses (too long, a loop, no permission): the path, one line
        if exc.filename is None:
            raise
        path = str(exc.filename)
        shown = path if len(path) <= 120 else f"{path[:100]}...({len(path)} characters)"
        print(f"fastadapt: error: cannot use {shown} ({exc.strerror}); check the path given.", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fastadapt: interrupted", file=sys.stderr)
        return 130
    except (MemoryError, RuntimeError) as exc:  # torch reports a failed allocation as a RuntimeError
        if not is_out_of_memory(exc):
            raise
        print(f"fastadapt: error: {out_of_memory_message(exc, argv)}", file=sys.stderr)
        return 2
    return 0


#: Words in a flag's name that make it a size (what to reduce when memory runs out).
_SIZE_WORDS = ("size", "hidden", "width", "channels", "filters", "ways", "shots", "queries", "batch", "memory",
               "layers", "dim", "slots", "length")  # fmt: skip


def is_out_of_memory(exc: BaseException) -> bool:
    """True for a failed allocation: Python's MemoryError, torch's OutOfMemoryError (a GPU) or its CPU allocator's
    RuntimeError."""
    text = str(exc)
    return isinstance(exc, MemoryError) or "out of memory" in text.lower() or "can't allocate memory" in text


def out_of_memory_message(exc: BaseException, argv: list[str]) -> str:
    """One line: how much was asked for (where torch says), the size flags given, and the way out."""
    asked = re.search(r"allocate (\d+) bytes", str(exc))
    amount = f" (an allocation of {int(asked.group(1)) / 2**30:.1f} GiB failed)" if asked else ""
    given = [a for a in argv if a.startswith("--") and any(w in a.split("=")[0] for w in _SIZE_WORDS)]
    hint = f"reduce the sizes given ({' '.join(given[:4])})" if given else "reduce --meta-batch-size or the sizes"
    return f"out of memory{amount}; {hint}, or use a machine with more memory."


if __name__ == "__main__":
    sys.exit(main())
