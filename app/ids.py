"""Component ids, one prefix per page; pattern-matching ids for the figure/export machinery."""

RUN_SELECT = "app-run-select"
SELECTED_HEAD = "app-selected-head"   # dcc.Store {"layer": int, "head": int}, shared by every page
APP_ERROR = "app-error"
RUN_HEADER = "app-run-header"         # model family, model and run of the run on screen, above every page
URL = "app-url"                       # dcc.Location the gene search navigates with
PAGE_TITLE = "app-page-title"         # target of the clientside callback that names page and run in the tab title
RUN_URL = "app-run-url"               # dcc.Location (no refresh) through which the run goes into the URL and back
NAV_TOGGLE = "app-nav-toggle"
NAV_COLLAPSE = "app-nav-collapse"


def bottom_line(page: str) -> str:
    """The slot at the top of an evidence page for its verdicts (app.verdict_view)."""
    return f"{page}-bottom-line"


def nav_link(path: str) -> dict:
    return {"type": "nav-link", "path": path}

OVERVIEW_SUMMARY = "overview-summary"
OVERVIEW_BEST = "overview-best-heads"
OVERVIEW_PANEL = "overview-panel"
OVERVIEW_VERDICTS = "overview-verdicts"
OVERVIEW_CLAIMS = "overview-claims"

HEADS_REFERENCE = "heads-reference"
HEADS_DIRECTION = "heads-direction"
HEADS_METRIC = "heads-metric"
HEADS_EDGES = "heads-top-edges"
HEADS_LINK = "heads-link"          # dcc.Store: the {layer, head} of a link's ?head=L1H2
HEADS_SHOWN = "heads-shown"        # dcc.Store: the {layer, head} on screen (it goes into the URL)
HEADS_URL_HEAD = "heads-url-head"  # the head last written into the URL (explorer.js headInUrl)
NET_SOURCE = "net-source"
NET_TOP = "net-top"
NET_DOWNLOAD = "net-download"
NET_STATUS = "net-status"


def net_button(fmt: str) -> dict:
    return {"type": "net-btn", "fmt": fmt}


HEADS_HEAD_LABEL = "heads-head-label"
HEADS_ORDER = "heads-order"
HEADS_CONVENTION = "heads-convention"


def graph(name: str) -> dict:
    return {"type": "graph", "figure": name}


def figdata(name: str) -> dict:
    """dcc.Store holding the export token of the figure the server drew for card ``name`` (app.export)."""
    return {"type": "figdata", "figure": name}


def export_button(name: str, fmt: str) -> dict:
    return {"type": "export-btn", "figure": name, "fmt": fmt}


def download(name: str) -> dict:
    return {"type": "export-dl", "figure": name}


def export_status(name: str) -> dict:
    return {"type": "export-status", "figure": name}

PERT_GRID_SOURCE = "pert-grid-source"
PERT_NOTE = "pert-note"
PERT_ON_TARGET = "pert-on-target"
PERT_LFC = "pert-custom-lfc"
PERT_CONTROLS = "pert-custom-controls"
PERT_TEST = "pert-custom-test"
PERT_RUN = "pert-custom-run"
PERT_CANCEL = "pert-custom-cancel"
PERT_PROGRESS = "pert-custom-progress"
PERT_STATUS = "pert-custom-status"

CONF_METRIC = "conf-metric"
CONF_NOTE = "conf-note"
CONF_MATCHED = "conf-matched-incremental"
CONF_PROPENSITY = "conf-propensity-table"
CONF_PER_TF = "conf-per-tf"
CONF_PER_TF_NOTE = "conf-per-tf-note"

STATS_TABLE = "stats-table"
STATS_NOTE = "stats-note"
STATS_TIERS = "stats-tiers"
STATS_FILTER_STATUS = "stats-filter-status"
STATS_BOTTOM_LINE = "statistics-bottom-line"

ABL_READOUT = "abl-readout"
ABL_TABLE = "abl-table"
ABL_NOTE = "abl-note"
ABL_HEADS = "abl-heads"
ABL_KIND = "abl-kind"
ABL_CELLS = "abl-cells"
ABL_RUN = "abl-run"
ABL_CANCEL = "abl-cancel"
ABL_PROGRESS = "abl-progress"
ABL_STATUS = "abl-status"
ABL_LIVE_VERSION = "abl-live-version"
ABL_FAMILIES = "abl-families"
ABL_FILTER_STATUS = "abl-filter-status"

