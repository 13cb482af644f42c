"""``pastac bench serve``: a load benchmark of the OpenAI API, at several levels of concurrency.

    report = asyncio.run(run_load(url, model, prompts, LoadOptions(concurrency=(1, 2, 4, 8), requests=16)))

For each level ``c`` (level 1 first: it is the reference), ``requests``
requests run greedily (temperature 0) with ``c`` clients in flight at once,
each a stream (``"pasta": {"progress": true}``: a chunk after every decode
step of the request).  Per request it times:

- the time to first token: from sending the request to the first chunk that
  shows the answer begun, one with text or with ``pasta.tokens`` > 0 (the
  request's first step, which samples its first token, usually);
- inter-token latencies: the gaps between its consecutive step chunks from
  that one on (a step may place several tokens of a request, one per running
  thread: the latency is per step);
- its completion tokens, from the stream's usage chunk.

Per level: wall time, tokens/s (the completion tokens of the level over its
wall time), requests/s, the time to first token and the inter-token latency
(p50 and p99), mean tokens per request, and how many answers differ from the
answer to the same prompt at level 1 (greedy decoding must not depend on what
else is decoded beside it).  The targets, as ratios of the same run:
tokens/s at the highest level over level 1 (``TARGET_THROUGHPUT``), p99
inter-token latency at the highest level over level 1 (``TARGET_ITL``), and no
answer lost or mixed up.  The figures are reported, never asserted.

The server is ``--url``, or one started in this process on 127.0.0.1 (a
``BatchEngine`` behind ``create_app`` on a ``ServerThread``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import itertools
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from pastac.cli.common import EXIT_ERRORS, EXIT_OK, UsageError, number, positive
from pastac.cli.options import (
    adapter_options,
    force_option,
    kernel_options,
    load_engine,
    model_options,
    torch_threads_option,
)
from pastac.serve.command import max_rows_option

#: the targets: tokens/s at the highest level at least this many times level 1's ...
TARGET_THROUGHPUT = 3.0
#: ... and p99 inter-token latency at the highest level at most this many times level 1's
TARGET_ITL = 2.5
MAX_LEVEL = 512  # clients in flight at once
MAX_REQUESTS = 10_000  # requests per level
REPORT = "report.json"
REPORT_FILES = (REPORT, "report.md")
KIND = "pastac bench serve"

#: the prompts when no ``--prompts`` is given: lists (which fork) and plain questions
PROMPTS = (
    "Give me five tips for better sleep.",
    "List four benefits of exercise.",
    "Name three rivers in Europe and one fact about each.",
    "What are three ways to save money on groceries?",
    "Give me four ideas for a rainy weekend.",
    "List five fruits that are high in vitamin C.",
    "Name three famous painters and one work by each.",
    "Suggest four ways to learn a new language faster.",
    "What are the three states of water?",
    "Give me three reasons to keep a journal.",
    "List four things to pack for a day hike.",
    "Name three planets and one feature of each.",
    "Why is the sky blue?",
    "What is the capital of Japan?",
    "How does a bicycle stay upright?",
    "Explain in two sentences what a prime number is.",
)


# -- options -------------------------------------------------------------------------------------------------


def concurrency_levels(text: str) -> tuple[int, ...]:
    """An argparse type: comma-separated concurrency levels, each in 1..``MAX_LEVEL`` (sorted, without
    repeats)."""
    levels = set()
    for part in text.split(","):
        part = part.strip()
        try:
            level = int(part)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from None
        if not 1 <= level <= MAX_LEVEL:
            raise argparse.ArgumentTypeError(f"a level must be in 1..{MAX_LEVEL}, not {level}")
        levels.add(level)
    return tuple(sorted(levels))


def _requests(text: str) -> int:
    value = positive(text)
    if value > MAX_REQUESTS:
        raise argparse.ArgumentTypeError(f"must be <= {MAX_REQUESTS}, not {value}")
    return value


class PromptsError(ValueError):
    """A prompts file that cannot be read or holds no prompt; the message names it and the line."""


def load_prompts(path: str | Path) -> list[str]:
    """The prompts of ``path``: one a line, or JSON lines with ``"prompt"`` (a line that starts with ``{``);
    blank lines are skipped.  Raises ``PromptsError``."""
    from pastac.files import InputFileError, read_text

    try:
        text = read_text(path)
    except InputFileError as error:
        raise PromptsError(str(error)) from None
    prompts = []
    for number_, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        if line.startswith("{"):
            try:
                prompt = json.loads(line).get("prompt")
            except (ValueError, AttributeError):
                raise PromptsError(f"{path}:{number_}: not a JSON object") from None
            if not isinstance(prompt, str) or not prompt.strip():
                raise PromptsError(f'{path}:{number_}: no "prompt" string')
            line = prompt
        prompts.append(line)
    if not prompts:
        raise PromptsError(f"{path}: no prompt in it")
    return prompts


@dataclass(frozen=True)
class LoadOptions:
    """What the benchmark runs: the levels (1 is added: it is the reference), requests per level, each
    request's token budget, the API (chat or completions), and the bound in seconds on the whole run and on
    each request."""

    concurrency: tuple[int, ...] = (1, 2, 4, 8)
    requests: int = 16
    max_tokens: int = 128
    chat: bool = True
    mode: str = "async"  # the pasta mode every request asks for: async, or sequential (one thread)
    timeout: float = 1800.0
    warmup: bool = True
    api_key: str | None = None

    def __post_init__(self) -> None:
        if not self.concurrency or any(c < 1 for c in self.concurrency):
            raise ValueError("concurrency levels must be >= 1")
        if self.requests < 1 or self.max_tokens < 1 or not self.timeout > 0:
            raise ValueError("requests and max_tokens must be >= 1, timeout > 0")
        object.__setattr__(self, "concurrency", tuple(sorted({1, *self.concurrency})))


# -- one request ---------------------------------------------------------------------------------------------


@dataclass
class Sample:
    """One request's figures."""

    prompt: int  # index into the prompts
    answer: str = ""
    ttft: float | None = None  # seconds to the first token
    itl: list[float] = field(default_factory=list)  # seconds between consecutive steps
    tokens: int = 0  # completion tokens
    seconds: float = 0.0  # sent to the stream's end
    error: str | None = None


def _body(model: str, prompt: str, options: LoadOptions) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": options.max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "pasta": {"progress": True, "mode": options.mode},
    }
    if options.chat:
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    return body


