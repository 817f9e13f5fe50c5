"""data/gate.py: bad data is refused with the report's path, unless told to proceed."""

from __future__ import annotations

import json

import pytest

from slimforge.data.gate import DataRules, gate
from slimforge.errors import DataError
from tests.unit.data.test_clean import OTHER, PARAGRAPH, THIRD, _jsonl


def test_clean_data_passes_and_the_builtin_corpus_is_not_checked(tmp_path):
    data = _jsonl(tmp_path / "d.jsonl", [PARAGRAPH, OTHER, THIRD])
    result = gate(str(data), "evaluation", DataRules(), tmp_path / "runs")
    assert result is not None
    assert (result.passed, result.failures) == (True, [])
    assert "data-check" in result.report
    assert gate("builtin:stdlib-docs", "evaluation", DataRules(), tmp_path / "runs") is None


def test_a_broken_rule_stops_with_the_report_path_unless_told_to_proceed(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join([json.dumps({"text": PARAGRAPH}), "{broken",
                               json.dumps({"text": OTHER})]) + "\n")
    with pytest.raises(DataError) as refused:
        gate(str(data), "evaluation", DataRules(), tmp_path / "runs")
    message = str(refused.value)
    assert "malformed: 1 of 3 rows (33.33%) > 0%" in message
    (run,) = (tmp_path / "runs").iterdir()
    assert f"Report: {run.resolve() / 'report.md'}" in message
    assert "## malformed" in (run / "report.md").read_text()
    assert "proceed: true" in refused.value.fix
    result = gate(str(data), "evaluation", DataRules(proceed=True), tmp_path / "runs")
    assert result is not None
    assert not result.passed
    assert result.failures == ["malformed: 1 of 3 rows (33.33%) > 0%"]
    loose = gate(str(data), "evaluation", DataRules(max_malformed=0.5), tmp_path / "runs")
    assert loose is not None
    assert loose.passed


def test_calibration_rows_that_leak_into_evaluation_break_a_rule(tmp_path):
    held_out = _jsonl(tmp_path / "eval.jsonl", [PARAGRAPH, OTHER])
    train = _jsonl(tmp_path / "train.jsonl", [THIRD, OTHER.replace("work", "wrok")])
    with pytest.raises(DataError, match=r"calibration data .* leakage: 1 of 2 rows"):
        gate(str(train), "calibration", DataRules(), tmp_path / "runs",
             eval_data=str(held_out))
