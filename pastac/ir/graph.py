"""The dependency-graph IR: threads, promises (forks) and syncs (joins) over networkx.

A node is one operation of one thread, carrying a token length:

- ``Segment``: text the thread writes;
- ``Fork``: the promise tag; it starts a child thread;
- ``Open`` / ``Close``: the child's ``<async>`` and ``</async>`` tags;
- ``SyncTag``: the ``<sync/>`` tag the thread writes;
- ``Join``: the point (no tokens) after which the thread sees the content of
  the children it joins; explicit after a ``SyncTag``, implicit at the end of
  a thread's body.

Edges: ``seq`` (consecutive nodes of one thread), ``fork`` (a Fork to its
child's first node), ``join`` (a child's last node to the Join that waits for it).

Invariants (checked by ``verify``):
- the graph is acyclic and node ids increase along every edge, so id order is a
  topological order; for a lowered document it is the order of the training
  layout (the annotated text as written);
- every thread but the main one has exactly one Fork, starts with its Open,
  and is joined exactly once, by a Join of its parent; after its Close (at most
  one) only its implicit Join may follow; the main thread has no Open or Close;
- the edges are exactly those the threads explain (they decide visibility):
  seq between consecutive nodes of a thread, fork from a Fork to its child's
  first node, join from a joined child's last node to the Join;
- a thread's depth is its parent's + 1 and stays within the limit;
- a token may attend to the tokens of its own node before it and to every token
  of the node's ancestors (``pastac.passes.visibility``).

The graph grows incrementally (the runtime adds nodes as the model writes tags):
``ThreadGraph`` only appends, and each append keeps the invariants except that
threads may still be open.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import assert_never

import networkx as nx

MAIN = 0


class EdgeKind(StrEnum):
    """What an edge stands for: the next node of a thread, a fork to a child, or a child's end to its join."""

    SEQ = "seq"
    FORK = "fork"
    JOIN = "join"


@dataclass(frozen=True)
class Segment:
    """Text the thread writes."""

    thread: int
    text: str
    length: int


@dataclass(frozen=True)
class Fork:
    """The promise tag by which ``thread`` starts thread ``child`` on ``topic``."""

    thread: int
    child: int
    topic: str
    predicted: int | None  # the promise's tokens="..", in the document's unit
    text: str
    length: int


@dataclass(frozen=True)
class Open:
    """A forked thread's ``<async>`` tag: its first node."""

    thread: int
    text: str
    length: int


@dataclass(frozen=True)
class Close:
    """A forked thread's ``</async>`` tag: only its implicit Join may follow it."""

    thread: int
    text: str
    length: int


@dataclass(frozen=True)
class SyncTag:
    """The ``<sync/>`` tag a thread writes (the Join that waits for its children is a node of its own)."""

    thread: int
    text: str
    length: int


@dataclass(frozen=True)
class Join:
    """The point, with no tokens, after which ``thread`` sees the content of ``children``."""

    thread: int
    children: tuple[int, ...]
    explicit: bool  # after a <sync/>; else the implicit join at the end of a body
    length: int = 0
    text: str = ""


Op = Segment | Fork | Open | Close | SyncTag | Join


@dataclass(frozen=True)
class Thread:
    """One thread: its parent and depth (None and 0 for the main one), the topic and Fork of its promise."""

    id: int
    parent: int | None
    depth: int
    topic: str | None = None
    fork: int | None = None  # the Fork node that started it


class IRError(ValueError):
    """The graph breaks an invariant (or an append would)."""


@dataclass
class _ThreadState:
    nodes: list[int] = field(default_factory=list)
    unjoined: list[int] = field(default_factory=list)  # children forked, not yet joined
    children: list[int] = field(default_factory=list)  # children forked, in order
    ended: bool = False
    closed: bool = False  # has written its </async>
    frozen: tuple[int, ...] | None = None  # ``nodes`` as a tuple, until the next append


