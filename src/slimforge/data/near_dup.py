"""Near-duplicate texts: MinHash signatures, banded and grouped by sorting, not by dicts.

Owns: `NearDuplicates`, `bands_for`, `shingles`, `signatures`. Each text becomes the set of
its character 5-grams after normalisation (NFKC, case-folded, whitespace collapsed), hashed
with numpy; MinHash turns the set into `num_perm` 32-bit minimums, whose agreement rate
estimates the Jaccard similarity of two texts. The signatures are datasketch's (its
`affine32` scheme, its permutations for the seed: `test_near_dup` proves them equal to
`datasketch.MinHash`), but computed for a few hundred texts per numpy call rather than one
`MinHash` object per text, which is most of the time at a million rows.

Signatures are cut into `b` bands of `r` rows (chosen by `bands_for` so that pairs at the
Jaccard `threshold` are found and pairs well below it are not), and texts that share a band
are candidates. Instead of one dict per band
(datasketch's `MinHashLSH`: hundreds of bytes per text and band), each band is one array of
64-bit keys, sorted: texts with equal keys lie side by side, so memory is the signatures
(4 bytes x `num_perm` per text) plus 8 bytes per text and band. Candidates are confirmed by
their estimated Jaccard before they are joined into clusters (union-find).
"""

from __future__ import annotations

import numpy as np
from datasketch import MinHash

from slimforge.data.check import normalize

SHINGLE = 5
"""Characters per shingle: small edits change few of them, unrelated texts share few."""
LSH_SLACK = 0.1
"""How far under `threshold` the bands aim (recall of pairs near the threshold)."""
_POWERS = np.array([257**k % 2**64 for k in range(SHINGLE)][::-1], dtype=np.uint64)


def shingles(text: str) -> np.ndarray:
    """The 32-bit hashes of the normalised text's character 5-grams (repeats and all: a
    MinHash is the same for a set and for a list of its members)."""
    codes = np.frombuffer(normalize(text).encode(), dtype=np.uint8).astype(np.uint64)
    if len(codes) < SHINGLE:
        codes = np.concatenate([codes, np.zeros(SHINGLE - len(codes), dtype=np.uint64)])
    count = len(codes) - SHINGLE + 1
    hashes = sum(codes[k:k + count] * power for k, power in enumerate(_POWERS))
    return ((hashes ^ (hashes >> np.uint64(32))) & np.uint64(0xFFFFFFFF)).astype(np.uint32)