async def _stream(client: Any, url: str, body: dict[str, Any], sample: Sample) -> None:
    """Send one request and read its stream into ``sample``."""
    began = time.perf_counter()
    steps: list[float] = []  # when each step chunk came
    texts: list[float] = []  # when each chunk with text came
    parts: list[str] = []
    progress_tokens = 0
    async with client.stream("POST", url, json=body) as response:
        if response.status_code != 200:
            text = (await response.aread()).decode("utf-8", "replace")
            with contextlib.suppress(ValueError, AttributeError, TypeError):
                text = json.loads(text)["error"]["message"]
            sample.error = f"HTTP {response.status_code}: {text}"[:300]
            return
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            payload = line[5:].strip()
            if payload == "[DONE]":
                break
            now = time.perf_counter()
            data = json.loads(payload)
            if "error" in data:
                sample.error = str(data["error"].get("message", data["error"]))[:300]
                return
            if isinstance(data.get("usage"), dict):
                sample.tokens = int(data["usage"].get("completion_tokens", 0))
            choices = data.get("choices") or [{}]
            choice = choices[0]
            text = (choice.get("delta") or {}).get("content") if "delta" in choice else choice.get("text")
            progress = data.get("pasta")
            step = isinstance(progress, dict) and "tokens" in progress and choice.get("finish_reason") is None
            if step:
                steps.append(now)
                progress_tokens = int(progress["tokens"])
            if text:
                parts.append(text)
                texts.append(now)
            if sample.ttft is None and (text or (step and progress_tokens > 0)):
                sample.ttft = now - began
    sample.seconds = time.perf_counter() - began
    sample.answer = "".join(parts)
    sample.tokens = sample.tokens or progress_tokens
    if sample.ttft is not None:
        first = began + sample.ttft
        marks = [t for t in (steps or texts) if t >= first]  # without progress chunks (another server): texts
        sample.itl = [b - a for a, b in itertools.pairwise(marks)]


