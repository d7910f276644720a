"""A process: settings, wiring and startup, outages, background tasks, errors, logs,
metrics, tracing."""
