"""Attention over the interleaved KV cache and the kernels of a decode step: the cache (``cache``), grouped-query
attention without copies (``attention``), tuned linear layers (``linear``)."""