CSSI_NOTE = "cssi-note"
CSSI_REFERENCE = "cssi-reference"
CSSI_DIRECTION = "cssi-direction"
CSSI_SITE = "cssi-site"
CSSI_AGGREGATION = "cssi-aggregation"
CSSI_METRIC = "cssi-metric"
CSSI_SLIDER = "cssi-n-strata"
CSSI_LINK = "cssi-link"            # dcc.Store: the number of strata of a link's ?strata=7
CSSI_URL_STRATA = "cssi-url-strata"  # the slider position last written into the URL (explorer.js strataInUrl)
CSSI_STATUS = "cssi-status"
CSSI_PROGRESS = "cssi-progress"
CSSI_CANCEL = "cssi-cancel"
CSSI_JOB_STATUS = "cssi-job-status"
CSSI_POLL = "cssi-poll"
CSSI_SYNTHETIC_TABLE = "cssi-synthetic-table"
CSSI_SCALING_NOTE = "cssi-scaling-note"

COMPARE_RUNS = "compare-runs"
COMPARE_REFERENCE = "compare-reference"
COMPARE_NOTE = "compare-note"
COMPARE_TABLE = "compare-table"
COMPARE_HEADS = "compare-heads"
COMPARE_REPLICATION = "compare-replication-tests"
COMPARE_UNIVERSE_BUTTON = "compare-universe-button"
COMPARE_UNIVERSE = "compare-universe"
COMPARE_CONSISTENCY = "compare-consistency"
COMPARE_CONSISTENCY_NOTE = "compare-consistency-note"
COMPARE_FEATURES = "compare-features"


def compare_head(run_id) -> dict:
    """The head picked for one run on the Compare page (``ALL`` matches every run's dropdown)."""
    return {"type": "compare-head", "run": run_id}


LAYERS_TESTS = "layers-tests"
LAYERS_CONTROL = "layers-control"
LAYERS_AGREEMENT = "layers-agreement"
LAYERS_TF_REFERENCE = "layers-tf-reference"
LAYERS_TF_SOURCE = "layers-tf-source"
LAYERS_TF_NOTE = "layers-tf-note"

CLAIMS_CONTEXTS = "claims-contexts"
CLAIMS_TABLE = "claims-table"
CLAIMS_CONTROL = "claims-control"
CLAIMS_REPORT_BUTTON = "claims-report"
CLAIMS_CSV_BUTTON = "claims-csv"
CLAIMS_DOWNLOAD = "claims-download"

FEATURES_LAYER = "features-layer"
FEATURES_NOTE = "features-note"
FEATURES_TABLE = "features-table"
FEATURES_CARD_TITLE = "features-card-title"
FEATURES_ENRICHMENT = "features-enrichment"
FEATURES_NEIGHBOURS = "features-neighbours"
FEATURES_STATES = "features-states"
FEATURES_KNOCKDOWNS = "features-knockdowns"
FEATURES_GENE = "features-gene"
FEATURES_GENE_TABLE = "features-gene-table"
FEATURES_REGULATORY = "features-regulatory-table"
FEATURES_REGULATORY_NOTE = "features-regulatory-note"
FEATURES_SELECTED = "features-selected"   # the open card's {layer, feature}
FEATURES_LINK = "features-link"           # the {layer, feature} a link (?layer=&feature=) opens the page on
FEATURES_CARD_SHOWN = "features-card-shown"   # target of the clientside callback that scrolls the card into view
FEATURES_CARD_HINT = "features-card-hint"     # what to click, until a feature's card opens
FEATURES_CARD_BODY = "features-card-body"     # the card's figures and tables, hidden until a feature is picked
FEATURES_EDIT_FEATURES = "features-edit-features"
FEATURES_EDIT_SCALES = "features-edit-scales"
FEATURES_EDIT_CELLS = "features-edit-cells"
FEATURES_EDIT_RUN = "features-edit-run"
FEATURES_EDIT_CANCEL = "features-edit-cancel"
FEATURES_EDIT_PROGRESS = "features-edit-progress"
FEATURES_EDIT_STATUS = "features-edit-status"
FEATURES_EDIT_VERSION = "features-edit-version"
FEATURES_EDIT_READOUT = "features-edit-readout"
FEATURES_EDIT_TABLE = "features-edit-table"

GENE_SEARCH = "app-gene-search"       # the navigation bar's gene search box
GENE_TITLE = "gene-title"
GENE_SYMBOL = "gene-symbol"
GENE_BODY = "gene-body"
