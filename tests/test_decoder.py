"""The fused decoder (``pastac.backend.decoder``) and its packed weights (``pastac.backend.quant``).

The fused forward must give the logits of the model's own forward through every runner path (one run under
sdpa, under the bitset's reference attention, requests packed by the batch engine); a packed int8 row must
not depend on the other rows of its step; every choice that cannot run says why.
"""

from __future__ import annotations

import pytest
import torch
from test_attention_backends import PROMPT, TEMPLATE, replayed
from test_cli import run
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from pastac.backend.attention import BackendError
from pastac.backend.decoder import FusedDecoder, _rms, _rotary, fused_support, resolve_forward
from pastac.backend.quant import Packed, QuantError, check_quant, packed, packed_bytes
from pastac.models import random_model
from pastac.runtime import Engine
from pastac.runtime.batch import BatchEngine


def like(base: Engine, **options: str) -> Engine:
    """An engine over ``base``'s model and tokenizer with other options."""
    return Engine(base.model, base.tokenizer, **options)


@pytest.mark.parametrize("shape", ["tiny-llama", "tiny-qwen2"])
@pytest.mark.parametrize("attention", ["sdpa", "reference"])
def test_the_fused_forward_replays_the_logits_of_the_models_own(tiny_engine, shape, attention):
    base = tiny_engine(shape)
    own = like(base, forward="hf", attention=attention)
    fused = like(base, forward="fused", attention=attention)
    assert own.decoder is None and fused.decoder is not None
    tokens, expected = replayed(own)
    got_tokens, got = replayed(fused)
    assert got_tokens == tokens
    assert expected.shape == got.shape and expected.shape[0] > 20
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("shape", ["tiny-llama", "tiny-qwen2"])
def test_the_fused_forward_decodes_what_the_models_own_decodes(tiny_engine, shape):
    base = tiny_engine(shape)
    options = dict(template=TEMPLATE, max_new_tokens=40, max_thread_tokens=8)
    expected = like(base, forward="hf").generate(PROMPT, **options)
    got = like(base, forward="fused").generate(PROMPT, **options)
    assert got.token_ids == expected.token_ids
    assert got.stats.threads == expected.stats.threads == 3


def test_requests_packed_by_the_batch_engine_decode_alike_through_the_fused_forward(tiny_engine):
    base = tiny_engine("tiny-qwen2")
    prompts = ["Give me tips.", "Name two colours.", "Plan a day."]
    answers = {}
    for forward in ("hf", "fused"):
        batch = BatchEngine(like(base, forward=forward), max_concurrent=3, kv_slots=512)
        handles = [batch.submit(p, template=TEMPLATE, max_new_tokens=30, max_thread_tokens=6) for p in prompts]
        while batch.busy:
            batch.step()
        answers[forward] = [h.result.token_ids for h in handles]
    assert answers["fused"] == answers["hf"]


def test_auto_is_fused_on_the_cpu_for_supported_models_and_the_models_own_otherwise(tiny_engine):
    assert tiny_engine("tiny-llama").forward == "fused"
    gpt2 = tiny_engine("tiny-gpt2")
    assert gpt2.forward == "hf" and gpt2.decoder is None
    assert "gpt2" in (fused_support(gpt2.model) or "")
    with pytest.raises(BackendError, match="--forward fused cannot run this model"):
        resolve_forward("fused", gpt2.model)
    with pytest.raises(BackendError, match=r"--quant int8 .* cannot run this model"):
        resolve_forward("auto", gpt2.model, "int8")
    with pytest.raises(BackendError, match="needs --forward fused or auto"):
        resolve_forward("hf", tiny_engine("tiny-llama").model, "fp16")
    with pytest.raises(BackendError, match="forward must be one of"):
        resolve_forward("fast", gpt2.model)
    with pytest.raises(BackendError):
        FusedDecoder(gpt2.model)


@pytest.mark.parametrize("quant", ["fp16", "int8"])
def test_packed_weights_compute_the_linear_layers_products(quant):
    torch.manual_seed(0)
    q, k = torch.nn.Linear(48, 32), torch.nn.Linear(48, 16, bias=False)
    x = torch.randn(5, 3, 48)
    got = packed(quant, q, k)(x)
    want = torch.cat((q(x), k(x)), -1).detach()
    assert got.shape == (5, 3, 48)
    tolerance = {"fp16": 2e-3, "int8": 3e-2}[quant] * float(want.abs().max())
    torch.testing.assert_close(got, want, atol=tolerance, rtol=0)


def test_an_int8_row_does_not_depend_on_the_other_rows_of_its_step():
    torch.manual_seed(1)
    layer = packed("int8", torch.nn.Linear(64, 40))
    rows = torch.randn(9, 64) * torch.logspace(-2, 2, 9)[:, None]  # magnitudes far apart
    together = layer(rows)
    for i in range(rows.shape[0]):
        assert torch.equal(layer(rows[i : i + 1])[0], together[i])


