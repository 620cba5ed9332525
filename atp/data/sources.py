"""Adapters from the real benchmarks' formats to the record contract.

Each adapter turns one raw row into a record or raises ValueError saying what is
wrong; `load_source` reads rows from a local file or the hub and adds the file
and line to the message (or skips and counts bad rows when asked to).

| format          | raw row                                                        |
|-----------------|----------------------------------------------------------------|
| gsm8k_aug_text  | iCoT text line `question||<<a>> <<b>> #### answer`            |
| gsm8k_aug       | {"question", "cot": "<<a>> <<b>>", "answer"}                  |
| gsm8k           | {"question", "answer": "...<<a>>...\\n#### N"}                 |
| gsm_hard        | {"input", "code", "target"}                                   |
| svamp           | {"Body", "Question", "Equation", "Answer"}                    |
| multiarith      | {"question", "final_ans"}                                     |
| coconut         | JSON list of {"question", "steps": [...], "answer"}           |
| contract        | JSONL already in the record contract                          |
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from atp.data.records import DataError, validate_record
from atp.text import canonical_number, extract_steps

log = logging.getLogger(__name__)


def _field(row: dict, key: str) -> object:
    if not isinstance(row, dict):
        raise ValueError(f"expected a JSON object, got {type(row).__name__}")
    if key not in row or row[key] is None:
        raise ValueError(f"missing field '{key}'")
    return row[key]


def _text(row: dict, key: str) -> str:
    value = _field(row, key)
    if not isinstance(value, str):
        raise ValueError(f"field '{key}' must be a string, got {type(value).__name__}")
    return value


def _answer(value: object, key: str) -> str:
    try:
        return canonical_number(value)
    except (ValueError, TypeError):
        raise ValueError(f"field '{key}' = {value!r} is not a number") from None


def _after_hashes(text: str, key: str) -> tuple[str, str]:
    """Split `body #### answer`."""
    if "####" not in text:
        raise ValueError(f"field '{key}' has no '#### answer'")
    body, answer = text.rsplit("####", 1)
    return body, _answer(answer.strip(), key)


def gsm8k_aug_text(line: str) -> dict:
    """`question||<<a>> <<b>> #### 42` (the iCoT text form of GSM8K-Aug)."""
    if not isinstance(line, str) or "||" not in line:
        raise ValueError("expected 'question||<<step>> ... #### answer'")
    question, rest = line.split("||", 1)
    cot, answer = _after_hashes(rest, "cot")
    return {"question": question.strip(), "steps": extract_steps(cot), "answer": answer}


def gsm8k_aug(row: dict) -> dict:
    """{"question", "cot": "<<a>> <<b>>", "answer"} (the dataset form of GSM8K-Aug)."""
    cot = _text(row, "cot")
    return {"question": _text(row, "question"), "steps": extract_steps(cot), "answer": _answer(_field(row, "answer"), "answer")}


def gsm8k(row: dict) -> dict:
    """Original GSM8K: the answer text holds calculator annotations and ends with `#### N`."""
    body, answer = _after_hashes(_text(row, "answer"), "answer")
    return {"question": _text(row, "question"), "steps": extract_steps(body), "answer": answer}


def gsm_hard(row: dict) -> dict:
    """GSM-Hard: a question (`input`), a Python solution (`code`) and a numeric `target`."""
    return {"question": _text(row, "input"), "steps": [], "answer": _answer(_field(row, "target"), "target")}


def svamp(row: dict) -> dict:
    """SVAMP: the question is Body + Question; Equation is kept only as metadata."""
    body, question = _text(row, "Body").strip(), _text(row, "Question").strip()
    separator = " " if body.endswith((".", "?", "!")) else ". "
    record = {"question": body + separator + question, "steps": [], "answer": _answer(_field(row, "Answer"), "Answer")}
    if isinstance(row.get("Equation"), str):
        record["equation"] = row["Equation"].strip()
    return record


def multiarith(row: dict) -> dict:
    return {"question": _text(row, "question"), "steps": [], "answer": _answer(_field(row, "final_ans"), "final_ans")}


def coconut(row: dict) -> dict:
    """Coconut's JSON: steps are a list of equations (with or without `<<>>`)."""
    steps = _field(row, "steps")
    if not isinstance(steps, list) or not all(isinstance(s, str) for s in steps):
        raise ValueError("field 'steps' must be a list of strings")
    steps = [s if s.startswith("<<") else f"<<{s}>>" for s in (s.strip() for s in steps)]
    return {"question": _text(row, "question"), "steps": steps, "answer": _answer(_field(row, "answer"), "answer")}


