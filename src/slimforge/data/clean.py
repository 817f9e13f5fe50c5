"""`clean_file(path, out, config)`: the fixes `data check` suggests, losing nothing.

Owns: `CleanConfig`, `CleanResult`, `clean_file`. Reads JSONL, CSV, Parquet or text
(`rows.py`) and writes the cleaned rows in the same format. Every input row ends in exactly
one of two files, both written atomically (a temp file renamed at the end, so an interrupted
run leaves neither half-written):

- the cleaned file: rows kept, with sensitive strings replaced by `[EMAIL]`, `[PHONE]`,
  `[IPV4]`, `[CARD]` or `[API_KEY]` when `redact` is on;
- the rejects file (JSONL): each removed row with its line number, the reason (malformed,
  missing_field, wrong_type, empty, too_short, exact_duplicate, near_duplicate, leak_exact,
  leak_near) and the original row or line, to fix and feed back.

Near-duplicates and leakage into an evaluation file need the whole file seen before the
first row is judged, so they take two passes: the first signs every candidate text
(`near_dup.py`) and decides which lines go, the second writes. Of a cluster of
near-duplicates the first line stays; a training row that copies an evaluation row, exactly
or nearly, goes. `kept + rejected == input` is checked before anything is renamed into
place: a mismatch is an error, and no output appears.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from pydantic import BaseModel, ConfigDict, Field

from slimforge.data.check import digest, eval_index, find_sensitive, near_findings
from slimforge.data.rows import Row, data_path, read_rows
from slimforge.errors import DataError
from slimforge.io.atomic import atomic_open


class CleanConfig(BaseModel):
    """Which fixes to apply."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    text_field: str = "text"
    min_chars: int = Field(3, ge=0)
    """Texts shorter than this (after stripping) are dropped; 0 keeps them."""
    drop_duplicates: bool = True
    """Drop exact duplicates (after normalisation), keeping the first."""
    near_dup_threshold: float | None = Field(0.8, gt=0, le=1)
    """Drop near-duplicates from this Jaccard similarity (character 5-grams) on, keeping the
    first of each cluster; None keeps them."""
    redact: bool = True
    """Replace sensitive strings in kept rows."""


@dataclass
class CleanResult:
    """What `clean_file` did."""

    input: int = 0
    kept: int = 0
    rejected: int = 0
    reasons: Counter = field(default_factory=Counter)
    redacted: Counter = field(default_factory=Counter)
    out: str = ""
    rejects: str = ""

    def to_json(self) -> dict[str, Any]:
        """The result as a plain dict."""
        return {"input": self.input, "kept": self.kept, "rejected": self.rejected,
                "reasons": dict(self.reasons), "redacted": dict(self.redacted),
                "out": self.out, "rejects": self.rejects}


def _redact(text: str, counts: Counter) -> str:
    pieces, done = [], 0
    for kind, start, end in find_sensitive(text):
        pieces += [text[done:start], f"[{kind.upper()}]"]
        counts[kind] += 1
        done = end
    return "".join([*pieces, text[done:]])


class _Judge:
    """The per-row decision that needs no look ahead, with what it has seen so far."""

    def __init__(self, config: CleanConfig, eval_seen: dict[bytes, int]) -> None:
        self.config, self.eval_seen = config, eval_seen
        self.first_seen: dict[bytes, int] = {}

    def verdict(self, row: Row) -> str | None:
        """Why the row goes, or None to keep it (so far)."""
        if row.problem:
            return "malformed"
        text = row.value.get(self.config.text_field)
        if not isinstance(text, str):
            return "missing_field" if text is None else "wrong_type"
        if not text.strip():
            return "empty"
        if len(text.strip()) < self.config.min_chars:
            return "too_short"
        key = digest(text)
        if key in self.eval_seen:
            return f"leak_exact of eval line {self.eval_seen[key]}"
        if self.config.drop_duplicates:
            first = self.first_seen.setdefault(key, row.line)
            if first != row.line:
                return f"exact_duplicate of line {first}"
        return None


