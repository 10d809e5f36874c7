"""The SAE stage (issue 14; the companion paper's TopK sparse autoencoders of the residual stream): capture the
residual stream after each chosen layer at the gene positions of the attention cells (on disk, memory flat in cells:
:func:`analysis.interp.residual.capture_residual_stream`), train one TopK SAE per layer from batches read back from
disk (:func:`analysis.interp.sae.train_sae`), and record per layer the reconstruction quality (fraction of variance
explained; the behaviour read-out on the ablation's fixed masking with the SAE's reconstruction spliced in), dead
and dense features, and how many features align with the activations' top singular directions (superposition).
Cell programmes (the positive control on the embedded default, whose states and network are the simulation's
truth): each feature's activity per cell against each cell state's indicator and each reference TF's activity read
from its regulon's expression; the best feature's correlation per layer, and on the read-out layer the same for an
SAE trained on the activations with every dimension shuffled across rows (the null: same marginals, no structure).

Written into the run: ``sae_layers`` and ``sae_features`` tables, each layer's weights (``sae_L<l>.npz``) and its
latents at every captured row (``sae_latents_L<l>.npz``, the ``k`` active features per row) with the rows' cells
and genes (``sae_rows.npz``). The dense activations are deleted once the SAEs are trained (the latents and weights
hold what the app needs)."""
from __future__ import annotations

import logging
import shutil
import time

import numpy as np
import pandas as pd

from ..config import stable_hash
from ..interp.ablation import prepare as ablation_inputs
from ..interp.residual import capture_residual_stream
from ..interp.sae import TopKSAE, TrainingReport, save_sae, train_sae
from ..interp.sae_splice import behaviour_with_reconstruction
from ..io import files
from ..io.activations import ActivationStore, shuffled_copy
from ..io.expression import expression_matrix
from ..io.artifacts import RunWriter
from ..scoring.registry import StatsRegistry
from ..scoring.sae_features import best_feature_match, cell_feature_activity, feature_gene_means, regulon_activity
from .inputs import Inputs
from .timing import timed

log = logging.getLogger("precompute")
N_TOP_GENES = 5
MIN_TARGETS = 3   # a reference TF's activity is read from at least this many targets in the panel


