"""`drift(reference, current)`: has the data moved, and where — lengths, words, labels.

Owns: `Profile`, `profile_file`, `DriftTest`, `DriftReport`, `drift`, `drift_report`.
Each file is read once as a stream (`rows.py`) into a compact profile: every text's length
(4 bytes a row), word counts (lower-cased `\\w+` runs) and label counts. Three tests compare
the profiles, each with a statistic, a p-value and an effect size:

- lengths: two-sample Kolmogorov-Smirnov (`scipy.stats.ks_2samp`); the effect is D, the
  largest gap between the two cumulative distributions;
- vocabulary: chi-square of homogeneity over the most frequent words of both files (the
  rest pooled as one column); the effect is Cramér's V (bias-corrected). Words of one text
  are not independent draws (a text about sockets says "socket" many times), so the
  textbook p-value would call two random halves of one corpus different; the p-value is a
  permutation test over whole texts instead: the texts of a reservoir sample of each file
  (`SAMPLE` each) are shuffled between the two sides `ROUNDS` times, and the p-value is the
  share of shuffles whose chi-square reaches the observed one;
- labels: chi-square test of homogeneity over the labels; the effect is Cramér's V.

On a million rows any difference is "significant", so a test says drift only when the
p-value is under `alpha` *and* the effect reaches `min_effect` (0.1: a small effect in
Cohen's terms for V; a tenth of the texts shifted for D). The verdict names what moved in
plain words: the medians, the words whose share changed most, the labels that grew.
"""

from __future__ import annotations

import math
import random
import re
from array import array
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from slimforge.data.rows import read_rows
from slimforge.errors import DataError

WORD = re.compile(r"\w+")
TOP_WORDS = 1000
"""The most frequent words (of both files together) that get their own column in the
vocabulary test."""
SAMPLE = 5000
"""Texts of each file kept (reservoir sampling) for the vocabulary permutation test."""
ROUNDS = 200
"""Shuffles in the permutation test: the smallest p-value it can give is 1 / 201."""


@dataclass
class Profile:
    """What the drift tests need from one file."""

    path: str
    lengths: array = field(default_factory=lambda: array("I"))
    words: Counter = field(default_factory=Counter)
    labels: Counter = field(default_factory=Counter)
    sample: list[list[str]] = field(default_factory=list)
    """The words of up to `SAMPLE` texts, a uniform sample of the file (reservoir)."""
    skipped: int = 0
    """Rows without a usable text (malformed, missing or not a string)."""


def profile_file(path: str | Path, text_field: str = "text",
                 label_field: str | None = None) -> Profile:
    """Read one file into a `Profile`.

    Raises:
        DataError: the file is missing, of an unknown kind, or holds no text.
    """
    profile, rng = Profile(str(path)), random.Random(0)
    for _, value, problem in read_rows(path):
        text = None if problem else value.get(text_field)
        if not isinstance(text, str):
            profile.skipped += 1
            continue
        profile.lengths.append(len(text))
        words = WORD.findall(text.lower())
        profile.words.update(words)
        if len(profile.sample) < SAMPLE:
            profile.sample.append(words)
        elif (slot := rng.randrange(len(profile.lengths))) < SAMPLE:
            profile.sample[slot] = words
        if label_field is not None:
            profile.labels[str(value.get(label_field))] += 1
    if not profile.lengths:
        raise DataError(f"{path} has no row with a text in {text_field!r}.",
                        "point at the right file, or pass --text-field.")
    return profile


@dataclass
class DriftTest:
    """One comparison: its statistic, p-value, effect size and what it means."""

    name: str
    statistic: float
    p_value: float
    effect: float
    drifted: bool
    words: str