def contract(row: dict) -> dict:
    return row


ADAPTERS: dict[str, Callable[[object], dict]] = {
    "gsm8k_aug_text": gsm8k_aug_text,
    "gsm8k_aug": gsm8k_aug,
    "gsm8k": gsm8k,
    "gsm_hard": gsm_hard,
    "svamp": svamp,
    "multiarith": multiarith,
    "coconut": coconut,
    "contract": contract,
}


@dataclass(frozen=True)
class SourceSpec:
    """Where one split comes from: a local `path` or a hub dataset `hub_id`."""

    format: str
    path: str | None = None
    hub_id: str | None = None
    hub_config: str | None = None
    hub_split: str = "train"
    limit: int | None = None

    def __post_init__(self) -> None:
        if self.format not in ADAPTERS:
            raise ValueError(f"unknown format {self.format!r}; known: {', '.join(ADAPTERS)}")
        if (self.path is None) == (self.hub_id is None):
            raise ValueError("give exactly one of 'path' and 'hub_id'")

    @property
    def name(self) -> str:
        return self.path or f"{self.hub_id}:{self.hub_split}"


def _raw_rows(spec: SourceSpec) -> Iterator[tuple[str, object]]:
    """(where, raw row) pairs: file:line for local files, hub id and row index otherwise."""
    if spec.hub_id is not None:
        import datasets  # heavy import, only when the hub is used

        try:
            dataset = datasets.load_dataset(spec.hub_id, spec.hub_config, split=spec.hub_split)
        except Exception as exc:  # noqa: BLE001 - datasets raises many types; report them all the same way
            raise DataError(spec.name, f"could not load the dataset ({type(exc).__name__}: {exc})") from None
        for index, row in enumerate(dataset):
            yield f"{spec.name} row {index}", (row["text"] if spec.format == "gsm8k_aug_text" else row)
        return
    path = Path(spec.path)
    if not path.exists():
        raise DataError(str(path), "file not found")
    if spec.format == "gsm8k_aug_text":
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    yield f"{path}:{number}", line.rstrip("\n")
        return
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    if path.suffix == ".json" or text.lstrip().startswith("["):
        yield from _json_list_rows(text, path)
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            yield f"{path}:{number}", _json_row(line)


class BadRow(str):
    """A row that could not be read (its problem); `load_source` skips and counts it, or stops on it."""


def _json_row(line: str) -> object:
    if line.startswith("\ufeff"):
        return BadRow("invalid JSON (the line starts with a byte-order mark)")
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        return BadRow(f"invalid JSON ({exc.msg})")


def _json_list_rows(text: str, path: Path) -> Iterator[tuple[str, object]]:
    """The records of a JSON list, each named by the line it starts on (`file:line`)."""
    decoder = json.JSONDecoder()
    line_of = lambda pos: text.count("\n", 0, pos) + 1  # noqa: E731
    pos = len(text) - len(text.lstrip())
    if not text.startswith("[", pos):
        raise DataError(str(path), f"expected a JSON list of records, got {text[pos : pos + 20]!r}")
    pos += 1
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text):
            raise DataError(f"{path}:{line_of(pos)}", "invalid JSON (the list is not closed)")
        if text[pos] == "]":
            return
        try:
            row, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:  # the rest of the list cannot be delimited: stop here
            raise DataError(f"{path}:{line_of(exc.pos)}", f"invalid JSON ({exc.msg})") from None
        yield f"{path}:{line_of(pos)}", row
        pos = end


def load_source(spec: SourceSpec, split: str, skip_bad: bool = False) -> tuple[list[dict], int]:
    """Read one split into contract records. Returns (records, number of skipped bad rows).

    A bad row raises DataError(file:line, problem), unless `skip_bad`, which logs and counts it.
    """
    adapter = ADAPTERS[spec.format]
    records: list[dict] = []
    skipped = 0
    for where, row in _raw_rows(spec):
        if spec.limit is not None and len(records) >= spec.limit:
            break
        try:
            if isinstance(row, BadRow):
                raise DataError(where, str(row))
            if spec.format == "contract":
                record = row
            else:
                record = {"id": f"{split}-{len(records):06d}", "source": spec.format, **adapter(row)}
            records.append(validate_record(record, where, check_steps=True))
        except (ValueError, TypeError) as exc:
            error = exc if isinstance(exc, DataError) else DataError(where, str(exc))
            if not skip_bad:
                raise error from None
            skipped += 1
            log.warning("skipping bad record: %s", error)
    return records, skipped
