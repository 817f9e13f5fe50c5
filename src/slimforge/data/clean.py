"""`clean_file(path, out, config)`: the fixes `data check` suggests, losing nothing.

Owns: `CleanConfig`, `CleanResult`, `clean_file`. One streaming pass over a JSONL or text
file. Every input line ends in exactly one of two files, both written atomically (a temp
file renamed at the end, so an interrupted run leaves neither half-written):

- the cleaned file: rows kept, with sensitive strings replaced by `[EMAIL]`, `[PHONE]`,
  `[IPV4]`, `[CARD]` or `[API_KEY]` when `redact` is on;
- the rejects file (JSONL): each removed line with its line number, the reason (malformed,
  missing_field, wrong_type, empty, too_short, exact_duplicate) and the original row or text.

`kept + rejected == input` is checked before anything is renamed into place: a mismatch is
an error, and no output appears. Near-duplicates and train/eval leakage are not removed yet.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from pydantic import BaseModel, ConfigDict, Field

from slimforge.data.check import digest, find_sensitive
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


class _Cleaner:
    """The per-line decision, with what it has seen so far."""

    def __init__(self, config: CleanConfig, jsonl: bool) -> None:
        self.config, self.jsonl = config, jsonl
        self.first_seen: dict[bytes, int] = {}

    def parse(self, line: str) -> tuple[Any, str | None]:
        """(row, None) or (what to keep in the rejects file, reason)."""
        if not self.jsonl:
            return {self.config.text_field: line.rstrip("\r\n")}, None
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            return line.rstrip("\r\n"), "malformed"
        return (row, None) if isinstance(row, dict) else (row, "malformed")

    def verdict(self, row: dict[str, Any], number: int) -> str | None:
        """Why the row goes, or None to keep it."""
        text = row.get(self.config.text_field)
        if not isinstance(text, str):
            return "missing_field" if text is None else "wrong_type"
        if not text.strip():
            return "empty"
        if len(text.strip()) < self.config.min_chars:
            return "too_short"
        if self.config.drop_duplicates:
            first = self.first_seen.setdefault(digest(text), number)
            if first != number:
                return f"exact_duplicate of line {first}"
        return None


def _write(handle: IO[Any], value: Any) -> None:
    handle.write(json.dumps(value, ensure_ascii=False) + "\n")


def clean_file(path: str | Path, out: str | Path, rejects: str | Path | None = None,
               config: CleanConfig | None = None) -> CleanResult:
    """Clean `path` into `out` (same format), every removed line into `rejects` (default:
    `out` with `.rejects.jsonl`).

    Raises:
        DataError: the input is missing, of another format, or the counts do not add up.
    """
    config, path, out = config or CleanConfig(), Path(path), Path(out)
    if not path.is_file():
        raise DataError(f"Data file {path} does not exist.", "check the path.")
    if path.suffix.lower() not in (".jsonl", ".txt"):
        raise DataError(f"data clean reads .jsonl and .txt files, not {path.suffix!r}.",
                        "convert the file to JSON lines first.")
    if out.resolve() == path.resolve():
        raise DataError("The cleaned file would overwrite its input.", "give another -o path.")
    rejects = Path(rejects) if rejects else out.with_name(out.stem + ".rejects.jsonl")
    cleaner, result = _Cleaner(config, path.suffix.lower() == ".jsonl"), CleanResult()
    with open(path, encoding="utf-8", errors="replace") as source, \
            atomic_open(rejects) as rejected, atomic_open(out) as kept:
        for number, line in enumerate(source, 1):
            result.input += 1
            row, reason = cleaner.parse(line)
            reason = reason or cleaner.verdict(row, number)
            if reason is not None:
                result.rejected += 1
                result.reasons[reason.split(" of line")[0]] += 1
                _write(rejected, {"line": number, "reason": reason, "row": row})
                continue
            result.kept += 1
            if config.redact:
                row[config.text_field] = _redact(row[config.text_field], result.redacted)
            if cleaner.jsonl:
                _write(kept, row)
            else:
                kept.write(row[config.text_field] + "\n")
        if result.kept + result.rejected != result.input:  # nothing is renamed into place
            raise DataError(f"kept {result.kept} + rejected {result.rejected} != input "
                            f"{result.input}.", "report this: no row may be lost.")
    result.out, result.rejects = str(out), str(rejects)
    return result
