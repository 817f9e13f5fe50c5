"""data/clean.py: every input line is kept or rejected with its reason, never lost."""

from __future__ import annotations

import json
import os
import stat

import pytest

from slimforge.data.clean import CleanConfig, clean_file
from slimforge.errors import DataError

LINES = [
    json.dumps({"text": "Mail jane.doe@example.com about the 4111 1111 1111 1111 card."}),
    "{broken",
    json.dumps({"text": "  "}),
    json.dumps({"text": "ok"}),
    json.dumps({"text": "A sentence that is fine as it is."}),
    json.dumps({"text": "a sentence that is FINE as it is."}),
    json.dumps({"other": 1}),
    json.dumps([1, 2]),
    "",
    json.dumps({"text": "Call +1 415 555 0100 from 10.0.0.1, key sk-abcdefghijklmnopqrstuv."}),
]


@pytest.fixture
def dirty(tmp_path):
    path = tmp_path / "dirty.jsonl"
    path.write_text("\n".join(LINES) + "\n")
    return path


def test_kept_plus_rejected_is_the_input_and_each_reject_says_why(dirty, tmp_path):
    result = clean_file(dirty, tmp_path / "clean.jsonl")
    assert (result.input, result.kept, result.rejected) == (10, 3, 7)
    kept = [json.loads(x) for x in (tmp_path / "clean.jsonl").read_text().splitlines()]
    assert [row["text"] for row in kept] == [
        "Mail [EMAIL] about the [CARD] card.",
        "A sentence that is fine as it is.",
        "Call [PHONE] from [IPV4], key [API_KEY]."]
    rejects = [json.loads(x) for x in (tmp_path / "clean.rejects.jsonl").read_text().splitlines()]
    assert [(r["line"], r["reason"]) for r in rejects] == [
        (2, "malformed"), (3, "empty"), (4, "too_short"), (6, "exact_duplicate of line 5"),
        (7, "missing_field"), (8, "malformed"), (9, "malformed")]
    assert rejects[0]["row"] == "{broken"  # the original, to fix and feed back
    assert result.redacted == {"email": 1, "card": 1, "phone": 1, "ipv4": 1, "api_key": 1}
    mode = stat.S_IMODE(os.stat(tmp_path / "clean.jsonl").st_mode)
    assert mode == 0o666 & ~_umask()  # an ordinary file, not the temp file's 0600


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_options_keep_duplicates_short_texts_and_sensitive_strings(dirty, tmp_path):
    config = CleanConfig(min_chars=0, drop_duplicates=False, redact=False)
    result = clean_file(dirty, tmp_path / "clean.jsonl", config=config)
    assert result.kept == 5
    assert "jane.doe@example.com" in (tmp_path / "clean.jsonl").read_text()


def test_nothing_appears_when_the_input_cannot_be_cleaned(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        clean_file(tmp_path / "nope.jsonl", tmp_path / "out.jsonl")
    (tmp_path / "a.csv").write_text("text\nx\n")
    with pytest.raises(DataError, match="jsonl"):
        clean_file(tmp_path / "a.csv", tmp_path / "out.jsonl")
    (tmp_path / "same.jsonl").write_text("{}\n")
    with pytest.raises(DataError, match="overwrite"):
        clean_file(tmp_path / "same.jsonl", tmp_path / "same.jsonl")
    assert not (tmp_path / "out.jsonl").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv", "same.jsonl"]


def test_a_failure_mid_file_leaves_no_output_at_all(dirty, tmp_path, monkeypatch):
    import slimforge.data.clean as clean

    calls = []

    def failing(text, counts):
        calls.append(text)
        if len(calls) == 2:
            raise RuntimeError("disk full")
        return text

    monkeypatch.setattr(clean, "_redact", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        clean_file(dirty, tmp_path / "clean.jsonl")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dirty.jsonl"]  # no temp files
