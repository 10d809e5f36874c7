"""Pure figure functions: tidy frame / array in, ``go.Figure`` out (no Dash, no I/O).

Every figure states what rows, columns and colours mean, including the attention direction, so an exported
figure stands on its own in a paper.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from analysis.scoring.numbers import SMALLEST_SHOWN_P, probability, share
from analysis.scoring.verdicts import MIN_RETAINABLE_MARGIN

CHANCE = {"auroc": 0.5, "per_tf_auroc_mean": 0.5, "auroc_null_mean": 0.5}
METRIC_LABELS = {
    "auroc": "AUROC", "auprc": "AUPRC", "per_tf_auroc_mean": "mean per-TF AUROC",
    "auroc_null_mean": "label-shuffle null AUROC (mean)",
}
DIRECTION_LABELS = {
    "tf_to_target": "TF -> target: A[TF, target], TF as query",
    "target_to_tf": "target -> TF: A[target, TF], target as query",
    "symmetric": "symmetric: mean of A[TF, target] and A[target, TF]",
}


def metric_label(metric: str) -> str:
    if metric in METRIC_LABELS:
        return METRIC_LABELS[metric]
    name, _, k = metric.rpartition("_at_")
    return f"{'precision' if name == 'precision' else 'top-k F1'} @ {k}" if k else metric


def head_grid(frame: pd.DataFrame) -> pd.DataFrame:
    """Attention-head rows of a ranking frame for one (reference, direction, metric), sorted by layer, head."""
    return frame[frame["edge_type"] == "attention"].sort_values(["layer", "head"]).reset_index(drop=True)


def head_heatmap(grid: pd.DataFrame, *, metric: str, reference: str, direction: str,
                 baseline: float | None = None, selected: tuple[int, int] | None = None) -> go.Figure:
    """Layer x head heatmap of ``metric`` (rows = layers, L0 at the top; columns = heads).

    ``grid``: one row per (layer, head) with value, ci_low, ci_high, q. Colour centred on chance for AUROC.
    """
    n_layers, n_heads = int(grid["layer"].max()) + 1, int(grid["head"].max()) + 1
    z = np.full((n_layers, n_heads), np.nan)
    q = np.full((n_layers, n_heads), np.nan)
    z[grid["layer"], grid["head"]] = grid["value"]
    q[grid["layer"], grid["head"]] = grid["q"]
    chance = CHANCE.get(metric)
    span = np.nanmax(np.abs(z - chance)) if chance is not None else None
    text = np.vectorize(lambda v: f"{v:.3f}")(z)
    fig = go.Figure(go.Heatmap(
        z=z, x=[f"H{h}" for h in range(n_heads)], y=[f"L{layer}" for layer in range(n_layers)],
        text=text, texttemplate="%{text}" if n_layers * n_heads <= 150 else None, customdata=q,
        colorscale="RdBu_r" if chance is not None else "Viridis",
        zmid=chance, zmin=None if span is None else chance - span, zmax=None if span is None else chance + span,
        colorbar={"title": metric_label(metric)},
        hovertemplate="%{y} %{x}<br>" + metric_label(metric) + " = %{z:.4f}<br>BH q = %{customdata:.3g}<extra></extra>",
    ))
    if selected is not None:
        layer, head = selected
        fig.add_shape(type="rect", x0=head - 0.5, x1=head + 0.5, y0=layer - 0.5, y1=layer + 0.5,
                      line={"color": "black", "width": 3})
    subtitle = DIRECTION_LABELS.get(direction, direction)
    if baseline is not None:
        subtitle += f" | Spearman-correlation baseline {baseline:.3f}"
    fig.update_layout(
        title={"text": f"{metric_label(metric)} per attention head vs {reference}<br><sup>{subtitle}</sup>"},
        yaxis={"autorange": "reversed", "title": "layer"}, xaxis={"title": "head", "side": "bottom"},
        margin={"l": 60, "r": 20, "t": 80, "b": 50}, height=max(320, 40 * n_layers + 140), clickmode="event",
    )
    return fig


def layer_profile_series(frame: pd.DataFrame, *, metric: str) -> pd.DataFrame:
    """The series :func:`layer_profile` draws, one row per layer (what its CSV export holds): best_head,
    median_head, layer_mean, and the constant lines spearman and chance (NaN where the run or metric has none).
    ``frame``: the head ranking's rows for one reference, direction and metric."""
    heads = frame[frame["edge_type"] == "attention"].groupby("layer")["value"]
    out = pd.DataFrame({"best_head": heads.max(), "median_head": heads.median()})
    layer_mean = frame[frame["edge_type"] == "attention_layer_mean"].set_index("layer")["value"]
    out = out.join(layer_mean.rename("layer_mean"), how="outer").rename_axis("layer").reset_index()
    spearman = frame.loc[frame["edge_type"] == "spearman", "value"]
    return out.assign(spearman=float(spearman.iloc[0]) if len(spearman) else np.nan,
                      chance=CHANCE.get(metric, np.nan))


def layer_profile(frame: pd.DataFrame, *, metric: str, reference: str, direction: str) -> go.Figure:
    """Per layer: best head, head median, and layer-mean attention; Spearman baseline and chance as lines
    (:func:`layer_profile_series`)."""
    series = layer_profile_series(frame, metric=metric)
    fig = go.Figure()
    for column, name, dash, symbol in (("best_head", "best head", "solid", "circle"),
                                       ("median_head", "median head", "dash", "square"),
                                       ("layer_mean", "layer mean (heads averaged)", "dot", "diamond")):
        drawn = series[series[column].notna()]
        fig.add_scatter(x=drawn["layer"], y=drawn[column], mode="lines+markers", name=name,
                        line={"dash": dash}, marker={"symbol": symbol})
    if series["spearman"].notna().any():
        fig.add_hline(y=float(series["spearman"].iloc[0]), line_dash="dash", annotation_text="Spearman correlation")
    if len(series) and np.isfinite(series["chance"].iloc[0]):
        fig.add_hline(y=float(series["chance"].iloc[0]), line_dash="dot", line_color="grey", annotation_text="chance")
    fig.update_layout(title={"text": f"{metric_label(metric)} by layer vs {reference}<br>"
                                     f"<sup>{DIRECTION_LABELS.get(direction, direction)}</sup>"},
                      xaxis={"title": "layer", "dtick": 1}, yaxis={"title": metric_label(metric)},
                      height=340, margin={"l": 60, "r": 20, "t": 80, "b": 50})
    return fig


def gene_gene_heatmap(block: pd.DataFrame, *, title: str, direction: str) -> go.Figure:
    """Gene x gene attention for one head. ``block``: tidy rows (row_gene, col_gene, score, in_reference) in
    display order; rows are TFs and columns candidate targets, scores already oriented by ``direction``.
    Reference edges are marked with a black x."""
    rows = list(dict.fromkeys(block["row_gene"]))
    cols = list(dict.fromkeys(block["col_gene"]))
    z = block.pivot(index="row_gene", columns="col_gene", values="score").reindex(index=rows, columns=cols)
    fig = go.Figure(go.Heatmap(z=z.to_numpy(), x=cols, y=rows, colorscale="Viridis", colorbar={"title": "attention"},
                               hovertemplate="TF %{y} -> %{x}<br>score %{z:.4g}<extra></extra>"))
    hits = block[block["in_reference"]]
    fig.add_scatter(x=hits["col_gene"], y=hits["row_gene"], mode="markers", name="reference edge",
                    marker={"symbol": "x-thin", "size": 9, "line": {"width": 2, "color": "white"}},
                    hovertemplate="reference edge %{y} -> %{x}<extra></extra>")
    fig.update_layout(title={"text": f"{title}<br><sup>rows: TFs; columns: targets; "
                                     f"{DIRECTION_LABELS.get(direction, direction)}</sup>"},
                      yaxis={"autorange": "reversed", "title": "TF"}, xaxis={"title": "target gene", "tickangle": -60},
                      height=620, margin={"l": 80, "r": 20, "t": 80, "b": 110},
                      legend={"orientation": "h", "y": 1.02, "x": 1, "xanchor": "right"})
    return fig


