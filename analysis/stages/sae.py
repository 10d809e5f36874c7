"""The SAE stage (the companion paper's TopK sparse autoencoders of the residual stream): capture the
residual stream after each chosen layer at the gene positions of the attention cells (on disk, memory flat in cells:
:func:`analysis.interp.residual.capture_residual_stream`), train one TopK SAE per layer from batches read back from
disk (:func:`analysis.interp.sae.train_sae`), and record per layer the reconstruction quality (fraction of variance
explained; the behaviour read-out on the ablation's fixed masking with the SAE's reconstruction spliced in), dead
and dense features, and how many features align with the activations' top singular directions (superposition).
Cell programmes (the positive control on the embedded default, whose states and network are the simulation's
truth): each feature's activity per cell against each cell state's indicator and each reference TF's activity read
from its regulon's expression; the best feature's correlation per layer, and on the read-out layer the same for an
SAE trained on the activations with every dimension shuffled across rows (the null: same marginals, no structure).
The companion paper's CRISPRi regulatory test (:mod:`analysis.scoring.sae_regulatory`): cells of each knocked-down
reference TF and control cells encoded by every layer's SAE (:func:`analysis.interp.residual.feature_activity`), the
features responding most to the knock-down tested for a preference for the TF's targets against random feature sets.

Co-activation modules per layer (:mod:`analysis.scoring.sae_modules`), and causal specificity (a sample of features
ablated alone: their own genes' prediction change over the rest's, :func:`causal_specificity`).

Written into the run: ``sae_layers``, ``sae_features``, ``sae_coactivation``, ``sae_programmes``, ``sae_regulatory``
and ``pair_reference_edges`` (the pair references among the SAE's genes, for the card's neighbourhoods; with
``--gene-sets``, ``gene_set_members``: the sets among them) tables, each
layer's weights (``sae_L<l>.npz``) and its latents at every captured row (``sae_latents_L<l>.npz``, the ``k`` active
features per row) with the rows' cells and genes (``sae_rows.npz``). The dense activations are deleted once the SAEs
are trained (the latents and weights hold what the app needs)."""
from __future__ import annotations

import logging
import shutil
import time

import numpy as np
import pandas as pd

from ..config import stable_hash
from ..interp.ablation import AblationInputs, prepare as ablation_inputs
from ..interp.feature_intervention import run_feature_edits
from ..interp.interventions import FeatureEdit
from ..interp.residual import capture_residual_stream, feature_activity
from ..interp.sae import TopKSAE, TrainingReport, save_sae, train_sae
from ..interp.sae_splice import behaviour_with_reconstruction
from ..io import files, schemas
from ..io.activations import ActivationStore, shuffled_copy
from ..io.artifacts import RunWriter
from ..io.expression import expression_matrix
from ..io.references import read_gmt
from ..models.base import TokenizedCells, tokens_of
from ..scoring.feature_effects import summarise_feature_edits
from ..scoring.registry import StatsRegistry
from ..scoring.sae_features import (N_FEATURE_GENES, best_feature_match, cell_feature_activity, feature_gene_means,
                                    latent_matrix, regulon_activity, top_genes)