class ThreadGraph:
    """The IR of one document or one run; appends only.

    Every query and append costs time independent of the graph's size (``ops`` and ``tokens``: linear),
    so that building and walking a graph is linear in its nodes."""

    def __init__(self) -> None:
        self.g: nx.DiGraph = nx.DiGraph()
        self.threads: dict[int, Thread] = {MAIN: Thread(MAIN, None, 0)}
        self._state: dict[int, _ThreadState] = {MAIN: _ThreadState()}
        self._next_thread = MAIN + 1  # thread ids are 0, 1, 2, ... in the order of their forks
        self.ends: list[tuple[int, int]] = []  # (thread, node count when it ended), in order

    # -- queries ---------------------------------------------------------------

    def __len__(self) -> int:
        return self.g.number_of_nodes()

    def op(self, node: int) -> Op:
        """The operation at ``node``."""
        return self.g.nodes[node]["op"]

    def ops(self) -> list[tuple[int, Op]]:
        """Every node in id order (a topological order)."""
        return list(self.g.nodes(data="op"))  # ids are 0 .. len - 1, appended in order

    def thread_nodes(self, thread: int) -> tuple[int, ...]:
        """The nodes of ``thread``, in order (the same tuple until the thread's next append)."""
        state = self._state[thread]
        if state.frozen is None:
            state.frozen = tuple(state.nodes)
        return state.frozen

    def children(self, thread: int) -> tuple[int, ...]:
        """The threads ``thread`` forked, in id order."""
        return tuple(self._state[thread].children)

    def unjoined(self, thread: int) -> tuple[int, ...]:
        """The children of ``thread`` not yet joined, oldest first."""
        return tuple(self._state[thread].unjoined)

    def ended(self, thread: int) -> bool:
        """Whether ``thread``'s body has ended: it takes no more appends."""
        return self._state[thread].ended

    def tokens(self) -> int:
        """Tokens of every node, all threads together."""
        return sum(op.length for _, op in self.ops())

    # -- appends ---------------------------------------------------------------

    def _live(self, thread: int) -> _ThreadState:
        """The state of a thread that may still take appends."""
        state = self._state.get(thread)
        if state is None:
            raise IRError(f"no thread t{thread}")
        if state.ended:
            raise IRError(f"thread t{thread} has ended")
        return state

    def _append(self, op: Op) -> int:
        state = self._live(op.thread)
        if op.length < 0:
            raise IRError(f"negative length {op.length}")
        forked = self.threads[op.thread].fork is not None
        if forked and not state.nodes and not isinstance(op, Open):
            raise IRError(f"thread t{op.thread} must start with its <async>")
        if isinstance(op, Close) and not forked:
            raise IRError(f"</async> outside a forked thread (t{op.thread})")
        if state.closed and not isinstance(op, Join):
            raise IRError(f"thread t{op.thread} has written its </async>")
        node = self.g.number_of_nodes()
        self.g.add_node(node, op=op)
        if state.nodes:
            self.g.add_edge(state.nodes[-1], node, kind=EdgeKind.SEQ)
        else:
            fork = self.threads[op.thread].fork
            if fork is not None:
                self.g.add_edge(fork, node, kind=EdgeKind.FORK)
        state.nodes.append(node)
        state.frozen = None
        state.closed |= isinstance(op, Close)
        return node

    def segment(self, thread: int, text: str, length: int) -> int:
        """Append text to ``thread``; returns the node.  ``IRError`` if the thread cannot take it."""
        return self._append(Segment(thread, text, length))

    def fork(self, thread: int, topic: str, predicted: int | None, text: str, length: int) -> tuple[int, int]:
        """Append a promise; returns (fork node, new child thread id)."""
        child = self._next_thread
        node = self._append(Fork(thread, child, topic, predicted, text, length))
        self._next_thread += 1
        self.threads[child] = Thread(child, thread, self.threads[thread].depth + 1, topic, node)
        self._state[child] = _ThreadState()
        self._state[thread].unjoined.append(child)
        self._state[thread].children.append(child)
        return node, child

    def open(self, thread: int, text: str, length: int) -> int:
        """Append the ``<async>`` that starts forked thread ``thread``; ``IRError`` anywhere else."""
        if self._live(thread).nodes or self.threads[thread].fork is None:
            raise IRError(f"<async> must start a forked thread (t{thread})")
        return self._append(Open(thread, text, length))

    def close(self, thread: int, text: str, length: int) -> int:
        """Append forked thread ``thread``'s ``</async>`` (``IRError`` in the main thread); only its end may follow."""
        return self._append(Close(thread, text, length))

    def sync(self, thread: int, text: str, length: int) -> int:
        """Append a ``<sync/>`` tag to ``thread``; ``join`` appends the Join that waits for its children."""
        return self._append(SyncTag(thread, text, length))

    def join(self, thread: int, *, explicit: bool) -> int | None:
        """Join every unjoined child of ``thread`` (they must have ended); None if there are none."""
        state = self._live(thread)
        if not state.unjoined:
            return None
        waiting = [c for c in state.unjoined if not self._state[c].ended]
        if waiting:
            raise IRError(f"t{thread} cannot join t{waiting[0]}: it has not ended")
        children = tuple(state.unjoined)
        node = self._append(Join(thread, children, explicit))
        for child in children:
            self.g.add_edge(self._state[child].nodes[-1], node, kind=EdgeKind.JOIN)
        state.unjoined.clear()
        return node

    def end(self, thread: int) -> None:
        """End a thread's body: implicitly join its unjoined children."""
        if thread != MAIN and not self._live(thread).nodes:
            raise IRError(f"thread t{thread} ends without content")
        self.join(thread, explicit=False)
        self._state[thread].ended = True
        self.ends.append((thread, len(self)))


