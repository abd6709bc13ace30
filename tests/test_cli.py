"""The ``fastadapt`` command line, in-process: tiny end-to-end runs, and one clear error line (exit code 2,
no traceback) for every kind of bad input."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import make_image_folder, run_error, run_ok

from fastadapt.algorithms import algorithms
from fastadapt.checkpoint import load_checkpoint
from fastadapt.cli import main
from fastadapt.datasets import resolve_data_dir

ALGORITHMS = algorithms()

ACCURACY_KEYS = {"algorithm", "dataset", "ways", "shots", "episodes", "accuracy_mean", "accuracy_ci95"}
MSE_KEYS = {"algorithm", "dataset", "ways", "shots", "episodes", "mse_mean", "mse_ci95"}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("data") / "images")


def protonet_args(folder: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--algorithm",
        "protonet",
        "--dataset",
        "folder",
        "--data-dir",
        str(folder),
        "--image-size",
        "16",
        "--ways",
        "3",
        "--shots",
        "1",
        "--query",
        "2",
        "--eval-query",
        "3",
        "--steps",
        "4",
        "--val-every",
        "2",
        "--val-episodes",
        "4",
        "--test-episodes",
        "6",
        "--out",
        str(out),
        *extra,
    ]


def maml_args(out: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--algorithm",
        "maml",
        "--dataset",
        "sinusoid",
        "--shots",
        "5",
        "--query",
        "5",
        "--eval-query",
        "5",
        "--meta-batch-size",
        "2",
        "--steps",
        "3",
        "--val-every",
        "3",
        "--val-episodes",
        "4",
        "--test-episodes",
        "6",
        "--out",
        str(out),
        *extra,
    ]


# --- end to end ---------------------------------------------------------------------------------


def test_protonet_train_then_eval_on_folder(folder: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "proto"
    stdout = run_ok(capsys, protonet_args(folder, out, "--quiet"))
    assert "trained 4 steps" in stdout and "3-way 1-shot" in stdout
    for name in ("best.pt", "last.pt", "eval.json", "metrics.jsonl", "learning_curve.png"):
        assert (out / name).is_file(), name
    result = json.loads((out / "eval.json").read_text())
    assert ACCURACY_KEYS <= set(result)
    assert result["algorithm"] == "protonet" and result["dataset"] == "folder"
    assert result["ways"] == 3 and result["shots"] == 1 and result["episodes"] == 6
    assert 0.0 <= result["accuracy_mean"] <= 1.0 and result["accuracy_ci95"] >= 0.0

    # eval --checkpoint: another number of episodes, another output folder; seeded, so repeatable.
    stdout = run_ok(
        capsys,
        ["eval", "--checkpoint", str(out / "best.pt"), "--episodes", "5", "--out", str(tmp_path / "e1"), "--quiet"],
    )
    first = json.loads((tmp_path / "e1" / "eval.json").read_text())
    assert json.loads(stdout.strip().splitlines()[-1]) == first
    assert ACCURACY_KEYS <= set(first) and first["episodes"] == 5 and first["ways"] == 3
    run_ok(
        capsys,
        ["eval", "--checkpoint", str(out / "best.pt"), "--episodes", "5", "--out", str(tmp_path / "e2"), "--quiet"],
    )
    second = json.loads((tmp_path / "e2" / "eval.json").read_text())
    assert second["accuracy_mean"] == first["accuracy_mean"]
    # Another episode shape than trained (metric methods): 2-way 2-shot.
    stdout = run_ok(
        capsys,
        [
            "eval",
            "--checkpoint",
            str(out / "best.pt"),
            "--episodes",
            "4",
            "--ways",
            "2",
            "--shots",
            "2",
            "--out",
            str(tmp_path / "e3"),
            "--quiet",
        ],
    )
    assert "2-way 2-shot" in stdout
    reshaped = json.loads((tmp_path / "e3" / "eval.json").read_text())
    assert reshaped["ways"] == 2 and reshaped["shots"] == 2
    # Without --out, eval.json goes beside the checkpoint.
    run_ok(capsys, ["eval", "--checkpoint", str(out / "last.pt"), "--episodes", "3"])
    assert json.loads((out / "eval.json").read_text())["episodes"] == 3
    # --split val scores the validation classes into eval_val.json and leaves the test record alone.
    test_record = (out / "eval.json").read_text()
    stdout = run_ok(capsys, ["eval", "--checkpoint", str(out / "last.pt"), "--episodes", "4", "--split", "val"])
    assert "validation classes" in stdout
    assert json.loads((out / "eval_val.json").read_text())["split"] == "val"
    assert (out / "eval.json").read_text() == test_record

    # --resume of a finished run with more steps continues it.
    stdout = run_ok(capsys, protonet_args(folder, out, "--quiet", "--resume", "--steps", "6"))
    assert "trained 6 steps" in stdout


@pytest.mark.parametrize("strategy", ["loop", "vmap", "fold"])
def test_maml_train_then_eval_on_sinusoid(tmp_path: Path, capsys, strategy: str) -> None:
    out = tmp_path / strategy
    stdout = run_ok(capsys, maml_args(out, "--strategy", strategy, "--quiet"))
    assert "MSE" in stdout
    result = json.loads((out / "eval.json").read_text())
    assert MSE_KEYS <= set(result) and "accuracy_mean" not in result
    assert result["algorithm"] == "maml" and result["dataset"] == "sinusoid"
    assert result["ways"] is None and result["shots"] == 5 and result["episodes"] == 6
    assert result["mse_mean"] > 0 and result["mse_ci95"] >= 0

    run_ok(
        capsys,
        [
            "eval",
            "--checkpoint",
            str(out / "best.pt"),
            "--episodes",
            "4",
            "--eval-inner-steps",
            "2",
            "--out",
            str(tmp_path / "e"),
            "--quiet",
        ],
    )
    again = json.loads((tmp_path / "e" / "eval.json").read_text())
    assert MSE_KEYS <= set(again) and again["episodes"] == 4


def test_loop_vmap_and_fold_strategies_train_the_same_model(tmp_path: Path, capsys) -> None:
    for strategy in ("loop", "vmap", "fold"):
        run_ok(capsys, maml_args(tmp_path / strategy, "--strategy", strategy, "--quiet"))
    loop = json.loads((tmp_path / "loop" / "eval.json").read_text())
    for strategy in ("vmap", "fold"):
        other = json.loads((tmp_path / strategy / "eval.json").read_text())
        assert other["mse_mean"] == pytest.approx(loop["mse_mean"], rel=1e-4)


def test_datasets_lists_every_data_set(tmp_path: Path, capsys) -> None:
    stdout = run_ok(capsys, ["datasets", "--data-dir", str(tmp_path)])
    assert str(tmp_path) in stdout
    # One "  name  kind  where" line per data set, each followed by an indented description.
    names = [line.split()[0] for line in stdout.splitlines()[1:] if re.match(r"  \S", line)]
    assert names == ["omniglot", "mini-imagenet", "folder", "embeddings", "clinc150", "text", "sinusoid", "linear"]
    assert "missing: fastadapt download omniglot (or --download)" in stdout  # nothing in tmp_path
    assert f"mini-imagenet: not found (no mini-ImageNet found in {tmp_path}" in stdout
    root = resolve_data_dir()
    if (root / "omniglot" / "images_background.npz").is_file():
        assert "found in" in run_ok(capsys, ["datasets"])


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["eval", "--help"], ["datasets", "-h"]])
def test_help_exits_zero(capsys, argv: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: fastadapt")
    if argv[0] == "train":
        assert "--inner-lr" in out and "--resume" in out


def test_console_script_entry_point() -> None:
    exe = Path(sys.executable).with_name("fastadapt")
    assert exe.is_file(), "the fastadapt console script is not installed in this environment"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0 and "usage: fastadapt" in done.stdout and "train" in done.stdout
    # Errors leave through the script with exit status 2 and one line.
    done = subprocess.run(
        [str(exe), "train", "--algorithm", "wizardry"], capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode == 2
    expected = f"fastadapt: error: unknown algorithm 'wizardry'; choose one of: {', '.join(sorted(ALGORITHMS))}."
    assert done.stderr.splitlines() == [expected]


# --- bad input: exit code 2, one line ------------------------------------------------------------


def test_unknown_algorithm(capsys, tmp_path: Path) -> None:
    argv = ["train", "--algorithm", "wizardry", "--dataset", "sinusoid", "--out", str(tmp_path)]
    line = run_error(capsys, argv)
    assert "wizardry" in line and all(name in line for name in ALGORITHMS)


def test_unknown_dataset(capsys, tmp_path: Path) -> None:
    line = run_error(capsys, ["train", "--dataset", "mnist", "--out", str(tmp_path)])
    assert "mnist" in line and "omniglot" in line and "sinusoid" in line


def test_protonet_on_sinusoid(capsys, tmp_path: Path) -> None:
    argv = ["train", "--algorithm", "protonet", "--dataset", "sinusoid", "--out", str(tmp_path)]
    line = run_error(capsys, argv)
    assert "regression" in line and "maml" in line


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--ways", "5"], "--ways"),  # the validation split has only 3 classes
        (["--ways", "14"], "--ways"),  # the training split has only 13
        (["--ways", "1"], "--ways"),
        (["--shots", "3", "--query", "4"], "--shots/--query"),  # 7 > 6 images per class
        (["--eval-query", "6"], "--shots/--eval-query"),  # 1 + 6 > 6 in validation/test episodes
        (["--image-size", "8"], "--image-size"),  # too small for Conv-4's four poolings
        (["--strategy", "threads"], "--strategy"),
        (["--workers", "2"], "--workers applies to --algorithm maml"),  # protonet has no such machinery
        (["--no-channels-last"], "--channels-last/--no-channels-last applies to --algorithm maml"),
        (["--steps", "0"], "--steps"),
        (["--device", "tpu9"], "--device"),
        (["--augment", "rotate"], "--augment"),
        (["--channels", "2"], "--channels"),
        pytest.param(
            ["--device", "cuda"],
            "no CUDA device",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present"),
        ),
    ],
)
def test_impossible_settings_fail_before_training(folder: Path, tmp_path: Path, capsys, extra, needle):
    out = tmp_path / "run"
    line = run_error(capsys, protonet_args(folder, out, *extra))
    assert needle in line
    assert not (out / "last.pt").exists(), "the error came only after training"


def test_maml_checkpoint_cannot_be_evaluated_with_other_ways(folder: Path, tmp_path: Path, capsys) -> None:
    argv = protonet_args(folder, tmp_path, "--quiet")
    argv[argv.index("protonet")] = "maml"
    run_ok(capsys, argv)
    line = run_error(capsys, ["eval", "--checkpoint", str(tmp_path / "best.pt"), "--ways", "2"])
    assert "3-way classifier head" in line and "--ways 3" in line


def test_maml_train_ways_must_equal_ways(folder: Path, tmp_path: Path, capsys) -> None:
    argv = protonet_args(folder, tmp_path, "--train-ways", "4")
    argv[argv.index("protonet")] = "maml"
    assert "--train-ways" in run_error(capsys, argv)


def test_missing_folder_data_dir(tmp_path: Path, capsys) -> None:
    line = run_error(capsys, protonet_args(tmp_path / "nowhere", tmp_path / "run"))
    assert "not found" in line and str(tmp_path / "nowhere") in line


def test_missing_omniglot_says_how_to_get_it(tmp_path: Path, capsys) -> None:
    line = run_error(
        capsys,
        ["train", "--dataset", "omniglot", "--data-dir", str(tmp_path / "empty"), "--out", str(tmp_path / "run")],
    )
    assert "pass --download to fetch it" in line and "fastadapt download omniglot" in line


def test_corrupt_omniglot_file(tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FASTADAPT_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "data" / "omniglot"
    root.mkdir(parents=True)
    images = np.zeros((20, 105, 105), np.uint8)
    names = np.array(["A"] * 20)
    np.savez_compressed(root / "images_background.npz", images=images, alphabet=names, character=names)
    (root / "images_evaluation.npz").write_bytes((root / "images_background.npz").read_bytes()[:300])
    line = run_error(
        capsys, ["train", "--dataset", "omniglot", "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "run")]
    )
    assert "corrupt" in line and "images_evaluation.npz" in line


def test_corrupt_image_in_folder(tmp_path: Path, capsys) -> None:
    data = make_image_folder(tmp_path / "images")
    (data / "class03" / "2.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    line = run_error(capsys, protonet_args(data, tmp_path / "run"))
    assert "2.png" in line


def test_resume_into_other_configuration(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    run_ok(capsys, maml_args(out, "--quiet"))
    before = (out / "last.pt").read_bytes()
    line = run_error(capsys, maml_args(out, "--resume", "--inner-lr", "0.5"))
    assert "different configuration" in line and "inner_lr" in line and "--out" in line
    assert (out / "last.pt").read_bytes() == before


def test_corrupt_checkpoint_for_eval(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    run_ok(capsys, maml_args(out, "--quiet", "--steps", "1", "--val-every", "1"))
    data = (out / "best.pt").read_bytes()
    (out / "best.pt").write_bytes(data[: len(data) // 3])
    line = run_error(capsys, ["eval", "--checkpoint", str(out / "best.pt")])
    assert "corrupt" in line and "best.pt" in line
    (out / "best.pt").write_bytes(b"")
    assert "corrupt" in run_error(capsys, ["eval", "--checkpoint", str(out / "best.pt")])


def test_missing_checkpoint_for_eval(tmp_path: Path, capsys) -> None:
    line = run_error(capsys, ["eval", "--checkpoint", str(tmp_path / "nope.pt")])
    assert "not found" in line


def test_unknown_download(capsys) -> None:
    assert "omniglot" in run_error(capsys, ["download", "imagenet"])


def test_folder_colour_and_size_come_from_the_images(tmp_path: Path, capsys) -> None:
    """Without --channels/--image-size, a folder of 20x20 colour photos trains as RGB 20x20, says so, and the
    checkpoint keeps what was chosen (evaluation rebuilds the same network)."""
    photos = make_image_folder(tmp_path / "photos", classes=16, per_class=5, size=20, colour=True)
    argv = protonet_args(photos, tmp_path / "run")
    del argv[argv.index("--image-size") : argv.index("--image-size") + 2]
    stdout = run_ok(capsys, argv)
    assert f"{photos}: 16 classes, loaded as RGB 20x20 (colour in 64 of 64 sampled images" in stdout
    assert "median shorter side 20 px); --channels and --image-size override" in stdout
    saved = load_checkpoint(tmp_path / "run" / "best.pt")["config"]
    assert (saved["image_size"], saved["channels"]) == (20, 3)
    run_ok(capsys, ["eval", "--checkpoint", str(tmp_path / "run" / "best.pt"), "--episodes", "3", "--quiet"])
    # The flags override; the log line says so.
    stdout = run_ok(capsys, [*argv, "--channels", "1", "--image-size", "16", "--out", str(tmp_path / "gray")])
    assert "loaded as grayscale 16x16 (--channels 1; --image-size 16)" in stdout


def test_maml_on_linear_tasks_from_the_cli(tmp_path: Path, capsys) -> None:
    argv = maml_args(tmp_path / "linear", "--quiet")
    argv[argv.index("sinusoid")] = "linear"
    stdout = run_ok(capsys, argv)
    assert "maml linear 5-shot: MSE" in stdout
    assert json.loads((tmp_path / "linear" / "eval.json").read_text())["dataset"] == "linear"


def test_device_auto_runs_on_what_is_there(tmp_path: Path, capsys) -> None:
    run_ok(capsys, maml_args(tmp_path / "auto", "--device", "auto", "--quiet"))
    run_ok(capsys, ["eval", "--checkpoint", str(tmp_path / "auto" / "best.pt"), "--device", "auto", "--quiet"])


def test_tensorboard_without_the_package_is_one_line(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # importing it raises ImportError
    line = run_error(capsys, maml_args(tmp_path / "tb", "--tensorboard"))
    assert "pip install 'fastadapt[tensorboard]'" in line
    assert not (tmp_path / "tb" / "metrics.jsonl").exists()


@pytest.mark.parametrize(
    "algorithm, extra",
    [
        ("protonet", []),
        ("matching", []),
        ("matching", ["--fce"]),
        ("relation", ["--image-size", "28"]),  # the relation module needs at least 22 pixels
        ("maml", ["--meta-batch-size", "2"]),
        ("anil", ["--meta-batch-size", "2"]),
        ("metasgd", ["--meta-batch-size", "2"]),
        ("reptile", ["--meta-batch-size", "2", "--train-shots", "1"]),
    ],
)
def test_every_image_method_trains_and_evaluates_from_the_cli(folder: Path, tmp_path: Path, capsys, algorithm, extra):
    argv = protonet_args(folder, tmp_path / "run", "--quiet", *extra)
    argv[argv.index("protonet")] = algorithm
    stdout = run_ok(capsys, argv)
    assert "trained 4 steps" in stdout
    result = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert ACCURACY_KEYS <= set(result) and result["algorithm"] == algorithm and result["episodes"] == 6
    assert 0.0 <= result["accuracy_mean"] <= 1.0
    run_ok(capsys, ["eval", "--checkpoint", str(tmp_path / "run" / "best.pt"), "--episodes", "3", "--quiet"])


# --- presets and config files --------------------------------------------------------------------


def test_presets_lists_every_method_and_prints_one_as_a_config_file(capsys) -> None:
    listing = run_ok(capsys, ["presets"])
    assert all(name in listing for name in ALGORITHMS)
    text = run_ok(capsys, ["presets", "maml", "omniglot"])
    import yaml

    settings = yaml.safe_load(text)
    assert settings["algorithm"] == "maml" and settings["network"] == "conv4-stride" and settings["inner_lr"] == 0.4
    assert "fce" not in settings  # Matching Networks' option is not MAML's
    toml_text = run_ok(capsys, ["presets", "reptile", "sinusoid", "--format", "toml"])
    assert 'inner_optimizer = "sgd"' in toml_text


@pytest.mark.parametrize("suffix", [".yaml", ".toml", ".json"])
def test_a_config_file_runs_and_flags_override_it(folder: Path, tmp_path: Path, capsys, suffix: str) -> None:
    settings = {"algorithm": "protonet", "dataset": "folder", "data_dir": str(folder), "image_size": 16, "ways": 3,
                "shots": 1, "query": 2, "eval_query": 3, "steps": 2, "val_every": 2, "val_episodes": 3,
                "test_episodes": 3, "meta_batch_size": 2}  # fmt: skip
    path = tmp_path / f"run{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(settings))
    elif suffix == ".toml":
        path.write_text("\n".join(f"{k} = {json.dumps(v)}" for k, v in settings.items()))
    else:
        import yaml

        path.write_text(yaml.safe_dump(settings))
    out = tmp_path / "run"
    run_ok(capsys, ["train", "--config", str(path), "--steps", "4", "--quiet", "--out", str(out)])
    saved = torch.load(out / "last.pt", weights_only=True)
    assert saved["config"]["steps"] == 4 and saved["config"]["ways"] == 3 and saved["step"] == 4


def test_bad_config_files_give_one_line(tmp_path: Path, capsys) -> None:
    missing = run_error(capsys, ["train", "--config", str(tmp_path / "none.yaml")])
    assert "config file not found" in missing
    broken = tmp_path / "broken.yaml"
    broken.write_text("ways: [3\n")
    assert "does not parse" in run_error(capsys, ["train", "--config", str(broken)])
    other = tmp_path / "other.yaml"
    other.write_text("algorithm: protonet\ninner_lr: 0.4\n")
    assert "inner_lr" in run_error(capsys, ["train", "--config", str(other)])
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    assert "mapping" in run_error(capsys, ["train", "--config", str(listing)])
    for text, needle in [("algorithm: [1, 2]\n", "unknown algorithm [1, 2]"), ("dataset: {a: 1}\n", "dataset must be"),
                         ("env: [3]\n", "unknown env [3]")]:  # fmt: skip
        names = tmp_path / "names.yaml"
        names.write_text(text)
        method = ["--algorithm", "maml-rl"] if "env" in text else []
        assert needle in run_error(capsys, ["train", *method, "--config", str(names)])


def test_train_help_for_one_method_shows_its_options_only(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["train", "--algorithm", "protonet", "--help"])
    out = capsys.readouterr().out
    assert "--distance" in out and "--inner-lr" not in out and "--steps" in out


# --- what fuzzing found (tests/fuzzing.py, bench/fuzz_loaders.py) ------------------------------------------------


@pytest.mark.parametrize(
    "text, needle",
    [
        ("ways: five\n", "--ways must be an int (got 'five')"),  # TypeError escaped before
        ("inner_lr: [1, 2]\n", "--inner-lr must be a float (got [1, 2])"),  # TypeError escaped before
        ("inner_steps: 1.5\n", "--inner-steps must be an int (got 1.5)"),
        ("first_order: 3\n", "--first-order must be a bool (got 3)"),
        ("seed: 100000000000000000000000000000\n", "--seed must be between 0 and 2**62"),  # torch overflowed
    ],
)
def test_config_file_values_of_the_wrong_type_give_one_line(tmp_path: Path, capsys, text: str, needle: str) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(text)
    assert needle in run_error(capsys, [*maml_args(tmp_path / "out"), "--config", str(config)])


def test_eval_values_are_checked_before_any_episode(folder: Path, tmp_path: Path, capsys) -> None:
    run_ok(capsys, protonet_args(folder, tmp_path / "run"))
    evaluate = ["eval", "--checkpoint", str(tmp_path / "run" / "best.pt"), "--quiet"]
    for episodes in ("0", "-5"):  # -5 reached torch.cat of no scores before
        assert "--episodes must be at least 1" in run_error(capsys, [*evaluate, "--episodes", episodes])
    assert "--ways must be at least 2" in run_error(capsys, [*evaluate, "--ways", "1"])
    (tmp_path / "a-file").write_text("")  # the output folder could not be made: FileExistsError escaped after the run
    assert "cannot create the output folder" in run_error(capsys, [*evaluate, "--out", str(tmp_path / "a-file")])


def test_a_checkpoint_whose_weights_do_not_fit_its_model_is_one_line(folder: Path, tmp_path: Path, capsys) -> None:
    run_ok(capsys, protonet_args(folder, tmp_path / "run"))
    state = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    state["model"]["encoder.extra"] = torch.zeros(2)  # load_state_dict's RuntimeError escaped before
    torch.save(state, tmp_path / "edited.pt")
    line = run_error(capsys, ["eval", "--checkpoint", str(tmp_path / "edited.pt"), "--quiet"])
    assert "edited.pt: its weights do not fit the protonet model" in line and "encoder.extra" in line


def test_a_regression_data_set_for_a_classifier_names_both_options(tmp_path: Path, capsys) -> None:
    argv = ["train", "--algorithm", "matching", "--dataset", "sinusoid", "--out", str(tmp_path / "o")]
    line = run_error(capsys, argv)
    assert "--algorithm matching is a classification method and --dataset sinusoid" in line


def test_a_checkpoint_with_impossible_settings_is_refused_by_name(tmp_path: Path, capsys) -> None:
    """Settings of the right type but impossible (an edited checkpoint) are checked as a command line's are."""
    run_ok(capsys, maml_args(tmp_path / "run"))
    state = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    state["config"]["inner_lr"] = float("nan")
    torch.save(state, tmp_path / "edited.pt")
    line = run_error(capsys, ["eval", "--checkpoint", str(tmp_path / "edited.pt"), "--quiet"])
    assert "edited.pt: --inner-lr must be a finite number (got nan)" in line