async def _request(client: Any, url: str, body: dict[str, Any], sample: Sample, timeout: float) -> Sample:
    import httpx

    try:
        await asyncio.wait_for(_stream(client, url, body, sample), timeout)
    except TimeoutError:
        sample.error = f"no answer within {timeout:.0f} s"
    except httpx.HTTPError as error:
        sample.error = f"{type(error).__name__}: {error}"[:300]
    except (ValueError, TypeError, AttributeError, KeyError) as error:  # a chunk not of the API's shape
        sample.error = f"unreadable stream: {type(error).__name__}: {error}"[:300]
    return sample


# -- a level and the run -------------------------------------------------------------------------------------

Progress = Callable[[str, int, int], None]  # (what, done, total)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100) of ``values``, linearly interpolated; None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    at = (len(ordered) - 1) * q / 100
    low = math.floor(at)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (at - low)


async def _level(
    client: Any,
    url: str,
    model: str,
    prompts: Sequence[str],
    options: LoadOptions,
    level: int,
    deadline: float,
    tell: Progress,
) -> tuple[list[Sample], float, int]:
    """Run the level's requests with ``level`` clients in flight; (their samples, wall seconds, requests not
    sent because the run's time was up)."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(options.requests):
        queue.put_nowait(i)
    samples: list[Sample] = []
    unsent = 0
    what = f"{level} in flight"

    async def client_loop() -> None:
        nonlocal unsent
        while True:
            try:
                i = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            left = min(options.timeout, deadline - time.monotonic())
            if left <= 0:
                unsent += 1
                continue
            sample = Sample(i % len(prompts))
            body = _body(model, prompts[sample.prompt], options)
            samples.append(await _request(client, url, body, sample, left))
            tell(what, len(samples), options.requests)

    began = time.perf_counter()
    await asyncio.gather(*(client_loop() for _ in range(min(level, options.requests))))
    return samples, time.perf_counter() - began, unsent


def _mismatch(expected: str, got: str) -> dict[str, Any]:
    at = next((i for i, (a, b) in enumerate(zip(expected, got, strict=False)) if a != b), min(len(expected), len(got)))
    start = max(at - 30, 0)
    return {"at": at, "expected": expected[start : at + 50], "got": got[start : at + 50]}


def _summary(
    level: int, samples: list[Sample], wall: float, unsent: int, reference: dict[int, str], prompts: Sequence[str]
) -> dict[str, Any]:
    done = [s for s in samples if s.error is None]
    tokens = sum(s.tokens for s in done)
    ttft = [s.ttft for s in done if s.ttft is not None]
    itl = [gap for s in done for gap in s.itl]
    mismatches = 0
    first: dict[str, Any] | None = None
    unchecked = 0
    for s in sorted(done, key=lambda s: s.prompt):
        expected = reference.get(s.prompt)
        if expected is None:
            unchecked += 1
        elif s.answer != expected:
            mismatches += 1
            if first is None:
                first = {"prompt": prompts[s.prompt], **_mismatch(expected, s.answer)}
    errors = [s.error for s in samples if s.error is not None]
    return {
        "concurrency": level,
        "requests": len(samples) + unsent,
        "completed": len(done),
        "failed": len(errors),
        "not_sent": unsent,
        "errors": errors[:3],
        "wall_s": wall,
        "completion_tokens": tokens,
        "tokens_per_s": tokens / wall if wall > 0 else 0.0,
        "requests_per_s": len(done) / wall if wall > 0 else 0.0,
        "mean_tokens": tokens / len(done) if done else 0.0,
        "ttft_s": {"p50": percentile(ttft, 50), "p99": percentile(ttft, 99)},
        "itl_s": {"p50": percentile(itl, 50), "p99": percentile(itl, 99), "samples": len(itl)},
        "mismatches": mismatches,
        "unchecked": unchecked,
        "first_mismatch": first,
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b is not None and b > 0 else None


def targets(levels: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The verdicts, from the levels of one run: throughput and p99 inter-token latency at the highest level
    against level 1, and answers lost or mixed up at any level."""
    by = {lv["concurrency"]: lv for lv in levels}
    one, top = by.get(1), max(levels, key=lambda lv: lv["concurrency"]) if levels else None
    measured = one is not None and top is not None and top is not one
    throughput = _ratio(top["tokens_per_s"], one["tokens_per_s"]) if measured else None
    itl = _ratio(top["itl_s"]["p99"], one["itl_s"]["p99"]) if measured else None
    mismatches = sum(lv["mismatches"] for lv in levels)
    lost = sum(lv["failed"] + lv["not_sent"] for lv in levels)
    unchecked = sum(lv["unchecked"] for lv in levels)
    return {
        "highest": top["concurrency"] if top else None,
        "throughput": {
            "ratio": throughput,
            "target": TARGET_THROUGHPUT,
            "met": None if throughput is None else throughput >= TARGET_THROUGHPUT,
        },
        "itl_p99": {"ratio": itl, "target": TARGET_ITL, "met": None if itl is None else itl <= TARGET_ITL},
        "answers": {
            "mismatches": mismatches,
            "failed": lost,
            "unchecked": unchecked,
            "met": mismatches == 0 and lost == 0 and unchecked == 0,
        },
    }


