"""A finished run, rebuilt for work after precompute: the app's background jobs (live ablation, live feature edits,
custom DE) and, later, distributed workers. :meth:`RunContext.from_manifest` reloads the run's model (through its
family's adapter), tokeniser, cells (same columns, subsample and seed) and tokens (over the run's own panel) lazily,
so a job pays only for what it uses; :func:`ablation_tables` runs interventions with the read-outs and statistics of
the precomputed sweep, and is what the ablation stage itself calls.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from .config import AblationConfig, DataConfig, stable_hash
from .interp.ablation import SweepItem, ablate, prepare
from .interp.ablation_baseline import BaselineStore, baseline_bytes
from .interp.feature_intervention import run_feature_edits
from .interp.interventions import FeatureEdit, InterventionSpec
from .interp.positive_control import reference_targets
from .interp.sae import load_sae
from .io.cells import CellData, load_cells
from .io.manifest import RunManifest
from .io.references import ReferenceNetwork
from .models.base import ModelAdapter, Tokenizer, TokenizedCells, load_adapter, tokens_of
from .scoring.ablation import summarise
from .scoring.feature_effects import summarise_feature_edits
from .scoring.perturbation import readout_auroc
from .scoring.ranking import evaluable_universe


def load_cells_for(data: DataConfig, tokenizer: Tokenizer, *, seed: int) -> CellData:
    """The cells of ``data`` validated for ``tokenizer``: genes mapped through its symbol table, Ensembl ids
    required only when it looks genes up by them; ``data.max_cells`` subsampled with ``seed``."""
    return load_cells(data.path, perturbation_col=data.perturbation_col, control_label=data.control_label,
                      cell_state_col=data.cell_state_col, gene_id_col=data.gene_id_col,
                      counts_layer=data.counts_layer,
                      symbol_to_id=tokenizer.symbol_to_id or None, require_ensembl=tokenizer.requires_ensembl,
                      max_cells=data.max_cells, seed=seed)


@dataclass
class RunContext:
    """A finished run's inputs, rebuilt from its manifest and its panel (schema ``panel``)."""

    manifest: RunManifest
    panel: pd.DataFrame

    @classmethod
    def from_manifest(cls, manifest: RunManifest, panel: pd.DataFrame) -> "RunContext":
        return cls(manifest, panel)

    @cached_property
    def adapter(self) -> ModelAdapter:
        model = self.manifest.config.model
        return load_adapter(self.manifest.inputs["model_dir"], family=self.manifest.family, device=model.device,
                            random_init=model.random_init, seed=model.seed)

    @cached_property
    def tokenizer(self) -> Tokenizer:
        return self.adapter.tokenizer(self.manifest.config.tokenizer, self.manifest.config.model.dictionaries)

    @cached_property
    def cells(self) -> CellData:
        return load_cells_for(self.manifest.config.data, self.tokenizer, seed=self.manifest.config.extraction.seed)

    @cached_property
    def attention_tokens(self) -> TokenizedCells:
        """The cells the run's attention and ablation ran on (``extraction.cells``), as model input, tokenised as
        precompute did (every cell in blocks, only these kept: :func:`analysis.models.base.tokens_of`)."""
        extraction = self.manifest.config.extraction
        keep = self.cells.select(extraction.cells, extraction.n_cells, extraction.seed)
        return tokens_of(self.tokenizer, self.cells, keep,
                         panel=self.panel if self.tokenizer.panel_dependent else None)[0]

    def reference(self, reference_edges: pd.DataFrame, name: str | None = None) -> ReferenceNetwork:
        """A reference network of the run (default: its first) from its ``reference_edges`` table."""
        name = name or self.manifest.reference_names[0]
        return ReferenceNetwork(name, reference_edges[reference_edges["reference"] == name], {})