from ..scoring.sae_modules import coactivation_modules
from ..scoring.sae_regulatory import regulatory_table, regulatory_tests
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
                 means: np.ndarray, behaviour: tuple[np.ndarray, np.ndarray], specificity: tuple[float, int],
                 seconds: float, n_cells: int) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """One ``sae_layers`` row, the layer's ``sae_features`` rows and its ``sae_coactivation`` edges; ``means``:
    ``[F, G]`` each feature's mean activation per gene; ``specificity``: :func:`causal_specificity`'s."""
    decoder = sae.W_dec.detach().cpu().numpy()
    r, max_cos = svd_alignment(decoder, report.covariance, cfg.svd_variance)
    indices, values = report.indices, report.values
    top = np.argsort(-means, axis=1, kind="stable")[:, :N_TOP_GENES]
    firing = report.firing_rate
    fired_sum = np.bincount(indices.ravel(), weights=values.ravel().astype(np.float64), minlength=sae.n_features)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_activation = np.where(firing > 0, fired_sum / (firing * store.n_rows), np.nan)
    dense = firing > cfg.dense_rate
    module, xy, edges = coactivation_modules(latent_matrix(indices, values, sae.n_features), firing, dense,
                                             min_r=cfg.module_r, max_features=cfg.module_features, seed=cfg.seed)
    features = pd.DataFrame({
        "layer": layer, "feature": np.arange(sae.n_features), "firing_rate": firing,
        "mean_activation": mean_activation, "max_svd_cos": max_cos, "svd_visible": max_cos >= cfg.svd_cos,
        "dead": firing == 0, "dense": dense,
        "top_genes": [", ".join(symbols[g] for g in row if means[f, g] > 0) for f, row in enumerate(top)],
        "module": module, "module_x": xy[:, 0], "module_y": xy[:, 1]})
    plain, spliced = behaviour
    row = {"layer": layer, "d_model": store.d_model, "n_features": sae.n_features, "k": sae.k,
           "n_rows": store.n_rows, "n_cells": n_cells, "epochs": cfg.epochs,
           "final_loss": float(np.mean(report.losses[-10:])),
           "fraction_variance_explained": report.fraction_variance_explained,
           "n_dead": int((firing == 0).sum()), "n_dense": int(dense.sum()),
           "svd_directions": r, "n_svd_visible": int((max_cos >= cfg.svd_cos).sum()),
           "behaviour_loss": float(plain.mean()), "behaviour_loss_spliced": float(spliced.mean()),
           "behaviour_delta": float((spliced - plain).mean()), "train_seconds": seconds,
           "n_modules": int(module.max() + 1), "causal_specificity": specificity[0],
           "specificity_features": specificity[1]}
    return row, features, edges.assign(layer=layer)


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


def causal_specificity(inp: Inputs, cells: AblationInputs, layer: int, sae: TopKSAE, means: np.ndarray,
                       firing: np.ndarray, symbols: np.ndarray) -> tuple[float, int]:
    """(median over features, how many features) of the companion paper's causal specificity at ``layer``: each of the
    ``sae.specificity_features`` most frequent live, non-dense features ablated alone through the SAE (error term kept)
    on the first ``sae.specificity_cells`` of the ablation's cells; per feature the mean prediction change of its own
    genes (its top :data:`N_FEATURE_GENES`) over that of the other genes
    (:func:`analysis.scoring.feature_effects.summarise_feature_edits`). NaN at the model's last layer, where an edit
    moves only the positions it edits (structural)."""
    cfg = inp.cfg.sae
    if layer == inp.adapter.n_layers - 1 or cfg.specificity_features == 0:
        return float("nan"), 0
    live = np.flatnonzero((firing > 0) & (firing <= cfg.dense_rate))
    sample = live[np.argsort(-firing[live], kind="stable")[:cfg.specificity_features]]
    idx = np.arange(min(cfg.specificity_cells, cells.tokens.n_cells))
    few = AblationInputs(cells.tokens.subset(idx), cells.chosen[idx], cells.panel, cells.readout_layer)
    edits = [FeatureEdit(layer, (int(f),), 0.0) for f in sample]
    readouts = run_feature_edits(inp.adapter, few, {layer: sae}, edits, batch_size=inp.cfg.ablation.batch_size)
    own = top_genes(means, N_FEATURE_GENES)
    results, _ = summarise_feature_edits(readouts, edits, {e.key: own[e.features[0]] for e in edits}, symbols,
                                         n_layers=inp.adapter.n_layers)
    spec = results[results["readout"] == "specificity_genes"]
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = (spec["value"] / spec["baseline"]).to_numpy(dtype=float)
    ratio = ratio[np.isfinite(ratio)]
    return (float(np.median(ratio)) if ratio.size else float("nan")), int(ratio.size)


def knocked_down_tfs(inp: Inputs, genes_in: np.ndarray) -> dict[str, np.ndarray]:
    """TF -> its targets ``[G]`` bool over ``tokens.genes``, for every perturbation of the data that is a TF of the
    first reference with at least :data:`MIN_TARGETS` targets among the captured genes (``genes_in`` ``[G]`` bool);
    empty without a perturbation column or a reference."""
    data = inp.cells
    if not data.perturbation_col or not inp.references:
        return {}
    symbols = inp.attention_tokens.genes["symbol"].astype(str).to_numpy()
    index = {s: i for i, s in enumerate(symbols)}
    edges = inp.references[0].edges
    perturbed = set(data.obs[data.perturbation_col].astype(str))
    targets = {}
    for tf, group in edges[edges["tf"] != edges["target"]].groupby("tf"):
        member = np.zeros(symbols.size, dtype=bool)
        member[[index[t] for t in group["target"] if t in index]] = True
        if str(tf) in perturbed and (member & genes_in).sum() >= MIN_TARGETS:
            targets[str(tf)] = member
    return targets


