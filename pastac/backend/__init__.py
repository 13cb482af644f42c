"""Attention over the interleaved KV cache and the kernels of a decode step: the cache (``cache``), grouped-query
attention without copies (``attention``), the branched attention that reads the visibility bitset
(``branched``, with its Triton kernel in ``triton_branched``), tuned linear layers (``linear``)."""

ATTENTION = ("auto", "sdpa", "triton", "flex")  # what --attention takes ("reference", the tests' oracle, besides)
DECODE_STEPS = ("auto", "eager", "static")  # what --decode-step takes (pastac.runtime.static)
