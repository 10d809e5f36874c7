"""Run configuration: one frozen tree of dataclasses whose hash names a run and keys every stage.

Values are layered defaults -> TOML file -> environment (``SCFMX_<SECTION>__<FIELD>``) -> CLI, each
layer a flat mapping of dotted keys (``"extraction.panel_size"``) applied by :func:`with_overrides`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from . import protocols
from .errors import ConfigError

ENV_PREFIX = "SCFMX_"
DIRECTIONS = ("tf_to_target", "target_to_tf", "symmetric")
DE_TESTS = ("welch", "mannwhitney")
LOCATION_TESTS = ("wilcoxon", "ttest")
LFC_DEFINITIONS = ("scanpy", "log1p_mean_difference")
UNIVERSES = ("panel", "hvg", "hvg_plus_perturbed")
CORRELATION_EDGES = ("signed", "absolute", "sign_matched")
MODALITIES = ("crispri", "crispra")
RANDOM_MATCHING = ("none", "layer", "entropy")
CSSI_METRICS = ("auroc", "f1")
TOKENIZER_MODES = ("panel", "zero_shot")
RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def default_cache_dir() -> Path:
    """Where runs are cached by default: ``cache/`` of the checkout the code runs from (the README's layout), or of
    the working directory when the code is an installed package (no checkout, so no ``requirements.txt``, around
    it)."""
    root = Path(__file__).resolve().parents[1]
    return root / "cache" if (root / "requirements.txt").is_file() else Path.cwd() / "cache"


@dataclass(frozen=True)
class SimulationConfig:
    """The embedded default's GRN-driven synthetic screen (see analysis.sim.simulate)."""

    n_cells: int = 1200
    n_tfs: int = 24
    n_targets: int = 216
    n_states: int = 4
    targets_per_tf: int = 9
    n_perturbed: int = 12
    control_fraction: float = 0.4
    knockdown_residual: float = 0.15
    seed: int = 0


@dataclass(frozen=True)
class TrainConfig:
    """The embedded default's tiny models (one per model family, same sizes) and their pretraining: masked-gene
    prediction for the Geneformer architecture (``mask_probability``), masked-value prediction for scGPT's (its own
    ``mask_ratio`` schedule, recorded in the model's ``args.json``)."""

    hidden_size: int = 64
    n_layers: int = 4
    n_heads: int = 4
    intermediate_size: int = 128
    max_len: int = 2048
    epochs: int = 12
    batch_size: int = 32
    learning_rate: float = 2e-3
    mask_probability: float = 0.15
    seed: int = 0
    planted_head: int = -1  # >= 0: positive-control variant with this head of the last layer planted


@dataclass(frozen=True)
class DataConfig:
    """Where the cells come from. ``path=None`` means the embedded simulation."""

    path: str | None = None
    perturbation_col: str | None = None
    control_label: str = "control"
    cell_state_col: str | None = None
    gene_id_col: str | None = None
    counts_layer: str | None = None     # X, raw, or a layer's name; None: found (analysis.io.cells.choose_counts)
    max_cells: int | None = None


@dataclass(frozen=True)
class ModelConfig:
    """Which model. ``path=None`` means the embedded tiny model(s) (trained on first use, then reused).

    ``path`` is a local checkpoint directory: Geneformer's HF layout (``config.json`` + weights) or scGPT's release
    layout (``args.json`` + ``vocab.json`` + ``best_model.pt``); ``family`` (``auto``: detected from the directory;
    ``auto`` without a path runs every family's embedded model) overrides detection. With ``random_init`` only the
    architecture files are read and the weights are random (tests and benchmarks). ``dictionaries`` is a directory
    of gene dictionaries: Geneformer's token and gene-median pickles (default: the checkpoint directory), or for
    scGPT a ``gene_name_id_dict*.pkl`` symbol table that maps Ensembl-keyed data to its symbol vocabulary.
    """

    path: str | None = None
    family: str = "auto"
    dictionaries: str | None = None
    random_init: bool = False
    device: str = "auto"
    seed: int = 0


@dataclass(frozen=True)
class TokenizerConfig:
    """Settings of value-binning tokenisers (scGPT; rank-value encoding has none): ``mode`` ``panel`` (every cell's
    input is ``<cls>`` + the run's gene panel, zeros included: the attention tutorial's input) or ``zero_shot`` (the
    cell's non-zero genes, sampled to the model's length: pretraining's input); ``cls_value`` the ``<cls>`` input value
    (None: the checkpoint's ``pad_value``, -2, as in pretraining; scGPT's fine-tuning tutorials use 0); ``seed`` of the
    bin tie-breaking and gene sampling."""

    mode: str = "panel"
    cls_value: float | None = None
    seed: int = 0


@dataclass(frozen=True)
class ExtractionConfig:
    """Streaming attention extraction over a gene panel (analysis.interp.attention). ``cells``: the cells attention
    and ablation run on: ``control`` (the paper's; every cell without a perturbation column), ``all`` or one
    perturbation label (:meth:`analysis.io.cells.CellData.select`). CSSI stratifies the same cells (its pooled
    score is this store). Every head keeps the rows and columns of the reference TFs and perturbed genes in the panel,
    plus ``source_genes`` (symbols); each layer keeps its head mean over every pair; ``full_heads`` (``L<l>H<h>``)
    are kept whole over every pair (DESIGN.md section 5). ``n_cells``: at most this many of those cells, drawn once
    with ``seed`` (None: all); with ``cells = control`` the same drawn cells are the controls of the Spearman edges,
    the gene-level baselines and DE (when ``perturbation.n_control`` is unset or the same count), as the paper
    draws 2,000 K562 control cells once (section 2.5, SN6.2)."""

    batch_size: int = 8
    n_hvg: int = 300
    panel_size: int = 600
    cells: str = "control"
    n_cells: int | None = None
    seed: int = 0
    source_genes: tuple[str, ...] = ()
    full_heads: tuple[str, ...] = ()


@dataclass(frozen=True)
class RankingConfig:
    """Per-head reference ranking (analysis.scoring.ranking). ``references`` are ``kind:path`` strings."""

    references: tuple[str, ...] = ()
    dorothea_min_confidence: str = "B"
    directions: tuple[str, ...] = DIRECTIONS
    top_k: tuple[int, ...] = (20, 50, 100, 200, 500)
    n_null: int = 2000
    seed: int = 0


@dataclass(frozen=True)
class PerturbationConfig:
    """Perturbation-first evaluation and confound decomposition (analysis.scoring.perturbation, analysis.scoring.confounds).

    ``readout_layer`` is the pre-specified attention layer (head mean) of the primary tests, fixed here before
    results are seen (-1 = last layer), as the paper pre-specified L13 from independent data.

    ``lfc``: ``scanpy`` (the paper's: its DE is Scanpy's Welch t / Mann-Whitney with BH, section 4.1, 4.3, SN6.2,
    whose log fold change is ``log2((expm1(mean log1p x_pert) + 1e-9) / (expm1(mean log1p x_ctrl) + 1e-9))``) or
    ``log1p_mean_difference`` (``(mean log1p x_pert - mean log1p x_ctrl) / ln 2``, a pseudocount of 1).
    ``universe``: the genes DE targets and AUROCs are scored over: ``panel`` (the attention panel), ``hvg`` (the top
    ``universe_size`` highly variable genes, the paper's K562 protocol) or ``hvg_plus_perturbed`` (those plus every
    perturbed gene, its RPE1 protocol, SN14.9); the panel always covers it. ``correlation_edge``: ``signed`` Spearman
    rho (the paper's edge, SN2, SN6.2: named "Spearman correlation", signed in its sign-agreement analysis, SN7),
    ``absolute`` |rho|, or ``sign_matched`` (rho x on-target direction x observed direction of change: positive when
    the edge's sign predicts the direction the target moved); every variant is scored, this one is primary.
    ``modality``: ``crispri`` (knock-down) or ``crispra`` (activation): the on-target direction each perturbation is
    checked against. The sensitivity grid's control-count and universe axes are absolute when ``grid_n_control`` /
    ``grid_universe_size`` are set (the paper's, SN6.3), else fractions of what the data has. ``location_test``: the
    registered test of per-perturbation AUROCs against 0.5 (primary and sensitivity grid) and of the paired
    comparisons (attention and the trivial baselines against correlation): ``wilcoxon`` (signed-rank) or ``ttest``
    (one-sample and paired t-tests, the paper's: registry 14, 18, 21, 23 of SN16.2), with the other test registered
    beside it as descriptive when it is ``ttest``. ``residual_seeds``: cross-fitting fold draws over which the
    residualisation of each model in ``residual_seed_models`` is repeated, and the spread of its residual AUROC and
    retained share reported (the paper's 10-seed stability, SN16.2 registry 15; 1 skips it); GBDT is left out by
    default because each further draw costs a full fit (at paper scale, minutes).
    """

    test: str = "welch"
    location_test: str = "wilcoxon"
    lfc: str = "scanpy"
    lfc_threshold: float = 0.5
    alpha: float = 0.05
    n_control: int | None = None
    readout_layer: int = -1
    universe: str = "panel"
    universe_size: int = 2000
    correlation_edge: str = "signed"
    modality: str = "crispri"
    grid_lfc: tuple[float, ...] = (0.25, 0.5, 1.0)
    grid_control_fraction: tuple[float, ...] = (0.25, 0.5, 1.0)
    grid_universe_fraction: tuple[float, ...] = (0.5, 0.75, 1.0)
    grid_n_control: tuple[int, ...] = ()
    grid_universe_size: tuple[int, ...] = ()
    n_boot: int = 200
    n_degree_null: int = 100
    residual_seeds: int = 10
    residual_seed_models: tuple[str, ...] = ("ols",)
    seed: int = 0

    def resolve_readout_layer(self, n_layers: int) -> int:
        """``readout_layer`` as a 0-based index into a model of ``n_layers`` (negative counts from the end)."""
        if not -n_layers <= self.readout_layer < n_layers:
            raise ConfigError(f"perturbation.readout_layer {self.readout_layer} is outside the model's {n_layers} "
                              f"layers (0..{n_layers - 1}, or -1 for the last)")
        return self.readout_layer % n_layers


@dataclass(frozen=True)
class AblationConfig:
    """Causal ablation sweep (analysis.interp.ablation): cells, sweep sizes, random draws; ``n_cells = 0`` skips it.

    ``random_matching``: which random-k controls to draw, each ``n_random`` times (``none``: any heads; ``layer``:
    as many per layer as the top-k; ``entropy``: matched on attention entropy). ``whole_layers``: layers whose every
    head is zeroed (empty: the best perturbation-first layer, as the paper's L14, or the read-out layer without
    perturbation data). ``mlp_blocks``: MLP blocks zeroed together, each ``"a-b"`` (inclusive) or ``"a+b+c"``
    (empty: the late half of the layers); every single layer's MLP is always in the sweep.

    Cost: about (number of sweep items + 1) x 2 forward passes over ``n_cells`` cells (~50 items for a 6 x 4
    model): seconds for the embedded model, hours for V1-10M at 2,048 tokens on 2 CPU cores (use a GPU, or
    fewer cells / ``ks`` there).
    """

    n_cells: int = 100
    ks: tuple[int, ...] = (1, 5, 10, 20, 50)
    n_random: int = 3
    random_matching: tuple[str, ...] = ("none", "layer", "entropy")
    whole_layers: tuple[int, ...] = ()
    mlp_blocks: tuple[str, ...] = ()
    batch_size: int = 8
    mask_probability: float = 0.15
    seed: int = 0


@dataclass(frozen=True)
class CSSIConfig:
    """Cell-State Stratified Interpretability (analysis.scoring.strata, analysis.scoring.cssi, analysis.scoring.cssi_levels); ``n_fine = 0``
    skips it.

    Strata come from ``representation`` (``embedding``: the model's cell embeddings captured during extraction, of
    kind ``cell_embedding``: ``native`` is the family's own (Geneformer: mean over gene tokens of the second-to-last
    hidden state; scGPT: the final ``<cls>`` output), ``mean_penultimate`` or ``cls`` force one; ``expression``: PCA
    of the panel's log1p CP10k expression). Attention is accumulated once per fine cluster and
    per random group (``n_random_groups``), so every stratification in ``n_strata`` (and any slider position off
    it) is a sum of groups. ``layers`` = () keeps every layer when their per-group sums fit in ``max_gib``, else
    the read-out layer alone. ``primary_n_strata`` is the pre-specified confirmatory level (the paper's optimum
    was 5-7 strata). ``confirmatory_metric`` is what the confirmatory CSSI test scores (``auroc``, or ``f1``: top-k
    F1 at k = the reference's edges, the paper's headline, section 2.2 and the paper presets); the other metric's
    test stands beside it, descriptive. ``synthetic_seeds`` = 0 skips the synthetic validation (Supplementary Note
    11.1).
    """

    representation: str = "embedding"
    cell_embedding: str = "native"
    n_strata: tuple[int, ...] = (2, 3, 4, 5, 6, 8, 10, 12, 15, 20)
    primary_n_strata: int = 5
    confirmatory_metric: str = "auroc"
    n_fine: int = 30
    n_random_groups: int = 40
    n_neighbors: int = 15
    min_size: int = 10
    layers: tuple[int, ...] = ()
    max_gib: float = 4.0
    directions: tuple[str, ...] = ("tf_to_target",)
    n_null: int = 100
    n_gene_null: int = 30
    synthetic_seeds: int = 5
    seed: int = 0


@dataclass(frozen=True)
class ScalingConfig:
    """Recovery against the number of cells (analysis.scoring.scaling; paper section 2.2, Supplementary Notes 1 and
    13) and the per-TF cell bootstrap (analysis.scoring.tf_bootstrap; Supplementary Note 14, registry section 16).
    Both reuse CSSI's grouped extraction pass (its random groups are the resampling units), so they run when CSSI
    does. ``unit_fractions``: shares of the random groups forming each subsample (1.0 = every attention cell);
    ``n_seeds`` subsample orders (0 skips the analysis); ``top_k``: the F1 cut-offs besides the number of
    reference edges; ``n_boot``: group-bootstrap draws per cell count; ``composition_fractions``: cell counts of
    the controlled-composition conditions as shares of what each condition can hold; ``tf_boot``: draws of the
    per-TF bootstrap (0 skips it)."""

    unit_fractions: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0)
    n_seeds: int = 5
    top_k: tuple[int, ...] = (20, 50, 100)
    n_boot: int = 100
    composition_fractions: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
    tf_boot: int = 200
    seed: int = 0