def knockdown_cells(inp: Inputs, panel: pd.DataFrame, genes_in: np.ndarray
                    ) -> tuple[TokenizedCells, dict[str, np.ndarray], np.ndarray, dict[str, np.ndarray]] | None:
    """The regulatory test's cells (module doc): up to ``sae.regulatory_cells`` (seeded) control cells and cells of
    each perturbation that is a TF of the first reference with at least :data:`MIN_TARGETS` targets among the
    captured genes (``genes_in`` ``[G]`` bool over ``tokens.genes``), as model input; with each TF's rows, the
    control rows and each TF's targets ``[G]`` bool. None when the data has no perturbation or no such TF."""
    data, cfg = inp.cells, inp.cfg.sae
    targets = knocked_down_tfs(inp, genes_in)
    if not targets:
        return None
    symbols = inp.attention_tokens.genes["symbol"].astype(str).to_numpy()
    labels = data.obs[data.perturbation_col].astype(str).to_numpy()
    tfs = sorted(targets)
    rng = np.random.default_rng([cfg.seed, 23])
    picks = {label: np.sort(rng.choice(np.flatnonzero(labels == label), min(cfg.regulatory_cells,
                                                                             int((labels == label).sum())),
                                       replace=False)) for label in [data.control_label] + tfs}
    keep = np.unique(np.concatenate(list(picks.values())))
    tokens = tokens_of(inp.tokenizer, data, keep, panel=panel if inp.tokenizer.panel_dependent else None)[0]
    if not np.array_equal(tokens.genes["symbol"].astype(str).to_numpy(), symbols):
        raise RuntimeError("the regulatory test's cells were tokenised over other genes than the captured cells")
    rows = {label: np.searchsorted(keep, cells) for label, cells in picks.items()}
    control = rows.pop(data.control_label)
    return tokens, rows, control, {tf: targets[tf] for tf in tfs}


def regulatory_rows(inp: Inputs, panel: pd.DataFrame, saes: dict[int, TopKSAE], means: dict[int, np.ndarray],
                    genes_in: np.ndarray) -> pd.DataFrame | None:
    """``sae_regulatory`` rows of every layer (:func:`analysis.scoring.sae_regulatory.regulatory_table`); None when
    the data has no knock-down of a reference TF."""
    cfg = inp.cfg.sae
    found = knockdown_cells(inp, panel, genes_in)
    if found is None:
        log.info("SAE regulatory test skipped: no perturbation of a reference TF with >= %d captured targets",
                 MIN_TARGETS)
        return None
    tokens, groups, control, targets = found
    activity = feature_activity(inp.adapter, tokens, saes, batch_size=inp.cfg.extraction.batch_size)
    tables = [regulatory_table(layer, activity[layer], groups, control, means[layer],
                               top_genes(means[layer], N_FEATURE_GENES), targets, genes_in, m=cfg.n_responding,
                               n_null=cfg.regulatory_null, seed=cfg.seed) for layer in saes]
    table = pd.concat(tables, ignore_index=True)
    for layer, grp in table.groupby("layer"):
        log.info("SAE L%d regulatory test: %d of %d TFs pass (BH q < 0.05); %d with each TF's features against "
                 "another TF's targets", layer, int(grp["passes"].sum()), len(grp), int(grp["rotated_passes"].sum()))
    return table


def pair_reference_edges(inp: Inputs, symbols: np.ndarray) -> pd.DataFrame | None:
    """The run's undirected pair references (STRING, or the embedded default's co-regulation pairs) restricted to pairs
    of the SAE's genes, for the feature card's neighbourhood enrichment; None without pair references."""
    known = set(map(str, symbols))
    frames = [ref.edges[ref.edges["tf"].isin(known) & ref.edges["target"].isin(known)] for ref in inp.pair_references]
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True)[["reference", "tf", "target", "mode", "confidence"]] if frames else None


MIN_SET_GENES = 3      # a gene set annotates features only with this many members among the SAE's genes


