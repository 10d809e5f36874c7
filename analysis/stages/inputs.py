"""The inputs stage: everything a run needs, loaded and checked before anything is written under ``cache/artifacts``
(a bad input leaves no trace there). The embedded default's data and model are built here on first use.

Order: the checkpoint (family detected from its directory), its tokeniser checked against it (dictionaries or
vocabulary), the cells (genes mapped the way the tokeniser needs), the references, then tokens and the gene panel.
A panel-dependent tokeniser (scGPT's ``panel`` mode: every cell's input is the panel) gets the panel first, chosen
from expression; otherwise cells are tokenised first and the panel chosen among the genes their inputs hold.
"""
from __future__ import annotations

import dataclasses
import logging
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from .. import protocols
from ..config import (MODALITIES, AblationConfig, PerturbationConfig, RunConfig, SAEConfig, mlp_block_layers,
                      stable_hash)
from ..errors import ConfigError, InputError
from ..io import schemas
from ..io.artifacts import sha256_path
from ..io.cells import CellData
from ..io.stores import column_count, source_genes
from ..io.references import ReferenceNetwork, coregulation_pairs, load_pair_reference, load_reference, load_trrust
from ..models.base import ModelAdapter, Tokenizer, TokenizedCells, load_adapter, tokens_of
from ..rerun import load_cells_for
from ..scoring.cssi_levels import check_config as check_cssi
from ..scoring.panel import describe_left_out, evaluation_universe, perturbations_left_out, select_panel
from ..scoring.perturbation import MIN_GROUP_CELLS
from ..scoring.ranking import evaluable_universe
from .timing import timed

log = logging.getLogger("precompute")
SIM_REFERENCE = "simulated truth"


@dataclass
class Inputs:
    """A run's validated inputs (module doc); ``cfg`` has the embedded default's data columns filled in."""

    cfg: RunConfig
    cells: CellData
    adapter: ModelAdapter
    tokenizer: Tokenizer
    attention_tokens: TokenizedCells   # the attention cells as model input (extraction, ablation and CSSI share them)
    panel: pd.DataFrame
    references: list[ReferenceNetwork]
    model_dir: Path
    input_hashes: dict[str, str]
    provenance: dict
    attention_cells: np.ndarray    # indices of the cells attention and ablation run on (``extraction.cells``)
    pair_references: list[ReferenceNetwork]   # undirected pair references (biology stage, SN17)
    left_out: pd.DataFrame         # perturbed genes not in the panel, and why (scoring.panel.perturbations_left_out)

    @cached_property
    def attention_cell_data(self) -> CellData:
        """The attention cells' counts (the Spearman baseline and CSSI strata use the same cells)."""
        return self.cells.subset(self.attention_cells)

    @cached_property
    def source_rows(self) -> np.ndarray:
        """``[R]`` panel indices whose per-head rows the pooled store keeps
        (:func:`analysis.io.stores.source_genes`)."""
        try:
            return source_genes(self.panel, self.cfg.extraction.source_genes)
        except ValueError as exc:
            raise InputError(str(exc)) from exc

    @property
    def shared_controls(self) -> np.ndarray | None:
        """The attention cells, when they are also the controls of DE and the gene-level baselines: ``extraction.cells
        = control`` and ``perturbation.n_control`` unset, equal to their count, or at least it when they are every
        control cell (the paper's one draw of 2,000, section 2.5). None: DE draws its own ``n_control`` and the
        baselines read every control cell (the manifest's DE parameters say how many)."""
        if self.cfg.extraction.cells != "control" or self.cells.perturbation_col is None:
            return None
        n, size = self.cfg.perturbation.n_control, self.attention_cells.size
        every = size == self.cells.select("control").size
        return self.attention_cells if n is None or n == size or (every and n >= size) else None

    @property
    def n_columns(self) -> int:
        """How many leading :attr:`source_rows` (reference TFs, genes asked for) have their per-head columns kept."""
        return column_count(self.panel, self.source_rows, self.cfg.extraction.source_genes)

    @cached_property
    def full_heads(self) -> tuple[tuple[int, int], ...]:
        """(layer, head) of every head kept whole (``extraction.full_heads``, ``L<l>H<h>``), checked against the
        model."""
        return parse_heads(self.cfg.extraction.full_heads, self.adapter.n_layers, self.adapter.n_heads)

    @property
    def readout_layer(self) -> int:
        return self.cfg.perturbation.resolve_readout_layer(self.adapter.n_layers)

    def protocol_record(self) -> dict:
        """The protocol the run follows and every departure from it: settings overridden, the read-out layer when
        the model is not the paper's, data without a perturbation column (no control cells to draw, no
        perturbation-first evaluation), and counts the data cannot reach (control cells, universe genes)."""
        cfg = self.cfg
        if cfg.protocol == "none":
            return {"name": "none", "deviations": []}
        rows = protocols.deviations(cfg)
        if protocols.readout_layer_for(cfg.protocol, self.adapter.official_name) is None:
            rows.append({"setting": "perturbation.readout_layer", "paper": "L13 of Geneformer-V2-316M",
                         "run": f"L{self.readout_layer} of {self.adapter.name} ({self.adapter.n_layers} layers)",
                         "source": "2.3: pre-specified from DLPFC data for V2-316M only"})
        if not self.cells.perturbation_col:
            rows.append({"setting": "perturbation column", "paper": "a CRISPR screen: perturbation labels and "
                         "control cells", "run": "none: attention on every cell, no perturbation-first evaluation, "
                         "DE, baselines, incremental value or ablation read-out", "source": "2.3-2.5, 4.3"})
        n_control = int(self.cells.select("control").size) if self.cells.perturbation_col else None
        want = cfg.perturbation.n_control
        if n_control is not None and want is not None and n_control < want:
            rows.append({"setting": "control cells available", "paper": want, "run": n_control,
                         "source": "the data holds fewer control cells"})
        n_universe = int(self.panel["in_universe"].sum())
        if cfg.perturbation.universe == "hvg" and n_universe < cfg.perturbation.universe_size:
            rows.append({"setting": "universe genes available", "paper": cfg.perturbation.universe_size,
                         "run": n_universe, "source": "the data holds fewer expressed vocabulary genes"})
        return {"name": cfg.protocol, "deviations": rows}

    def model_hash(self) -> str:
        """The checkpoint's sha256, or for random weights a hash of what determines them."""
        return self.adapter.checkpoint_sha256 or stable_hash({"random_init": self.cfg.model.random_init,
                                                              "model": self.adapter.describe(),
                                                              "seed": self.cfg.model.seed})


