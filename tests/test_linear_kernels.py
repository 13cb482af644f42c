"""The tuned linear kernels: same products as ``F.linear``, used only inside the runners' forward passes.

Nothing here depends on what this CPU can do except through the probe: a kernel or dtype the CPU cannot run
is simulated by a kernel that raises as the library does, and the tests of each dtype accept a refusal where
the probe says the CPU cannot multiply it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pastac.backend import linear
from pastac.backend.linear import (
    KERNELS,
    ONE_ROW_ONLY,
    PACKERS,
    ROWS,
    Tuning,
    check_kernels,
    kernels_active,
    tune_linears,
)
from pastac.models import ModelError, load_model, random_model, tiny_tokenizer
from pastac.runtime.engine import Engine
from pastac.runtime.options import RunOptions
from pastac.runtime.threads import Limits

QUICK = Tuning(rounds=1)  # tests check what is chosen and installed, not how fast


@pytest.fixture(autouse=True)
def fresh_probes():
    """Forget what was probed: a test that simulates a CPU lacking a kernel must not leave its verdict behind."""
    linear.probe.cache_clear()
    linear.slowdown.cache_clear()
    yield
    linear.probe.cache_clear()
    linear.slowdown.cache_clear()


def failing(message: str) -> linear.Kernel:
    """A kernel that raises as a library does on a CPU without the instructions it needs."""

    def kernel(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, packed: torch.Tensor | None) -> torch.Tensor:
        raise RuntimeError(message)

    return kernel


def model(shape: str = "tiny-llama", seed: int = 1) -> torch.nn.Module:
    """A fresh model with the weights of ``tiny_engine(shape, seed)``'s, for kernels to be tuned on."""
    tokenizer = tiny_tokenizer()
    return random_model(shape, vocab_size=len(tokenizer), seed=seed, eos_token_id=tokenizer.eos_token_id)


@pytest.mark.parametrize("name", sorted(KERNELS))
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_each_kernel_computes_the_linear_product(name: str, bias: bool, dtype: torch.dtype) -> None:
    if linear.probe(name, dtype) is not None:
        pytest.skip(f"{name} cannot multiply {dtype} here: {linear.probe(name, dtype)}")
    g = torch.Generator().manual_seed(0)
    w = torch.randn(96, 40, generator=g).to(dtype)
    b = torch.randn(96, generator=g).to(dtype) if bias else None
    packed = PACKERS[name](w) if name in PACKERS else None
    for rows in [1] if name in ONE_ROW_ONLY else [1, 2, 3, 5, 16]:
        x = torch.randn(1, rows, 40, generator=g).to(dtype)
        got = KERNELS[name](x, w, b, packed)
        assert got.shape == (1, rows, 96) and got.dtype == dtype
        tolerance = 1e-5 if dtype == torch.float32 else 2e-2
        torch.testing.assert_close(got, F.linear(x, w, b), atol=tolerance, rtol=tolerance)
        # the layout F.linear gives, whatever the input's: the next layer's product takes the path it was timed on
        column_major = x.transpose(1, 2).contiguous().transpose(1, 2)
        again = KERNELS[name](column_major, w, b, packed)
        assert again.is_contiguous()
        torch.testing.assert_close(again, got, atol=tolerance, rtol=tolerance)


def test_tuning_picks_a_timed_kernel_per_shape_and_row_count(tmp_path: Path) -> None:
    m = model()
    kernels = tune_linears(m, tuning=QUICK, cache=tmp_path)
    assert tune_linears(m, cache=tmp_path) is kernels  # once per model
    linears = [mod for mod in m.modules() if type(mod) is torch.nn.Linear]
    assert sum(len(g.modules) for g in kernels.groups) == len(linears)
    for group in kernels.groups:
        assert set(group.choice) == set(ROWS)
        for rows, name in group.choice.items():
            assert name in KERNELS and linear.probe(name, torch.float32) is None
            assert group.ms[rows][name] == min(group.ms[rows].values())  # the fastest of those timed
            assert rows == 1 or not ONE_ROW_ONLY & group.ms[rows].keys()
        packed = {name for name, i in kernels.packed if any(i == id(m) for m in group.modules)}
        assert packed == PACKERS.keys() & set(group.choice.values())  # only the copies a choice reads
    assert check_kernels(m) < 1e-4


def test_choices_are_cached_per_machine_and_shapes(tmp_path: Path) -> None:
    first = tune_linears(model(seed=1), tuning=QUICK, cache=tmp_path)
    assert not first.cached and len(list(tmp_path.glob("linears-*.json"))) == 1
    second = tune_linears(model(seed=2), tuning=QUICK, cache=tmp_path)  # same shapes: read back, not timed
    assert second.cached
    assert [g.choice for g in second.groups] == [g.choice for g in first.groups]
    other = tune_linears(model("tiny-qwen2"), tuning=QUICK, cache=tmp_path)  # other shapes: timed, own file
    assert not other.cached and len(list(tmp_path.glob("linears-*.json"))) == 2


