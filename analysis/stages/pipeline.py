"""The precompute stages, in order: inputs -> tokens + panel -> attention -> edges -> ranking -> manifest.

Every input is loaded and validated before anything is written under ``cache/artifacts`` (a bad input leaves
no trace there). The costly stages (attention extraction, ablation sweep) record the hash of their inputs and
are skipped when a killed run resumes; the others are cheap and recomputed.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..io import schemas
from ..io.artifacts import RunWriter, sha256_path
from ..config import RunConfig, stable_hash
from ..io.cells import CellData, InputError, load_cells
from . import perturbation as perturbation_stage
from ..io.references import ReferenceNetwork, load_reference, load_trrust
from ..scoring.registry import StatsRegistry, ablation_tests
from ..models.geneformer.tokenizer import GeneformerDictionaries, TokenizedCells, load_dictionaries, tokenize

log = logging.getLogger("precompute")
SIM_REFERENCE = "simulated truth"


@dataclass
class Inputs:
    cfg: RunConfig
    cells: CellData
    dicts: GeneformerDictionaries
    references: list[ReferenceNetwork]
    model_dir: Path
    input_hashes: dict[str, str]
    provenance: dict


@contextmanager
def timed(name: str):
    t0 = time.perf_counter()
    log.info("[%s] start", name)
    yield
    log.info("[%s] done in %.2fs", name, time.perf_counter() - t0)


def resolve_inputs(cfg: RunConfig, cache: Path, progress: bool = True) -> Inputs:
    """Load and validate data, dictionaries, references and the checkpoint location (embedded default when unset)."""
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
        with timed("embedded model"):
            model_dir, history = ensure_model(cfg.simulation, cfg.train, cache, progress=progress)
        provenance["model"] = {"embedded": True, "training_log": history}
    else:
        model_dir = Path(cfg.model.path)
        if not (model_dir / "config.json").is_file():
            raise InputError(f"{model_dir} is not a model checkpoint directory (no config.json)")
    dict_dir = Path(cfg.model.dictionaries) if cfg.model.dictionaries else model_dir
    dicts = load_dictionaries(dict_dir)
    cells = load_cells(data_cfg.path, perturbation_col=data_cfg.perturbation_col,
                       control_label=data_cfg.control_label, cell_state_col=data_cfg.cell_state_col,
                       gene_id_col=data_cfg.gene_id_col, symbol_to_id=dicts.name_to_id or None,
                       max_cells=data_cfg.max_cells, seed=cfg.extraction.seed)
    references += [load_reference(spec, cfg.ranking.dorothea_min_confidence) for spec in cfg.ranking.references]
    if not references:
        raise InputError("no reference network: pass --reference trrust_rawdata.human.tsv (or dorothea:PATH)")
    hashes = {"data": sha256_path(Path(data_cfg.path))}
    hashes.update({f"reference:{r.name}": sha256_path(Path(r.params["path"])) for r in references})
    return Inputs(dataclasses.replace(cfg, data=data_cfg), cells, dicts, references, model_dir, hashes, provenance)


def run_precompute(cfg: RunConfig, cache: Path, progress: bool = True) -> Path:
    """Run every stage of issue-level precompute for ``cfg`` into ``cache``; returns the run directory."""
    from ..interp.attention import AttentionStore, extract_attention
    from ..scoring.edges import attention_edges, spearman_edges
    from ..models.geneformer.adapter import GeneformerAdapter
    from ..scoring.panel import select_panel
    from ..scoring.ranking import evaluable_universe, rank_heads

    t_start = time.perf_counter()
    with timed("inputs"):
        inp = resolve_inputs(cfg, cache, progress=progress)
        adapter = GeneformerAdapter.from_pretrained(inp.model_dir, device=cfg.model.device,
                                                    random_init=cfg.model.random_init, seed=cfg.model.seed)
        if cfg.model.path is None:
            adapter.name = "embedded tiny Geneformer"
        tokens = tokenize(inp.cells, inp.dicts, adapter.max_len)
        ref_tfs = set().union(*(r.tfs for r in inp.references))
        panel = schemas.validate("panel", select_panel(inp.cells, tokens, reference_tfs=ref_tfs,
                                                       n_hvg=cfg.extraction.n_hvg,
                                                       panel_size=cfg.extraction.panel_size))
        for ref in inp.references:
            universe = evaluable_universe(panel, ref, np.ones((len(panel), len(panel)), dtype=bool))
            if universe.tf_rows.size == 0:
                raise InputError(f"reference {ref.name} has no TF with a target among the {len(panel)} panel genes "
                                 "(check that gene symbols match, or raise --panel-size / --n-hvg)")
        if cfg.cssi.n_fine > 0:
            from ..scoring.cssi_levels import check_config

            check_config(cfg.cssi, inp.cells.n_cells, adapter.n_layers)
    model_hash = adapter.checkpoint_sha256 or stable_hash({"random_init": cfg.model.random_init,
                                                           "config": adapter.model.config.to_dict(),
                                                           "seed": cfg.model.seed})
    run_key = stable_hash({"config": inp.cfg.to_dict(), "inputs": inp.input_hashes, "model": model_hash})
    run_id = f"{cfg.name}-{run_key[:10]}"
    writer = RunWriter(cache, run_id).open()
    log.info("run %s -> %s", run_id, writer.final)
    try:
        att_key = stable_hash({"run": run_key, "stage": "attention"})
        t0 = time.perf_counter()
        if writer.is_done("attention", att_key):
            store = AttentionStore.load(writer.dir)
            writer.mark_done("attention", att_key, time.perf_counter() - t0, skipped=True)
        else:
            with timed(f"attention ({tokens.n_cells} cells, {len(panel)} panel genes, {adapter.device})"):
                store = extract_attention(adapter, tokens, panel, batch_size=cfg.extraction.batch_size,
                                          progress=progress)
                store.save(writer.dir)
            writer.mark_done("attention", att_key, time.perf_counter() - t0)
        t0 = time.perf_counter()
        with timed("edges"):
            att_edges = attention_edges(store)
            corr_edges = spearman_edges(inp.cells, store.panel)
            np.save(writer.dir / "edges_attention.npy", att_edges.scores.astype(np.float32))
            np.save(writer.dir / "edges_spearman.npy", corr_edges.scores.astype(np.float32))
            att_edges.sources.to_parquet(writer.dir / "edge_sources.parquet", index=False)
        writer.mark_done("edges", att_key, time.perf_counter() - t0)
        t0 = time.perf_counter()
        tables, per_tf, ref_tables = [], [], []
        with timed("ranking"):
            for ref in inp.references:
                ref_tables.append(ref.edges)
                for direction in cfg.ranking.directions:
                    for edges in (att_edges, corr_edges):
                        res = rank_heads(edges, ref, direction=direction, top_k=cfg.ranking.top_k,
                                         n_null=cfg.ranking.n_null, seed=cfg.ranking.seed)
                        tables.append(res.table)
                        per_tf.append(res.per_tf)
            ranking = schemas.validate("head_ranking", pd.concat(tables, ignore_index=True))
            ranking.to_parquet(writer.dir / "head_ranking.parquet", index=False)
            schemas.validate("per_tf", pd.concat(per_tf, ignore_index=True)).to_parquet(
                writer.dir / "per_tf.parquet", index=False)
            refs = pd.concat(ref_tables, ignore_index=True)
            panel_symbols = set(store.panel["symbol"])
            refs = refs[refs["tf"].isin(panel_symbols) & refs["target"].isin(panel_symbols)]
            schemas.validate("reference_edges", refs).to_parquet(writer.dir / "reference_edges.parquet", index=False)
        writer.mark_done("ranking", att_key, time.perf_counter() - t0)
        registry = ranking_registry(ranking, cfg.perturbation.readout_layer % adapter.n_layers)
        if inp.cells.perturbation_col is not None:
            t0 = time.perf_counter()
            with timed("perturbation + confounds"):
                constructed = None
                if cfg.data.path is None:  # embedded default: planted edges with known incremental value
                    constructed = embedded_constructed_edges(cfg, inp.cells, store.panel)
                pert = perturbation_stage.run(inp.cells, store.panel, att_edges, inp.references, cfg.perturbation,
                                              constructed=constructed)
                for name, frame in pert.tables.items():
                    schemas.validate(name, frame).to_parquet(writer.dir / f"{name}.parquet", index=False)
                registry.extend(pert.registry)
            writer.mark_done("perturbation", att_key, time.perf_counter() - t0)
        abl_key = stable_hash({"run": run_key, "stage": "ablation"})
        if cfg.ablation.n_cells > 0 and writer.is_done("ablation", abl_key):
            results = schemas.validate("ablation_results", pd.read_parquet(writer.dir / "ablation_results.parquet"))
            registry.extend(ablation_tests(results))
            writer.mark_done("ablation", abl_key, 0.0, skipped=True)
        elif cfg.ablation.n_cells > 0:
            t0 = time.perf_counter()
            with timed(f"ablation sweep ({cfg.ablation.n_cells} cells)"):
                de = pert.tables.get("de_results") if inp.cells.perturbation_col is not None else None
                results, fidelity = run_ablation_sweep(adapter, tokens, store, ranking, inp.references[0],
                                                       inp.dicts.mask_id, cfg, de)
                schemas.validate("ablation_results", results).to_parquet(writer.dir / "ablation_results.parquet",
                                                                         index=False)
                schemas.validate("ablation_fidelity", fidelity).to_parquet(writer.dir / "ablation_fidelity.parquet",
                                                                           index=False)
                registry.extend(ablation_tests(results))
            writer.mark_done("ablation", abl_key, time.perf_counter() - t0)
        if cfg.cssi.n_fine > 0:
            registry.extend(run_cssi(adapter, tokens, inp, store, writer, run_key, progress))
        stats_table = schemas.validate("statistics_registry", registry.table())
        stats_table.to_parquet(writer.dir / "statistics_registry.parquet", index=False)
        stats_table.to_csv(writer.dir / "statistics_registry.csv", index=False)
        pd.DataFrame(writer.timings).pipe(lambda f: schemas.validate("stage_timings", f)).to_parquet(
            writer.dir / "stage_timings.parquet", index=False)
        manifest = {
            "config": inp.cfg.to_dict(), "config_hash": inp.cfg.config_hash(), "run_key": run_key,
            "inputs": {**inp.input_hashes, "model_dir": str(inp.model_dir), "model_sha256": adapter.checkpoint_sha256,
                       "official_model": adapter.official_name, "dictionaries": inp.dicts.source},
            "model": {"name": adapter.name, "n_layers": adapter.n_layers, "n_heads": adapter.n_heads,
                      "d_head": adapter.d_head, "max_len": adapter.max_len, "device": str(adapter.device),
                      "random_init": cfg.model.random_init},
            "data": {"n_cells": inp.cells.n_cells, "n_genes": int(inp.cells.gene_ids.size),
                     "n_vocab_genes": int(len(tokens.genes)), "panel_size": int(len(store.panel)),
                     "perturbations": inp.cells.perturbed_genes(),
                     "cell_state_col": inp.cells.cell_state_col},
            "references": [r.params | {"name": r.name} for r in inp.references],
            "seeds": {"extraction": cfg.extraction.seed, "ranking": cfg.ranking.seed, "model": cfg.model.seed,
                      "simulation": cfg.simulation.seed, "train": cfg.train.seed},
            "provenance": inp.provenance, "tokenizer": tokens.params,
            "wall_seconds": round(time.perf_counter() - t_start, 2),
        }
        return writer.finish(manifest)
    except InputError:
        writer.discard()
        raise


def run_cssi(adapter, tokens: TokenizedCells, inp: Inputs, store, writer, run_key: str, progress: bool
             ) -> StatsRegistry:
    """The CSSI stage (analysis.scoring.cssi_levels): strata + grouped extraction (resumable), the grid of levels with
    nulls, the synthetic validation, and their registry tests."""
    from ..scoring import cssi_levels as cssi_stage
    from ..sim.cssi_synthetic import validate

    cfg = inp.cfg
    key = stable_hash({"run": run_key, "stage": "cssi"})
    t0 = time.perf_counter()
    synthetic_file = writer.dir / "cssi_synthetic.parquet"
    if writer.is_done("cssi", key):
        curve = schemas.validate("cssi_curve", pd.read_parquet(writer.dir / "cssi_curve.parquet"))
        synthetic = pd.read_parquet(synthetic_file) if synthetic_file.is_file() else None
        writer.mark_done("cssi", key, 0.0, skipped=True)
    else:
        with timed(f"CSSI strata + grouped attention ({cfg.cssi.representation})"):
            run = cssi_stage.prepare(adapter, tokens, inp.cells, store, cfg, progress=progress)
            cssi_stage.save(run, writer.dir)
        with timed(f"CSSI levels ({cfg.cssi.n_null} random strata, {cfg.cssi.n_gene_null} gene permutations)"):
            curve, null = cssi_stage.evaluate_grid(run, store.panel, inp.references, cfg.cssi, progress=progress)
            schemas.validate("cssi_curve", curve).to_parquet(writer.dir / "cssi_curve.parquet", index=False)
            schemas.validate("cssi_null", null).to_parquet(writer.dir / "cssi_null.parquet", index=False)
        synthetic = None
        if cfg.cssi.synthetic_seeds > 0:
            with timed(f"CSSI synthetic validation ({cfg.cssi.synthetic_seeds} seeds)"):
                synthetic = schemas.validate("cssi_synthetic", validate(cfg.cssi.synthetic_seeds))
                synthetic.to_parquet(synthetic_file, index=False)
        writer.mark_done("cssi", key, time.perf_counter() - t0)
    registry = cssi_stage.cssi_tests(curve, primary_n_strata=cfg.cssi.primary_n_strata,
                                     readout_layer=cfg.perturbation.readout_layer % adapter.n_layers)
    if synthetic is not None:
        registry.extend(cssi_stage.synthetic_tests(synthetic))
    return registry


def ranking_registry(ranking: pd.DataFrame, readout_layer: int) -> StatsRegistry:
    """Reference-ranking tests: the pre-specified read-out layer's head-mean AUROC (confirmatory for
    TF -> target, descriptive for the other directions) and every head's AUROC (exploratory screen)."""
    reg = StatsRegistry()
    auroc = ranking[ranking["metric"] == "auroc"]
    for r in auroc.itertuples():
        if r.edge_type == "attention_layer_mean" and r.layer == readout_layer:
            reg.register("reference_recovery", f"{r.reference} {r.direction}: attention L{r.layer} AUROC > null",
                         "label-shuffle permutation", r.p, effect=r.value, effect_name="AUROC", n=r.n_pos + r.n_neg,
                         confirmatory=r.direction == "tf_to_target")
        elif r.edge_type == "attention":
            reg.register("head_screen", f"{r.reference} {r.direction}: L{r.layer}H{r.head} AUROC > null",
                         "label-shuffle permutation", r.p, effect=r.value, effect_name="AUROC", n=r.n_pos + r.n_neg,
                         confirmatory=False, exploratory=True)
        elif r.edge_type == "spearman":
            reg.register("reference_recovery", f"{r.reference} {r.direction}: correlation AUROC > null",
                         "label-shuffle permutation", r.p, effect=r.value, effect_name="AUROC", n=r.n_pos + r.n_neg,
                         confirmatory=False)
    return reg


