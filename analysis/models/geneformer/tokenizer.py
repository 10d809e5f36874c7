"""Geneformer rank-value encoding (Theodoris et al. 2023; paper section 4.1), reproduced from the Geneformer
package's ``TranscriptomeTokenizer``:

1. keep genes present in the gene-median dictionary (duplicate Ensembl ids are summed),
2. normalise each cell to ``counts / n_counts * 10,000`` (``n_counts`` = total counts over *all* genes),
3. divide by the gene's median (non-zero, corpus-wide) normalised expression,
4. rank the cell's non-zero genes by that value, descending, and map them to token ids,
5. truncate to the model input size; V2 dictionaries (which hold ``<cls>``/``<eos>``) truncate to size - 2
   and wrap the ranks in ``<cls>`` ... ``<eos>``.

Deviation: ties are broken by the gene's order in the data (stable sort); Geneformer's ``np.argsort``
leaves tie order to numpy's default quicksort.
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ...errors import InputError
from ...io.cells import CellData
from ...io.expression import TARGET_SUM, cp10k
from ..base import Tokenizer, TokenizedCells

PAD, MASK, CLS, EOS = "<pad>", "<mask>", "<cls>", "<eos>"


@dataclass(frozen=True)
class GeneformerDictionaries:
    """Geneformer's dictionaries: Ensembl id -> token id, Ensembl id -> median, optional symbol -> Ensembl id."""

    token: dict[str, int]
    median: dict[str, float]
    name_to_id: dict[str, str] = field(default_factory=dict)
    source: str = ""

    @property
    def special_tokens(self) -> bool:
        """True for V2-style dictionaries (``<cls>``/``<eos>`` present)."""
        return CLS in self.token and EOS in self.token

    @property
    def pad_id(self) -> int:
        return int(self.token[PAD])

    @property
    def mask_id(self) -> int:
        return int(self.token[MASK])


def _one(directory: Path, pattern: str, required: bool = True) -> Path | None:
    hits = sorted(directory.glob(pattern))
    if not hits and required:
        raise InputError(f"no file matching {pattern!r} in {directory}; pass --dictionaries DIR holding "
                         "Geneformer's token_dictionary*.pkl and gene_median_dictionary*.pkl")
    if len(hits) > 1:
        raise InputError(f"several files match {pattern!r} in {directory}: {[h.name for h in hits]}")
    return hits[0] if hits else None


