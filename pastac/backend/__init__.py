"""Attention over the interleaved KV cache (not built yet)."""
