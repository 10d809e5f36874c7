"""Server-side filtering of a DataTable's header filters (``filter_action="custom"``), because the table's own
filter lets a missing number through a comparison (``< 0.05`` keeps every blank q: the browser reads null as 0).
Here a missing value never satisfies a comparison; ``is blank`` finds it.

The query is the one DataTable writes from its header cells (Dash's filtering syntax): terms ``{column} operator
value`` joined by ``&&``; operators ``=`` ``!=`` ``<`` ``<=`` ``>`` ``>=`` (or ``eq`` ``ne`` ``lt`` ``le`` ``gt``
``ge``), ``contains``, ``is blank`` / ``is nil``, each but the last with an optional case prefix (``s`` sensitive,
the table's default, as in ``{q} s< 0.05``; ``i`` insensitive).
"""
from __future__ import annotations

import operator
import re

import pandas as pd

COMPARISONS = {"=": operator.eq, "eq": operator.eq, "!=": operator.ne, "ne": operator.ne, "<": operator.lt,
               "lt": operator.lt, "<=": operator.le, "le": operator.le, ">": operator.gt, "gt": operator.gt,
               ">=": operator.ge, "ge": operator.ge}
BLANK = ("is blank", "is nil")
TERM = re.compile(r"^\{(?P<column>[^}]+)\}\s*(?P<op>is blank|is nil|(?P<case>[si]?)(?P<name>contains|eq|ne|lt|le|gt|ge|"
                  r"[<>!=]=?))\s*(?P<value>.*)$")


class FilterError(ValueError):
    """A header filter this table cannot apply; the message names it and what to type instead."""


def filter_rows(frame: pd.DataFrame, query: str | None) -> pd.DataFrame:
    """The rows of ``frame`` that satisfy every term of ``query`` (None or "": all rows). Numbers compare as numbers,
    a missing value fails every comparison and ``contains``; text matches in the term's case mode (true / false in a
    column of booleans in any case). Raises :class:`FilterError` for a term it cannot read or an unknown column."""
    keep = pd.Series(True, index=frame.index)
    for term in filter(None, (t.strip() for t in (query or "").split("&&"))):
        keep &= _term_mask(frame, term)
    return frame[keep]


def _term_mask(frame: pd.DataFrame, term: str) -> pd.Series:
    match = TERM.match(term)
    if not match:
        raise FilterError(f"cannot read the filter {term!r}: type a comparison such as < 0.05 or a word to look for")
    column, value = match["column"], _unquoted(match["value"])
    if column not in frame:
        raise FilterError(f"the filter names column {column!r}, which this table does not have")
    values = frame[column]
    if match["op"] in BLANK:
        return values.isna() | values.astype(str).str.strip().eq("")
    op, sensitive = match["name"], match["case"] != "i"
    if op == "contains":
        return values.notna() & values.astype(str).str.contains(value, case=sensitive, regex=False)
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        try:
            number = float(value)
        except ValueError:
            raise FilterError(f"column {column!r} holds numbers: {value!r} is not one") from None
        return values.notna() & COMPARISONS[op](values, number)
    text = values.astype(str)
    if sensitive and not pd.api.types.is_bool_dtype(values):
        return values.notna() & COMPARISONS[op](text, value)
    return values.notna() & COMPARISONS[op](text.str.lower(), value.lower())


def _unquoted(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'`":
        return value[1:-1]
    return value
