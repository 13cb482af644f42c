"""``pastac bench``'s optional ``llamacpp`` strategy: sizing, decoding contract, report and CLI refusals run on a
stand-in for ``llama_cpp.Llama``; one test runs llama.cpp itself on the default GGUF (skipped without
llama-cpp-python, which CI does not install)."""

from __future__ import annotations

import io
import json
import re
import sys
import types
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from rich.console import Console
from test_cli import run

from pastac.bench import KNOWN_STRATEGIES, STRATEGIES
from pastac.bench.llamacpp import (
    INSTALL,
    LlamaCpp,
    LlamaCppError,
    available,
    kv_bytes_per_token,
    quantisation,
)
from pastac.bench.report import print_report
from pastac.bench.run import BenchOptions, run_bench
from pastac.bench.strategies import Bench
from pastac.bench.suite import Response
from pastac.runtime.engine import Engine

# SmolLM2-135M's shape as its GGUF states it (llama.cpp gives every value as text)
SMOLLM2 = {
    "general.architecture": "llama",
    "general.file_type": "3",
    "llama.block_count": "30",
    "llama.embedding_length": "576",
    "llama.attention.head_count": "9",
    "llama.attention.head_count_kv": "3",
}
FORKED = Response(
    "tips",
    "list",
    "Give me tips.",
    'Tips: <promise topic="sleep" tokens="10"/><async>Sleep well at night.</async>'
    '<promise topic="food" tokens="10"/><async>Eat greens and beans daily.</async><sync/> Done.',
)
PLAIN = Response("plain", "none", "What is the capital of France?", "The capital of France is Paris.")
SMALL = BenchOptions(
    strategies=("sequential", "llamacpp", "pasta"),
    repeats=2,
    threads=(1, 2),
    contexts=(16,),
    calibration_repeats=1,
    warmup=False,
)


class FakeLlama:
    """Stands in for ``llama_cpp.Llama``: records what it is asked, and 'decodes' the next token as a function of
    the tokens evaluated so far, so that a wrong order or a missing reset shows in the tokens."""

    def __init__(self, vocab: int, context: int = 4096, metadata: dict[str, str] | None = None) -> None:
        self.vocab, self.context = vocab, context
        self.metadata = dict(SMOLLM2 if metadata is None else metadata)
        self.evaluated: list[int] = []
        self.calls: list[tuple[str, object]] = []

    def reset(self) -> None:
        self.calls.append(("reset", None))
        self.evaluated = []

    def eval(self, tokens: Sequence[int]) -> None:
        self.calls.append(("eval", list(tokens)))
        self.evaluated += tokens

    def sample(self, *, temp: float, repeat_penalty: float) -> int:
        self.calls.append(("sample", (temp, repeat_penalty)))
        return (sum(self.evaluated) + len(self.evaluated)) % self.vocab

    def n_ctx(self) -> int:
        return self.context

    def n_vocab(self) -> int:
        return self.vocab


def _vocab(engine: Engine) -> int:
    return engine.model.get_input_embeddings().num_embeddings


@pytest.fixture(scope="module")
def engine(tiny_engine: Callable[..., Engine]) -> Engine:
    return tiny_engine("tiny-llama", 2)


def test_decode_starts_from_an_empty_cache_and_places_exactly_n_tokens_greedily():
    llm = FakeLlama(vocab=100)
    llama = LlamaCpp(llm, file="m.gguf", version="0.0", threads=1)
    first = llama.decode([5, 6, 7], 4)
    assert len(first) == 4
    # the prompt's forward pass, then one pass per placed token but the last, each the token just sampled
    evals = [args for name, args in llm.calls if name == "eval"]
    assert evals == [[5, 6, 7], *([t] for t in first[:-1])]
    assert llm.calls[0] == ("reset", None)
    assert {args for name, args in llm.calls if name == "sample"} == {(0.0, 1.0)}  # greedy, no penalty
    assert sum(name == "sample" for name, _ in llm.calls) == 4
    assert llama.decode([5, 6, 7], 4) == first  # a second response sees nothing of the first
    assert llama.decode([5, 6, 7], 1) == first[:1]  # one token: the prompt's pass alone
    assert llama.kv_bytes(3, 4) == 23040 * 6  # every token but the last evaluated


def test_decode_refuses_what_does_not_fit_the_context():
    llama = LlamaCpp(FakeLlama(vocab=100, context=8), file="m.gguf", version="0.0", threads=1)
    assert len(llama.decode([1, 2, 3], 5)) == 5
    too_long = "3 prompt tokens and 6 new ones do not fit llama.cpp's context of 8"
    with pytest.raises(LlamaCppError, match=re.escape(too_long)):
        llama.decode([1, 2, 3], 6)
    with pytest.raises(ValueError, match="at least one token"):
        llama.decode([1, 2, 3], 0)