def bands_for(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) with bands x rows <= num_perm that minimise missed pairs above the
    threshold plus found pairs below it (each weighted equally, integrated over Jaccard)."""
    grid = np.linspace(0, 1, 1001)
    best, choice = float("inf"), (1, num_perm)
    for bands in range(1, num_perm + 1):
        rows = num_perm // bands
        found = 1 - (1 - grid**rows) ** bands  # chance a pair of Jaccard s shares a band
        below, above = grid < threshold, grid >= threshold
        error = np.trapezoid(found[below], grid[below]) + np.trapezoid(
            1 - found[above], grid[above])
        if error < best:
            best, choice = error, (bands, rows)
    return choice


CHUNK = 4096
"""Signatures are kept in arrays of this many texts (never joined: no second copy)."""
SIGN_BATCH = 256
"""Texts signed per numpy call: their shingles x `num_perm` 32-bit values stay ~20 MB."""
_FMIX32 = (16, 0x85EBCA6B, 13, 0xC2B2AE35, 16)  # MurmurHash3's finalizer, as datasketch mixes


def _fmix32(values: np.ndarray) -> np.ndarray:
    s1, m1, s2, m2, s3 = (np.uint32(c) for c in _FMIX32)
    values = (values ^ (values >> s1)) * m1
    values = (values ^ (values >> s2)) * m2
    return values ^ (values >> s3)


def signatures(sets: list[np.ndarray], permutations: np.ndarray) -> np.ndarray:
    """The MinHash signature (len(sets) x num_perm, uint32) of each non-empty set of 32-bit
    hashes, as datasketch's `affine32` MinHash with these `permutations` (its 2 x num_perm
    `a`, `b`) would compute it: min over the set of a * fmix32(h) + b, modulo 2^32."""
    a, b = permutations[0].astype(np.uint32), permutations[1].astype(np.uint32)
    out = np.empty((len(sets), len(a)), dtype=np.uint32)
    for start in range(0, len(sets), SIGN_BATCH):
        part = sets[start:start + SIGN_BATCH]
        mixed = _fmix32(np.concatenate(part))
        offsets = np.cumsum([0, *map(len, part[:-1])])
        with np.errstate(over="ignore"):  # wraps modulo 2^32: the affine permutation
            values = a[:, None] * mixed[None, :] + b[:, None]  # (num_perm, shingles)
        # Along the contiguous axis: reduceat over rows of the transpose is ~8x slower.
        out[start:start + len(part)] = np.minimum.reduceat(values, offsets, axis=1).T
    return out



class NearDuplicates:
    """Add texts one by one (streaming); ask for the clusters at the end."""

    def __init__(self, threshold: float = 0.8, num_perm: int = 64, seed: int = 1) -> None:
        self.threshold, self.num_perm, self.seed = threshold, num_perm, seed
        # Banded for a lower threshold than the one confirmed: LSH misses pairs just above
        # its threshold, the signature check removes those below the real one.
        self.bands, self.rows = bands_for(max(threshold - LSH_SLACK, 0.05), num_perm)
        self._permutations = MinHash(num_perm=num_perm, seed=seed).permutations
        self._ids: list[int] = []
        self._chunks: list[np.ndarray] = []
        self._pending: list[np.ndarray] = []

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, key: int, text: str) -> None:
        """Index `text` under `key` (a line number, say)."""
        self._ids.append(key)
        self._pending.append(shingles(text))
        if len(self._pending) == CHUNK:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            self._chunks.append(signatures(self._pending, self._permutations))
            self._pending = []

    def _signature(self, i: int) -> np.ndarray:
        return self._chunks[i // CHUNK][i % CHUNK]

    def _band_keys(self, band: int) -> np.ndarray:
        """One 64-bit key per text for one band: texts agreeing on the band's rows share it."""
        mix = _band_mix(self.rows)
        cut = slice(band * self.rows, (band + 1) * self.rows)
        # The products and sums wrap modulo 2^64, which makes them a hash.
        return np.concatenate([(chunk[:, cut].astype(np.uint64) * mix).sum(axis=1)
                               for chunk in self._chunks])

    def clusters(self) -> list[list[int]]:
        """Groups of keys whose texts are near-duplicates (estimated Jaccard >= threshold),
        each sorted, the groups ordered by their first key."""
        self._flush()
        parent: dict[int, int] = {}  # only texts that joined another: memory ~ the duplicates

        def root(i: int) -> int:
            path = []
            while i in parent:
                path.append(i)
                i = parent[i]
            for j in path[:-1]:  # path compression
                parent[j] = i
            return i

        for band in range(self.bands if self._ids else 0):
            keys = self._band_keys(band)
            order = np.argsort(keys, kind="stable")
            for j in np.nonzero(keys[order][1:] == keys[order][:-1])[0]:
                a, b = root(int(order[j])), root(int(order[j + 1]))
                if a == b:
                    continue
                agree = np.mean(self._signature(int(order[j])) == self._signature(
                    int(order[j + 1])))
                if agree >= self.threshold:
                    parent[max(a, b)] = min(a, b)
        groups: dict[int, list[int]] = {}
        for i in {*parent, *map(root, list(parent))}:
            groups.setdefault(root(i), []).append(self._ids[i])
        return sorted((sorted(g) for g in groups.values()), key=lambda g: g[0])


def _band_mix(rows: int) -> np.ndarray:
    """Odd 64-bit multipliers, one per row of a band, so a band's rows hash together."""
    rng = np.random.default_rng(rows)
    return rng.integers(1, 2**63, size=rows, dtype=np.uint64) * 2 + 1