def test_the_choices_apply_only_inside_kernels_active(monkeypatch: pytest.MonkeyPatch) -> None:
    m = model()
    kernels = tune_linears(m, tuning=QUICK)
    calls: list[int] = []

    def spy(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, packed: torch.Tensor | None) -> torch.Tensor:
        calls.append(x.shape[-2])
        return F.linear(x, w, b)

    for group in kernels.groups:
        group.choice = dict.fromkeys(ROWS, "weight-left")
        kernels._install(group)
    monkeypatch.setitem(KERNELS, "weight-left", spy)
    layer = next(mod for mod in m.modules() if type(mod) is torch.nn.Linear)
    x = torch.randn(1, 3, layer.in_features)
    layer(x)
    assert calls == []  # outside: plain F.linear (training, HF generate)
    with kernels_active(m):
        layer(x)
        layer(torch.randn(1, max(ROWS) + 1, layer.in_features))  # more rows than tuned: plain
    assert calls == [3]


def test_a_tuned_engine_decodes_what_a_stock_one_does(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_engine: Callable[..., Engine]
) -> None:
    monkeypatch.setenv("PASTAC_CACHE", str(tmp_path))
    stock = tiny_engine("tiny-llama", 1)
    # the same weights in a model of its own: tuning installs the chosen kernels on the model it tunes
    tuned = Engine(model("tiny-llama", 1), stock.tokenizer, kernels="tuned")
    doc = 'Tips: <promise topic="a" tokens="1"/><async>one two</async><promise topic="b"/><async>three</async><sync/> x'
    a = stock.generate("Hi.", replay=doc, keep_logits=True)
    b = tuned.generate("Hi.", replay=doc, keep_logits=True)
    assert a.annotated == b.annotated
    assert stock.last_run is not None and tuned.last_run is not None
    for x, y in zip(stock.last_run.runner.logits, tuned.last_run.runner.logits, strict=True):
        torch.testing.assert_close(x, y, atol=1e-4, rtol=0)
    assert list((tmp_path / "kernels").glob("linears-*.json"))
    options = RunOptions(limits=Limits(max_thread_tokens=12, max_new_tokens=4096))
    assert stock.generate("Hello", options).text == tuned.generate("Hello", options).text


def test_an_unknown_kernel_choice_is_refused() -> None:
    with pytest.raises(ValueError, match="kernels must be one of tuned, stock"):
        Engine(model(), tiny_tokenizer(), kernels="fast")


def test_a_weight_changed_after_packing_is_not_read_from_the_stale_copy() -> None:
    if linear.probe("onednn-packed", torch.float32) is not None:
        pytest.skip("oneDNN weight packing is not available in this torch build")
    m = model()
    kernels = tune_linears(m, tuning=QUICK)
    group = kernels.groups[0]
    group.choice = dict.fromkeys(ROWS, "onednn-packed")
    kernels._pack(group, "onednn-packed")
    kernels._install(group)
    layer = group.modules[0]
    x = torch.randn(1, 1, layer.in_features)
    with torch.no_grad():
        layer.weight.mul_(2)
    with kernels_active(m), torch.inference_mode():
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias))


# --- probing: what this CPU cannot run is never offered ----------------------------------------------------