async def _server_steps(client: Any, url: str) -> dict[str, float] | None:
    """The server's step counters from ``/metrics`` (pastac's own), or None where it has none."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        response = await client.get(url.rstrip("/") + "/metrics")
        response.raise_for_status()
        found: dict[str, float] = {}
        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                if sample.name in ("pastac_rows_per_step_sum", "pastac_rows_per_step_count", "pastac_step_seconds_sum"):
                    found[sample.name] = sample.value
    except Exception:  # a server without pastac's metrics: the figures are left out
        return None
    return found if len(found) == 3 else None


def _steps_between(before: dict[str, float] | None, after: dict[str, float] | None) -> dict[str, float] | None:
    """The server's steps during a level: how many, their mean queries and mean time."""
    if before is None or after is None:
        return None
    steps = after["pastac_rows_per_step_count"] - before["pastac_rows_per_step_count"]
    if steps <= 0:
        return None
    rows = after["pastac_rows_per_step_sum"] - before["pastac_rows_per_step_sum"]
    seconds = after["pastac_step_seconds_sum"] - before["pastac_step_seconds_sum"]
    return {"steps": steps, "rows_per_step": rows / steps, "step_s": seconds / steps}


async def run_load(
    url: str,
    model: str,
    prompts: Sequence[str],
    options: LoadOptions = LoadOptions(),
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run the benchmark against the server at ``url`` (its root: ``http://host:port``), asking for the model
    ``model``, and return the report without its machine (a JSON-able dict: ``options``, ``levels``,
    ``targets``, ``reference``)."""
    import httpx

    if not prompts:
        raise ValueError("no prompts")
    tell = progress or (lambda what, done, total: None)
    endpoint = url.rstrip("/") + ("/v1/chat/completions" if options.chat else "/v1/completions")
    headers = {"Authorization": f"Bearer {options.api_key}"} if options.api_key else {}
    deadline = time.monotonic() + options.timeout
    top = max(options.concurrency)
    limits = httpx.Limits(max_connections=top + 1, max_keepalive_connections=top + 1)
    levels: list[dict[str, Any]] = []
    skipped: list[int] = []
    reference: dict[int, str] = {}
    async with httpx.AsyncClient(timeout=httpx.Timeout(options.timeout), limits=limits, headers=headers) as client:
        if options.warmup:
            tell("warming up", 0, 1)
            warm = await _request(client, endpoint, _body(model, prompts[0], options), Sample(0), options.timeout)
            if warm.error is not None:
                raise ConnectionError(f"the warm-up request failed: {warm.error}")
        for level in options.concurrency:
            if time.monotonic() >= deadline:
                skipped.append(level)
                continue
            before = await _server_steps(client, url)
            samples, wall, unsent = await _level(client, endpoint, model, prompts, options, level, deadline, tell)
            server = _steps_between(before, await _server_steps(client, url))
            if level == 1:
                for s in sorted(samples, key=lambda s: s.prompt):
                    if s.error is None:
                        reference.setdefault(s.prompt, s.answer)
            levels.append(_summary(level, samples, wall, unsent, reference, prompts) | {"server_steps": server})
    return {
        "kind": KIND,
        "options": {
            "url": url,
            "model": model,
            "api": "chat" if options.chat else "completions",
            "mode": options.mode,
            "concurrency": list(options.concurrency),
            "requests": options.requests,
            "max_tokens": options.max_tokens,
            "timeout_s": options.timeout,
            "prompts": len(prompts),
        },
        "levels": levels,
        "skipped_levels": skipped,
        "targets": targets(levels),
        "reference": [{"prompt": prompts[i], "answer": reference[i]} for i in sorted(reference)],
    }


# -- the machine, the server ---------------------------------------------------------------------------------


def machine(engine: Any | None = None) -> dict[str, Any]:
    """This machine (CPU, its AVX2/AVX-512/AMX flags, cores, torch and its threads) and, with ``engine``, the
    model it serves (name, dtype, device, kernels)."""
    import platform

    import torch

    from pastac.machine import cpu_capability, cpu_flags, cpu_name

    flags = cpu_flags()
    out: dict[str, Any] = {
        "cpu": cpu_name(),
        "cpu_flags": {
            "avx2": "avx2" in flags,
            "avx512": any(f.startswith("avx512") for f in flags),
            "amx": any(f.startswith("amx") for f in flags),
        },
        "cpu_capability": cpu_capability(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    if engine is not None:
        param = next(engine.model.parameters())
        out |= {
            "model": engine.name,
            "parameters": sum(p.numel() for p in engine.model.parameters()),
            "dtype": str(param.dtype).removeprefix("torch."),
            "device": str(param.device),
            "kernels": engine.kernels,
        }
        if param.device.type == "cuda":
            out["gpu"] = torch.cuda.get_device_name(param.device)
    return out


def served_model(url: str, api_key: str | None = None, timeout: float = 30.0) -> str:
    """The id of the first model ``GET /v1/models`` lists at ``url``; raises ``ConnectionError``."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        response = httpx.get(url.rstrip("/") + "/v1/models", headers=headers, timeout=timeout)
        response.raise_for_status()
        return str(response.json()["data"][0]["id"])
    except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as error:
        raise ConnectionError(f"cannot list the models of {url}: {error}") from None


# -- the report ----------------------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value * 1000:.1f}"


_COLUMNS = (
    "clients",
    "done",
    "failed",
    "wall s",
    "tokens/s",
    "req/s",
    "TTFT p50 ms",
    "TTFT p99 ms",
    "ITL p50 ms",
    "ITL p99 ms",
    "tokens/req",
    "rows/step",
    "step ms",
    "mismatches",
)


def _rows(report: dict[str, Any]) -> list[list[str]]:
    return [
        [
            str(lv["concurrency"]),
            f"{lv['completed']}/{lv['requests']}",
            str(lv["failed"] + lv["not_sent"]),
            f"{lv['wall_s']:.2f}",
            f"{lv['tokens_per_s']:.1f}",
            f"{lv['requests_per_s']:.2f}",
            _ms(lv["ttft_s"]["p50"]),
            _ms(lv["ttft_s"]["p99"]),
            _ms(lv["itl_s"]["p50"]),
            _ms(lv["itl_s"]["p99"]),
            f"{lv['mean_tokens']:.1f}",
            "–" if not lv.get("server_steps") else f"{lv['server_steps']['rows_per_step']:.1f}",
            "–" if not lv.get("server_steps") else _ms(lv["server_steps"]["step_s"]),
            str(lv["mismatches"]) + (f" ({lv['unchecked']} unchecked)" if lv["unchecked"] else ""),
        ]
        for lv in report["levels"]
    ]


def _title(report: dict[str, Any]) -> str:
    m, o = report["machine"], report["options"]
    model = f"{m['model']} · {m['dtype']} · {m['device']}" if "model" in m else f"{o['model']} at {o['url']}"
    threads = f"{m['torch_threads']} torch thread{'s' if m['torch_threads'] != 1 else ''}"
    api = f"{o['api']}, {o.get('mode', 'async')} mode"
    return f"{model} · {m['cpu']}, {threads} · {api}, {o['requests']} requests/level, max_tokens {o['max_tokens']}"


def verdicts(report: dict[str, Any]) -> list[str]:
    """The verdict on each target, in words, with its figures."""
    t = report["targets"]
    top = t["highest"]

    def verdict(met: bool | None) -> str:
        return "not measured" if met is None else ("met" if met else "NOT met")

    lines = []
    th, itl = t["throughput"], t["itl_p99"]
    if th["ratio"] is None:
        lines.append("throughput: not measured (it needs level 1 and a higher one)")
    else:
        lines.append(
            f"throughput: tokens/s at {top} clients ÷ at 1 = {th['ratio']:.2f} (target ≥ {th['target']:g}): "
            f"{verdict(th['met'])}"
        )
    if itl["ratio"] is None:
        lines.append("inter-token latency: not measured")
    else:
        lines.append(
            f"inter-token latency: p99 at {top} clients ÷ at 1 = {itl['ratio']:.2f} (target ≤ {itl['target']:g}): "
            f"{verdict(itl['met'])}"
        )
    a = report["targets"]["answers"]
    detail = f"{a['mismatches']} answer(s) differ from level 1's"
    if a["failed"]:
        detail += f", {a['failed']} request(s) failed or not sent"
    if a["unchecked"]:
        detail += f", {a['unchecked']} without a reference"
    lines.append(f"lost or mixed-up tokens: {detail}: {verdict(a['met'])}")
    for lv in report["levels"]:
        if lv["first_mismatch"]:
            f = lv["first_mismatch"]
            lines.append(
                f"  first difference at {lv['concurrency']} clients, {f['prompt']!r}, character {f['at']}: "
                f"expected {f['expected']!r}, got {f['got']!r}"
            )
        for error in lv["errors"][:1]:
            lines.append(f"  at {lv['concurrency']} clients: {error}")
    if report["skipped_levels"]:
        lines.append(f"not run (the --timeout passed): {', '.join(map(str, report['skipped_levels']))} clients")
    return lines


def print_report(report: dict[str, Any], console: Any) -> None:
    """The levels as a table and the verdicts, on a rich ``console``."""
    from rich.table import Table

    table = Table(title=f"pastac bench serve: {_title(report)}", title_justify="left")
    for name in _COLUMNS:
        table.add_column(name, justify="right")
    for row in _rows(report):
        table.add_row(*row)
    console.print(table)
    for line in verdicts(report):
        console.print(line, markup=False, highlight=False)


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: its title, the machine, the levels' table and the verdicts."""
    m = report["machine"]
    out = io.StringIO()
    out.write(f"# pastac bench serve\n\n{_title(report)}\n\n")
    flags = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in m["cpu_flags"].items())
    out.write(f"Machine: {m['cpu']} ({m['cpu_count']} cores; {flags}), torch {m['torch']}")
    out.write(f" with {m['torch_threads']} threads.\n\n")
    out.write("| " + " | ".join(_COLUMNS) + " |\n|" + "---:|" * len(_COLUMNS) + "\n")
    for row in _rows(report):
        out.write("| " + " | ".join(row) + " |\n")
    out.write("\n")
    for line in verdicts(report):
        out.write(f"- {line.strip()}\n")
    return out.getvalue()


def is_report_folder(folder: Path) -> bool:
    """Whether ``folder`` holds a report of ``pastac bench serve`` (its ``report.json``)."""
    try:
        report = json.loads((folder / REPORT).read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(report, dict) and report.get("kind") == KIND


def check_report_folder(folder: str | Path, *, force: bool = False) -> None:
    """Refuse a ``folder`` that holds files and is not a report folder of this benchmark, unless ``force``
    (``pastac.output.OutputError``)."""
    from pastac.output import check_folder

    check_folder(folder, ours=is_report_folder, what="a report folder of pastac bench serve", force=force, name="--out")


def write_report(report: dict[str, Any], folder: str | Path) -> list[Path]:
    """Write ``report.json`` (first) and ``report.md`` into ``folder`` (created), each atomically; their
    paths."""
    from pastac.output import make_folder, write_text

    folder = make_folder(folder)
    write_text(folder / REPORT, json.dumps(report, indent=2) + "\n")
    write_text(folder / "report.md", markdown(report))
    return [folder / name for name in REPORT_FILES]


# -- the command line ----------------------------------------------------------------------------------------


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``serve`` to ``pastac bench``'s subcommands."""
    p = sub.add_parser(
        "serve",
        help="load benchmark of the OpenAI API: throughput and latency at several concurrency levels",
        description="Send streamed requests (greedy) with 1, 2, 4... clients in flight at once, to a server at "
        "--url or to one started here on 127.0.0.1; report per level tokens/s, requests/s, time to first token "
        "and inter-token latency (p50, p99), and whether every answer equals level 1's. Figures are measured; "
        f"the targets (tokens/s ×{TARGET_THROUGHPUT:g}, p99 inter-token latency ×{TARGET_ITL:g} at most, no "
        "answer changed) are reported, never asserted.",
    )
    load = p.add_argument_group("load")
    load.add_argument(
        "--concurrency",
        type=concurrency_levels,
        default=(1, 2, 4, 8),
        metavar="N,...",
        help="clients in flight at once, one level each (default 1,2,4,8; level 1 is always run: the reference)",
    )
    load.add_argument(
        "--requests",
        type=_requests,
        default=16,
        metavar="N",
        help=f"requests per level (default 16, at most {MAX_REQUESTS})",
    )
    load.add_argument("--max-tokens", type=positive, default=128, metavar="N", help="each answer's budget (128)")
    load.add_argument(
        "--prompts",
        metavar="FILE",
        help='one prompt a line, or JSON lines with "prompt" (default: 16 built-in lists and questions); '
        "request i asks prompt i modulo their number",
    )
    api = load.add_mutually_exclusive_group()
    api.add_argument("--chat", dest="chat", action="store_true", default=True, help="/v1/chat/completions (default)")
    api.add_argument("--completions", dest="chat", action="store_false", help="/v1/completions: prompts as plain text")
    load.add_argument(
        "--mode",
        choices=("async", "sequential"),
        default="async",
        help="the pasta mode of every request: async (default: threads fork at promises) or sequential (one "
        "thread each: continuous batching alone)",
    )
    load.add_argument(
        "--timeout",
        type=number(lambda v: v > 0, "> 0"),
        default=1800.0,
        metavar="S",
        help="a bound in seconds on the whole run, and on each request (default 1800)",
    )
    server = p.add_argument_group("server (--url, or one started here on 127.0.0.1 with the model options)")
    server.add_argument("--url", metavar="URL", help="an OpenAI-compatible server's root, e.g. http://127.0.0.1:8000")
    server.add_argument(
        "--api-key",
        metavar="KEY",
        default=os.environ.get("PASTAC_API_KEY"),
        help="with --url: sent as 'Authorization: Bearer KEY' (default: $PASTAC_API_KEY)",
    )
    server.add_argument(
        "--served-model-name", metavar="NAME", help="with --url: the model to ask for (default: the first it lists)"
    )
    model = p.add_argument_group("model (a server started here)")
    model_options(model)
    adapter_options(model)
    kernel_options(model)
    torch_threads_option(model, default=1)
    model.add_argument(
        "--max-concurrent", type=positive, metavar="N", help="requests decoded at once (default: the highest level)"
    )
    max_rows_option(model)
    out = p.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="print the report as one JSON object instead of tables")
    out.add_argument(
        "--out",
        metavar="DIR",
        help="write report.json and report.md here: a new or empty folder, or one of an earlier report (replaced)",
    )
    force_option(out, outputs="into --out")
    out.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(run=command)


@contextlib.contextmanager
def _server(args: argparse.Namespace, top: int) -> Any:
    """A server of the model options on 127.0.0.1, on a thread of this process; yields (url, model id, engine)."""
    import torch

    from pastac.models import ModelError
    from pastac.runtime.batch import BatchEngine
    from pastac.serve.app import create_app
    from pastac.serve.server import ServerThread

    torch.set_num_threads(args.torch_threads)
    try:
        engine = load_engine(args, adapter=args.adapter)
        batch = BatchEngine(
            engine, max_concurrent=args.max_concurrent or top, max_waiting=max(64, top), max_rows=args.max_rows
        )
    except (ModelError, ValueError) as error:
        raise UsageError(str(error)) from None
    app = create_app(batch)
    with ServerThread(app, host="127.0.0.1") as server:
        yield server.url, app.state.model_name, engine


def command(args: argparse.Namespace, out: TextIO) -> int:
    """``pastac bench serve``: run the load benchmark and print (and write) its report.  Exit status 0, 1 when
    a request failed or a level was not run in time (the report says which), 2 usage error."""
    from rich.console import Console

    from pastac.output import OutputError, refuse_input

    if args.url is not None and not args.url.startswith(("http://", "https://")):
        raise UsageError(f"--url must start with http:// or https://, not {args.url!r}")
    try:
        if args.out:
            for name in REPORT_FILES:
                refuse_input(Path(args.out) / name, [("--prompts", args.prompts)], what=f"--out's {name}")
            check_report_folder(args.out, force=args.force)
    except OutputError as error:
        raise UsageError(str(error)) from None
    try:
        prompts = load_prompts(args.prompts) if args.prompts else list(PROMPTS)
    except PromptsError as error:
        raise UsageError(str(error)) from None
    options = LoadOptions(
        concurrency=args.concurrency,
        requests=args.requests,
        max_tokens=args.max_tokens,
        chat=args.chat,
        mode=args.mode,
        timeout=args.timeout,
        api_key=args.api_key if args.url else None,
    )
    err = Console(file=sys.stderr)
    with contextlib.ExitStack() as stack:
        if args.url:
            url, engine = args.url, None
            try:
                model = args.served_model_name or served_model(url, args.api_key)
            except ConnectionError as error:
                raise UsageError(str(error)) from None
        else:
            url, model, engine = stack.enter_context(_server(args, max(options.concurrency)))
        report = _run(url, model, prompts, options, err if not args.quiet else None)
        report = {"kind": KIND, "machine": machine(engine), "server": _server_facts(args, engine), **report}
    if args.json:
        out.write(json.dumps(report, indent=2) + "\n")
    else:
        print_report(report, Console(file=out, width=200))
    try:
        written = write_report(report, args.out) if args.out else []
    except OutputError as error:
        raise UsageError(f"cannot write the report: {error}") from None
    if written and not args.quiet:
        print(f"pastac: wrote {', '.join(map(str, written))}", file=sys.stderr)
    answers = report["targets"]["answers"]
    return EXIT_ERRORS if answers["failed"] or report["skipped_levels"] else EXIT_OK


def _server_facts(args: argparse.Namespace, engine: Any | None) -> dict[str, Any]:
    if engine is None:
        return {"url": args.url, "started_here": False}
    return {
        "started_here": True,
        "max_concurrent": args.max_concurrent or max(args.concurrency),
        "max_rows": args.max_rows,
        "adapter": args.adapter,
    }


def _run(url: str, model: str, prompts: list[str], options: LoadOptions, console: Any | None) -> dict[str, Any]:
    """``run_load`` with a progress bar on ``console`` (None: quiet); a server that cannot be reached or fails
    the warm-up is a usage error."""
    try:
        if console is None:
            return asyncio.run(run_load(url, model, prompts, options))
        from rich.progress import Progress as Bar

        with Bar(console=console, transient=True) as bar:
            task = bar.add_task(KIND, total=options.requests)

            def tell(what: str, done: int, total: int) -> None:
                bar.update(task, description=f"{KIND}: {what}", completed=done, total=total)

            return asyncio.run(run_load(url, model, prompts, options, tell))
    except ConnectionError as error:
        raise UsageError(str(error)) from None
