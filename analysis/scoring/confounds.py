"""Confound decomposition (paper sections 2.4 and 4.4, Supplementary Notes 13.3-13.4, 14.2, 14.8, 15).

- Incremental value: on the perturbation x gene observation table, logistic regression and gradient-boosted
  trees on gene-level features alone, edges alone, and gene-level plus each edge, under GroupKFold by
  perturbation, by target gene, and jointly (test = held-out perturbations x held-out genes); AUROC, AUPRC and
  recall@k of out-of-fold predictions with perturbation-bootstrap CIs on the difference to gene-only.
- Residualisation: cross-fitted (5-fold) OLS and GBDT regression of reference-pair edge scores on expression
  covariates of both genes; AUROC of the residual and the share of above-chance signal retained,
  ``(AUROC_resid - 0.5) / (AUROC - 0.5)``.
- Propensity matching: logistic propensity of being a DE target from gene-level covariates; 1:1 nearest
  neighbour matching of DE-positive to DE-negative genes within perturbation (caliper 0.2 SD of the logit);
  standardised mean differences before and after; edge AUROC on the matched set.
- Degree-preserving null: curveball randomisation of the reference TF x gene matrix (row and column sums
  and the set of allowed pairs preserved) decomposes AUROC into chance + degree + excess.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import rankdata
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GroupKFold, KFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from .ranking import auroc_from_ranks
from .stats import auroc_from_counts

GENE_FEATURES = ("mean", "variance", "detection")
SPLITS = ("perturbation", "gene", "joint")
MODELS = ("logistic", "gbdt")

# scikit-learn's histogram gradient boosting opens an OpenMP parallel region per tree node; on small tables its
# threads spend their time at the barriers, and far longer whenever another runtime (torch's OpenMP, loaded in the
# same process) or another process holds a core. So every fit below runs on one OpenMP thread, whoever calls it.
# Measured on this 2-core machine: the perturbation stage on the 150-cell test screen 15.3 s with two threads, 12.3 s
# with one; 93 s with two and 12.1 s with one after the app's modules were imported; the 400-cell protocol test
# 91 s in the suite after the browser tests with two threads (15.9 s alone).
_one_openmp_thread = threadpool_limits.wrap(limits=1, user_api="openmp")


def observation_table(de_table: pd.DataFrame, features: pd.DataFrame, edge_columns: dict[str, pd.DataFrame]
                      ) -> pd.DataFrame:
    """Rows = (perturbation, target gene) of evaluable perturbations; columns: label, gene-level ``features``
    (indexed by symbol) of the target gene, and one column per edge type (frames with perturbation, symbol,
    score). A score that is NaN (attention of a pair never co-observed in the attention cells: a model whose input
    keeps a cell's top genes only) counts 0, as :func:`analysis.scoring.perturbation.perturbation_auroc` scores it."""
    obs = de_table.loc[~de_table["is_self"], ["perturbation", "symbol", "is_de"]].rename(columns={"is_de": "label"})
    obs = obs.join(features, on="symbol", how="inner")
    for name, frame in edge_columns.items():
        scores = frame.rename(columns={"score": name}).fillna({name: 0.0})
        obs = obs.merge(scores, on=["perturbation", "symbol"], how="inner")
    counts = obs.groupby("perturbation")["label"].agg(["sum", "size"])
    ok = counts.index[(counts["sum"] > 0) & (counts["sum"] < counts["size"])]
    return obs[obs["perturbation"].isin(ok)].reset_index(drop=True)


def _model(kind: str, seed: int):
    if kind == "logistic":
        # effectively unpenalised: L2 shrinkage would reward a duplicated feature (seen with the planted gene-only edge)
        return make_pipeline(StandardScaler(), LogisticRegression(C=1e4, max_iter=2000))
    return HistGradientBoostingClassifier(max_iter=100, max_leaf_nodes=15, random_state=seed)


def _folds(obs: pd.DataFrame, split: str, n_splits: int):
    """Yield (train index, test index) for one split design; nothing when it has fewer than two groups (one
    perturbation, or one gene), where no held-out group exists."""
    if split in ("perturbation", "gene"):
        groups = obs["perturbation" if split == "perturbation" else "symbol"].to_numpy()
        n = min(n_splits, len(np.unique(groups)))
        if n >= 2:
            yield from GroupKFold(n_splits=n).split(obs, groups=groups)
        return
    pert_fold = _group_folds(obs["perturbation"].to_numpy(), n_splits)
    gene_fold = _group_folds(obs["symbol"].to_numpy(), n_splits)
    for k in range(n_splits):
        test = np.nonzero((pert_fold == k) & (gene_fold == k))[0]
        train = np.nonzero((pert_fold != k) & (gene_fold != k))[0]
        if test.size and train.size:
            yield train, test


def _group_folds(groups: np.ndarray, n_splits: int) -> np.ndarray:
    uniq, code = np.unique(groups, return_inverse=True)
    return (np.arange(uniq.size) % n_splits)[code.ravel()]


def recall_at_k(y: np.ndarray, score: np.ndarray, members: list[np.ndarray], k: int = 10) -> np.ndarray:
    """Per group (perturbation; ``members`` = index arrays): share of its DE targets among its top-k scored
    genes (NaN for a group without DE targets). The reported recall@k is the mean over groups."""
    out = np.full(len(members), np.nan)
    for g, m in enumerate(members):
        if y[m].sum():
            top = np.argsort(-score[m], kind="stable")[:k]
            out[g] = y[m][top].sum() / y[m].sum()
    return out


def _metrics(y: np.ndarray, ties: np.ndarray, weight: np.ndarray, recall: np.ndarray) -> dict[str, float]:
    """AUROC (ties count one half), AUPRC (tied scores one threshold, scikit-learn's definition) and mean
    recall@10 of predictions over observations ``[n]`` with labels ``y``, each counted ``weight`` times: ``ties``
    ``[n]`` is each prediction's rank among the distinct predicted values (ascending), ``recall`` the per-group
    recall@10 of the groups drawn (with repeats). Weights make a perturbation bootstrap one weighted pass instead
    of a sort of the resampled set (a group drawn k times = its observations k times); equal to the metrics of the
    concatenated sample."""
    n_ties = int(ties.max()) + 1
    pos = np.bincount(ties, weights=weight * y, minlength=n_ties)
    neg = np.bincount(ties, weights=weight * (1 - y), minlength=n_ties)
    total_pos, total_neg = pos.sum(), neg.sum()
    if total_pos == 0 or total_neg == 0:
        return {"auroc": np.nan, "auprc": np.nan, "recall_at_10": np.nan}
    auroc = auroc_from_counts(pos, neg)
    tp, called = np.cumsum(pos[::-1]), np.cumsum((pos + neg)[::-1])        # descending thresholds
    precision = np.divide(tp, called, out=np.zeros_like(tp), where=called > 0)
    auprc = float(np.sum(np.diff(np.r_[0.0, tp / total_pos]) * precision))
    return {"auroc": auroc, "auprc": auprc,
            "recall_at_10": float(np.nanmean(recall)) if np.isfinite(recall).any() else np.nan}


POWER_Z = 1.6448536 + 0.8416212     # one-sided alpha 0.05 plus 80% power, normal approximation


@_one_openmp_thread
def incremental_value(obs: pd.DataFrame, edge_names: list[str], *, models=MODELS, splits=SPLITS,
                      n_splits: int = 5, n_boot: int = 200, seed: int = 0,
                      tf_perturbations: frozenset[str] = frozenset()) -> pd.DataFrame:
    """Out-of-fold performance of every (split, model, feature set) and bootstrap CIs of gene+edge - gene-only.

    Feature sets: ``gene`` (mean, variance, detection of the target), ``<edge>`` alone, ``gene+<edge>``.
    The bootstrap resamples perturbations (paper section 4.6: 200 iterations, perturbation-level resampling).
    Returns tidy rows: split, model, feature_set, metric, value, delta, delta_ci_low, delta_ci_high, p_delta
    (one-sided bootstrap share of differences <= 0; NaN for non-combined rows), delta_se (the bootstrap standard
    error of delta) and min_detectable_delta (the smallest gain the test detects with 80% power at one-sided alpha
    0.05, POWER_Z x delta_se: the power analysis of registry 26), n_obs. With ``tf_perturbations`` the same
    out-of-fold predictions are also scored within TF and within non-TF perturbations (metrics ``auroc_tf``,
    ``auroc_non_tf``: registry 26's TF-stratified rows), each with its own bootstrap.
    """
    sets = {"gene": list(GENE_FEATURES)}
    for e in edge_names:
        sets[e] = [e]
        sets[f"gene+{e}"] = list(GENE_FEATURES) + [e]
    y_all = obs["label"].to_numpy().astype(int)
    pert_all = obs["perturbation"].to_numpy()
    rng = np.random.default_rng(seed)
    rows = []
    for split in splits:
        folds = list(_folds(obs, split, n_splits))
        if not folds:
            continue
        test_idx = np.concatenate([t for _, t in folds])
        if len(np.unique(y_all[test_idx])) < 2:
            continue
        y, groups = y_all[test_idx], pert_all[test_idx]
        uniq, code = np.unique(groups, return_inverse=True)      # code: observation -> its group
        members = np.split(np.argsort(code, kind="stable"), np.cumsum(np.bincount(code))[:-1])   # one sort
        picks = [rng.integers(0, uniq.size, uniq.size) for _ in range(n_boot)]
        draw_counts = [np.bincount(b, minlength=uniq.size).astype(float) for b in picks]
        ones = np.ones(y.size)
        is_tf = np.isin(groups, list(tf_perturbations))
        subgroups = {"auroc_tf": is_tf, "auroc_non_tf": ~is_tf} if is_tf.any() and (~is_tf).any() else {}
        for model in models:
            preds = {}
            for name, cols in sets.items():
                p = np.full(len(obs), np.nan)
                x = obs[cols].to_numpy(dtype=float)
                for train, test in folds:
                    if len(np.unique(y_all[train])) < 2:
                        continue
                    p[test] = _model(model, seed).fit(x[train], y_all[train]).predict_proba(x[test])[:, 1]
                preds[name] = np.nan_to_num(p[test_idx], nan=0.5)
            recall = {name: recall_at_k(y, p, members) for name, p in preds.items()}
            ties = {name: np.unique(p, return_inverse=True)[1].ravel() for name, p in preds.items()}

            def scored(name, draw=None):
                weight = ones if draw is None else draw_counts[draw][code]
                rec = recall[name] if draw is None else recall[name][picks[draw]]
                out = _metrics(y, ties[name], weight, rec)
                for metric, mask in subgroups.items():
                    out[metric] = _metrics(y, ties[name], weight * mask, rec)["auroc"]
                return out
            base = scored("gene")
            base_boot = [scored("gene", b) for b in range(n_boot)]
            for name in preds:
                values = scored(name)
                boot = [scored(name, b) for b in range(n_boot)] if name.startswith("gene+") else None
                for metric, value in values.items():
                    row = {"split": split, "model": model, "feature_set": name, "metric": metric, "value": value,
                           "delta": np.nan, "delta_ci_low": np.nan, "delta_ci_high": np.nan, "p_delta": np.nan,
                           "delta_se": np.nan, "min_detectable_delta": np.nan,
                           "n_obs": int(y.size if metric not in subgroups else subgroups[metric].sum())}
                    if boot is not None:
                        diffs = np.array([b[metric] - bb[metric] for b, bb in zip(boot, base_boot)])
                        diffs = diffs[np.isfinite(diffs)]
                        if diffs.size > 1:
                            se = float(diffs.std(ddof=1))
                            row.update(delta=value - base[metric], delta_ci_low=np.percentile(diffs, 2.5),
                                       delta_ci_high=np.percentile(diffs, 97.5),
                                       p_delta=(1 + np.sum(diffs <= 0)) / (1 + diffs.size), delta_se=se,
                                       min_detectable_delta=POWER_Z * se)
                    rows.append(row)
    return pd.DataFrame(rows)


@_one_openmp_thread
def residualise(scores: np.ndarray, covariates: np.ndarray, labels: np.ndarray, *, model: str = "ols",
                n_splits: int = 5, seed: int = 0) -> dict[str, float]:
    """Cross-fitted residual AUROC of pair ``scores`` ``[N]`` on ``covariates`` ``[N, C]`` against ``labels``."""
    resid = np.empty_like(scores, dtype=float)
    fitted = np.empty_like(scores, dtype=float)
    for train, test in KFold(n_splits=n_splits, shuffle=True, random_state=seed).split(scores):
        reg = LinearRegression() if model == "ols" else HistGradientBoostingRegressor(max_iter=150, random_state=seed)
        reg.fit(covariates[train], scores[train])
        fitted[test] = reg.predict(covariates[test])
        resid[test] = scores[test] - fitted[test]
    before, after = roc_auc_score(labels, scores), roc_auc_score(labels, resid)
    ss_tot = np.sum((scores - scores.mean()) ** 2)
    r2 = 1 - np.sum(resid ** 2) / ss_tot if ss_tot > 0 else 0.0
    retained = (after - 0.5) / (before - 0.5) if abs(before - 0.5) > 1e-9 else np.nan
    return {"auroc": before, "auroc_residual": after, "retained": retained, "r2_covariates": r2}


def residual_stability(scores: np.ndarray, covariates: np.ndarray, labels: np.ndarray, *, model: str,
                       seeds: list[int], known: dict[int, dict] | None = None) -> dict[str, float]:
    """The spread of :func:`residualise` over cross-fitting fold draws ``seeds`` (SN16.2 registry 15's 10-seed
    stability): ``n_seeds`` and the standard deviations (ddof 1) of the residual AUROC and of the retained share.
    ``known``: results already computed, by seed (the run's own fit is not fitted again)."""
    known = known or {}
    runs = [known[s] if s in known else residualise(scores, covariates, labels, model=model, seed=s) for s in seeds]
    return {"n_seeds": len(seeds), "auroc_residual_sd": float(np.std([r["auroc_residual"] for r in runs], ddof=1)),
            "retained_sd": float(np.nanstd([r["retained"] for r in runs], ddof=1))}


@dataclass(frozen=True)
class MatchResult:
    matched: pd.DataFrame
    balance: pd.DataFrame
    params: dict


def standardised_mean_difference(x_pos: np.ndarray, x_neg: np.ndarray) -> np.ndarray:
    pooled = np.sqrt((x_pos.var(0, ddof=1) + x_neg.var(0, ddof=1)) / 2)
    return (x_pos.mean(0) - x_neg.mean(0)) / np.where(pooled > 0, pooled, 1.0)


def propensity_match(obs: pd.DataFrame, *, covariates=GENE_FEATURES, caliper_sd: float = 0.2, seed: int = 0
                     ) -> MatchResult:
    """1:1 nearest-neighbour propensity matching of DE-positive to DE-negative targets within perturbation,
    without replacement, within ``caliper_sd`` SD of the propensity logit."""
    x = obs[list(covariates)].to_numpy(dtype=float)
    y = obs["label"].to_numpy().astype(int)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(x, y)
    logit = model.decision_function(x)
    caliper = caliper_sd * logit.std()
    rng = np.random.default_rng(seed)
    keep = []
    for _, idx in obs.groupby("perturbation").indices.items():
        pos = rng.permutation(idx[y[idx] == 1])
        neg = list(idx[y[idx] == 0])
        for i in pos:
            if not neg:
                break
            d = np.abs(logit[neg] - logit[i])
            j = int(np.argmin(d))
            if d[j] <= caliper:
                keep += [i, neg.pop(j)]
    matched = obs.iloc[np.sort(keep)].reset_index(drop=True)
    xm, ym = matched[list(covariates)].to_numpy(dtype=float), matched["label"].to_numpy().astype(int)
    balance = pd.DataFrame({
        "covariate": list(covariates),
        "smd_before": standardised_mean_difference(x[y == 1], x[y == 0]),
        "smd_after": standardised_mean_difference(xm[ym == 1], xm[ym == 0]) if ym.sum() > 1 else np.nan,
    })
    params = {"n_pairs": int(ym.sum()), "n_positive_before": int(y.sum()), "caliper_sd": caliper_sd,
              "positive_rate_before": float(y.mean()), "positive_rate_after": float(ym.mean()) if ym.size else np.nan}
    return MatchResult(matched, balance, params)


def curveball(matrix: np.ndarray, allowed: np.ndarray, *, n_trades: int, rng: np.random.Generator) -> np.ndarray:
    """Curveball randomisation (Strona et al. 2014) of a binary ``[rows, cols]`` matrix that preserves every row
    and column sum and never places a 1 where ``allowed`` is False. A matrix of one row has no other arrangement
    with its sums: it is its own null."""
    rows = [set(np.nonzero(r)[0]) for r in matrix]
    n = len(rows)
    for _ in range(n_trades if n >= 2 else 0):
        a, b = rng.choice(n, 2, replace=False)
        only_a = [c for c in rows[a] - rows[b] if allowed[b, c]]
        only_b = [c for c in rows[b] - rows[a] if allowed[a, c]]
        pool = only_a + only_b
        if not only_a or not only_b:
            continue
        rng.shuffle(pool)
        new_a = set(pool[: len(only_a)])
        new_b = set(pool[len(only_a):])
        rows[a] = (rows[a] - set(only_a)) | new_a
        rows[b] = (rows[b] - set(only_b)) | new_b
    out = np.zeros_like(matrix, dtype=bool)
    for i, r in enumerate(rows):
        out[i, list(r)] = True
    return out


def degree_null(scores: np.ndarray, labels: np.ndarray, allowed: np.ndarray, *, n_null: int = 100,
                seed: int = 0, per_tf: bool = False) -> list[dict]:
    """AUROC of each score matrix in ``scores`` ``[E, n_tf, G]`` over ``allowed`` pairs vs the curveball
    degree-preserving null and the label-shuffle null: chance (0.5) + degree (null mean - 0.5) + excess (observed -
    null mean). The ``n_null`` randomised label sets are drawn once and shared by every matrix, so their nulls are
    paired. One dict per matrix; ``per_tf`` adds its :func:`per_tf_degree_excess` table under ``"per_tf"``."""
    rng = np.random.default_rng(seed)
    ranks = [rankdata(np.nan_to_num(s[allowed])) for s in scores]
    trades = 5 * labels.shape[0] * max(1, int(labels.sum(1).mean()))
    draws = [curveball(labels, allowed, n_trades=trades, rng=rng) for _ in range(n_null)]
    curveballs = [d[allowed] for d in draws]
    shuffles = [rng.permutation(labels[allowed]) for _ in range(n_null)]
    out = []
    for s, r in zip(scores, ranks):
        observed = auroc_from_ranks(r, labels[allowed])
        null = np.array([auroc_from_ranks(r, c) for c in curveballs])
        shuffle = np.array([auroc_from_ranks(r, c) for c in shuffles])
        out.append({"auroc": observed, "degree_null_mean": null.mean(), "shuffle_null_mean": shuffle.mean(),
                    "chance": 0.5, "degree": null.mean() - 0.5, "excess": observed - null.mean(),
                    "p_excess": (1 + np.sum(null >= observed)) / (1 + n_null), "n_null": n_null})
        if per_tf:
            out[-1]["per_tf"] = per_tf_degree_excess(s, labels, allowed, draws)
    return out


def per_tf_degree_excess(scores: np.ndarray, labels: np.ndarray, allowed: np.ndarray,
                         draws: list[np.ndarray]) -> pd.DataFrame:
    """Per TF (a row of ``scores``/``labels``/``allowed`` ``[n_tf, G]``; registry 16 of SN16.2): the AUROC of its
    allowed genes against its targets, that AUROC's mean under the degree-preserving ``draws`` (curveball label
    matrices: each TF keeps its out-degree, so the null moves which genes are its targets toward the well-connected
    ones), the excess over it, and within-TF precision@k: the share of its ``k`` = out-degree top-scored genes that
    are targets, beside the chance share. Rows: tf_row, auroc, degree_null_mean, excess, precision_at_k,
    chance_precision, k; a TF whose allowed genes are all or none of its targets is left out."""
    rows = []
    for t in range(labels.shape[0]):
        cols = allowed[t]
        y, s = labels[t, cols], np.nan_to_num(scores[t, cols])
        k = int(y.sum())
        if k == 0 or k == y.size:
            continue
        r = rankdata(s)
        observed = float(auroc_from_ranks(r, y))
        null = float(np.mean([auroc_from_ranks(r, d[t, cols]) for d in draws])) if draws else np.nan
        top = np.argsort(-s, kind="stable")[:k]
        rows.append({"tf_row": t, "auroc": observed, "degree_null_mean": null, "excess": observed - null,
                     "precision_at_k": float(y[top].mean()), "chance_precision": k / y.size, "k": k})
    return pd.DataFrame(rows, columns=["tf_row", "auroc", "degree_null_mean", "excess", "precision_at_k",
                                       "chance_precision", "k"])
