"""The 150-way K-shot protocol on a small CLINC150-shaped fixture with a fake encoder."""

from __future__ import annotations

import json

import numpy as np
import pytest
from text_fixtures import FakeSentenceModel, write_clinc_fixture

from fastadapt.errors import ConfigError, DataError
from fastadapt.text.finetune import FinetuneOptions, SentenceEmbedder
from fastadapt.text.intent import FewShotTextOptions, kshot_rows, run_fewshot_text

INTENTS = ["alarm", "balance", "play_music", "weather", "translate", "timer"]


def test_kshot_rows_are_distinct_rows_of_each_intent_and_seeded():
    labels = [i for i in INTENTS for _ in range(7)]
    rows = kshot_rows(labels, INTENTS, 3, seed=4)
    assert rows.shape == (6, 3)
    for intent, chosen in zip(INTENTS, rows):
        assert len(set(chosen)) == 3 and all(labels[r] == intent for r in chosen)
    assert np.array_equal(rows, kshot_rows(labels, INTENTS, 3, seed=4))
    assert not np.array_equal(rows, kshot_rows(labels, INTENTS, 3, seed=5))


def frozen_embedder() -> SentenceEmbedder:
    return SentenceEmbedder(FakeSentenceModel(dim=32)).eval()


def test_frozen_protocol_writes_eval_json_and_resumes(tmp_path):
    write_clinc_fixture(tmp_path, INTENTS, train=6, val=3, test=4, oos=(2, 4, 5))
    options = FewShotTextOptions(data_dir=str(tmp_path), shots=2, draws=3, out=str(tmp_path / "run"))
    result = run_fewshot_text(options, progress=False, embedder=frozen_embedder())
    saved = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert saved["setting"] == "CLINC150 6-way 2-shot intent detection" and len(saved["draws"]) == 3
    assert saved["test_queries"] == {"in_scope": 24, "oos": 5}
    for classifier in ("prototypes", "logistic"):
        accuracies = [d[classifier]["accuracy"] for d in result["draws"]]
        summary = result["summary"][classifier]
        assert summary["accuracy_mean"] == pytest.approx(np.mean(accuracies))
        assert summary["accuracy_std"] == pytest.approx(np.std(accuracies, ddof=1))
        for key in ("in_scope_accuracy", "oos_recall", "oos_precision", "oos_f1"):
            assert 0 <= summary[f"{key}_mean"] <= 1
        # words shared by an intent's utterances make the fake encoder's prototypes informative
        assert summary["accuracy_mean"] > 0.5
    # a resumed run reads the finished draws instead of recomputing them
    (tmp_path / "run" / "draw-1" / "result.json").write_text(json.dumps({**result["draws"][1], "marker": 1}))
    again = run_fewshot_text(options, resume=True, progress=False, embedder=frozen_embedder())
    assert again["draws"][1]["marker"] == 1 and again["draws"][0] == result["draws"][0]


def test_finetuned_protocol_starts_every_draw_from_the_same_encoder(tmp_path):
    write_clinc_fixture(tmp_path, INTENTS, train=5, val=2, test=3)
    embedder = frozen_embedder()
    before = {k: v.clone() for k, v in embedder.state_dict().items()}
    options = FewShotTextOptions(
        data_dir=str(tmp_path), shots=3, draws=2, finetune=True, out=str(tmp_path / "ft"),
        finetune_options=FinetuneOptions(steps=4, batch_size=9, lr=0.05, checkpoint_every=2),
    )  # fmt: skip
    result = run_fewshot_text(options, progress=False, embedder=embedder)
    assert all(np.array_equal(v, embedder.state_dict()[k]) for k, v in before.items())  # not trained in place
    for draw in result["draws"]:
        assert draw["finetune"]["steps"] == 4 and draw["finetune"]["ways_per_step"] == 3
    assert (tmp_path / "ft" / "draw-0" / "last.pt").is_file()


def test_errors_are_one_line(tmp_path):
    write_clinc_fixture(tmp_path, INTENTS, train=4)
    with pytest.raises(DataError) as exc:
        run_fewshot_text(FewShotTextOptions(data_dir=str(tmp_path), shots=5, out=str(tmp_path / "o")), progress=False)
    assert "has only 4 example(s) but 5-shot needs 5 per label" in str(exc.value) and "\n" not in str(exc.value)
    with pytest.raises(ConfigError, match="--finetune needs --shots of at least 2"):
        FewShotTextOptions(shots=1, finetune=True).validate()
    with pytest.raises(DataError, match="CLINC150 not found"):
        run_fewshot_text(FewShotTextOptions(data_dir=str(tmp_path / "none"), out=str(tmp_path / "o")), progress=False)