def source_label(edge_type: str, layer: int, head: int) -> str:
    """Human label of an edge source (attention head, layer mean, correlation, gene-level baseline)."""
    if edge_type == "attention":
        return f"L{layer}H{head}"
    if edge_type == "attention_layer_mean":
        return f"L{layer} mean"
    if edge_type.startswith("spearman"):
        variant = edge_type.removeprefix("spearman").lstrip("_").replace("_", "-")
        return f"Spearman ({variant})" if variant else "Spearman"
    return edge_type.replace("baseline_", "gene: ")


def perturbation_box(frame: pd.DataFrame, *, readout_layer: int) -> go.Figure:
    """Per-perturbation AUROC distributions, one box per source (rows of ``frame``: source, auroc, kind)."""
    fig = go.Figure()
    for source, grp in frame.groupby("source", sort=False):
        kind = grp["kind"].iloc[0]
        color = {"attention": "#4c72b0", "readout": "#1b3b6f", "head": "#dd8452", "correlation": "#55a868",
                 "baseline": "#8c8c8c"}[kind]
        fig.add_box(y=grp["auroc"], name=source, marker_color=color, boxpoints="all", jitter=0.3, pointpos=0,
                    customdata=grp["perturbation"], hovertemplate="%{customdata}: AUROC %{y:.3f}<extra>" + source + "</extra>")
    fig.add_hline(y=0.5, line_dash="dot", line_color="grey", annotation_text="chance")
    fig.update_layout(title={"text": "Perturbation-first AUROC per perturbation<br><sup>edge scores from the perturbed "
                                     f"gene (query) to every other universe gene vs its DE targets; read-out layer "
                                     f"L{readout_layer} pre-specified in the config</sup>"},
                      yaxis={"title": "AUROC", "range": [0, 1]}, showlegend=False, height=440,
                      margin={"l": 60, "r": 20, "t": 80, "b": 80})
    return fig


def paired_scatter(frame: pd.DataFrame, *, x_label: str, y_label: str) -> go.Figure:
    """One point per perturbation: AUROC of source x (columns ``x``) vs source y (``y``), diagonal = equal."""
    fig = go.Figure(go.Scatter(x=frame["x"], y=frame["y"], mode="markers", text=frame["perturbation"],
                               marker={"size": 9, "color": "#4c72b0"},
                               hovertemplate="%{text}<br>" + x_label + " %{x:.3f}<br>" + y_label + " %{y:.3f}<extra></extra>"))
    fig.add_shape(type="line", x0=0, y0=0, x1=1, y1=1, line={"dash": "dash", "color": "grey"})
    above = int((frame["y"] > frame["x"]).sum())
    fig.update_layout(title={"text": f"{y_label} vs {x_label} per perturbation<br><sup>{above}/{len(frame)} "
                                     f"perturbations favour {y_label}</sup>"},
                      xaxis={"title": f"{x_label} AUROC", "range": [0, 1]}, yaxis={"title": f"{y_label} AUROC",
                                                                                  "range": [0, 1]},
                      height=440, margin={"l": 60, "r": 20, "t": 80, "b": 60})
    return fig


def sensitivity_heatmap(grid: pd.DataFrame, *, source: str) -> go.Figure:
    """27-condition grid of mean AUROC: columns = (LFC threshold, control cells), rows = universe size."""
    grid = grid.assign(condition=[f"LFC {a:g} / {c} ctrl" for a, c in zip(grid["lfc_threshold"], grid["n_control"])])
    z = grid.pivot_table(index="universe_size", columns="condition", values="mean_auroc", sort=False)
    n = grid.pivot_table(index="universe_size", columns="condition", values="n_evaluable", sort=False)
    fig = go.Figure(go.Heatmap(z=z.to_numpy(), x=list(z.columns), y=[f"{u} genes" for u in z.index],
                               text=np.vectorize(lambda v: f"{v:.3f}")(z.to_numpy()), texttemplate="%{text}",
                               customdata=n.to_numpy(), colorscale="RdBu_r", zmid=0.5,
                               colorbar={"title": "mean AUROC"},
                               hovertemplate="%{x}, %{y}<br>mean AUROC %{z:.3f}<br>%{customdata} evaluable "
                                             "perturbations<extra></extra>"))
    fig.update_layout(title={"text": f"Sensitivity grid: {source}<br><sup>LFC threshold x control cells x universe "
                                     "size (top genes by control variance)</sup>"},
                      xaxis={"tickangle": -30}, height=380, margin={"l": 90, "r": 20, "t": 80, "b": 110})
    return fig


def incremental_deltas(frame: pd.DataFrame, *, metric: str) -> go.Figure:
    """Gain of gene-level + edge over gene-level alone (delta with 95% bootstrap CI), per split and model."""
    splits = list(dict.fromkeys(frame["split"]))

    fig = make_subplots(rows=1, cols=len(splits), shared_yaxes=True,
                        subplot_titles=[f"GroupKFold by {s}" if s != "joint" else "joint split" for s in splits])
    colors = {"logistic": "#4c72b0", "gbdt": "#dd8452"}
    for c, split in enumerate(splits, start=1):
        for model, grp in frame[frame["split"] == split].groupby("model"):
            fig.add_scatter(x=grp["feature_set"], y=grp["delta"], mode="markers", name=model, legendgroup=model,
                            showlegend=c == 1, marker={"size": 10, "color": colors.get(model)},
                            error_y={"type": "data", "symmetric": False,
                                     "array": grp["delta_ci_high"] - grp["delta"],
                                     "arrayminus": grp["delta"] - grp["delta_ci_low"]},
                            customdata=grp[["value", "p_delta"]].to_numpy(),
                            hovertemplate="%{x}<br>delta %{y:.3f}<br>" + metric + " %{customdata[0]:.3f}<br>"
                                          "bootstrap p %{customdata[1]:.3g}<extra>" + model + "</extra>", row=1, col=c)
        fig.add_hline(y=0, line_dash="dot", line_color="grey", row=1, col=c)
    fig.update_layout(title={"text": f"Incremental value over gene-level features ({metric_label(metric)})<br>"
                                     "<sup>delta = (gene + edge) - gene only, out-of-fold; 95% CI from a perturbation "
                                     "bootstrap</sup>"},
                      yaxis={"title": f"delta {metric_label(metric)}"}, height=440,
                      margin={"l": 60, "r": 20, "t": 90, "b": 90})
    return fig


def retained_label(auroc: float, retained: float) -> str:
    """The share of above-chance AUROC kept, said only where it means something: a raw AUROC at or below chance has
    no above-chance signal to keep, and one within :data:`analysis.scoring.verdicts.MIN_RETAINABLE_MARGIN` of it too
    little to split (the ratio's sign and size are then meaningless, e.g. "-340%" or "40124%")."""
    if not np.isfinite(retained) or auroc <= 0.5 + 1e-9:
        return "raw AUROC at/below chance: no share to keep"
    if auroc - 0.5 < MIN_RETAINABLE_MARGIN:
        return "raw AUROC too close to chance to apportion"
    return f"{share(retained)} kept" + (" (residual above raw)" if retained > 1 else "")


