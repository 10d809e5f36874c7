"""CSV injection: text from users' files (gene symbols, labels) never reaches a CSV as a cell a spreadsheet would
evaluate, in the library's tables and in every CSV the app exports; numbers and ordinary text are unchanged."""
import csv
import io
import zipfile

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from analysis.io.spreadsheet import neutral_text, to_csv
from app.export import export_bytes

HOSTILE = ["=HYPERLINK(\"http://x\",\"GATA1\")", "+1+cmd|' /C calc'!A0", "-2+3", "@SUM(A1)", "\t=1", "=2"]


def frame() -> pd.DataFrame:
    return pd.DataFrame({"tf": HOSTILE + ["GATA1", "MYC-AS1"], "auroc": np.linspace(-0.5, 0.9, 8),
                         "n": np.arange(-4, 4), "flag": [True, False] * 4,
                         "state": pd.Categorical(["=A1", "ok"] * 4)})


def cells(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


def check(text: str, original: pd.DataFrame) -> None:
    rows = cells(text)
    header, body = rows[0], rows[1:]
    text_cols = [header.index(c) for c in ("tf", "state")]
    for row in body:                               # no text cell starts as a formula (an independent reading)
        for i in text_cols:
            assert not row[i].startswith(("=", "+", "-", "@", "\t", "\r")), row[i]
    back = pd.read_csv(io.StringIO(text))
    assert back["tf"].tolist() == ["'" + v for v in HOSTILE] + ["GATA1", "MYC-AS1"]
    np.testing.assert_allclose(back["auroc"], original["auroc"])      # numbers stay numbers, negatives included
    assert back["n"].tolist() == original["n"].tolist() and back["flag"].tolist() == original["flag"].tolist()


def test_library_csv_neutralises_formulas_and_keeps_numbers(tmp_path):
    f = frame()
    check(to_csv(f, index=False), f)
    to_csv(f, tmp_path / "t.csv", index=False)
    check((tmp_path / "t.csv").read_text(), f)
    assert f["tf"].iloc[0].startswith("=")          # the caller's frame is not changed


def test_a_carriage_return_before_a_formula_is_neutralised_too():
    assert neutral_text("\r=1") == "'\r=1" and neutral_text("GATA1") == "GATA1" and neutral_text(-1.0) == -1.0


def test_hostile_column_names_are_neutralised():
    text = to_csv(pd.DataFrame({"=cmd": [1], "GATA1": [2]}), index=False)
    assert cells(text)[0] == ["'=cmd", "GATA1"]


def test_app_exports_csv_and_zip_neutralised():
    f = frame()
    fig = go.Figure(go.Bar(x=f["tf"], y=f["auroc"]))
    name, content = export_bytes(fig, f, {"run_id": "r"}, "heads", "csv")
    check(content.decode(), f)
    _, zipped = export_bytes(fig, f, {"run_id": "r"}, "heads", "zip")
    with zipfile.ZipFile(io.BytesIO(zipped)) as zf:
        check(zf.read("heads.csv").decode(), f)
