"""The data gate: the check that runs before a model is touched, and refuses bad data.

Owns: `DataRules`, `GateResult`, `check_and_report`, `gate`. `optimize` (and any command that
trains or calibrates on a file) calls `gate` on every local data file it will read, before
loading a model: the full `data check` runs, its report is written as a run folder like
`slimforge data check` writes it, and each hard rule in `DataRules` (a most-allowed share of
rows for a kind of finding) is judged. A file that breaks a rule stops the command with one
message naming the rules broken and the report's path, unless the recipe says
`data_check: {proceed: true}` (or the command got `--proceed`), in which case the run goes on
and its report says which rules were broken. The built-in corpus is fixed and split by hash,
so there is nothing to check there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from slimforge.data.check import CheckConfig, CheckReport, check_file, check_report
from slimforge.errors import DataError

RULES: dict[str, tuple[str, ...]] = {
    "max_malformed": ("malformed",),
    "max_missing_text": ("missing_field", "wrong_type"),
    "max_bad_labels": ("bad_label",),
    "max_empty": ("empty", "too_short"),
    "max_encoding": ("replacement_char", "mojibake", "control_char"),
    "max_duplicates": ("exact_duplicate", "near_duplicate"),
    "max_leakage": ("leak_exact", "leak_near"),
}
"""Each hard rule and the findings it counts."""


class DataRules(BaseModel):
    """The hard rules: the most of each kind of finding a file may have, as a share of its
    rows (0: none at all). `proceed` runs on anyway, with the failures in the report."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    proceed: bool = False
    max_malformed: float = Field(0.0, ge=0, le=1)
    max_missing_text: float = Field(0.0, ge=0, le=1)
    max_bad_labels: float = Field(0.0, ge=0, le=1)
    max_empty: float = Field(0.01, ge=0, le=1)
    max_encoding: float = Field(0.01, ge=0, le=1)
    max_duplicates: float = Field(0.05, ge=0, le=1)
    max_leakage: float = Field(0.0, ge=0, le=1)
    """Training (calibration) rows that copy an evaluation row, exactly or nearly."""
    near_dup_threshold: float | None = Field(0.8, gt=0, le=1)
    """Jaccard from which texts are near-duplicates (and near leaks); None: exact only."""


@dataclass
class GateResult:
    """What the gate found for one file."""

    data: str
    role: str
    passed: bool
    failures: list[str]
    report: str
    counts: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The result as a plain dict (for metrics.json)."""
        return {"data": self.data, "role": self.role, "passed": self.passed,
                "failures": self.failures, "report": self.report, "counts": self.counts}


def check_and_report(path: str, config: CheckConfig, output_dir: str | Path,
                     eval_path: str | None = None) -> tuple[CheckReport, Path, str]:
    """Run `data check` and write its run folder (report.md with a length histogram,
    metrics.json, manifest); returns the report, the folder and the Markdown."""
    from slimforge.io.run import write_run
    from slimforge.report.plots import length_histogram_png

    report, lengths = check_file(path, config, eval_path=eval_path)
    markdown = check_report(report)
    picture = length_histogram_png({"texts": lengths}, f"text lengths: {path}")
    files = {"lengths.png": picture} if picture else {}
    if picture:
        markdown += "\n![text lengths](lengths.png)\n"
    run = write_run(output_dir, "data-check", path,
                    {**config.model_dump(), "eval": eval_path}, report.to_json(), markdown,
                    files=files)
    return report, run, markdown


def _failures(report: CheckReport, rules: DataRules) -> list[str]:
    total = report.rows + report.counts.get("malformed", 0)
    failures = []
    for rule, kinds in RULES.items():
        found = sum(report.counts.get(kind, 0) for kind in kinds)
        allowed = getattr(rules, rule)
        if found > allowed * total:
            failures.append(f"{rule.removeprefix('max_').replace('_', ' ')}: {found:,} of "
                            f"{total:,} rows ({100 * found / total:.2f}%) > {100 * allowed:g}%")
    return failures


def gate(data: str, role: str, rules: DataRules, output_dir: str | Path,
         text_field: str = "text", eval_data: str | None = None) -> GateResult | None:
    """Check one data file before use; None for the built-in corpus.

    Args:
        data: the file.
        role: what it is for (`eval`, `calibration`, `train`), named in messages.
        rules: the hard rules, and whether to proceed when one is broken.
        output_dir: where the check's run folder goes.
        text_field: the field holding the text.
        eval_data: the evaluation file `data` must not leak into (training data only).

    Raises:
        DataError: the file breaks a hard rule and `rules.proceed` is off.
    """
    if data.startswith("builtin:"):
        return None
    local_eval = eval_data if eval_data and not eval_data.startswith("builtin:") else None
    config = CheckConfig(text_field=text_field, near_dup_threshold=rules.near_dup_threshold)
    report, run, _ = check_and_report(data, config, output_dir, local_eval)
    failures = _failures(report, rules)
    if failures and not rules.proceed:
        raise DataError(
            f"The {role} data {data} breaks the data check's hard rules: "
            f"{'; '.join(failures)}. Report: {run.resolve() / 'report.md'}",
            f"clean it (`slimforge data clean {data} -o CLEAN`), loosen the rule under "
            "`data_check:` in the recipe, or set `data_check: {proceed: true}` (or pass "
            "--proceed) to run on it anyway.")
    return GateResult(data, role, not failures, failures, str(run / "report.md"),
                      dict(report.counts))
