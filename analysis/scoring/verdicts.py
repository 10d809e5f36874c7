"""The run's answer in plain words: does attention carry regulatory signal here? A handful of verdicts, each one
sentence computed from the statistics registry and the run's tables (never written for a particular run), with the
test behind it, its q, the registry test ids, the analysis that shows it, what the paper found on the same question,
and its stance on the question:

- ``for``: evidence that attention carries regulatory signal beyond gene-level structure;
- ``against``: evidence that it does not (or that what it carries is explained by gene-level structure);
- ``open``: the run cannot decide (underpowered, no significant difference either way);
- ``untestable``: the run lacks the analysis.

The questions, in the paper's order of argument (sections 2.3-2.5): recovery of the reference beyond gene degree
(degree-preserving null, SN6), prediction of knock-down targets (perturbation-first, section 2.3), gene-level baselines
that need no model (2.3), incremental value over gene-level features (2.4), expression confounding (residualisation,
2.4), and whether the head ranking picks heads the model relies on (top-k against random-k and bottom-k ablation,
2.5). Significance is read in one BH family (``confirmatory`` by default) at ``alpha``."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .numbers import effect, probability, share
from .ablation import RANKING_READOUTS, ranking_comparison

FOR, AGAINST, OPEN, UNTESTABLE = "for", "against", "open", "untestable"
READOUT_WORDS = {"mlm_loss": "the masked-gene loss", "perturbation_auroc": "perturbation AUROC"}
# an above-chance AUROC margin under this is too small to split into retained and removed shares (residualisation's
# share is a ratio over the margin: on the embedded default an AUROC of 0.5000 gave "40124% retained", seed spread
# 3300%)
MIN_RETAINABLE_MARGIN = 0.02


@dataclass(frozen=True)
class Verdict:
    """One plain-language answer. ``analysis``: the registry analysis (the app links it to its page and figure)."""

    key: str
    question: str
    stance: str
    sentence: str
    test: str
    test_ids: tuple[str, ...]
    analysis: str
    paper: str


class RegistryReader:
    """The registry read under one BH family (``q_<family>``) and ``alpha``."""

    def __init__(self, registry: pd.DataFrame, family: str, alpha: float):
        self.registry, self.family, self.alpha = registry, family, alpha

    def row(self, analysis: str, hypothesis: str) -> pd.Series | None:
        """The registry row of one test, or None."""
        rows = self.registry[(self.registry["analysis"] == analysis) & (self.registry["hypothesis"] == hypothesis)]
        return rows.iloc[0] if len(rows) else None

    def q(self, row: pd.Series) -> float:
        """The row's q in this family; NaN when the test is outside it."""
        q = row.get(f"q_{self.family}", np.nan)
        return float(q) if q is not None and np.isfinite(q) else np.nan

    def significant(self, row: pd.Series | None) -> bool:
        return row is not None and self.q(row) < self.alpha            # NaN (outside the family) is never < alpha

    def line(self, row: pd.Series) -> str:
        """The test behind a verdict: its name and its q in this family (or its p, outside it)."""
        q = self.q(row)
        where = (f"q = {probability(q)} ({self.family} family)" if np.isfinite(q)
                 else f"p = {probability(row['p'])} (not in the {self.family} family)")
        return f"{row['test']}; {where}"