@pytest.mark.parametrize("quant", ["fp16", "int8"])
def test_a_quantised_engine_decodes_close_to_float32(tiny_engine, quant):
    base = tiny_engine("tiny-llama")
    _, expected = replayed(like(base, forward="hf"))
    _, got = replayed(like(base, quant=quant))
    error = float((got - expected).abs().max() / expected.abs().max())
    assert error < {"fp16": 1e-3, "int8": 0.1}[quant]
    agree = (got.argmax(-1) == expected.argmax(-1)).float().mean()
    assert agree >= {"fp16": 1.0, "int8": 0.8}[quant]


def test_quantisation_that_cannot_run_is_refused_with_the_reason(tiny_engine):
    base = tiny_engine("tiny-llama")
    with pytest.raises(QuantError, match="quant must be one of"):
        check_quant("int4", base.model)
    bf16 = random_model("tiny-llama", vocab_size=base.model.config.vocab_size, dtype="bfloat16")
    with pytest.raises(QuantError, match="--dtype float32"):
        check_quant("int8", bf16)
    with pytest.raises(BackendError, match="static step"):
        like(base, quant="int8", attention="reference", decode_step="static")
    with pytest.raises(QuantError):
        Packed("int4", [torch.zeros(2, 2)], [None])


def test_the_cli_takes_forward_and_quant_and_refuses_what_cannot_run(capsys, saved_tiny_model):
    model = str(saved_tiny_model)
    code, _, err = run(capsys, "run", "Hi", "--model", model, "--quant", "fp16", "--max-new-tokens", "6", "-q")
    assert code == 0, err
    code, _, err = run(capsys, "run", "Hi", "--model", model, "--quant", "int8", "--forward", "hf", "-q")
    assert code == 2 and "--quant int8" in err
    code, _, err = run(capsys, "run", "Hi", "--model", model, "--quant", "int4", "-q")
    assert code == 2 and "--quant" in err


def test_the_fused_norm_and_rotary_are_the_models_own_operations(tiny_engine):
    base = tiny_engine("tiny-llama")
    decoder = FusedDecoder(base.model)
    layer = base.model.model.layers[0]
    x = torch.randn(3, base.model.config.hidden_size)
    assert torch.equal(_rms(x, decoder.layers[0].norm_in, decoder.layers[0].norm_in_eps), layer.input_layernorm(x))
    heads, kv_heads, d = decoder.heads, decoder.kv_heads, decoder.head_dim
    q, k = torch.randn(3, heads, d), torch.randn(3, kv_heads, d)
    cos, sin = base.model.model.rotary_emb(x[None], torch.tensor([[0, 7, 300]]))  # [1, 3, d]
    want_q, want_k = apply_rotary_pos_emb(q.transpose(0, 1)[None], k.transpose(0, 1)[None], cos, sin)
    signed = torch.cat((-sin[0, :, None, : d // 2], sin[0, :, None, d // 2 :]), -1)
    torch.testing.assert_close(_rotary(q, cos[0, :, None], signed), want_q[0].transpose(0, 1))
    torch.testing.assert_close(_rotary(k, cos[0, :, None], signed), want_k[0].transpose(0, 1))


def test_auto_quant_is_fp16_where_the_fused_forward_runs_a_float32_model_and_none_elsewhere(tiny_engine):
    base = tiny_engine("tiny-llama")
    assert like(base, quant="auto").quant == "fp16"
    assert like(base, quant="auto", forward="hf").quant == "none"
    assert like(base).quant == "none"  # the library's Engine() keeps float32 unless asked
    bf16 = random_model("tiny-llama", vocab_size=base.model.config.vocab_size, dtype="bfloat16")
    assert Engine(bf16, base.tokenizer, quant="auto").quant == "none"
    assert like(tiny_engine("tiny-gpt2"), quant="auto").quant == "none"
    assert packed_bytes("fp16", base.model) == 2 * sum(
        m.weight.numel() for m in base.model.modules() if isinstance(m, torch.nn.Linear)
    )


def test_a_model_with_forward_hooks_keeps_its_own_forward(tiny_engine):
    base = tiny_engine("tiny-llama")
    model = random_model("tiny-llama", vocab_size=base.model.config.vocab_size, seed=3)
    handle = model.register_forward_hook(lambda module, args, out: None)
    try:
        assert "forward hooks" in (fused_support(model) or "")
        assert Engine(model, base.tokenizer).forward == "hf"
        with pytest.raises(BackendError, match="forward hooks"):
            Engine(model, base.tokenizer, forward="fused")
    finally:
        handle.remove()
    assert fused_support(model) is None
    layer_hook = model.model.layers[1].mlp.register_forward_pre_hook(lambda module, args: None)
    assert fused_support(model) is not None
    layer_hook.remove()
    linear_hook = model.model.layers[0].self_attn.q_proj.register_forward_hook(lambda *a: None)
    assert fused_support(model) is None  # the linear layers are called: their hooks run
    linear_hook.remove()
