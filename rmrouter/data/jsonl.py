"""Reading JSON-lines files row by row, with errors that name the file, the line and the field.

Every loader in `rmrouter.data` is a pure `parse_row(row) -> records` function handed to `read_records`,
which owns the error policy: stop at the first bad row (`on_error="raise"`, the default) or skip bad rows
and report how many were skipped and why in one log line (`on_error="skip"`).
"""

from __future__ import annotations

import gzip
import json
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Literal, TypeVar

log = logging.getLogger(__name__)

OnError = Literal["raise", "skip"]
T = TypeVar("T")


class DataError(ValueError):
    """A data file could not be used as it is; the message names file, line and field."""


class RowError(ValueError):
    """Raised by a row parser: `field` is what was wrong, `problem` says how."""

    def __init__(self, field: str | None, problem: str):
        self.field = field
        self.problem = problem
        super().__init__(f"field '{field}': {problem}" if field else problem)


def open_text(path: str | Path):
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def iter_json_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """(line number, text) for each non-blank line, numbered from 1 as editors do."""
    with open_text(path) as handle:
        for line_number, line in enumerate(handle, start=1):
            if line.strip():
                yield line_number, line


def required_text(row: dict[str, Any], field: str) -> str:
    """`row[field]` as a non-empty string, or a `RowError` naming the field."""
    if field not in row or row[field] is None:
        raise RowError(field, "missing")
    value = row[field]
    if not isinstance(value, str):
        raise RowError(field, f"expected text, got {type(value).__name__}")
    if not value.strip():
        raise RowError(field, "empty")
    return value


def required(row: dict[str, Any], field: str) -> Any:
    if field not in row or row[field] is None:
        raise RowError(field, "missing")
    return row[field]


def read_records(
    path: str | Path,
    parse_row: Callable[[dict[str, Any]], Iterable[T]],
    on_error: OnError = "raise",
    limit: int | None = None,
) -> list[T]:
    """Parses every line of a JSON-lines file (optionally gzipped) with `parse_row`.

    Args:
        path: The file.
        parse_row: Turns one JSON object into zero or more records; raises `RowError` on bad input.
            Returning nothing is a deliberate filter (e.g. a near-tie), not an error.
        on_error: `raise` stops at the first bad row with `DataError("<file>:<line>: field '<f>': <problem>")`;
            `skip` drops bad rows and logs how many were dropped and why.
        limit: Stop after this many records.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    records: list[T] = []
    skipped: Counter[str] = Counter()
    rows_seen = 0
    for line_number, line in iter_json_lines(path):
        if limit is not None and len(records) >= limit:
            break
        rows_seen += 1
        try:
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise RowError(None, f"malformed JSON ({error.msg} at column {error.colno})") from None
            if not isinstance(row, dict):
                raise RowError(None, f"expected a JSON object, got {type(row).__name__}")
            records.extend(parse_row(row))
        except RowError as error:
            if on_error == "raise":
                raise DataError(f"{path}:{line_number}: {error} (set on_error='skip' to drop such rows)") from None
            skipped[str(error)] += 1
    if limit is not None:
        records = records[:limit]
    if skipped:
        reasons = ", ".join(f"{count} x {reason}" for reason, count in skipped.most_common())
        log.warning("%s: skipped %d of %d rows (%s)", path, sum(skipped.values()), rows_seen, reasons)
    return records


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
