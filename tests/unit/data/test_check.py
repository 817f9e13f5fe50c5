"""data/check.py: every planted problem is found on its line, and nothing crashes."""

from __future__ import annotations

import json

import pytest

from slimforge.data.check import CheckConfig, check_file, check_report, luhn_ok
from slimforge.errors import DataError

ROWS = [
    {"text": "A perfectly ordinary sentence about lists.", "label": "a"},  # line 1
    "{not json",  # 2
    {"text": "   ", "label": "a"},  # 3 empty
    {"text": "hi", "label": "b"},  # 4 too short
    {"text": "Write to jane.doe@example.com or call +1 415 555 0100.", "label": "a"},  # 5
    {"text": "Card 4111 1111 1111 1111 and 4111 1111 1111 1112.", "label": "a"},  # 6: one Luhn
    {"text": "key sk-abcdefghijklmnopqrstuv server 192.168.1.20", "label": "c"},  # 7 bad label
    {"text": "Caf\u00c3\u00a9 is mojibake", "label": "a"},  # 8
    {"text": "bell \x07 inside", "label": "a"},  # 9
    {"text": "a  PERFECTLY ordinary sentence about lists.", "label": "b"},  # 10 duplicate of 1
    [1, 2],  # 11 not an object
    {"label": "a"},  # 12 missing text
    {"text": 42, "label": "a"},  # 13 wrong type
    {"text": "broken \ufffd char", "label": "a"},  # 14
]


@pytest.fixture
def planted(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in ROWS) + "\n")
    return path


def test_every_planted_problem_is_found_on_its_line(planted):
    report, lengths = check_file(planted, CheckConfig(label_field="label", labels=["a", "b"]))
    found = {kind: [e["line"] for e in shown] for kind, shown in report.examples.items()}
    assert found == {
        "malformed": [2, 11], "empty": [3], "too_short": [4], "sensitive_email": [5],
        "sensitive_phone": [5], "sensitive_card": [6], "sensitive_api_key": [7],
        "sensitive_ipv4": [7], "bad_label": [7], "mojibake": [8], "control_char": [9],
        "exact_duplicate": [10], "missing_field": [12], "wrong_type": [13],
        "replacement_char": [14]}
    assert report.rows == 12  # every object row, malformed lines aside
    assert len(lengths) == 10  # rows with a text
    assert report.labels == {"a": 7, "b": 2, "c": 1}  # rows with a text
    assert report.length_percentiles["p100"] == max(lengths)
    markdown = check_report(report)
    assert "line 2: `not JSON" in markdown
    assert "| exact_duplicate | 1 |" in markdown


def test_only_the_first_findings_are_listed_but_all_are_counted(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text("{oops\n" * 50)
    report, _ = check_file(path, CheckConfig(show=3))
    assert report.counts["malformed"] == 50
    assert [e["line"] for e in report.examples["malformed"]] == [1, 2, 3]


def test_csv_rows_with_the_wrong_number_of_fields_are_malformed(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("text,label\nfine text here,a\ntoo,many,fields\nshort row only\n")
    report, _ = check_file(path, CheckConfig(label_field="label"))
    assert [e["line"] for e in report.examples["malformed"]] == [3, 4]
    assert report.rows == 1


def test_luhn():
    assert luhn_ok("4111111111111111")
    assert not luhn_ok("4111111111111112")


def test_missing_unknown_and_empty_files_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        check_file(tmp_path / "nope.jsonl")
    (tmp_path / "x.xml").write_text("<a/>")
    with pytest.raises(DataError, match="unsupported"):
        check_file(tmp_path / "x.xml")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match="no rows"):
        check_file(tmp_path / "empty.jsonl")


def test_training_rows_that_copy_eval_rows_are_reported_with_the_eval_line(tmp_path):
    from tests.unit.data.test_clean import OTHER, PARAGRAPH, THIRD, _jsonl

    train = _jsonl(tmp_path / "train.jsonl", [
        PARAGRAPH, OTHER.upper(), THIRD.replace("runtime", "run-time"), "A fine row here."])
    held_out = _jsonl(tmp_path / "eval.jsonl", [THIRD, OTHER])
    held_out.write_text("{broken\n" + held_out.read_text())  # a bad eval line is skipped
    report, _ = check_file(train, eval_path=held_out)
    assert report.examples["leak_exact"] == [{"line": 2, "detail": "same as eval line 3"}]
    assert report.examples["leak_near"] == [{"line": 3, "detail": "near eval line 2"}]
    assert "near_duplicate" not in report.counts
    assert report.eval_path == str(held_out)
