"""Attention over the interleaved KV cache and the kernels of a decode step: the cache (``cache``), grouped-query
attention without copies (``attention``), the branched attention that reads the visibility bitset
(``branched``, with its Triton kernel in ``triton_branched``), tuned linear layers (``linear``), the fused
forward of Llama-family models (``decoder``) and its packed weights (``quant``)."""

ATTENTION = ("auto", "sdpa", "triton", "flex")  # what --attention takes ("reference", the tests' oracle, besides)
DECODE_STEPS = ("auto", "eager", "static")  # what --decode-step takes (pastac.runtime.static)
FORWARDS = ("auto", "hf", "fused")  # --forward: the model's own forward, or pastac's fused one (decoder.py)
QUANTS = ("auto", "none", "fp16", "int8")  # --quant: the fused forward's packed weights (quant.py)
