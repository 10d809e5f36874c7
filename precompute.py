"""Precompute CLI: build a RunConfig (defaults -> --config TOML -> SCFMX_* env -> flags), run the analysis
stages into the cache, print each run id and where the run is.

    python precompute.py                         # embedded default: simulated screen + a tiny model per family
    python precompute.py --data cells.h5ad --model /path/Geneformer-V1-10M \\
        --dictionaries /path/dict_gc30M --reference trrust_rawdata.human.tsv
    python precompute.py --data cells.h5ad --model /path/scGPT_human --reference trrust_rawdata.human.tsv
"""
from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path

from analysis.config import default_cache_dir, load_config
from analysis.errors import ConfigError, InputError
from analysis.threads import bound_threads

FLAGS = {  # flag -> dotted config key
    "data": "data.path", "perturbation_col": "data.perturbation_col", "control_label": "data.control_label",
    "cell_state_col": "data.cell_state_col", "gene_id_col": "data.gene_id_col", "counts_layer": "data.counts_layer",
    "max_cells": "data.max_cells",
    "model": "model.path", "model_family": "model.family", "dictionaries": "model.dictionaries",
    "device": "model.device",
    "batch_size": "extraction.batch_size", "n_hvg": "extraction.n_hvg", "panel_size": "extraction.panel_size",
    "n_null": "ranking.n_null", "name": "name", "protocol": "protocol",
}


def parse_size(text: str) -> int:
    """``12GiB``, ``12G``, ``800MiB``, ``1.5T`` or a number of bytes -> bytes (powers of 1,024)."""
    units = {"": 1, "K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(?:i?B)?\s*", text, flags=re.IGNORECASE)
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size; write e.g. 12GiB, 800MiB or a number of bytes")
    return int(float(match[1]) * units[match[2].upper()])


def positive_int(text: str) -> int:
    """A count of 1 or more (``--threads``, ``--workers``; 0 or -1 used to be taken and reinterpreted, or hang)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: must be 1 or more")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", default=str(default_cache_dir()),
                    help="cache directory (default: cache/ of the checkout, or of the working directory when installed)")
    ap.add_argument("--config", help="TOML file with [data], [model], [extraction], [ranking] ... sections")
    ap.add_argument("--data", help="AnnData .h5ad with raw counts (default: embedded simulation)")
    ap.add_argument("--perturbation-col", help="obs column with the perturbed gene per cell")
    ap.add_argument("--control-label", help="label of control cells in the perturbation column")
    ap.add_argument("--cell-state-col", help="obs column with cell state / type")
    ap.add_argument("--gene-id-col", help="var column holding Ensembl ids")
    ap.add_argument("--counts-layer", help="where the raw counts are: X, raw (raw.X) or a layer's name (default: "
                    "layers['counts'], else raw.X when X is normalised, else X)")
    ap.add_argument("--max-cells", type=int, help="subsample to at most this many cells")
    ap.add_argument("--model", help="local checkpoint directory: Geneformer (config.json + weights) or scGPT "
                                    "(args.json + vocab.json + best_model.pt); default: the embedded tiny models")
    ap.add_argument("--model-family", help="auto (detect from the directory), geneformer or scgpt")
    ap.add_argument("--dictionaries", help="Geneformer: directory with token_dictionary*.pkl and "
                                           "gene_median_dictionary*.pkl; scGPT: directory with gene_name_id_dict*.pkl "
                                           "to map Ensembl ids to symbols")
    ap.add_argument("--random-weights", action="store_true", help="use the checkpoint's config with random weights")
    ap.add_argument("--control", choices=["random-weights"],
                    help="also run each model's untrained twin (same architecture, random weights) on the same cells "
                         "and settings; the Claims page sets every verdict beside the twin's")
    ap.add_argument("--device", help="auto, cpu or cuda")
    ap.add_argument("--reference", action="append", default=[],
                    help="reference network, kind:path (trrust, trrust_direction_known, dorothea, collectri); repeatable")
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--n-hvg", type=int)
    ap.add_argument("--panel-size", type=int)
    ap.add_argument("--n-null", type=int)
    ap.add_argument("--name", help="run name (prefix of the run id)")
    ap.add_argument("--protocol", help="the paper's settings for a context: paper-k562, paper-rpe1, paper-crispra "
                                       "or paper-k562-lenient (SN6.5's lenient DE); any other setting given "
                                       "overrides it and is listed as a deviation")
    ap.add_argument("--gene-sets", action="append", default=[], metavar="PATH.gmt",
                    help="a GMT gene-set collection (MSigDB, Reactome, GO BP) read as pairs of genes sharing a set, "
                         "for the layer-biology analysis (SN17); repeatable")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="any config key, e.g. --set train.epochs=4")
    ap.add_argument("--threads", type=positive_int,
                    help="threads for BLAS, OpenMP and torch (default: the cores this process may use, from its CPU "
                         "affinity and cgroup quota)")
    ap.add_argument("--scheduler", help="address of a dask.distributed scheduler: attention is extracted in shards on "
                                        "its workers")
    ap.add_argument("--workers", type=positive_int,
                    help="extract attention on a local Dask cluster of this many processes")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    ap.add_argument("--plan", action="store_true", help="print each stage's estimated memory and time (calibrated on "
                    "one cell through the model) and exit without writing a run")
    ap.add_argument("--memory-limit", type=parse_size, metavar="SIZE", help="memory this process may use, e.g. 12GiB "
                    "(default: the machine's memory or its cgroup's limit); a run whose plan exceeds it stops "
                    "before writing anything")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    n_threads = bound_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    cli = {key: getattr(args, flag) for flag, key in FLAGS.items() if getattr(args, flag) is not None}
    if args.random_weights:
        cli["model.random_init"] = True
    if args.reference:
        cli["ranking.references"] = tuple(args.reference)
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            print(f"error: --set expects KEY=VALUE, got {item!r}", file=sys.stderr)
            return 2
        cli[key] = value
    if args.gene_sets:                      # beside any pair reference named with --set, not instead of it
        named = cli.get("biology.pair_references", ())
        named = tuple(x for x in named.split(",") if x) if isinstance(named, str) else tuple(named)
        cli["biology.pair_references"] = (*named, *(f"gmt:{path}" for path in args.gene_sets))
    try:
        cfg = load_config(args.config, cli)
        logging.getLogger("precompute").info("thread pools bounded to %d (BLAS, OpenMP, torch)", n_threads)
        from analysis.stages.runs import configs_to_run, run_all, with_untrained_twins   # stages load in the runs
        cfgs = configs_to_run(cfg)
        if args.control == "random-weights":
            cfgs = with_untrained_twins(cfgs)
        client = None
        if args.scheduler or args.workers:
            from analysis.stages.distributed import connect   # dask, only for a cluster
            client = connect(args.scheduler, args.workers)
        try:
            for run_dir in run_all(cfgs, Path(args.cache), n_threads=n_threads,
                                   progress=not args.quiet, client=client, memory_limit=args.memory_limit,
                                   plan_only=args.plan):
                if run_dir is not None:
                    print(f"run id: {run_dir.name}\nrun directory: {run_dir}", flush=True)
        finally:
            if client is not None and args.scheduler:
                client.close()            # the user's cluster stays up
            elif client is not None:
                client.shutdown()         # ours: scheduler and workers end with the precompute
    except (InputError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
