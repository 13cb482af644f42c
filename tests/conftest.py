"""What the tests share: pytest options, hypothesis profiles, and tiny engines.

``--update-goldens`` makes the conformance runner rewrite the expected-output
sidecars under specs/conformance/ instead of comparing against them; review the
diff by hand before keeping it.

Hypothesis profiles, chosen with the environment variable ``PASTAC_HYPOTHESIS_PROFILE``:

- ``ci`` (default): derandomized (the same examples on every run, so CI is reproducible), no example
  database; the property tests run 10,000 examples each;
- ``dev``: random, with the example database; the property tests run 500 each;
- ``long``: random, with the database; the property tests run 200,000 each (an occasional deep search,
  e.g. ``PASTAC_HYPOTHESIS_PROFILE=long scripts/test tests/test_properties.py -k scanner``).

The chosen profile applies to every test; the property modules take their example counts from the profile
``properties`` (``settings.get_profile("properties")``), which is the chosen one with those counts.  Tests
that need fewer examples say so with ``@settings(max_examples=...)``.

Without a GPU, Triton's kernels run in its interpreter: ``TRITON_INTERPRET=1`` is set here, before anything
imports Triton, unless the environment says otherwise (``scripts/gpu-check`` runs the same tests on CUDA).

``tiny_engine(shape, seed)`` (a fixture) gives an ``Engine`` over a randomly initialised model of a tiny
shape and the tiny in-process tokenizer, made once per shape and seed in a test session.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch
from hypothesis import HealthCheck, settings

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # read when Triton's kernels are defined

if TYPE_CHECKING:
    from pastac.runtime import Engine

_SLOW_OK = [HealthCheck.too_slow]
settings.register_profile(
    "ci", deadline=None, derandomize=True, database=None, print_blob=True, suppress_health_check=_SLOW_OK
)
settings.register_profile("dev", deadline=None)
settings.register_profile("long", deadline=None, suppress_health_check=_SLOW_OK)
PROFILE = os.environ.get("PASTAC_HYPOTHESIS_PROFILE", "ci")
if PROFILE not in ("ci", "dev", "long"):
    raise pytest.UsageError(f"PASTAC_HYPOTHESIS_PROFILE must be ci, dev or long, not {PROFILE!r}")
settings.load_profile(PROFILE)
settings.register_profile(
    "properties", settings.get_profile(PROFILE), max_examples={"ci": 10_000, "dev": 500, "long": 200_000}[PROFILE]
)


@functools.cache
def _engine(shape: str, seed: int) -> Engine:
    from pastac.models import random_model, tiny_tokenizer
    from pastac.runtime import Engine

    tokenizer = tiny_tokenizer()
    model = random_model(shape, vocab_size=len(tokenizer), seed=seed, eos_token_id=tokenizer.eos_token_id)
    return Engine(model, tokenizer, name=shape)


@pytest.fixture(scope="session")
def tiny_engine() -> Callable[..., Engine]:
    """``tiny_engine(shape="tiny-llama", seed=1)``: an engine over a tiny random model (shared in a session)."""

    def make(shape: str = "tiny-llama", seed: int = 1) -> Engine:
        return _engine(shape, seed)

    return make


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-goldens",
        action="store_true",
        default=False,
        help="rewrite the golden sidecars of specs/conformance/ instead of comparing against them",
    )


@pytest.fixture
def update_goldens(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--update-goldens"))


@pytest.fixture
def one_thread():
    """Run torch on one thread: with tiny models, on a small shared machine, two threads make every small matmul
    wait milliseconds for the other core."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def model_cache(tmp_path, monkeypatch: pytest.MonkeyPatch):
    """An empty pastac cache folder (``PASTAC_CACHE``) for this test."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("PASTAC_CACHE", str(folder))
    return folder


@pytest.fixture(scope="module")
def saved_tiny_model(tmp_path_factory: pytest.TempPathFactory):
    """A tiny random llama with the tiny tokenizer, saved as a transformers folder (once per module)."""
    from pastac.models import random_model, tiny_tokenizer

    folder = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = tiny_tokenizer()
    random_model("tiny-llama", vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def random_lora():
    """Gives ``base`` a LoRA adapter of random (not zero) weights on q_proj and v_proj, as PEFT makes one.  PEFT
    reads an attribute transformers deprecates while it wraps a model; that warning is theirs, not the test's."""
    import warnings

    from peft import LoraConfig, get_peft_model

    def wrap(base):  # type: ignore[no-untyped-def]
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
            return get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))

    return wrap


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray cluster of two CPUs on 127.0.0.1, started once for the session (the tests marked ``ray``);
    pastac's own calls to Ray use it rather than starting their own."""
    ray = pytest.importorskip("ray", reason="the Ray tests need the extra pastac[ray]")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # nothing leaves the machine
    # Serve gives its HTTP proxy five seconds to get ready, three times, then fails: not enough on two busy cores
    os.environ.setdefault("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "30")
    if not ray.is_initialized():
        # the workers import the test modules' helper functions by name, as they would pastac's
        path = os.pathsep.join(p for p in (str(Path(__file__).parent), os.environ.get("PYTHONPATH")) if p)
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            logging_level="WARNING",
            log_to_driver=False,  # as pastac.scale.cluster: the workers' output would mix with the commands'
            _node_ip_address="127.0.0.1",
            runtime_env={"env_vars": {"PYTHONPATH": path}},
        )
    yield ray
    ray.shutdown()
