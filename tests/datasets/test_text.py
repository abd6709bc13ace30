"""Text data sets: (text, label) files, CLINC150 and its domain split, episode splits of embeddings."""

from __future__ import annotations

import json

import pytest
from text_fixtures import one_line, write_clinc_fixture

from fastadapt.datasets.paths import resolve_data_dir
from fastadapt.datasets.text import (
    CLINC150_PARTS,
    LabelledTexts,
    check_examples_per_label,
    load_clinc150,
    read_clinc150_domain_split,
    read_labelled_texts,
)
from fastadapt.errors import DataError

SHARED_CLINC = resolve_data_dir() / "clinc150"


def test_csv_with_header_quoting_and_blank_lines(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text('Label,Text\nbook,"a hotel, please"\n\nmusic,play something\n', encoding="utf-8")
    data = read_labelled_texts(path)
    assert data.texts == ["a hotel, please", "play something"]
    assert data.labels == ["book", "music"]


def test_jsonl_with_numeric_labels_and_utf8(tmp_path):
    path = tmp_path / "data.jsonl"
    rows = [{"text": "réserve une table", "label": 3}, {}, {"text": "météo", "label": "weather"}]
    path.write_text("\n".join(json.dumps(r) if r else "" for r in rows) + "\n", encoding="utf-8")
    data = read_labelled_texts(path)
    assert data.texts == ["réserve une table", "météo"] and data.labels == ["3", "weather"]


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("a.csv", b"text,label\nhello,x\n  ,y\n", "line 3: empty text"),
        ("a.csv", b"text,label\nhello,x\ncaf\xe9,y\n", "line 3 is not UTF-8"),
        ("a.csv", b"sentence,intent\nhello,x\n", "must name a 'text' and a 'label' column"),
        ("a.csv", b"text,label\nhello\n", "line 2: 1 column(s)"),
        ("a.csv", b"text,label\nhello,\n", "line 2: missing or empty label"),
        ("a.jsonl", b'{"text": "hi", "label": "x"}\n{"text": "", "label": "x"}\n', "line 2: empty text"),
        ("a.jsonl", b'{"text": "hi", "label": "x"}\nnot json\n', "line 2 is not JSON"),
        ("a.jsonl", b'{"sentence": "hi"}\n', 'line 1: expected an object with "text" and "label"'),
        ("a.jsonl", b"\n\n", "holds no (text, label) rows"),
        ("a.txt", b"hello\n", "unknown text data format '.txt'"),
    ],
)
def test_bad_files_are_one_line_errors(tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError) as exc:
        read_labelled_texts(path)
    assert expected in one_line(exc)


def test_missing_file(tmp_path):
    with pytest.raises(DataError) as exc:
        read_labelled_texts(tmp_path / "nope.csv")
    assert "text data file not found" in one_line(exc)


def test_too_few_examples_per_label():
    data = LabelledTexts(["a", "b", "c", "d", "e"], ["x", "x", "x", "y", "y"])
    check_examples_per_label(data, 2, "f.csv", "2-shot")
    with pytest.raises(DataError) as exc:
        check_examples_per_label(data, 3, "f.csv", "shots + query = 3")
    assert "label 'y' has only 2 example(s) but shots + query = 3 needs 3 per label" in one_line(exc)


# --- CLINC150 ------------------------------------------------------------------------------------


def test_load_clinc150_fixture_and_errors(tmp_path):
    write_clinc_fixture(tmp_path, ["alarm", "weather"])
    data = load_clinc150(tmp_path)
    assert data.intents == ["alarm", "weather"]
    assert [len(data[p]) for p in CLINC150_PARTS] == [12, 4, 6, 2, 2, 4]
    assert data.all_texts()[data.offsets()["test"]] == data["test"].texts[0]
    with pytest.raises(DataError) as exc:
        load_clinc150(tmp_path / "elsewhere")
    assert "CLINC150 not found" in one_line(exc) and "data_full.json" in str(exc.value)
    (tmp_path / "clinc150" / "data_full.json").write_text('{"train": []}')
    with pytest.raises(DataError) as exc:
        load_clinc150(tmp_path)
    assert "has no val, test, oos_train, oos_val, oos_test part" in one_line(exc)


def test_shipped_domain_split_is_fixed_and_disjoint():
    split = read_clinc150_domain_split()
    assert {p: sorted(d) for p, d in split.items()} == {
        "train": ["credit_cards", "home", "kitchen_and_dining", "meta", "small_talk", "travel"],
        "val": ["auto_and_commute", "work"],
        "test": ["banking", "utility"],
    }
    intents = {p: [i for d in domains.values() for i in d] for p, domains in split.items()}
    assert [len(intents[p]) for p in ("train", "val", "test")] == [90, 30, 30]
    assert len(set().union(*map(set, intents.values()))) == 150
    if (SHARED_CLINC / "domains.json").is_file():  # agrees with the data's own domain lists
        domains = json.loads((SHARED_CLINC / "domains.json").read_text())
        for part in split.values():
            for domain, listed in part.items():
                assert sorted(listed) == sorted(domains[domain])