@dataclass(frozen=True)
class BiologyConfig:
    """Layer-wise biological organisation (analysis.scoring.biology; paper Supplementary Note 17): every layer's
    head-mean attention scored over all gene pairs of the universe against undirected pair references
    (``pair_references``: ``string:PATH``, STRING's ``gene_a``/``gene_b``/``score`` table kept at ``score >=
    string_min_score``, 0.7 = the paper's STRING >= 700; ``gmt:PATH``, a gene-set collection such as Reactome or GO
    BP, pairs of panel genes sharing a set of at most 500, ``--gene-sets``) next to the run's regulatory references read as
    undirected pairs. ``n_negatives``: negative pairs per positive in the expression-controlled partial correlation
    (the paper's matched positive and negative pairs)."""

    pair_references: tuple[str, ...] = ()
    string_min_score: float = 0.7
    n_negatives: int = 5
    seed: int = 0


@dataclass(frozen=True)
class SAEConfig:
    """Sparse autoencoders of the residual stream (analysis.interp.sae, analysis.stages.sae; the companion
    paper's TopK SAEs). ``run``: ``embedded`` (default: on for the embedded default, off for your own model, where an
    SAE wants a GPU and a training budget chosen on purpose), ``on`` or ``off``. The residual stream after each of
    ``layers`` (() = every layer) is captured at the gene positions of the attention cells, cells subsampled (seeded)
    so that the activations on disk stay within ``max_gib``; one TopK SAE per layer with ``expansion`` x d_model
    features, ``k`` active per position, trained ``epochs`` passes of ``batch_size`` rows with Adam at ``lr``.
    A feature firing on more than ``dense_rate`` of positions is dense; one whose decoder direction has |cos| >=
    ``svd_cos`` with a top singular direction of the activations (those explaining ``svd_variance`` of the
    variance) is visible to SVD (the superposition check). The CRISPRi regulatory test
    (:mod:`analysis.scoring.sae_regulatory`) encodes up to ``regulatory_cells`` cells of each perturbed reference TF and
    of the controls, takes the ``n_responding`` features that respond most to each knock-down and compares their genes
    with the TF's targets against ``regulatory_null`` random feature sets. Co-activation modules
    (:mod:`analysis.scoring.sae_modules`): among the ``module_features`` most frequent features, pairs whose
    activations correlate at r >= ``module_r``, Leiden communities of that graph. Causal specificity per layer: the
    ``specificity_features`` most frequent live features, each ablated alone on ``specificity_cells`` of the ablation's
    cells (:mod:`analysis.interp.feature_intervention`)."""

    run: str = "embedded"
    layers: tuple[int, ...] = ()
    expansion: int = 8
    k: int = 8
    epochs: int = 3
    batch_size: int = 512
    lr: float = 2e-3
    max_gib: float = 2.0
    dense_rate: float = 0.2
    svd_cos: float = 0.7
    svd_variance: float = 0.9
    regulatory_cells: int = 50
    n_responding: int = 10
    regulatory_null: int = 200
    module_r: float = 0.3
    module_features: int = 2000
    specificity_features: int = 8
    specificity_cells: int = 30
    seed: int = 0

    def active(self, *, embedded_model: bool) -> bool:
        return self.run == "on" or (self.run == "embedded" and embedded_model)


