"""The tuned linear kernels: same products as ``F.linear``, used only inside the runners' forward passes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pastac.backend import linear
from pastac.backend.linear import KERNELS, ONE_ROW_ONLY, PACKERS, ROWS, check_kernels, kernels_active, tune_linears
from pastac.models import random_model, tiny_tokenizer
from pastac.runtime.engine import Engine
from pastac.runtime.options import RunOptions
from pastac.runtime.threads import Limits


def model(shape: str = "tiny-llama", seed: int = 1) -> torch.nn.Module:
    """A fresh model with the weights of ``tiny_engine(shape, seed)``'s, for kernels to be tuned on."""
    tokenizer = tiny_tokenizer()
    return random_model(shape, vocab_size=len(tokenizer), seed=seed, eos_token_id=tokenizer.eos_token_id)


@pytest.mark.parametrize("name", sorted(KERNELS))
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_each_kernel_computes_the_linear_product(name: str, bias: bool, dtype: torch.dtype) -> None:
    if name in PACKERS and not linear._packing(name, dtype, torch.device("cpu")):
        pytest.skip(f"{name} cannot pack {dtype} weights in this torch build")
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
    kernels = tune_linears(m, rounds=1, cache=tmp_path)
    assert tune_linears(m, cache=tmp_path) is kernels  # once per model
    linears = [mod for mod in m.modules() if type(mod) is torch.nn.Linear]
    assert sum(len(g.modules) for g in kernels.groups) == len(linears)
    for group in kernels.groups:
        assert set(group.choice) == set(ROWS)
        for rows, name in group.choice.items():
            assert name in KERNELS
            assert group.ms[rows][name] == min(group.ms[rows].values())  # the fastest of those timed
            assert rows == 1 or not ONE_ROW_ONLY & group.ms[rows].keys()
        packed = {name for name, i in kernels.packed if any(i == id(m) for m in group.modules)}
        assert packed == PACKERS.keys() & set(group.choice.values())  # only the copies a choice reads
    assert check_kernels(m) < 1e-4


def test_choices_are_cached_per_machine_and_shapes(tmp_path: Path) -> None:
    first = tune_linears(model(seed=1), rounds=1, cache=tmp_path)
    assert not first.cached and len(list(tmp_path.glob("linears-*.json"))) == 1
    second = tune_linears(model(seed=2), cache=tmp_path)  # same shapes: read back, not timed
    assert second.cached
    assert [g.choice for g in second.groups] == [g.choice for g in first.groups]
    other = tune_linears(model("tiny-qwen2"), rounds=1, cache=tmp_path)  # other shapes: timed, own file
    assert not other.cached and len(list(tmp_path.glob("linears-*.json"))) == 2


def test_the_choices_apply_only_inside_kernels_active(monkeypatch: pytest.MonkeyPatch) -> None:
    m = model()
    kernels = tune_linears(m, rounds=1)
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
    if not linear._packing("onednn-packed", torch.float32, torch.device("cpu")):
        pytest.skip("oneDNN weight packing is not available in this torch build")
    m = model()
    kernels = tune_linears(m, rounds=1)
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
