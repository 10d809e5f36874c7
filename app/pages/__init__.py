"""One module per view; each exposes ``PATH``, ``NAME``, ``layout()`` and ``register(app, store, settings)``."""
