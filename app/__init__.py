"""Dash explorer over precomputed runs (never imports torch at module level)."""
