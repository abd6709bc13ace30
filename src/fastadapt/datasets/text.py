"""Text classification data as few-shot classes: CLINC150 and any (text, label) file.

**CLINC150** (Larson et al., "An Evaluation Dataset for Intent Classification and Out-of-Scope
Prediction", EMNLP-IJCNLP 2019) is read from ``<data-dir>/clinc150/data_full.json`` (the "Full" release:
150 intents in 10 domains with 100 / 20 / 30 train / val / test utterances each, and 100 / 100 / 1000
out-of-scope ``oos`` utterances). For episodic learning the intents are split by domain
(``splits/clinc150_domains_v1.txt``, fixed and versioned): 6 domains (90 intents) meta-train,
2 (30) meta-validation -- ``work``, ``auto_and_commute`` -- and 2 (30) meta-test -- ``utility``,
``banking``. Each intent's examples are all its 150 in-scope utterances (its train, val and test rows
pooled, as the classes of an image data set pool all their images); OOS utterances are not used there.

**Your own data**: a UTF-8 file of (text, label) pairs, either

- CSV (``.csv``) with a header row naming a ``text`` and a ``label`` column (other columns are ignored;
  quote texts that hold commas, as the csv module writes them), or
- JSON Lines (``.jsonl``): one object per line with a ``"text"`` string and a ``"label"`` (string or
  number); blank lines are skipped.

Its labels are split into meta-train / meta-validation / meta-test at random (seeded, 64% / 16% / 20%, as
for image folders), or by a folder with ``train.txt``, ``val.txt`` and ``test.txt`` listing labels.

Texts become vectors through a sentence encoder (:mod:`fastadapt.text.encoder`, cached on disk), so a
split is a :class:`ClassSplit` of (n, D) float32 embeddings that every episodic learner reads.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fastadapt.errors import DataError
from fastadapt.tasks.samplers import ClassSplit

PARTS = ("train", "val", "test")
CLINC150_PARTS = ("train", "val", "test", "oos_train", "oos_val", "oos_test")
#: The sentence encoder of the text data sets unless --encoder says (fastadapt.text.encoder loads it).
DEFAULT_ENCODER = "all-MiniLM-L6-v2"
#: The versioned split of CLINC150's intents by domain (--split), and its file.
CLINC150_SPLIT = "domains-v1"
CLINC150_SPLIT_FILE = Path(__file__).with_name("splits") / "clinc150_domains_v1.txt"
OOS_LABEL = "oos"
TEXT_SUFFIXES = (".csv", ".jsonl")

CLINC150_HELP = (
    "put data_full.json of CLINC150 (github.com/clinc/oos-eval, data/data_full.json) in <data-dir>/clinc150/ "
    "(set --data-dir or $FASTADAPT_DATA)."
)
LAYOUT_HELP = (
    "use a UTF-8 .csv with a header row naming 'text' and 'label' columns, or a .jsonl file with one "
    '{"text": ..., "label": ...} object per line.'
)


@dataclass
class LabelledTexts:
    """Texts and their string labels, in file order."""

    texts: list[str]
    labels: list[str]

    def __len__(self) -> int:
        return len(self.texts)

    def label_names(self) -> list[str]:
        return sorted(set(self.labels))

    def rows_of(self, label: str) -> np.ndarray:
        return np.flatnonzero(np.asarray(self.labels) == label)


def _decode_utf8(data: bytes, path: Path) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(
            f"{path} line {line} is not UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
            f"save the file as UTF-8."
        ) from None


def _check_text(text: object, label: object, path: Path, line: int) -> tuple[str, str]:
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"{path} line {line}: empty text; remove the row or write its text.")
    if isinstance(label, bool) or not isinstance(label, (str, int)) or not str(label).strip():
        raise DataError(f"{path} line {line}: missing or empty label; give every text a string label.")
    return text.strip(), str(label).strip()


def _read_csv(content: str, path: Path) -> LabelledTexts:
    reader = csv.reader(io.StringIO(content, newline=""))
    header = next(reader, None)
    columns = [c.strip().lower() for c in header] if header else []
    if "text" not in columns or "label" not in columns:
        raise DataError(f"{path}: the first row must name a 'text' and a 'label' column (got {header}); {LAYOUT_HELP}")
    text_col, label_col = columns.index("text"), columns.index("label")
    texts, labels = [], []
    for row in reader:
        if not any(cell.strip() for cell in row):
            continue  # blank line
        line = reader.line_num
        if len(row) <= max(text_col, label_col):
            raise DataError(
                f"{path} line {line}: {len(row)} column(s), expected {len(columns)}; quote texts with commas."
            )
        text, label = _check_text(row[text_col], row[label_col], path, line)
        texts.append(text)
        labels.append(label)
    return LabelledTexts(texts, labels)


def _read_jsonl(content: str, path: Path) -> LabelledTexts:
    texts, labels = [], []
    for line, raw in enumerate(content.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path} line {line} is not JSON ({exc.msg}); {LAYOUT_HELP}") from None
        if not isinstance(record, dict) or "text" not in record or "label" not in record:
            raise DataError(f'{path} line {line}: expected an object with "text" and "label"; {LAYOUT_HELP}')
        text, label = _check_text(record["text"], record["label"], path, line)
        texts.append(text)
        labels.append(label)
    return LabelledTexts(texts, labels)


def read_labelled_texts(path: Path) -> LabelledTexts:
    """(text, label) pairs of a ``.csv`` or ``.jsonl`` file (module docstring); one-line errors for a missing
    file, another format, bytes that are not UTF-8, an empty text or label, and a file with no rows."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"text data file not found: {path}; {LAYOUT_HELP}")
    if path.suffix.lower() not in TEXT_SUFFIXES:
        raise DataError(f"{path}: unknown text data format {path.suffix or '(no suffix)'!r}; {LAYOUT_HELP}")
    content = _decode_utf8(path.read_bytes(), path)
    data = _read_csv(content, path) if path.suffix.lower() == ".csv" else _read_jsonl(content, path)
    if not data.texts:
        raise DataError(f"{path} holds no (text, label) rows; {LAYOUT_HELP}")
    return data