def _look_ahead(path: Path, eval_path: Path | None, config: CleanConfig
                ) -> tuple[dict[bytes, int], dict[int, str]]:
    """The first pass: the evaluation file's digests, and the lines that go for being near
    another (near_duplicate) or near an evaluation row (leak_near), with the reason."""
    near = None
    if config.near_dup_threshold is not None:
        from slimforge.data.near_dup import NearDuplicates

        near = NearDuplicates(config.near_dup_threshold)
    eval_seen = eval_index(eval_path, config.text_field, near) if eval_path else {}
    if near is None:
        return eval_seen, {}
    judge = _Judge(config, eval_seen)
    for row in read_rows(path):
        if judge.verdict(row) is None:
            near.add(row.line, row.value[config.text_field])
    drop: dict[int, str] = {}
    for kind, line, other in near_findings(near.clusters()):
        drop.setdefault(line, f"{kind} of {'eval ' if kind == 'leak_near' else ''}line {other}")
    return eval_seen, drop


class _Writer:
    """Kept rows, in the input's format."""

    def __init__(self, handle: IO[Any], suffix: str, source: Path, text_field: str) -> None:
        self.handle, self.suffix, self.text_field = handle, suffix, text_field
        self.batch: list[dict[str, Any]] = []
        self.csv: csv.DictWriter | None = None
        self.text = _TextSink(handle)
        self.parquet: Any = None
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            self.schema = pq.ParquetFile(source).schema_arrow
            self.parquet = pq.ParquetWriter(handle, self.schema)

    def write(self, row: dict[str, Any]) -> None:
        if self.suffix == ".jsonl":
            self.handle.write(json.dumps(row, ensure_ascii=False, default=str).encode() + b"\n")
        elif self.suffix == ".txt":
            self.handle.write(row[self.text_field].encode() + b"\n")
        elif self.suffix == ".csv":
            if self.csv is None:  # the header: the first kept row's columns (the input's)
                self.csv = csv.DictWriter(self.text, fieldnames=list(row), lineterminator="\n")
                self.csv.writeheader()
            self.csv.writerow(row)
        else:
            self.batch.append(row)
            if len(self.batch) == 4096:
                self._flush()

    def _flush(self) -> None:
        import pyarrow as pa

        if self.batch:
            self.parquet.write_table(pa.Table.from_pylist(self.batch, schema=self.schema))
            self.batch = []

    def close(self) -> None:
        if self.parquet is not None:
            self._flush()
            self.parquet.close()


class _TextSink:
    """What `csv.writer` writes to: UTF-8 into the binary temp file."""

    def __init__(self, handle: IO[bytes]) -> None:
        self.handle = handle

    def write(self, text: str) -> int:
        return self.handle.write(text.encode())


def clean_file(path: str | Path, out: str | Path, rejects: str | Path | None = None,
               config: CleanConfig | None = None, eval_path: str | Path | None = None
               ) -> CleanResult:
    """Clean `path` into `out` (same format), every removed row into `rejects` (default:
    `out` with `.rejects.jsonl`). With `eval_path`, rows that leak into it go too.

    Raises:
        DataError: an input is missing or of an unknown format, `out` is another format or
            the input itself, or the counts do not add up.
    """
    config, path, out = config or CleanConfig(), data_path(path), Path(out)
    suffix = path.suffix.lower()
    if out.suffix.lower() != suffix:
        raise DataError(f"The cleaned file keeps the input's format ({suffix}), but -o is "
                        f"{out.name}.", f"give an -o path ending in {suffix}.")
    if out.resolve() == path.resolve():
        raise DataError("The cleaned file would overwrite its input.", "give another -o path.")
    eval_file = data_path(eval_path) if eval_path is not None else None
    rejects = Path(rejects) if rejects else out.with_name(out.stem + ".rejects.jsonl")
    eval_seen, near_drop = _look_ahead(path, eval_file, config)
    judge, result = _Judge(config, eval_seen), CleanResult()
    with atomic_open(rejects) as rejected, atomic_open(out, "wb") as kept:
        writer = _Writer(kept, suffix, path, config.text_field)
        for row in read_rows(path):
            result.input += 1
            reason = judge.verdict(row) or near_drop.get(row.line)
            if reason is not None:
                result.rejected += 1
                result.reasons[reason.split(" of ")[0]] += 1
                rejected.write(json.dumps({"line": row.line, "reason": reason, "row": row.value},
                                          ensure_ascii=False, default=str) + "\n")
                continue
            result.kept += 1
            value = row.value
            if config.redact:
                value = {**value, config.text_field: _redact(value[config.text_field],
                                                             result.redacted)}
            writer.write(value)
        writer.close()
        if result.kept + result.rejected != result.input:  # nothing is renamed into place
            raise DataError(f"kept {result.kept} + rejected {result.rejected} != input "
                            f"{result.input}.", "report this: no row may be lost.")
    result.out, result.rejects = str(out), str(rejects)
    return result