def residualisation_bars(frame: pd.DataFrame) -> go.Figure:
    """Reference AUROC before and after cross-fitted residualisation on expression covariates, one labelled row per
    edge score and residualising model (horizontal, so labels never rotate or overprint), the share of above-chance
    AUROC kept written beside each residual bar."""
    labels = [f"{e} ({m}) vs {r}" for e, m, r in zip(frame["edge"], frame["model"], frame["reference"])]
    fig = go.Figure()
    fig.add_bar(y=labels, x=frame["auroc"], name="raw", orientation="h", marker_color="#0072B2",
                hovertemplate="%{y}<br>raw AUROC %{x:.3f}<extra></extra>")
    fig.add_bar(y=labels, x=frame["auroc_residual"], name="residual", orientation="h", marker_color="#E69F00",
                marker_pattern_shape="/",
                text=[retained_label(a, r) for a, r in zip(frame["auroc"], frame["retained"])],
                textposition="outside", cliponaxis=False,
                hovertemplate="%{y}<br>residual AUROC %{x:.3f}<br>%{text}<extra></extra>")
    fig.add_vline(x=0.5, line_dash="dot", line_color="grey", annotation_text="chance", annotation_position="top")
    fig.update_layout(barmode="group", title={"text": "Residualisation on expression covariates<br><sup>share of "
                                              "above-chance AUROC retained after removing mean / variance / detection "
                                              "of both genes (5-fold cross-fitted)</sup>"},
                      xaxis={"title": "AUROC", "range": [0.3, 1.25]},
                      yaxis={"autorange": "reversed", "automargin": True},
                      height=max(320, 46 * len(labels) + 140), margin={"t": 90, "r": 20},
                      legend={"orientation": "h", "y": -0.15, "yanchor": "top"})
    return fig


def balance_plot(frame: pd.DataFrame) -> go.Figure:
    """Love plot: standardised mean difference of each covariate before and after propensity matching."""
    fig = go.Figure()
    fig.add_scatter(x=frame["smd_before"], y=frame["covariate"], mode="markers", name="before", marker={"size": 11})
    fig.add_scatter(x=frame["smd_after"], y=frame["covariate"], mode="markers", name="after matching",
                    marker={"size": 11, "symbol": "diamond"})
    for v in (-0.1, 0.1):
        fig.add_vline(x=v, line_dash="dot", line_color="grey")
    fig.update_layout(title={"text": "Covariate balance, DE-positive vs DE-negative targets<br><sup>|SMD| < 0.1 "
                                     "(dotted) is conventionally balanced</sup>"},
                      xaxis={"title": "standardised mean difference"}, height=320, margin={"t": 80})
    return fig


def degree_decomposition(frame: pd.DataFrame) -> go.Figure:
    """AUROC = chance + degree (curveball null mean - 0.5) + excess (observed - null mean), stacked."""
    labels = [f"{e}<br>{r}" for e, r in zip(frame["edge"], frame["reference"])]
    fig = go.Figure()
    fig.add_bar(x=labels, y=frame["chance"], name="chance", marker_color="#c7c7c7")
    fig.add_bar(x=labels, y=frame["degree"], name="degree structure", marker_color="#8172b2")
    fig.add_bar(x=labels, y=frame["excess"], name="excess over degree null", marker_color="#55a868",
                customdata=frame["p_excess"], hovertemplate="excess %{y:.3f}, p %{customdata:.3g}<extra></extra>")
    fig.update_layout(barmode="relative", title={"text": "Degree-preserving null decomposition<br><sup>curveball "
                                                 "randomisation keeps every TF's and target's degree</sup>"},
                      yaxis={"title": "AUROC"}, height=400, margin={"t": 80})
    return fig


def effect_vs_q(frame: pd.DataFrame) -> go.Figure:
    """Registry: effect size vs -log10 BH q (framework-wide), confirmatory tests filled, others open. A q at or below
    :data:`analysis.scoring.numbers.SMALLEST_SHOWN_P` is underflow, not a measured value: it is drawn as a triangle
    on a ceiling just above the largest measured -log10 q (so one such point never squashes the rest), and says so
    on hover; tests without any q (descriptive statistics) are not drawn."""
    frame = frame.assign(q_shown=frame["q"].where(frame["q"].notna(), frame["q_all"]))
    frame = frame[frame["q_shown"].notna()]
    underflow = frame["q_shown"] <= SMALLEST_SHOWN_P
    measured = -np.log10(frame.loc[~underflow, "q_shown"].astype(float))
    ceiling = (measured.max() if len(measured) else 1.0) * 1.1 + 1.0
    fig = go.Figure()
    for analysis, grp in frame.groupby("analysis"):
        low = grp["q_shown"] <= SMALLEST_SHOWN_P
        y = np.where(low, ceiling, -np.log10(grp["q_shown"].clip(lower=SMALLEST_SHOWN_P).astype(float)))
        q_text = [f"q < {SMALLEST_SHOWN_P:.0e} (underflow)" if u else f"q = {probability(q)}"
                  for u, q in zip(low, grp["q_shown"])]
        symbols = [("triangle-up" if u else "circle") + ("" if c else "-open")
                   for u, c in zip(low, grp["confirmatory"])]
        fig.add_scatter(x=grp["effect"], y=y, mode="markers", name=analysis,
                        customdata=np.column_stack([grp["hypothesis"], q_text]).tolist(),
                        marker={"size": 9, "symbol": symbols},
                        hovertemplate="%{customdata[0]}<br>effect %{x:.3g}<br>%{customdata[1]}<extra>" + analysis
                                      + "</extra>")
    fig.add_hline(y=-np.log10(0.05), line_dash="dot", line_color="grey", annotation_text="q = 0.05")
    if underflow.any():
        fig.add_hline(y=ceiling, line_dash="dash", line_color="#999999",
                      annotation_text=f"q < {SMALLEST_SHOWN_P:.0e} (underflow; triangles)")
    fig.update_layout(title={"text": "Statistics registry: effect vs framework-wide BH q<br><sup>filled = "
                                     "confirmatory family; open = descriptive / exploratory (q from the all-tests "
                                     "family)</sup>"},
                      xaxis={"title": "effect (see effect_name)"}, yaxis={"title": "-log10 q"}, height=460,
                      margin={"t": 80})
    return fig


# family -> (label, colour, dash, marker): Okabe-Ito colours, each family also told apart by dash and marker
ABLATION_STYLE = {
    "top_k": ("top-k heads (zero)", "#D55E00", "solid", "circle"),
    "random_k": ("random-k heads (zero)", "#666666", "dot", "diamond"),
    "bottom_k": ("bottom-k heads (zero)", "#0072B2", "dash", "square"),
    "custom": ("your selection (live)", "#000000", None, "star"),
    "composite_top_k": ("top-k by composite score (zero)", "#CC79A7", "dashdot", "triangle-up"),
    "layer_matched_random_k": ("random-k, layer-matched (zero)", "#56B4E9", "dot", "triangle-down"),
    "entropy_matched_random_k": ("random-k, entropy-matched (zero)", "#009E73", "dot", "pentagon"),
    "uniform_top_k": ("top-k heads (uniform)", "#E69F00", "longdash", "hexagon"),
    "uniform_random_k": ("random-k heads (uniform)", "#999999", "longdashdot", "cross"),
}
DECISIVE_FAMILIES = ("top_k", "random_k", "bottom_k", "custom")   # the comparison that says whether a ranking matters
LAYER_FAMILIES = ("whole_layer", "mlp_layer", "mlp_block")


def layer_intervention_label(family: str, k: int, draw: int) -> str:
    """Plain name of a whole-layer or MLP intervention (schema ``ablation_results``: ``draw`` holds the layer, the
    first layer of an MLP block)."""
    if family == "whole_layer":
        return f"all heads of L{draw}"
    if family == "mlp_layer":
        return f"MLP of L{draw}"
    return f"MLPs of L{draw}-L{draw + k - 1}"


