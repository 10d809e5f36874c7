"""Layer-wise biological organisation (paper Supplementary Note 17) and attention-expression agreement (registry
section 17, "Attention-correlation mapping").

Every layer's head-mean attention is scored over *all* unordered pairs of universe genes that were co-observed
(``(A[i, j] + A[j, i]) / 2``; a pair reference has no direction) against each reference read as undirected pairs:
protein-protein interactions (STRING) and the regulatory references (TRRUST, DoRothEA, ...), next to Spearman
correlation (signed, the paper's baseline, and |rho|). Then, as SN17 does:

- trend with depth: Spearman between layer index and AUROC, per reference;
- organisation: Spearman between two references' layer profiles (the paper's STRING-vs-TRRUST anti-correlation);
- expression control: the partial Spearman correlation between a layer's attention and reference membership,
  controlling for expression similarity (Spearman rho of the pair), on matched positive and negative pairs (all
  positives and ``n_negatives`` random negatives per positive); ``retained`` = partial / raw;
- attention-expression agreement (registry 17): Spearman between each layer's attention and expression correlation
  over the same pairs.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np
import pandas as pd
from scipy.stats import rankdata, spearmanr, t as t_dist

from ..io.references import ReferenceNetwork
from .edges import EdgeScores
from .ranking import auroc_from_ranks
from .registry import StatsRegistry
from .stats import spearman


@dataclass(frozen=True)
class PairUniverse:
    """Unordered gene pairs ``i < j`` (panel indices ``[P]`` each) of universe genes co-observed in some cell."""

    i: np.ndarray
    j: np.ndarray

    @classmethod
    def of(cls, panel: pd.DataFrame, observed: np.ndarray) -> "PairUniverse":
        genes = np.nonzero(panel["in_universe"].to_numpy())[0]
        a, b = np.triu_indices(genes.size, k=1)
        i, j = genes[a], genes[b]
        seen = np.asarray(observed)[i, j]
        return cls(i[seen].astype(np.int32), j[seen].astype(np.int32))

    def labels(self, panel: pd.DataFrame, reference: ReferenceNetwork) -> np.ndarray:
        """``[P]`` bool: the pair is in ``reference`` in either orientation."""
        index = {s: k for k, s in enumerate(panel["symbol"])}
        member = np.zeros((len(index), len(index)), dtype=bool)
        for a, b in reference.pairs():
            if a in index and b in index:
                member[index[a], index[b]] = member[index[b], index[a]] = True
        return member[self.i, self.j]

    def symmetric(self, matrix: np.ndarray) -> np.ndarray:
        """``[P]`` scores ``(M[i, j] + M[j, i]) / 2`` of a ``[G, G]`` matrix."""
        return (matrix[self.i, self.j] + matrix[self.j, self.i]) / 2


def _ranked_sources(layer_means: EdgeScores, corr: EdgeScores, pairs: PairUniverse
                    ) -> tuple[pd.DataFrame, np.ndarray]:
    """(sources: edge_type, layer; ``[S, P]`` float64 average ranks of their pair scores, NaN scored 0): each layer's
    head mean, then signed and |rho|. Ranked one source at a time into the result, so the temporaries are a few
    ``[P]`` vectors, not copies of ``[S, P]``."""
    rho = np.nan_to_num(pairs.symmetric(corr.scores[0]), nan=0.0)
    n_layers = len(layer_means.scores)
    ranks = np.empty((n_layers + 2, rho.size))
    for k, matrix in enumerate(layer_means.scores):
        ranks[k] = rankdata(np.nan_to_num(pairs.symmetric(matrix), nan=0.0))
    ranks[n_layers], ranks[n_layers + 1] = rankdata(rho), rankdata(np.abs(rho))
    src = pd.DataFrame({"edge_type": ["attention_layer_mean"] * n_layers + ["spearman", "spearman_absolute"],
                        "layer": list(layer_means.sources["layer"]) + [-1, -1]})
    return src, ranks


def layer_profiles(layer_means: EdgeScores, corr: EdgeScores, references: list[ReferenceNetwork]) -> pd.DataFrame:
    """AUROC of every source against every reference over the pair universe. Rows: reference, kind (``pairs`` for
    an undirected reference, ``regulatory`` read as pairs), edge_type, layer, auroc, n_pos, n_neg. References with
    no positive pair among the universe's pairs are left out."""
    pairs = PairUniverse.of(layer_means.panel, layer_means.observed)
    src, ranks = _ranked_sources(layer_means, corr, pairs)
    rows = []
    for ref in references:
        y = pairs.labels(layer_means.panel, ref)
        if not 0 < y.sum() < y.size:
            continue
        auroc = auroc_from_ranks(ranks, y)
        kind = "pairs" if ref.params.get("undirected") else "regulatory"
        rows += [(ref.name, kind, s.edge_type, int(s.layer), float(a), int(y.sum()), int(y.size - y.sum()))
                 for s, a in zip(src.itertuples(index=False), auroc)]
    return pd.DataFrame(rows, columns=["reference", "kind", "edge_type", "layer", "auroc", "n_pos", "n_neg"])


