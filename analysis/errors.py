"""The three errors a user can see, each carrying a message that names the problem, the value found and what to do.

- :class:`InputError`: an input (file, table, column, checkpoint, vocabulary overlap) cannot be used;
- :class:`ConfigError`: a configuration value is unknown, has the wrong type or is out of range;
- :class:`SchemaError`: a result table lacks a declared column or holds NaN where none is allowed.
"""
from __future__ import annotations


class InputError(ValueError):
    """The user's input (file, table, column, vocabulary overlap) cannot be used; the message says why and what to do."""


class ConfigError(ValueError):
    """A configuration value is unknown or has the wrong type."""


class SchemaError(ValueError):
    """A result table is missing a declared column or has NaN where none is allowed."""