def dose_response(frame: pd.DataFrame, *, readout: str, families: tuple[str, ...] = DECISIVE_FAMILIES) -> go.Figure:
    """Change of ``readout`` (intervened - unablated, 95% CI) in two panels. Left: head sets of ``families`` by
    number of heads ablated (log axis ticked at the sizes run); random draws as their min-max band, mean line and
    each draw. Right: whole layers and MLPs, one labelled row each. Structural nulls (``structural``,
    :func:`analysis.scoring.ablation.structural_null`: at or after the read-out layer, cannot change an attention
    read-out) are crossed out in both panels and left out of lines and bands."""
    fig = make_subplots(rows=1, cols=2, column_widths=[0.66, 0.34], horizontal_spacing=0.2,
                        subplot_titles=("head sets, by number of heads ablated", "whole layers and MLPs"))
    structural = frame["structural"].astype(bool) if "structural" in frame else pd.Series(False, index=frame.index)
    live, ks = frame[~structural], set()
    for family in families:
        label, color, dash, symbol = ABLATION_STYLE[family]
        grp = live[live["family"] == family].sort_values("k")
        if grp.empty:
            continue
        ks |= set(grp["k"].astype(int))
        if family.endswith("random_k"):
            fig.add_scatter(x=grp["k"], y=grp["delta"], mode="markers", name=f"{label}, each draw",
                            legendgroup=family, showlegend=False, customdata=grp["intervention"],
                            marker={"color": color, "size": 5, "opacity": 0.45, "symbol": symbol},
                            hovertemplate="%{customdata}<br>delta %{y:.3g}<extra></extra>", row=1, col=1)
            spread = grp.groupby("k")["delta"].agg(["min", "max", "mean"]).reset_index()
            fig.add_scatter(x=list(spread["k"]) + list(spread["k"])[::-1],
                            y=list(spread["max"]) + list(spread["min"])[::-1], fill="toself", mode="none",
                            fillcolor=_translucent(color), name=f"{label}: range of draws", legendgroup=family,
                            hoverinfo="skip", row=1, col=1)
            fig.add_scatter(x=spread["k"], y=spread["mean"], mode="lines+markers", name=f"{label}: mean of draws",
                            legendgroup=family, line={"color": color, "dash": dash},
                            marker={"color": color, "size": 8, "symbol": symbol},
                            hovertemplate="k %{x}<br>mean delta %{y:.3g}<extra></extra>", row=1, col=1)
            continue
        err = {"type": "data", "symmetric": False, "array": (grp["ci_high"] - grp["delta"]).fillna(0),
               "arrayminus": (grp["delta"] - grp["ci_low"]).fillna(0)}
        fig.add_scatter(x=grp["k"], y=grp["delta"], mode="markers" if dash is None else "lines+markers", name=label,
                        legendgroup=family, error_y=err, line={"color": color, "dash": dash} if dash else None,
                        marker={"color": color, "size": 12 if dash is None else 9, "symbol": symbol},
                        customdata=grp["intervention"],
                        hovertemplate="%{customdata}<br>delta %{y:.3g}<extra></extra>", row=1, col=1)
    crossed = frame[structural & frame["family"].isin(families)]
    if len(crossed):
        ks |= set(crossed["k"].astype(int))
        fig.add_scatter(x=crossed["k"], y=crossed["delta"], mode="markers", legendgroup="structural",
                        name="structural null (crossed out): at or after the read-out layer, cannot change it",
                        marker={"symbol": "x-thin-open", "size": 14, "color": "#444", "line": {"width": 2}},
                        customdata=crossed["intervention"],
                        hovertemplate="%{customdata}<br>structural null, not tested<extra></extra>", row=1, col=1)
    layers = frame[frame["family"].isin(LAYER_FAMILIES)].sort_values(["family", "draw"], ascending=[False, True])
    if len(layers):
        names = [layer_intervention_label(f, int(k), int(d)) for f, k, d in
                 zip(layers["family"], layers["k"], layers["draw"])]
        is_structural = structural[layers.index].to_numpy()
        names = [f"{n} (structural)" if s else n for n, s in zip(names, is_structural)]
        err = {"type": "data", "symmetric": False, "array": (layers["ci_high"] - layers["delta"]).fillna(0),
               "arrayminus": (layers["delta"] - layers["ci_low"]).fillna(0)}
        fig.add_scatter(x=layers["delta"], y=names, mode="markers", name="whole layer / MLP (zero)", error_x=err,
                        marker={"symbol": np.where(is_structural, "x-thin-open", "diamond"), "size": 10,
                                "color": np.where(is_structural, "#444", "#7B3294"), "line": {"width": 2}},
                        customdata=layers["intervention"],
                        hovertemplate="%{y}<br>%{customdata}<br>delta %{x:.3g}<extra></extra>", row=1, col=2)
        fig.add_vline(x=0, line_dash="dot", line_color="grey", row=1, col=2)
        fig.update_yaxes(autorange="reversed", automargin=True, row=1, col=2)
        fig.update_xaxes(title={"text": f"delta {readout.replace('_', ' ')}"}, row=1, col=2)
    fig.add_hline(y=0, line_dash="dot", line_color="grey", row=1, col=1)
    ticks = sorted(ks)
    fig.update_xaxes(type="log", tickmode="array", tickvals=ticks, ticktext=[str(k) for k in ticks],
                     title={"text": "heads ablated (k)"}, row=1, col=1)
    fig.update_yaxes(title={"text": f"delta {readout.replace('_', ' ')}"}, row=1, col=1)
    fig.update_layout(title={"text": f"Ablation dose-response: change in {readout.replace('_', ' ')}<br><sup>"
                                     "intervened - unablated, paired per cell (per perturbation for perturbation AUROC); "
                                     "95% CI</sup>"},
                      height=520, margin={"t": 100}, legend={"orientation": "h", "y": -0.18, "yanchor": "top"})
    return fig