def verify(graph: ThreadGraph, *, max_depth: int | None = None, complete: bool = True) -> None:
    """Raise ``IRError`` naming the first broken invariant.  ``complete``: every thread has ended."""
    g = graph.g
    # Every edge going forward in id order makes the graph acyclic; only a graph with a backward edge is
    # searched for a cycle (a whole-graph search), to say which of the two is wrong.
    for u, v in g.edges:
        if u >= v:
            if not nx.is_directed_acyclic_graph(g):
                raise IRError("the graph has a cycle")
            raise IRError(f"edge %{u} -> %{v} goes backwards in id order")
    # Where each node sits in its thread, by the threads' own lists.
    index: dict[int, tuple[int, int]] = {n: (t, i) for t in graph.threads for i, n in enumerate(graph.thread_nodes(t))}
    joined_by: dict[int, int] = {}
    closed: set[int] = set()  # threads whose </async> came (nodes are visited in id order)
    for node, op in graph.ops():
        thread = graph.threads.get(op.thread)
        if thread is None:
            raise IRError(f"%{node} belongs to unknown thread t{op.thread}")
        if index.get(node, (None, 0))[0] != op.thread:
            raise IRError(f"%{node} is not a node of t{op.thread}")
        nodes = graph.thread_nodes(op.thread)
        at = index[node][1]
        first = at == 0
        if first and thread.fork is not None and not isinstance(op, Open):
            raise IRError(f"thread t{op.thread} starts with %{node}, not with its <async>")
        if first and thread.fork is not None and _kind(g, thread.fork, node) != EdgeKind.FORK:
            raise IRError(f"%{node} starts t{op.thread} but has no fork edge")
        if not first and _kind(g, nodes[at - 1], node) != EdgeKind.SEQ:
            raise IRError(f"%{node} has no seq edge from its thread's previous node")
        if not isinstance(op, Join) and op.thread in closed:
            raise IRError(f"%{node} comes after the </async> of t{op.thread}")
        match op:
            case Join(children=children):
                for child in children:
                    if child in joined_by:
                        raise IRError(f"t{child} is joined twice (%{joined_by[child]} and %{node})")
                    if child not in graph.threads or graph.threads[child].parent != op.thread:
                        raise IRError(f"%{node} joins t{child}, which is not a child of t{op.thread}")
                    joined_by[child] = node
                    child_nodes = graph.thread_nodes(child)
                    last = child_nodes[-1] if child_nodes else None
                    if last is None or _kind(g, last, node) != EdgeKind.JOIN:
                        raise IRError(f"%{node} joins t{child} without an edge from its last node %{last}")
            case Fork(child=child):
                forked = graph.threads.get(child)
                if forked is None:
                    raise IRError(f"%{node} forks unknown thread t{child}")
                if forked.fork != node:
                    raise IRError(f"%{node} forks t{child}, but t{child} was forked by %{forked.fork}")
                if forked.parent != op.thread:
                    raise IRError(f"%{node} forks t{child}, whose parent is t{forked.parent}, not t{op.thread}")
            case Open():
                if not first or thread.fork is None:
                    raise IRError(f"%{node}: <async> that does not start t{op.thread}")
            case Close():
                if thread.fork is None:
                    raise IRError(f"%{node}: </async> outside a forked thread")
                closed.add(op.thread)
            case Segment() | SyncTag():
                pass
            case _:
                assert_never(op)
    # Every edge is one the threads explain: the edges decide visibility.
    for u, v, kind in g.edges(data="kind"):
        t, at = index[v]
        match kind:
            case EdgeKind.SEQ:
                ok = at > 0 and graph.thread_nodes(t)[at - 1] == u
            case EdgeKind.FORK:
                ok = at == 0 and graph.threads[t].fork == u
            case EdgeKind.JOIN:
                op = graph.op(v)
                child = index[u][0]  # joined once, by the Join that lists it (checked above)
                ok = isinstance(op, Join) and joined_by.get(child) == v and graph.thread_nodes(child)[-1] == u
            case _:
                ok = False
        if not ok:
            raise IRError(f"unexpected {kind} edge %{u} -> %{v}")
    for thread in graph.threads.values():
        if max_depth is not None and thread.depth > max_depth:
            raise IRError(f"thread t{thread.id} is at depth {thread.depth}; the limit is {max_depth}")
        if thread.parent is None:
            continue
        if thread.parent not in graph.threads or graph.threads[thread.parent].depth + 1 != thread.depth:
            raise IRError(f"thread t{thread.id} has a wrong parent or depth")
        fork = graph.op(thread.fork) if thread.fork is not None and thread.fork in g else None
        if not isinstance(fork, Fork) or fork.child != thread.id or fork.thread != thread.parent:
            raise IRError(f"thread t{thread.id} names %{thread.fork} as its promise, which does not fork it")
        if complete and thread.id not in joined_by:
            raise IRError(f"thread t{thread.id} is never joined")
    if complete:
        open_threads = [t for t in graph.threads if not graph.ended(t)]
        if open_threads:
            raise IRError(f"thread t{open_threads[0]} has not ended")


def _kind(g: nx.DiGraph, u: int, v: int) -> EdgeKind | None:
    data = g.get_edge_data(u, v)
    return None if data is None else data.get("kind")