def embedded_constructed_edges(cfg: RunConfig, cells: CellData, panel: pd.DataFrame) -> dict[str, np.ndarray]:
    """The simulation's planted edge scores (oracle pairwise signal, and gene-level-only) over the panel."""
    from ..scoring.edges import expression_matrix
    from ..sim.simulate import constructed_edges, make_network

    # control cells only, like the gene-level features: variance over perturbed cells would leak DE status
    variance = expression_matrix(perturbation_stage.control_cells(cells), panel["gene_id"].to_numpy()).var(0)
    return constructed_edges(make_network(cfg.simulation), list(panel["symbol"]), variance, seed=cfg.simulation.seed)


def load_run_cells(manifest: dict) -> CellData:
    """Reload a finished run's cells exactly as precompute read them (same columns, subsample and seed)."""
    data = manifest["config"]["data"]
    dict_dir = manifest["inputs"].get("dictionaries")
    names = load_dictionaries(dict_dir).name_to_id if dict_dir else {}
    return load_cells(data["path"], perturbation_col=data["perturbation_col"], control_label=data["control_label"],
                      cell_state_col=data["cell_state_col"], gene_id_col=data["gene_id_col"],
                      symbol_to_id=names or None, max_cells=data["max_cells"],
                      seed=manifest["config"]["extraction"]["seed"])


