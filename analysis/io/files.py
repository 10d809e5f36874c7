"""One catalogue of the file names of a run directory (``cache/artifacts/<run id>/``), so the precompute stages that
write them and the app that reads them never spell a name twice. Tidy tables are ``<schema name>.parquet``
(:func:`table`; their columns are declared in :mod:`analysis.io.schemas`)."""
from __future__ import annotations

MANIFEST = "manifest.json"
ATTENTION_SOURCE_ROWS = "attention_source_rows.npy"  # [R] panel indices of the genes every head keeps rows of
ATTENTION_HEAD_ROWS = "attention_head_rows.npy"      # [layers, heads, R, G] float32: source as query, summed
ATTENTION_HEAD_COLS = "attention_head_cols.npy"      # [layers, heads, R, G] float32: source as key, summed
ATTENTION_LAYER_SUMS = "attention_layer_sums.npy"    # [layers, G, G] float64: head mean, summed over cells
ATTENTION_FULL_HEADS = "attention_full_heads.npz"    # L<l>H<h> -> [G, G] float64, heads asked for whole
PAIR_COUNTS = "pair_counts.npy"                # [G, G] narrowest unsigned integer holding the cell count
ATTENTION_PARAMS = "attention_params.json"
EDGES_SPEARMAN = "edges_spearman.npy"          # [1, G, G] float32
STATISTICS_CSV = "statistics_registry.csv"
CSSI_SOURCE_ROWS = "cssi_source_rows.npy"      # [R] panel indices whose per-head rows CSSI keeps per group
CSSI_HEAD_ROWS = "cssi_head_rows.npy"          # [F + M, layers, heads, R, G] float32: source as query
CSSI_HEAD_COLS = "cssi_head_cols.npy"          # [F + M, layers, heads, R, G] float32: source as key (when read)
CSSI_LAYER_SUMS = "cssi_layer_sums.npy"        # [F + M, layers, G, G] float32: head mean
CSSI_GROUP_COUNTS = "cssi_group_counts.npy"    # [F + M, G, G] narrowest unsigned integer
CSSI_EXPRESSION = "cssi_expression.npy"        # [cells, G] float32
CSSI_FINE_GRAPH = "cssi_fine_graph.npy"        # [F, F]
CSSI_PARAMS = "cssi_params.json"
SAE_ROWS = "sae_rows.npz"                      # row_cell, row_gene [rows] int32 (where each latent row was read),
                                               # gene_symbol [genes] (the symbols row_gene indexes),
                                               # capture_cell, capture_state [captured cells] (attention-cell index,
                                               # cell state or "")
EMBEDDING_KINDS = ("mean_penultimate", "cls")  # cell embeddings captured during extraction (interp.attention)


def table(name: str) -> str:
    """File of tidy table ``name`` (e.g. ``head_ranking`` -> ``head_ranking.parquet``)."""
    return f"{name}.parquet"


def cell_embeddings(kind: str) -> str:
    """``[cells, d_model]`` float32 cell embeddings of one kind."""
    return f"cell_embeddings_{kind}.npy"


def sae_weights(layer: int) -> str:
    """One layer's TopK SAE: ``W_enc`` ``[F, d]``, ``b_enc`` ``[F]``, ``W_dec`` ``[d, F]``, ``b_dec`` ``[d]``, ``k``."""
    return f"sae_L{layer}.npz"


def sae_latents(layer: int) -> str:
    """One layer's latents at every captured row: ``indices`` int32 and ``values`` float32, ``[rows, k]``."""
    return f"sae_latents_L{layer}.npz"
