"""A finished run opened in a notebook: its manifest, every table (validated against its schema), the verdicts and
page findings the app opens with, and its networks, torch-free (imports ``io`` and ``scoring`` only)::

    import analysis
    run = analysis.open_run("cache")                 # a cache (its newest run) or a run directory
    run.tables                                       # the names of the run's tables
    run.table("head_ranking")                        # a pandas DataFrame
    run.verdicts()                                   # the Run overview's answers
    run.network("L3 mean", top=20)                   # source, target, weight (decoupler, geneRNIB)

The app's figures are plain functions of these tables (``from app import figures``: e.g.
``figures.dose_response(run.table("ablation_results").query("readout == 'mlm_loss'"), readout="mlm_loss")``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .errors import InputError
from .io import files, schemas
from .io.artifacts import read_manifest, scan_runs
from .io.manifest import RunManifest
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