@dataclass(frozen=True)
class RunConfig:
    """A run's whole configuration. ``protocol``: the paper's preset it follows (:mod:`analysis.protocols`), or
    ``none``."""

    name: str = "default"
    protocol: str = "none"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    simulation: SimulationConfig = field(default_factory=SimulationConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    extraction: ExtractionConfig = field(default_factory=ExtractionConfig)
    ranking: RankingConfig = field(default_factory=RankingConfig)
    perturbation: PerturbationConfig = field(default_factory=PerturbationConfig)
    ablation: AblationConfig = field(default_factory=AblationConfig)
    cssi: CSSIConfig = field(default_factory=CSSIConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    biology: BiologyConfig = field(default_factory=BiologyConfig)
    sae: SAEConfig = field(default_factory=SAEConfig)

    @property
    def embedded(self) -> bool:
        """True when the run uses the embedded simulation and tiny model."""
        return self.data.path is None and self.model.path is None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def config_hash(self) -> str:
        """sha256 of the canonical JSON of the whole tree (hex)."""
        return stable_hash(self.to_dict())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RunConfig":
        return with_overrides(cls(), flatten(data))


def flatten(data: Mapping[str, Any]) -> dict[str, Any]:
    """``{"extraction": {"panel_size": 3}}`` -> ``{"extraction.panel_size": 3}`` (top-level keys kept)."""
    flat = {}
    for section, values in data.items():
        if isinstance(values, Mapping):
            flat.update({f"{section}.{k}": v for k, v in values.items()})
        else:
            flat[section] = values
    return flat


def stable_hash(obj: Any) -> str:
    """sha256 hex of ``obj`` serialised as canonical JSON."""
    blob = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Convert ``value`` (often a string from env/CLI) to the field's annotated type."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType")):
        if value is None or (isinstance(value, str) and value.lower() in ("", "none", "null")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)][0]
        return _coerce(value, inner, key)
    if origin is tuple:
        items = value.split(",") if isinstance(value, str) else list(value)
        items = [i.strip() if isinstance(i, str) else i for i in items if i != ""]
        return tuple(_coerce(i, args[0], key) for i in items)
    try:
        if annotation is bool:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if annotation in (int, float, str):
            return annotation(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"config key {key!r}: cannot read {value!r} as {annotation.__name__}") from exc
    return value


def with_overrides(cfg: RunConfig, overrides: Mapping[str, Any]) -> RunConfig:
    """Return a copy of ``cfg`` with dotted-key overrides applied (``{"extraction.panel_size": 300}``)."""
    sections: dict[str, dict[str, Any]] = {}
    top: dict[str, Any] = {}
    hints = typing.get_type_hints(RunConfig)
    for key, value in overrides.items():
        if "." not in key:
            if key not in hints or dataclasses.is_dataclass(getattr(cfg, key, None)):
                raise ConfigError(f"unknown config key {key!r}")
            top[key] = _coerce(value, hints[key], key)
            continue
        section, name = key.split(".", 1)
        sub = getattr(cfg, section, None)
        if not dataclasses.is_dataclass(sub):
            raise ConfigError(f"unknown config section {section!r} in {key!r}")
        sub_hints = typing.get_type_hints(type(sub))
        if name not in sub_hints:
            valid = ", ".join(sorted(sub_hints))
            raise ConfigError(f"unknown config key {key!r}; {section} has: {valid}")
        sections.setdefault(section, {})[name] = _coerce(value, sub_hints[name], key)
    replaced = {s: dataclasses.replace(getattr(cfg, s), **v) for s, v in sections.items()}
    return dataclasses.replace(cfg, **top, **replaced)


def env_overrides(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Dotted-key overrides from ``SCFMX_<SECTION>__<FIELD>`` environment variables."""
    environ = os.environ if environ is None else environ
    out = {}
    for key, value in environ.items():
        if key.startswith(ENV_PREFIX) and "__" in key:
            section, name = key[len(ENV_PREFIX):].lower().split("__", 1)
            out[f"{section}.{name}"] = value
    return out


def mlp_block_layers(block: str) -> tuple[int, ...]:
    """Layers of an ``ablation.mlp_blocks`` entry: ``"13-15"`` (inclusive range) or ``"2+4"``; ConfigError otherwise."""
    try:
        if "-" in block:
            low, high = (int(x) for x in block.split("-"))
            layers = tuple(range(low, high + 1))
        else:
            layers = tuple(int(x) for x in block.split("+"))
    except ValueError:
        layers = ()
    if not layers or min(layers) < 0:
        raise ConfigError(f"ablation.mlp_blocks entry {block!r}: write a block as 'a-b' (layers a to b) or 'a+b+c'")
    return layers


SIGNED_SETTINGS = frozenset({"perturbation.readout_layer", "train.planted_head", "tokenizer.cls_value"})
POSITIVE_SETTINGS = frozenset({"train.learning_rate", "sae.lr", "cssi.max_gib", "sae.max_gib"})
OPEN_UNIT_SETTINGS = frozenset({"perturbation.alpha", "simulation.control_fraction", "simulation.knockdown_residual"})


def _settings(cfg: RunConfig):
    """``(dotted key, value)`` for every setting of every section."""
    for section in dataclasses.fields(cfg):
        group = getattr(cfg, section.name)
        if dataclasses.is_dataclass(group):
            for f in dataclasses.fields(group):
                yield f"{section.name}.{f.name}", getattr(group, f.name)


def _numbers(cfg: RunConfig):
    """``(dotted key, number)`` for every int or float setting, one per element of a tuple setting."""
    for key, value in _settings(cfg):
        for v in (value if isinstance(value, tuple) else (value,)):
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                yield key, v


def check_no_repeats(cfg: RunConfig) -> None:
    """A list setting names each value once (``cssi.layers = 1,1`` used to be taken and then broke a page)."""
    for key, value in _settings(cfg):
        if isinstance(value, tuple) and len(set(value)) < len(value):
            repeated = sorted({v for v in value if value.count(v) > 1}, key=str)
            raise ConfigError(f"{key} = {','.join(map(str, value))}: lists {', '.join(map(str, repeated))} more than "
                              "once; list each value once")


def check_ranges(cfg: RunConfig) -> None:
    """Every number finite (no NaN or infinity); none negative except :data:`SIGNED_SETTINGS` (a layer counted from
    the end, "no head", scGPT's ``<cls>`` value); :data:`POSITIVE_SETTINGS` above 0 (rates, memory budgets);
    :data:`OPEN_UNIT_SETTINGS` strictly between 0 and 1 (a significance level of 2 called 5x the DE targets and
    exited 0). The settings with narrower ranges are checked by :func:`check`."""
    for key, value in _numbers(cfg):
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key} = {value}: must be a finite number")
        if value < 0 and key not in SIGNED_SETTINGS:
            raise ConfigError(f"{key} = {value}: must not be negative")
        if key in POSITIVE_SETTINGS and value <= 0:
            raise ConfigError(f"{key} = {value}: must be greater than 0")
        if key in OPEN_UNIT_SETTINGS and not 0 < value < 1:
            raise ConfigError(f"{key} = {value}: must be between 0 and 1 (exclusive)")


def check(cfg: RunConfig) -> RunConfig:
    """Refuse settings no stage can run with, before anything starts: a :class:`ConfigError` naming the setting,
    the value and what is allowed. Returns ``cfg``."""
    check_ranges(cfg)
    check_no_repeats(cfg)
    at_least = {"extraction.batch_size": (cfg.extraction.batch_size, 1), "extraction.panel_size":
                (cfg.extraction.panel_size, 2), "extraction.n_hvg": (cfg.extraction.n_hvg, 0),
                "ranking.n_null": (cfg.ranking.n_null, 0), "ablation.n_cells": (cfg.ablation.n_cells, 0),
                "ablation.batch_size": (cfg.ablation.batch_size, 1), "ablation.n_random": (cfg.ablation.n_random, 0),
                "perturbation.n_boot": (cfg.perturbation.n_boot, 1), "cssi.n_fine": (cfg.cssi.n_fine, 0),
                "perturbation.universe_size": (cfg.perturbation.universe_size, 2),
                "perturbation.residual_seeds": (cfg.perturbation.residual_seeds, 1),
                "train.epochs": (cfg.train.epochs, 1), "train.batch_size": (cfg.train.batch_size, 1)}
    if cfg.extraction.n_cells is not None:
        at_least["extraction.n_cells"] = (cfg.extraction.n_cells, 3)
    if cfg.data.max_cells is not None:
        at_least["data.max_cells"] = (cfg.data.max_cells, 3)   # a correlation and a DE test need 3 cells
    at_least.update({"scaling.n_seeds": (cfg.scaling.n_seeds, 0), "scaling.n_boot": (cfg.scaling.n_boot, 0),
                     "scaling.tf_boot": (cfg.scaling.tf_boot, 0), "biology.n_negatives": (cfg.biology.n_negatives, 1),
                     "sae.expansion": (cfg.sae.expansion, 1), "sae.k": (cfg.sae.k, 1), "sae.epochs": (cfg.sae.epochs, 1),
                     "sae.batch_size": (cfg.sae.batch_size, 1)})
    if cfg.sae.run not in ("embedded", "on", "off"):
        raise ConfigError(f"sae.run = {cfg.sae.run!r}: must be embedded, on or off")
    for key, values in (("scaling.unit_fractions", cfg.scaling.unit_fractions),
                        ("scaling.composition_fractions", cfg.scaling.composition_fractions)):
        if not values or not all(0 < v <= 1 for v in values):
            raise ConfigError(f"{key} = {values}: must list shares in (0, 1]")
    for key, (value, low) in at_least.items():
        if value < low:
            raise ConfigError(f"{key} = {value}: must be at least {low}")
    for block in cfg.ablation.mlp_blocks:
        mlp_block_layers(block)
    for key, values in (("ranking.top_k", cfg.ranking.top_k), ("ablation.ks", cfg.ablation.ks),
                        ("scaling.top_k", cfg.scaling.top_k)):
        if not values or min(values) < 1:
            raise ConfigError(f"{key} = {values}: must list integers >= 1")
    choices = {"ranking.directions": (cfg.ranking.directions, DIRECTIONS),
               "perturbation.test": ((cfg.perturbation.test,), DE_TESTS),
               "perturbation.location_test": ((cfg.perturbation.location_test,), LOCATION_TESTS),
               "tokenizer.mode": ((cfg.tokenizer.mode,), TOKENIZER_MODES),
               "perturbation.lfc": ((cfg.perturbation.lfc,), LFC_DEFINITIONS),
               "perturbation.universe": ((cfg.perturbation.universe,), UNIVERSES),
               "perturbation.correlation_edge": ((cfg.perturbation.correlation_edge,), CORRELATION_EDGES),
               "perturbation.modality": ((cfg.perturbation.modality,), MODALITIES),
               "ablation.random_matching": (cfg.ablation.random_matching, RANDOM_MATCHING),
               "cssi.confirmatory_metric": ((cfg.cssi.confirmatory_metric,), CSSI_METRICS),
               "perturbation.residual_seed_models": (cfg.perturbation.residual_seed_models, ("ols", "gbdt"))}
    for key, (values, allowed) in choices.items():
        bad = [v for v in values if v not in allowed] or ([] if values else ["(none)"])
        if bad:
            raise ConfigError(f"{key} = {bad[0]!r} is not allowed; choose from {allowed}")
    if cfg.protocol != "none" and cfg.protocol not in protocols.PROTOCOLS:
        raise ConfigError(f"protocol {cfg.protocol!r} is not known; choose from none, {', '.join(protocols.PROTOCOLS)}")
    if len(cfg.name) > 100:
        raise ConfigError(f"name is {len(cfg.name)} characters long: use at most 100 (it names a directory and a "
                          "lock file)")
    if not RUN_NAME.match(cfg.name):
        raise ConfigError(f"name = {cfg.name!r}: use letters, digits, '_', '.' and '-' (it names a directory under "
                          "cache/artifacts)")
    if cfg.model.device != "auto" and not re.match(r"^(cpu|cuda(:\d+)?)$", cfg.model.device):
        raise ConfigError(f"model.device = {cfg.model.device!r}: use auto, cpu or cuda")
    for key, value in (("train.mask_probability", cfg.train.mask_probability),
                       ("ablation.mask_probability", cfg.ablation.mask_probability)):
        if not 0 < value < 1:
            raise ConfigError(f"{key} = {value}: must be between 0 and 1")
    return cfg


def load_config(toml_path: str | Path | None = None, cli: Mapping[str, Any] | None = None,
                environ: Mapping[str, str] | None = None) -> RunConfig:
    """Defaults -> the protocol's preset (``protocol``, from whichever layer sets it last) -> TOML -> environment
    -> CLI, then :func:`check`."""
    toml: dict[str, Any] = {}
    if toml_path is not None:
        path = Path(toml_path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            toml = flatten(tomllib.loads(path.read_text()))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    layers = (toml, env_overrides(environ), dict(cli or {}))
    protocol = next((str(layer["protocol"]) for layer in reversed(layers) if "protocol" in layer), "none")
    cfg = with_overrides(RunConfig(), {**protocols.preset(protocol), "protocol": protocol})
    for layer in layers:
        cfg = with_overrides(cfg, layer)
    return check(cfg)