def degree(r: RegistryReader, reference: str) -> Verdict:
    question = f"Does attention recover {reference} edges beyond what gene degree explains?"
    paper = "The paper tests recovery against a degree-preserving null too (SN6); recovery that degree explains is " \
            "not regulatory knowledge."
    att = r.row("degree_null", f"attention vs {reference}: excess over degree null")
    if att is None:
        return Verdict("degree", question, UNTESTABLE, f"No degree-null test against {reference} in this run.", "",
                       (), "degree_null", paper)
    corr = r.row("degree_null", f"correlation vs {reference}: excess over degree null")
    beyond = r.significant(att) and att["effect"] > 0
    tail = (f"; the Spearman correlation of the same genes: {effect(corr['effect'], signed=True)}" if corr is not None
            else "")
    sentence = (f"Attention {'ranks' if beyond else 'does not rank'} known {reference} edges above what gene degree "
                f"alone explains: its AUROC exceeds a degree-preserving null by {effect(att['effect'], signed=True)}"
                + tail + ".")
    ids = tuple(x["test_id"] for x in (att, corr) if x is not None)
    return Verdict("degree", question, FOR if beyond else AGAINST, sentence, r.line(att), ids, "degree_null", paper)


def perturbation(r: RegistryReader) -> Verdict:
    question = "Does attention predict which genes respond when a regulator is knocked down?"
    paper = "The paper (K562 CRISPRi): perturbation-first AUROC near 0.5 in all 27 sensitivity conditions, and " \
            "attention no better than correlation (null)."
    rows = r.registry[(r.registry["analysis"] == "perturbation_first") & r.registry["confirmatory"]
                      & r.registry["hypothesis"].str.match(r"attention L-?\d+ AUROC > 0\.5")]
    if rows.empty:
        return Verdict("perturbation", question, UNTESTABLE, "The data has no perturbations, so this run cannot ask "
                       "it (give a perturbation column).", "", (), "perturbation_first", paper)
    att = rows.iloc[0]
    layer = att["hypothesis"].split(" ")[1]
    corr = r.row("perturbation_first", "correlation AUROC > 0.5")
    versus = r.row("perturbation_first", f"attention {layer} vs correlation")
    above = r.significant(att) and att["effect"] > 0.5
    sentence = (f"Over {int(att['n'])} knock-downs, the {layer} attention scores the responding genes at mean AUROC "
                f"{effect(att['effect'])} (chance 0.5), {'significantly above' if above else 'not significantly above'}"
                f" chance" + (f"; correlation reaches {effect(corr['effect'])}" if corr is not None else "")
                + (f", and attention is {'significantly ' if r.significant(versus) else 'not significantly '}"
                   f"{'better' if versus['effect'] > 0 else 'worse'} than correlation" if versus is not None else "")
                + ".")
    ids = tuple(x["test_id"] for x in (att, corr, versus) if x is not None)
    stance = FOR if above and not (r.significant(versus) and versus["effect"] < 0) else AGAINST if not above else OPEN
    return Verdict("perturbation", question, stance, sentence, r.line(att), ids, "perturbation_first", paper)


def baselines(r: RegistryReader) -> Verdict:
    question = "Do simple gene-level statistics, which need no model, do better?"
    paper = "The paper: trivial gene-level baselines outperform attention and correlation (paired tests, all " \
            "significant)."
    rows = r.registry[(r.registry["analysis"] == "trivial_baselines")
                      & r.registry["hypothesis"].str.contains(" vs attention")]
    if rows.empty:
        return Verdict("baselines", question, UNTESTABLE, "No gene-level baselines (the data has no perturbations).",
                       "", (), "trivial_baselines", paper)
    wins = rows[[r.significant(x) and x["effect"] > 0 for _, x in rows.iterrows()]]
    ids = tuple(rows["test_id"])
    if len(wins):
        best = wins.sort_values("effect", ascending=False).iloc[0]
        name = best["hypothesis"].split(" vs ")[0].replace("baseline_", "")
        others = len(wins) - 1
        sentence = (f"Yes: a gene's {name} alone predicts knock-down targets better than attention (Cohen's d "
                    f"{effect(best['effect'])})" + (f", and {others} more baseline(s) do too" if others else "") + ".")
        return Verdict("baselines", question, AGAINST, sentence, r.line(best), ids, "trivial_baselines", paper)
    best = rows.sort_values("effect", ascending=False).iloc[0]
    sentence = (f"No: none of the {len(rows)} gene-level baselines beats attention significantly (the closest, "
                f"{best['hypothesis'].split(' vs ')[0].replace('baseline_', '')}, Cohen's d {effect(best['effect'])}).")
    return Verdict("baselines", question, OPEN, sentence, r.line(best), ids, "trivial_baselines", paper)


