"""Claim-to-evidence map (paper Supplementary Note 16.3): the paper's headline claims, each tied to the registry tests
that bear on it, with a verdict for one run under each of the Benjamini-Hochberg families of Supplementary Note 16.1
(``confirmatory``, ``all``, ``primary_per_analysis``) and the paper's own confirmatory family (``paper``:
:mod:`analysis.scoring.paper_registry`), so a reader sees which verdicts depend on the family.

A verdict is ``supported``, ``not supported`` or ``not testable`` (the run lacks the analysis, or its premise fails:
no above-chance signal to residualise, fewer than three layers for a depth trend, one context only), always with the
reason and the test ids it read. The ablation claim judges the top-k sets that both rank heads (not every head) and
move the hidden states (fidelity, max cosine distance >= 1e-3), as the paper's fidelity check requires. A test
counts as significant in a family when its q in that family is below ``alpha``; a test outside the family (no q
there) counts as not significant, and the reason says so. Claims whose evidence is descriptive (residualisation
shares, intervention fidelity) read the run's tables and give the same verdict in every family.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd

from .numbers import effect, share
from .registry import FAMILIES
from .verdicts import MIN_RETAINABLE_MARGIN

SUPPORTED, NOT_SUPPORTED, NOT_TESTABLE = "supported", "not supported", "not testable"
FIDELITY_MIN = 1e-3   # max hidden-state cosine distance below which an intervention counts as a no-op


@dataclass(frozen=True)
class Evidence:
    """One run's registry (schema ``statistics_registry``) and tables by name, read under one family."""

    registry: pd.DataFrame
    tables: dict[str, pd.DataFrame]
    family: str
    alpha: float = 0.05
    n_heads: int | None = None   # heads in the model: top-k at k = every head ranks nothing

    def tests(self, analysis: str, contains: str = "", confirmatory: bool | None = None) -> pd.DataFrame:
        reg = self.registry[self.registry["analysis"] == analysis]
        if contains:
            reg = reg[reg["hypothesis"].str.contains(contains, regex=False)]
        if confirmatory is not None:
            reg = reg[reg["confirmatory"] == confirmatory]
        return reg

    def significant(self, rows: pd.DataFrame) -> pd.Series:
        q = rows[f"q_{self.family}"]
        return q.notna() & (q < self.alpha)


Verdict = tuple[str, str, list[str]]


@dataclass(frozen=True)
class Claim:
    """One of the paper's headline claims; ``paper``: what the paper found (SN16.3-16.4, sections 2.2-2.7);
    ``if_supported`` and ``if_not``: what the run's verdict means for the model, in plain words."""

    key: str
    statement: str
    section: str
    judge: Callable[[Evidence], Verdict]
    paper: str
    if_supported: str
    if_not: str


def _ids(rows: pd.DataFrame) -> list[str]:
    return list(rows["test_id"])


def _q_text(ev: Evidence, rows: pd.DataFrame) -> str:
    return ", ".join(f"{h} (q={q:.3g})" if np.isfinite(q) else f"{h} (not in this family)"
                     for h, q in zip(rows["hypothesis"], rows[f"q_{ev.family}"]))


def gene_level_dominance(ev: Evidence) -> Verdict:
    rows = ev.tests("trivial_baselines")
    rows = rows[~rows["hypothesis"].str.startswith("baseline_tf_degree")]
    if rows.empty:
        return NOT_TESTABLE, "no perturbation-first baselines (the data has no perturbation column)", []
    wins = rows[ev.significant(rows) & (rows["effect"] > 0)]
    beats = {b: {h.split(" vs ")[1].split(" ")[0] for h in grp["hypothesis"]}
             for b, grp in wins.groupby(wins["hypothesis"].str.split(" vs ").str[0])}
    both = sorted(b for b, against in beats.items() if {"attention", "correlation"} <= against)
    if both:
        return SUPPORTED, f"{', '.join(both)} beat both attention and correlation: " + _q_text(
            ev, wins[wins["hypothesis"].str.split(" vs ").str[0].isin(both)]), _ids(rows)
    return NOT_SUPPORTED, "no gene-level baseline beats both edge types significantly: " + _q_text(ev, rows), _ids(rows)


