"""``pastac serve``: many requests decoded together behind an OpenAI-compatible HTTP API.

``app`` builds the ASGI app over a ``pastac.runtime.batch.BatchEngine``; ``server`` runs it with uvicorn (in the
foreground, or on a thread for tests and benchmarks); ``metrics`` keeps its Prometheus figures; ``command`` is
the command line.
"""