def tokens_and_panel(cfg: RunConfig, cells: CellData, tokenizer: Tokenizer, reference_tfs: set[str],
                     max_len: int, keep: np.ndarray) -> tuple[TokenizedCells, pd.DataFrame, pd.DataFrame]:
    """The tokens of cells ``keep`` (the attention cells), the panel (module doc; schema-validated) and the
    perturbed genes left out of it with why (:func:`analysis.scoring.panel.perturbations_left_out`). Every cell
    is tokenised, a block at a time, for the panel's gene presence; only the kept cells' tokens are held
    (:func:`analysis.models.base.tokens_of`), so a screen of any size fits."""
    ext, pert = cfg.extraction, cfg.perturbation
    if tokenizer.panel_dependent:
        genes = tokenizer.vocabulary_genes(cells)
        present = cells.moments.pooled().columns(genes["gene_id"].to_numpy()).detected[0]
        size = min(ext.panel_size, max_len - 1)
        universe = evaluation_universe(cells, genes, present, pert.universe, pert.universe_size)
        if size < ext.panel_size:
            log.info("panel capped at %d genes: every cell's input is <cls> + the panel, and the model takes %d "
                     "tokens", size, max_len)
            if universe is not None and universe.size > size:
                raise InputError(f"in tokenizer.mode={cfg.tokenizer.mode!r} every cell's input is <cls> + the panel "
                                 f"and the model takes {max_len} tokens, so the panel holds at most {size} genes, "
                                 f"fewer than the {universe.size}-gene evaluation universe: use --set "
                                 "tokenizer.mode=zero_shot (each cell's expressed genes, sampled to the model's "
                                 "length, as in pretraining) or lower perturbation.universe_size")
        panel = select_panel(cells, genes, present, reference_tfs=reference_tfs, n_hvg=ext.n_hvg,
                             panel_size=size, universe=universe)
        tokens, _ = tokens_of(tokenizer, cells, keep, panel=panel)
    else:
        tokens, present = tokens_of(tokenizer, cells, keep)
        genes, size = tokens.genes, ext.panel_size
        panel = select_panel(cells, genes, present, reference_tfs=reference_tfs, n_hvg=ext.n_hvg, panel_size=size,
                             universe=evaluation_universe(cells, genes, present, pert.universe, pert.universe_size))
    left_out = perturbations_left_out(cells, genes, present, panel, size)
    if len(left_out):
        log.warning("%d of %d perturbed genes are not in the panel, so they cannot be evaluated: %s",
                    len(left_out), len(cells.perturbed_genes()), describe_left_out(left_out))
    return tokens, schemas.validate("panel", panel), left_out


