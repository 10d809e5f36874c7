"""The precompute stages, one module per step, ordered by ``pipeline`` (may import everything in ``analysis``; nothing else imports them)."""
