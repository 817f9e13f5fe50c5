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
    config = CleanConfig(min_chars=0, drop_duplicates=False, near_dup_threshold=None,
                         redact=False)
    result = clean_file(dirty, tmp_path / "clean.jsonl", config=config)
    assert result.kept == 5
    assert "jane.doe@example.com" in (tmp_path / "clean.jsonl").read_text()


def test_nothing_appears_when_the_input_cannot_be_cleaned(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        clean_file(tmp_path / "nope.jsonl", tmp_path / "out.jsonl")
    (tmp_path / "a.csv").write_text("text\nx\n")
    with pytest.raises(DataError, match="keeps the input's format"):
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


PARAGRAPH = ("The queue module implements multi-producer, multi-consumer queues. It is "
             "especially useful in threaded programming when information must be exchanged "
             "safely between multiple threads.")
OTHER = ("The textwrap module provides some convenience functions, as well as TextWrapper, "
         "the class that does all the work, for wrapping and filling paragraphs of text.")
THIRD = ("A context manager is an object that defines the runtime context to be established "
         "when executing a with statement, handling entry into and exit from it.")


def _jsonl(path, texts):
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


def test_near_duplicates_and_rows_leaking_into_eval_go_with_the_line_they_copy(tmp_path):
    train = _jsonl(tmp_path / "train.jsonl", [
        PARAGRAPH, PARAGRAPH.replace("queues", "queuez"),  # 2: near 1
        OTHER,  # 3: copies eval line 2 exactly
        THIRD.replace("runtime", "run-time"),  # 4: near eval line 1
        "Something unrelated enough to stay in the cleaned file for good."])
    held_out = _jsonl(tmp_path / "eval.jsonl", [THIRD, OTHER])
    result = clean_file(train, tmp_path / "out.jsonl", eval_path=held_out)
    rejects = [json.loads(x) for x in (tmp_path / "out.rejects.jsonl").read_text().splitlines()]
    assert [(r["line"], r["reason"]) for r in rejects] == [
        (2, "near_duplicate of line 1"), (3, "leak_exact of eval line 2"),
        (4, "leak_near of eval line 1")]
    assert result.reasons == {"near_duplicate": 1, "leak_exact": 1, "leak_near": 1}
    assert (result.kept, result.rejected, result.input) == (2, 3, 5)
    with pytest.raises(DataError, match="does not exist"):
        clean_file(train, tmp_path / "out2.jsonl", eval_path=tmp_path / "nope.jsonl")


def test_csv_and_parquet_are_cleaned_into_their_own_format(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"text": PARAGRAPH, "label": 1}, {"text": "", "label": 0},
            {"text": "Mail jane.doe@example.com today, please.", "label": 2},
            {"text": PARAGRAPH, "label": 1}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in.parquet")
    result = clean_file(tmp_path / "in.parquet", tmp_path / "out.parquet")
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.schema == pq.read_schema(tmp_path / "in.parquet")  # the same columns, types
    assert table.to_pylist() == [rows[0], {"text": "Mail [EMAIL] today, please.", "label": 2}]
    assert (result.kept, result.rejected) == (2, 2)

    (tmp_path / "in.csv").write_text(
        f'text,label\n"{PARAGRAPH}",1\nshort,2,extra\n"{PARAGRAPH}",1\n"Fine, with a comma.",3\n')
    result = clean_file(tmp_path / "in.csv", tmp_path / "out.csv")
    assert (tmp_path / "out.csv").read_text() == (
        f'text,label\n"{PARAGRAPH}",1\n"Fine, with a comma.",3\n')
    rejects = [json.loads(x) for x in (tmp_path / "out.rejects.jsonl").read_text().splitlines()]
    assert [(r["line"], r["reason"], r["row"]) for r in rejects] == [
        (3, "malformed", ["short", "2", "extra"]),
        (4, "exact_duplicate of line 2", {"text": PARAGRAPH, "label": "1"})]
