"""The fused decoder: a Llama-family model's forward pass in a few tensor operations per layer, for the CPU.

A decode step of a small model on one CPU core multiplies one to a few dozen
rows by every weight matrix; the products themselves are what they are, but
around them ``transformers``' forward spends about a third of a one-row step on
SmolLM2-135M in Python module calls and small operations (casts, the
rotary's slices and concatenations, norms written as six operations, hooks):
per layer that is some fifty operator calls on tensors of a few hundred
numbers each.  ``FusedDecoder`` computes the same forward from the same
modules' weights in about twenty: the norm in four operations, the rotary
embedding of queries and keys together in three (``x*cos + roll(x)*sin'``,
with the sine's first half negated once per step), the attention through
``pastac.backend.attention.grouped_sdpa`` (so ``packed_attention()`` and
``branched_step()`` apply exactly as they do to the model's own forward), the
keys and values into the ``SlotCache`` through its own ``update``.

It calls the model's own ``nn.Linear`` modules, so the tuned kernels
(``pastac.backend.linear``) run inside it as they do in the model's forward,
or, with ``quant`` (``pastac.backend.quant``), packed weights in place of the
float32 ones: the query, key and value projections packed as one matrix, the
gate and up projections as one, the head as one.

Supported: ``config.model_type`` in ``ARCHITECTURES`` whose layers are the
plain Llama layer (RMS norms, rotary embedding, grouped-query attention, a
gated SiLU MLP; biases wherever the linear layers have them, as in Qwen2),
with no forward hooks (nor a forward replaced on the instance) on the modules
whose work the fused forward does itself: the model, its layers, their
attention, MLP and norms (hooks on the linear layers, the embedding and the
rotary module run, as those are called).  ``fused_support`` says why another
model is not (checked when the engine is made), and the engine then keeps the
model's own forward.

Invariant: for the same inputs its logits are the model's own forward's, to
rounding (tests/test_decoder.py compares them on tiny random models of every
supported architecture, through every runner path).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from pastac.backend import FORWARDS
from pastac.backend.attention import BackendError, grouped_sdpa
from pastac.backend.cache import SlotCache

ARCHITECTURES = frozenset({"llama", "mistral", "qwen2"})  # model types whose layers are the plain Llama layer


def fused_support(model: torch.nn.Module) -> str | None:
    """None when ``FusedDecoder`` can run ``model``; else why not, in a sentence."""
    config = getattr(model, "config", None)
    kind = getattr(config, "model_type", None)
    if kind not in ARCHITECTURES:
        return f"the fused decoder supports {', '.join(sorted(ARCHITECTURES))} models, not {kind!r}"
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"the fused decoder's MLP is SiLU-gated; this model's activation is {config.hidden_act!r}"
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if inner is None or layers is None or getattr(model, "lm_head", None) is None:
        return "the model has not the Llama layout (model.layers, model.norm, lm_head)"
    bypassed = [model, inner, getattr(inner, "norm", None)]  # modules whose work the fused forward does itself
    for layer in layers:
        attention, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
        norms = (getattr(layer, "input_layernorm", None), getattr(layer, "post_attention_layernorm", None))
        bypassed += [layer, attention, mlp, *norms, getattr(mlp, "act_fn", None)]
        parts = (
            *(getattr(attention, p, None) for p in ("q_proj", "k_proj", "v_proj", "o_proj")),
            *(getattr(mlp, p, None) for p in ("gate_proj", "up_proj", "down_proj")),
        )
        if not all(isinstance(p, torch.nn.Linear) for p in parts):
            return "a layer's projections are not plain linear layers (a PEFT wrapper, or another layout)"
        if any(getattr(attention, extra, None) is not None for extra in ("q_norm", "k_norm")):
            return "the model normalises queries and keys per head, which the fused decoder does not"
    if _global_hooks() or any(_changed(m) for m in bypassed if m is not None):
        return (
            "the model has forward hooks or a replaced forward on modules the fused decoder does not call "
            "(the model, its layers, attention, MLP or norms): its own forward keeps them"
        )
    return None


def _changed(module: torch.nn.Module) -> bool:
    """Whether ``module`` has forward hooks, pre-hooks, or a ``forward`` of its own set on the instance."""
    return bool(module._forward_hooks or module._forward_pre_hooks or "forward" in module.__dict__)


def _global_hooks() -> bool:
    """Whether forward hooks are registered for every module (``torch.nn.modules.module``'s global ones)."""
    from torch.nn.modules import module

    return bool(module._global_forward_hooks or module._global_forward_pre_hooks)


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``transformers``' Llama RMS norm, the same operations in the same order (float32 inside)."""
    if x.dtype == torch.float32:
        return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))
    wide = x.float()
    return weight * (wide * torch.rsqrt(wide.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def _rotary(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """``transformers``' rotary embedding of ``x`` [rows, heads, d], ``x * cos + rotate_half(x) * sin``, as
    ``x * cos + roll(x, d / 2) * signed_sin`` where ``signed_sin`` is ``sin`` with its first half negated."""
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, -1), signed_sin)


@dataclass
class _Layer:
    """One decoder layer's weights and modules, as the fused forward reads them."""

    index: int
    attention: torch.nn.Module  # for grouped_sdpa: its head counts and scale
    norm_in: torch.Tensor
    norm_in_eps: float
    norm_post: torch.Tensor
    norm_post_eps: float
    q: Any  # callables [rows, hidden] -> [rows, out]: the model's nn.Linear modules, or packed ones
    k: Any
    v: Any
    qkv: Any  # packed q, k and v as one product (None: three calls)
    o: Any
    gate: Any
    up: Any
    gate_up: Any  # packed gate and up as one product (None: two calls)
    down: Any


class FusedDecoder:
    """The forward of a supported model (see the module's docstring) over a ``SlotCache``."""

    def __init__(self, model: torch.nn.Module, *, quant: str = "none") -> None:
        """Reads ``model``'s modules (sharing their weights); ``quant`` (``pastac.backend.quant.QUANTS``) packs
        the linear layers' weights once, here.  Raises ``BackendError`` when the model is not supported (the
        reason) or the quantisation cannot run (``pastac.backend.quant.QuantError``)."""
        from pastac.backend.quant import check_quant, packed

        reason = fused_support(model)
        if reason is not None:
            raise BackendError(reason)
        check_quant(quant, model)
        inner: Any = model.model
        config = model.config
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.embed = inner.embed_tokens
        self.rotary = inner.rotary_emb
        self.norm, self.norm_eps = inner.norm.weight, inner.norm.variance_epsilon
        pack = (lambda *linears: packed(quant, *linears)) if quant != "none" else (lambda *linears: None)
        self.head = pack(model.lm_head) or model.lm_head
        self.layers: list[_Layer] = []
        for i, layer in enumerate(inner.layers):
            a, m = layer.self_attn, layer.mlp
            self.layers.append(
                _Layer(
                    index=i,
                    attention=a,
                    norm_in=layer.input_layernorm.weight,
                    norm_in_eps=layer.input_layernorm.variance_epsilon,
                    norm_post=layer.post_attention_layernorm.weight,
                    norm_post_eps=layer.post_attention_layernorm.variance_epsilon,
                    q=a.q_proj,
                    k=a.k_proj,
                    v=a.v_proj,
                    qkv=pack(a.q_proj, a.k_proj, a.v_proj),
                    o=pack(a.o_proj) or a.o_proj,
                    gate=m.gate_proj,
                    up=m.up_proj,
                    gate_up=pack(m.gate_proj, m.up_proj),
                    down=pack(m.down_proj) or m.down_proj,
                )
            )
        self.head_dim = self.layers[0].attention.head_dim
        self.q_width, self.kv_width = self.heads * self.head_dim, self.kv_heads * self.head_dim

    def __call__(
        self,
        ids: torch.Tensor,
        positions: torch.Tensor,
        mask: torch.Tensor | None,
        cache: SlotCache,
        sample: torch.Tensor,
    ) -> torch.Tensor:
        """Logits ``[len(sample), vocab]`` of the queries ``sample`` (indices into the row) of one packed row of
        tokens ``ids`` at ``positions`` ([T] each), the attention ``mask`` [1, 1, T, slots] (additive; None or
        ignored inside ``branched_step()``); keys and values go into ``cache`` at its ``write_slots``."""
        rows, d, half = ids.shape[0], self.head_dim, self.head_dim // 2
        heads, kv_heads = self.heads, self.kv_heads
        x = self.embed(ids)
        cos, sin = self.rotary(x[None], positions[None])  # [1, T, d]
        cos, sin = cos[0, :, None], sin[0, :, None]  # [T, 1, d], broadcast over heads
        sin = torch.cat((-sin[..., :half], sin[..., half:]), -1)  # rotate_half(x) * sin == roll(x, half) * this
        for layer in self.layers:
            y = _rms(x, layer.norm_in, layer.norm_in_eps)
            if layer.qkv is not None:
                qkv = layer.qkv(y)
                q, k, v = qkv.split((self.q_width, self.kv_width, self.kv_width), -1)
            else:
                q, k, v = layer.q(y), layer.k(y), layer.v(y)
            q = q.view(rows, heads, d)
            k = k.view(rows, kv_heads, d)
            q, k = _rotary(q, cos, sin), _rotary(k, cos, sin)
            keys, values = cache.layers[layer.index].update(
                k.transpose(0, 1)[None], v.view(rows, kv_heads, d).transpose(0, 1)[None]
            )
            out, _ = grouped_sdpa(
                layer.attention, q.transpose(0, 1)[None], keys, values, mask, scaling=layer.attention.scaling
            )
            x = x + layer.o(out.reshape(rows, self.q_width))
            y = _rms(x, layer.norm_post, layer.norm_post_eps)
            if layer.gate_up is not None:
                gate, up = layer.gate_up(y).chunk(2, -1)
            else:
                gate, up = layer.gate(y), layer.up(y)
            x = x + layer.down(F.silu(gate) * up)
        return self.head(_rms(x[sample], self.norm, self.norm_eps))


def resolve_forward(name: str, model: torch.nn.Module, quant: str = "none") -> str:
    """The forward that runs for ``name`` (one of ``FORWARDS``): ``auto`` is ``fused`` on the CPU when the model
    is supported (or when ``quant`` needs it), else ``hf``.  Raises ``BackendError`` (a ``ValueError``) for an
    unknown name and for ``fused`` (or a ``quant``) on a model it cannot run, saying why."""
    if name not in FORWARDS:
        raise BackendError(f"forward must be one of {', '.join(FORWARDS)}, not {name!r}")
    reason = fused_support(model)
    if quant == "auto":  # it follows the forward
        quant = "none"
    if name == "hf":
        if quant != "none":
            raise BackendError(f"--quant {quant} packs the fused decoder's weights: it needs --forward fused or auto")
        return "hf"
    if name == "fused" or quant != "none":
        if reason is not None:
            what = "--forward fused" if name == "fused" else f"--quant {quant} (which runs in the fused decoder)"
            raise BackendError(f"{what} cannot run this model: {reason}")
        return "fused"
    device = next(model.parameters()).device
    return "fused" if reason is None and device.type == "cpu" else "hf"
