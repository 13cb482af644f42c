"""The dependency-graph IR of threads, promises and syncs (not built yet)."""
