"""data/drift.py: random halves of one corpus do not drift; each planted shift is named."""

from __future__ import annotations

import json
import random

import pytest

from slimforge.data.drift import drift, drift_report
from slimforge.errors import DataError


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from slimforge.data.sources import load_texts

    folder, rng = tmp_path_factory.mktemp("drift"), random.Random(0)

    def write(name, texts, share_a=0.5):
        path = folder / name
        path.write_text("".join(json.dumps({"text": t, "label": "a" if rng.random() < share_a
                                            else "b"}) + "\n" for t in texts))
        return path

    train, held_out = (load_texts("builtin:stdlib-docs", split) for split in ("train", "eval"))
    topical = [t for t in train if any(k in t.lower() for k in ("socket", "mail", "http"))]
    return {"train": write("train.jsonl", train), "eval": write("eval.jsonl", held_out),
            "short": write("short.jsonl", [t[: len(t) // 2] for t in held_out]),
            "topic": write("topic.jsonl", topical),
            "labels": write("labels.jsonl", held_out, share_a=0.8)}


def _moved(report):
    return {t.name for t in report.tests if t.drifted}


def test_the_held_out_split_of_one_corpus_does_not_drift(corpus):
    report = drift(corpus["train"], corpus["eval"], label_field="label")
    assert _moved(report) == set()
    assert report.verdict.startswith("No drift")
    assert all(t.p_value > 0.01 for t in report.tests)  # the permutation test is calibrated


def test_each_planted_shift_is_found_and_said_in_plain_words(corpus):
    shorter = drift(corpus["train"], corpus["short"])
    assert _moved(shorter) == {"lengths"}
    assert "texts are shorter" in shorter.verdict
    topic = drift(corpus["train"], corpus["topic"])
    assert "vocabulary" in _moved(topic)
    assert "'socket'" in topic.verdict
    labels = drift(corpus["train"], corpus["labels"], label_field="label")
    assert _moved(labels) == {"labels"}
    markdown = drift_report(labels)
    assert "| labels |" in markdown
    assert "| yes |" in markdown


def test_a_file_without_text_is_a_clear_error(tmp_path, corpus):
    (tmp_path / "none.jsonl").write_text('{"body": "x"}\n{broken\n')
    with pytest.raises(DataError, match="no row with a text in 'text'"):
        drift(corpus["train"], tmp_path / "none.jsonl")
