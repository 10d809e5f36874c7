"""Statistics registry (paper section 4.6, Supplementary Note 16): every test of every stage is registered
once (analysis, hypothesis, test, raw p, effect size, N, confirmatory or descriptive) and corrected with one
framework-wide Benjamini-Hochberg at the end.

Families (Supplementary Note 16.1): ``confirmatory`` (primary: all confirmatory p-values), ``all`` (every
registered p-value, confirmatory and descriptive), ``primary_per_analysis`` (one primary test per analysis:
the first confirmatory test registered for it), and ``paper`` (the tests the paper's own registry, Supplementary Note
16.2, counts as confirmatory: :mod:`analysis.scoring.paper_registry`). ``q`` is the primary family's q-value; the
alternatives are reported alongside so a reader can see which conclusions depend on the family definition.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .ablation import RANKING_READOUTS, ranking_comparison
from .paper_registry import CONFIRMATORY as PAPER_CONFIRMATORY
from .paper_registry import paper_mapping
from .stats import benjamini_hochberg

COLUMNS = ("test_id", "analysis", "hypothesis", "test", "p", "effect", "effect_name", "n", "confirmatory",
           "exploratory")
FAMILIES = ("confirmatory", "all", "primary_per_analysis", "paper")


@dataclass
class StatsRegistry:
    rows: list[dict] = field(default_factory=list)

    def register(self, analysis: str, hypothesis: str, test: str, p: float, *, effect: float, effect_name: str,
                 n: int, confirmatory: bool = True, exploratory: bool = False) -> None:
        """Add one test; ``p`` may be NaN for descriptive entries (bootstrap CIs, point estimates)."""
        test_id = f"{analysis}::{hypothesis}"
        if any(r["test_id"] == test_id for r in self.rows):
            raise ValueError(f"test {test_id!r} registered twice")
        self.rows.append({"test_id": test_id, "analysis": analysis, "hypothesis": hypothesis, "test": test,
                          "p": float(p), "effect": float(effect), "effect_name": effect_name, "n": int(n),
                          "confirmatory": bool(confirmatory), "exploratory": bool(exploratory)})

    def extend(self, other: "StatsRegistry") -> None:
        for r in other.rows:
            self.register(**{k: r[k] for k in ("analysis", "hypothesis", "test", "p", "effect", "effect_name",
                                               "n", "confirmatory", "exploratory")})

    def table(self, alpha: float = 0.05) -> pd.DataFrame:
        """Tidy registry with q-values under each family and ``significant`` at ``alpha`` (primary family)."""
        frame = pd.DataFrame(self.rows, columns=list(COLUMNS))
        return correct(frame, alpha)


def correct(frame: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """Add ``paper_entry`` and ``paper_tier`` (:func:`analysis.scoring.paper_registry.paper_mapping`), a q column
    per family (``q_confirmatory`` = ``q``, ``q_all``, ``q_primary_per_analysis``, ``q_paper``) and ``significant``
    (primary family)."""
    out = frame.copy()
    out[["paper_entry", "paper_tier"]] = paper_mapping(out)
    has_p = out["p"].notna()
    for family in FAMILIES:
        if family == "confirmatory":
            member = has_p & out["confirmatory"]
        elif family == "all":
            member = has_p
        elif family == "paper":
            member = has_p & (out["paper_tier"] == PAPER_CONFIRMATORY)
        else:
            first = out[has_p & out["confirmatory"]].groupby("analysis").head(1).index
            member = pd.Series(out.index.isin(first), index=out.index)
        q = np.full(len(out), np.nan)
        q[member.to_numpy()] = benjamini_hochberg(out.loc[member, "p"].to_numpy())
        out[f"q_{family}"] = q
    out["q"] = out["q_confirmatory"]
    out["significant"] = out["q"] < alpha
    return out


def ablation_tests(results: pd.DataFrame, exploratory: bool = False) -> StatsRegistry:
    """Ablation tests (schema ``ablation_results``): masked-gene loss, target recall and perturbation AUROC, paired vs the
    unablated run; confirmatory for the top-k head family, descriptive for controls, exploratory for live
    requests from the app. Structural nulls (``structural``: an attention read-out that the intervention cannot
    change) are not tests and are not registered."""
    reg = StatsRegistry()
    structural = results["structural"].astype(bool) if "structural" in results else False
    rows = results[results["readout"].isin(["mlm_loss", "target_recall_loss", "perturbation_auroc"])
                   & results["p"].notna() & ~structural]
    for r in rows.itertuples():
        draw = f" #{r.draw}" if r.draw >= 0 else ""
        reg.register("live_ablation" if exploratory else "ablation",
                     f"{r.family} k={r.k}{draw} ({r.intervention}, {r.n} obs) changes {r.readout}",
                     "Wilcoxon signed-rank (paired)", r.p, effect=r.delta, effect_name=f"delta {r.readout}", n=r.n,
                     confirmatory=(r.family == "top_k") and not exploratory, exploratory=exploratory)
    if not exploratory:
        for readout in RANKING_READOUTS:
            for r in ranking_comparison(results, readout).itertuples():
                reg.register("ablation", f"top_k k={r.k} moves {readout} more than {r.n_random} random_k draws",
                             f"empirical rank among random draws (one-sided; smallest possible p {r.smallest_p:.3g})",
                             r.rank_p, effect=abs(r.top) - r.random_abs_mean,
                             effect_name=f"|delta {readout}| top-k minus mean random-k", n=r.n_random + 1,
                             confirmatory=False)
    return reg
