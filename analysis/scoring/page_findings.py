"""The bottom line of the evidence pages the verdict panel does not cover: the head screen, the layer profile, CSSI
and the SAE features. Each is a :class:`~analysis.scoring.verdicts.Verdict` computed from the run's registry and
tables (never written for a particular run), with its test and what the paper (or its SAE companion) found, and its
stance on whether that component carries regulatory signal:

- heads: how many single heads recover the reference above a label-shuffle null (BH over the screen), the best one
  beside Spearman correlation of the same cells (the paper's registry 27 and section 2.5: per-head AUROC 0.34-0.75);
- layers: whether reference recovery trends with depth (exact Spearman over the layers, SN17);
- cssi: the pre-specified CSSI gain over pooled attention against random strata (SN11);
- features: how many knocked-down TFs' most responsive SAE features prefer the TF's own targets, and how many pass
  with another TF's targets (the companion paper's test: 3 of 48 TFs in V2-316M).
"""
from __future__ import annotations

import math

import pandas as pd

from .numbers import effect, probability
from .verdicts import AGAINST, FOR, OPEN, UNTESTABLE, RegistryReader, Verdict

FINDING_KEYS = ("head_screen", "layer_trend", "cssi_gain", "sae_specificity")   # the keys of page_findings' Verdicts
# fewer layers than this cannot show a depth trend: an exact Spearman test over 4 layers cannot go below p = 1/12
FEW_LAYERS = 8


def head_screen(r: RegistryReader, ranking: pd.DataFrame | None, reference: str) -> Verdict:
    """From ``head_ranking`` (schema of :func:`analysis.scoring.ranking` tables: per head AUROC, label-shuffle p and
    BH q over the heads), TF -> target."""
    question = "Does any single head recover the reference better than chance?"
    paper = ("The paper: per-head TRRUST AUROC over V2-316M's 324 heads ran 0.34-0.75 (top-5 0.70-0.75), variation "
             "that did not translate into causal importance (section 2.5).")
    if ranking is None:
        return Verdict("head_screen", question, UNTESTABLE, "No head ranking in this run.", "", (), "head_screen", paper)
    auroc = ranking[(ranking["reference"] == reference) & (ranking["direction"] == "tf_to_target")
                    & (ranking["metric"] == "auroc")]
    heads, corr = auroc[auroc["edge_type"] == "attention"], auroc[auroc["edge_type"] == "spearman"]
    if heads.empty:
        return Verdict("head_screen", question, UNTESTABLE, f"No head was scored against {reference}.", "", (),
                       "head_screen", paper)
    passing = heads[heads["q"] < r.alpha]
    best = heads.sort_values("value", ascending=False).iloc[0]
    beats_corr = corr.empty or best["value"] > corr["value"].iloc[0]
    stance = AGAINST if passing.empty else FOR if beats_corr else OPEN
    sentence = (f"{len(passing)} of {len(heads)} heads recover {reference} (TF -> target) above a label-shuffle null; "
                f"the best, L{int(best['layer'])}H{int(best['head'])}, reaches AUROC {effect(best['value'])}"
                + (f" against {effect(corr['value'].iloc[0])} for Spearman correlation of the same cells" if len(corr)
                   else "") + ". A label shuffle keeps no gene's degree, so a head can pass by attending to hub "
                "genes: the degree-preserving null (Confounds) decides whether that is regulatory knowledge.")
    test = (f"label-shuffle permutation per head, BH over the {len(heads)} heads at q < {r.alpha:g}; best head p = "
            f"{probability(best['p'])}, q = {probability(best['q'])}")
    return Verdict("head_screen", question, stance, sentence, test, (), "head_screen", paper)


def depth_trend(r: RegistryReader, layer_biology: pd.DataFrame | None, reference: str) -> Verdict:
    """From the registry's "<reference> recovery trends with depth" (exact Spearman of layer and AUROC) and the
    ``layer_biology`` table (per layer and source, AUROC of the reference's regulatory pairs)."""
    question = f"Does recovery of {reference} change with depth?"
    paper = ("The paper: layer-specific organisation, protein-protein interactions early and transcriptional "
             "regulation late (SN17); best pooled layer L13, AUROC 0.694 (SN11).")
    row = r.row("layer_biology", f"{reference} recovery trends with depth")
    if row is None:
        return Verdict("layer_trend", question, UNTESTABLE, f"No depth-trend test against {reference} in this run: "
                       "it needs three layers or more and a profile that varies.", "", (), "layer_biology", paper)
    n_layers, rho = int(row["n"]), float(row["effect"])
    significant = r.significant(row)
    stance = FOR if significant else OPEN if n_layers < FEW_LAYERS else AGAINST
    direction = "rises" if rho > 0 else "falls" if rho < 0 else "stays flat"
    sentence = (f"Recovery of {reference} {direction} with depth (Spearman rho {effect(rho, signed=True)} over "
                f"{n_layers} layers), {'a' if significant else 'not a'} significant trend"
                + (f"; {n_layers} layers are too few to show one (an exact test cannot go below p = "
                   f"{probability(2 / math.factorial(n_layers))})" if not significant and n_layers < FEW_LAYERS else "")
                + _best_layer(layer_biology, reference) + ".")
    return Verdict("layer_trend", question, stance, sentence, r.line(row), (row["test_id"],), "layer_biology", paper)


