"""A finished run opened in a notebook: its manifest, every table (validated against its schema), the verdicts and
page findings the app opens with, and its networks, torch-free (imports ``io`` and ``scoring`` only)::

    import analysis
    run = analysis.open_run("cache")                 # a cache (its newest run) or a run directory
    run.tables                                       # the names of the run's tables
    run.table("head_ranking")                        # a pandas DataFrame
    run.verdicts()                                   # the Run overview's answers
    run.network("L3 mean", top=20)                   # source, target, weight (decoupler, geneRNIB)
    run.to_anndata().write_h5ad("run.h5ad")          # varp: read-out layer attention and correlation

The app's figures are plain functions of these tables (``from app import figures``: e.g.
``figures.dose_response(run.table("ablation_results").query("readout == 'mlm_loss'"), readout="mlm_loss")``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from .errors import InputError
from .io import files, schemas
from .io.artifacts import read_manifest, scan_runs
from .io.manifest import RunManifest
from .io.stores import AttentionStore
from .scoring.edges import mean_scores
from .scoring.networks import DEFAULT_TOP, run_network
from .scoring.page_findings import page_findings
from .scoring.verdicts import Verdict, verdicts

VERDICT_TABLES = ("residualisation", "ablation_results")
FINDING_TABLES = ("head_ranking", "layer_biology", "sae_regulatory")


@dataclass(frozen=True)
class Run:
    """One finished run: ``path`` its directory, ``manifest`` its typed manifest."""

    path: Path
    manifest: RunManifest

    @property
    def tables(self) -> list[str]:
        """The names of the run's tables (``<name>.parquet``)."""
        return sorted(p.stem for p in self.path.glob("*.parquet"))

    def table(self, name: str) -> pd.DataFrame:
        """Table ``name``, validated against its schema when one is declared; a KeyError lists the run's tables."""
        path = self.path / files.table(name)
        if not path.is_file():
            raise KeyError(f"run {self.manifest.run_id} has no table {name!r}; it has {', '.join(self.tables)}")
        frame = pd.read_parquet(path)
        return schemas.validate(name, frame) if name in schemas.TABLES else frame

    def _tables(self, names) -> dict[str, pd.DataFrame]:
        return {n: self.table(n) for n in names if (self.path / files.table(n)).is_file()}

    def verdicts(self, family: str = "confirmatory") -> list[Verdict]:
        """The Run overview's verdicts (:func:`analysis.scoring.verdicts.verdicts`) in BH family ``family``."""
        return verdicts(self.table("statistics_registry"), self._tables(VERDICT_TABLES),
                        reference=self.manifest.reference_names[0], family=family)

    def findings(self) -> dict[str, Verdict]:
        """The Heads, Layers, CSSI and Features pages' findings (:mod:`analysis.scoring.page_findings`)."""
        return page_findings(self.table("statistics_registry"), self._tables(FINDING_TABLES),
                             reference=self.manifest.reference_names[0])

    def to_anndata(self, layers: tuple[int, ...] | None = None) -> ad.AnnData:
        """The run as AnnData for scanpy: ``obs`` the attention cells (their names and cell states when CSSI ran),
        ``var`` the panel genes with their flags and on-target check, ``varp`` each of ``layers``' head-mean
        attention (``attention_L<l>``, default the read-out layer) and the Spearman correlation (``spearman``),
        ``[genes, genes]`` float32, NaN where two genes were never co-observed; ``obsm`` the cell embeddings
        captured during extraction (``X_<kind>``); ``uns`` the manifest (JSON) and the verdicts. ``X`` is empty:
        the counts stay in the user's file. Memory: one ``[genes, genes]`` float32 per matrix kept."""
        store = AttentionStore.load(self.path)
        counts = np.asarray(store.counts)
        observed = counts > 0
        var = self.table("panel").set_index("symbol", drop=False)
        var.index = var.index.astype(str)
        if (self.path / files.table("on_target")).is_file():
            on_target = self.table("on_target").set_index("perturbation")[["on_target_lfc", "status"]]
            var = var.join(on_target.rename(columns={"status": "on_target_status"}))
        varp = {}
        for layer in (self.manifest.readout_layer,) if layers is None else layers:
            varp[f"attention_L{layer}"] = np.where(
                observed, mean_scores(np.asarray(store.layer_sums[layer], dtype=np.float64), counts),
                np.nan).astype(np.float32)
        spearman = np.load(self.path / files.EDGES_SPEARMAN, mmap_mode="r")[0]
        varp["spearman"] = np.where(observed, spearman, np.nan).astype(np.float32)
        n_cells = next(iter(store.cell_embeddings.values())).shape[0] if store.cell_embeddings else store.n_cells
        obs = pd.DataFrame(index=[f"cell{i}" for i in range(n_cells)])
        if (self.path / files.table("cssi_cells")).is_file():
            cells = self.table("cssi_cells").sort_values("cell")
            if len(cells) == n_cells:
                obs = pd.DataFrame({"cell_state": cells["cell_state"].astype(str).to_numpy()},
                                   index=cells["obs_name"].astype(str).to_numpy())
        found = self.verdicts()
        uns = {"manifest": (self.path / files.MANIFEST).read_text(), "run_id": self.manifest.run_id,
               "verdicts": pd.DataFrame([{"key": v.key, "stance": v.stance, "question": v.question,
                                          "sentence": v.sentence, "test": v.test} for v in found])}
        return ad.AnnData(obs=obs, var=var, varp=varp, uns=uns,
                          obsm={f"X_{kind}": emb for kind, emb in store.cell_embeddings.items()})

    def network(self, source: str, *, top: int = DEFAULT_TOP) -> pd.DataFrame:
        """The network of ``source`` (``L3H1``, ``L3 mean`` or ``spearman``; :func:`analysis.scoring.networks
        .run_network`)."""
        return run_network(self.path, source, top=top)


def open_run(path: str | Path, run_id: str | None = None) -> Run:
    """The run at ``path``: a run directory, or a cache (its ``run_id``, else its newest run). An InputError says
    what is there when no run is."""
    path = Path(path)
    if (path / files.MANIFEST).is_file():
        return Run(path, read_manifest(path))
    runs, skipped = scan_runs(path)
    if run_id is not None:
        runs = [m for m in runs if m.run_id == run_id]
    if not runs:
        raise InputError(f"no finished run {'named ' + repr(run_id) + ' ' if run_id else ''}in {path}"
                         + (f" (skipped: {'; '.join(skipped)})" if skipped else "")
                         + ": pass a run directory or a cache that precompute.py wrote")
    return Run(path / "artifacts" / runs[0].run_id, runs[0])
