"""Which models the runtime can drive, and the numerical check behind that list.

The runtime decodes all threads of a response in one packed row: a custom 4D additive float mask keeps the
threads apart, explicit ``position_ids`` give each token its position in the stitched text, and a KV cache
of its own (a ``transformers.cache_utils.Cache`` subclass passed as ``cache=``) holds the keys and values.
``check_architecture`` refuses a model whose attention cannot be driven that way, giving every reason that
applies; an architecture is accepted only if it is in ``PACKED_ATTENTION_ARCHITECTURES``, and it enters that
list only once ``verify_packed_attention`` (packed decoding gives the logits of decoding each thread alone)
passes on it.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache, PretrainedConfig, PreTrainedModel
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING, MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from pastac.models.errors import ModelError

#: Attention implementations that apply a custom 4D additive mask exactly as given. FlashAttention kernels
#: take no arbitrary mask and would silently decode every thread with plain causal attention.
_MASKED_ATTENTION = frozenset({"sdpa", "eager"})

#: Architectures (``config.model_type``) that the runtime may drive. Membership means: with
#: ``attn_implementation="sdpa"``, a packed row under a custom 4D additive float mask with explicit
#: ``position_ids`` (threads sharing a prefix, reusing and skipping positions) and a ``Cache`` passed as
#: ``cache=`` gives the same logits as decoding each thread on its own. ``verify_packed_attention`` is that
#: check; tests/test_models.py runs it on a tiny random model of every architecture listed here (with
#: transformers 5.24). An architecture that is not listed may well work: verify it before adding it.
PACKED_ATTENTION_ARCHITECTURES = frozenset(
    {
        "gemma",
        "gpt2",
        "gpt_neox",
        "granite",
        "helium",
        "llama",
        "mistral",
        "mixtral",
        "olmo",
        "olmo2",
        "phi",
        "phi3",
        "qwen2",
        "qwen3",
        "qwen3_moe",
        "smollm3",
        "stablelm",
        "starcoder2",
    }
)

#: Architectures whose layers keep a recurrent, linear-attention or state-space state (alone or mixed with
#: attention layers). Their state cannot be shared by threads through a mask, so they are refused with that
#: reason even where their config declares no ``layer_types``.
_RECURRENT_ARCHITECTURES = frozenset(
    {
        "bailing_hybrid",
        "bamba",
        "falcon_h1",
        "falcon_mamba",
        "granitemoehybrid",
        "jamba",
        "kimi_linear",
        "lfm2",
        "lfm2_moe",
        "lfm3",
        "mamba",
        "mamba2",
        "minimax",
        "nemotron_h",
        "olmo_hybrid",
        "qwen3_5",
        "qwen3_5_moe",
        "qwen3_next",
        "recurrent_gemma",
        "rwkv",
        "xlstm",
        "zamba",
        "zamba2",
    }
)


def check_architecture(model: PreTrainedModel | PretrainedConfig) -> None:
    """Refuse, with a ``ModelError`` naming the architecture and the reasons, a model the runtime cannot drive.

    The runtime feeds one packed row with a custom 4D additive float mask, explicit ``position_ids`` and a
    ``Cache`` of its own. That rules out encoder-decoder models, models without a causal LM head, layers
    with a recurrent, linear-attention or state-space state (threads cannot share it through a mask),
    sliding-window attention (the mask would have to carry the window), attention logit soft-capping,
    attention kernels that take no custom mask, and any architecture not in
    ``PACKED_ATTENTION_ARCHITECTURES``. Accepts a model or just its config; every reason that applies is
    given.
    """
    config = model if isinstance(model, PretrainedConfig) else getattr(model, "config", None)
    if not isinstance(config, PretrainedConfig):
        raise ModelError(f"{type(model).__name__} is not a transformers model or config")
    kind = config.model_type or type(config).__name__
    refuse = f"the runtime cannot drive this model ({kind})"
    if getattr(config, "is_encoder_decoder", False):
        raise ModelError(f"{refuse}: it is an encoder-decoder model; the runtime needs a decoder-only causal LM")
    if kind not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ModelError(f"{refuse}: its config ({type(config).__name__}) is not that of a causal language model")
    reasons: list[str] = []
    layer_kinds = set(getattr(config, "layer_types", None) or ())
    stateful = layer_kinds - {"full_attention", "sliding_attention", "chunked_attention"}
    if kind in _RECURRENT_ARCHITECTURES or stateful:
        what = f" (layer types: {', '.join(sorted(stateful))})" if stateful else ""
        reasons.append(
            f"it has recurrent, linear-attention or state-space layers{what}, whose state threads cannot share "
            f"through an attention mask"
        )
    window = getattr(config, "sliding_window", None)
    windowed = bool(layer_kinds & {"sliding_attention", "chunked_attention"}) or (
        not layer_kinds and bool(window) and getattr(config, "use_sliding_window", True) is not False
    )
    if windowed:
        reasons.append(
            f"it uses sliding-window attention (window {window}), which the custom attention mask would replace "
            f"(a config with sliding_window=None is accepted where the architecture allows it)"
        )
    if softcap := getattr(config, "attn_logit_softcapping", None):
        reasons.append(f"it soft-caps attention logits (attn_logit_softcapping={softcap}), which sdpa does not do")
    if not reasons and kind not in PACKED_ATTENTION_ARCHITECTURES:
        reasons.append(
            f"{kind} is not among the architectures verified to work with a packed row, a custom 4D float mask "
            f"and explicit position ids ({', '.join(sorted(PACKED_ATTENTION_ARCHITECTURES))})"
        )
    if not isinstance(model, PretrainedConfig):
        head_class = MODEL_FOR_CAUSAL_LM_MAPPING.get(type(config), None)
        if head_class is not None and not isinstance(model, head_class):
            reasons.append(
                f"{type(model).__name__} has no language-model head; load it with AutoModelForCausalLM "
                f"({head_class.__name__})"
            )
        attention = getattr(config, "_attn_implementation", None)
        if attention not in _MASKED_ATTENTION:
            reasons.append(
                f"its attention implementation {attention!r} ignores custom attention masks; load it with "
                f"attn_implementation='sdpa'"
            )
    if reasons:
        raise ModelError(f"{refuse}: {'; '.join(reasons)}")


def _additive_mask(allowed: torch.Tensor, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    mask = torch.full(allowed.shape, torch.finfo(dtype).min, dtype=dtype, device=device)
    mask.masked_fill_(allowed.to(device), 0.0)
    return mask[None, None]


@torch.no_grad()
def verify_packed_attention(model: PreTrainedModel, *, atol: float | None = None, seed: int = 0) -> float:
    """Check numerically that a model decodes threads correctly the way the runtime drives it.

    A prefix ``P`` and two threads ``A`` and ``B`` that both continue it go in one packed row under a custom
    4D additive float mask (``B`` does not see ``A``), with explicit position ids (``B`` reuses ``A``'s
    positions), into a ``DynamicCache`` passed as ``cache=``; then one decode step feeds a token to each
    thread, ``A``'s skipping two positions ahead. Every logit must match decoding ``P A`` and ``P B`` on their
    own. Returns the largest absolute difference; raises ``ModelError`` above ``atol`` (default 1e-4 in
    float32, 5e-2 in 16-bit types, where the two computations round differently).
    """
    config = model.config.get_text_config()
    tolerance = atol if atol is not None else (1e-4 if model.dtype == torch.float32 else 5e-2)
    device = model.device
    generator = torch.Generator().manual_seed(seed)
    vocab = int(config.vocab_size)

    def tokens(n: int) -> torch.Tensor:
        return torch.randint(0, vocab, (n,), generator=generator)

    prefix, first, second, step = tokens(5), tokens(4), tokens(3), tokens(2)
    p, a, b = len(prefix), len(first), len(second)
    gap = 2

    def alone(ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        # A 2D mask of ones: without it (and without a cache) transformers would read a jump in the position
        # ids as the start of another packed sequence.
        ones = torch.ones(1, len(ids), dtype=torch.long, device=device)
        out = model(ids[None].to(device), attention_mask=ones, position_ids=positions[None].to(device), use_cache=False)
        return out.logits[0].float()

    ref_a = alone(torch.cat([prefix, first, step[:1]]), torch.cat([torch.arange(p + a), torch.tensor([p + a + gap])]))
    ref_b = alone(torch.cat([prefix, second, step[1:]]), torch.arange(p + b + 1))

    row = torch.cat([prefix, first, second])
    positions = torch.cat([torch.arange(p), torch.arange(p, p + a), torch.arange(p, p + b)])
    threads = torch.tensor([0] * p + [1] * a + [2] * b)
    order = torch.arange(len(row))
    allowed = (order[None, :] <= order[:, None]) & ((threads[None, :] == 0) | (threads[None, :] == threads[:, None]))
    cache = DynamicCache(config=model.config)
    out = model(
        row[None].to(device),
        attention_mask=_additive_mask(allowed, model.dtype, device),
        position_ids=positions[None].to(device),
        cache=cache,
        use_cache=True,
    )
    packed = out.logits[0].float()
    step_threads = torch.tensor([1, 2])
    all_threads = torch.cat([threads, step_threads])
    queries = torch.arange(len(row), len(row) + 2)
    keys = torch.arange(len(row) + 2)
    allowed_step = (keys[None, :] <= queries[:, None]) & (
        (all_threads[None, :] == 0) | (all_threads[None, :] == step_threads[:, None])
    )
    out_step = model(
        step[None].to(device),
        attention_mask=_additive_mask(allowed_step, model.dtype, device),
        position_ids=torch.tensor([[p + a + gap, p + b]], device=device),
        cache=cache,
        use_cache=True,
    )
    decoded = out_step.logits[0].float()
    differences = [
        (packed[: p + a] - ref_a[: p + a]).abs().max(),
        (packed[p + a :] - ref_b[p : p + b]).abs().max(),
        (decoded[0] - ref_a[-1]).abs().max(),
        (decoded[1] - ref_b[-1]).abs().max(),
    ]
    worst = float(torch.stack(differences).max())
    if not worst <= tolerance:
        raise ModelError(
            f"{config.model_type}: a packed row with a custom 4D mask, position ids and a cache gives logits "
            f"{worst:.3g} away from decoding each thread alone (tolerance {tolerance:g})"
        )
    return worst
