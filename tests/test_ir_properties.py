"""Property tests of the IR and the scheduling passes (hypothesis), over generated valid documents.

Documents come from ``strategies.documents()`` (depth limit 2); each is lowered with a length function
drawn from: ``words``, a capped ``chars``, and a hash of the text that gives 0 to 3 tokens (so that
nodes without tokens, tags included, occur).  The expectations are computed here independently of
``pastac.passes``: ancestors with networkx, the longest weighted path with a dynamic program over
networkx's topological order, each node's steps by replaying the schedule's per-step threads; and
every schedule equals, field by field, that of the reference scheduler (``reference_schedule.py``).

The example counts derive from the hypothesis profile ``properties`` (tests/conftest.py: 10,000 under
``ci``, the default; 500 under ``dev``; 200,000 under ``long``).

Budget: ``documents()`` costs about 7 ms an example to generate (10,000 examples: ~70 s before any
check), so the profile's count cannot run within the ~90 s this file may take under ``ci``.  The cheap
properties share one test (generation is paid once) that runs half the profile's count (5,000 under
``ci``, ~70 s on a loaded 2-core machine); the tensor properties run a tenth (1,000, ~14 s).
``PASTAC_HYPOTHESIS_PROFILE=long`` runs 100,000 and 20,000.
"""

from __future__ import annotations

import json
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from itertools import pairwise

import networkx as nx
import pytest
import torch
from hypothesis import given, note, settings
from hypothesis import strategies as st
from reference_schedule import reference_schedule
from strategies import documents

from pastac.grammar.ast import Document
from pastac.ir.graph import Close, Fork, Join, Open, ThreadGraph, verify
from pastac.ir.lengths import words
from pastac.ir.lower import lower
from pastac.ir.printer import dump, from_json, to_json
from pastac.passes import (
    Order,
    Policy,
    PositionOptions,
    ScheduleOptions,
    assign_positions,
    critical_path,
    schedule,
    visibility,
    width,
)
from pastac.passes.layout import training_layout

