"""Pure figure functions: tidy frame / array in, ``go.Figure`` out (no Dash, no I/O).

Every figure states what rows, columns and colours mean, including the attention direction, so an exported
figure stands on its own in a paper.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

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


def layer_profile(frame: pd.DataFrame, *, metric: str, reference: str, direction: str) -> go.Figure:
    """Per layer: best head, head median, and layer-mean attention; Spearman baseline and chance as lines."""
    heads = frame[frame["edge_type"] == "attention"]
    per_layer = heads.groupby("layer")["value"].agg(["max", "median"]).reset_index()
    layer_mean = frame[frame["edge_type"] == "attention_layer_mean"].sort_values("layer")
    fig = go.Figure()
    fig.add_scatter(x=per_layer["layer"], y=per_layer["max"], mode="lines+markers", name="best head")
    fig.add_scatter(x=per_layer["layer"], y=per_layer["median"], mode="lines+markers", name="median head")
    fig.add_scatter(x=layer_mean["layer"], y=layer_mean["value"], mode="lines+markers", name="layer mean (heads averaged)")
    spearman = frame.loc[frame["edge_type"] == "spearman", "value"]
    if len(spearman):
        fig.add_hline(y=float(spearman.iloc[0]), line_dash="dash", annotation_text="Spearman correlation")
    if metric in CHANCE:
        fig.add_hline(y=CHANCE[metric], line_dash="dot", line_color="grey", annotation_text="chance")
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