def parse_heads(names: tuple[str, ...], n_layers: int, n_heads: int) -> tuple[tuple[int, int], ...]:
    """``("L13H4", ...)`` -> ``((13, 4), ...)``; an InputError names a malformed name or a head the model lacks."""
    heads = []
    for name in names:
        match = re.fullmatch(r"L(\d+)H(\d+)", name.strip())
        if match is None:
            raise InputError(f"extraction.full_heads: {name!r} is not a head name; write L<layer>H<head>, e.g. L13H4")
        layer, head = int(match[1]), int(match[2])
        if not (layer < n_layers and head < n_heads):
            raise InputError(f"extraction.full_heads: {name} is not in the model ({n_layers} layers x {n_heads} heads, "
                             f"L0H0 to L{n_layers - 1}H{n_heads - 1})")
        heads.append((layer, head))
    return tuple(dict.fromkeys(heads))


def check_sae(cfg: SAEConfig, n_layers: int, d_model: int) -> None:
    """Refuse SAE settings the model cannot take (layers it does not have, more active features than features),
    before anything runs rather than at the SAE stage, after every other stage."""
    bad = [layer for layer in cfg.layers if not 0 <= layer < n_layers]
    if bad:
        raise ConfigError(f"sae.layers {bad}: the model has layers 0-{n_layers - 1}")
    if cfg.k > cfg.expansion * d_model:
        raise ConfigError(f"sae.k = {cfg.k} exceeds the {cfg.expansion * d_model} features (sae.expansion "
                          f"{cfg.expansion} x d_model {d_model})")
    if cfg.specificity_features < 0 or cfg.specificity_cells < 2:
        raise ConfigError(f"sae.specificity_features ({cfg.specificity_features}) must be at least 0 and "
                          f"sae.specificity_cells ({cfg.specificity_cells}) at least 2")
    if cfg.regulatory_cells < 3 or cfg.n_responding < 1 or cfg.regulatory_null < 1:
        raise ConfigError(f"sae.regulatory_cells ({cfg.regulatory_cells}) must be at least 3, sae.n_responding "
                          f"({cfg.n_responding}) and sae.regulatory_null ({cfg.regulatory_null}) at least 1")


def check_perturbation_groups(cells: CellData) -> None:
    """Refuse, before anything runs, a screen whose perturbations all have fewer cells than DE needs
    (:data:`analysis.scoring.perturbation.MIN_GROUP_CELLS`): perturbation-first evaluation would otherwise fail
    after the attention stages."""
    if cells.perturbation_col is None:
        return
    labels = cells.obs[cells.perturbation_col].astype(str)
    sizes = labels[labels != cells.control_label].value_counts()
    if len(sizes) and sizes.iloc[0] < MIN_GROUP_CELLS:
        raise InputError(f"no perturbation in column {cells.perturbation_col!r} has {MIN_GROUP_CELLS} or more cells "
                         f"(the largest, {sizes.index[0]!r}, has {sizes.iloc[0]}): perturbation-first evaluation "
                         "tests each perturbation's differential expression on its own cells; add cells, or leave "
                         "out --perturbation-col to run without it")


PERTURBATION_TYPE_COLUMN = "perturbation_type"     # scPerturb's column: CRISPRi, CRISPRa, CRISPR, drug, ...


def check_modality(cells: CellData, modality: str) -> None:
    """Refuse a screen whose ``obs['perturbation_type']`` (scPerturb's harmonised column) names one CRISPR modality
    for every perturbed cell while ``perturbation.modality`` is the other: the on-target check would call every
    perturbation failed (knock-down expected, activation found) and leave none evaluable."""
    if cells.perturbation_col is None or PERTURBATION_TYPE_COLUMN not in cells.obs:
        return
    perturbed = cells.obs[cells.perturbation_col].astype(str) != cells.control_label
    kinds = set(cells.obs.loc[perturbed, PERTURBATION_TYPE_COLUMN].astype(str).str.strip().str.lower())
    if len(kinds) == 1 and (kind := kinds.pop()) in MODALITIES and kind != modality:
        raise InputError(f"obs['{PERTURBATION_TYPE_COLUMN}'] says every perturbed cell is {kind}, but "
                         f"perturbation.modality is {modality}: pass --set perturbation.modality={kind}")


def check_ablation_layers(cfg: AblationConfig, n_layers: int) -> None:
    """Refuse whole-layer and MLP-block settings that name a layer the model does not have."""
    named = [("ablation.whole_layers", l) for l in cfg.whole_layers]
    named += [("ablation.mlp_blocks", l) for b in cfg.mlp_blocks for l in mlp_block_layers(b)]
    for key, layer in named:
        if not 0 <= layer < n_layers:
            raise ConfigError(f"{key} names layer {layer}; the model has layers 0-{n_layers - 1}")


