"""The interpreter that decodes a model's threads concurrently (not built yet)."""
