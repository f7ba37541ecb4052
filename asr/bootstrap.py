"""Bootstrap confidence for corpus error rates, on per-utterance count arrays.

Bootstrap over utterances (Bisani & Ney, "Bootstrap estimates for confidence intervals in ASR
performance evaluation", ICASSP 2004): resample utterances with replacement, recompute the
corpus rate, take percentiles. The paired version resamples the same utterances for two
systems (also Koehn, "Statistical significance tests for machine translation evaluation",
EMNLP 2004). Inputs are plain integer arrays, one entry an utterance, so this module knows
nothing of how the counts were made.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

_BOOTSTRAP_DRAWS = 1 << 21  # utterance draws a resampling block (bounds memory)


def _resampled_sums(columns: Sequence[np.ndarray], n_boot: int, seed: int) -> list[np.ndarray]:
    """Sums of each per-utterance column over ``n_boot`` resamples of the utterances.

    All columns see the same resampled utterances (a paired bootstrap). Deterministic for
    (seed, number of utterances, n_boot).
    """
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    n_utts = len(columns[0])
    rng = np.random.default_rng(seed)
    sums = [np.empty(n_boot, np.int64) for _ in columns]
    per_block = max(1, _BOOTSTRAP_DRAWS // n_utts)
    for lo in range(0, n_boot, per_block):
        hi = min(n_boot, lo + per_block)
        draw = rng.integers(0, n_utts, size=(hi - lo, n_utts), dtype=np.int32)
        for out, col in zip(sums, columns, strict=True):
            out[lo:hi] = np.take(col, draw).sum(axis=1)
    return sums


def _rates(errors: np.ndarray, n: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(n > 0, errors / np.maximum(n, 1), np.nan)


def bootstrap_ci(errors: np.ndarray, n: np.ndarray, *, n_boot: int = 1000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float] | None:
    """Percentile bootstrap interval of sum(errors) / sum(n), resampling utterances.

    ``errors`` and ``n`` are per-utterance arrays. ``None`` when the corpus has no reference
    token. Resamples that happen to hold no reference token are left out.
    """
    errors, n = np.asarray(errors, np.int64), np.asarray(n, np.int64)
    if n.sum() == 0:
        return None
    err_star, n_star = _resampled_sums([errors, n], n_boot, seed)
    alpha = (1.0 - level) / 2
    lo, hi = np.nanquantile(_rates(err_star, n_star), [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def paired_bootstrap_test(errors_a: np.ndarray, errors_b: np.ndarray, n: np.ndarray, *,
                          n_boot: int = 10000, seed: int = 0) -> dict[str, Any]:
    """Paired bootstrap comparison of two systems' per-utterance errors on the same references.

    Returns the rate difference ``delta = rate_a - rate_b`` (negative: A is better), its 95%
    percentile interval, the probability that A is better (share of resamples with a lower
    rate for A, ties counted half; Bisani & Ney's "probability of improvement"), and a
    two-sided p-value for "no difference": twice the smaller tail share of resampled
    differences on either side of 0, with one added to count and total, capped at 1.
    """
    errors_a, errors_b, n = (np.asarray(x, np.int64) for x in (errors_a, errors_b, n))
    if n.sum() == 0:
        raise ValueError("paired bootstrap needs at least one reference word")
    ea, eb, nn = _resampled_sums([errors_a, errors_b, n], n_boot, seed)
    keep = nn > 0
    delta = (ea[keep] - eb[keep]) / nn[keep]
    total = len(delta)
    below, above = int((delta < 0).sum()), int((delta > 0).sum())
    ties = total - below - above
    lo, hi = np.quantile(delta, [0.025, 0.975])
    tail = min(below + ties, above + ties)
    return {
        "delta": int(errors_a.sum()) / int(n.sum()) - int(errors_b.sum()) / int(n.sum()),
        "delta_ci95": [float(lo), float(hi)],
        "p_value": min(1.0, 2.0 * (tail + 1) / (total + 1)),
        "prob_a_better": (below + 0.5 * ties) / total,
        "n_boot": n_boot, "seed": seed,
    }