def test_quantisation_and_cache_size_come_from_the_gguf_metadata():
    assert quantisation(SMOLLM2) == "Q4_1"
    assert quantisation({**SMOLLM2, "general.file_type": "1"}) == "F16"
    assert quantisation({}) == "unknown" and quantisation({"general.file_type": "x"}) == "unknown"
    # 30 layers x 3 key-value heads x (64 + 64) head dims x 2 bytes (f16)
    assert kv_bytes_per_token(SMOLLM2) == 30 * 3 * 128 * 2
    assert kv_bytes_per_token({**SMOLLM2, "llama.attention.key_length": "32"}) == 30 * 3 * (32 + 64) * 2
    assert kv_bytes_per_token({k: v for k, v in SMOLLM2.items() if k != "llama.block_count"}) == 0  # not stated
    llama = LlamaCpp(FakeLlama(vocab=10, context=512), file="m.gguf", version="9.9", threads=3)
    assert llama.describe() == {
        "llama_cpp_python": "9.9",
        "gguf": "m.gguf",
        "quantisation": "Q4_1",
        "threads": 3,
        "n_ctx": 512,
        "n_batch": 512,
        "kv_cache": "f16",
    }


def test_llamacpp_is_optional_and_not_in_the_default_list():
    assert "llamacpp" not in STRATEGIES and "llamacpp" in KNOWN_STRATEGIES
    assert "llamacpp" not in BenchOptions().strategies
    assert BenchOptions(strategies=("llamacpp",)).strategies == ("llamacpp",)
    with pytest.raises(ValueError, match=r"choose from .*llamacpp"):
        BenchOptions(strategies=("llama",))


def test_llamacpp_decodes_the_engines_prompt_ids_as_many_tokens_as_sequential_places(engine: Engine):
    llm = FakeLlama(vocab=_vocab(engine))
    bench = Bench(engine, LlamaCpp(llm, file="m.gguf", version="0.0", threads=1))
    measured = bench.run("llamacpp", FORKED.prompt, FORKED.text)  # before sequential: sized by a run of its own
    sequential = bench.run("sequential", FORKED.prompt, FORKED.text)
    ids = engine.prompt_ids(FORKED.prompt)
    assert measured.strategy == "llamacpp" and measured.tokens == measured.steps == sequential.tokens
    assert llm.calls[1] == ("eval", ids)  # the very ids pastac prefills, not llama.cpp's tokenization
    assert measured.kv_bytes == measured.kv_peak_bytes == 23040 * (len(ids) + sequential.tokens - 1)
    assert measured.peak_memory_bytes is None and measured.generation is None and measured.wall_s > 0
    assert bench.run("hf-generate", FORKED.prompt, FORKED.text).tokens == measured.tokens
    with pytest.raises(ValueError, match=re.escape("llamacpp strategy needs a llama.cpp model")):
        Bench(engine).run("llamacpp", PLAIN.prompt, PLAIN.text)


def test_a_gguf_of_another_vocabulary_is_refused(engine: Engine):
    other = LlamaCpp(FakeLlama(vocab=_vocab(engine) + 1), file="other.gguf", version="0.0", threads=1)
    with pytest.raises(LlamaCppError, match=r"other\.gguf has \d+ tokens in its vocabulary and the engine's model"):
        Bench(engine, other)
    with pytest.raises(LlamaCppError, match="vocabulary"):  # before the calibration
        run_bench(engine, [PLAIN], SMALL, llamacpp=other)
    with pytest.raises(ValueError, match="llamacpp strategy needs its model"):
        run_bench(engine, [PLAIN], SMALL)


def test_the_report_gives_llamacpp_its_column_and_every_strategy_its_ratio_to_it(engine: Engine):
    llama = LlamaCpp(FakeLlama(vocab=_vocab(engine)), file="m.Q4_1.gguf", version="0.3.x", threads=1)
    report = run_bench(engine, [FORKED, PLAIN], SMALL, llamacpp=llama)
    json.dumps(report)  # JSON-able as it is
    assert report["machine"]["llamacpp"]["gguf"] == "m.Q4_1.gguf"
    assert report["machine"]["llamacpp"]["quantisation"] == "Q4_1"
    assert report["machine"]["llamacpp"]["llama_cpp_python"] == "0.3.x"
    summary = report["summary"]
    for r in report["results"]:
        strategies = r["strategies"]
        assert strategies["llamacpp"]["tokens"] == strategies["sequential"]["tokens"] == strategies["pasta"]["tokens"]
        assert len(strategies["llamacpp"]["runs_s"]) == 2
        paired = [
            llama_s / seq_s
            for seq_s, llama_s in zip(strategies["sequential"]["runs_s"], strategies["llamacpp"]["runs_s"], strict=True)
        ]
        assert r["speedup"]["sequential_vs_llamacpp"] == pytest.approx(sum(paired) / 2)
    tps = summary["tokens_per_s"]
    assert summary["tokens_per_s_vs_llamacpp"] == pytest.approx(
        {"sequential": tps["sequential"] / tps["llamacpp"], "llamacpp": 1.0, "pasta": tps["pasta"] / tps["llamacpp"]}
    )
    assert {"sequential_vs_llamacpp", "pasta_vs_llamacpp"} <= set(summary["speedup"])
    text = io.StringIO()
    print_report(report, Console(file=text, width=250, color_system=None))
    printed = text.getvalue()
    assert "llamacpp s" in printed and "tokens/s vs llamacpp" in printed
    assert "sequential_vs_llamacpp" in printed and "pasta_vs_llamacpp" in printed
    assert "llama-cpp-python 0.3.x, m.Q4_1.gguf, Q4_1, 1 threads" in printed