def _translucent(hex_colour: str, alpha: float = 0.18) -> str:
    r, g, b = (int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def fidelity_heatmap(frame: pd.DataFrame) -> go.Figure:
    """Intervention fidelity: mean per-cell hidden-state cosine distance to the baseline by layer (log colour);
    a row of zeros downstream of the intervention would mean it did nothing."""
    frame = frame.assign(label=[f"{f} k={k}" + (f" #{d}" if d >= 0 else "") for f, k, d in
                                zip(frame["family"], frame["k"], frame["draw"])])
    z = frame.pivot_table(index="label", columns="layer", values="hidden_cos_mean", sort=False)
    fig = go.Figure(go.Heatmap(z=np.log10(np.clip(z.to_numpy(), 1e-12, None)), x=[f"h{c}" for c in z.columns],
                               y=list(z.index), colorscale="Magma", colorbar={"title": "log10 cos dist"},
                               customdata=z.to_numpy(),
                               hovertemplate="%{y}<br>%{x}: %{customdata:.3g}<extra></extra>"))
    fig.update_layout(title={"text": "Intervention fidelity: hidden-state cosine distance to the unablated run<br>"
                                     "<sup>h0 = embeddings, hN = output of layer N-1; mean over cells</sup>"},
                      height=max(320, 18 * len(z) + 120), margin={"l": 200, "t": 80})
    return fig


CSSI_AGGREGATIONS = {"max": "CSSI-max", "mean": "CSSI-mean", "range": "CSSI-range (max - min)",
                     "deviation": "CSSI-deviation (max |stratum - pooled|)"}


def cssi_curve(frame: pd.DataFrame, *, metric: str, aggregation: str, site: str, reference: str, direction: str,
               selected: int | None = None) -> go.Figure:
    """Reference recovery vs number of strata for one site and aggregation: the CSSI score, the pooled score, and
    the random-strata null (5-95% band and mean). ``frame``: one row per n_strata with value, pooled, null_low,
    null_high, null_mean, p_random_strata and ``source`` (``grid`` precomputed, ``live`` computed in the app)."""
    frame = frame.sort_values("n_strata")
    label = "AUROC" if metric == "auroc" else "top-k F1 (k = reference edges)"
    fig = go.Figure()
    fig.add_scatter(x=frame["n_strata"], y=frame["null_high"], mode="lines", line={"width": 0}, showlegend=False,
                    hoverinfo="skip")
    fig.add_scatter(x=frame["n_strata"], y=frame["null_low"], mode="lines", line={"width": 0}, fill="tonexty",
                    fillcolor="rgba(140,140,140,0.3)", name="random strata, 5-95%", hoverinfo="skip")
    fig.add_scatter(x=frame["n_strata"], y=frame["null_mean"], mode="lines", line={"color": "grey", "dash": "dot"},
                    name="random strata, mean")
    fig.add_scatter(x=frame["n_strata"], y=frame["pooled"], mode="lines", line={"color": "black", "dash": "dash"},
                    name="pooled (all cells)")
    for source, color in (("grid", "#0072B2"), ("live", "#D55E00")):
        grp = frame[frame["source"] == source]
        if grp.empty:
            continue
        fig.add_scatter(x=grp["n_strata"], y=grp["value"], mode="lines+markers" if source == "grid" else "markers",
                        name=CSSI_AGGREGATIONS.get(aggregation, aggregation) + (" (computed here)" if source == "live"
                                                                                 else ""),
                        marker={"color": color, "size": 9 if source == "grid" else 12,
                                "symbol": "circle" if source == "grid" else "diamond"},
                        line={"color": color}, customdata=grp["p_random_strata"],
                        hovertemplate="%{x} strata: %{y:.4f}<br>random-strata p = %{customdata:.3g}<extra></extra>")
    if selected is not None:
        fig.add_vline(x=selected, line_color="#dd8452", line_width=2, annotation_text=f"{selected} strata")
    fig.update_layout(title={"text": f"{label} of {site} vs {reference}, by number of cell-state strata<br><sup>"
                                     f"{DIRECTION_LABELS.get(direction, direction)}</sup>"},
                      xaxis={"title": "number of strata", "dtick": 2}, yaxis={"title": label}, height=460,
                      margin={"t": 90}, legend={"orientation": "h", "y": -0.2})
    return fig


def cssi_embedding(frame: pd.DataFrame, *, n_strata: int, representation: str) -> go.Figure:
    """Cells in 2-D (``x``, ``y``) coloured by stratum (``frame``: x, y, stratum, cell_state)."""
    fig = go.Figure()
    for stratum, grp in frame.groupby("stratum", sort=True):
        fig.add_scattergl(x=grp["x"], y=grp["y"], mode="markers", name=f"stratum {stratum} ({len(grp)})",
                          marker={"size": 5, "opacity": 0.75}, text=grp["cell_state"],
                          hovertemplate="stratum " + str(stratum) + "<br>%{text}<extra></extra>")
    fig.update_layout(title={"text": f"Cells by stratum ({n_strata} strata)<br><sup>first two principal components "
                                     f"of the {representation}; strata = Leiden on its kNN graph</sup>"},
                      xaxis={"title": "PC1"}, yaxis={"title": "PC2"}, height=460, margin={"t": 90})
    return fig


def cssi_stratum_edges(frame: pd.DataFrame, *, site: str, direction: str) -> go.Figure:
    """Each stratum's top edges: rows = (TF, target) pairs in any stratum's top list, columns = strata, colour =
    the pair's score in that stratum's list (blank where it is not in it); reference edges starred."""
    frame = frame.assign(edge=[f"{'* ' if r else ''}{t} -> {g}" for t, g, r in
                               zip(frame["tf"], frame["target"], frame["in_reference"])])
    z = frame.pivot_table(index="edge", columns="stratum", values="score", sort=False)
    sizes = frame.groupby("stratum")["n_cells"].first()
    fig = go.Figure(go.Heatmap(z=z.to_numpy(), y=list(z.index), x=[f"S{s} ({sizes[s]})" for s in z.columns],
                               colorscale="Viridis", colorbar={"title": "score"},
                               hovertemplate="%{y}<br>%{x}: %{z:.4g}<extra></extra>"))
    fig.update_layout(title={"text": f"Top edges within each stratum: {site}<br><sup>* = reference edge; "
                                     f"{DIRECTION_LABELS.get(direction, direction)}; columns: stratum (cells)</sup>"},
                      yaxis={"autorange": "reversed"}, height=max(360, 14 * len(z) + 140),
                      margin={"l": 150, "t": 90})
    return fig


def cssi_synthetic(summary: pd.DataFrame) -> go.Figure:
    """Synthetic validation (Supplementary Note 11.1): CSSI-max / pooled top-k F1 ratio per configuration for
    oracle and learned strata, next to the paper's ratio."""
    fig = go.Figure()
    names = [f"{c} ({n} cells, {s} states)" for c, n, s in
             summary[["config", "n_cells", "n_states"]].drop_duplicates().itertuples(index=False)]
    for source, color in (("oracle", "#4c72b0"), ("learned", "#55a868")):
        grp = summary[summary["strata"] == source]
        fig.add_bar(x=names, y=grp["ratio"], name=f"ours, {source} strata", marker_color=color,
                    customdata=grp[["pooled_f1", "cssi_f1"]].to_numpy(),
                    hovertemplate="%{x}<br>ratio %{y:.2f}<br>pooled F1 %{customdata[0]:.3f}, CSSI-max F1 "
                                  "%{customdata[1]:.3f}<extra></extra>")
    paper = summary.drop_duplicates("config")
    fig.add_bar(x=names, y=paper["paper_ratio"], name="paper (Suppl. Table S5)", marker_color="#8c8c8c")
    fig.add_hline(y=1, line_dash="dot", line_color="grey")
    fig.update_layout(title={"text": "Synthetic validation: CSSI-max / pooled top-k F1 on state-specific networks<br>"
                                     "<sup>Spearman edges; mean over seeds; k = number of true edges</sup>"},
                      barmode="group", yaxis={"title": "F1 ratio"}, height=440, margin={"t": 90})
    return fig


SERIES_COLOURS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00")   # Okabe-Ito: colour-blind safe
SERIES_SYMBOLS = ("circle", "square", "diamond", "triangle-up", "x", "star")


def series_style(i: int) -> tuple[str, str]:
    """(colour, marker symbol) of the i-th run or reference in a figure: told apart by marker as well as colour."""
    return SERIES_COLOURS[i % len(SERIES_COLOURS)], SERIES_SYMBOLS[i % len(SERIES_SYMBOLS)]


def compare_layer_profiles(frame: pd.DataFrame, *, value: str, title: str, y_title: str,
                           reference_line: tuple[float, str] | None = (0.5, "chance")) -> go.Figure:
    """One line per run of ``value`` against relative depth (rows: run, relative_depth, ``value``, kind =
    ``attention`` or a baseline name drawn as a dashed line in the run's colour); ``reference_line``: (y, label)
    of a dotted line (chance for AUROCs), or None."""
    fig = go.Figure()
    for i, (run, grp) in enumerate(frame.groupby("run", sort=False)):
        colour, symbol = series_style(i)
        att = grp[grp["kind"] == "attention"].sort_values("relative_depth")
        fig.add_scatter(x=att["relative_depth"], y=att[value], mode="lines+markers", name=f"{run}: attention",
                        line={"color": colour}, marker={"symbol": symbol, "size": 8}, customdata=att["layer"],
                        hovertemplate="L%{customdata} (depth %{x:.2f}): %{y:.3f}<extra>" + run + "</extra>")
        for j, (kind, base) in enumerate(grp[grp["kind"] != "attention"].groupby("kind", sort=False)):
            level = float(base[value].iloc[0])            # the value in the name: equal baselines overlap exactly
            fig.add_scatter(x=[0, 1], y=[level] * 2, mode="lines", name=f"{run}: {kind} {level:.3f}",
                            line={"color": colour, "dash": ("dash", "dot", "dashdot")[j % 3], "width": 1.5},
                            hovertemplate=f"{run}: {kind} {level:.3f}<extra></extra>")
    if reference_line is not None:
        fig.add_hline(y=reference_line[0], line_color="grey", line_dash="dot", annotation_text=reference_line[1])
    fig.update_layout(title={"text": title}, xaxis={"title": "relative depth (layer / (layers - 1))",
                                                   "range": [-0.03, 1.03]},
                      yaxis={"title": y_title}, height=440, margin={"t": 80}, legend={"font": {"size": 10}})
    return fig


SCALING_METRICS = {"auroc": "AUROC", "f1": "top-k F1 (k = reference edges)"}


def scaling_curves(curve: pd.DataFrame, boot: pd.DataFrame | None, *, readout_layer: int, reference: str
                   ) -> go.Figure:
    """Recovery against the number of cells (two panels: AUROC, top-k F1) for the read-out layer's head mean and
    Spearman correlation: per seed a thin line (nested subsamples), the mean in bold, and the group-bootstrap 95% CI
    of AUROC as a band (``curve``: schema ``scaling_curve`` of one reference; ``boot``: ``scaling_bootstrap``)."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=list(SCALING_METRICS.values()), horizontal_spacing=0.1)
    sites = ((("attention_layer_mean", readout_layer), f"L{readout_layer} head mean", "#4c72b0"),
             (("spearman", -1), "Spearman", "#dd8452"))
    for (etype, layer), label, colour in sites:
        sel = curve[(curve["edge_type"] == etype) & (curve["layer"] == layer)]
        for col, metric in enumerate(SCALING_METRICS, start=1):
            m = sel[sel["metric"] == metric]
            for seed, grp in m.groupby("seed"):
                grp = grp.sort_values("n_cells")
                fig.add_scatter(x=grp["n_cells"], y=grp["value"], mode="lines", line={"color": colour, "width": 0.7},
                                opacity=0.45, showlegend=False, hoverinfo="skip", row=1, col=col)
            mean = m.groupby("n_units").agg(n_cells=("n_cells", "mean"), value=("value", "mean")).reset_index()
            fig.add_scatter(x=mean["n_cells"], y=mean["value"], mode="lines+markers", name=label,
                            line={"color": colour, "width": 3}, showlegend=col == 1, legendgroup=label,
                            row=1, col=col)
        if boot is not None:
            b = boot[(boot["edge_type"] == etype) & (boot["layer"] == layer)].sort_values("n_cells")
            if len(b):
                fig.add_scatter(x=list(b["n_cells"]) + list(b["n_cells"])[::-1],
                                y=list(b["ci_high"]) + list(b["ci_low"])[::-1], fill="toself", line={"width": 0},
                                fillcolor=colour, opacity=0.15, name=f"{label}: bootstrap 95% CI", row=1, col=1)
    fig.update_xaxes(title_text="cells in the subsample")
    fig.update_layout(title={"text": f"Recovery of {reference} against the number of cells (thin: seeds)"},
                      height=420, margin={"t": 90})
    return fig


def composition_plot(table: pd.DataFrame, *, reference: str) -> go.Figure:
    """Controlled composition (Spearman edges): AUROC against n for one state and for a fixed mixture, and against
    the number of states at fixed n; per-seed points and the mean."""
    fig = make_subplots(rows=1, cols=3, subplot_titles=["one cell state", "fixed mixture", "more states, fixed n"],
                        horizontal_spacing=0.08)
    for col, (condition, x) in enumerate((("single_state", "n_cells"), ("fixed_mixture", "n_cells"),
                                          ("heterogeneity", "n_states")), start=1):
        sel = table[table["condition"] == condition]
        if sel.empty:
            continue
        fig.add_scatter(x=sel[x], y=sel["auroc"], mode="markers", marker={"color": "#8172b2", "size": 6,
                                                                           "opacity": 0.5},
                        showlegend=False, row=1, col=col)
        mean = sel.groupby(x)["auroc"].mean().reset_index()
        fig.add_scatter(x=mean[x], y=mean["auroc"], mode="lines", line={"color": "#8172b2", "width": 3},
                        showlegend=False, row=1, col=col)
        fig.update_xaxes(title_text="states" if x == "n_states" else "cells", row=1, col=col)
    fig.update_yaxes(title_text="Spearman AUROC", row=1, col=1)
    fig.update_layout(title={"text": f"Controlled composition, correlation edges vs {reference} (states from "
                                     f"{table['states_from'].iloc[0] if len(table) else '-'})"},
                      height=380, margin={"t": 90})
    return fig


def biology_profiles(frame: pd.DataFrame) -> go.Figure:
    """SN17: AUROC of each layer's head mean against every reference read as pairs (solid: pair references such
    as STRING; dashed: regulatory references), with each reference's Spearman baseline as a dotted line."""
    fig = go.Figure()
    for i, (ref, grp) in enumerate(frame.groupby("reference", sort=False)):
        colour, symbol = series_style(i)
        att = grp[grp["edge_type"] == "attention_layer_mean"].sort_values("layer")
        dash = "solid" if grp["kind"].iloc[0] == "pairs" else "dash"
        fig.add_scatter(x=att["layer"], y=att["auroc"], mode="lines+markers", name=f"{ref} ({grp['kind'].iloc[0]})",
                        line={"color": colour, "dash": dash}, marker={"symbol": symbol, "size": 8})
        corr = grp[grp["edge_type"] == "spearman"]
        if len(corr) and len(att):
            level = float(corr["auroc"].iloc[0])
            fig.add_scatter(x=[att["layer"].min(), att["layer"].max()], y=[level, level], mode="lines",
                            name=f"Spearman baseline, {ref}: {level:.3f}", line={"color": colour, "dash": "dot",
                                                                                  "width": 1.5},
                            hovertemplate=f"Spearman baseline, {ref}: {level:.3f}<extra></extra>")
    fig.add_hline(y=0.5, line_color="grey", line_dash="dot", annotation_text="chance")
    fig.update_layout(title={"text": "Layer-wise recovery over all universe gene pairs (dotted: each reference's "
                                     "Spearman baseline)"},
                      xaxis={"title": "layer", "dtick": 1}, yaxis={"title": "AUROC (pairs, undirected)"},
                      height=420, margin={"t": 80})
    return fig


