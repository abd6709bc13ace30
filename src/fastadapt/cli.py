"""``fastadapt``: meta-train, meta-test and inspect data from the command line.

Examples::

    fastadapt train --algorithm protonet --dataset omniglot --ways 5 --shots 1 --out runs/proto
    fastadapt eval --checkpoint runs/proto/best.pt
    fastadapt datasets
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fastadapt.errors import FastAdaptError

EPILOG = """\
Defaults come from a preset for each (algorithm, dataset) pair, e.g. ProtoNet on Omniglot trains
60-way episodes as in Snell et al.; MAML on Omniglot uses Finn et al.'s network and step sizes.
Any option given on the command line overrides the preset. Data is found through --data-dir, then
$FASTADAPT_DATA, then a shared/data folder beside this checkout.
"""


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="folder holding the data sets (default: $FASTADAPT_DATA or ../shared/data)")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cpu)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_image_options(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    p.add_argument(
        "--split", help="omniglot: vinyals, vinyals-trainval, maml or lake; folder: a folder with train/val/test.txt"
    )
    p.add_argument("--image-size", type=int, help="images are resized to this square size (default 28)")
    p.add_argument("--channels", type=int, help="1 (grayscale) or 3 (RGB) for --dataset folder")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastadapt",
        description="Meta-learning for PyTorch: train a model that adapts from a few examples.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser(
        "train",
        help="meta-train, then meta-test the best checkpoint",
        description="Meta-train on the training classes, keep the checkpoint that does best on the "
        "validation classes, then report meta-test accuracy on the test classes.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    t.add_argument(
        "--algorithm",
        default="protonet",
        help="maml, maml++, anil, metasgd, reptile, meta-lstm, leo, protonet, matching or relation (default: protonet)",
    )
    t.add_argument(
        "--dataset",
        default="omniglot",
        help="omniglot, folder, sinusoid, or embeddings (LEO; `fastadapt embed` output) (default: omniglot)",
    )
    g = t.add_argument_group("episodes")
    g.add_argument("--ways", type=int, help="classes per test episode (N in N-way); default 5")
    g.add_argument("--shots", type=int, help="labelled examples per class in the support set (K); default 1")
    g.add_argument("--query", type=int, help="query examples per class in training episodes")
    g.add_argument("--eval-query", type=int, help="query examples per class in validation/test episodes")
    g.add_argument("--train-ways", type=int, help="classes per training episode (ProtoNet: default 60)")
    g.add_argument("--train-shots", type=int, help="support examples per class in training episodes (Reptile: 15)")
    _add_image_options(g)
    o = t.add_argument_group("optimisation")
    o.add_argument("--meta-batch-size", type=int, help="tasks per outer update")
    o.add_argument("--steps", type=int, help="outer updates (meta-training steps)")
    o.add_argument("--lr", type=float, help="outer learning rate (Reptile: epsilon)")
    o.add_argument("--outer-optimizer", help="adam (default) or sgd")
    o.add_argument(
        "--lr-schedule",
        help="step (decay by --lr-decay every --lr-decay-every steps), linear (to 0) or cosine (to --lr-min)",
    )
    o.add_argument("--lr-decay-every", type=int, help="multiply the outer lr by --lr-decay every N steps (0: never)")
    o.add_argument("--lr-decay", type=float, help="outer lr decay factor (default 0.5)")
    o.add_argument("--lr-min", type=float, help="--lr-schedule cosine: the outer lr it anneals to (default 0)")
    o.add_argument("--inner-lr", type=float, help="inner-loop step size (gradient-based methods)")
    o.add_argument("--inner-steps", type=int, help="inner-loop steps in training (gradient-based methods)")
    o.add_argument("--eval-inner-steps", type=int, help="inner-loop steps at test time (gradient-based methods)")
    o.add_argument(
        "--first-order", action="store_true", default=None, help="MAML/Meta-SGD/ANIL: drop second derivatives"
    )
    o.add_argument(
        "--strategy",
        help="inner loops as a per-task 'loop', 'vmap' across tasks, 'fold' (MAML, Meta-SGD: tasks folded into the "
        "channels of one network pass), or 'auto' (default: time the loop against fold, or vmap where the network "
        "cannot fold, and keep the faster)",
    )
    o.add_argument(
        "--no-gradient-check",
        dest="gradient_check",
        action="store_false",
        default=None,
        help="skip the check that vmap/fold give the per-task loop's meta-gradient on the first meta-batch (by "
        "default a vectorised strategy that disagrees is not used: auto leaves it out, an explicit one is refused)",
    )
    o.add_argument(
        "--vmap-chunk",
        type=int,
        help="with vmap or fold: N tasks per call, each chunk backpropagated before the next (less memory, the "
        "same meta-gradient; default: 8 tasks in flight, 16 for one first-order step, 4 for several "
        "second-order steps, shared by the workers; 0: all at once)",
    )
    m = t.add_argument_group("MAML++ switches (Antoniou et al. 2019; --algorithm maml++ turns them all on)")
    switch = dict(action=argparse.BooleanOptionalAction, default=None)
    m.add_argument("--multi-step-loss", **switch, help="meta-loss on the query set after every inner step (MSL)")
    m.add_argument(
        "--multi-step-loss-steps", type=int, help="outer steps over which MSL's weights anneal to the last step"
    )
    m.add_argument("--per-step-lr", **switch, help="learned inner learning rate per layer and step (LSLR)")
    m.add_argument("--per-step-bn", **switch, help="batch-norm weights and biases per inner step (BNWB)")
    m.add_argument(
        "--first-order-steps", type=int, help="first order for the first N outer steps, then second (DOA; 0: off)"
    )
    o.add_argument("--inner-optimizer", help="Reptile's inner optimiser: sgd or adam")
    o.add_argument(
        "--inner-adam-state",
        help="Reptile with Adam: fresh moments per task, or carried across tasks as the authors' code",
    )
    o.add_argument("--inner-batch-size", type=int, help="Reptile: support mini-batch per inner step (default: all)")
    o.add_argument("--eval-inner-batch-size", type=int, help="Reptile: support mini-batch per test-time step")
    o.add_argument("--fce", action="store_true", default=None, help="Matching Networks: full context embeddings")
    leo = t.add_argument_group("LEO (Rusu et al. 2019; --inner-steps/--inner-lr are its latent-space loop)")
    leo.add_argument("--leo-latent-dim", type=int, help="size of the latent code per class (default 64)")
    leo.add_argument("--leo-finetuning-steps", type=int, help="steps on the decoded weights after the latent loop (5)")
    leo.add_argument("--leo-finetuning-lr", type=float, help="initial fine-tuning step size, meta-learned (1e-3)")
    leo.add_argument("--leo-dropout", type=float, help="dropout on the embeddings in meta-training (0.5)")
    leo.add_argument("--leo-kl-weight", type=float, help="beta: weight of KL(q(z|support) || N(0, I)) (1e-3)")
    leo.add_argument("--leo-encoder-penalty", type=float, help="gamma: weight of ||stopgrad(z') - z||^2 (1e-9)")
    leo.add_argument("--leo-l2-penalty", type=float, help="lambda_1: L2 weight on encoder/relation/decoder (1e-8)")
    leo.add_argument(
        "--leo-orthogonality-penalty", type=float, help="lambda_2: decoder orthogonality penalty weight (1e-3)"
    )
    leo.add_argument("--leo-grad-clip", type=float, help="clip each meta-gradient entry to +-this (0.1; 0: off)")
    o.add_argument(
        "--compile",
        action="store_true",
        default=None,
        help="torch.compile the meta-gradient of MAML, first-order MAML, MAML++, Meta-SGD and ANIL, or Meta-LSTM's "
        "per-coordinate update: a one-off compile of one to several minutes, then faster steps",
    )
    o.add_argument(
        "--workers",
        type=int,
        help="MAML family: train this many tasks at once on a CPU, each on one core with one torch thread "
        "(default: measured on the first meta-batch, one against one per torch thread; always 1 for networks with "
        "dropout or running batch-norm statistics; 1: one task at a time, each operation on every thread)",
    )
    o.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="MAML family: copy image batches to channels-last layout, where a CPU's convolutions, batch norm and "
        "pooling run faster (default: measured on the first meta-batch, like --workers)",
    )
    o.add_argument(
        "--cosine-scale",
        type=float,
        help="Matching Networks: initial value of a learned scale on the cosines (Omniglot preset 10; 0: none)",
    )
    o.add_argument(
        "--network",
        help="conv4 (max-pool, 64 filters), conv4-N (N filters; conv4-32: mini-ImageNet MAML/Meta-LSTM learner), "
        "conv4-stride (MAML's Omniglot net), resnet12 (TADAM/MetaOptNet, 64-160-320-640) or mlp",
    )
    r = t.add_argument_group("run")
    r.add_argument("--seed", type=int, help="seed of everything random (default 0)")
    r.add_argument("--out", help="output folder for checkpoints, metrics and plots (default runs/<alg>-<data>)")
    r.add_argument("--val-every", type=int, help="meta-validate every N steps")
    r.add_argument("--val-episodes", type=int, help="validation episodes (default 200)")
    r.add_argument("--test-episodes", type=int, help="meta-test episodes after training (default 600)")
    r.add_argument("--resume", action="store_true", help="continue from <out>/last.pt exactly where it stopped")
    r.add_argument(
        "--init-from",
        help="start from the model weights of this checkpoint (fresh optimiser and schedule), e.g. a second "
        "stage at a lower --lr after a run has plateaued; the model's settings must match",
    )
    _add_common(t)

    e = sub.add_parser("eval", help="meta-test a checkpoint: accuracy mean and 95%% CI over >= 600 episodes")
    e.add_argument("--checkpoint", required=True, help="a best.pt or last.pt written by train")
    e.add_argument("--episodes", type=int, help="number of test episodes (default 600)")
    e.add_argument("--ways", type=int, help="classes per test episode (default: as trained)")
    e.add_argument("--shots", type=int, help="support examples per class (default: as trained)")
    e.add_argument("--eval-query", type=int, help="query examples per class")
    e.add_argument("--eval-inner-steps", type=int, help="inner-loop steps at test time (MAML)")
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
    )
    p.add_argument("--dataset", default="omniglot", help="omniglot or folder (default: omniglot)")
    p.add_argument(
        "--network", help="conv4, conv4-N (N filters) or resnet12 (default: resnet12 from 64 pixels, else conv4)"
    )
    p.add_argument("--epochs", type=int, help="passes over the training classes' images (default 10)")
    p.add_argument("--batch-size", type=int, help="images per step (default 128)")
    p.add_argument("--lr", type=float, help="Adam learning rate, cosine-annealed to 0 (default 1e-3)")
    p.add_argument("--weight-decay", type=float, help="Adam weight decay (default 5e-4)")
    p.add_argument(
        "--head", help="classifier over the features: linear (default) or cosine similarity with a learned scale"
    )
    p.add_argument(
        "--augment",
        action="store_true",
        default=None,
        help="jitter each training image: rotation up to 10 degrees, scale 0.9-1.1, shift up to 10%%",
    )
    p.add_argument("--val-episodes", type=int, help="validation episodes after each epoch (default 300)")
    _add_image_options(p)
    p.add_argument("--seed", type=int, help="seed of everything random (default 0)")
    p.add_argument("--out", help="output folder (default runs/pretrain)")
    _add_common(p)

    em = sub.add_parser(
        "embed",
        help="LEO stage 2: write the embeddings of every split once (then train --dataset embeddings)",
    )
    em.add_argument("--checkpoint", required=True, help="the pretrain.pt written by `fastadapt pretrain`")
    em.add_argument("--out", required=True, help="folder for train.npz, val.npz, test.npz and meta.json")
    em.add_argument("--batch-size", type=int, default=512, help="images per forward pass (default 512)")
    _add_common(em)

    d = sub.add_parser("datasets", help="list the data sets and where they are found")
    d.add_argument("--data-dir", help="folder holding the data sets")

    dl = sub.add_parser("download", help="download a data set (needs internet), checking its sha256")
    dl.add_argument("name", help="omniglot")
    dl.add_argument("--data-dir", help="where to put it (default: $FASTADAPT_DATA or ~/.cache/fastadapt/data)")
    return parser


def cmd_train(args: argparse.Namespace) -> None:
    from fastadapt.config import make_config
    from fastadapt.evaluate import evaluate_checkpoint, format_result
    from fastadapt.train import train

    overrides = {k: v for k, v in vars(args).items() if k not in ("command", "algorithm", "dataset", "resume", "quiet")}
    overrides["out"] = args.out or f"runs/{args.algorithm}-{args.dataset}"
    config = make_config(args.algorithm, args.dataset, **overrides)
    result = train(config, resume=args.resume, progress=not args.quiet)
    if result.rank != 0:  # under torchrun, rank 0 reports and meta-tests
        return
    print(f"trained {result.step} steps; best validation score {result.best_val:.4f}; outputs in {result.out}")
    evaluation = evaluate_checkpoint(
        result.out / "best.pt", progress=not args.quiet, data_dir=config.data_dir, device=config.device
    )
    print(format_result(evaluation))
    print(f"wrote {result.out / 'eval.json'}, {result.out / 'metrics.jsonl'}, {result.out / 'learning_curve.png'}")


def cmd_eval(args: argparse.Namespace) -> None:
    from fastadapt.evaluate import evaluate_checkpoint, format_result

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
    from dataclasses import fields

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


def cmd_datasets(args: argparse.Namespace) -> None:
    from fastadapt.datasets import DATASETS, resolve_data_dir

    root = resolve_data_dir(args.data_dir)
    print(f"data directory: {root}  (--data-dir, else $FASTADAPT_DATA, else shared/data, else ~/.cache)")
    for info in DATASETS.values():
        if info.name == "omniglot":
            found = all((root / "omniglot" / f).is_file() for f in ("images_background.npz", "images_evaluation.npz"))
            where = f"found in {root / 'omniglot'}" if found else "missing: fastadapt download omniglot"
        elif info.name in ("folder", "embeddings"):
            where = "pass --data-dir DIR"
        else:
            where = "generated"
        print(f"  {info.name:<9} {info.kind:<15} {where}\n            {info.description}")


def cmd_download(args: argparse.Namespace) -> None:
    from fastadapt.datasets.download import download_omniglot
    from fastadapt.datasets.paths import resolve_data_dir
    from fastadapt.errors import ConfigError

    if args.name != "omniglot":
        raise ConfigError(f"no download for {args.name!r}; available: omniglot.")
    print(f"Omniglot ready in {download_omniglot(resolve_data_dir(args.data_dir))}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        {
            "train": cmd_train,
            "eval": cmd_eval,
            "datasets": cmd_datasets,
            "download": cmd_download,
            "pretrain": cmd_pretrain,
            "embed": cmd_embed,
        }[args.command](args)
    except FastAdaptError as exc:
        print(f"fastadapt: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fastadapt: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
