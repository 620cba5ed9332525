"""The record contract every source is converted to, and its JSON Lines I/O.

    {"id": str, "question": str, "steps": [str, ...], "answer": str, "source": str}

Extra keys (the synthetic source adds `n_ops` and `n_labels`) are kept.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from atp.text import canonical_number, parse_equation

REQUIRED = ("id", "question", "steps", "answer", "source")


class DataError(ValueError):
    """A bad input record or file; the message names the file and line."""

    def __init__(self, where: str, problem: str):
        super().__init__(f"{where}: {problem}")
        self.where = where
        self.problem = problem


def validate_record(record: object, where: str, check_steps: bool = True) -> dict:
    """Check one record against the contract; return it with a canonical answer.

    Raises DataError naming `where` (file:line) and what is wrong.
    """
    if not isinstance(record, dict):
        raise DataError(where, f"expected a JSON object, got {type(record).__name__}")
    missing = [key for key in REQUIRED if key not in record]
    if missing:
        raise DataError(where, f"missing key(s) {', '.join(missing)}")
    for key in ("id", "question", "answer", "source"):
        if not isinstance(record[key], str):
            raise DataError(where, f"'{key}' must be a string, got {type(record[key]).__name__}")
    if not record["question"].strip():
        raise DataError(where, "empty question")
    try:
        answer = canonical_number(record["answer"])
    except ValueError:
        raise DataError(where, f"answer {record['answer']!r} is not a number") from None
    steps = record["steps"]
    if not isinstance(steps, list) or not all(isinstance(s, str) for s in steps):
        raise DataError(where, "'steps' must be a list of strings")
    if check_steps:
        for i, step in enumerate(steps):
            if not (step.startswith("<<") and step.endswith(">>")) or parse_equation(step) is None:
                raise DataError(where, f"step {i + 1} {step!r} is not an equation <<expression=number>>")
    return {**record, "answer": answer}


def read_jsonl(path: str | os.PathLike, check_steps: bool = True) -> list[dict]:
    """Read and validate a contract JSONL file; a bad line raises DataError(file:line)."""
    return list(iter_jsonl(path, check_steps=check_steps))


def iter_jsonl(path: str | os.PathLike, check_steps: bool = True) -> Iterator[dict]:
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(where, f"invalid JSON ({exc.msg})") from None
            yield validate_record(record, where, check_steps=check_steps)


def dumps(record: dict) -> str:
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"))


def append_jsonl(path: str | os.PathLike, record: dict) -> str:
    """Append one record as a JSON line (keys sorted) and return the line: a search's results file, one point a line."""
    line = json.dumps(record, sort_keys=True)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(line + "\n")
    return line


def write_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> None:
    """Write records atomically (temp file then rename), so a crash leaves no partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(dumps(record) + "\n")
    os.replace(tmp, path)


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes, the dataset digest logged with every data card."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
