"""scGPT's input: gene tokens matched by symbol against ``vocab.json``, and per-cell binned expression values
(``shared/design/scgpt.md`` section 2; Cui et al. 2024).

- Genes: a data column is matched by its symbol as written in the file, case-sensitively (scGPT has no alias or
  Ensembl lookup); Ensembl-keyed data are mapped through the dictionaries' symbol table (every symbol of the
  column's Ensembl id is tried, the first in the vocabulary wins). Genes outside the vocabulary are dropped, never
  mapped to ``<pad>``; columns sharing a token are summed.
- Values: per cell, the non-zero values ``v`` give ``edges = quantile(v, linspace(0, 1, n_bins - 1))``; a value's
  bin is ``ceil(l + U (r - l))`` with ``l`` / ``r`` its left / right ``digitize`` against the edges and ``U`` uniform,
  so ties spanning several edges are spread at random over their bins. Non-zero values get bins 1..n_bins-1, zeros 0.
  Per-cell binning is invariant to any increasing per-cell transform, so raw counts and log1p(CP10k) give the same
  bins. ``U`` is drawn from a ``numpy.random.RandomState(seed)``, one draw per non-zero value, cell by cell in data
  order: the same stream as scGPT's global-RNG calls after ``np.random.seed(seed)``, so bins are reproducible.
- ``<cls>`` first with value ``cls_value`` (-2 = ``pad_value`` in pretraining and ``embed_data``; 0 in scGPT's
  fine-tuning tutorials); padding ``<pad>`` with ``pad_value``.
- Modes: ``panel`` (default for attention work, as scGPT's attention tutorial): every cell's input is ``<cls>`` + the
  run's gene panel in panel order, zeros included, binned over the panel genes (after subsetting), so all cells
  share positions and every panel pair is co-observed in every cell. ``zero_shot`` (as pretraining and
  ``embed_data``): the cell's non-zero vocabulary genes, binned over all of them, then a seeded random sample of
  ``max_len - 1`` genes when longer (kept in data order; scGPT samples with torch's RNG).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ...config import TOKENIZER_MODES
from ...errors import InputError
from ..base import Tokenizer, TokenizedCells, row_ranges
from .checkpoint import CLS, PAD



def bin_values(row: np.ndarray, n_bins: int, rs: np.random.RandomState) -> np.ndarray:
    """Bins ``[len(row)]`` int64 of one cell's values (module doc); draws one uniform per non-zero value."""
    out = np.zeros(row.shape, dtype=np.int64)
    nz = np.nonzero(row > 0)[0]
    if nz.size == 0:
        return out
    v = row[nz].astype(np.float64)
    edges = np.quantile(v, np.linspace(0, 1, n_bins - 1))
    u = rs.rand(nz.size)
    left = np.digitize(v, edges)
    right = np.digitize(v, edges, right=True)
    out[nz] = np.ceil(left + u * (right - left)).astype(np.int64)
    return out