def ci_forest(frame: pd.DataFrame, *, label: str, value: str, title: str, x_title: str, null: float) -> go.Figure:
    """Point estimates with 95% CIs as horizontal bars, one row per ``label`` (columns ``value``, ci_low,
    ci_high); rows whose CI excludes ``null`` are drawn dark."""
    frame = frame.reset_index(drop=True)
    excludes = (frame["ci_low"] > null) | (frame["ci_high"] < null)
    fig = go.Figure(go.Scatter(
        x=frame[value], y=frame[label], mode="markers",
        error_x={"type": "data", "symmetric": False, "array": frame["ci_high"] - frame[value],
                 "arrayminus": frame[value] - frame["ci_low"]},
        marker={"color": np.where(excludes, "#1f3b73", "#9aa9c7"), "size": 8},
        hovertemplate="%{y}: %{x:.3f}<extra></extra>"))
    fig.add_vline(x=null, line_color="grey", line_dash="dot")
    fig.update_layout(title={"text": title}, xaxis={"title": x_title},
                      yaxis={"autorange": "reversed", "type": "category"},
                      height=max(300, 22 * len(frame) + 120), margin={"t": 70, "l": 180})
    return fig


def replication_profile(table: pd.DataFrame) -> go.Figure:
    """Cross-context replication: per run, the mean per-perturbation advantage of each layer's attention over
    correlation (perturbation-first AUROC) with its perturbation-bootstrap 95% CI, at relative depth."""
    fig = go.Figure()
    for i, (run, grp) in enumerate(table.groupby("run", sort=False)):
        grp = grp.sort_values("relative_depth")
        colour, symbol = series_style(i)
        fig.add_scatter(x=grp["relative_depth"], y=grp["advantage"], mode="lines+markers", name=run,
                        line={"color": colour}, marker={"symbol": symbol, "size": 8}, customdata=grp[["layer", "n"]],
                        error_y={"type": "data", "symmetric": False, "array": grp["ci_high"] - grp["advantage"],
                                 "arrayminus": grp["advantage"] - grp["ci_low"]},
                        hovertemplate="L%{customdata[0]}: %{y:+.3f} (%{customdata[1]} perturbations)<extra>"
                                      + run + "</extra>")
    fig.add_hline(y=0, line_color="grey", line_dash="dot", annotation_text="attention = correlation")
    fig.update_layout(title={"text": "Attention advantage over correlation per layer (95% bootstrap CI)"},
                      xaxis={"title": "relative depth", "range": [-0.03, 1.03]},
                      yaxis={"title": "mean AUROC(attention) - AUROC(correlation)"}, height=420, margin={"t": 80})
    return fig