def check_examples_per_label(data: LabelledTexts, needed: int, where: str, what: str) -> None:
    """A one-line :class:`DataError` when a label has fewer than ``needed`` examples (``what`` says why)."""
    names, counts = np.unique(np.asarray(data.labels), return_counts=True)
    small = names[counts < needed]
    if len(small):
        fewest = int(counts.min())
        raise DataError(
            f"{where}: label {str(small[0])!r} has only {fewest} example(s) but {what} needs {needed} per label "
            f"({len(small)} such label(s)); lower the shots or add examples."
        )


# --- CLINC150 ---------------------------------------------------------------------------------------


@dataclass
class Clinc150:
    """The six parts of CLINC150's ``data_full.json`` as :class:`LabelledTexts`."""

    parts: dict[str, LabelledTexts]
    path: Path

    def __getitem__(self, part: str) -> LabelledTexts:
        return self.parts[part]

    @property
    def intents(self) -> list[str]:
        return self.parts["train"].label_names()

    def all_texts(self) -> list[str]:
        """Every utterance in a fixed order (the parts in :data:`CLINC150_PARTS` order): what is embedded."""
        return [t for part in CLINC150_PARTS for t in self.parts[part].texts]

    def offsets(self) -> dict[str, int]:
        """First row of each part in :meth:`all_texts`."""
        out, row = {}, 0
        for part in CLINC150_PARTS:
            out[part] = row
            row += len(self.parts[part])
        return out


def clinc150_file(data_dir: Path) -> Path:
    return Path(data_dir).expanduser() / "clinc150" / "data_full.json"


def load_clinc150(data_dir: Path) -> Clinc150:
    """CLINC150 from ``<data_dir>/clinc150/data_full.json``, checked (one-line errors)."""
    path = clinc150_file(data_dir)
    if not path.is_file():
        raise DataError(f"CLINC150 not found: {path}; {CLINC150_HELP}")
    try:
        raw = json.loads(_decode_utf8(path.read_bytes(), path))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} is not JSON ({exc.msg} at line {exc.lineno}); get data_full.json again.") from None
    missing = [p for p in CLINC150_PARTS if not isinstance(raw, dict) or p not in raw]
    if missing:
        raise DataError(f"{path} has no {', '.join(missing)} part; it must be CLINC150's data_full.json.")
    parts = {}
    for part in CLINC150_PARTS:
        rows = raw[part]
        if not isinstance(rows, list) or any(not isinstance(r, list) or len(r) != 2 for r in rows):
            raise DataError(f"{path}: part {part!r} must be a list of [utterance, intent] pairs.")
        texts, labels = [], []
        for i, (text, label) in enumerate(rows):
            if not isinstance(text, str) or not text.strip():
                raise DataError(f"{path}: part {part!r} row {i} has an empty utterance; get data_full.json again.")
            texts.append(text)
            labels.append(str(label))
        parts[part] = LabelledTexts(texts, labels)
    return Clinc150(parts, path)


def read_clinc150_domain_split(path: Path = CLINC150_SPLIT_FILE) -> dict[str, dict[str, list[str]]]:
    """``{part: {domain: [intent, ...]}}`` from the shipped split file (``<part> <domain> <intent>`` lines)."""
    out: dict[str, dict[str, list[str]]] = {p: {} for p in PARTS}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            part, domain, intent = line.split()
            out[part].setdefault(domain, []).append(intent)
    return out


def clinc150_intent_split(data: Clinc150) -> dict[str, list[str]]:
    """Intents of meta-train / meta-validation / meta-test, checked against the data."""
    known = set(data.intents)
    split = {
        part: [i for intents in domains.values() for i in intents]
        for part, domains in read_clinc150_domain_split().items()
    }
    for intents in split.values():
        unknown = [i for i in intents if i not in known]
        if unknown:
            raise DataError(f"intent {unknown[0]!r} of the CLINC150 domain split is missing from {data.path}.")
    return split


def class_split(name: str, embeddings: np.ndarray, labels: list[str], classes: list[str]) -> ClassSplit:
    """The rows of ``classes`` (in that order) as one :class:`ClassSplit` of float32 vectors."""
    labels_array = np.asarray(labels)
    rows = [np.flatnonzero(labels_array == c) for c in classes]
    order = np.concatenate(rows)
    tensor = torch.from_numpy(np.ascontiguousarray(embeddings[order], dtype=np.float32))
    bounds = np.cumsum([0] + [len(r) for r in rows])
    indices = [np.arange(bounds[i], bounds[i + 1]) for i in range(len(classes))]
    return ClassSplit(name, tensor, indices, list(classes))
