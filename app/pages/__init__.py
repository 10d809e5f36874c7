"""One module per view; each exposes ``PATH``, ``NAME``, ``layout()`` and ``register(app, store, settings, jobs)`` (``jobs``: the diskcache
behind background callbacks and memoised recomputations)."""