def test_devices_torch_knows_but_fastadapt_does_not_run_on_are_refused(tmp_path: Path, capsys) -> None:
    for device in ("meta", "mps"):  # accepted before, then failed mid-run ("Cannot copy out of meta tensor")
        line = run_error(capsys, [*maml_args(tmp_path / "out"), "--device", device])
        assert f"--device {device}: fastadapt runs on cpu or cuda" in line


def test_a_network_too_wide_for_memory_is_refused_before_it_is_built(folder: Path, tmp_path: Path, capsys) -> None:
    """conv4-99999999 asked torch for 4.9 TB (a RuntimeError from its allocator escaped, from `pretrain`)."""
    line = run_error(capsys, protonet_args(folder, tmp_path / "out", "--network", "conv4-99999999"))
    assert "--network conv4-99999999, its weights, gradients and optimiser state, needs" in line
    pretrain = ["pretrain", "--dataset", "folder", "--data-dir", str(folder), "--network", "conv4-99999999"]
    assert "use fewer filters" in run_error(capsys, [*pretrain, "--out", str(tmp_path / "p")])


def test_config_names_that_are_not_printable_stay_on_one_line(tmp_path: Path, capsys) -> None:
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"bad\nname": 1}))
    line = run_error(capsys, [*maml_args(tmp_path / "out"), "--config", str(config)])
    assert "has no setting(s) 'bad\\nname'" in line