def run_ablation_sweep(adapter, tokens: TokenizedCells, store, ranking: pd.DataFrame, reference: ReferenceNetwork,
                       mask_id: int, cfg: RunConfig, de_table: pd.DataFrame | None):
    """The precomputed dose-response: heads ordered by reference AUROC (first reference, TF -> target)."""
    from ..interp.ablation import ablate, prepare, sweep
    from ..scoring.ranking import evaluable_universe

    readout = cfg.perturbation.readout_layer % adapter.n_layers
    heads = ranking[(ranking["reference"] == reference.name) & (ranking["direction"] == "tf_to_target")
                    & (ranking["metric"] == "auroc") & (ranking["edge_type"] == "attention")]
    order = list(heads.sort_values("value", ascending=False, kind="stable")[["layer", "head"]].itertuples(index=False,
                                                                                                        name=None))
    panel = store.panel
    universe = evaluable_universe(panel, reference, np.asarray(store.counts) > 0)
    inputs = prepare(adapter, tokens, panel, universe, mask_id=mask_id, readout_layer=readout,
                     n_cells=cfg.ablation.n_cells, seed=cfg.ablation.seed)
    items = sweep(order, adapter.n_layers, readout_layer=readout, ks=cfg.ablation.ks, n_random=cfg.ablation.n_random,
                  seed=cfg.ablation.seed)
    pert_fn = perturbation_readout(panel, de_table, readout) if de_table is not None else None
    return ablate(adapter, inputs, items, batch_size=cfg.ablation.batch_size, perturbation_auroc=pert_fn,
                  targets=reference_targets(inputs.tokens, reference, adapter.model.config.vocab_size))


def reference_targets(tokens: TokenizedCells, reference: ReferenceNetwork, vocab_size: int):
    """TF positions and present targets for the target-recall behaviour; None when no cell has a TF with one."""
    from ..interp.positive_control import target_sets

    try:
        return target_sets(tokens, reference.pairs(), vocab_size)
    except ValueError:
        return None


def perturbation_readout(panel: pd.DataFrame, de_table: pd.DataFrame, readout_layer: int):
    """Callback for the ablation read-out: per-head attention sums ``[heads, G*G]`` of the read-out layer and the
    pair counts ``[G*G]`` of the same cells -> per-perturbation AUROC (sorted by perturbation) of their head
    mean against the run's DE targets."""
    from ..scoring.edges import EdgeScores
    from ..scoring.perturbation import DEResult, perturbation_auroc

    de = DEResult(de_table, pd.DataFrame(), {})
    g = len(panel)
    sources = pd.DataFrame({"edge_type": ["attention_layer_mean"], "layer": [readout_layer], "head": [-1]})

    def score(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan).mean(0).reshape(g, g)
        edges = EdgeScores(mean[None], sources, np.ones((g, g), bool), panel, {})
        return perturbation_auroc(edges, de).sort_values("perturbation")["auroc"].to_numpy()
    return score
