"""`check_file(path, config)`: what is wrong with a dataset, read as a stream.

Owns: `CheckConfig`, `CheckReport`, `check_file`, `check_report`, `SENSITIVE`,
`find_sensitive`, `eval_index`, `near_findings`, `normalize`, `digest`, `luhn_ok`. One pass over
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
- given the evaluation split, training rows that leak into it: exact copies (`leak_exact`)
  and near copies (`leak_near`), each with the evaluation line it copies;

and the length distribution (percentiles; a histogram PNG in the report) and label balance.
Drift between two datasets is `drift.py`.
"""

from __future__ import annotations

import functools
import hashlib
import re
import unicodedata
from array import array
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from slimforge.data.rows import data_path, read_rows
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
MAYBE_SENSITIVE = re.compile(r"@|\d[\d. -]\d|sk-|gh[pousr]_|xox[abpr]-|AKIA|AIza")
"""What every match of a `SENSITIVE` pattern contains: most texts lack it and skip them all."""
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
    eval_path: str | None = None
    """The evaluation file the rows were checked against for leakage, if any."""

    def note(self, kind: str, line: int, detail: str, show: int) -> None:
        """Count a finding; keep the first `show` of each kind with their line."""
        self.counts[kind] += 1
        shown = self.examples.setdefault(kind, [])
        if len(shown) < show:
            shown.append({"line": line, "detail": detail[:200]})

    def to_json(self) -> dict[str, Any]:
        """The report as a plain dict."""
        return {**asdict(self), "counts": dict(self.counts)}


def find_sensitive(text: str) -> list[tuple[str, int, int]]:
    """(kind, start, end) of every sensitive string, left to right, none overlapping: card
    numbers count only when they pass the Luhn check, a phone-like match inside any long
    digit run is part of that number, and where matches overlap the more specific kind
    (earlier in `SENSITIVE_PRIORITY`) wins."""
    if not MAYBE_SENSITIVE.search(text):
        return []
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


@functools.lru_cache(maxsize=4)  # a row's text is normalised for its digest, then shingled
def normalize(text: str) -> str:
    """The text as duplicates are compared: NFKC, case-folded, whitespace collapsed."""
    return SPACES.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def digest(text: str) -> bytes:
    """An 8-byte hash of the normalised text (`normalize`)."""
    normal = normalize(text)
    return hashlib.blake2b(normal.encode(), digest_size=8).digest()


def eval_index(path: Path, text_field: str, near: NearDuplicates | None) -> dict[bytes, int]:
    """The evaluation file's texts by digest (-> first line), for exact leakage; with `near`,
    each distinct text is also signed there under its negative line, for near leakage."""
    seen: dict[bytes, int] = {}
    for line, value, problem in read_rows(path):
        text = None if problem else value.get(text_field)
        if not (isinstance(text, str) and text.strip()):
            continue
        if seen.setdefault(digest(text), line) == line and near is not None:
            near.add(-line, text)
    return seen


class _Checker:
    """The per-row checks, with what they have seen so far."""

    def __init__(self, path: Path, config: CheckConfig) -> None:
        self.config, self.report, self.lengths = config, CheckReport(str(path)), array("I")
        self.first_seen: dict[bytes, int] = {}
        self.eval_seen: dict[bytes, int] = {}
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
        key = digest(text)
        if key in self.eval_seen:
            report.note("leak_exact", line, f"same as eval line {self.eval_seen[key]}",
                        config.show)
            return
        first = self.first_seen.setdefault(key, line)
        if first != line:
            report.note("exact_duplicate", line, f"same as line {first}", config.show)
        elif self.near is not None:
            self.near.add(line, text)


def check_file(path: str | Path, config: CheckConfig | None = None,
               eval_path: str | Path | None = None) -> tuple[CheckReport, array]:
    """Check a dataset file; returns the report and every text's length (for a histogram).

    With `eval_path` (the evaluation split), training rows that copy an evaluation text
    exactly (`leak_exact`) or nearly (`leak_near`) are reported with the evaluation line.

    Raises:
        DataError: a file is missing or of an unknown kind (a malformed row is a finding).
    """
    config = config or CheckConfig()
    path = data_path(path)
    checker = _Checker(path, config)
    if eval_path is not None:
        checker.report.eval_path = str(eval_path)
        checker.eval_seen = eval_index(data_path(eval_path), config.text_field, checker.near)
    report, lengths = checker.report, checker.lengths
    for line, value, problem in read_rows(path):
        if problem:
            report.note("malformed", line, problem, config.show)
        else:
            checker.row(line, value)
    if report.rows == 0 and not report.counts:
        raise DataError(f"{path} holds no rows.", "point at a file with at least one row.")
    if checker.near is not None:
        _near_duplicates(checker.near.clusters(), report, config.show)
    ordered = sorted(lengths)
    if ordered:
        report.length_percentiles = {
            f"p{q}": ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]
            for q in (0, 5, 25, 50, 75, 95, 99, 100)}
    report.labels = dict(checker.labels.most_common())
    return report, lengths


def near_findings(clusters: list[list[int]]) -> Iterator[tuple[str, int, int]]:
    """What near-duplicate clusters mean, as (kind, line, other line): a training line in a
    cluster with an evaluation line (a negative key) is `leak_near` of that evaluation line,
    and every training line after a cluster's first is `near_duplicate` of the first."""
    for cluster in clusters:
        evals = [-key for key in cluster if key < 0]
        lines = [key for key in cluster if key > 0]
        for line in lines if evals else ():
            yield "leak_near", line, min(evals)
        for line in lines[1:]:
            yield "near_duplicate", line, lines[0]


def _near_duplicates(clusters: list[list[int]], report: CheckReport, show: int) -> None:
    for kind, line, other in near_findings(clusters):
        report.note(kind, line, f"near {'eval ' if kind == 'leak_near' else ''}line {other}",
                    show)
    report.near_duplicate_clusters = [
        lines for lines in ([k for k in c if k > 0] for c in clusters) if len(lines) > 1][:show]


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
