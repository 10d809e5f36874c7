"""Cell files in the formats users have them, read into AnnData: a 10x Genomics feature-barcode matrix (``.h5``,
Cell Ranger 3+ layout: ``matrix/{data,indices,indptr,shape,barcodes}`` and ``matrix/features/{id,name,feature_type}``,
gene expression features only), a ``.loom`` file and a ``.zarr`` AnnData store, each through anndata's own readers
or the 10x layout read here. ``.h5ad`` files are read by :func:`analysis.io.cells.load_cells` itself (it can leave
their counts on disk)."""
from __future__ import annotations

from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import InputError

FORMATS = {".h5": "10x Genomics HDF5", ".loom": "loom", ".zarr": "zarr AnnData"}
GENE_EXPRESSION = "Gene Expression"


def format_of(path: Path) -> str | None:
    """The name of ``path``'s format when it is one read here (:data:`FORMATS`), None for an ``.h5ad`` or other."""
    return FORMATS.get(path.suffix.lower())


def read_cells_file(path: Path) -> ad.AnnData:
    """``path`` (a format of :data:`FORMATS`) as AnnData, counts in ``X``; an InputError names a file that is not
    what its suffix says."""
    kind = format_of(path)
    try:
        if kind == FORMATS[".h5"]:
            return read_10x_h5(path)
        if kind == FORMATS[".loom"]:
            return read_loom(path)
        if kind == FORMATS[".zarr"]:
            return ad.io.read_zarr(path)
    except InputError:
        raise
    except Exception as exc:    # the readers raise many types for a file of another kind
        raise InputError(f"{path} is not a readable {kind} file ({type(exc).__name__}: {exc})") from exc
    raise InputError(f"{path}: unknown cell file format (read: .h5ad, {', '.join(FORMATS)})")


LOOM_NAMES = {"var": ("var_names", "Gene"), "obs": ("obs_names", "CellID")}   # anndata's, then the loom convention
LOOM_IDS = "Accession"                  # the loom convention's column of gene ids


def read_loom(path: Path) -> ad.AnnData:
    """A ``.loom`` file through anndata's reader (counts in the main matrix), its genes and cells named by the row
    and column attribute anndata writes or the loom convention's (``Gene`` and ``Accession``, ``CellID``)."""
    adata = ad.io.read_loom(path, sparse=True, obs_names="", var_names="")
    for axis, names in LOOM_NAMES.items():
        frame = getattr(adata, axis)
        column = next((c for c in names if c in frame.columns), None)
        if column is not None:
            setattr(adata, axis, frame.set_index(column).rename_axis(None))
    if LOOM_IDS in adata.var.columns:
        adata.var = adata.var.rename(columns={LOOM_IDS: "gene_ids"})
    return adata


def read_10x_h5(path: Path) -> ad.AnnData:
    """A Cell Ranger 3+ ``filtered_feature_bc_matrix.h5``: the gene-expression features as ``[cells, genes]``
    integer counts in ``X``, var indexed by feature name (symbol) with ``gene_ids`` (Ensembl) and obs by barcode.
    The matrix is stored genes x cells in CSC order, that is cells x genes in CSR order."""
    with h5py.File(path, "r") as f:
        if "matrix" not in f or "features" not in f["matrix"]:
            raise InputError(f"{path} has no matrix/features group: not a Cell Ranger 3+ feature-barcode matrix "
                             "(an older Cell Ranger 2 file: convert it with scanpy.read_10x_h5 and save as .h5ad)")
        m = f["matrix"]
        n_genes, n_cells = (int(x) for x in m["shape"][()])
        counts = sp.csr_matrix((m["data"][()], m["indices"][()], m["indptr"][()]), shape=(n_cells, n_genes))
        features = m["features"]
        ids, names = (np.char.decode(features[k][()].astype("S")) for k in ("id", "name"))
        kinds = (np.char.decode(features["feature_type"][()].astype("S")) if "feature_type" in features
                 else np.full(n_genes, GENE_EXPRESSION))
        barcodes = np.char.decode(m["barcodes"][()].astype("S"))
    keep = kinds == GENE_EXPRESSION
    var = pd.DataFrame({"gene_ids": ids[keep], "feature_types": kinds[keep]}, index=pd.Index(names[keep]))
    adata = ad.AnnData(X=counts[:, np.nonzero(keep)[0]], obs=pd.DataFrame(index=pd.Index(barcodes)), var=var)
    adata.var_names_make_unique()
    return adata