def test_a_kernel_this_cpu_cannot_run_is_skipped_not_a_crash(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """oneDNN's bfloat16 path raised on an AVX2-only CPU and crashed the run: every candidate is probed."""
    monkeypatch.setitem(KERNELS, "weight-left", failing("bf16 path needs the cpu support avx_ne_convert"))
    assert linear.probe("weight-left", torch.float32) == "RuntimeError: bf16 path needs the cpu support avx_ne_convert"
    assert "weight-left" not in linear.candidates(torch.float32, torch.device("cpu"))
    assert linear.probe("linear", torch.float32) is None  # remembered per kernel and dtype
    messages: list[str] = []
    m = model()
    kernels = tune_linears(m, tuning=QUICK, cache=tmp_path, progress=messages.append)
    assert "weight-left" in kernels.skipped
    assert all("weight-left" not in group.choice.values() for group in kernels.groups)
    assert all("weight-left" not in ms for group in kernels.groups for ms in group.ms.values())
    assert any("skipping weight-left" in m and "avx_ne_convert" in m for m in messages)
    assert check_kernels(m) < 1e-4


def test_a_kernel_that_raises_on_a_real_shape_is_dropped_from_the_race(monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel can pass the probe's small weight and still raise on the model's: it is dropped, remembered,
    and not tried on the next shapes."""
    calls: list[tuple[int, int]] = []
    real = KERNELS["weight-left"]

    def big_only(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, p: torch.Tensor | None) -> torch.Tensor:
        calls.append(tuple(w.shape))
        if w.shape[1] >= 64:
            raise RuntimeError("unsupported shape")
        return real(x, w, b, p)

    monkeypatch.setitem(KERNELS, "weight-left", big_only)
    kernels = tune_linears(model(), tuning=QUICK)
    assert kernels.skipped == {"weight-left": "RuntimeError: unsupported shape"}
    assert all("weight-left" not in group.choice.values() for group in kernels.groups)
    assert sum(1 for shape in calls if shape[1] >= 64) == 1  # raised once, then never raced again


def test_no_kernel_runs_a_dtype_then_it_is_refused_before_anything_loads(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in KERNELS:
        monkeypatch.setitem(KERNELS, name, failing(f"{name}: no bf16 instructions"))
    why = linear.dtype_refusal(torch.bfloat16, torch.device("cpu"))
    assert why is not None and "cannot multiply bfloat16 matrices" in why and "use float32" in why
    assert linear.dtype_refusal(torch.float32, torch.device("cpu")) is None  # float32 is never refused
    with pytest.raises(ModelError, match="cannot multiply bfloat16 matrices"):
        load_model(tmp_path / "not-even-there", dtype="bfloat16", progress=False)  # refused before the path


def test_a_slow_dtype_is_not_refused_but_tuning_says_how_slow(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """How much slower a dtype measures depends on the machine's load (5x or 50x on the same CPU): a verdict
    that flipped with it would make the same command work or fail by chance."""
    monkeypatch.setattr(linear, "slowdown", lambda dtype: 60.0)
    assert linear.dtype_refusal(torch.float16, torch.device("cpu")) is None
    messages: list[str] = []
    if linear.candidates(torch.float16, torch.device("cpu")):
        tune_linears(model().to(torch.float16), tuning=QUICK, cache=tmp_path, progress=messages.append)
        assert any("float16 products take 60.0x the time of float32 ones here" in m for m in messages)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_each_dtype_tunes_and_decodes_or_is_refused_with_a_reason(
    dtype: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_engine: Callable[..., Engine]
) -> None:
    """On any CPU: the half dtypes tune (skipping what the probe rejects) and decode, or the probe says why not."""
    monkeypatch.setenv("PASTAC_CACHE", str(tmp_path))
    torch_dtype = getattr(torch, dtype)
    if (why := linear.dtype_refusal(torch_dtype, torch.device("cpu"))) is not None:
        assert "use float32" in why
        return
    m = model().to(torch_dtype)
    kernels = tune_linears(m, tuning=QUICK, cache=tmp_path)
    for group in kernels.groups:
        assert all(linear.probe(name, torch_dtype) is None for name in group.choice.values())
    assert set(kernels.skipped) == {n for n in KERNELS if linear.probe(n, torch_dtype) is not None}
    engine = Engine(m, tiny_engine().tokenizer, kernels="tuned")
    result = engine.generate("Hi.", max_new_tokens=8, max_thread_tokens=8)
    assert result.stats.tokens > 0


# --- the race, its progress, its cache key ---------------------------------------------------------------


def test_a_clearly_slower_kernel_races_no_more_after_the_warm_up() -> None:
    runs: list[str] = []

    def run(name: str) -> None:
        runs.append(name)
        if name == "slow":
            time.sleep(0.03)

    times = linear._race(run, ["fast", "slow"], Tuning(rounds=3), {})
    assert runs.count("fast") == 4 and runs.count("slow") == 1  # one warm-up, then out
    assert times["slow"] > times["fast"]  # its warm-up time is kept: how far behind it was
    failed: dict[str, str] = {}

    def broken(name: str) -> None:
        if name == "bad":
            raise RuntimeError("no such instructions\nmore detail")

    assert set(linear._race(broken, ["good", "bad"], Tuning(rounds=2), failed)) == {"good"}
    assert failed == {"bad": "RuntimeError: no such instructions"}


def test_tuning_says_what_it_does_shape_by_shape(tmp_path: Path) -> None:
    messages: list[str] = []
    kernels = tune_linears(model(), tuning=QUICK, cache=tmp_path, progress=messages.append)
    n = len(kernels.groups)
    assert (
        messages[0].startswith("tuning the linear layers' kernels for float32") and f"{n} weight shapes" in messages[0]
    )
    shapes = [m for m in messages if m.lstrip().startswith("[")]
    assert [m.split("]")[0].strip() for m in shapes] == [f"[{i}/{n}" for i in range(1, n + 1)]
    assert all(group.key in line for group, line in zip(kernels.groups, shapes, strict=True))
    assert messages[-1].startswith("tuned in") and str(tmp_path) in messages[-1]
    again: list[str] = []
    tune_linears(model(seed=2), cache=tmp_path, tuning=QUICK, progress=again.append)
    assert again == []  # read from the cache: nothing to say


def test_the_cache_is_keyed_by_the_cpu_and_not_by_the_thread_count(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        first = tune_linears(model(seed=1), tuning=QUICK, cache=tmp_path)
        torch.set_num_threads(2)
        assert tune_linears(model(seed=2), tuning=QUICK, cache=tmp_path).cached  # another thread count: same file
    finally:
        torch.set_num_threads(threads)
    assert not first.cached and len(list(tmp_path.glob("linears-*.json"))) == 1
    monkeypatch.setattr(linear, "cpu_flags", lambda: frozenset({"avx2", "avx512f", "avx512_bf16"}))
    assert not tune_linears(model(seed=3), tuning=QUICK, cache=tmp_path).cached  # other instructions: tuned again
    monkeypatch.setattr(linear, "cpu_capability", lambda: "AVX512")
    assert not tune_linears(model(seed=4), tuning=QUICK, cache=tmp_path).cached
    assert len(list(tmp_path.glob("linears-*.json"))) == 3
    key = linear.cache_key(next(model().parameters()), linear._groups(model()), QUICK)
    assert {"cpu", "cpu_flags", "cpu_capability", "torch", "dtype", "shapes"} <= set(key)


def test_a_far_slower_costly_kernel_is_not_raced_at_more_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    """float16 by a transposed weight took a second a turn at one row and fifteen at sixteen on an AVX2 CPU:
    what is far behind and costly at one row count is not raced at the shape's larger ones."""
    rows_seen: list[int] = []
    real = KERNELS["transposed"]

    def slow(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, p: torch.Tensor | None) -> torch.Tensor:
        if tuple(w.shape) != linear._PROBE_SHAPE:  # the probe's small weight is multiplied by 1 and 3 rows
            rows_seen.append(x.numel() // x.shape[-1])
            time.sleep(0.003)
        return real(x, w, b, p)

    monkeypatch.setitem(KERNELS, "transposed", slow)
    kernels = tune_linears(model(), tuning=Tuning(rounds=1, costly_ms=1.0))
    assert rows_seen and set(rows_seen) == {1}  # raced at one row, then left alone on each shape
    assert all("transposed" not in group.choice.values() for group in kernels.groups)
    assert "transposed" not in kernels.skipped  # slow, not broken: a faster shape could still choose it


def test_a_race_past_its_deadline_starts_no_more_rounds() -> None:
    runs: list[str] = []
    times = linear._race(runs.append, ["a", "b"], Tuning(rounds=5), {}, deadline=time.perf_counter())
    assert runs == ["a", "b"] and set(times) == {"a", "b"}  # the warm-up, whose times count
    runs.clear()
    linear._race(runs.append, ["a", "b"], Tuning(rounds=5, warm_drop=1e9, drop=1e9), {}, deadline=None)
    assert len(runs) == 12


def test_tuning_keeps_to_its_time_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """A busy machine slows every turn: the rounds, not the time, give way."""
    real = KERNELS["linear"]

    def busy(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, p: torch.Tensor | None) -> torch.Tensor:
        time.sleep(0.002)
        return real(x, w, b, p)

    for name in ("linear", "weight-left"):
        monkeypatch.setitem(KERNELS, name, busy)
    m = model()
    linear.candidates(torch.float32, torch.device("cpu"))  # the probes, done before the clock starts
    tuning = Tuning(rounds=200, drop=1e9, warm_drop=1e9, budget_s=1.0)
    start = time.perf_counter()
    tune_linears(m, tuning=tuning)
    assert time.perf_counter() - start < 8.0  # 200 rounds would take about a minute


def test_the_cli_shows_tuning_shape_by_shape_on_stderr_and_q_keeps_it_quiet(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from test_cli import run

    folder = tmp_path / "tiny"
    tokenizer = tiny_tokenizer()
    random_model("tiny-llama", vocab_size=len(tokenizer), seed=3).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    monkeypatch.setenv("PASTAC_CACHE", str(tmp_path / "loud"))
    code, out, err = run(capsys, "run", "Hi", "--model", str(folder), "--max-new-tokens", "3", "--no-adapter")
    assert code == 0, err
    assert "tuning the linear layers' kernels for float32" in err and "[1/" in err and "tuned in" in err
    assert "tuning" not in out
    monkeypatch.setenv("PASTAC_CACHE", str(tmp_path / "quiet"))  # an empty cache: tuned again, silently
    code, out, err = run(capsys, "run", "Hi", "--model", str(folder), "--max-new-tokens", "3", "--no-adapter", "-q")
    assert code == 0 and "tuning" not in err and list((tmp_path / "quiet" / "kernels").glob("linears-*.json"))
