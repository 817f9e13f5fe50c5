"""`check_file(path, config)`: what is wrong with a dataset, read as a stream.

Owns: `CheckConfig`, `CheckReport`, `check_file`, `check_report`, `SENSITIVE`,
`find_sensitive`, `digest`, `luhn_ok`. One pass over
a JSONL, CSV, Parquet or plain-text file, never holding more than a row at a time plus
compact per-row figures (a length and an 8-byte hash): a file larger than memory works.
It finds

- malformed rows (not JSON, not an object, a CSV row with the wrong number of fields): the
  first `show` with their line numbers, all counted; never a crash;
- schema problems: a missing or non-text text field, a label outside `labels`;
- content problems: empty and too-short texts, encoding damage (U+FFFD replacement
  characters, mojibake such as `Ã©`), control characters;
- exact duplicates after normalisation (case-folded, whitespace collapsed), with the line
  of the first copy, and near-duplicates (MinHash over character 5-grams, `near_dup.py`)
  at a Jaccard threshold, as clusters of lines;
- sensitive strings: e-mail addresses, phone numbers, IPv4 addresses, card-like numbers that
  pass the Luhn check, and API-key-like tokens — counted, and the first ones located;

and the length distribution (percentiles; a histogram PNG in the report) and label balance.
Leakage between splits and drift are not here yet.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import unicodedata
from array import array
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from slimforge.errors import DataError

if TYPE_CHECKING:
    from slimforge.data.near_dup import NearDuplicates

SENSITIVE: dict[str, re.Pattern[str]] = {
    "email": re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[A-Za-z]{2,}\b"),
    "phone": re.compile(r"(?<![\w.+])\+?\(?\d{1,3}\)?[ .-]?\(?\d{2,4}\)?[ .-]\d{3,4}[ .-]\d{3,4}"
                        r"(?!\w)"),
    "ipv4": re.compile(r"\b(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)\b"),
    "card": re.compile(r"\b\d(?:[ -]?\d){12,18}\b"),
    "api_key": re.compile(r"\b(?:sk-[A-Za-z0-9_-]{16,}|gh[pousr]_[A-Za-z0-9]{20,}|"
                          r"xox[abpr]-[A-Za-z0-9-]{10,}|AKIA[0-9A-Z]{16}|AIza[0-9A-Za-z_-]{35})"),
}
SENSITIVE_PRIORITY = ("api_key", "email", "card", "ipv4", "phone")
"""Which kind a string counts as where two patterns match it."""
MOJIBAKE = re.compile(r"Ã[\u0080-\u00bf]|â€[\u0080-\u00bf™œ\u009d]|Â[\u00a0-\u00bf]")
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
SPACES = re.compile(r"\s+")


def luhn_ok(digits: str) -> bool:
    """Whether a digit string passes the Luhn checksum (as card numbers do)."""
    total = 0
    for i, char in enumerate(reversed(digits)):
        d = int(char)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


class CheckConfig(BaseModel):
    """What a row must look like, and how much to show."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    text_field: str = "text"
    label_field: str | None = None
    labels: list[str] | None = None
    """Allowed labels; None: any."""
    min_chars: int = Field(3, ge=0)
    """Texts shorter than this (after stripping) are too short."""
    show: int = Field(20, ge=0)
    """How many findings of each kind are listed with their line numbers."""
    near_dup_threshold: float | None = Field(0.8, gt=0, le=1)
    """Jaccard similarity (character 5-grams) from which two texts are near-duplicates;
    None: do not look for them."""


@dataclass
class CheckReport:
    """What `check_file` found."""

    path: str
    rows: int = 0
    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    length_percentiles: dict[str, int] = field(default_factory=dict)
    labels: dict[str, int] = field(default_factory=dict)
    near_duplicate_clusters: list[list[int]] = field(default_factory=list)
    """The first clusters of near-duplicate lines (all are counted in `counts`)."""

    def note(self, kind: str, line: int, detail: str, show: int) -> None:
        """Count a finding; keep the first `show` of each kind with their line."""
        self.counts[kind] += 1
        shown = self.examples.setdefault(kind, [])
        if len(shown) < show:
            shown.append({"line": line, "detail": detail[:200]})

    def to_json(self) -> dict[str, Any]:
        """The report as a plain dict."""
        return {**asdict(self), "counts": dict(self.counts)}


def _rows(path: Path, report: CheckReport, show: int) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, row) for every readable row; unreadable ones go to the report."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        from slimforge.data.sources import iter_records

        yield from enumerate(iter_records(str(path)), 1)
        return
    with open(path, encoding="utf-8", errors="replace", newline="") as handle:
        if suffix == ".csv":
            reader = csv.DictReader(handle)
            width = len(reader.fieldnames or [])
            for row in reader:
                if None in row or any(v is None for v in row.values()):
                    report.note("malformed", reader.line_num,
                                f"{len(row) - (None in row)} of {width} fields", show)
                    continue
                yield reader.line_num, row
            return
        for number, line in enumerate(handle, 1):
            if suffix == ".txt":
                yield number, {"text": line.rstrip("\r\n")}
                continue
            if not line.strip():
                report.note("malformed", number, "blank line", show)
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                report.note("malformed", number, f"not JSON: {exc.msg}", show)
                continue
            if not isinstance(row, dict):
                report.note("malformed", number, f"a JSON {type(row).__name__}, not an object",
                            show)
                continue
            yield number, row