def resolve_inputs(cfg: RunConfig, cache: Path, progress: bool = True) -> Inputs:
    """Load and validate model, tokeniser, data, references, tokens and panel (embedded default when unset)."""
    from ..sim.embedded import CELL_STATE_COL, CONTROL, PERTURBATION_COL, ensure_dataset, ensure_model

    provenance: dict = {}
    data_cfg = cfg.data
    references: list[ReferenceNetwork] = []
    if data_cfg.path is None:
        data_path, truth = ensure_dataset(cfg.simulation, cache)
        data_cfg = dataclasses.replace(data_cfg, path=str(data_path), perturbation_col=PERTURBATION_COL,
                                       control_label=CONTROL, cell_state_col=CELL_STATE_COL)
        references.append(load_trrust(truth, name=SIM_REFERENCE))
        provenance["data"] = "embedded simulation"
    if cfg.model.path is None:
        with timed(f"embedded {cfg.model.family} model"):
            model_dir, history = ensure_model(cfg.simulation, cfg.train, cache, cfg.model.family, progress=progress)
        provenance["model"] = {"embedded": True, "training_log": history}
    else:
        model_dir = Path(cfg.model.path)
    adapter = load_adapter(model_dir, family=cfg.model.family, device=cfg.model.device,
                           random_init=cfg.model.random_init, seed=cfg.model.seed)
    if cfg.model.path is None:
        adapter.name = f"embedded tiny {adapter.family}"
    cfg = dataclasses.replace(cfg, data=data_cfg, model=dataclasses.replace(cfg.model, family=adapter.family))
    paper_layer = protocols.readout_layer_for(cfg.protocol, adapter.official_name)
    if paper_layer is not None and cfg.perturbation.readout_layer == PerturbationConfig.readout_layer:
        cfg = dataclasses.replace(cfg, perturbation=dataclasses.replace(cfg.perturbation, readout_layer=paper_layer))
    cfg.perturbation.resolve_readout_layer(adapter.n_layers)
    paper_blocks = protocols.mlp_blocks_for(cfg.protocol, adapter.official_name)
    if paper_blocks and not cfg.ablation.mlp_blocks:
        cfg = dataclasses.replace(cfg, ablation=dataclasses.replace(cfg.ablation, mlp_blocks=paper_blocks))
    check_ablation_layers(cfg.ablation, adapter.n_layers)
    check_sae(cfg.sae, adapter.n_layers, adapter.d_model)
    tokenizer = adapter.tokenizer(cfg.tokenizer, cfg.model.dictionaries)
    cells = load_cells_for(data_cfg, tokenizer, seed=cfg.extraction.seed)
    log.info("counts: %s", cells.counts_source)
    check_perturbation_groups(cells)
    check_modality(cells, cfg.perturbation.modality)
    references += [load_reference(spec, cfg.ranking.dorothea_min_confidence) for spec in cfg.ranking.references]
    if not references:
        raise InputError("no reference network: pass --reference trrust_rawdata.human.tsv (or dorothea:PATH)")
    attention_cells = cells.select(cfg.extraction.cells, cfg.extraction.n_cells, cfg.extraction.seed)
    tokens, panel, left_out = tokens_and_panel(cfg, cells, tokenizer, set().union(*(r.tfs for r in references)),
                                               adapter.max_len, attention_cells)
    for ref in references:
        universe = evaluable_universe(panel, ref, np.ones((len(panel), len(panel)), dtype=bool))
        if universe.tf_rows.size == 0:
            raise InputError(f"reference {ref.name} has no TF with a target among the {len(panel)} panel genes "
                             "(check that gene symbols match, or raise --panel-size / --n-hvg)")
    if cfg.cssi.n_fine > 0:
        check_cssi(cfg.cssi, int(attention_cells.size), adapter.n_layers, native_embedding=adapter.native_embedding,
                   has_cls=tokens.params.get("cls_position") is not None)
    panel_symbols = set(panel["symbol"].astype(str).str.upper())
    pair_references = [load_pair_reference(spec, cfg.biology.string_min_score, panel_symbols)
                       for spec in cfg.biology.pair_references]
    if provenance.get("data") == "embedded simulation":   # simulated symbols: STRING cannot match them
        pair_references.append(coregulation_pairs(references[0]))
    hashes = {"data": sha256_path(Path(data_cfg.path))}
    hashes.update({f"reference:{r.name}": sha256_path(Path(r.params["path"]))
                   for r in references + pair_references if r.params.get("kind") != "coregulation"})
    inputs = Inputs(cfg, cells, adapter, tokenizer, tokens, panel, references, model_dir, hashes, provenance,
                    attention_cells, pair_references, left_out)
    inputs.source_rows, inputs.full_heads   # checked here, before anything is written
    return inputs
