"""Science library of the single-cell foundation-model interpretability explorer (importable without Dash)."""