def no_incremental_value(ev: Evidence) -> Verdict:
    rows = ev.tests("incremental_value", "(perturbation split, logistic)", confirmatory=True)
    if rows.empty:
        return NOT_TESTABLE, "no incremental-value test (needs two or more perturbations)", []
    gains = rows[ev.significant(rows) & (rows["effect"] > 0)]
    if gains.empty:
        return SUPPORTED, "neither edge adds significant value over gene-level features: " + _q_text(ev, rows), \
            _ids(rows)
    return NOT_SUPPORTED, "an edge adds significant value: " + _q_text(ev, gains), _ids(rows)


def attention_more_confounded(ev: Evidence) -> Verdict:
    res = ev.tables.get("residualisation")
    if res is None or res.empty:
        return NOT_TESTABLE, "no residualisation table", []
    first = res["reference"].iloc[0]
    res = res[(res["reference"] == first) & (res["model"] == "ols")].set_index("edge")
    if not {"attention", "correlation"} <= set(res.index):
        return NOT_TESTABLE, "residualisation lacks attention or correlation", []
    att, corr = res.loc["attention"], res.loc["correlation"]
    ids = _ids(ev.tests("residualisation", f"vs {first}, ols"))
    if att["auroc"] - 0.5 < MIN_RETAINABLE_MARGIN:
        return NOT_TESTABLE, (f"attention's {first} AUROC is {effect(att['auroc'] - 0.5, signed=True)} from chance, "
                              f"under the {MIN_RETAINABLE_MARGIN:g} a retained share needs to be a stable number"), ids
    if corr["auroc"] - 0.5 < MIN_RETAINABLE_MARGIN:
        return NOT_TESTABLE, (f"correlation's {first} AUROC is {effect(corr['auroc'] - 0.5, signed=True)} from "
                              f"chance: no stable share to compare attention's with"), ids
    verdict = SUPPORTED if att["retained"] < corr["retained"] else NOT_SUPPORTED
    return verdict, (f"OLS residualisation keeps {share(att['retained'])} of attention's above-chance {first} "
                     f"signal and {share(corr['retained'])} of correlation's"), ids


def ablation_null_with_fidelity(ev: Evidence) -> Verdict:
    """Judged on the masked-behaviour loss, and under the ``paper`` family on the paper's read-out, perturbation AUROC
    (Supplementary Note 16.2, analyses 29 and 32)."""
    readout = "perturbation_auroc" if ev.family == "paper" else "mlm_loss"
    rows = ev.tests("ablation", f"changes {readout}", confirmatory=True)
    fidelity = ev.tables.get("ablation_fidelity")
    if rows.empty or fidelity is None:
        return NOT_TESTABLE, f"no top-k head ablation read out on {readout} in this run", []
    k = rows["hypothesis"].str.extract(r"k=(\d+)", expand=False).astype(int)
    every_head = k == ev.n_heads if ev.n_heads else pd.Series(False, index=rows.index)
    moved = fidelity[fidelity["family"] == "top_k"].groupby("k")["hidden_cos_max"].max()
    no_op = k.map(moved).fillna(0) < FIDELITY_MIN
    notes = []
    if every_head.any():
        notes.append(f"k={ev.n_heads} (every head: no ranking left) is not a top-ranked set")
    if (no_op & ~every_head).any():
        notes.append(f"k={sorted(k[no_op & ~every_head].unique())} barely move the hidden states (max cosine "
                     f"distance < {FIDELITY_MIN:g}), so a null there says nothing")
    judged = rows[~every_head & ~no_op]
    note = ("; left out: " + "; ".join(notes)) if notes else ""
    if judged.empty:
        return NOT_TESTABLE, "no top-k ablation both ranks heads and perturbs the model" + note, _ids(rows)
    spread = moved.loc[sorted(k[judged.index].unique())]
    fid = f"; they move hidden states by a max cosine distance of {spread.min():.3g}-{spread.max():.3g}"
    hits = judged[ev.significant(judged)]
    if hits.empty:
        what = "perturbation AUROC" if readout == "perturbation_auroc" else "the masked-behaviour loss"
        return SUPPORTED, (f"no top-k ablation changes {what}: " + _q_text(ev, judged) + fid + note), _ids(rows)
    return NOT_SUPPORTED, "a top-k ablation changes the behaviour: " + _q_text(ev, hits) + fid + note, _ids(rows)