def test_an_empty_split_folder_name_is_not_the_working_directory(folder: Path, tmp_path: Path, capsys) -> None:
    line = run_error(capsys, protonet_args(folder, tmp_path / "out", "--split", ""))
    assert "--split '' names no folder" in line


def test_an_image_network_on_regression_tasks_is_one_line(tmp_path: Path, capsys) -> None:
    line = run_error(capsys, maml_args(tmp_path / "run", "--network", "conv4"))
    assert "--network conv4 takes images" in line and "--network mlp" in line
    argv = maml_args(tmp_path / "run")
    argv[argv.index("maml")], argv[argv.index("sinusoid")] = "maml++", "linear"  # no preset: MAML++'s defaults
    assert "--per-step-bn needs a network with batch norm" in run_error(capsys, argv)


def test_paths_the_system_refuses_and_empty_ones_are_one_line(tmp_path: Path, capsys) -> None:
    """Found by fuzzing (target cli_paths): a name longer than the file system allows escaped as OSError from
    --data-dir, --config, --checkpoint and pretrain's --data-dir; an empty --out or --config meant the working
    directory (embed wrote its files there)."""
    long_name = str(tmp_path / ("x" * 300))
    line = run_error(capsys, [*maml_args(tmp_path / "out"), "--config", long_name])
    assert "cannot use " in line and "(File name too long); check the path given" in line
    assert "(File name too long)" in run_error(capsys, ["eval", "--checkpoint", long_name])
    pretrain = ["pretrain", "--dataset", "folder", "--out", str(tmp_path / "p"), "--data-dir"]
    assert "(File name too long)" in run_error(capsys, [*pretrain, long_name])
    assert "image folder not found" in run_error(capsys, [*pretrain, str(tmp_path / "none")])  # a TypeError before
    for option in ("--out", "--config"):
        assert f"{option} '' names no path" in run_error(capsys, [*maml_args(tmp_path / "o2"), option, ""])
    embed = ["embed", "--checkpoint", str(tmp_path / "none.pt"), "--out", ""]
    assert "--out '' names no path" in run_error(capsys, embed)


def test_running_out_of_memory_is_one_line_naming_the_sizes_given(capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    import fastadapt.cli as cli

    def allocate_too_much(args) -> None:
        torch.empty(10**13)  # 40 TB: torch's own allocator error, on any machine

    monkeypatch.setitem(cli.COMMANDS, "train", allocate_too_much)
    line = run_error(capsys, ["train", "--algorithm", "mann", "--dataset", "omniglot", "--controller-size=100000"])
    assert "out of memory (an allocation of 37252.9 GiB failed)" in line
    assert "--controller-size=100000" in line
    other = RuntimeError("shape mismatch")
    monkeypatch.setitem(cli.COMMANDS, "train", lambda args: (_ for _ in ()).throw(other))
    with pytest.raises(RuntimeError, match="shape mismatch"):  # any other error is not dressed as memory
        main(["train", "--algorithm", "maml", "--dataset", "sinusoid"])
