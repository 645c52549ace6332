"""GPU workers: the style engine (``workers.engine``, torch only) and what wraps it."""
