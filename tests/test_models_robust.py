"""What loading does with damaged or hostile input: adapter folders without weights or with garbage weights, GGUF
files cut short, token budgets no model or machine can hold, and the model cache keyed by content.

Tiny models and tiny GGUF files only; each case must end in a ``ModelError`` or ``BudgetError`` that names the
file or the limit (exit 2 from the CLI), never a traceback or a network request.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
from pathlib import Path

import gguf
import numpy as np
import pytest
from test_cli import run

from pastac.models import (
    BudgetError,
    ModelError,
    check_budget,
    context_length,
    convert_gguf,
    default_gguf,
    load_model,
    random_model,
    tiny_tokenizer,
)
from pastac.models import budget as budget_module
from pastac.models import gguf as gguf_module
from pastac.models.adapter import check_safetensors
from pastac.models.gguf import check_gguf, gguf_digest
from pastac.runtime.engine import Engine

# Tiny models: one thread is faster than two on a small shared machine (the fixture in conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def saved_adapter(tmp_path_factory: pytest.TempPathFactory, saved_tiny_model: Path, random_lora) -> Path:  # type: ignore[no-untyped-def]
    """A LoRA adapter of the tiny model, saved by PEFT (config and safetensors weights)."""
    from transformers import AutoModelForCausalLM

    peft_model = random_lora(AutoModelForCausalLM.from_pretrained(saved_tiny_model))
    folder = tmp_path_factory.mktemp("adapters") / "lora"
    peft_model.save_pretrained(folder)
    return folder


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Every attempt to open a connection is recorded and refused."""
    attempts: list[object] = []

    def connect(self: socket.socket, address: object) -> None:
        attempts.append(address)
        raise OSError("the network is off in this test")

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return attempts


# --- adapters ------------------------------------------------------------------------------------------------


def test_an_adapter_folder_without_weights_is_refused_without_asking_the_hub(
    tmp_path: Path, saved_tiny_model: Path, saved_adapter: Path, no_network: list[object]
) -> None:
    """PEFT asked the Hugging Face Hub for the weights a folder lacked; a folder named like a Hub repository
    could have loaded that repository's."""
    folder = tmp_path / "weightless"
    folder.mkdir()
    shutil.copy(saved_adapter / "adapter_config.json", folder)
    with pytest.raises(ModelError, match=r"has no weights \(adapter_model.safetensors or adapter_model.bin\)"):
        load_model(saved_tiny_model, adapter=folder, progress=False)
    assert no_network == []


def test_an_adapter_folder_without_weights_exits_2_from_the_cli(
    tmp_path: Path, saved_tiny_model: Path, saved_adapter: Path, capsys: pytest.CaptureFixture[str], no_network
) -> None:
    folder = tmp_path / "weightless"
    folder.mkdir()
    shutil.copy(saved_adapter / "adapter_config.json", folder)
    code, out, err = run(capsys, "run", "Hi", "--model", str(saved_tiny_model), "--adapter", str(folder), "-q")
    assert code == 2 and out == ""
    assert "has no weights" in err and "Traceback" not in err
    assert no_network == []


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"", "its header does not fit"),
        (b"garbage that is not a safetensors file at all", "its header does not fit"),
        (b"\x08\x00\x00\x00\x00\x00\x00\x00not json", "its header is not JSON"),
        (b"\x02\x00\x00\x00\x00\x00\x00\x00[]", "its header is not a JSON object"),
    ],
)
def test_garbage_adapter_weights_are_a_clear_error(
    content: bytes, why: str, tmp_path: Path, saved_tiny_model: Path, saved_adapter: Path
) -> None:
    folder = tmp_path / "garbage"
    shutil.copytree(saved_adapter, folder)
    (folder / "adapter_model.safetensors").write_bytes(content)
    with pytest.raises(ModelError, match=f"adapter_model.safetensors is not a safetensors file \\({why}"):
        load_model(saved_tiny_model, adapter=folder, progress=False)


