"""The app's one way to put numbers in a table (app.components.table_records / table_column) and its server-side
header filter (app.table_filter), each against a hand-built answer."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from app.components import data_table, table_column, table_records, underflow_note
from app.table_filter import FilterError, filter_rows

REGISTRY = pd.DataFrame({
    "analysis": ["perturbation", "perturbation", "ablation", "Layer_biology"],
    "q": [0.01, np.nan, 0.5, 0.0],
    "n": [10, 20, 30, 40],
    "confirmatory": [True, False, True, False],
})


def test_a_blank_q_never_passes_a_comparison_and_is_blank_finds_it():
    assert filter_rows(REGISTRY, "{q} < 0.05")["n"].tolist() == [10, 40]
    assert filter_rows(REGISTRY, "{q} >= 0.05")["n"].tolist() == [30]
    assert filter_rows(REGISTRY, "{q} ne 0.5")["n"].tolist() == [10, 40]
    assert filter_rows(REGISTRY, "{q} is blank")["n"].tolist() == [20]


def test_terms_combine_and_text_matches_as_the_header_filter_writes_it():
    # what DataTable writes for "< 0.05" typed under q and "perturbation" under analysis (case-sensitive default)
    assert filter_rows(REGISTRY, "{q} s< 0.05 && {analysis} scontains perturbation")["n"].tolist() == [10]
    assert filter_rows(REGISTRY, '{analysis} contains "perturbation" && {q} < 0.05')["n"].tolist() == [10]
    assert filter_rows(REGISTRY, "{analysis} icontains layer")["n"].tolist() == [40]
    assert filter_rows(REGISTRY, "{analysis} scontains layer").empty
    assert filter_rows(REGISTRY, "{confirmatory} = true")["n"].tolist() == [10, 30]
    assert filter_rows(REGISTRY, "{n} > 15 && {n} <= 30")["n"].tolist() == [20, 30]
    assert filter_rows(REGISTRY, None).equals(REGISTRY) and filter_rows(REGISTRY, "").equals(REGISTRY)


@pytest.mark.parametrize("query, named", [("{nope} < 1", "'nope'"), ("{q} < abc", "'abc'"), ("q < 1", "q < 1")])
def test_a_filter_it_cannot_apply_is_named(query, named):
    with pytest.raises(FilterError, match=named):
        filter_rows(REGISTRY, query)


def test_table_records_show_underflow_as_a_bound_and_sentinels_and_nan_blank():
    frame = pd.DataFrame({"layer": [-1, 3], "head": [-1, 0], "p": [0.0, 0.02],
                          "p_gene_permuted": [1e-320, 0.3], "auroc": [np.nan, 0.61234567]})
    rows = table_records(frame)
    assert rows[0] == {"layer": None, "head": None, "p": 1e-300, "p_gene_permuted": 1e-300, "auroc": None}
    assert rows[1] == {"layer": 3, "head": 0, "p": 0.02, "p_gene_permuted": 0.3, "auroc": 0.61234567}


def test_numbers_are_formatted_to_significant_digits_and_a_value_beside_its_baseline_to_six():
    assert table_column("delta", ("delta",))["format"].to_plotly_json()["specifier"] == ".3~g"
    assert table_column("value", ("value",))["format"].to_plotly_json()["specifier"] == ".6~g"
    assert "format" not in table_column("tf", ("delta",))
    table = data_table(pd.DataFrame({"tf": ["A"], "n": [3], "auroc": [0.5]}))
    assert [c.get("type") for c in table.columns] == [None, None, "numeric"]


def test_a_compared_pair_of_layers_is_blank_where_it_is_a_baseline_and_underflow_is_explained():
    frame = pd.DataFrame({"layer_a": [-1, 2], "layer_b": [-1, 2], "p": [0.0, 0.3]})
    assert [(r["layer_a"], r["layer_b"]) for r in table_records(frame)] == [(None, None), (2, 2)]
    assert "float underflow" in underflow_note(frame)
    assert underflow_note(frame.assign(p=[0.01, 0.3])) == "" and underflow_note(frame[["layer_a"]]) == ""
