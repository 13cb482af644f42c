"""Sibling threads may not copy each other's n-grams (``pastac.runtime.repeats``)."""

from __future__ import annotations

import pytest

from pastac import PositionOptions
from pastac.runtime.engine import Engine
from pastac.runtime.options import RunOptions
from pastac.runtime.repeats import UnseenNgrams
from pastac.runtime.sampling import SamplingOptions
from pastac.runtime.threads import Limits

PROMPT = "Give me tips."
TEMPLATE = (
    'Tips:\n<promise topic="a" tokens="1"/>\n<promise topic="a" tokens="1"/>\n'
    '<promise topic="a" tokens="1"/>\n<sync/>\nDone.'
)
SEED = 3  # the tiny models' weights (``tiny_engine(shape, SEED)``)


def test_an_ngram_is_banned_after_its_prefix_in_an_unseen_thread_only():
    ngrams = UnseenNgrams(3, exempt=[9])
    ngrams.add(1, [5, 6, 7])
    ngrams.add(1, [5, 6, 9])  # placed in a later step: the thread's tokens run on
    ngrams.add(2, [4, 5, 6])
    assert ngrams.banned(2, [1]) == {7}  # after (5, 6) thread 1 wrote 7 and 9; 9 is exempt
    assert ngrams.banned(2, []) == set()  # thread 1 seen: nothing banned
    assert ngrams.banned(2, [1, 2]) == {7}  # a thread is never banned from its own n-grams
    ngrams.add(3, [7])
    assert ngrams.banned(3, [1, 2]) == set()  # fewer than n - 1 tokens written
    ngrams.add(3, [5])
    assert ngrams.banned(3, [1, 2]) == {6}  # thread 1 wrote (7, 5) then 6 across its two steps
    ngrams.add(4, [9, 5, 8, 7])  # a child opening on a tag (9), then its own text
    ngrams.add(5, [9, 5])
    assert ngrams.banned(5, [4]) == set()  # (9, 5) holds the tag's token: it may open as thread 4 did
    ngrams.add(5, [8])
    assert ngrams.banned(5, [4]) == {7}  # (5, 8) is text: its copy is banned
    with pytest.raises(ValueError, match="n >= 2"):
        UnseenNgrams(1)


def copies(e: Engine, n: int) -> int:
    """How many tokens a child chose that ended an n-gram its sibling had already placed in the cache."""
    run = e.last_run
    tokens = run.runner.tokens.tolist()
    placed: dict[int, list[tuple[int, int]]] = {}  # thread -> (step placed, token)
    slot = 0
    for step, thread, count in run.sched.activity:
        for _ in range(count):
            placed.setdefault(thread, []).append((step, tokens[slot]))
            slot += 1
    children = [t for t, th in run.sched.threads.items() if th.parent is not None]
    exempt = set(e.exempt_tokens)
    found = 0
    for t in children:
        mine = placed.get(t, [])
        for i in range(n - 1, len(mine)):
            step = mine[i][0]
            gram = tuple(tok for _, tok in mine[i - n + 1 : i + 1])
            if exempt.intersection(gram):  # a tag's n-gram: every child opens and closes on the same
                continue
            for u in children:
                theirs = [tok for s, tok in placed.get(u, []) if s < step]  # in the cache when it was chosen
                if u != t and any(tuple(theirs[j : j + n]) == gram for j in range(len(theirs) - n + 1)):
                    found += 1
                    break
    return found


@pytest.mark.parametrize("shape", ["tiny-llama", "tiny-qwen2"])
@pytest.mark.parametrize("n", [2, 3])
def test_siblings_do_not_copy_each_others_ngrams(shape, n, tiny_engine):
    e = tiny_engine(shape, SEED)
    results = {}
    for ban in (0, n):
        options = RunOptions(
            limits=Limits(max_thread_tokens=24, max_new_tokens=4096),
            positions=PositionOptions(policy="restart"),
            template_tags=True,
            child_stop="",
            sampling=SamplingOptions(sibling_ngram=ban),
        )
        result = e.generate(PROMPT, options, template=TEMPLATE)
        assert result.stats.threads == 4
        results[ban] = (copies(e, n), result.text)
    assert results[0][0] > 0  # without the ban the children copy each other: the test can fail
    assert results[n][0] == 0
    assert results[n][1] != results[0][1]


def test_one_thread_is_never_banned(tiny_engine):
    e = tiny_engine("tiny-llama", SEED)
    texts = [
        e.generate(
            PROMPT,
            RunOptions(
                mode="sequential",
                limits=Limits(max_thread_tokens=30, max_new_tokens=4096),
                sampling=SamplingOptions(sibling_ngram=n),
            ),
        ).text
        for n in (0, 2)
    ]
    assert texts[0] == texts[1]
    with pytest.raises(ValueError, match="sibling_ngram"):
        SamplingOptions(sibling_ngram=1)