def incremental(r: RegistryReader) -> Verdict:
    question = "Does attention add predictive value beyond gene-level features?"
    paper = "The paper: no incremental pairwise value (bootstrap AUROC, descriptive)."
    row = r.row("incremental_value", "gene+attention > gene (perturbation split, logistic)")
    if row is None:
        return Verdict("incremental", question, UNTESTABLE, "No incremental-value test (it needs two or more "
                       "perturbations).", "", (), "incremental_value", paper)
    power = r.row("incremental_value", "power: smallest gene+attention gain detectable (perturbation split, logistic)")
    detectable = float(power["effect"]) if power is not None else np.nan
    gain = r.significant(row) and row["effect"] > 0
    sentence = (f"Adding attention to gene-level features changes held-out AUROC by "
                f"{effect(row['effect'], signed=True)}: {'a significant gain' if gain else 'no significant gain'}"
                + (f"; this screen could detect a gain of {effect(detectable)} or more (80% power)"
                   if np.isfinite(detectable) else "") + ".")
    underpowered = np.isfinite(detectable) and detectable > 0.05
    stance = FOR if gain else OPEN if underpowered else AGAINST
    ids = tuple(x["test_id"] for x in (row, power) if x is not None)
    return Verdict("incremental", question, stance, sentence, r.line(row), ids, "incremental_value", paper)


def confounding(r: RegistryReader, residualisation: pd.DataFrame | None, reference: str) -> Verdict:
    question = "How much of attention's signal survives removing expression and degree?"
    paper = "The paper: edge scores track expression (residualisation, significant edge-expression correlation)."
    if residualisation is None or residualisation.empty:
        return Verdict("confounding", question, UNTESTABLE, "No residualisation in this run.", "", (),
                       "residualisation", paper)
    res = residualisation[(residualisation["reference"] == reference) & (residualisation["model"] == "ols")]
    res = res.set_index("edge")
    if "attention" not in res.index:
        return Verdict("confounding", question, UNTESTABLE, "Residualisation has no attention row.", "", (),
                       "residualisation", paper)
    att = res.loc["attention"]
    rows = r.registry[(r.registry["analysis"] == "residualisation")
                      & r.registry["hypothesis"].str.startswith(f"attention vs {reference}, ols")]
    ids = tuple(rows["test_id"])
    line = ("cross-fitted OLS residual AUROC (descriptive: the share retained has no test; its spread over "
            f"{int(att['n_seeds'])} cross-fitting seeds is {effect(att['retained_sd'])})")
    if att["auroc"] - 0.5 < MIN_RETAINABLE_MARGIN:
        sentence = (f"Too little to apportion: before any adjustment attention's {reference} AUROC is "
                    f"{effect(att['auroc'] - 0.5, signed=True)} from chance, under the {MIN_RETAINABLE_MARGIN:g} a share of it "
                    "needs to be a stable number.")
        return Verdict("confounding", question, AGAINST, sentence, line, ids, "residualisation", paper)
    corr = res.loc["correlation"] if "correlation" in res.index else None
    kept = float(att["retained"])
    sentence = (f"Regressing out expression and degree keeps {share(kept)} of attention's above-chance {reference} "
                "signal" + (f" (correlation keeps {share(corr['retained'])})" if corr is not None else "") + ".")
    stance = FOR if kept >= 0.5 else AGAINST
    return Verdict("confounding", question, stance, sentence, line, ids, "residualisation", paper)


