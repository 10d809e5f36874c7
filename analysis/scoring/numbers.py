"""One way to write numbers in sentences, tables and exports: probabilities to two significant digits with underflow
written as a bound ("< 1e-300", never 0 or 2.2e-308), effects to three significant digits without float noise, and
missing values as an em dash, never "nan"."""
from __future__ import annotations

import math

SMALLEST_SHOWN_P = 1e-300   # below this a p-value is float underflow or a sentinel, not a measured probability
MISSING = "\u2014"


def _missing(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def probability(p) -> str:
    """A p- or q-value: ``"0.012"``, ``"3.4e-07"``, ``"< 1e-300"`` for anything smaller (0 included), ``"1"``."""
    if _missing(p):
        return MISSING
    p = float(p)
    return f"< {SMALLEST_SHOWN_P:.0e}" if p < SMALLEST_SHOWN_P else f"{p:.2g}"


def effect(x, *, signed: bool = False, digits: int = 3) -> str:
    """An effect or estimate to ``digits`` significant digits (``0.00884``, ``-0.23``, ``1.2e-05``); ``signed``
    writes a plus sign on positive values (for a change)."""
    if _missing(x):
        return MISSING
    x = float(x)
    if x == 0:
        return "0"
    text = f"{x:.{digits}g}"
    return f"+{text}" if signed and x > 0 else text


def share(x) -> str:
    """A fraction as a whole percentage (``0.43`` -> ``"43%"``), or one decimal under 10% (``"4.2%"``)."""
    if _missing(x):
        return MISSING
    return f"{100 * float(x):.0f}%" if abs(x) >= 0.1 else f"{100 * float(x):.1f}%"