def cssi_gain_without_inflation(ev: Evidence) -> Verdict:
    rows = ev.tests("cssi", confirmatory=True)
    if rows.empty:
        return NOT_TESTABLE, "CSSI did not run", []
    gain = rows[ev.significant(rows) & (rows["effect"] > 0)]
    if len(gain) == len(rows):
        return SUPPORTED, "CSSI-max beats the random-strata null (no-inflation control): " + _q_text(ev, rows), \
            _ids(rows)
    return NOT_SUPPORTED, "CSSI's gain does not exceed random strata of the same sizes: " + _q_text(ev, rows), \
        _ids(rows)


def layer_organisation(ev: Evidence) -> Verdict:
    rows = ev.tests("layer_biology", "trends with depth")
    profiles = ev.tables.get("layer_biology")
    if rows.empty or profiles is None:
        return NOT_TESTABLE, "no depth-trend test (needs three or more layers)", []
    kinds = profiles.drop_duplicates("reference").set_index("reference")["kind"]
    ref = rows["hypothesis"].str.replace(" recovery trends with depth", "", regex=False)
    pair_rows, reg_rows = rows[ref.map(kinds).eq("pairs")], rows[ref.map(kinds).eq("regulatory")]
    if pair_rows.empty or reg_rows.empty:
        return NOT_TESTABLE, "needs a pair reference (STRING) and a regulatory one", _ids(rows)
    falls = pair_rows[ev.significant(pair_rows) & (pair_rows["effect"] < 0)]
    rises = reg_rows[ev.significant(reg_rows) & (reg_rows["effect"] > 0)]
    if len(falls) and len(rises):
        return SUPPORTED, "pair signal falls and regulatory signal rises with depth: " + _q_text(
            ev, pd.concat([falls, rises])), _ids(rows)
    return NOT_SUPPORTED, "no opposite depth trends: " + _q_text(ev, rows), _ids(rows)


def scaling_degradation(ev: Evidence) -> Verdict:
    rows = ev.tests("scaling", confirmatory=True)
    if rows.empty:
        return NOT_TESTABLE, "no scaling analysis (it needs CSSI's random groups)", []
    drops = rows[ev.significant(rows)]
    if len(drops):
        return SUPPORTED, "top-k F1 drops as cells are added: " + _q_text(ev, drops), _ids(rows)
    return NOT_SUPPORTED, "top-k F1 does not drop significantly with more cells: " + _q_text(ev, rows), _ids(rows)


def cross_context_pattern(ev: Evidence) -> Verdict:
    rows = ev.tests("replication", "read-out advantage differs")
    if rows.empty:
        return NOT_TESTABLE, "one context: compare two or more runs (Compare page) to test replication", []
    differ = rows[ev.significant(rows)]
    if len(differ):
        return SUPPORTED, "the attention-correlation relationship differs between contexts: " + _q_text(ev, differ), \
            _ids(rows)
    return NOT_SUPPORTED, "no two contexts differ in attention's advantage: " + _q_text(ev, rows), _ids(rows)