def find_sensitive(text: str) -> list[tuple[str, int, int]]:
    """(kind, start, end) of every sensitive string, left to right, none overlapping: card
    numbers count only when they pass the Luhn check, a phone-like match inside any long
    digit run is part of that number, and where matches overlap the more specific kind
    (earlier in `SENSITIVE_PRIORITY`) wins."""
    digit_runs = [m.span() for m in SENSITIVE["card"].finditer(text)]
    kept: list[tuple[str, int, int]] = []
    for kind in SENSITIVE_PRIORITY:
        for match in SENSITIVE[kind].finditer(text):
            start, end = match.span()
            if kind == "card" and not luhn_ok(re.sub(r"\D", "", match.group())):
                continue
            if kind == "phone" and any(a < end and start < b for a, b in digit_runs):
                continue
            if not any(a < end and start < b for _, a, b in kept):
                kept.append((kind, start, end))
    return sorted(kept, key=lambda found: found[1])


def _sensitive(text: str, line: int, report: CheckReport, show: int) -> None:
    for kind, start, end in find_sensitive(text):
        report.note(f"sensitive_{kind}", line, text[start:end], show)


def _content(text: str, line: int, report: CheckReport, config: CheckConfig) -> None:
    stripped = text.strip()
    if not stripped:
        report.note("empty", line, "empty text", config.show)
        return
    if len(stripped) < config.min_chars:
        report.note("too_short", line, stripped, config.show)
    if "\ufffd" in text:
        report.note("replacement_char", line, text, config.show)
    if MOJIBAKE.search(text):
        report.note("mojibake", line, text, config.show)
    if CONTROL.search(text):
        report.note("control_char", line, repr(text), config.show)
    _sensitive(text, line, report, config.show)


def _label(label: Any, line: int, report: CheckReport, config: CheckConfig) -> None:
    if label is None or (config.labels is not None and str(label) not in config.labels):
        report.note("bad_label", line, f"{config.label_field}: {label!r}", config.show)


def digest(text: str) -> bytes:
    """An 8-byte hash of the text after NFKC, case-folding and collapsing whitespace."""
    normal = SPACES.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()
    return hashlib.blake2b(normal.encode(), digest_size=8).digest()


class _Checker:
    """The per-row checks, with what they have seen so far."""

    def __init__(self, path: Path, config: CheckConfig) -> None:
        self.config, self.report, self.lengths = config, CheckReport(str(path)), array("I")
        self.first_seen: dict[bytes, int] = {}
        self.labels: Counter = Counter()
        self.near: NearDuplicates | None = None
        if config.near_dup_threshold is not None:
            from slimforge.data.near_dup import NearDuplicates  # datasketch: only when asked

            self.near = NearDuplicates(config.near_dup_threshold)

    def row(self, line: int, row: dict[str, Any]) -> None:
        config, report = self.config, self.report
        report.rows += 1
        text = row.get(config.text_field)
        if not isinstance(text, str):
            kind = "missing_field" if text is None else "wrong_type"
            report.note(kind, line, f"{config.text_field}: {type(text).__name__}", config.show)
            return
        if config.label_field is not None:
            self.labels[str(row.get(config.label_field))] += 1
            _label(row.get(config.label_field), line, report, config)
        self.lengths.append(len(text))
        _content(text, line, report, config)
        if not text.strip():
            return
        first = self.first_seen.setdefault(digest(text), line)
        if first != line:
            report.note("exact_duplicate", line, f"same as line {first}", config.show)
        elif self.near is not None:
            self.near.add(line, text)


def check_file(path: str | Path, config: CheckConfig | None = None
               ) -> tuple[CheckReport, array]:
    """Check a dataset file; returns the report and every text's length (for a histogram).

    Raises:
        DataError: the file is missing or of an unknown kind (a malformed row is a finding).
    """
    config = config or CheckConfig()
    path = Path(path)
    if not path.is_file():
        raise DataError(f"Data file {path} does not exist.", "check the path.")
    if path.suffix.lower() not in (".jsonl", ".csv", ".parquet", ".txt"):
        raise DataError(f"{path} has an unsupported extension {path.suffix!r}.",
                        "use .jsonl, .csv, .parquet or .txt.")
    checker = _Checker(path, config)
    report, lengths = checker.report, checker.lengths
    for line, row in _rows(path, report, config.show):
        checker.row(line, row)
    if report.rows == 0 and not report.counts:
        raise DataError(f"{path} holds no rows.", "point at a file with at least one row.")
    if checker.near is not None:
        _near_duplicates(checker.near, report, config.show)
    ordered = sorted(lengths)
    if ordered:
        report.length_percentiles = {
            f"p{q}": ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]
            for q in (0, 5, 25, 50, 75, 95, 99, 100)}
    report.labels = dict(checker.labels.most_common())
    return report, lengths


def _near_duplicates(near: NearDuplicates, report: CheckReport, show: int) -> None:
    clusters = near.clusters()
    report.near_duplicate_clusters = clusters[:show]
    for cluster in clusters:
        for line in cluster[1:]:
            report.note("near_duplicate", line, f"near line {cluster[0]}", show)


def check_report(report: CheckReport) -> str:
    """The report as Markdown: counts, the first findings with their lines, lengths, labels."""
    lines = [f"# slimforge data check: {report.path}", "", f"- Rows read: {report.rows:,}",
             f"- Length in characters: {report.length_percentiles}", ""]
    if report.labels:
        lines += ["| label | rows |", "|---|---|",
                  *(f"| {k} | {v:,} |" for k, v in report.labels.items()), ""]
    lines += ["| finding | count |", "|---|---|",
              *(f"| {k} | {v:,} |" for k, v in sorted(report.counts.items())), ""]
    for kind, shown in sorted(report.examples.items()):
        lines.append(f"## {kind} (first {len(shown)} of {report.counts[kind]:,})")
        lines += ["", *(f"- line {e['line']}: `{e['detail']}`" for e in shown), ""]
    return "\n".join(lines).rstrip() + "\n"