def test_a_report_without_llamacpp_has_none_of_its_figures(engine: Engine):
    options = BenchOptions(strategies=("sequential", "pasta"), repeats=1, threads=(1,), contexts=(16,), warmup=False)
    unused = LlamaCpp(FakeLlama(vocab=3), file="x", version="0", threads=1)
    report = run_bench(engine, [PLAIN], options, llamacpp=unused)
    assert "llamacpp" not in report["machine"] and "tokens_per_s_vs_llamacpp" not in report["summary"]
    text = io.StringIO()
    print_report(report, Console(file=text, width=250, color_system=None))
    assert "llamacpp" not in text.getvalue()


def test_cli_asking_for_llamacpp_without_llama_cpp_python_is_a_usage_error(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import llama_cpp raises ImportError, installed or not
    code, out, err = run(capsys, "bench", "--ids", "no-such-response", "--strategies", "llamacpp")
    assert code == 2 and "no-such-response" in err  # the suite's refusals come first, as before
    code, out, err = run(capsys, "bench", "--quick", "--strategies", "sequential,llamacpp", "-q")
    assert code == 2 and out == ""
    assert "the llamacpp strategy needs llama-cpp-python, which is not installed" in err and INSTALL in err


def test_cli_llamacpp_needs_a_gguf_file(capsys, monkeypatch, tmp_path: Path):
    monkeypatch.setitem(sys.modules, "llama_cpp", types.ModuleType("llama_cpp"))  # importable; nothing is loaded
    code, _, err = run(capsys, "bench", "--quick", "--shape", "tiny-llama", "--strategies", "llamacpp", "-q")
    assert code == 2 and "--shape's random weights have none" in err
    code, _, err = run(capsys, "bench", "--quick", "--model", str(tmp_path), "--strategies", "pasta,llamacpp", "-q")
    assert code == 2 and f"--model {tmp_path} is not one; name a .gguf file" in err


# --- llama.cpp itself ----------------------------------------------------------------------------------------


@pytest.mark.skipif(not available(), reason="llama-cpp-python is not installed (pastac[llamacpp]; not in CI)")
def test_llama_cpp_decodes_the_default_gguf_from_pastacs_prompt_ids():
    import llama_cpp
    import numpy as np
    import torch

    from pastac.bench.llamacpp import load
    from pastac.models import default_gguf

    gguf = default_gguf()
    llama = load(gguf, threads=1)
    engine = Engine.from_pretrained(None, adapter=None, kernels="stock", progress=False)
    assert llama.describe()["gguf"] == gguf.name and llama.quantisation == "Q4_1"
    assert llama.version == llama_cpp.__version__
    assert llama.kv_bytes_per_token == 30 * 3 * 128 * 2
    # the GGUF's tokenizer is the model's: pastac's prompt ids (chat template and all) round-trip through it
    ids = engine.prompt_ids(PLAIN.prompt)
    text = engine.tokenizer.decode(ids)
    assert llama.llm.tokenize(text.encode(), add_bos=False, special=True) == ids  # type: ignore[attr-defined]
    bench = Bench(engine, llama)
    measured = bench.run("llamacpp", PLAIN.prompt, PLAIN.text)
    assert measured.tokens == bench.placed(PLAIN.prompt, PLAIN.text) and measured.wall_s > 0
    # the same model: after the prompt, llama.cpp's last logits (Q4_1 arithmetic) track pastac's (a float32 copy
    # of the same weights) closely, though a near-tie may go the other way (here "L" against "The")
    llama.decode(ids, 1)
    last = llama_cpp.llama_get_logits_ith(llama.llm.ctx, -1)  # type: ignore[attr-defined]
    theirs = np.ctypeslib.as_array(last, shape=(_vocab(engine),))
    with torch.inference_mode():
        ours = engine.model(torch.tensor([ids])).logits[0, -1].numpy()
    assert np.corrcoef(theirs, ours)[0, 1] > 0.99
    assert set(np.argsort(-theirs)[:5]) == set(np.argsort(-ours)[:5])