PROFILE = settings.get_profile("properties")  # tests/conftest.py
# Counts below the profile's, to keep this file under ~90 s under ``ci`` (see the module docstring):
# half the profile's examples for the test of the cheap properties (generation dominates it), a tenth
# for the tensor properties, which build T x T masks and check them pairwise.
CHEAP_PROFILE = settings(PROFILE, max_examples=max(1, PROFILE.max_examples // 2))
TENSOR_PROFILE = settings(PROFILE, max_examples=max(1, PROFILE.max_examples // 10))


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread() -> Iterator[None]:
    """The masks here are tiny: torch's intra-op thread pool only adds overhead, and on a loaded machine
    a lot of it (a 50 x 50 triu or a repeat_interleave of 20 took ~8 ms with 2 threads, ~10 us with 1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def capped_chars(text: str) -> int:
    """One token per character, at most 9 (a promise of 10**4300 tokens would otherwise be 4,300 tokens)."""
    return min(len(text), 9)


def hashed(text: str) -> int:
    """0 to 3 tokens, fixed per text: tags and texts of no tokens occur."""
    return zlib.crc32(text.encode("utf-8", "surrogatepass")) % 4


LENGTHS: dict[str, Callable[[str], int]] = {"words": words, "capped_chars": capped_chars, "hashed": hashed}
length_names = st.sampled_from(sorted(LENGTHS))


@contextmanager
def noted(graph: ThreadGraph, length_name: str) -> Iterator[None]:
    """On failure, show the IR (hypothesis prints notes of the failing example)."""
    try:
        yield
    except BaseException:
        note(f"length: {length_name}\n{dump(graph)}")
        raise


# ------------------------------------------------------------------ independent oracles


def lengths_of(graph: ThreadGraph) -> list[int]:
    return [op.length for _, op in graph.ops()]


def thread_tokens(graph: ThreadGraph, thread: int) -> list[int]:
    """The thread's tokens as node ids, one entry per token, in order."""
    return [n for n in graph.thread_nodes(thread) for _ in range(graph.op(n).length)]


def descendants(graph: ThreadGraph, thread: int) -> set[int]:
    """The thread and every thread below it, by walking parents up."""
    out = set()
    for t in graph.threads:
        u: int | None = t
        while u is not None and u != thread:
            u = graph.threads[u].parent
        if u == thread:
            out.add(t)
    return out


def longest_path(graph: ThreadGraph) -> int:
    """The longest chain of dependent tokens: node weight = its length (zero-length nodes weigh nothing)."""
    best: dict[int, int] = {}
    for v in nx.topological_sort(graph.g):
        best[v] = graph.op(v).length + max((best[u] for u in graph.g.predecessors(v)), default=0)
    return max(best.values(), default=0)


def exact_predictions(graph: ThreadGraph) -> ThreadGraph:
    """The same graph with each promise predicting (unit 1) exactly its child's content: the child's
    subtree less its <async> and </async> tags.  Rebuilt through JSON (which checks from_json too)."""
    data = to_json(graph)
    lengths = lengths_of(graph)
    for node, op in graph.ops():
        if isinstance(op, Fork):
            subtree = sum(lengths[n] for t in descendants(graph, op.child) for n in graph.thread_nodes(t))
            tags = sum(lengths[n] for n in graph.thread_nodes(op.child) if isinstance(graph.op(n), Open | Close))
            data["nodes"][node]["predicted"] = subtree - tags
    return from_json(data)


# ------------------------------------------------------------------ the cheap properties, one test


def check_graph(graph: ThreadGraph) -> None:
    verify(graph, max_depth=2)
    # JSON round trip.
    data = to_json(graph)
    again = from_json(json.loads(json.dumps(data)))
    verify(again, max_depth=2)
    assert to_json(again) == data and again.threads == graph.threads
    # Visibility is the ancestor relation of the graph: what ``sees`` answers, and the closure of what each
    # node inherits (which ``plan --dump-after visibility`` prints).
    vis = visibility(graph)
    for node in graph.g.nodes:
        expected = nx.ancestors(graph.g, node)
        assert set(vis.seen(node)) == expected
        assert {other for other in graph.g.nodes if vis.sees(node, other)} == expected


def check_positions(graph: ThreadGraph, unit: int, missing: int) -> None:
    tokens = graph.tokens()
    by_policy = {}
    for policy in Policy:
        positions = assign_positions(graph, PositionOptions(policy, unit=unit, missing=missing))
        by_policy[policy] = positions.start
        assert positions.length == tuple(lengths_of(graph))
        for thread in graph.threads:
            # Positions strictly increase along each thread's tokens.
            seq = [p for n in graph.thread_nodes(thread) for p in positions.of(n)]
            assert all(a < b for a, b in pairwise(seq)), (policy, thread, seq)
            # A child's tokens start right after its promise.
            fork = graph.threads[thread].fork
            if fork is not None and graph.thread_nodes(thread):
                first = graph.thread_nodes(thread)[0]
                assert positions.start[first] == positions.start[fork] + graph.op(fork).length, (policy, thread)
    # Oracle reservations give the stitched text's positions: each token a distinct position in [0, T).
    assert by_policy[Policy.ORACLE] == by_policy[Policy.SEQUENTIAL]
    sequential = assign_positions(graph, PositionOptions(Policy.SEQUENTIAL))
    assert sorted(p for n in graph.g.nodes for p in sequential.of(n)) == list(range(tokens))
    # Exact predictions (unit 1) reserve what the children write: the oracle's positions.
    exact = exact_predictions(graph)
    predicted = assign_positions(exact, PositionOptions(Policy.PREDICTED, unit=1, missing=0)).start
    assert predicted == by_policy[Policy.ORACLE]


def check_schedule(graph: ThreadGraph, cap: int | None, order: Order) -> None:
    tokens = graph.tokens()
    lengths = lengths_of(graph)
    plan = schedule(graph, ScheduleOptions(cap, order))
    uncapped = plan if cap is None else schedule(graph, ScheduleOptions(None, order))
    # The event-driven scheduler gives exactly the schedule of the reference (every field, every step).
    assert plan == reference_schedule(graph, ScheduleOptions(cap, order))
    assert uncapped == reference_schedule(graph, ScheduleOptions(None, order))
    longest = longest_path(graph)
    longest_thread = max(sum(lengths[n] for n in graph.thread_nodes(t)) for t in graph.threads)

    for p in {id(plan): plan, id(uncapped): uncapped}.values():
        assert longest_thread <= p.steps <= tokens
        assert len(p.decoding) == len(p.runnable) == p.steps
        # Replay: each thread decodes its own tokens in order, one per step it is listed in.
        steps_of: dict[int, list[int]] = defaultdict(list)
        for step, threads in enumerate(p.decoding):
            assert threads and len(set(threads)) == len(threads)
            for thread in threads:
                steps_of[thread].append(step)
        for thread in graph.threads:
            mine = thread_tokens(graph, thread)
            assert len(steps_of[thread]) == len(mine), thread
            first: dict[int, int] = {}
            last: dict[int, int] = {}
            for step, node in zip(steps_of[thread], mine, strict=True):
                first.setdefault(node, step)
                last[node] = step
            for node in first:
                assert (p.first_step[node], p.last_step[node]) == (first[node], last[node]), node
        # Dependencies: a node starts after every predecessor's last step (a node without tokens, at it).
        for v in graph.g.nodes:
            if lengths[v] == 0:
                assert p.first_step[v] == p.last_step[v], v
            for u in graph.g.predecessors(v):
                assert p.first_step[v] >= p.last_step[u] + (1 if lengths[v] else 0), (u, v)
    # Without a cap every token goes as soon as its dependencies allow: the longest weighted path.
    assert uncapped.steps == longest
    for v in graph.g.nodes:
        ready = max((uncapped.last_step[u] for u in graph.g.predecessors(v)), default=-1)
        assert uncapped.first_step[v] == ready + (1 if lengths[v] else 0), v
    # The cap holds, and the schedule wastes no slot (Graham's bound for a work-conserving list schedule).
    w = width(graph, plan)
    assert sum(w.per_step) == tokens
    if cap is not None:
        assert w.max_width <= cap
        assert plan.steps <= longest + (tokens - longest) // cap
    assert all(d >= n for d, n in zip(w.demand, w.per_step, strict=True))
    # Figures.
    figures = critical_path(graph, plan)
    assert figures.critical_path == longest and figures.steps == plan.steps >= longest
    assert figures.max_speedup >= figures.theoretical_speedup
    if cap == 1:  # sequential decoding
        assert plan.steps == tokens and figures.theoretical_speedup == 1.0
    if not any(isinstance(op, Fork) for _, op in graph.ops()):
        assert plan.steps == tokens
        assert figures.theoretical_speedup == figures.max_speedup == 1.0


@CHEAP_PROFILE
@given(
    documents(),
    length_names,
    st.integers(0, 20),
    st.integers(0, 5),
    st.none() | st.integers(1, 4),
    st.sampled_from(list(Order)),
)
def test_lowered_graphs(
    case: tuple[Document, str], length_name: str, unit: int, missing: int, cap: int | None, order: Order
) -> None:
    """Every cheap property on one generated document: the graph, its positions, its schedules."""
    graph = lower(case[0], LENGTHS[length_name])
    with noted(graph, length_name):
        check_graph(graph)
        check_positions(graph, unit, missing)
        check_schedule(graph, cap, order)


# ------------------------------------------------------------------ graphs grown as a runtime grows them


@st.composite
def runtime_graphs(draw: st.DrawFn) -> ThreadGraph:
    """A graph appended to in decoding order, threads interleaved (node ids no longer follow the
    annotated text), with any lengths, 0 included, and every thread finished at the end."""
    g = ThreadGraph()
    opened: set[int] = set()
    closed: set[int] = set()

    def writing(t: int) -> bool:  # may write text, promises and syncs
        return t == 0 or (t in opened and t not in closed)

    def joinable(t: int) -> bool:
        return all(g.ended(c) for c in g.unjoined(t))

    for a, b, n in draw(
        st.lists(st.tuples(st.integers(0, 63), st.integers(0, 63), st.integers(0, 3)), min_size=4, max_size=60)
    ):
        live = [t for t in g.threads if not g.ended(t) and t != 0]
        t = ([0, *live])[a % (len(live) + 1)]
        options = []
        if writing(t):
            options += ["segment", "sync"] if joinable(t) else ["segment"]
            if g.threads[t].depth < 2:
                options.append("fork")
        if t != 0 and t not in opened:
            options.append("open")
        if t in opened and t not in closed:
            options.append("close")
        if t in closed and joinable(t):
            options.append("end")
        if not options:  # a closed child waiting for its children to end
            continue
        match options[b % len(options)]:
            case "segment":
                g.segment(t, "w" * n, n)
            case "fork":
                g.fork(t, f"p{len(g)}", None if b % 3 == 0 else a % 5, "<promise/>", n)
            case "open":
                g.open(t, "<async>", n)
                opened.add(t)
            case "close":
                g.close(t, "</async>", n)
                closed.add(t)
            case "sync":
                g.sync(t, "<sync/>", n)
                g.join(t, explicit=True)
            case "end":
                g.end(t)
    for t in sorted(g.threads, reverse=True):  # children (greater ids) end before their parents
        if t != 0 and not g.ended(t):
            if t not in opened:
                g.open(t, "<async>", 1)
            if t not in closed:
                g.close(t, "</async>", 1)
            g.end(t)
    g.end(0)
    return g


@TENSOR_PROFILE
@given(
    runtime_graphs(),
    st.integers(0, 20),
    st.integers(0, 5),
    st.none() | st.integers(1, 4),
    st.sampled_from(list(Order)),
    st.sampled_from(list(Policy)),
)
def test_runtime_grown_graphs(
    graph: ThreadGraph, unit: int, missing: int, cap: int | None, order: Order, policy: Policy
) -> None:
    """The same properties hold for graphs whose ids interleave the threads, as the runtime's do."""
    with noted(graph, "as appended"):
        check_graph(graph)
        check_positions(graph, unit, missing)
        check_schedule(graph, cap, order)
        check_layout(graph, policy, unit)


# ------------------------------------------------------------------ the tensor properties


def joined_before(graph: ThreadGraph, parent: int, node: int) -> set[int]:
    """The children of ``parent`` joined by its Join nodes before ``node``."""
    return {
        c for n in graph.thread_nodes(parent) if n < node and isinstance(j := graph.op(n), Join) for c in j.children
    }


@TENSOR_PROFILE
@given(documents(), length_names, st.sampled_from(list(Policy)), st.integers(0, 20))
def test_layout(case: tuple[Document, str], length_name: str, policy: Policy, unit: int) -> None:
    graph = lower(case[0], LENGTHS[length_name])
    with noted(graph, length_name):
        check_layout(graph, policy, unit)


def check_layout(graph: ThreadGraph, policy: Policy, unit: int) -> None:
    options = PositionOptions(policy, unit=unit)
    positions = assign_positions(graph, options)
    try:
        layout = training_layout(graph, options)
    except ValueError as error:  # only where a reservation pushes a token past int64
        assert "past 2**63" in str(error)
        assert max(s + n - 1 for s, n in zip(positions.start, positions.length, strict=True) if n) > 2**63 - 1
        return
    tokens = graph.tokens()
    node_of = [n for n in graph.g.nodes for _ in range(graph.op(n).length)]  # layout order is id order
    assert layout.node_ids.tolist() == node_of
    assert layout.thread_ids.tolist() == [graph.op(n).thread for n in node_of]
    assert layout.position_ids.tolist() == [p for n in graph.g.nodes for p in positions.of(n)]
    mask = layout.mask
    assert mask.shape == (tokens, tokens) and mask.dtype == torch.bool

    # mask[i, j] exactly when j is an earlier-or-same token of i's node, or a token of an ancestor node.
    n = len(graph)
    anc = torch.zeros((n, n), dtype=torch.bool)
    for node in graph.g.nodes:
        anc[node, sorted(nx.ancestors(graph.g, node))] = True
    ids = torch.tensor(node_of, dtype=torch.long)
    order = torch.arange(tokens)
    same = (ids[:, None] == ids[None, :]) & (order[None, :] <= order[:, None])
    assert torch.equal(mask, anc[ids][:, ids] | same)
    # No token sees a later one (the layout is in id order, a topological order).
    assert not (mask & (order[None, :] > order[:, None])).any()
    assert torch.equal(layout.additive_mask()[0, 0] == 0, mask)

    tokens_of = defaultdict(list)  # node -> its token indices
    for i, n in enumerate(node_of):
        tokens_of[n].append(i)

    def thread_token_indices(threads: set[int], where: Callable[[int], bool] = lambda n: True) -> list[int]:
        return [i for i, n in enumerate(node_of) if graph.op(n).thread in threads and where(n)]

    for thread in graph.threads.values():
        if thread.fork is None or thread.parent is None:
            continue
        mine = thread_token_indices({thread.id})
        if not mine:
            continue
        rows = mask[mine]
        # A child sees every token of its parent up to and including its promise, and none after.
        fork = thread.fork
        before = thread_token_indices({thread.parent}, lambda n, f=fork: n <= f)
        after = thread_token_indices({thread.parent}, lambda n, f=fork: n > f)
        assert rows[:, before].all() and not rows[:, after].any()
        # Of its siblings (and their threads), it sees exactly those its parent joined before its promise.
        joined = joined_before(graph, thread.parent, thread.fork)
        for sibling in graph.children(thread.parent):
            if sibling == thread.id:
                continue
            theirs = thread_token_indices(descendants(graph, sibling))
            assert rows[:, theirs].all() if sibling in joined else not rows[:, theirs].any(), sibling
    # A parent's tokens after a join see all of the joined children's threads; before it, none.
    for node, op in graph.ops():
        if not isinstance(op, Join):
            continue
        subtree = set().union(*(descendants(graph, c) for c in op.children))
        theirs = thread_token_indices(subtree)
        after = thread_token_indices({op.thread}, lambda n, j=node: n > j)
        before = thread_token_indices({op.thread}, lambda n, j=node: n < j)
        assert mask[after][:, theirs].all()
        assert not mask[before][:, theirs].any()
