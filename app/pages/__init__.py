"""One module per view; each exposes ``PATH``, ``NAME``, ``layout()`` and ``register(app, store, settings, jobs,
exports)`` (``jobs``: :class:`app.view_cache.JobResults`, the job cache as background callbacks write their results
and pages read them; ``exports``: :class:`app.export.FigureExports`)."""
