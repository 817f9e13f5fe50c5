"""data/near_dup.py: planted near-duplicates of real text are found, unrelated texts not."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from slimforge.data.check import CheckConfig, check_file
from slimforge.data.near_dup import NearDuplicates, bands_for, shingles, signatures


def _jaccard(a: str, b: str) -> float:
    x, y = set(shingles(a).tolist()), set(shingles(b).tolist())
    return len(x & y) / len(x | y)


@pytest.fixture(scope="module")
def planted():
    from slimforge.data.sources import load_texts

    texts = load_texts("builtin:stdlib-docs", "eval", limit=None)
    rng = random.Random(0)
    rows, pairs = list(texts), []
    for i in rng.sample(range(len(texts)), 200):  # one character changed in place
        t = texts[i]
        at = rng.randrange(len(t))
        rows.append(t[:at] + rng.choice("qxz#") + t[at + 1:])
        pairs.append(frozenset((i, len(rows) - 1)))
    return rows, pairs


def test_precision_and_recall_on_planted_near_duplicates(planted):
    rows, pairs = planted
    index = NearDuplicates(threshold=0.8)
    for key, text in enumerate(rows):
        index.add(key, text)
    found = {frozenset((a, b)) for group in index.clusters() for a in group for b in group
             if a < b}
    truly = {p for p in pairs if _jaccard(*(rows[i] for i in p)) >= 0.8}
    assert len(truly) >= 190  # a one-character edit keeps these paragraphs near
    recall = len(found & truly) / len(truly)
    precision = sum(_jaccard(*(rows[i] for i in p)) >= 0.8 for p in found) / len(found)
    assert recall >= 0.95
    assert precision >= 0.95


def test_bands_fit_the_signature_and_sharpen_with_the_threshold():
    for threshold in (0.5, 0.8, 0.9):
        bands, rows = bands_for(threshold, 64)
        assert bands * rows <= 64
    assert bands_for(0.9, 64)[1] > bands_for(0.5, 64)[1]  # higher threshold: longer bands


def test_check_reports_near_duplicates_as_clusters_of_lines(tmp_path):
    base = "Return the number of items in a container, counting each one exactly once."
    rows = [base, "Something else entirely about sockets.", base.replace("once", "onse")]
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps({"text": r}) for r in rows) + "\n")
    report, _ = check_file(path)
    assert report.near_duplicate_clusters == [[1, 3]]
    assert report.examples["near_duplicate"] == [{"line": 3, "detail": "near line 1"}]
    off, _ = check_file(path, CheckConfig(near_dup_threshold=None))
    assert "near_duplicate" not in off.counts


def test_batched_signatures_are_datasketchs_own(planted):
    from datasketch import MinHash

    rows, _ = planted
    texts = [*rows[:300], "", "abc"]  # short texts are padded to one shingle
    sets = [shingles(t) for t in texts]
    template = MinHash(num_perm=64, seed=1, hashfunc=int)
    assert template.scheme == "affine32"
    ours = signatures(sets, template.permutations)
    for text_set, signature in zip(sets, ours, strict=True):
        theirs = template.copy()
        theirs.update_batch(text_set)
        assert np.array_equal(theirs.hashvalues, signature)
