"""CSV files that a spreadsheet opens as data, never as formulas.

Gene symbols, labels and run names come from users' files and go into the tables the app and the library write. A
spreadsheet evaluates a cell that starts with ``=``, ``+``, ``-`` or ``@`` (and, in some, a tab or carriage return
before one) as a formula: ``=HYPERLINK(...)`` or ``=cmd|...`` in a gene symbol would run when a user opens the
export. Following OWASP's guidance on CSV injection, every text cell (and column name) that starts with one of those
characters is written with a leading single quote, which spreadsheets show as text; numbers are left as they are
(a negative number is a number, not a formula).
"""
from __future__ import annotations

import pandas as pd

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def neutral_text(value):
    """``value`` with a leading ``'`` when it is a string a spreadsheet would read as a formula; else unchanged."""
    return "'" + value if isinstance(value, str) and value.startswith(FORMULA_START) else value


def neutralised(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``frame`` whose text cells and column names are :func:`neutral_text`; numeric columns unchanged."""
    out = frame.copy()
    for column in out.columns:
        values = out[column]
        if not (pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values)
                or pd.api.types.is_datetime64_any_dtype(values)):
            out[column] = values.astype(object).map(neutral_text)
    out.columns = [neutral_text(c) for c in out.columns]
    return out


def to_csv(frame: pd.DataFrame, path=None, **kwargs) -> str | None:
    """``frame.to_csv(path, **kwargs)`` of the :func:`neutralised` frame (the text when ``path`` is None)."""
    return neutralised(frame).to_csv(path, **kwargs)