class _DictionaryUnpickler(pickle.Unpickler):
    """Reads a Geneformer dictionary without running code from the file: of the globals a pickle may name, only
    numpy's scalar reconstruction (medians are stored as numpy floats) is allowed; anything else is refused."""

    ALLOWED = {("numpy", "dtype"), ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which a gene dictionary never holds")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as fh:
            obj = _DictionaryUnpickler(fh).load()
    except Exception as exc:
        raise InputError(f"{path} is not a readable pickled dictionary ({exc}); Geneformer's dictionaries map gene "
                         "ids or symbols to numbers") from exc
    if not isinstance(obj, dict):
        raise InputError(f"{path} holds a {type(obj).__name__}, expected a dict")
    return obj


def load_name_table(directory: Path) -> dict[str, str]:
    """Symbol -> Ensembl id from ``gene_name_id_dict*.pkl`` in ``directory`` (empty when there is none)."""
    if not directory.is_dir():
        raise InputError(f"dictionary directory {directory} does not exist")
    path = _one(directory, "gene_name_id_dict*.pkl", required=False)
    return {str(k): str(v) for k, v in _unpickle(path).items()} if path else {}


def load_dictionaries(directory: str | Path) -> GeneformerDictionaries:
    """Load ``token_dictionary*.pkl``, ``gene_median_dictionary*.pkl`` and (optional) ``gene_name_id_dict*.pkl``."""
    d = Path(directory)
    if not d.is_dir():
        raise InputError(f"dictionary directory {d} does not exist")
    token = {str(k): int(v) for k, v in _unpickle(_one(d, "token_dictionary*.pkl")).items()}
    median = {str(k): float(v) for k, v in _unpickle(_one(d, "gene_median_dictionary*.pkl")).items()}
    names = load_name_table(d)
    if PAD not in token or MASK not in token:
        raise InputError(f"token dictionary in {d} lacks {PAD!r}/{MASK!r}; is it a Geneformer dictionary?")
    check_one_release(token, median, d)
    return GeneformerDictionaries(token=token, median=median, name_to_id=names, source=str(d))


def check_one_release(token: dict[str, int], median: dict[str, float], directory: Path,
                      tolerance: float = 0.005) -> None:
    """Refuse a token dictionary and a median dictionary of different releases: within one release every token gene
    has a median (gc104M: 20,271 of 20,271; gc30M: 25,424 of 25,424), across releases 3-14% do not (gc104M tokens
    with gc30M medians: 648 missing; the reverse: 3,530), and the genes without one would be dropped silently.
    More than ``tolerance`` of the token genes without a median is an InputError."""
    genes = [g for g in token if not g.startswith("<")]
    missing = [g for g in genes if g not in median]
    if genes and len(missing) > tolerance * len(genes):
        raise InputError(f"the median dictionary in {directory} has no median for {len(missing):,} of the token "
                         f"dictionary's {len(genes):,} genes (e.g. {', '.join(missing[:3])}): the two look like "
                         "different Geneformer releases; use the token and median dictionaries of the checkpoint's "
                         "release, side by side")


def save_dictionaries(dicts: GeneformerDictionaries, directory: Path, suffix: str) -> None:
    """Write the dictionaries as Geneformer-format pickles (``token_dictionary_<suffix>.pkl`` ...)."""
    directory.mkdir(parents=True, exist_ok=True)
    for stem, obj in (("token_dictionary", dicts.token), ("gene_median_dictionary", dicts.median),
                      ("gene_name_id_dict", dicts.name_to_id)):
        with open(directory / f"{stem}_{suffix}.pkl", "wb") as fh:
            pickle.dump(obj, fh)


def _collapse_duplicate_ids(counts: sp.csr_matrix, ids: np.ndarray) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
    """Sum columns sharing an Ensembl id; returns (counts, unique ids, first column index of each id)."""
    uniq, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
    if uniq.size == ids.size:
        return counts, ids, np.arange(ids.size)
    agg = sp.csr_matrix((np.ones(ids.size), (np.arange(ids.size), inverse)), shape=(ids.size, uniq.size))
    return (counts @ agg).tocsr(), uniq, first


def _vocabulary(cells: CellData, dicts: GeneformerDictionaries) -> tuple[sp.csr_matrix, pd.DataFrame]:
    """Counts ``[cells, genes]`` of the data's genes in the dictionaries (duplicate ids summed) and their table
    (``gene_id``, ``symbol``, ``token_id``, ``median``)."""
    in_vocab = np.array([(g in dicts.median) and (g in dicts.token) for g in cells.gene_ids])
    if not in_vocab.any():
        example = ", ".join(map(str, cells.gene_ids[:3]))
        raise InputError(f"none of the {cells.gene_ids.size} genes is in the model's vocabulary "
                         f"({dicts.source or 'dictionaries'}); gene ids look like {example}. Use Ensembl ids "
                         "matching the dictionaries (or symbols with a gene_name_id dictionary) and the "
                         "dictionaries that belong to the model (gc30M for V1, gc104M for V2)")
    counts, ids, first = _collapse_duplicate_ids(cells.counts[:, in_vocab], cells.gene_ids[in_vocab])
    genes = pd.DataFrame({"gene_id": ids, "symbol": cells.symbols[in_vocab][first],
                          "token_id": np.array([dicts.token[g] for g in ids], dtype=np.int64),
                          "median": np.array([dicts.median[g] for g in ids])})
    return counts, genes


def tokenize(cells: CellData, dicts: GeneformerDictionaries, max_len: int) -> TokenizedCells:
    """Rank-value encode ``cells`` with ``dicts`` into at most ``max_len`` tokens per cell (see module doc)."""
    counts, genes = _vocabulary(cells, dicts)
    tokens = genes["token_id"].to_numpy()
    n_counts = cells.obs["n_counts"].to_numpy(dtype=float)
    if (n_counts <= 0).any():
        raise InputError(f"{int((n_counts <= 0).sum())} cell(s) have zero total counts; filter them out first")
    norm = sp.csr_matrix(cp10k(counts, n_counts) @ sp.diags(1.0 / genes["median"].to_numpy()))
    special = dicts.special_tokens
    budget = max_len - 2 if special else max_len
    ranked: list[np.ndarray] = []
    for i in range(norm.shape[0]):
        row = slice(norm.indptr[i], norm.indptr[i + 1])
        cols, vals = norm.indices[row], norm.data[row]
        keep = vals > 0
        cols, vals = cols[keep], vals[keep]
        by_gene = np.argsort(cols, kind="stable")  # data order first, so ties keep gene order
        cols, vals = cols[by_gene], vals[by_gene]
        ranked.append(cols[np.argsort(-vals, kind="stable")][:budget])
    width = max(r.size for r in ranked) + (2 if special else 0)
    input_ids = np.full((len(ranked), width), dicts.pad_id, dtype=np.int64)
    gene_index = np.full((len(ranked), width), -1, dtype=np.int64)
    offset = 1 if special else 0
    for i, r in enumerate(ranked):
        input_ids[i, offset:offset + r.size] = tokens[r]
        gene_index[i, offset:offset + r.size] = r
        if special:
            input_ids[i, 0] = dicts.token[CLS]
            input_ids[i, r.size + 1] = dicts.token[EOS]
    lengths = np.array([r.size for r in ranked]) + (2 if special else 0)
    attention_mask = (np.arange(width)[None, :] < lengths[:, None]).astype(np.int64)
    params = {"method": "geneformer_rank_value", "max_len": max_len, "special_tokens": special,
              "target_sum": TARGET_SUM, "dictionaries": dicts.source, "n_genes_in_vocab": int(len(genes)),
              "mask_id": dicts.mask_id, "pad_id": dicts.pad_id, "cls_position": 0 if special else None}
    return TokenizedCells(input_ids, attention_mask, gene_index, genes, cells.obs.reset_index(drop=False), params)


def check_against_checkpoint(dicts: GeneformerDictionaries, vocab_size: int, checkpoint: str) -> None:
    """Refuse dictionaries that do not belong to the checkpoint: the token dictionary must have exactly the
    embedding's rows (gc30M: 25,426 for V1; gc104M: 20,275 for V2), so a V2 dictionary with a V1 model (every id in
    range, every id wrong) is caught as well as a V1 dictionary with a V2 model (ids past the embedding)."""
    n, top = len(dicts.token), max(dicts.token.values())
    if n != vocab_size or top >= vocab_size:
        raise InputError(f"the token dictionary in {dicts.source or 'the dictionaries'} has {n} tokens (largest id "
                         f"{top}) but {checkpoint} has an embedding of {vocab_size} rows: these dictionaries belong "
                         "to another model (V1 models use gc30M, V2 models gc104M); pass --dictionaries for this "
                         "checkpoint")


class GeneformerTokenizer(Tokenizer):
    """Rank-value encoding of cells (module doc) for one checkpoint's dictionaries and input size."""

    def __init__(self, dicts: GeneformerDictionaries, max_len: int):
        self.dicts, self.max_len = dicts, max_len
        self.symbol_to_id = dicts.name_to_id
        self.source = dicts.source

    def tokenize(self, cells: CellData, panel: pd.DataFrame | None = None) -> TokenizedCells:
        return tokenize(cells, self.dicts, self.max_len)

    def vocabulary_genes(self, cells: CellData) -> pd.DataFrame:
        return _vocabulary(cells, self.dicts)[1]
