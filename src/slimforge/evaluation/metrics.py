"""Quality metrics as pure functions on tensors: known answers, no models involved.

Owns: embedding fidelity (per-row and mean cosine, top-k neighbour overlap, Spearman correlation of
pairwise similarities), half-paragraph retrieval, perplexity from summed NLL, and
classification accuracy and macro-F1, and a bootstrap interval for any statistic over
examples. `evaluate.py` runs models and feeds these.

    >>> import torch
    >>> accuracy(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]))
    0.6666666666666666
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch


def cosines(emb: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Cosine similarity between matching rows of two L2-normalised matrices."""
    return (emb * ref).sum(-1)


def cosine_mean(emb: torch.Tensor, ref: torch.Tensor) -> float:
    """Mean cosine similarity between matching rows of two L2-normalised matrices."""
    return float(cosines(emb, ref).mean())


def _neighbours(emb: torch.Tensor, k: int) -> torch.Tensor:
    sims = emb @ emb.T
    sims.fill_diagonal_(float("-inf"))
    return sims.topk(k, dim=1).indices


def knn_overlap(emb: torch.Tensor, ref: torch.Tensor, k: int = 10) -> float:
    """Mean share of each row's k nearest neighbours (by cosine) that both spaces agree on."""
    k = min(k, len(emb) - 1)
    if k < 1:
        raise ValueError("knn_overlap needs at least two rows")
    mine = torch.zeros(len(emb), len(emb)).scatter_(1, _neighbours(emb, k), 1.0)
    theirs = torch.zeros(len(ref), len(ref)).scatter_(1, _neighbours(ref, k), 1.0)
    return float((mine * theirs).sum(1).mean() / k)


def _ranks(values: torch.Tensor) -> torch.Tensor:
    order = values.argsort()
    ranks = torch.empty_like(values, dtype=torch.float64)
    ranks[order] = torch.arange(len(values), dtype=torch.float64)
    return ranks


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two equal-length vectors (ties broken by position)."""
    ra, rb = _ranks(a.flatten()), _ranks(b.flatten())
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()).clamp(min=1e-12))


def pairwise_spearman(emb: torch.Tensor, ref: torch.Tensor) -> float:
    """Spearman correlation between the two spaces' pairwise similarities (upper triangle)."""
    rows, cols = torch.triu_indices(len(emb), len(emb), offset=1)
    return spearman((emb @ emb.T)[rows, cols], (ref @ ref.T)[rows, cols])


def retrieval_at_1(queries: torch.Tensor, documents: torch.Tensor) -> float:
    """Share of queries whose most similar document is the one at the same index."""
    hits = (queries @ documents.T).argmax(1) == torch.arange(len(queries))
    return float(hits.float().mean())


def perplexity(nll_sum: float, tokens: int) -> float:
    """exp(mean negative log-likelihood per predicted token)."""
    if tokens <= 0:
        raise ValueError("perplexity needs at least one predicted token")
    return math.exp(nll_sum / tokens)


def accuracy(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of predictions equal to the label."""
    return float((predictions == labels).float().mean())


def macro_f1(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    """Unweighted mean of per-class F1 over every class seen in labels or predictions."""
    scores = []
    for cls in torch.unique(torch.cat([labels, predictions])):
        tp = float(((predictions == cls) & (labels == cls)).sum())
        fp = float(((predictions == cls) & (labels != cls)).sum())
        fn = float(((predictions != cls) & (labels == cls)).sum())
        scores.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return sum(scores) / len(scores)


def bootstrap_interval(
    columns: dict[str, Sequence[float]],
    statistic: Callable[..., np.ndarray],
    level: float = 0.95,
    resamples: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """A percentile bootstrap interval of `statistic` over examples.

    Args:
        columns: per-example values by name, all the same length; they are resampled
            together (paired), so a statistic comparing two models on the same examples keeps
            each example's pair.
        statistic: takes the columns as keyword arrays of shape (resamples, examples) and
            returns one value per resample.
        level: the interval's coverage (0.95: from the 2.5th to the 97.5th percentile).
        resamples: how many resamples.
        seed: the resampling seed (the same figures give the same interval).
    """
    arrays = {name: np.asarray(values, dtype=np.float64) for name, values in columns.items()}
    count = len(next(iter(arrays.values())))
    if count == 0 or any(len(a) != count for a in arrays.values()):
        raise ValueError("bootstrap columns must be non-empty and of one length")
    index = np.random.default_rng(seed).integers(0, count, size=(resamples, count))
    values = statistic(**{name: array[index] for name, array in arrays.items()})
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)