def ablation_tables(adapter: ModelAdapter, tokens: TokenizedCells, panel: pd.DataFrame, reference: ReferenceNetwork,
                    observed: np.ndarray, items: Sequence[SweepItem], *, settings: AblationConfig, readout_layer: int,
                    de_table: pd.DataFrame | None = None, n_cells: int | None = None,
                    progress: Callable[[float], None] | None = None,
                    baseline_dir: Path | None = None, baseline_gib: float = 4.0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(results, fidelity) of ``items`` on ``n_cells`` (default ``settings.n_cells``) seeded cells of ``tokens``:
    behaviour on one fixed masking, fidelity, target recall (token-predicting models), and the read-out layer's
    reference and per-perturbation AUROC (``observed``: ``[G, G]`` co-observed pairs). ``baseline_dir``: where the
    unablated pass on these cells is kept for the next request (:func:`baseline_store`, at most ``baseline_gib``)."""
    inputs = prepare(tokens, panel, readout_layer=readout_layer, n_cells=n_cells or settings.n_cells,
                     probability=settings.mask_probability, seed=settings.seed)
    targets = reference_targets(inputs.tokens, reference.pairs(), adapter.vocab_size) if adapter.predicts_tokens \
        else None
    baseline = None if baseline_dir is None else baseline_store(baseline_dir, adapter, inputs.tokens, settings,
                                                                readout_layer, reference.name, baseline_gib)
    acc = ablate(adapter, inputs, items, batch_size=settings.batch_size, targets=targets, progress=progress,
                 baseline=baseline)
    universe = evaluable_universe(panel, reference, observed)
    pert = readout_auroc(panel, de_table, readout_layer) if de_table is not None else None
    return summarise(acc, items, universe, len(panel), readout_layer=readout_layer, perturbation_auroc=pert)


def baseline_store(directory: Path, adapter: ModelAdapter, tokens: TokenizedCells, settings: AblationConfig,
                   readout_layer: int, reference: str, max_gib: float) -> BaselineStore | None:
    """The store of the unablated pass over ``tokens`` under ``directory``, named by everything it depends on
    (the cells, their masking, batch size, read-out layer, reference and weights); None when it would exceed
    ``max_gib`` (each request then runs the baseline itself)."""
    size = baseline_bytes(tokens.n_cells, float(tokens.lengths.mean()), adapter.n_layers, adapter.d_model,
                          adapter.dtype.itemsize)
    if size > max_gib * 2 ** 30:
        return None
    digest = hashlib.sha256(tokens.input_ids.tobytes())
    if tokens.values is not None:
        digest.update(tokens.values.tobytes())
    key = stable_hash({"obs": list(map(str, tokens.obs.index)), "inputs": digest.hexdigest(),
                       "seed": settings.seed, "p": settings.mask_probability, "batch": settings.batch_size,
                       "layer": readout_layer, "reference": reference, "model": adapter.checkpoint_sha256,
                       "layout": "hidden+masked"})     # stores without the masked input's hidden states differ
    return BaselineStore(Path(directory) / f"baseline-{key[:16]}")


def live_ablation(context: RunContext, reference_edges: pd.DataFrame, pair_counts: np.ndarray,
                  de_table: pd.DataFrame | None, specs: Sequence[InterventionSpec], *, n_cells: int,
                  progress: Callable[[float, str], None] = lambda f, msg: None,
                  baseline_dir: Path | None = None, baseline_gib: float = 4.0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(results, fidelity) for ``specs`` on ``n_cells`` cells of the run (same seed as the precomputed sweep);
    the unablated pass is kept under ``baseline_dir`` (up to ``baseline_gib``) and reused by the next request on
    the same cells."""
    progress(0.02, "loading model")
    adapter = context.adapter
    progress(0.1, "loading cells")
    tokens = context.attention_tokens
    item = SweepItem("custom", sum(max(len(s.heads), 1) for s in specs), -1, tuple(specs))
    return ablation_tables(adapter, tokens, context.panel, context.reference(reference_edges),
                           np.asarray(pair_counts) > 0, [item], settings=context.manifest.config.ablation,
                           readout_layer=context.manifest.readout_layer, de_table=de_table, n_cells=n_cells,
                           progress=lambda f: progress(0.15 + 0.8 * f, f"{int(f * n_cells)} cells"),
                           baseline_dir=baseline_dir, baseline_gib=baseline_gib)


def live_feature_edit(context: RunContext, sae_path: Path, edits: Sequence[FeatureEdit], own_genes: np.ndarray, *,
                      n_cells: int, progress: Callable[[float, str], None] = lambda f, msg: None
                      ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(results, genes) of ``edits`` (one layer's features at one or more scales, through the SAE at ``sae_path``) on
    ``n_cells`` cells of the run with the ablation's seed and masking (the head ablations' cells), scored by
    :func:`analysis.scoring.feature_effects.summarise_feature_edits`; ``own_genes``: ``[n_genes]`` bool over the
    run's genes, the edited features' own genes (causal specificity)."""
    progress(0.02, "loading model")
    adapter = context.adapter
    progress(0.1, "loading cells")
    tokens = context.attention_tokens
    settings = context.manifest.config.ablation
    inputs = prepare(tokens, context.panel, readout_layer=context.manifest.readout_layer, n_cells=n_cells,
                     probability=settings.mask_probability, seed=settings.seed)
    layers = {edit.layer for edit in edits}
    if len(layers) != 1:
        raise ValueError(f"live feature edits use one layer's SAE at a time, got layers {sorted(layers)}")
    saes = {layers.pop(): load_sae(sae_path)}
    readouts = run_feature_edits(adapter, inputs, saes, edits, batch_size=settings.batch_size,
                                 progress=lambda f: progress(0.15 + 0.8 * f, f"{int(f * n_cells)} cells"))
    return summarise_feature_edits(readouts, edits, {edit.key: own_genes for edit in edits},
                                   tokens.genes["symbol"].astype(str).to_numpy(), n_layers=adapter.n_layers)
