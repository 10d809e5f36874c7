"""Per-TF bootstrap (paper Supplementary Note 14, registry section 16 "Per-TF AUROC"; the paper's 7/18 TFs): cell-level
bootstrap CIs of the global AUROC of an edge source and of each TF's own AUROC (its reference targets against its
other candidate genes), and the count of TFs whose 95% CI lies entirely above (or below) 0.5.

Resampling unit (departure, as in :mod:`analysis.scoring.scaling`): the random groups of CSSI's grouped extraction
pass, drawn ``M`` out of ``M`` with replacement, so a draw is a block bootstrap of exchangeable cells (per-cell
attention is never stored). The point estimate is the AUROC over all attention cells (every random group once); the
CI is the percentile interval of the draws, which errs towards chance when averaging more cells still sharpens the
scores (a draw holds fewer distinct cells), so "CI above 0.5" is a conservative count.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from .cssi import CSSIData
from .ranking import auroc_from_ranks
from .registry import StatsRegistry
from .scaling import UnitSampler

GLOBAL = "(all TFs)"


def _aurocs(scores: np.ndarray, labels: np.ndarray, tf: np.ndarray, tfs: np.ndarray) -> np.ndarray:
    """``[S, 1 + n_tf]``: the global AUROC then each TF's (NaN when the TF's pairs are all one class)."""
    flat = np.nan_to_num(scores, nan=0.0)
    out = np.full((flat.shape[0], 1 + tfs.size), np.nan)
    out[:, 0] = auroc_from_ranks(rankdata(flat, axis=1), labels)
    for t, row in enumerate(tfs):
        sel = tf == row
        lab = labels[sel]
        if 0 < lab.sum() < lab.size:
            out[:, 1 + t] = auroc_from_ranks(rankdata(flat[:, sel], axis=1), lab)
    return out


def tf_bootstrap(data: CSSIData, symbols: np.ndarray, *, sites: list[tuple[str, int]], n_boot: int,
                 seed: int = 0) -> pd.DataFrame:
    """Rows per (site, TF, plus the global row ``(all TFs)``): edge_type, layer, label, tf, auroc (all cells),
    ci_low, ci_high (percentile 95%), n_pos, n_neg, ci_side (``above`` / ``below`` 0.5 when the CI excludes it,
    else ``includes``), n_boot. ``sites``: (edge_type, layer) of the sources to bootstrap; ``symbols``: the panel's
    gene symbols (``data.pairs.tf`` indexes them)."""
    sampler = UnitSampler(data)
    keep = [i for i, s in enumerate(sampler.sites.itertuples(index=False)) if (s.edge_type, s.layer) in set(sites)]
    pairs = data.pairs
    tfs = np.unique(pairs.tf)
    everyone = np.arange(sampler.n_units)
    point = _aurocs(sampler.scores(everyone)[keep], pairs.labels, pairs.tf, tfs)               # [S, 1 + T]
    rng = np.random.default_rng([seed, 31])
    draws = np.stack([_aurocs(sampler.scores(rng.integers(0, sampler.n_units, sampler.n_units))[keep],
                              pairs.labels, pairs.tf, tfs) for _ in range(n_boot)])               # [B, S, 1 + T]
    with np.errstate(all="ignore"):
        low, high = np.nanquantile(draws, 0.025, axis=0), np.nanquantile(draws, 0.975, axis=0)
    n_pos = [int(pairs.labels.sum())] + [int(pairs.labels[pairs.tf == t].sum()) for t in tfs]
    n_all = [pairs.labels.size] + [int((pairs.tf == t).sum()) for t in tfs]
    names = [GLOBAL] + list(np.asarray(symbols)[tfs])
    rows = []
    for i, s in enumerate(keep):
        site = sampler.sites.iloc[s]
        for j, name in enumerate(names):
            if not np.isfinite(point[i, j]):
                continue
            side = "above" if low[i, j] > 0.5 else "below" if high[i, j] < 0.5 else "includes"
            rows.append((site.edge_type, int(site.layer), site.label, name, float(point[i, j]), float(low[i, j]),
                         float(high[i, j]), n_pos[j], n_all[j] - n_pos[j], side, n_boot))
    return pd.DataFrame(rows, columns=["edge_type", "layer", "label", "tf", "auroc", "ci_low", "ci_high", "n_pos",
                                       "n_neg", "ci_side", "n_boot"])


def tf_bootstrap_tests(table: pd.DataFrame, *, reference: str) -> StatsRegistry:
    """Descriptive registry entries (the paper lists them without p-values): each site's global AUROC with its CI,
    and the number of TFs whose CI lies above 0.5."""
    reg = StatsRegistry()
    for label, grp in table.groupby("label", sort=False):
        glob = grp[grp["tf"] == GLOBAL]
        per_tf = grp[grp["tf"] != GLOBAL]
        if len(glob):
            g = glob.iloc[0]
            reg.register("tf_bootstrap", f"{label} global AUROC ({reference}), 95% CI [{g.ci_low:.3f}, "
                         f"{g.ci_high:.3f}]", "cell-group bootstrap", np.nan, effect=g.auroc, effect_name="AUROC",
                         n=int(g.n_boot), confirmatory=False)
        reg.register("tf_bootstrap", f"{label}: TFs whose 95% CI is above 0.5 ({reference})", "cell-group bootstrap",
                     np.nan, effect=float((per_tf["ci_side"] == "above").sum()), effect_name="TFs above chance",
                     n=len(per_tf), confirmatory=False)
    return reg