@dataclass
class DriftReport:
    """Every test, and the verdict in one sentence."""

    reference: str
    current: str
    rows: dict[str, int]
    tests: list[DriftTest]
    verdict: str
    alpha: float
    min_effect: float
    lengths: dict[str, array] = field(default_factory=dict, repr=False)
    """Every text's length in each file (for the histogram; not in `to_json`)."""

    def to_json(self) -> dict[str, Any]:
        """The report as a plain dict."""
        return {k: v for k, v in asdict(self).items() if k != "lengths"}


def _median(lengths: array) -> int:
    return sorted(lengths)[len(lengths) // 2]


def _lengths(ref: Profile, cur: Profile) -> tuple[float, float, float, str]:
    import numpy as np
    from scipy.stats import ks_2samp

    a = np.frombuffer(memoryview(ref.lengths), dtype=np.uint32)
    b = np.frombuffer(memoryview(cur.lengths), dtype=np.uint32)
    result = ks_2samp(a, b)
    ma, mb = int(np.median(a)), int(np.median(b))
    way = "longer" if mb > ma else "shorter" if mb < ma else "differently spread"
    words = f"median length {ma:,} -> {mb:,} characters; texts are {way}"
    return float(result.statistic), float(result.pvalue), float(result.statistic), words


def _homogeneity(ref: Counter, cur: Counter, columns: list[str]) -> tuple[float, float, float]:
    """Chi-square test that two count vectors over `columns` (plus everything else, pooled)
    come from one distribution: (chi-square, p-value, Cramér's V)."""
    import numpy as np
    from scipy.stats import chi2_contingency

    rows = []
    for counts in (ref, cur):
        named = [counts.get(c, 0) for c in columns]
        rows.append([*named, sum(counts.values()) - sum(named)])
    table = np.array(rows, dtype=np.float64)
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2:
        return 0.0, 1.0, 0.0
    chi2, p_value, _, _ = chi2_contingency(table, correction=False)
    # Cramér's V, bias-corrected (Bergsma 2013): with many columns chi-square is about its
    # degrees of freedom even between samples of one distribution, which plain V reads as
    # an effect. With two rows, V^2 = max(0, phi^2 - (k - 1) / (n - 1)) / (r~ - 1).
    n, k = table.sum(), table.shape[1]
    phi2 = max(0.0, chi2 / n - (k - 1) / (n - 1))
    return float(chi2), float(p_value), math.sqrt(phi2 / max(1 - 1 / (n - 1), 1e-12))


def _shares_moved(ref: Counter, cur: Counter, columns: list[str], n: int = 5) -> str:
    total_a, total_b = sum(ref.values()) or 1, sum(cur.values()) or 1
    moved = sorted(columns, key=lambda c: -abs(cur.get(c, 0) / total_b - ref.get(c, 0) / total_a))
    return ", ".join(f"{c!r} {100 * ref.get(c, 0) / total_a:.1f}% -> "
                     f"{100 * cur.get(c, 0) / total_b:.1f}%" for c in moved[:n])


def _chi2(counts: Any, side: Any) -> Any:
    """Chi-square of the 2 x k table [counts of side 0; counts of side 1], for each column
    of `side` (texts x shuffles, 0/1): one statistic per shuffle."""
    import numpy as np

    ones = counts.T @ side  # (k, shuffles): the counts of side 1
    table = [counts.sum(axis=0).A1[:, None] - ones, ones]
    total_col = table[0] + table[1]
    n = total_col.sum(axis=0)
    chi2 = 0
    for part in table:
        expected = np.maximum(total_col * (part.sum(axis=0) / n), 1e-12)
        chi2 = chi2 + ((part - expected) ** 2 / expected).sum(axis=0)
    return chi2


def _permutation_p(ref: list[list[str]], cur: list[list[str]], columns: list[str]) -> float:
    """How often shuffling whole texts between the sides gives a chi-square as large."""
    import numpy as np
    from scipy.sparse import csr_matrix

    index = {word: i for i, word in enumerate(columns)}
    rows, cols = [], []
    for r, words in enumerate(ref + cur):
        for word in words:
            rows.append(r)
            cols.append(index.get(word, len(columns)))
    counts = csr_matrix((np.ones(len(rows)), (rows, cols)),
                        shape=(len(ref) + len(cur), len(columns) + 1))
    counts = counts[:, counts.sum(axis=0).A1 > 0]
    side = np.zeros(len(ref) + len(cur))
    side[len(ref):] = 1
    rng = np.random.default_rng(0)
    shuffles = np.stack([side, *(rng.permutation(side) for _ in range(ROUNDS))], axis=1)
    chi2 = _chi2(counts, shuffles)
    return float((np.sum(chi2[1:] >= chi2[0]) + 1) / (ROUNDS + 1))


def _vocabulary(ref: Profile, cur: Profile) -> tuple[float, float, float, str]:
    # From the pooled counts: columns picked per side would favour words that are frequent
    # on one side by chance, and the shuffles could not reproduce that choice.
    columns = sorted(w for w, _ in (ref.words + cur.words).most_common(TOP_WORDS))
    chi2, _, effect = _homogeneity(ref.words, cur.words, columns)
    p_value = _permutation_p(ref.sample, cur.sample, columns)
    unseen = sum(c for w, c in cur.words.items() if w not in ref.words)
    share = unseen / max(sum(cur.words.values()), 1)
    words = (f"{100 * share:.1f}% of the current words never occur in the reference; "
             f"shares that moved most: {_shares_moved(ref.words, cur.words, columns)}")
    return chi2, p_value, effect, words


def _labels(ref: Profile, cur: Profile) -> tuple[float, float, float, str]:
    columns = sorted(set(ref.labels) | set(cur.labels))
    chi2, p_value, effect = _homogeneity(ref.labels, cur.labels, columns)
    return chi2, p_value, effect, f"label shares: {_shares_moved(ref.labels, cur.labels, columns)}"


def drift(reference: str | Path, current: str | Path, text_field: str = "text",
          label_field: str | None = None, alpha: float = 0.01, min_effect: float = 0.1
          ) -> DriftReport:
    """Compare `current` with `reference` (see the module's docstring for the tests).

    Raises:
        DataError: either file is missing, of an unknown kind, or holds no text.
    """
    ref = profile_file(reference, text_field, label_field)
    cur = profile_file(current, text_field, label_field)
    checks = {"lengths": _lengths, "vocabulary": _vocabulary}
    if label_field is not None:
        checks["labels"] = _labels
    tests = []
    for name, check in checks.items():
        statistic, p_value, effect, words = check(ref, cur)
        moved = p_value < alpha and effect >= min_effect
        tests.append(DriftTest(name, statistic, p_value, effect, moved, words))
    moved = [t for t in tests if t.drifted]
    verdict = (f"Drift in {', '.join(t.name for t in moved)}: "
               + "; ".join(t.words for t in moved) + "." if moved else
               "No drift: every difference is either within chance or too small to matter "
               f"(effect < {min_effect}).")
    return DriftReport(str(reference), str(current),
                       {"reference": len(ref.lengths), "current": len(cur.lengths)},
                       tests, verdict, alpha, min_effect,
                       {"reference": ref.lengths, "current": cur.lengths})


def drift_report(report: DriftReport) -> str:
    """The report as Markdown: the verdict, then one row per test."""
    lines = [f"# slimforge data drift: {report.current} against {report.reference}", "",
             f"**{report.verdict}**", "",
             f"- Rows with text: reference {report.rows['reference']:,}, current "
             f"{report.rows['current']:,}",
             f"- A test says drift when p < {report.alpha} and the effect >= "
             f"{report.min_effect}.", "",
             "| test | statistic | p-value | effect | drift | what moved |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {t.name} | {t.statistic:.4g} | {t.p_value:.3g} | {t.effect:.3f} | "
              f"{'yes' if t.drifted else 'no'} | {t.words} |" for t in report.tests]
    return "\n".join(lines) + "\n"
