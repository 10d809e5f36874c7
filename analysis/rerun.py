"""Live ablation on a finished run: reload its model, cells and panel, and run one user-chosen intervention
with the same read-outs as the precomputed sweep (analysis.interp.ablation). Used by the app's background worker."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from .interp.ablation import SweepItem, ablate, prepare
from .interp.interventions import InterventionSpec
from .models.geneformer.adapter import GeneformerAdapter
from .stages.pipeline import load_run_cells, perturbation_readout, reference_targets
from .scoring.ranking import evaluable_universe
from .io.references import ReferenceNetwork
from .models.geneformer.tokenizer import load_dictionaries, tokenize


def live_ablation(manifest: dict, panel: pd.DataFrame, reference_edges: pd.DataFrame, pair_counts: np.ndarray,
                  de_table: pd.DataFrame | None, specs: Sequence[InterventionSpec], *, n_cells: int,
                  progress: Callable[[float, str], None] = lambda f, msg: None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(results, fidelity) for ``specs`` on ``n_cells`` cells of the run (same seed as the precomputed sweep)."""
    cfg = manifest["config"]
    progress(0.02, "loading model")
    adapter = GeneformerAdapter.from_pretrained(Path(manifest["inputs"]["model_dir"]), device=cfg["model"]["device"],
                                                random_init=cfg["model"]["random_init"], seed=cfg["model"]["seed"])
    progress(0.1, "loading cells")
    dicts = load_dictionaries(manifest["inputs"]["dictionaries"])
    tokens = tokenize(load_run_cells(manifest), dicts, adapter.max_len)
    readout = cfg["perturbation"]["readout_layer"] % adapter.n_layers
    name = manifest["references"][0]["name"]
    reference = ReferenceNetwork(name, reference_edges[reference_edges["reference"] == name], {})
    universe = evaluable_universe(panel, reference, np.asarray(pair_counts) > 0)
    inputs = prepare(adapter, tokens, panel, universe, mask_id=dicts.mask_id, readout_layer=readout,
                     n_cells=n_cells, seed=cfg["ablation"]["seed"])
    item = SweepItem("custom", sum(max(len(s.heads), 1) for s in specs), -1, tuple(specs))
    pert_fn = perturbation_readout(panel, de_table, readout) if de_table is not None else None
    targets = reference_targets(inputs.tokens, reference, adapter.model.config.vocab_size)
    return ablate(adapter, inputs, [item], batch_size=cfg["ablation"]["batch_size"], perturbation_auroc=pert_fn,
                  targets=targets,
                  progress=lambda f: progress(0.15 + 0.8 * f, f"{int(f * inputs.tokens.n_cells)} cells"))
