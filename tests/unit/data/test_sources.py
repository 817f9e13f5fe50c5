"""data/sources.py: the stdlib corpus and streaming local files."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from slimforge.data.sources import (
    STDLIB_MODULES,
    iter_records,
    load_records,
    load_texts,
    stdlib_corpus,
)
from slimforge.errors import DataError


def test_stdlib_corpus_is_deterministic_with_disjoint_splits():
    corpus = stdlib_corpus()
    rebuilt = stdlib_corpus.__wrapped__()  # a second, uncached build in a fresh interpreter
    assert rebuilt.sha256 == corpus.sha256
    train, held_out = corpus.split("train"), corpus.split("eval")
    assert not set(train) & set(held_out)
    assert len(train) + len(held_out) == len(corpus.paragraphs)
    assert len(held_out) >= 500  # enough for the 500-paragraph fidelity check
    assert all(p[0].isupper() and len(p.split()) >= 12 for p in held_out)
    # the fixed list first, then the rest of the stdlib, its public submodules included
    assert corpus.modules[:3] == STDLIB_MODULES[:3]
    assert {"asyncio.base_events", "json.decoder", "zoneinfo"} <= set(corpus.modules)
    assert not set(corpus.modules) & {"this", "antigravity", "idlelib", "unittest.test"}


def test_load_texts_limits_and_splits():
    assert len(load_texts("builtin:stdlib-docs", "eval", limit=5)) == 5
    assert load_texts("builtin:stdlib-docs", "train", 3) != load_texts("builtin:stdlib-docs",
                                                                      "eval", 3)


def test_every_file_format(tmp_path):
    rows = [{"text": "first line", "label": 0}, {"text": "second line", "label": 1}]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    (tmp_path / "d.csv").write_text("text,label\nfirst line,0\nsecond line,1\n")
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    (tmp_path / "d.txt").write_text("first line\n\nsecond line\n")
    for name in ("d.jsonl", "d.csv", "d.parquet", "d.txt"):
        assert load_texts(str(tmp_path / name)) == ["first line", "second line"], name


def test_reading_streams_and_stops_at_the_limit(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a"}\n{"text": "b"}\nnot json at all\n')
    assert load_texts(str(path), limit=2) == ["a", "b"]  # the bad line is never read
    with pytest.raises(DataError, match=r"d.jsonl:3 is malformed \(not JSON"):
        load_texts(str(path))


def test_clear_errors_for_bad_data(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_texts(str(tmp_path / "missing.jsonl"))
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match="holds no records"):
        load_records(str(tmp_path / "empty.jsonl"))
    (tmp_path / "d.jsonl").write_text('{"body": "x"}\n')
    with pytest.raises(DataError, match="without the field 'text'.*body"):
        load_texts(str(tmp_path / "d.jsonl"))
    (tmp_path / "d.xml").write_text("<x/>")
    with pytest.raises(DataError, match="unsupported extension"):
        list(iter_records(str(tmp_path / "d.xml")))
    (tmp_path / "list.jsonl").write_text("[1, 2]\n")
    with pytest.raises(DataError, match="not an object"):
        load_records(str(tmp_path / "list.jsonl"))
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 garbage")
    with pytest.raises(DataError, match="not a readable Parquet"):
        load_records(str(tmp_path / "bad.parquet"))
    (tmp_path / "blank.txt").write_text("\n \n")
    with pytest.raises(DataError, match="holds no records"):
        load_texts(str(tmp_path / "blank.txt"))