class ScGPTTokenizer(Tokenizer):
    """Tokenises cells for one scGPT vocabulary (module doc). ``symbol_to_id``: symbol -> Ensembl id table (the
    dictionaries' ``gene_name_id_dict``), used to load Ensembl-keyed data and to match their symbols."""

    requires_ensembl = False

    def __init__(self, vocab: dict[str, int], *, n_bins: int, max_len: int, pad_value: float = -2.0,
                 cls_value: float = -2.0, mode: str = "panel", seed: int = 0,
                 symbol_to_id: dict[str, str] | None = None, source: str = ""):
        if mode not in TOKENIZER_MODES:
            raise InputError(f"tokenizer.mode must be one of {TOKENIZER_MODES} for scGPT, got {mode!r}")
        if n_bins < 3:
            raise InputError(f"n_bins {n_bins} is too small for value binning (scGPT uses 51)")
        self.vocab, self.n_bins, self.max_len = vocab, int(n_bins), int(max_len)
        self.pad_value, self.cls_value, self.mode, self.seed = float(pad_value), float(cls_value), mode, int(seed)
        self.symbol_to_id = dict(symbol_to_id or {})
        self.source = source
        self.panel_dependent = mode == "panel"
        self.pad_id, self.cls_id = int(vocab[PAD]), int(vocab[CLS])
        self._symbols_of_id: dict[str, list[str]] = {}
        for symbol, gene_id in sorted(self.symbol_to_id.items()):
            self._symbols_of_id.setdefault(gene_id, []).append(symbol)

    def _match(self, cells) -> tuple[np.ndarray, np.ndarray]:
        """Per data column: the vocabulary symbol it matches ('' when none) and its token id (-1)."""
        raw = cells.raw_symbols if cells.raw_symbols is not None else cells.symbols
        matched = []
        for symbol, gene_id in zip(raw, cells.gene_ids):
            candidates = [str(symbol)] + self._symbols_of_id.get(str(gene_id), [])
            matched.append(next((c for c in candidates if c in self.vocab), ""))
        matched = np.array(matched, dtype=object)
        ids = np.array([self.vocab.get(m, -1) if m else -1 for m in matched], dtype=np.int64)
        return matched, ids

    def _vocabulary(self, cells) -> tuple[sp.csr_matrix, pd.DataFrame]:
        matched, ids = self._match(cells)
        keep = np.nonzero(ids >= 0)[0]
        if keep.size == 0:
            example = ", ".join(map(str, (cells.raw_symbols if cells.raw_symbols is not None
                                          else cells.gene_ids)[:3]))
            raise InputError(f"none of the {cells.gene_ids.size} genes matches the scGPT vocabulary ({self.source}) "
                             f"by symbol (genes look like {example}); scGPT matches symbols case-sensitively: give "
                             "var gene symbols (e.g. a feature_name column), or pass --dictionaries DIR holding "
                             "gene_name_id_dict*.pkl to map Ensembl ids to symbols")
        uniq, first, inverse = np.unique(ids[keep], return_index=True, return_inverse=True)
        order = np.argsort(first, kind="stable")            # genes in data order, not token order
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size)
        uniq, first, inverse = uniq[order], first[order], rank[inverse]
        cols = keep[first]
        counts = cells.counts[:, keep]
        if uniq.size < keep.size:   # several columns share one token: sum them
            agg = sp.csr_matrix((np.ones(keep.size), (np.arange(keep.size), inverse)), shape=(keep.size, uniq.size))
            counts = counts @ agg
        genes = pd.DataFrame({"gene_id": cells.gene_ids[cols], "symbol": cells.symbols[cols],
                              "token_id": uniq, "vocab_symbol": matched[cols].astype(str)})
        return sp.csr_matrix(counts), genes

    def vocabulary_genes(self, cells) -> pd.DataFrame:
        return self._vocabulary(cells)[1]

    def tokenize(self, cells, panel: pd.DataFrame | None = None) -> TokenizedCells:
        return self._tokenize(cells, panel, self._streams())

    def tokenize_blocks(self, cells, panel: pd.DataFrame | None = None):
        """As :meth:`Tokenizer.tokenize_blocks`, with one pair of random streams carried across the blocks, so every
        cell's bins and gene sample are those of :meth:`tokenize` over all cells."""
        streams = self._streams()
        for rows in row_ranges(cells.n_cells):
            yield rows, self._tokenize(cells.subset(rows), panel, streams)

    def _streams(self) -> tuple[np.random.RandomState, np.random.Generator]:
        """The binning draws (scGPT's global-RNG stream after ``np.random.seed``) and the zero-shot gene sampler."""
        return np.random.RandomState(self.seed), np.random.default_rng([self.seed, 1])

    def _tokenize(self, cells, panel, streams) -> TokenizedCells:
        counts, genes = self._vocabulary(cells)
        if self.mode == "panel":
            if panel is None:
                raise ValueError("panel mode tokenises the run's gene panel: pass panel=")
            return self._panel(cells, counts, genes, panel, streams[0])
        return self._zero_shot(cells, counts, genes, *streams)

    def _params(self, genes: pd.DataFrame, **extra) -> dict:
        return {"method": "scgpt_binned", "mode": self.mode, "n_bins": self.n_bins, "cls_value": self.cls_value,
                "pad_value": self.pad_value, "pad_id": self.pad_id, "cls_id": self.cls_id, "max_len": self.max_len,
                "seed": self.seed, "vocabulary": self.source, "n_genes_in_vocab": int(len(genes)),
                "symbol_matching": "case-sensitive vocab.json symbols", "cls_position": 0, **extra}

    def _panel(self, cells, counts: sp.csr_matrix, genes: pd.DataFrame, panel: pd.DataFrame,
               rs: np.random.RandomState) -> TokenizedCells:
        index = panel["gene_index"].to_numpy()
        if index.size + 1 > self.max_len:
            raise InputError(f"the panel has {index.size} genes but this scGPT model takes {self.max_len} tokens "
                             f"including <cls>; lower extraction.panel_size to at most {self.max_len - 1}")
        x = np.asarray(counts[:, index].todense(), dtype=np.float64)
        bins = np.stack([bin_values(row, self.n_bins, rs) for row in x]) if len(x) else np.zeros((0, index.size))
        n = x.shape[0]
        input_ids = np.concatenate([np.full((n, 1), self.cls_id), np.tile(genes["token_id"].to_numpy()[index], (n, 1))],
                                   axis=1).astype(np.int64)
        values = np.concatenate([np.full((n, 1), self.cls_value), bins], axis=1).astype(np.float32)
        gene_index = np.concatenate([np.full((n, 1), -1), np.tile(index, (n, 1))], axis=1).astype(np.int64)
        params = self._params(genes, include_zero_gene=True, binning_scope="the panel genes (after subsetting)")
        return TokenizedCells(input_ids, np.ones_like(input_ids), gene_index, genes,
                              cells.obs.reset_index(drop=False), params, values)

    def _zero_shot(self, cells, counts: sp.csr_matrix, genes: pd.DataFrame, rs: np.random.RandomState,
                   sampler: np.random.Generator) -> TokenizedCells:
        budget = self.max_len - 1
        rows = []
        for i in range(counts.shape[0]):
            lo, hi = counts.indptr[i], counts.indptr[i + 1]
            order = np.argsort(counts.indices[lo:hi], kind="stable")
            cols, vals = counts.indices[lo:hi][order], counts.data[lo:hi][order].astype(np.float64)
            nz = vals > 0
            cols, vals = cols[nz], vals[nz]
            bins = bin_values(vals, self.n_bins, rs)
            if cols.size > budget:
                keep = np.sort(sampler.choice(cols.size, budget, replace=False))
                cols, bins = cols[keep], bins[keep]
            rows.append((cols, bins))
        width = 1 + max((c.size for c, _ in rows), default=0)
        n = len(rows)
        input_ids = np.full((n, width), self.pad_id, dtype=np.int64)
        values = np.full((n, width), self.pad_value, dtype=np.float32)
        gene_index = np.full((n, width), -1, dtype=np.int64)
        mask = np.zeros((n, width), dtype=np.int64)
        token = genes["token_id"].to_numpy()
        for i, (cols, bins) in enumerate(rows):
            input_ids[i, 0], values[i, 0], mask[i, : cols.size + 1] = self.cls_id, self.cls_value, 1
            input_ids[i, 1:cols.size + 1] = token[cols]
            values[i, 1:cols.size + 1] = bins
            gene_index[i, 1:cols.size + 1] = cols
        params = self._params(genes, include_zero_gene=False,
                              binning_scope="all non-zero vocabulary genes of the cell, before sampling")
        return TokenizedCells(input_ids, mask, gene_index, genes, cells.obs.reset_index(drop=False), params, values)
