"""Text augmentation: seeded, label-preserving, and each operation does what it says."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from slimforge.data.augment import AugmentConfig, augment, augment_text
from slimforge.errors import DataError

TEXT = " ".join(f"w{i}" for i in range(40))


def test_deletion_drops_about_its_share_and_keeps_the_order():
    config = AugmentConfig(deletion=0.25, swap=0.0)
    lengths = []
    for seed in range(50):
        words = augment_text(TEXT, config, random.Random(seed)).split()
        assert words == sorted(words, key=lambda w: int(w[1:]))  # only removals
        lengths.append(len(words))
    assert 27 < sum(lengths) / len(lengths) < 33  # 40 x 0.75 = 30 on average


def test_swaps_keep_every_word():
    altered = augment_text(TEXT, AugmentConfig(deletion=0.0, swap=0.1), random.Random(1))
    assert altered != TEXT
    assert Counter(altered.split()) == Counter(TEXT.split())


def test_span_masking_masks_one_contiguous_run():
    config = AugmentConfig(deletion=0.0, swap=0.0, span=0.2, mask_token="<m>")
    words = augment_text(TEXT, config, random.Random(3)).split()
    masked = [i for i, w in enumerate(words) if w == "<m>"]
    assert len(masked) == 8
    assert masked == list(range(masked[0], masked[0] + 8))
    start, original = masked[0], TEXT.split()
    assert words[:start] + words[start + 8:] == original[:start] + original[start + 8:]


def test_one_word_always_survives_deletion():
    config = AugmentConfig(deletion=0.99, swap=0.0)
    assert all(augment_text("a b", config, random.Random(s)) in ("a", "b", "a b")
               for s in range(20))


def test_records_keep_their_labels_and_the_originals_come_first():
    records = [{"text": f"sample number {i} is here", "label": i % 3} for i in range(10)]
    out = augment(records, AugmentConfig(copies=2))
    assert out[:10] == records
    assert len(out) == 30
    assert [r["label"] for r in out[10:]] == [r["label"] for r in records] * 2
    assert sum(r["text"] != records[i % 10]["text"] for i, r in enumerate(out[10:])) >= 15


def test_the_same_seed_gives_the_same_data_and_another_seed_other_data():
    texts = [TEXT, TEXT[:60]]
    assert augment(texts, AugmentConfig(seed=7)) == augment(texts, AugmentConfig(seed=7))
    assert augment(texts, AugmentConfig(seed=7)) != augment(texts, AugmentConfig(seed=8))


def test_a_record_without_its_text_field_is_a_clear_error():
    with pytest.raises(DataError, match="no text in 'sentence'"):
        augment([{"text": "x y", "label": 0}], AugmentConfig(), field="sentence")