CLAIMS = (
    Claim("gene_level_dominance", "Trivial gene-level baselines outperform attention and correlation edges",
          "2.3", gene_level_dominance,
          "held: gene-level baselines reach AUROC 0.81-0.88 against 0.70 for the edges (paired tests, all significant)",
          "Simple gene statistics predict knock-down targets better than attention: no regulatory knowledge shown.",
          "Attention is not beaten by simple gene statistics."),
    Claim("no_incremental_value", "Edge scores add no incremental value over gene-level features", "2.4",
          no_incremental_value, "held: edge scores add no predictive contribution (bootstrap AUROC, descriptive)",
          "Attention adds nothing beyond what gene-level features already say.",
          "Attention adds predictive value beyond gene-level features."),
    Claim("attention_more_confounded", "Attention is more expression-confounded than correlation", "2.4",
          attention_more_confounded,
          "the edge-expression correlation is significant (residualisation); the paper does not rank the two edges",
          "Attention's signal is more a matter of expression than correlation's.",
          "Attention is no more expression-confounded than correlation."),
    Claim("ablation_null", "Ablating the top-ranked heads leaves behaviour unchanged, though the interventions "
          "perturb representations", "2.5", ablation_null_with_fidelity,
          "held: ablating the regulatory-ranked heads changed nothing, while random ablation caused a drop",
          "The model does not rely on the heads that rank best against the reference.",
          "The model relies on its top-ranked heads."),
    Claim("cssi_gain", "CSSI improves recovery without false-positive inflation", "2.2", cssi_gain_without_inflation,
          "held on brain tissue and synthetic networks, no inflation under random strata; the real PBMC gain was not "
          "significant after BH",
          "Reading attention within cell states recovers more edges than random strata would.",
          "Cell-state stratification recovers no more than random strata."),
    Claim("layer_organisation", "Early layers carry protein-interaction signal, late layers regulatory signal",
          "SN17", layer_organisation,
          "held: STRING falls and TRRUST rises with depth (all six trend tests significant)",
          "Depth organises the biology: protein interactions early, regulation late.",
          "No opposite depth trends of protein-interaction and regulatory signal."),
    Claim("scaling_degradation", "Top-k recovery degrades as cells are added", "2.2 / SN1", scaling_degradation,
          "held: unanimous across runs (sign test)",
          "More cells make top-k recovery worse, as the paper found.", "Recovery does not degrade with more cells."),
    Claim("cross_context", "The attention-correlation relationship depends on the context", "2.6-2.7",
          cross_context_pattern,
          "held: attention equals correlation in K562 CRISPRi, trails it in CRISPRa and beats it in RPE1",
          "What attention adds over correlation depends on the context (cell type, screen).",
          "Attention's advantage over correlation is the same across the contexts compared."),
)


def claim_map(registry: pd.DataFrame, tables: dict[str, pd.DataFrame], *, alpha: float = 0.05,
              n_heads: int | None = None) -> pd.DataFrame:
    """Rows per claim and family: claim, statement, section, family, verdict, reason, tests (``;``-joined test ids);
    plus ``stable`` (the verdict is the same in every family) on every row of the claim. ``n_heads``: the
    model's heads (layers x heads), so the ablation claim leaves out the top-k set that is every head."""
    rows = []
    for claim in CLAIMS:
        for family in FAMILIES:
            verdict, reason, tests = claim.judge(Evidence(registry, tables, family, alpha, n_heads))
            rows.append({"claim": claim.key, "statement": claim.statement, "section": claim.section,
                         "family": family, "verdict": verdict, "reason": reason, "tests": "; ".join(tests)})
    out = pd.DataFrame(rows)
    out["stable"] = out.groupby("claim")["verdict"].transform("nunique") == 1
    return out


def model_readings(claims: pd.DataFrame, family: str = "confirmatory") -> pd.DataFrame:
    """The claim map (:func:`claim_map`) restated for one family as what each verdict says about the model: columns
    claim, statement, section, paper (what the paper found), verdict, reading."""
    by_key = {c.key: c for c in CLAIMS}
    rows = claims[claims["family"] == family]
    reading = [by_key[k].if_supported if v == SUPPORTED else by_key[k].if_not if v == NOT_SUPPORTED
               else f"Not testable here: {r}" for k, v, r in zip(rows["claim"], rows["verdict"], rows["reason"])]
    return pd.DataFrame({"claim": rows["claim"].to_numpy(), "statement": rows["statement"].to_numpy(),
                         "section": rows["section"].to_numpy(),
                         "paper": [by_key[k].paper for k in rows["claim"]],
                         "verdict": rows["verdict"].to_numpy(), "reading": reading})


CLAIM_TABLES = ("residualisation", "ablation_fidelity", "layer_biology")