def _best_layer(layer_biology: pd.DataFrame | None, reference: str) -> str:
    if layer_biology is None:
        return ""
    own = layer_biology[(layer_biology["reference"] == reference) & (layer_biology["kind"] == "regulatory")]
    layers = own[own["edge_type"] == "attention_layer_mean"]
    if layers.empty:
        return ""
    best = layers.sort_values("auroc", ascending=False).iloc[0]
    corr = own[own["edge_type"] == "spearman"]
    return (f"; highest at L{int(best['layer'])} (head-mean AUROC {effect(best['auroc'])}"
            + (f", Spearman correlation {effect(corr['auroc'].iloc[0])}" if len(corr) else "") + ")")


def cssi_gain(r: RegistryReader, reference: str) -> Verdict:
    """From the registry's confirmatory CSSI test: the pre-specified site, aggregation and number of strata, gain over
    pooled beyond random strata of the same sizes."""
    question = "Does scoring attention within cell states (CSSI) recover more of the reference than pooling?"
    paper = ("The paper: CSSI-max improved top-k TRRUST recovery on DLPFC brain cells, best at 5-7 strata, and "
             "random strata gave no false gain (SN11).")
    rows = r.registry[(r.registry["analysis"] == "cssi") & r.registry["confirmatory"].astype(bool)
                      & r.registry["hypothesis"].str.startswith(f"{reference} ")]
    if rows.empty:
        return Verdict("cssi_gain", question, UNTESTABLE, f"No pre-specified CSSI test against {reference} in this "
                       "run.", "", (), "cssi", paper)
    row = rows.iloc[0]
    gain, significant = float(row["effect"]), r.significant(row)
    stance = FOR if significant and gain > 0 else AGAINST if gain <= 0 else OPEN
    what = row["hypothesis"][len(reference) + 1:].split(" AUROC gain")[0]
    sentence = (f"Pre-specified ({what}): CSSI changes AUROC by {effect(gain, signed=True)} over pooled attention, "
                + ("more than random strata of the same sizes do." if significant and gain > 0 else
                   "no more than random strata of the same sizes do." if gain > 0 else "no gain."))
    return Verdict("cssi_gain", question, stance, sentence, r.line(row), (row["test_id"],), "cssi", paper)


def sae_specificity(r: RegistryReader, sae_regulatory: pd.DataFrame | None, reference: str) -> Verdict:
    """From ``sae_regulatory`` (per SAE layer and knocked-down TF: ``passes`` its own targets, ``rotated_passes``
    another TF's, each BH q < 0.05 against random feature sets)."""
    question = "Do the residual stream's features respond specifically to a knocked-down TF's own targets?"
    paper = ("The SAE companion paper: 3 of 48 TFs (6.2%) in Geneformer V2-316M on a genome-scale CRISPRi screen; "
             "\"minimal causal regulatory logic\".")
    if sae_regulatory is None or sae_regulatory.empty:
        return Verdict("sae_specificity", question, UNTESTABLE, "No CRISPRi regulatory test of SAE features in this "
                       "run.", "", (), "sae_regulatory", paper)
    per_layer = sae_regulatory.groupby("layer").agg(tfs=("tf", "size"), passes=("passes", "sum"),
                                                    rotated=("rotated_passes", "sum"))
    best = per_layer.sort_values(["passes", "rotated"], ascending=[False, True]).index[0]
    top = per_layer.loc[best]
    stance = AGAINST if top["passes"] == 0 else FOR if top["rotated"] == 0 else OPEN
    sentence = (f"At L{int(best)}, the features most responsive to a TF's knock-down prefer that TF's {reference} "
                f"targets for {int(top['passes'])} of {int(top['tfs'])} TFs, and another TF's targets for "
                f"{int(top['rotated'])}"
                + (f" (layers {', '.join(f'L{int(l)} {int(x.passes)}' for l, x in per_layer.iterrows())})"
                   if len(per_layer) > 1 else "")
                + ". The knock-down is already in the input, so a pass shows a response specific to the targets, not "
                "regulation the model inferred.")
    test = f"random-feature-set null per TF (one-sided), BH over the layer's TFs at q < {r.alpha:g}"
    return Verdict("sae_specificity", question, stance, sentence, test, (), "sae_regulatory", paper)


def page_findings(registry: pd.DataFrame, tables: dict[str, pd.DataFrame], *, reference: str,
                  alpha: float = 0.05) -> dict[str, Verdict]:
    """Each evidence page's finding by page (``heads``, ``layers``, ``cssi``, ``features``). ``tables``: the run's
    ``head_ranking``, ``layer_biology`` and ``sae_regulatory`` where it has them. The depth trend and the CSSI test
    are confirmatory and read in that BH family; the head screen and the SAE test are exploratory and carry their own
    BH (over the heads, over a layer's TFs)."""
    r = RegistryReader(registry, "confirmatory", alpha)
    return {"heads": head_screen(r, tables.get("head_ranking"), reference),
            "layers": depth_trend(r, tables.get("layer_biology"), reference),
            "cssi": cssi_gain(r, reference), "features": sae_specificity(r, tables.get("sae_regulatory"), reference)}