def gene_set_members(inp: Inputs, symbols: np.ndarray) -> pd.DataFrame | None:
    """The gene sets of the run's GMT pair references (``--gene-sets``: Hallmark, Reactome, GO BP), each restricted
    to the SAE's genes and kept with at least :data:`MIN_SET_GENES` of them (and at most the pair reference's
    ``max_set_size`` genes in all), one row per (collection, set, gene), for the feature card's gene-set
    enrichment; None without GMT references."""
    known = set(map(str, symbols))
    rows = []
    for ref in inp.pair_references:
        if ref.params.get("kind") != "gmt":
            continue
        for name, members in read_gmt(ref.params["path"]).items():
            inside = sorted(set(members) & known)
            if len(set(members)) <= ref.params["max_set_size"] and len(inside) >= MIN_SET_GENES:
                rows += [(ref.name, name, gene) for gene in inside]
    return pd.DataFrame(rows, columns=list(schemas.GENE_SET_MEMBERS[0])) if rows else None


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
        path = writer.dir / files.table("sae_regulatory")
        return regulatory_tests(pd.read_parquet(path), inp.references[0].name) if path.is_file() else StatsRegistry()
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
        data = inp.attention_cell_data
        states = (data.obs[data.cell_state_col].astype(str).to_numpy()[cells] if data.cell_state_col
                  else np.full(cells.size, "", dtype=str))
        np.savez(writer.dir / files.SAE_ROWS, row_cell=cells[store.row_cell].astype(np.int32),
                 row_gene=store.row_gene, gene_symbol=np.asarray(symbols, dtype=str),
                 capture_cell=cells.astype(np.int32), capture_state=np.asarray(states, dtype=str))
        behaviour_cells = ablation_inputs(tokens, panel, readout_layer=inp.readout_layer,
                                          n_cells=min(max(inp.cfg.ablation.n_cells, 1), tokens.n_cells),
                                          probability=inp.cfg.ablation.mask_probability, seed=inp.cfg.ablation.seed)
        programmes, kinds = cell_programmes(inp, panel, cells)
        null_layer = inp.readout_layer if inp.readout_layer in layers else layers[-1]   # the shuffled SAE's layer
        rows, features, coactivation, matches, saes, means = [], [], [], [], {}, {}
        genes_in = np.bincount(store.row_gene, minlength=len(symbols)) > 0
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
            saes[layer] = sae.cpu()
            means[layer] = feature_gene_means(report.indices, report.values, store.row_gene, len(symbols),
                                              n_features)[0]
            specificity = causal_specificity(inp, behaviour_cells, layer, saes[layer], means[layer],
                                             report.firing_rate, symbols)
            row, table, edges = layer_tables(layer, saes[layer], report, store, cfg, symbols, means[layer], behaviour,
                                             specificity, seconds, cells.size)
            rows.append(row)
            features.append(table)
            coactivation.append(edges)
            if len(programmes.columns):
                null = None
                if layer == null_layer:
                    shuffled = shuffled_copy(store, layer, scratch / "shuffled", cfg.seed)
                    _, null = train_sae(lambda: shuffled.batches(layer, cfg.batch_size, seed=cfg.seed),
                                        store.d_model, n_features=n_features, k=cfg.k, epochs=cfg.epochs, lr=cfg.lr,
                                        seed=cfg.seed, evaluation=shuffled.batches(layer, cfg.batch_size))
                matches.append(programme_rows(layer, report, store.row_cell, n_features, programmes, kinds, null))
            log.info("SAE L%d: FVE %.3f, %d dead, %d dense, %d of %d features visible to SVD, %d co-activation "
                     "modules, causal specificity %s, behaviour loss %.4f -> %.4f spliced (%.1f s)", layer,
                     row["fraction_variance_explained"], row["n_dead"], row["n_dense"], row["n_svd_visible"],
                     n_features, row["n_modules"], f"{row['causal_specificity']:.2f}x" if specificity[1]
                     else "not measured (last layer)", row["behaviour_loss"], row["behaviour_loss_spliced"], seconds)
        shutil.rmtree(scratch)
        writer.write_table("sae_layers", pd.DataFrame(rows))
        writer.write_table("sae_features", pd.concat(features, ignore_index=True))
        writer.write_table("sae_coactivation", pd.concat(coactivation, ignore_index=True))
        pairs = pair_reference_edges(inp, symbols)
        if pairs is not None:
            writer.write_table("pair_reference_edges", pairs)
        sets = gene_set_members(inp, symbols)
        if sets is not None:
            writer.write_table("gene_set_members", sets)
        if matches:
            writer.write_table("sae_programmes", pd.concat(matches, ignore_index=True))
        regulatory = regulatory_rows(inp, panel, saes, means, genes_in)
        if regulatory is not None:
            writer.write_table("sae_regulatory", regulatory)
    writer.mark_done("sae", key, time.perf_counter() - t0)
    return StatsRegistry() if regulatory is None else regulatory_tests(regulatory, inp.references[0].name)
