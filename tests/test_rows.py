"""The row runners of the strategies pastac is compared with (batched-copy, refork), on tiny random models.

They run the same step plans as the packed runner, with one cache row per
thread.  ``copy`` gives every query the same keys and values as the packed
runner, so the same logits; ``reencode`` re-encodes a child's context as a
plain causal prompt, which equals what the child sees for every token written
before the first join (a join re-encodes a child's text after its parent's).
"""

from __future__ import annotations

import functools

import pytest
import torch

from pastac.runtime.options import RunOptions
from pastac.runtime.rows import RowRunner
from tests.test_runtime import (
    ATOL,
    DOC,
    PROMPT,
    SEED,
    SHAPES,
    check_replay_logits,
    forward,
    reference,
    runtime_logits,
)


def rows(fork: str):
    return functools.partial(RowRunner, fork=fork)


@pytest.mark.parametrize("shape", SHAPES)
def test_batched_copy_gives_the_logits_of_one_forward_over_the_training_layout(shape, tiny_engine):
    e = tiny_engine(shape, SEED)
    packed = e.generate(PROMPT, RunOptions(), replay=DOC, keep_logits=True)
    result = e.generate(PROMPT, RunOptions(), replay=DOC, keep_logits=True, runner=rows("copy"))
    assert result.annotated == packed.annotated == DOC
    assert result.stats.steps == packed.stats.steps and result.stats.threads == 4
    checked = check_replay_logits(e)
    assert checked >= result.stats.generated - result.stats.threads
    runner = e.last_run.runner
    assert runner.forwards > result.stats.steps  # a child starts from its parent's keys in a second forward
    assert result.stats.kv_peak_bytes > packed.stats.kv_peak_bytes  # the copied prefixes


class Recording(RowRunner):
    """A row runner that counts the queries it samples before its first join."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.before_join: int | None = None
        self.sampled = 0

    def step(self, plan, views, sampler):
        if plan.joins and self.before_join is None:
            self.before_join = self.sampled
        self.sampled += len(plan.sample)
        return super().step(plan, views, sampler)


@pytest.mark.parametrize("shape", SHAPES)
def test_refork_reencodes_each_childs_context(shape, tiny_engine):
    e = tiny_engine(shape, SEED)
    packed = e.generate(PROMPT, RunOptions(), replay=DOC, keep_logits=True)
    result = e.generate(
        PROMPT, RunOptions(), replay=DOC, keep_logits=True, runner=functools.partial(Recording, fork="reencode")
    )
    assert result.annotated == DOC and result.text == packed.text
    tokens, positions, mask, order = reference(e, DOC)
    expected = forward(e.model, tokens, positions, mask)
    ir_of = {t: th.ir_thread for t, th in e.last_run.sched.threads.items()}
    runner = e.last_run.runner
    assert runner.before_join > 20
    for thread, index, logits in runtime_logits(e)[: runner.before_join]:
        torch.testing.assert_close(logits, expected[order[ir_of[thread]][index]], atol=ATOL, rtol=0)
    assert runner.forwards > result.stats.steps  # the prefills of the children's contexts


def test_sequential_runs_are_the_same_in_every_runner(tiny_engine):
    e = tiny_engine("tiny-llama", SEED)
    texts = {
        e.generate(PROMPT, RunOptions(mode="sequential"), replay=DOC, runner=factory).annotated
        for factory in (None, rows("copy"), rows("reencode"))
    }
    assert texts == {DOC}


def test_row_runner_refuses_an_unknown_fork(tiny_engine):
    with pytest.raises(ValueError, match="copy"):
        RowRunner(tiny_engine("tiny-llama", SEED).model, 64, fork="share")
