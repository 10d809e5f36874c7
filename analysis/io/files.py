"""One catalogue of the file names of a run directory (``cache/artifacts/<run id>/``), so the precompute stages that
write them and the app that reads them never spell a name twice. Tidy tables are ``<schema name>.parquet``
(:func:`table`; their columns are declared in :mod:`analysis.io.schemas`)."""
from __future__ import annotations

MANIFEST = "manifest.json"
ATTENTION_SUMS = "attention_sums.npy"          # [layers, heads, G, G] float64
PAIR_COUNTS = "pair_counts.npy"                # [G, G] int64
ATTENTION_PARAMS = "attention_params.json"
EDGES_ATTENTION = "edges_attention.npy"        # [sources, G, G] float32 (rows of edge_sources)
EDGES_SPEARMAN = "edges_spearman.npy"          # [1, G, G] float32
STATISTICS_CSV = "statistics_registry.csv"
CSSI_GROUP_SUMS = "cssi_group_sums.npy"        # [F + M, layers, heads, G, G] float32
CSSI_GROUP_COUNTS = "cssi_group_counts.npy"    # [F + M, G, G]
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