def partial_spearman(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> tuple[float, float, float]:
    """(raw Spearman r(x, y), partial Spearman r(x, y | z), two-sided p of the partial r with n - 3 degrees of
    freedom): the first-order partial correlation of the ranks."""
    rx, ry, rz = (rankdata(v) for v in (x, y, z))
    r = np.corrcoef(np.stack([rx, ry, rz]))
    r_xy, r_xz, r_yz = r[0, 1], r[0, 2], r[1, 2]
    partial = (r_xy - r_xz * r_yz) / np.sqrt((1 - r_xz ** 2) * (1 - r_yz ** 2))
    dof = x.size - 3
    stat = partial * np.sqrt(dof / max(1 - partial ** 2, 1e-300))
    return float(r_xy), float(partial), float(2 * t_dist.sf(abs(stat), dof))


def expression_control(layer_means: EdgeScores, corr: EdgeScores, references: list[ReferenceNetwork], *,
                       n_negatives: int, seed: int = 0) -> pd.DataFrame:
    """Per reference and layer: raw and partial Spearman (controlling for expression rho) between attention and
    membership on matched pairs (module doc). Rows: reference, layer, r_raw, r_partial, p_partial, retained, n."""
    pairs = PairUniverse.of(layer_means.panel, layer_means.observed)
    rho = pairs.symmetric(corr.scores[0])
    rows = []
    for ref in references:
        y = pairs.labels(layer_means.panel, ref)
        pos, neg = np.nonzero(y)[0], np.nonzero(~y)[0]
        if pos.size < 3 or neg.size == 0:
            continue
        rng = np.random.default_rng([seed, len(ref.name)])
        keep = np.concatenate([pos, rng.choice(neg, size=min(neg.size, n_negatives * pos.size), replace=False)])
        for layer, matrix in zip(layer_means.sources["layer"], layer_means.scores):
            att = np.nan_to_num(pairs.symmetric(matrix)[keep])
            raw, partial, p = partial_spearman(att, y[keep].astype(float), rho[keep])
            rows.append((ref.name, int(layer), raw, partial, p, partial / raw if raw != 0 else np.nan, keep.size))
    return pd.DataFrame(rows, columns=["reference", "layer", "r_raw", "r_partial", "p_partial", "retained", "n"])


def attention_expression_agreement(layer_means: EdgeScores, corr: EdgeScores) -> pd.DataFrame:
    """Registry 17: per layer, Spearman between the layer's attention and expression correlation (signed and |rho|)
    over the pair universe. Rows: layer, correlation (``signed`` / ``absolute``), rho, p, n."""
    pairs = PairUniverse.of(layer_means.panel, layer_means.observed)
    rho = pairs.symmetric(corr.scores[0])
    rows = []
    for layer, matrix in zip(layer_means.sources["layer"], layer_means.scores):
        att = np.nan_to_num(pairs.symmetric(matrix))
        for name, c in (("signed", rho), ("absolute", np.abs(rho))):
            r, p = spearmanr(att, c)
            rows.append((int(layer), name, float(r), float(p), int(att.size)))
    return pd.DataFrame(rows, columns=["layer", "correlation", "rho", "p", "n"])


def biology_tests(profiles: pd.DataFrame, control: pd.DataFrame, agreement: pd.DataFrame) -> StatsRegistry:
    """Trend-with-depth tests per reference (confirmatory: the paper's six trend tests all entered BH), profile
    correlations between references, expression-controlled partial correlations and attention-expression agreement
    (descriptive). A statistic undefined on constant input (a random model's flat profile) is no test and is left
    out."""
    reg = StatsRegistry()
    att = profiles[profiles["edge_type"] == "attention_layer_mean"]
    wide = att.pivot_table(index="layer", columns="reference", values="auroc")
    if len(wide) >= 3:
        for ref in wide.columns:
            rho, p = spearman(wide.index, wide[ref])
            if not np.isfinite(rho):
                continue
            reg.register("layer_biology", f"{ref} recovery trends with depth", "Spearman", p, effect=rho,
                         effect_name="Spearman rho (layer, AUROC)", n=len(wide))
        for a, b in combinations(wide.columns, 2):
            rho, p = spearman(wide[a], wide[b])
            if not np.isfinite(rho):
                continue
            reg.register("layer_biology", f"{a} and {b} layer profiles correlate", "Spearman", p, effect=rho,
                         effect_name="Spearman rho of profiles", n=len(wide), confirmatory=False)
    for r in control.dropna(subset=["r_partial"]).itertuples():
        reg.register("layer_biology", f"L{r.layer} attention tracks {r.reference} beyond expression similarity",
                     "partial Spearman", r.p_partial, effect=r.r_partial, effect_name="partial rho", n=r.n,
                     confirmatory=False)
    for r in agreement.dropna(subset=["rho"]).itertuples():
        reg.register("attention_expression", f"L{r.layer} attention follows {r.correlation} expression correlation",
                     "Spearman", r.p, effect=r.rho, effect_name="Spearman rho", n=r.n, confirmatory=False)
    return reg