def test_adapter_weights_cut_short_are_a_clear_error(
    tmp_path: Path, saved_tiny_model: Path, saved_adapter: Path
) -> None:
    folder = tmp_path / "cut"
    shutil.copytree(saved_adapter, folder)
    weights = folder / "adapter_model.safetensors"
    check_safetensors(weights)  # whole: no complaint
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(ModelError, match=r"is not a complete safetensors file: tensor .* cut short"):
        load_model(saved_tiny_model, adapter=folder, progress=False)


def test_a_damaged_pickled_adapter_is_a_clear_error(
    tmp_path: Path, saved_tiny_model: Path, saved_adapter: Path
) -> None:
    folder = tmp_path / "pickled"
    folder.mkdir()
    shutil.copy(saved_adapter / "adapter_config.json", folder)
    (folder / "adapter_model.bin").write_bytes(b"\x80\x04garbage")
    with pytest.raises(ModelError, match="cannot apply the adapter"):
        load_model(saved_tiny_model, adapter=folder, progress=False)


# --- GGUF files cut short ------------------------------------------------------------------------------------


def _write_gguf(path: Path) -> None:
    """A tiny llama GGUF: metadata, a small vocabulary, and two tensors."""
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_context_length(64)
    writer.add_embedding_length(16)
    writer.add_feed_forward_length(32)
    writer.add_head_count(2)
    writer.add_token_list([f"t{i}" for i in range(50)])
    writer.add_tensor("token_embd.weight", np.ones((50, 16), dtype=np.float32))
    writer.add_tensor("output_norm.weight", np.ones(16, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture
def tiny_gguf(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.gguf"
    _write_gguf(path)
    return path


def test_a_whole_gguf_passes_the_check(tiny_gguf: Path) -> None:
    check_gguf(tiny_gguf)


@pytest.mark.parametrize(
    ("cut", "where"),
    [
        (6, "it ends inside its header (it has 6 bytes)"),
        (30, "it ends inside metadata entry 1 of 7 (byte 24 of 30)"),
        (500, "it ends inside metadata entry 'tokenizer.ggml.tokens' (byte 304 of 500)"),
        (900, "it ends inside the info of tensor 'token_embd.weight' (byte 893 of 900)"),
        (-3250, "the data of tensor 'token_embd.weight' ends at byte 4,160, but the file has 974 bytes"),
        (-10, "the data of tensor 'output_norm.weight' ends at byte 4,224, but the file has 4,214 bytes"),
    ],
)
def test_a_gguf_cut_short_is_a_located_error(
    cut: int, where: str, tiny_gguf: Path, tmp_path: Path, model_cache: Path
) -> None:
    data = tiny_gguf.read_bytes()
    cut_file = tmp_path / "cut.gguf"
    cut_file.write_bytes(data[:cut])
    with pytest.raises(ModelError, match="is not a complete GGUF file") as caught:
        convert_gguf(cut_file, progress=False)
    assert str(cut_file) in str(caught.value) and where in str(caught.value)
    assert not (model_cache / "models").exists() or not any(p.is_dir() for p in (model_cache / "models").iterdir())


def test_the_default_gguf_cut_to_one_mib_is_a_located_error(tmp_path: Path, model_cache: Path) -> None:
    """The report's case: the default model's GGUF truncated to 1 MB raised ``struct.error``."""
    try:
        source = default_gguf()
    except ModelError as error:
        pytest.skip(str(error))
    cut = tmp_path / "smollm2-cut.gguf"
    with source.open("rb") as handle:
        cut.write_bytes(handle.read(2**20))
    with pytest.raises(ModelError, match=r"cut\.gguf is not a complete GGUF file: it ends inside .*byte"):
        load_model(cut, progress=False)


def test_a_gguf_with_a_bad_header_is_not_valid(tiny_gguf: Path, tmp_path: Path) -> None:
    data = bytearray(tiny_gguf.read_bytes())
    data[4:8] = (7).to_bytes(4, "little")  # version 7
    bad = tmp_path / "v7.gguf"
    bad.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="is not a valid GGUF file: GGUF version 7"):
        check_gguf(bad)
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    with pytest.raises(ModelError, match=r"it ends inside its header \(it has 0 bytes\)"):
        check_gguf(empty)


# --- the model cache, keyed by content -----------------------------------------------------------------------


def test_the_cache_folder_is_named_by_content_and_shared_by_copies(
    tiny_gguf: Path, tmp_path: Path, model_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two virtualenvs hold two copies of the same GGUF: one conversion serves both."""
    copy = tmp_path / "other-venv" / "site-packages" / "tiny.gguf"
    copy.parent.mkdir(parents=True)
    shutil.copy(tiny_gguf, copy)
    digest = hashlib.sha256(tiny_gguf.read_bytes()).hexdigest()
    assert gguf_digest(tiny_gguf) == gguf_digest(copy) == digest
    first = gguf_module._gguf_cache_folder(tiny_gguf)
    assert first.name == f"tiny-{digest[:16]}" and gguf_module._gguf_cache_folder(copy) == first
    first.mkdir(parents=True)
    (first / "config.json").write_text("{}")
    renamed = tmp_path / "renamed.gguf"
    shutil.copy(tiny_gguf, renamed)
    assert gguf_module._gguf_cache_folder(renamed) == first  # a converted copy under another name is reused
    changed = tmp_path / "changed.gguf"
    changed.write_bytes(tiny_gguf.read_bytes()[:-1] + b"\1")
    assert gguf_module._gguf_cache_folder(changed) != first


def test_the_digest_is_remembered_by_path_size_and_mtime(
    tiny_gguf: Path, model_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[object] = []
    real = hashlib.file_digest
    monkeypatch.setattr(hashlib, "file_digest", lambda *a, **k: reads.append(a) or real(*a, **k))
    first = gguf_digest(tiny_gguf)
    assert gguf_digest(tiny_gguf) == first and len(reads) == 1  # remembered: only a stat the second time
    record = json.loads((model_cache / "models" / "digests.json").read_text())
    assert record[str(tiny_gguf)]["sha256"] == first
    tiny_gguf.write_bytes(tiny_gguf.read_bytes() + b"\0" * 8)  # changed: hashed again
    assert gguf_digest(tiny_gguf) != first and len(reads) == 2


# --- token budgets -------------------------------------------------------------------------------------------


def test_context_length_reads_the_config() -> None:
    model = random_model("tiny-llama", vocab_size=len(tiny_tokenizer()))
    assert context_length(model.config) == model.config.max_position_embeddings
    assert context_length(type("C", (), {})()) is None


def test_a_budget_beyond_the_context_is_refused_before_anything_is_allocated(monkeypatch: pytest.MonkeyPatch) -> None:
    model = random_model("tiny-llama", vocab_size=len(tiny_tokenizer()))
    context = model.config.max_position_embeddings
    check_budget(model, prompt=10, budget=context - 10, forced=0, slots=context + 64)  # fits
    with pytest.raises(
        BudgetError, match=f"max_new_tokens=1,000,000,000 is more than the model's whole context of {context:,}"
    ):
        check_budget(model, prompt=10, budget=10**9, forced=0, slots=10**9 + 74)
    with pytest.raises(BudgetError, match=r"the prompt .* already fills the model's context"):
        check_budget(model, prompt=context, budget=1, forced=0, slots=context + 65)
    monkeypatch.setattr(budget_module, "available_memory", lambda device: 2**20)
    with pytest.raises(BudgetError, match=r"needs .* GiB for its cache, more than the 0.0 GiB available on cpu"):
        check_budget(model, prompt=10, budget=context - 10, forced=0, slots=context + 64)


def test_the_engine_checks_the_budget_before_it_allocates(monkeypatch: pytest.MonkeyPatch) -> None:
    engine = Engine(random_model("tiny-llama", vocab_size=len(tiny_tokenizer())), tiny_tokenizer())
    allocated: list[int] = []
    monkeypatch.setattr("pastac.runtime.engine.Runner", lambda model, capacity: allocated.append(capacity) or 1 / 0)
    with pytest.raises(BudgetError, match="more than the model's whole context"):
        engine.generate("Hi.", max_new_tokens=10**9)
    assert allocated == []


def test_a_huge_max_new_tokens_exits_2_from_the_cli(saved_tiny_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "run", "Hi", "--model", str(saved_tiny_model), "--max-new-tokens", "1000000000", "-q")
    assert code == 2 and out == ""
    assert "max_new_tokens=1,000,000,000 is more than the model's whole context" in err and "Traceback" not in err