def convergence_plot(frame: pd.DataFrame) -> go.Figure:
    """Cross-model convergence (SN13): unstratified AUROC against the number of cells with group-bootstrap 95% CIs,
    per run (rows: run, kind = ``attention`` (read-out layer) or ``correlation``, n_cells, auroc_mean, ci_low,
    ci_high)."""
    fig = go.Figure()
    for i, (run, grp) in enumerate(frame.groupby("run", sort=False)):
        colour, symbol = series_style(i)
        for kind, sub in grp.groupby("kind", sort=False):
            sub = sub.sort_values("n_cells")
            fig.add_scatter(x=sub["n_cells"], y=sub["auroc_mean"], mode="lines+markers", name=f"{run}: {kind}",
                            line={"color": colour, "dash": "solid" if kind == "attention" else "dash"},
                            marker={"symbol": symbol, "size": 8},
                            error_y={"type": "data", "symmetric": False, "array": sub["ci_high"] - sub["auroc_mean"],
                                     "arrayminus": sub["auroc_mean"] - sub["ci_low"]})
    fig.add_hline(y=0.5, line_color="grey", line_dash="dot", annotation_text="chance")
    fig.update_layout(title={"text": "Unstratified recovery against the number of cells (bootstrap 95% CI)"},
                      xaxis={"title": "cells", "type": "log"}, yaxis={"title": "AUROC (read-out layer / Spearman)"},
                      height=420, margin={"t": 80}, legend={"font": {"size": 10}})
    return fig


def feature_map(frame: pd.DataFrame, *, layer: int) -> go.Figure:
    """Every SAE feature of one layer: how often it fires (x, log) against its mean activation when it fires (y);
    features aligned with a top singular direction of the activations (visible to SVD) in orange."""
    fig = go.Figure()
    for visible, grp in frame.groupby("svd_visible", sort=True):
        fig.add_scattergl(x=grp["firing_rate"], y=grp["mean_activation"], mode="markers",
                          name="visible to SVD" if visible else "not visible to SVD",
                          marker={"size": 6, "opacity": 0.7, "color": "#ff7f0e" if visible else "#1f77b4"},
                          customdata=grp["feature"].tolist(), text=grp["top_genes"],
                          hovertemplate="feature %{customdata}<br>fires on %{x:.2%}<br>mean %{y:.3g}<br>%{text}"
                                        "<extra></extra>")
    fig.update_layout(title={"text": f"L{layer} SAE features<br><sup>click one for its card</sup>"},
                      xaxis={"title": "firing rate (share of gene positions)", "type": "log"},
                      yaxis={"title": "mean activation when firing"}, height=420, margin={"t": 80})
    return fig


def feature_genes(frame: pd.DataFrame, *, layer: int, feature: int) -> go.Figure:
    """One feature's genes by mean activation over their positions (``frame``: symbol, mean_activation)."""
    fig = go.Figure(go.Bar(x=frame["mean_activation"], y=frame["symbol"], orientation="h",
                           hovertemplate="%{y}: %{x:.3g}<extra></extra>"))
    fig.update_layout(title={"text": f"L{layer} feature {feature}: where it fires<br><sup>mean activation over each "
                                     "gene's positions in the captured cells</sup>"},
                      xaxis={"title": "mean activation"}, yaxis={"autorange": "reversed"},
                      height=max(260, 22 * len(frame) + 120), margin={"t": 80})
    return fig


def programme_matches(frame: pd.DataFrame, *, layer: int) -> go.Figure:
    """Per cell programme: the best feature's correlation with it, and the shuffled-activation SAE's (the null)."""
    fig = go.Figure(go.Bar(x=frame["programme"], y=frame["r"], name="best feature", customdata=frame["best_feature"],
                           hovertemplate="%{x}: r %{y:.3f} (feature %{customdata})<extra></extra>"))
    if frame["null_r"].notna().any():
        fig.add_bar(x=frame["programme"], y=frame["null_r"], name="shuffled activations (null)",
                    marker={"color": "#bbbbbb"})
    fig.update_layout(title={"text": f"L{layer}: cell programmes<br>tracked by a feature<br><sup>Pearson r of the "
                                     "best feature's per-cell activity<br>with each cell state and TF regulon "
                                     "activity</sup>"},
                      yaxis={"title": "r"}, barmode="group", height=420, margin={"t": 120})
    return fig


def feature_dose_response(frame: pd.DataFrame, *, readout: str) -> go.Figure:
    """Live SAE feature edits (schema ``feature_edit_results``, one read-out): the change against the unedited model
    (``delta``, with its 95% CI where the read-out is paired per cell) vs the scale the features were multiplied by
    (0: ablated, 1: unchanged), one line per layer's feature set and number of cells."""
    fig = go.Figure()
    for (layer, features, n_cells), grp in frame.groupby(["layer", "features", "n_cells"], sort=True):
        grp = grp.sort_values("scale")
        err = {"type": "data", "symmetric": False, "array": (grp["ci_high"] - grp["delta"]).fillna(0),
               "arrayminus": (grp["delta"] - grp["ci_low"]).fillna(0)}
        fig.add_scatter(x=grp["scale"], y=grp["delta"], mode="lines+markers",
                        name=f"L{layer} [{features}], {n_cells} cells",
                        error_y=err, customdata=grp[["intervention", "p", "n_cells"]],
                        hovertemplate="%{customdata[0]}<br>delta %{y:.4g}<br>p %{customdata[1]:.3g}<extra></extra>")
    structural = frame[frame["structural"].astype(bool)]
    if len(structural):
        fig.add_scatter(x=structural["scale"], y=structural["delta"], mode="markers",
                        name="structural: at the last layer an edit moves only the positions it edits",
                        marker={"symbol": "x-thin-open", "size": 16, "color": "#444", "line": {"width": 2}},
                        customdata=structural[["intervention", "p", "n_cells"]],
                        hovertemplate="%{customdata[0]}<br>structural (not tested)<extra></extra>")
    fig.add_vline(x=1, line={"dash": "dot", "color": "#999"})
    fig.update_layout(title={"text": f"Feature edits: change of {readout.replace('_', ' ')}<br><sup>features scaled "
                                     "through the SAE, error term kept (scale 1 = the model as it is)</sup>"},
                      xaxis={"title": "scale of the edited features' activations"},
                      yaxis={"title": "own genes - other genes" if readout.startswith("specificity")
                             else f"delta {readout.replace('_', ' ')}"}, height=400, margin={"t": 80})
    return fig


def feature_specificity(frame: pd.DataFrame, *, intervention: str) -> go.Figure:
    """One feature edit's prediction change per gene (schema ``feature_edit_genes``): the edited features' own
    genes against every other gene of the cells (causal specificity)."""
    fig = go.Figure()
    for own, (label, color) in ((True, ("own genes", "#dd8452")), (False, ("other genes", "#4c72b0"))):
        grp = frame[frame["own"] == own]
        fig.add_box(y=grp["mean_change"], name=f"{label} ({len(grp)})", boxpoints="all", jitter=0.4, pointpos=0,
                    marker={"color": color, "size": 5}, text=grp["symbol"],
                    hovertemplate="%{text}: %{y:.4g}<extra></extra>")
    fig.update_layout(title={"text": f"{intervention}: every gene's prediction change<br><sup>mean over the gene's "
                                     "positions in the cells</sup>"}, yaxis={"title": "prediction change"},
                      showlegend=False, height=400, margin={"t": 80})
    return fig


