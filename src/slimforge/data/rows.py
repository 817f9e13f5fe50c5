"""`read_rows(path)`: every row of a dataset file with its line number, malformed ones too.

Owns: `Row`, `read_rows`, `data_path`, `FORMATS`. The one reader under `data check` and
`data clean`, so both see the same rows with the same line numbers. It never raises on a
bad row: a line that is not JSON, a JSON value that is not an object, a blank JSONL line or a
CSV row with the wrong number of fields comes back with `problem` set and `value` holding
the original (the line's text, or the CSV fields), so a checker can report it and a cleaner
can keep it in its rejects file. Reading is streaming: one row at a time (Parquet: one batch
of 1,024), so a file larger than memory works. Line numbers are the file's (CSV: the line a
row ends on, header included; Parquet: the row's position, from 1).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from slimforge.errors import DataError

FORMATS = (".jsonl", ".csv", ".parquet", ".txt")


class Row(NamedTuple):
    """One row: its line, the record (or, when `problem` is set, what the line held)."""

    line: int
    value: Any
    problem: str | None = None


def data_path(path: str | Path) -> Path:
    """The path of an existing file of a known format.

    Raises:
        DataError: the file is missing or of an unknown kind.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"Data file {path} does not exist.", "check the path.")
    if path.suffix.lower() not in FORMATS:
        raise DataError(f"{path} has an unsupported extension {path.suffix!r}.",
                        f"use {', '.join(FORMATS)}.")
    return path


def read_rows(path: str | Path) -> Iterator[Row]:
    """Every row of a `.jsonl`, `.csv`, `.parquet` or `.txt` file, in order (see above).

    Raises:
        DataError: the file is missing, of an unknown kind, or not readable Parquet.
    """
    path = data_path(path)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        yield from _parquet(path)
        return
    with open(path, encoding="utf-8", errors="replace", newline="") as handle:
        if suffix == ".csv":
            yield from _csv(handle)
        elif suffix == ".txt":
            for number, line in enumerate(handle, 1):
                yield Row(number, {"text": line.rstrip("\r\n")})
        else:
            for number, line in enumerate(handle, 1):
                yield _json_row(number, line)


def _json_row(number: int, line: str) -> Row:
    text = line.rstrip("\r\n")
    if not text.strip():
        return Row(number, text, "blank line")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return Row(number, text, f"not JSON: {exc.msg}")
    if not isinstance(value, dict):
        return Row(number, value, f"a JSON {type(value).__name__}, not an object")
    return Row(number, value)


def _csv(handle: Any) -> Iterator[Row]:
    reader = csv.reader(handle)
    header = next(reader, None)
    if header is None:
        return
    for fields in reader:
        if not fields:
            continue  # csv's own reading of a blank line: no row at all
        if len(fields) != len(header):
            yield Row(reader.line_num, fields, f"{len(fields)} of {len(header)} fields")
        else:
            yield Row(reader.line_num, dict(zip(header, fields, strict=True)))


def _parquet(path: Path) -> Iterator[Row]:
    import pyarrow.parquet as pq

    try:
        source = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises its own error types for corrupt files
        raise DataError(f"{path} is not a readable Parquet file ({exc}).",
                        "write it again, e.g. with pandas.DataFrame.to_parquet.") from None
    number = 0
    for batch in source.iter_batches(batch_size=1024):
        for record in batch.to_pylist():
            number += 1
            yield Row(number, record)