def head_ranking(r: RegistryReader, ablation_results: pd.DataFrame | None) -> Verdict:
    question = "Does the model rely on the heads that rank best against the reference?"
    paper = "The paper: ablating the regulatory-ranked heads left behaviour unchanged (null), while random ablation " \
            "caused a drop."
    if ablation_results is None or ablation_results.empty:
        return Verdict("head_ranking", question, UNTESTABLE, "No ablation sweep in this run.", "", (), "ablation",
                       paper)
    compared = {x: ranking_comparison(ablation_results, x) for x in RANKING_READOUTS}
    readout = next((x for x in RANKING_READOUTS if len(compared[x])), None)
    if readout is None:
        return Verdict("head_ranking", question, UNTESTABLE, "The sweep has no top-k set beside random draws of the "
                       "same size.", "", (), "ablation", paper)
    table = compared[readout]
    more = table["top"].abs() > table["random_abs_mean"]
    worst_bottom = (table["bottom"].abs() > table["top"].abs()).sum()
    ks = ", ".join(str(k) for k in table["k"])
    rows = r.registry[(r.registry["analysis"] == "ablation")
                      & r.registry["hypothesis"].str.contains(f"moves {readout} more than", regex=False)]
    ids = tuple(rows["test_id"])
    best = table.sort_values("rank_p").iloc[0]
    what = READOUT_WORDS.get(readout, readout)
    if more.all() and (table["rank_p"] <= r.alpha).any():
        stance, lead = FOR, "Yes"
    elif not more.any():
        stance, lead = AGAINST, "No"
    else:
        stance, lead = OPEN, "Not clearly"
    sentence = (f"{lead}: ablating the top-ranked heads moves {what} more than same-size random heads at "
                f"{int(more.sum())} of {len(table)} sizes (k = {ks})"
                + (f", and the bottom-ranked heads move it more than the top-ranked at {worst_bottom}" if worst_bottom
                   else "") + f". At k = {int(best['k'])}: top {effect(best['top'], signed=True)}, random "
                f"{effect(best['random_mean'], signed=True)} (mean of {int(best['n_random'])}), bottom "
                f"{effect(best['bottom'], signed=True)}.")
    test = (f"empirical rank of the top-k change among {int(best['n_random'])} random draws, p = "
            f"{probability(best['rank_p'])} at best (smallest possible {probability(best['smallest_p'])}; more draws: "
            "--set ablation.n_random=...)")
    return Verdict("head_ranking", question, stance, sentence, test, ids, "ablation", paper)


def verdicts(registry: pd.DataFrame, tables: dict[str, pd.DataFrame], *, reference: str, family: str = "confirmatory",
             alpha: float = 0.05) -> list[Verdict]:
    """The run's verdicts, in the paper's order of argument. ``registry``: schema ``statistics_registry``;
    ``tables``: the run's tables by name (``residualisation``, ``ablation_results`` are read when present);
    ``reference``: the reference the run ranks heads against (its first)."""
    r = RegistryReader(registry, family, alpha)
    return [degree(r, reference), perturbation(r), baselines(r), incremental(r),
            confounding(r, tables.get("residualisation"), reference),
            head_ranking(r, tables.get("ablation_results"))]


def bottom_line(found: list[Verdict]) -> str:
    """One sentence over the verdicts: how many questions the run answers for, against, or leaves open."""
    tested = [v for v in found if v.stance != UNTESTABLE]
    if not tested:
        return "This run has none of the analyses the verdicts read."
    count = {s: sum(v.stance == s for v in tested) for s in (FOR, AGAINST, OPEN)}
    lead = ("The evidence here is mostly against attention carrying regulatory signal beyond gene-level structure"
            if count[AGAINST] > count[FOR] + count[OPEN] else
            "The evidence here mostly supports attention carrying regulatory signal"
            if count[FOR] > count[AGAINST] + count[OPEN] else "The evidence here is mixed")
    return (f"{lead}: of {len(tested)} questions this run can test, {count[AGAINST]} answer against, {count[FOR]} for, "
            f"and {count[OPEN]} left open.")