def feature_modules(features: pd.DataFrame, edges: pd.DataFrame, *, layer: int) -> go.Figure:
    """One layer's co-activation graph (``features``: schema ``sae_features``; ``edges``: ``sae_coactivation``):
    features with an edge at their layout position, coloured by module (grey: in no module), edges as lines."""
    placed = features[features["module_x"].notna()]
    where = placed.set_index("feature")[["module_x", "module_y"]]
    fig = go.Figure()
    if len(edges):
        a, b = where.loc[edges["a"]].to_numpy(), where.loc[edges["b"]].to_numpy()
        xs = np.column_stack([a[:, 0], b[:, 0], np.full(len(a), np.nan)]).ravel()
        ys = np.column_stack([a[:, 1], b[:, 1], np.full(len(a), np.nan)]).ravel()
        fig.add_scattergl(x=xs, y=ys, mode="lines", line={"color": "rgba(120,120,120,0.35)", "width": 1},
                          hoverinfo="skip", name="r >= threshold")
    for module, grp in placed.groupby("module", sort=True):
        fig.add_scattergl(x=grp["module_x"], y=grp["module_y"], mode="markers",
                          name="no module" if module < 0 else f"module {module} ({len(grp)})",
                          marker={"size": 8, "color": "#bbbbbb" if module < 0 else None},
                          customdata=grp["feature"].tolist(), text=grp["top_genes"],
                          hovertemplate="feature %{customdata}<br>%{text}<extra></extra>")
    n_modules = int(features["module"].max() + 1) if len(features) else 0
    fig.update_layout(title={"text": f"L{layer}: {n_modules} co-activation modules<br><sup>features joined where their "
                                     "activations correlate over gene positions; click one for its card</sup>"},
                      xaxis={"visible": False}, yaxis={"visible": False}, height=460, margin={"t": 80})
    return fig


def regulatory_counts(frame: pd.DataFrame, *, run_label: str = "") -> go.Figure:
    """The CRISPRi regulatory test per layer (schema ``sae_regulatory``): TFs whose responding features prefer their
    targets (BH q < 0.05), against the same count with each TF's features tested on another TF's targets."""
    counts = frame.groupby("layer").agg(n=("tf", "size"), passing=("passes", "sum"),
                                        rotated=("rotated_passes", "sum")).reset_index()
    fig = go.Figure()
    fig.add_bar(x=counts["layer"].map(lambda l: f"L{l}"), y=counts["passing"], name="own targets",
                text=[f"{p} of {n}" for p, n in zip(counts["passing"], counts["n"])], textposition="outside")
    fig.add_bar(x=counts["layer"].map(lambda l: f"L{l}"), y=counts["rotated"], name="another TF's targets (null)",
                marker={"color": "#bbbbbb"})
    fig.update_layout(title={"text": f"{run_label}CRISPRi regulatory test: TFs passing per layer<br><sup>features "
                                     "responding to the knock-down prefer the TF's reference targets (BH q < 0.05 "
                                     "against random feature sets)</sup>"}, barmode="group",
                      yaxis={"title": "TFs passing", "rangemode": "tozero"}, height=380, margin={"t": 80})
    return fig


def feature_depth_profile(frame: pd.DataFrame) -> go.Figure:
    """The Compare page's SAE summary (``analysis.scoring.compare.feature_summary`` rows with ``run``) against
    relative depth: fraction of variance explained, and the share of knocked-down TFs passing the regulatory test
    (own targets, solid; another TF's targets, dotted)."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=["reconstruction (fraction of variance explained)",
                                                        "regulatory test: share of TFs passing"],
                        horizontal_spacing=0.12)
    for i, (run, grp) in enumerate(frame.groupby("run", sort=False)):
        color, symbol = series_style(i)
        grp = grp.sort_values("relative_depth")
        fig.add_scatter(x=grp["relative_depth"], y=grp["fve"], mode="lines+markers", name=run, legendgroup=run,
                        line={"color": color}, marker={"symbol": symbol, "size": 8}, row=1, col=1)
        if grp["regulatory_tfs"].notna().any():
            share = grp["regulatory_passing"] / grp["regulatory_tfs"]
            fig.add_scatter(x=grp["relative_depth"], y=share, mode="lines+markers", name=f"{run}: own targets",
                            legendgroup=run, showlegend=False, line={"color": color}, row=1, col=2)
            fig.add_scatter(x=grp["relative_depth"], y=grp["regulatory_null"] / grp["regulatory_tfs"],
                            mode="lines+markers", name=f"{run}: another TF's targets", legendgroup=run,
                            showlegend=False, line={"color": color, "dash": "dot"}, row=1, col=2)
    fig.update_xaxes(title_text="relative depth", range=[-0.05, 1.05])
    fig.update_yaxes(range=[0, 1.05])
    fig.update_layout(height=380, margin={"t": 60})
    return fig


def feature_cells(positions: pd.DataFrame, genes: list[str], *, layer: int, feature: int, n_cells: int = 30
                  ) -> go.Figure:
    """Where one feature fires, genes x cells (``positions``: cell, state, symbol, activation at every captured
    position where it fired): its ``genes`` (rows, strongest first) over the ``n_cells`` cells where its summed
    activation on them is largest (columns, labelled by cell state); 0 where it did not fire or the gene is absent."""
    mine = positions[positions["symbol"].isin(genes)]
    order = mine.groupby("cell")["activation"].sum().sort_values(ascending=False, kind="stable").index[:n_cells]
    grid = (mine[mine["cell"].isin(order)].pivot_table(index="symbol", columns="cell", values="activation",
                                                        aggfunc="max").reindex(index=genes, columns=order)
            .fillna(0.0))
    states = positions.drop_duplicates("cell").set_index("cell")["state"]
    labels = [f"{c} {states.get(c, '')}".strip() for c in grid.columns]
    fig = go.Figure(go.Heatmap(z=grid.to_numpy(), x=labels, y=list(grid.index), colorscale="Viridis",
                               colorbar={"title": "activation"},
                               hovertemplate="%{y} in cell %{x}: %{z:.3g}<extra></extra>"))
    fig.update_layout(title={"text": f"L{layer} feature {feature}: genes x cells<br><sup>its strongest genes over the "
                                     f"{len(order)} cells where it fires most on them (cell index and state)</sup>"},
                      yaxis={"autorange": "reversed"}, xaxis={"tickangle": -60},
                      height=max(300, 20 * len(genes) + 160), margin={"t": 80, "b": 110})
    return fig


def superposition(frame: pd.DataFrame, *, layer: int, threshold: float, directions: int) -> go.Figure:
    """The superposition check of one layer (``frame``: schema ``sae_features``): each live feature's largest |cos|
    between its decoder direction and one of the activations' top ``directions`` singular directions; those at or
    above ``threshold`` are visible to SVD, the rest are directions SVD cannot show."""
    live = frame[~frame["dead"]]
    visible = int((live["max_svd_cos"] >= threshold).sum())
    fig = go.Figure(go.Histogram(x=live["max_svd_cos"], xbins={"start": 0, "end": 1.0001, "size": 0.025},
                                 marker={"color": "#4c72b0"}, hovertemplate="|cos| %{x}: %{y} features<extra></extra>"))
    fig.add_vline(x=threshold, line={"dash": "dash", "color": "#c44e52"},
                  annotation_text=f"visible to SVD: {visible} of {len(live)}", annotation_position="top left")
    fig.update_layout(title={"text": f"L{layer} superposition: {1 - visible / max(len(live), 1):.1%}<br>of live "
                                     f"features invisible to SVD<br><sup>largest |cos| of each decoder direction "
                                     f"with<br>the top {directions} singular directions</sup>"},
                      xaxis={"title": "max |cos| with a top singular direction", "range": [0, 1]},
                      yaxis={"title": "features"}, height=440, margin={"t": 120}, showlegend=False)
    return fig
