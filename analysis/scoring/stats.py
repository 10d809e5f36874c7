"""Multiple-testing correction and small shared statistics (paper section 4.6, Supplementary Note 16).

Benjamini-Hochberg step-up FDR control: sort the m p-values, q_(i) = min_{j>=i} p_(j) * m / j, capped at 1.
"""
from __future__ import annotations

from itertools import permutations

import numpy as np
from scipy.stats import rankdata, spearmanr, ttest_1samp, wilcoxon


def benjamini_hochberg(pvalues: np.ndarray) -> np.ndarray:
    """BH q-values for a 1-D array of p-values (NaN entries stay NaN and do not count towards m)."""
    p = np.asarray(pvalues, dtype=float)
    q = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    m = int(ok.sum())
    if m == 0:
        return q
    pv = p[ok]
    order = np.argsort(pv, kind="stable")
    scaled = pv[order] * m / np.arange(1, m + 1)
    monotone = np.minimum.accumulate(scaled[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(monotone, 1.0)
    q[ok] = out
    return q


def auroc_from_counts(pos: np.ndarray, neg: np.ndarray) -> float:
    """AUROC from the (weighted) counts of positives ``pos`` and negatives ``neg`` ``[T]`` at each distinct score, in
    ascending score order (Mann-Whitney: ties count one half); NaN without a positive or a negative."""
    total_pos, total_neg = pos.sum(), neg.sum()
    if total_pos == 0 or total_neg == 0:
        return float("nan")
    return float((pos * (np.cumsum(neg) - neg / 2)).sum() / (total_pos * total_neg))


def hanley_mcneil_ci(auc: np.ndarray, n_pos: int, n_neg: int, z: float = 1.959964) -> tuple[np.ndarray, np.ndarray]:
    """95% normal-approximation CI for AUROC from Hanley & McNeil (1982), vectorised over ``auc``."""
    a = np.asarray(auc, dtype=float)
    q1 = a / (2 - a)
    q2 = 2 * a * a / (1 + a)
    var = (a * (1 - a) + (n_pos - 1) * (q1 - a * a) + (n_neg - 1) * (q2 - a * a)) / max(n_pos * n_neg, 1)
    se = np.sqrt(np.clip(var, 0, None))
    return np.clip(a - z * se, 0, 1), np.clip(a + z * se, 0, 1)


def wilcoxon_p(diff: np.ndarray, alternative: str = "two-sided") -> float:
    """Wilcoxon signed-rank p for paired differences ``diff``: the exact null when there are no zeros or ties
    (and n <= 50), else the normal approximation (scipy's permutation fallback is too slow per test). NaN when
    every difference is zero or n < 2."""
    d = np.asarray(diff, dtype=float)
    if d.size < 2 or not np.any(d != 0):
        return float("nan")
    clean = np.all(d != 0) and np.unique(np.abs(d)).size == d.size and d.size <= 50
    return float(wilcoxon(d, alternative=alternative, method="exact" if clean else "approx").pvalue)


def ttest_p(diff: np.ndarray, alternative: str = "two-sided") -> float:
    """One-sample t-test p of ``diff`` against 0 (a paired t-test when ``diff`` holds paired differences; Student,
    n - 1 degrees of freedom). NaN when n < 2 or every difference is equal (no variance to test against)."""
    d = np.asarray(diff, dtype=float)
    if d.size < 2 or np.all(d == d[0]):
        return float("nan")
    return float(ttest_1samp(d, 0.0, alternative=alternative).pvalue)


EXACT_SPEARMAN_MAX_N = 8   # n! pairings enumerated up to here (40,320); above, the t approximation is close


def spearman(x, y) -> tuple[float, float]:
    """Spearman's rho and its two-sided p. Up to :data:`EXACT_SPEARMAN_MAX_N` points the p is exact, the share of
    all n! pairings of the ranks (ties averaged) whose |rho| reaches the observed one, so 4 layers cannot give less
    than 1/12 (the t approximation scipy uses there gives ~0 for a perfect order); above, scipy's t approximation.
    NaN, NaN when either input is constant or n < 3."""
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if a.size < 3 or np.all(a == a[0]) or np.all(b == b[0]):
        return float("nan"), float("nan")
    if a.size > EXACT_SPEARMAN_MAX_N:
        rho, p = spearmanr(a, b)
        return float(rho), float(p)
    ra, rb = rankdata(a), rankdata(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    scale = np.sqrt((ra ** 2).sum() * (rb ** 2).sum())
    rho = float(ra @ rb / scale)
    pairings = np.array(list(permutations(range(a.size))))
    null = np.abs(rb[pairings] @ ra) / scale
    return rho, float(np.mean(null >= abs(rho) - 1e-12))