def capture_cells(n_cells: int, genes_per_cell: float, n_layers: int, d_model: int, max_gib: float,
                  seed: int) -> np.ndarray:
    """Indices of the cells whose activations are captured: every cell, or a seeded subsample so that ``n_layers``
    layers of ``[rows, d_model]`` float32 fit in ``max_gib``."""
    per_cell = max(genes_per_cell, 1.0) * n_layers * d_model * 4
    keep = min(n_cells, max(1, int(max_gib * 2 ** 30 // per_cell)))
    if keep == n_cells:
        return np.arange(n_cells)
    return np.sort(np.random.default_rng([seed, 17]).choice(n_cells, keep, replace=False))


def svd_alignment(decoder: np.ndarray, cov: np.ndarray, variance: float) -> tuple[int, np.ndarray]:
    """(how many top singular directions of the centred activations explain ``variance`` of their variance, each
    feature's largest |cos| with one of them ``[F]``); ``decoder`` ``[d, F]`` has unit columns. The singular
    directions are the covariance's eigenvectors."""
    values, vectors = np.linalg.eigh(cov)
    order = np.argsort(values)[::-1]
    values, vectors = np.clip(values[order], 0, None), vectors[:, order]
    share = np.cumsum(values) / max(values.sum(), 1e-300)
    r = int(np.searchsorted(share, variance) + 1)
    return r, np.abs(vectors[:, :r].T @ decoder).max(axis=0)


def layer_tables(layer: int, sae: TopKSAE, report: TrainingReport, store: ActivationStore, cfg, symbols: np.ndarray,
                 behaviour: tuple[np.ndarray, np.ndarray], seconds: float, n_cells: int) -> tuple[dict, pd.DataFrame]:
    """One ``sae_layers`` row and the layer's ``sae_features`` rows."""
    decoder = sae.W_dec.detach().numpy()
    r, max_cos = svd_alignment(decoder, report.covariance, cfg.svd_variance)
    indices, values = report.indices, report.values
    means, _ = feature_gene_means(indices, values, store.row_gene, len(symbols), sae.n_features)
    top = np.argsort(-means, axis=1, kind="stable")[:, :N_TOP_GENES]
    firing = report.firing_rate
    fired_sum = np.bincount(indices.ravel(), weights=values.ravel().astype(np.float64), minlength=sae.n_features)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_activation = np.where(firing > 0, fired_sum / (firing * store.n_rows), np.nan)
    features = pd.DataFrame({
        "layer": layer, "feature": np.arange(sae.n_features), "firing_rate": firing,
        "mean_activation": mean_activation, "max_svd_cos": max_cos, "svd_visible": max_cos >= cfg.svd_cos,
        "dead": firing == 0, "dense": firing > cfg.dense_rate,
        "top_genes": [", ".join(symbols[g] for g in row if means[f, g] > 0) for f, row in enumerate(top)]})
    plain, spliced = behaviour
    row = {"layer": layer, "d_model": store.d_model, "n_features": sae.n_features, "k": sae.k,
           "n_rows": store.n_rows, "n_cells": n_cells, "epochs": cfg.epochs,
           "final_loss": float(np.mean(report.losses[-10:])),
           "fraction_variance_explained": report.fraction_variance_explained,
           "n_dead": int((firing == 0).sum()), "n_dense": int((firing > cfg.dense_rate).sum()),
           "svd_directions": r, "n_svd_visible": int((max_cos >= cfg.svd_cos).sum()),
           "behaviour_loss": float(plain.mean()), "behaviour_loss_spliced": float(spliced.mean()),
           "behaviour_delta": float((spliced - plain).mean()), "train_seconds": seconds}
    return row, features


def cell_programmes(inp: Inputs, panel: pd.DataFrame, cells: np.ndarray) -> tuple[pd.DataFrame, list[str]]:
    """(``[captured cells, programmes]``, each programme's kind): an indicator per cell state (the data's cell-state
    column) and, per TF of the first reference with at least :data:`MIN_TARGETS` targets in the panel, its regulon
    activity (activated targets' mean z-score minus repressed ones', log1p CP10k of the attention cells)."""
    data = inp.attention_cell_data
    columns, kinds = {}, []
    if data.cell_state_col:
        states = data.obs[data.cell_state_col].astype(str).to_numpy()[cells]
        for state in sorted(set(states)):
            columns[f"state {state}"] = (states == state).astype(float)
            kinds.append("cell_state")
    if inp.references:
        index = {s: i for i, s in enumerate(panel["symbol"])}
        edges = inp.references[0].edges
        edges = edges[edges["tf"].isin(index) & edges["target"].isin(index) & (edges["tf"] != edges["target"])]
        targets = {tf: (group.loc[group["mode"] != "Repression", "target"].map(index).to_numpy(),
                        group.loc[group["mode"] == "Repression", "target"].map(index).to_numpy())
                   for tf, group in edges.groupby("tf") if len(group) >= MIN_TARGETS}
        if targets:
            expression = expression_matrix(data, panel["gene_id"].to_numpy())[cells]
            for tf, values in regulon_activity(expression, targets).items():
                columns[f"TF {tf}"] = values.to_numpy()
                kinds.append("tf_activity")
    return pd.DataFrame(columns), kinds


def programme_rows(layer: int, report: TrainingReport, row_cell: np.ndarray, n_features: int,
                   programmes: pd.DataFrame, kinds: list[str], null: TrainingReport | None = None) -> pd.DataFrame:
    """``sae_programmes`` rows of one layer from the latents of its SAE's report (``null``: the shuffled-activation
    SAE's report, or None); ``row_cell``: each latent row's captured cell."""
    n_cells = len(programmes)

    def best(rep: TrainingReport) -> pd.DataFrame:
        activity = cell_feature_activity(rep.indices, rep.values, row_cell, n_cells, n_features)
        return best_feature_match(activity, programmes)

    table = best(report).assign(layer=layer, kind=kinds, n_cells=n_cells)
    table["null_r"] = best(null)["r"].to_numpy() if null is not None else np.nan
    return table


def stage(inp: Inputs, panel: pd.DataFrame, writer: RunWriter, run_key: str, progress: bool) -> StatsRegistry:
    """Train and describe the run's SAEs (module doc); nothing when ``sae.run`` leaves this run out. ``panel``: the
    attention store's panel (the behaviour read-out's masking is the ablation's)."""
    cfg = inp.cfg.sae
    if not cfg.active(embedded_model=inp.cfg.model.path is None):
        log.info("SAE stage skipped (sae.run = %s; set sae.run=on to train SAEs of your model)", cfg.run)
        return StatsRegistry()
    key = stable_hash({"run": run_key, "stage": "sae"})
    if writer.is_done("sae", key):
        writer.mark_done("sae", key, 0.0, skipped=True)
        return StatsRegistry()
    adapter, tokens = inp.adapter, inp.attention_tokens
    layers = cfg.layers or tuple(range(adapter.n_layers))   # checked against the model by inputs.check_sae
    n_features = cfg.expansion * adapter.d_model
    t0 = time.perf_counter()
    with timed(f"SAE ({len(layers)} layer(s), {n_features} features, k {cfg.k}, {cfg.epochs} epochs)"):
        genes_per_cell = float((tokens.gene_index >= 0).sum(axis=1).mean())
        cells = capture_cells(tokens.n_cells, genes_per_cell, len(layers), adapter.d_model, cfg.max_gib, cfg.seed)
        if cells.size < tokens.n_cells:
            log.info("SAE: %d of %d cells captured (sae.max_gib %.1f)", cells.size, tokens.n_cells, cfg.max_gib)
        captured = tokens.subset(cells)
        scratch = writer.dir / "sae_activations"
        store = capture_residual_stream(adapter, captured, layers, scratch, batch_size=inp.cfg.extraction.batch_size,
                                        progress=progress)
        symbols = tokens.genes["symbol"].astype(str).to_numpy()
        np.savez(writer.dir / files.SAE_ROWS, row_cell=cells[store.row_cell].astype(np.int32),
                 row_gene=store.row_gene, gene_symbol=np.asarray(symbols, dtype=str))
        behaviour_cells = ablation_inputs(tokens, panel, readout_layer=inp.readout_layer,
                                          n_cells=min(max(inp.cfg.ablation.n_cells, 1), tokens.n_cells),
                                          probability=inp.cfg.ablation.mask_probability, seed=inp.cfg.ablation.seed)
        programmes, kinds = cell_programmes(inp, panel, cells)
        null_layer = inp.readout_layer if inp.readout_layer in layers else layers[-1]   # the shuffled SAE's layer
        rows, features, matches = [], [], []
        for layer in layers:
            start = time.perf_counter()
            sae, report = train_sae(lambda: store.batches(layer, cfg.batch_size, seed=cfg.seed), store.d_model,
                                    n_features=n_features, k=cfg.k, epochs=cfg.epochs, lr=cfg.lr, seed=cfg.seed,
                                    evaluation=store.batches(layer, cfg.batch_size))   # latents in row order
            seconds = time.perf_counter() - start
            save_sae(sae, writer.dir / files.sae_weights(layer))
            np.savez(writer.dir / files.sae_latents(layer), indices=report.indices, values=report.values)
            behaviour = behaviour_with_reconstruction(adapter, behaviour_cells, layer, sae,
                                                      batch_size=inp.cfg.ablation.batch_size)
            row, table = layer_tables(layer, sae.cpu(), report, store, cfg, symbols, behaviour, seconds, cells.size)
            rows.append(row)
            features.append(table)
            if len(programmes.columns):
                null = None
                if layer == null_layer:
                    shuffled = shuffled_copy(store, layer, scratch / "shuffled", cfg.seed)
                    _, null = train_sae(lambda: shuffled.batches(layer, cfg.batch_size, seed=cfg.seed),
                                        store.d_model, n_features=n_features, k=cfg.k, epochs=cfg.epochs, lr=cfg.lr,
                                        seed=cfg.seed, evaluation=shuffled.batches(layer, cfg.batch_size))
                matches.append(programme_rows(layer, report, store.row_cell, n_features, programmes, kinds, null))
            log.info("SAE L%d: FVE %.3f, %d dead, %d dense, %d of %d features visible to SVD, behaviour loss "
                     "%.4f -> %.4f spliced (%.1f s)", layer, row["fraction_variance_explained"], row["n_dead"],
                     row["n_dense"], row["n_svd_visible"], n_features, row["behaviour_loss"],
                     row["behaviour_loss_spliced"], seconds)
        shutil.rmtree(scratch)
        writer.write_table("sae_layers", pd.DataFrame(rows))
        writer.write_table("sae_features", pd.concat(features, ignore_index=True))
        if matches:
            writer.write_table("sae_programmes", pd.concat(matches, ignore_index=True))
    writer.mark_done("sae", key, time.perf_counter() - t0)
    return StatsRegistry()
