"""Statistics: the framework-wide registry of every test, filterable, with BH q under each family, and the run's
count under the paper's own tiers set beside the paper's, entry by entry (:mod:`analysis.scoring.paper_registry`)."""
from __future__ import annotations

import dash_bootstrap_components as dbc
import pandas as pd
from dash import Input, Output, dash_table, dcc, html

from analysis.scoring.feature_effects import feature_edit_tests
from analysis.scoring.paper_registry import CONFIRMATORY as PAPER_TIER_CONFIRMATORY
from analysis.scoring.paper_registry import PAPER_CONFIRMATORY_TOTAL, PAPER_SIGNIFICANT, tier_comparison
from analysis.scoring.registry import COLUMNS as REGISTRY_COLUMNS
from analysis.scoring.registry import ablation_tests, correct

from .. import ids
from ..components import figure_card, table_column, table_records, underflow_note
from ..table_filter import FilterError, filter_rows
from ..verdict_view import overall_line
from ..figures import effect_vs_q
from .ablation import live_results
from .feature_edits import live_edit_results

PATH, NAME = "/statistics", "Statistics"
COLUMNS = ("analysis", "hypothesis", "test", "p", "q", "q_all", "q_primary_per_analysis", "q_paper", "effect",
           "effect_name", "n", "confirmatory", "significant", "paper_entry", "paper_tier")
PROBABILITIES = ("p", "q", "q_all", "q_primary_per_analysis", "q_paper")
TIER_COLUMNS = ("paper_entry", "title", "tests", "confirmatory_here", "confirmatory_in_paper",
                "significant_in_paper_family")



def layout(**_):
    return dbc.Container([
        html.H3("Statistics registry"),
        dcc.Loading(html.Div(id=ids.STATS_BOTTOM_LINE)),
        html.Div(id=ids.STATS_NOTE, className="explain mb-2"),
        dash_table.DataTable(id=ids.STATS_TABLE, columns=[table_column(c, (*PROBABILITIES, "effect")) for c in COLUMNS],
                             page_size=15,
                             filter_action="custom", sort_action="native", style_table={"overflowX": "auto"},
                             style_cell={"maxWidth": "420px", "whiteSpace": "normal", "textAlign": "left"}),
        html.P("Type in the header filters (e.g. perturbation in 'analysis', < 0.05 in 'q'; a blank q never passes a "
               "comparison, 'is blank' finds it); the plot follows the filtered rows.", className="explain mt-1"),
        html.Div(id=ids.STATS_FILTER_STATUS, className="text-danger small"),
        figure_card("stats-volcano"),
        html.H5("The paper's registry, entry by entry (SN16.2)", className="mt-3"),
        html.P("Tests per entry of the paper's registry: how many are confirmatory in this project, how many the "
               "paper counts as confirmatory (those with a p-value in its registry), and how many of the latter "
               "have q < 0.05 when only they are corrected (the 'paper' family). Entry 0: analyses beyond the "
               "paper.", className="explain"),
        dash_table.DataTable(id=ids.STATS_TIERS, columns=[{"name": c, "id": c} for c in TIER_COLUMNS], page_size=40,
                             sort_action="native", style_cell={"textAlign": "left"}),
    ], fluid=True)


def register(app, store, settings, jobs, exports):
    @app.callback(Output(ids.STATS_BOTTOM_LINE, "children"), Input(ids.RUN_SELECT, "value"))
    def bottom(run_id):
        return overall_line(store, run_id) if run_id and store.has_table(run_id, "statistics_registry") else None

    @app.callback(Output(ids.STATS_TABLE, "data"), Output(ids.STATS_NOTE, "children"), Output(ids.STATS_TIERS, "data"),
                  Output(ids.STATS_FILTER_STATUS, "children"),
                  Input(ids.RUN_SELECT, "value"), Input(ids.STATS_TABLE, "filter_query"))
    def table(run_id, query):
        if not run_id or not store.has_table(run_id, "statistics_registry"):
            return [], "No statistics registry in this run.", [], ""
        reg = with_live_tests(store.table(run_id, "statistics_registry"), live_results(jobs, run_id),
                              live_edit_results(jobs, run_id))
        conf = reg[reg["confirmatory"]]
        note = (f"{len(reg)} registered tests; {len(conf)} confirmatory, of which {int(conf['significant'].sum())} "
                f"have BH q < 0.05 framework-wide. {paper_family_sentence(reg)} Also shown: q over all tests, and "
                f"over one primary test per analysis (Supplementary Note 16).")
        ordered = reg.sort_values(["confirmatory", "analysis"], ascending=[False, True], kind="stable")[list(COLUMNS)]
        note = " ".join(filter(None, (note, underflow_note(ordered))))
        try:
            shown, problem = filter_rows(ordered, query), ""
        except FilterError as exc:
            shown, problem = ordered, f"Filter not applied: {exc}."
        return table_records(shown), note, tier_comparison(reg).to_dict("records"), problem

    @app.callback(Output(ids.graph("stats-volcano"), "figure"), Output(ids.figdata("stats-volcano"), "data"),
                  Input(ids.STATS_TABLE, "derived_virtual_data"))
    def volcano(rows):
        if not rows:
            return {}, []
        fig = effect_vs_q(pd.DataFrame(rows))
        return fig, exports.publish("stats-volcano", fig, rows)


def with_live_tests(registry: pd.DataFrame, live: pd.DataFrame, feature_edits: pd.DataFrame) -> pd.DataFrame:
    """The run's registry plus live head ablations and live SAE feature edits (exploratory), BH recomputed over the
    union."""
    extra = []
    if not live.empty:
        extra.append(pd.DataFrame(ablation_tests(live.drop_duplicates(["intervention", "readout", "n"]),
                                                 exploratory=True).rows, columns=list(REGISTRY_COLUMNS)))
    if not feature_edits.empty:
        extra.append(pd.DataFrame(feature_edit_tests(feature_edits.drop_duplicates(["intervention", "readout", "n"])
                                                     ).rows, columns=list(REGISTRY_COLUMNS)))
    if not extra:
        return registry
    return correct(pd.concat([registry[list(REGISTRY_COLUMNS)], *extra], ignore_index=True))


def paper_family_sentence(registry: pd.DataFrame, alpha: float = 0.05) -> str:
    """The run's confirmatory count under the paper's own tiers, beside the paper's (SN16.4: 63 of 95)."""
    paper = registry[registry["paper_tier"] == PAPER_TIER_CONFIRMATORY]
    return (f"Under the paper's own tiers (the tests its registry gives a p-value), {len(paper)} tests are "
            f"confirmatory and {int((paper['q_paper'] < alpha).sum())} have q < {alpha:g} in that family; the paper: "
            f"{PAPER_SIGNIFICANT} of {PAPER_CONFIRMATORY_TOTAL}.")
